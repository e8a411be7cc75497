"""What several test modules share: the real config composed for a test, quick run settings,
subprocess runs of the commands, and the real corpora beside the checkout."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from helpers.forked_commands import run_command
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


def optional_module(name: str, extra: str):
    """Import the optional dependency ``name``: skipped without it, failed under CI=true (where the dev
    extra, which has it, is installed)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed; CI installs the dev extra, which has it")
        pytest.skip(f"{name} is not installed (pip install 'seq2seq[{extra}]')")


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
    """``python -m seq2seq.train ARGS`` in ``cwd``, finished (forked from the command server:
    :mod:`helpers.forked_commands`)."""
    return run_command("seq2seq.train", args, cwd=cwd, env=command_env(cwd), text=True, timeout=timeout)


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


# A tiny network for in-process Trainer runs (dropout 0: the same arithmetic whatever the batch split).
TINY_MODEL = {"d_model": 32, "num_heads": 4, "num_encoder_layers": 1, "num_decoder_layers": 1, "d_ff": 64,
              "dropout": 0.0, "attention_dropout": 0.0, "max_positions": 256}
TINY_OPTIM = {"lr": 1e-3, "warmup_steps": 10, "label_smoothing": 0.1}


def toy_datamodule(root: Path, seed: int = 1234, sizes: dict | None = None, **kwargs):
    """A Seq2SeqDataModule over the embedded corpus generated into ``root/toy`` (``kwargs``: its options)."""
    from seq2seq.data.datamodule import Seq2SeqDataModule

    options = {"src_lang": "en", "tgt_lang": "de", "vocab_size": 120, "spm_model_type": "bpe", "max_tokens": 256,
               "cache_dir": str(root / "cache"), "seed": 0,
               "generate": {"seed": seed, "sizes": sizes or {"train": 200, "val": 8, "test": 8}}}
    return Seq2SeqDataModule.from_config(root=str(root / "toy"), **{**options, **kwargs})


def tiny_trainer(**kwargs):
    """A quiet CPU Trainer (no logger, progress bar or summary) for in-process runs of a few steps."""
    import lightning as L

    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
               "enable_model_summary": False, "enable_checkpointing": False, "num_sanity_val_steps": 0,
               "use_distributed_sampler": False}
    return L.Trainer(**{**options, **kwargs})


def _mid_epoch_checkpoint(path: Path) -> dict | None:
    """The checkpoint at ``path`` if it was saved by the periodic callback after the first epoch."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not there yet
        return None
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    if ckpt["epoch"] >= 1 and not progress["is_last_batch"] and progress["current"]["completed"] > 0:
        return ckpt
    return None


def kill_and_resume(tmp_path: Path, overrides: list[str], timeout: int = 600) -> tuple[Path, Path]:
    """Two runs of ``seq2seq.train OVERRIDES`` started together (one torch thread each, so the
    arithmetic is the same): ``a`` trains uninterrupted; ``b`` is killed with SIGKILL as soon as a
    periodic ``last.ckpt`` from the middle of its second epoch exists, then resumed with
    ``ckpt_path=last hydra.run.dir=<b>``. Returns the two run folders once both have finished
    (``<tmp_path>/b_resumed_from.ckpt`` keeps the checkpoint b resumed from)."""
    def start(run: Path) -> subprocess.Popen:
        with open(tmp_path / f"{run.name}.log", "w") as out:
            return subprocess.Popen([sys.executable, "-m", "seq2seq.train", *overrides, f"hydra.run.dir={run}"],
                                    cwd=tmp_path, env=command_env(tmp_path, threads=1), stdout=out, stderr=subprocess.STDOUT)

    a, b = tmp_path / "a", tmp_path / "b"
    uninterrupted, killed = start(a), start(b)
    last = b / "checkpoints" / "last.ckpt"
    deadline, seen, saved = time.monotonic() + timeout, None, None
    try:
        while saved is None:
            assert killed.poll() is None, "run b ended before a mid-epoch checkpoint:\n" + (tmp_path / "b.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"no mid-epoch checkpoint within {timeout} s"
            stamp = last.stat().st_mtime_ns if last.exists() else None
            if stamp is not None and stamp != seen:
                # Stopped while we look, so the checkpoint killed on is the one looked at (a busy machine
                # once let b write the epoch's last one between the look and the kill).
                killed.send_signal(signal.SIGSTOP)
                seen, saved = last.stat().st_mtime_ns, _mid_epoch_checkpoint(last)
                if saved is None:
                    killed.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
    finally:
        killed.kill()
        killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not (b / "metrics.json").exists()
    (tmp_path / "b_resumed_from.ckpt").write_bytes(last.read_bytes())

    resume = subprocess.run([sys.executable, "-m", "seq2seq.train", *overrides, "ckpt_path=last", f"hydra.run.dir={b}"],
                            cwd=tmp_path, env=command_env(tmp_path, threads=1), capture_output=True, text=True, timeout=timeout)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert uninterrupted.wait(timeout=timeout) == 0, (tmp_path / "a.log").read_text()[-3000:]
    return a, b


def make_job(sweep: Path, num: int, overrides: list[str], d_model: int, metrics: dict | None,
             tokens_per_s: list[float] = ()) -> Path:
    """A job folder as Hydra and train leave it (metrics None: the job failed)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "model": {"d_model": d_model, "num_encoder_layers": 2, "num_decoder_layers": 2},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model/size": "tiny"}}}}))
    if tokens_per_s:
        (job / "csv").mkdir()
        with (job / "csv" / "metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "train/loss", "train/tokens_per_s"])
            writer.writerows([[i, 1.0, ""] for i in range(2)] + [[i, "", v] for i, v in enumerate(tokens_per_s)])
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job
