"""What several test modules share: the real config composed for a test, quick run settings,
subprocess runs of the commands, and the real corpora beside the checkout."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from seq2seq.config import config_dir

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"

# Small but real: the embedded grammar, tiny model, a few hundred steps at most.
TINY_OVERRIDES = [
    "data.generate.sizes={train:2000,val:64,test:64}",
    "data.vocab_size=400",
    "model.d_model=64",
    "model.num_heads=4",
    "model.num_encoder_layers=1",
    "model.num_decoder_layers=1",
    "model.d_ff=128",
    "logger=csv",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
]

# A short real training (~40 s on 2 cores) that learns enough of the grammar to be scored.
SHORT_TRAINING_OVERRIDES = TINY_OVERRIDES + [
    "data.generate.sizes={train:4000,val:100,test:100}",
    "model.num_encoder_layers=2",
    "model.num_decoder_layers=2",
    "model.d_ff=256",
    "optim.lr=3e-3",
    "optim.warmup_steps=100",
    "trainer.max_epochs=5",
    "trainer.max_time=null",
]

# Few batches of everything: a real run of the whole path in seconds, not a trained model.
QUICK = [*TINY_OVERRIDES, "debug=limit", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.limit_test_batches=1", "model.d_model=32"]

# English sentences of the embedded toy grammar (the tiny checkpoint translates them to German).
TOY_SENTENCES = [
    "The old man saw a dog.",
    "Often the green women have washed the horse.",
    "The red girls will wash the pictures.",
    "Eighty-nine black flowers carried the new dog at home.",
    "A dog sees the man.",
    "Yesterday the small child found a happy horse.",
]

# What describes the machine, not the model: left out when two runs are compared.
TIMING = ("wall_time_s", "train/tokens_per_s", "train/tflops", "train/mfu")


def compose_train(tmp_path: Path, overrides: list[str] = (), config_name: str = "train") -> DictConfig:
    """The train config as the command line would compose it, with its folders under ``tmp_path``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(tmp_path)
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.cache_dir = str(tmp_path / "cache")
        cfg.paths.output_dir = str(tmp_path / "run")
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    HydraConfig.instance().set_config(cfg)
    return cfg


def shared_corpus(name: str) -> Path:
    """``../shared/data/<name>``; a test without it skips, except under ``CI=true`` (CI has the corpora)."""
    folder = SHARED_DATA / name
    if not folder.is_dir():
        message = f"{folder} is absent (real corpora are only on developer and CI machines)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true, where it must be present")
        pytest.skip(message)
    return folder


def command_env(root: Path, threads: int | None = None) -> dict:
    """The environment of a command run as a user would: its data and outputs under ``root``, wandb offline."""
    env = {**os.environ, "SEQ2SEQ_ROOT": str(root), "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("WANDB_API_KEY", None)
    return env


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
    """A command's user error as promised: exit status 2, one ``error: ...`` line on stderr naming
    ``words``, no traceback, nothing on stdout."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0]
    assert result.stdout == ""


def run_train(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m seq2seq.train ARGS`` in ``cwd``, finished."""
    return subprocess.run([sys.executable, "-m", "seq2seq.train", *args], cwd=cwd, env=command_env(cwd),
                          capture_output=True, text=True, timeout=timeout)


def loss_curve(run: Path) -> list[dict]:
    """The rows of a run's csv/metrics.csv without the timing columns."""
    with open(run / "csv" / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in csv.DictReader(f)]


def comparable_metrics(run: Path) -> dict:
    """metrics.json without what describes the machine, the folder or the checkout (a commit may land
    between the two runs' ends)."""
    metrics = json.loads((run / "metrics.json").read_text())
    skip = ("run_dir", "checkpoints", "git_commit", "git_dirty")
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING) and k not in skip}


def poison_loss_at_step(monkeypatch, step: int) -> None:
    """Make the training loss NaN at global step ``step`` (for the non-finite guards)."""
    from seq2seq.models.lit_module import Seq2SeqModule

    original = Seq2SeqModule._loss

    def poisoned(self, batch):
        smoothed, nll, n = original(self, batch)
        if self.training and self.global_step == step:
            smoothed = smoothed * float("nan")
        return smoothed, nll, n

    monkeypatch.setattr(Seq2SeqModule, "_loss", poisoned)
