"""Exact resume: a run killed with SIGKILL mid-epoch and resumed from its last checkpoint ends as if
it had never stopped: same weights (and the same moving average of them, callbacks=ema), same
metrics.json, same loss curve in csv/metrics.csv.

Two runs start together from the same corpus and cache: ``a`` trains uninterrupted; ``b`` is killed as
soon as a periodic ``last.ckpt`` from the middle of its second epoch exists (after one validation,
so early stopping and the best checkpoint have state), then resumed with
``ckpt_path=last hydra.run.dir=<b>``. One thread per process, so the arithmetic is the same.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import QUICK, TINY_OVERRIDES, command_env, kill_and_resume
from helpers import comparable_metrics as _comparable
from helpers import loss_curve as _curve
from seq2seq.callbacks.checkpointing import AtomicCheckpointIO
from seq2seq.inference.checkpoint import read_checkpoint
from seq2seq.train import _plugins

# The killed run: small enough to be quick (~28 batches per epoch), with an average of the weights.
EVERY = 5
OVERRIDES = [
    *TINY_OVERRIDES,
    "data.generate.sizes={train:300,val:8,test:8}",
    "data.max_tokens=256",
    "model.d_model=32",
    "trainer.max_epochs=2",
    "trainer.max_time=null",
    "trainer.log_every_n_steps=1",  # the throughput window (train/padding) then restarts at every step
    "callbacks=[early_stopping,ema]",
    "callbacks.ema.decay=0.9",
    "callbacks.validation_samples=null",
    f"callbacks.periodic_checkpoint.every_n_train_steps={EVERY}",
]


def test_killed_run_resumes_exactly(tmp_path):
    a, b = kill_and_resume(tmp_path, OVERRIDES)

    # The checkpoint resumed from is complete (atomic writes) and in the middle of epoch 1.
    resumed_from = torch.load(tmp_path / "b_resumed_from.ckpt", map_location="cpu", weights_only=True)
    progress = resumed_from["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert resumed_from["epoch"] == 1 and resumed_from["global_step"] % EVERY == 0
    assert 0 < int(resumed_from["averaging_state"]["n_averaged"])
    sampler = resumed_from["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batch_sampler"]
    assert (sampler["epoch"], sampler["position"]) == (1, progress["completed"] + 1)
    assert 0 < sampler["position"] < sampler["num_batches"]

    # Same final weights and average, metrics (validation and test ran on the same averages) and loss curve.
    last_a, last_b = (torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for run in (a, b))
    assert last_a["global_step"] > resumed_from["global_step"]
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert last_a[key].keys() == last_b[key].keys()
        assert all(torch.equal(last_a[key][n], last_b[key][n]) for n in last_a[key]), key
    average, trained = last_a["state_dict"], last_a["current_model_state"]
    assert not all(torch.equal(average[n], trained[n]) for n in average)
    metrics_a, metrics_b = _comparable(a), _comparable(b)
    assert "val/loss" in metrics_a and "val/bleu" in metrics_a and "test/bleu" in metrics_a
    assert metrics_a == metrics_b
    curve_a, curve_b = _curve(a), _curve(b)
    steps = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert [int(row["step"]) for row in curve_a if row["train/loss"]] == list(range(steps))  # one row per step
    assert curve_a == curve_b


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint whole, and no partial file behind."""
    trainer = L.Trainer(plugins=_plugins(None), logger=False, enable_progress_bar=False)
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    target = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, target)
    before = target.read_bytes()

    def crash(obj, file, *args, **kwargs):
        file.write(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint({"global_step": 2}, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


@contextlib.contextmanager
def small_disk(folder: Path, size_kb: int):
    """A tmpfs of ``size_kb`` KiB mounted on ``folder`` (needs root); None where it cannot be mounted."""
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


# The tmpfs case (ENOSPC, root only) is slow-marked: the file-size limit (EFBIG) runs the same path
# everywhere, and errors.user_error_message's unit tests cover each errno's message.
@pytest.mark.parametrize("disk", [pytest.param("tmpfs", marks=pytest.mark.slow), "file-size-limit"])
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(disk, tmp_path):
    """A run resumed where less than one more checkpoint fits: the first checkpoint write fails. The
    command ends with one line naming the file and the cause, exit status 2, no traceback, and the
    previous last.ckpt stays whole. The full disk is a small tmpfs (mounting one needs root: skipped
    without), or a file-size limit (ulimit -f) smaller than a checkpoint (everywhere)."""
    overrides = [*QUICK, "trainer.max_time=null", "callbacks.progress_bar=null", f"paths.data_dir={tmp_path / 'data'}",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    env = command_env(tmp_path)
    env.pop("HYDRA_FULL_ERROR")  # what a user sees by default

    def train(run: Path, *extra: str, limit: int | None = None) -> subprocess.CompletedProcess:
        def file_size_limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return subprocess.run([sys.executable, "-m", "seq2seq.train", *overrides, f"hydra.run.dir={run}", *extra],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                              preexec_fn=file_size_limit if limit else None)

    first = tmp_path / "first"
    assert train(first, "trainer.max_epochs=1").returncode == 0
    checkpoint_bytes = (first / "checkpoints" / "last.ckpt").stat().st_size
    used_kb = sum(p.stat().st_size for p in first.rglob("*") if p.is_file()) // 1024
    with small_disk(tmp_path / "disk", used_kb + checkpoint_bytes // 1024 // 2) as mounted:
        if disk == "tmpfs" and mounted is None:
            pytest.skip("cannot mount a tmpfs here (not root); the file-size-limit case covers a full disk")
        run = (mounted if disk == "tmpfs" else tmp_path) / "run"
        shutil.copytree(first, run)
        before = (run / "checkpoints" / "last.ckpt").read_bytes()
        result = train(run, "ckpt_path=last", "trainer.max_epochs=3",
                       limit=checkpoint_bytes // 2 if disk == "file-size-limit" else None)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
        assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.stderr[-3000:]
        cause = "No space left on device" if disk == "tmpfs" else "File too large"
        assert lines[-1].startswith(f"error: {run / 'checkpoints'}/") and f".ckpt: {cause}: " in lines[-1], lines[-1]
        assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
        assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 2
        assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
