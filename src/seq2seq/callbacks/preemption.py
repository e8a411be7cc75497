"""Preemption: a SIGTERM, SIGUSR1 or SIGUSR2 makes a training run save ``last.ckpt`` and stop.

Clusters announce the end of a job with a signal: SLURM sends SIGTERM when it preempts or cancels
a job, the signal of ``--signal=SIG@SECONDS`` (SIGUSR1 in Lightning's SLURM examples, SIGUSR2 for
submitit and so for ``hydra/launcher=slurm``) before the time limit, and SIGKILL a grace period
later. :class:`PreemptionCheckpoint` (``callbacks.preemption``) turns such a signal into a clean
stop: the handler only notes the signal; at the next point where Lightning's own checkpoints resume
exactly (the end of an optimizer step, not inside a gradient-accumulation cycle; the end of a
validation within an epoch; the end of an epoch, after its validation and checkpoints), after every
other callback of that point has run, the callback writes ``<run folder>/checkpoints/last.ckpt`` with
``trainer.save_checkpoint`` (the same content as the periodic ``last.ckpt``: optimizer, schedule,
loop counters, sampler position, :class:`~seq2seq.callbacks.checkpointing.ResumeState`), then raises
:class:`Preempted`. ``seq2seq.train`` prints how to resume and exits with status
:data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``: try again); the same command with ``ckpt_path=auto``
continues, and ends with the same weights and metrics as a run that was never stopped
(``tests/test_preemption.py``).

How it sits with the other signal handlers of a run:

* Lightning's signal connector installs, for the duration of ``fit``, a SIGTERM handler that makes
  the loops raise ``SIGTERMException`` at the end of the current batch (with no checkpoint outside
  SLURM, and in the middle of a gradient-accumulation cycle), and under SLURM with
  ``SLURMEnvironment(auto_requeue=True)`` a SIGUSR1 handler that saves ``hpc_ckpt_N.ckpt`` from inside
  the signal handler, wherever the step was, and runs ``scontrol requeue``. From
  ``on_train_start`` until training ends this callback replaces both (the connector puts its own
  back when ``fit`` returns). Under SLURM with auto-requeue it then requeues the job itself, after
  saving, with the same ``scontrol requeue`` call.
* Handlers that are not Lightning's (submitit's SIGUSR2 handler, which checkpoints the submitted
  function, requeues the job and exits) are called after ``last.ckpt`` is written, so a requeued
  submitit job finds it.
* Under DDP or FSDP the ranks agree (any rank's signal counts, ``reduce_boolean_decision``) on one
  step at which all of them save and stop; only the ranks that received the signal call the
  previous handler.

Outside ``fit`` (data preparation, testing) the signals keep their usual meaning; a run stopped
then resumes from its last ``last.ckpt`` like any other.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry".
PREEMPTED_EXIT_CODE = 75
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")


class Preempted(Exception):
    """Training stopped on a signal after writing ``checkpoint`` (None: stopped outside training)."""

    def __init__(self, signal_name: str, checkpoint: str | None, global_step: int, epoch: int,
                 requeued: bool = False) -> None:
        self.signal_name, self.checkpoint = signal_name, checkpoint
        self.global_step, self.epoch, self.requeued = global_step, epoch, requeued
        where = f"saved {checkpoint}" if checkpoint else "no new checkpoint"
        super().__init__(f"{signal_name} received: stopped at step {global_step} (epoch {epoch}), {where}"
                         + (", SLURM job requeued" if requeued else ""))


def _signal(name: str | int) -> signal.Signals:
    if isinstance(name, int):
        return signal.Signals(name)
    name = str(name).upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"callbacks.preemption.signals: unknown signal {name!r}") from None


def _is_lightning_handler(handler: Any) -> bool:
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    return isinstance(getattr(handler, "__self__", None), _SignalConnector)


def _foreign_handlers(handler: Any) -> list:
    """The callables in ``handler`` (possibly Lightning's composition of several) that are not Lightning's."""
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose

    inner = handler.signal_handlers if isinstance(handler, _HandlersCompose) else [handler]
    return [h for h in inner if callable(h) and not _is_lightning_handler(h)]


def slurm_requeue() -> bool:
    """``scontrol requeue`` of this SLURM job (array task included), as Lightning's auto-requeue does."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job_id = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9_]+", job_id):
        log.warning("Not requeued: no SLURM job id in the environment")
        return False
    try:
        result = subprocess.call(["scontrol", "requeue", job_id])
    except FileNotFoundError:
        log.warning("Not requeued: scontrol is not on PATH")
        return False
    if result != 0:
        log.warning("scontrol requeue %s failed with status %s", job_id, result)
    return result == 0


class PreemptionCheckpoint(Checkpoint):
    """On SIGTERM/SIGUSR1/SIGUSR2 during training: save ``last.ckpt`` at the next exact point and stop.

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after the other
    callbacks (``seq2seq.train`` also puts it after the other checkpoint callbacks): by then the
    step's EMA update, logging and periodic checkpoint are done, and the file equals what the
    periodic checkpoint would hold at this step.

    Args:
        dirpath: folder of ``last.ckpt`` (the run folder's ``checkpoints/``).
        signals: signal names that mean "preempted".
        filename: the checkpoint's name without ``.ckpt``.
    """

    def __init__(self, dirpath: str, signals: list[str] | tuple[str, ...] = DEFAULT_SIGNALS, filename: str = "last") -> None:
        self.dirpath = Path(dirpath)
        self.filename = filename
        self.signals = [_signal(s) for s in signals]
        self._received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def path(self) -> Path:
        return self.dirpath / f"{self.filename}.ckpt"

    # -- handlers ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._received is None:
            self._received = signal.Signals(signum)
            log.warning("%s received: saving %s at the end of this training step, then stopping",
                        self._received.name, self.path)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("Training outside the main thread: preemption signals are not handled")
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def _restore(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._received = None
        self._install()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    # -- stopping ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loop = trainer.fit_loop.epoch_loop
        if trainer.fit_loop._should_accumulate():
            return  # gradients of this step are still being summed: they are not in a checkpoint
        if loop.batch_progress.is_last_batch:
            return  # the epoch's validation and end follow: stop at on_train_epoch_end
        self._maybe_stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A validation within the epoch (trainer.val_check_interval < 1); the one at the epoch's end
        # is followed by on_train_epoch_end, where Lightning's checkpoints are written.
        if (trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            self._maybe_stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._maybe_stop(trainer)

    def _maybe_stop(self, trainer: L.Trainer) -> None:
        requested = trainer.strategy.reduce_boolean_decision(self._received is not None, all=False)
        if not requested:
            return
        received = self._received
        path = str(self.path)
        trainer.save_checkpoint(path, weights_only=False)
        name = received.name if received is not None else "a signal to another rank"
        log.warning("%s: saved %s at step %s (epoch %s)", name, path, trainer.global_step, trainer.current_epoch)
        previous = self._previous.get(received) if received is not None else None
        self._restore()
        requeued = False
        if received is not None:
            environment = trainer._accelerator_connector.cluster_environment
            from lightning.fabric.plugins.environments import SLURMEnvironment

            if (isinstance(environment, SLURMEnvironment) and environment.auto_requeue
                    and received == environment.requeue_signal and trainer.is_global_zero):
                requeued = slurm_requeue()
            for handler in _foreign_handlers(previous):
                handler(int(received), None)  # e.g. submitit: requeue the job and exit
        raise Preempted(name, path, trainer.global_step, trainer.current_epoch, requeued=requeued)
