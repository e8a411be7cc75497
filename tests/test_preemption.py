"""Preemption: a SIGTERM mid-epoch makes ``seq2seq.train`` write ``last.ckpt`` and exit with status 75;
the same command (``ckpt_path=auto``) continues and ends as a run that was never stopped. A rerun
multirun finishes its interrupted job and leaves the finished one alone.

Real processes: one uninterrupted reference run (module fixture, started once, in parallel with the
first interrupted run), one run stopped by SIGTERM in its second epoch and continued, and a two-job
multirun stopped in its second job and rerun. One torch thread per process, so the arithmetic is
the same. Plus in-process checks of the signal hand-over (previous handlers, SLURM requeue).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from helpers import TINY_OVERRIDES, command_env
from helpers import comparable_metrics as _comparable
from helpers import loss_curve as _curve
from seq2seq.callbacks.checkpointing import finished_run, resume_checkpoint
from seq2seq.callbacks.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCheckpoint, slurm_requeue

EVERY = 10  # periodic last.ckpt every EVERY optimizer steps: the sign of progress the tests wait for
OVERRIDES = [
    *TINY_OVERRIDES,
    "data.generate.sizes={train:1000,val:32,test:32}",
    "data.max_tokens=512",  # ~47 batches per epoch
    "trainer.max_epochs=2",
    "trainer.max_time=null",
    "trainer.log_every_n_steps=1",
    "callbacks=early_stopping",
    f"callbacks.periodic_checkpoint.every_n_train_steps={EVERY}",
    "ckpt_path=auto",
]
TIMEOUT = 300


def _start(args: list[str], root: Path, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "seq2seq.train", *args], cwd=root,
                                env=command_env(root, threads=1), stdout=out, stderr=subprocess.STDOUT)


def _checkpoint(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not there yet
        return None


def _mid_epoch(ckpt: dict | None, epoch: int) -> bool:
    if ckpt is None or ckpt["epoch"] < epoch:
        return False
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    return not progress["is_last_batch"] and progress["current"]["completed"] > 0


def _terminate_mid_epoch(process: subprocess.Popen, last: Path, epoch: int, log: Path) -> dict:
    """Wait for a periodic ``last`` from the middle of epoch ``epoch`` or later, send SIGTERM, wait
    for the exit; returns the checkpoint seen before the signal."""
    deadline, seen = time.monotonic() + TIMEOUT, None
    try:
        while True:
            assert process.poll() is None, "ended before a mid-epoch checkpoint:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no mid-epoch checkpoint within {TIMEOUT} s"
            stamp = last.stat().st_mtime_ns if last.exists() else None
            if stamp is not None and stamp != seen:
                seen, ckpt = stamp, _checkpoint(last)
                if _mid_epoch(ckpt, epoch):
                    break
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return ckpt


def _weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _same_run(a: Path, b: Path) -> None:
    """Same final weights, metrics.json (less timings and paths) and loss curve."""
    weights_a, weights_b = _weights(a), _weights(b)
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    metrics_a, metrics_b = _comparable(a), _comparable(b)
    assert {"val/loss", "val/bleu", "test/bleu"} <= metrics_a.keys()
    assert metrics_a == metrics_b
    assert _curve(a) == _curve(b)


class Reference:
    """The uninterrupted run, started once for the module."""

    def __init__(self, root: Path) -> None:
        self.root, self.folder = root, root / "reference"
        self.log = root / "reference.log"
        self.process = _start([*OVERRIDES, f"hydra.run.dir={self.folder}"], root, self.log)

    def wait(self) -> Path:
        assert self.process.wait(timeout=TIMEOUT) == 0, self.log.read_text()[-3000:]
        return self.folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = Reference(tmp_path_factory.mktemp("preemption"))
    yield ref
    if ref.process.poll() is None:
        ref.process.kill()
        ref.process.wait()


def test_sigterm_mid_epoch_then_ckpt_path_auto_ends_as_an_uninterrupted_run(reference):
    root, run = reference.root, reference.root / "preempted"
    args = [*OVERRIDES, f"hydra.run.dir={run}"]
    process = _start(args, root, root / "preempted.log")  # runs beside the reference
    periodic = _terminate_mid_epoch(process, run / "checkpoints" / "last.ckpt", epoch=1, log=root / "preempted.log")
    output = (root / "preempted.log").read_text()
    assert process.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    assert "Traceback" not in output
    assert f"To continue, run the same command with ckpt_path=auto hydra.run.dir={run}" in output
    assert not (run / "metrics.json").exists()

    # The signal's checkpoint: written after the periodic one seen, at an optimizer step in the middle
    # of epoch 1 (after a validation), with the sampler's position.
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert saved["epoch"] == 1 and saved["global_step"] > periodic["global_step"]
    assert f"Preempted by SIGTERM at step {saved['global_step']} (epoch 1)" in output
    sampler = saved["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batch_sampler"]
    assert (sampler["epoch"], sampler["position"]) == (1, progress["completed"] + 1)
    assert 0 < sampler["position"] < sampler["num_batches"]
    assert "ModelCheckpoint{'monitor': 'val/bleu'" in " ".join(saved["callbacks"])  # best score kept

    resumed = subprocess.run([sys.executable, "-m", "seq2seq.train", *args], cwd=root, env=command_env(root, threads=1),
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"ckpt_path=auto: resuming from {run / 'checkpoints' / 'last.ckpt'} (step {saved['global_step']})" in resumed.stdout

    ref = reference.wait()
    _same_run(ref, run)
    # last.ckpt of a finished run is its final state (also when the last validation did not improve).
    final = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == len([row for row in _curve(ref) if row["train/loss"]])
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"


def _fingerprint(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log"}


def test_rerun_multirun_finishes_only_the_interrupted_job(reference):
    root = reference.root
    sweep = root / "sweep"
    # Job 1 (seed 1234) is the reference's configuration.
    args = ["-m", *OVERRIDES, "seed=1,1234", f"hydra.sweep.dir={sweep}"]
    process = _start(args, root, root / "sweep.log")
    _terminate_mid_epoch(process, sweep / "1" / "checkpoints" / "last.ckpt", epoch=0, log=root / "sweep.log")
    output = (root / "sweep.log").read_text()
    assert process.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    assert f"rerun the same multirun (-m) with ckpt_path=auto hydra.sweep.dir={sweep}" in output
    assert finished_run(sweep / "0") is not None and finished_run(sweep / "1") is None
    before = _fingerprint(sweep / "0")
    assert {"checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.json", "csv/metrics.csv"} <= before.keys()

    rerun = subprocess.run([sys.executable, "-m", "seq2seq.train", *args], cwd=root, env=command_env(root, threads=1),
                           capture_output=True, text=True, timeout=TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Run folder: {sweep / '0'} (finished earlier; not trained again)" in rerun.stdout
    assert rerun.stdout.count("ckpt_path=auto: resuming from") == 1
    assert _fingerprint(sweep / "0") == before  # the finished job's files are untouched
    assert finished_run(sweep / "1") is not None
    _same_run(reference.wait(), sweep / "1")


@pytest.mark.slow
def test_ddp_ranks_stop_at_one_step_and_resume_exactly(tmp_path):
    """trainer=ddp_sim (two processes): SIGTERM to the launching process only; both ranks save at
    the same step, every rank exits with status 75, and ckpt_path=auto ends as an uninterrupted run."""
    args = [*OVERRIDES, "trainer=ddp_sim", "data.max_tokens=256", "trainer.max_epochs=1", "callbacks=default"]
    reference = _start([*args, f"hydra.run.dir={tmp_path / 'reference'}"], tmp_path, tmp_path / "reference.log")
    run = tmp_path / "preempted"
    process = _start([*args, f"hydra.run.dir={run}"], tmp_path, tmp_path / "preempted.log")
    _terminate_mid_epoch(process, run / "checkpoints" / "last.ckpt", epoch=0, log=tmp_path / "preempted.log")
    output = (tmp_path / "preempted.log").read_text()
    assert process.returncode == PREEMPTED_EXIT_CODE, output[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert len(saved["callbacks"]["ResumeState"]["rng_per_rank"]) == 2
    assert output.count(f"saved {run / 'checkpoints' / 'last.ckpt'} at step {saved['global_step']}") == 2  # both ranks
    assert output.count("Preempted by SIGTERM") == 1  # said once, by rank 0
    resumed = subprocess.run([sys.executable, "-m", "seq2seq.train", *args, f"hydra.run.dir={run}"], cwd=tmp_path,
                             env=command_env(tmp_path, threads=1), capture_output=True, text=True, timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=TIMEOUT) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    _same_run(tmp_path / "reference", run)


# ------------------------------------------------------------------------- in-process checks
def test_ckpt_path_auto_and_finished_runs(reference, tmp_path, monkeypatch):
    from seq2seq.train import requested_checkpoint

    assert resume_checkpoint("auto", tmp_path) is None  # nothing yet: a new run
    ref = reference.wait()
    assert resume_checkpoint("auto", ref) == str(ref / "checkpoints" / "last.ckpt")
    assert finished_run(ref)["status"] == "finished" and finished_run(tmp_path) is None
    (tmp_path / "metrics.json").write_text("{not json")
    assert finished_run(tmp_path) is None

    class Cfg(dict):
        get = dict.get

    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert requested_checkpoint(Cfg(ckpt_path=None)) is None
    assert requested_checkpoint(Cfg(ckpt_path="last")) == "last"
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")  # a requeued SLURM job continues by itself
    assert requested_checkpoint(Cfg(ckpt_path=None)) == "auto"
    assert requested_checkpoint(Cfg(ckpt_path="x.ckpt")) == "x.ckpt"


class _SignalAt(L.Callback):
    """Sends ``signum`` to this process at the end of training batch ``batch``."""

    def __init__(self, signum: int, batch: int) -> None:
        self.signum, self.batch = signum, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


def test_signal_saves_at_the_step_boundary_then_hands_over(tmp_path):
    """With gradient accumulation the checkpoint waits for the step's end; a previous handler that
    is not Lightning's (submitit's requeue) runs after the file is written; handlers are put back."""
    from lightning.pytorch.demos.boring_classes import BoringModel

    calls = []

    def submitit_like(signum, frame):
        calls.append((signum, (tmp_path / "last.ckpt").is_file()))

    previous = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        callback = PreemptionCheckpoint(dirpath=str(tmp_path))
        trainer = L.Trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[_SignalAt(signal.SIGUSR2, 4), callback],
                            logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=True,
                            accelerator="cpu", devices=1)
        with pytest.raises(Preempted) as stopped:
            trainer.fit(BoringModel())
        # Batch 4 ends mid-accumulation (batches 4, 5 make step 3): saved after batch 5.
        assert (stopped.value.signal_name, stopped.value.global_step, stopped.value.checkpoint) == (
            "SIGUSR2", 3, str(tmp_path / "last.ckpt"))
        assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 3
        assert calls == [(signal.SIGUSR2, True)]
        assert signal.getsignal(signal.SIGUSR2) is submitit_like
        assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_slurm_requeue_calls_scontrol(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\n")
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert slurm_requeue()
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert slurm_requeue()
    assert (tmp_path / "calls").read_text().splitlines() == ["requeue 123", "requeue 7_3"]


def test_slurm_launcher_requeues_into_the_same_folder(tmp_path, monkeypatch):
    """hydra/launcher=slurm: the sbatch script submitit writes asks for the warning signal and
    requeues, and the executor requeues after time-outs; job folders hang off the fixed sweep dir."""
    import submitit
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from helpers import compose_train

    bin_dir = tmp_path / "bin"  # submitit looks for srun before it writes anything
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    cfg = compose_train(tmp_path, ["hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"])
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}"  # <sweep dir>/<job number>
    params = instantiate(cfg.hydra.launcher).params
    # As hydra_submitit_launcher's SlurmLauncher.launch builds its executor:
    executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                     slurm_max_num_timeout=params["max_num_timeout"])
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in {"submitit_folder", "max_num_timeout"}})
    assert executor._executor.max_num_timeout == 20
    sbatch = executor._executor._make_submission_file_text("python -m seq2seq.train", "uid").splitlines()
    assert "#SBATCH --signal=USR2@180" in sbatch and "#SBATCH --requeue" in sbatch
    assert f"#SBATCH --output={sweep}/.submitit/%j/%j_0_log.out" in sbatch
