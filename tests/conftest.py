"""Shared fixtures: composing the real Hydra config and a tiny trained checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from seq2seq.config import config_dir

REPO = Path(__file__).resolve().parents[1]
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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A tiny model trained briefly through the real train() path; returns its metrics.json content."""
    from seq2seq.train import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_train(tmp, SHORT_TRAINING_OVERRIDES)
    metrics = train(cfg)
    metrics["run_dir"] = str(tmp / "run")
    metrics["data_dir"] = str(tmp / "data" / "toy")
    return metrics


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """Path of the tiny run's best checkpoint (weights, model config and tokenizer)."""
    return Path(tiny_run["run_dir"]) / "checkpoints" / "best.ckpt"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real corpora are only on developer and CI machines)")
    return SHARED_DATA


os.environ.setdefault("WANDB_MODE", "offline")
