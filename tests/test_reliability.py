"""Reliability: determinism, safe checkpoint loading, NaN/inf loss, checkpoint/data mismatch."""

import json
from pathlib import Path

import pytest
import torch

from helpers import SHORT_TRAINING_OVERRIDES, TINY_OVERRIDES, compose_train, poison_loss_at_step
from seq2seq.errors import CheckpointError, TrainingError
from seq2seq.train import train

# Keys that measure the machine, not the model.
TIMING_KEYS = ("wall_time_s", "run_dir", "checkpoints", "git_commit")  # a commit may land between runs
QUICK = TINY_OVERRIDES + ["data.generate.sizes={train:600,val:32,test:32}", "trainer.max_epochs=2",
                          "trainer.max_time=null"]


def comparable(metrics_file: Path) -> dict:
    metrics = json.loads(metrics_file.read_text())
    return {k: v for k, v in metrics.items()
            if k not in TIMING_KEYS and not k.startswith(("train/tokens_per_s", "train/tflops", "train/mfu"))}


def test_same_config_and_seed_give_identical_metrics(tmp_path):
    first = train(compose_train(tmp_path / "a", QUICK))
    second = train(compose_train(tmp_path / "b", QUICK))
    assert first["val/loss"] == second["val/loss"]
    a = comparable(tmp_path / "a" / "run" / "metrics.json")
    b = comparable(tmp_path / "b" / "run" / "metrics.json")
    assert a == b
    assert "val/loss" in a and "test/bleu" in a
    # A different seed gives a different model: the comparison above can fail.
    third = train(compose_train(tmp_path / "c", QUICK + ["seed=7"]))
    assert third["val/loss"] != first["val/loss"]


def test_checkpoints_load_without_executing_code(tiny_checkpoint):
    """Checkpoints hold tensors, numbers, strings and bytes only: the safe loader accepts them."""
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    assert isinstance(state["tokenizer"]["src_model"], bytes)
    assert state["model_config"]["d_model"] == 64


def test_nan_loss_stops_with_the_step(tmp_path, monkeypatch):
    poison_loss_at_step(monkeypatch, 3)
    with pytest.raises(TrainingError, match="non-finite loss .* at step 3"):
        train(compose_train(tmp_path, QUICK))


def test_nan_loss_can_skip_the_batch(tmp_path, monkeypatch):
    poison_loss_at_step(monkeypatch, 3)
    metrics = train(compose_train(tmp_path, QUICK + ["optim.nonfinite=skip"]))
    assert metrics["train/skipped_batches"] == 1.0
    assert all(torch.isfinite(p).all() for p in
               torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"].values())


def test_resume_with_other_data_is_refused(tmp_path, tiny_checkpoint):
    # The checkpoint's model (so that only the data differs: another model is refused before that).
    model = [o for o in SHORT_TRAINING_OVERRIDES if o.startswith("model.")]
    # A budget above the checkpoint's progress: a spent budget is refused before the data is read.
    cfg = compose_train(tmp_path, QUICK + model + ["trainer.max_epochs=50", "data.vocab_size=300",
                                                   f"ckpt_path={tiny_checkpoint}"])
    with pytest.raises(CheckpointError, match="tokenizer differs"):
        train(cfg)
