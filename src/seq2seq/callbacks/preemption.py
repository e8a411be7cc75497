"""Preemption: a SIGTERM, SIGUSR1 or SIGUSR2 makes a training run save ``last.ckpt`` and stop.

SLURM sends SIGTERM when it preempts or cancels a job, the signal of ``--signal=SIG@SECONDS``
(SIGUSR1 in Lightning's examples, SIGUSR2 for submitit and ``hydra/launcher=slurm``) before the time
limit, and SIGKILL a grace period later. :class:`PreemptionCheckpoint` (``callbacks.preemption``)
turns such a signal into a clean stop: the handler only notes it; at the next point where
checkpoints resume exactly (the end of an optimizer step outside a gradient-accumulation cycle, of a
validation within an epoch, of an epoch), after the other callbacks, it writes ``last.ckpt`` with
``trainer.save_checkpoint`` and raises :class:`Preempted`. ``seq2seq.train`` then exits with
:data:`PREEMPTED_EXIT_CODE`; the same command with ``ckpt_path=auto`` continues, ending with the same
weights and metrics as a run never stopped (``tests/test_preemption.py``).

The other signal handlers of a run:

* during training this callback replaces Lightning's (a SIGTERM handler that stops mid
  accumulation without a checkpoint; under SLURM auto-requeue a SIGUSR1 handler that saves
  ``hpc_ckpt_N.ckpt`` wherever the step was), and requeues such a job itself after saving;
* other handlers (submitit's SIGUSR2: checkpoint, requeue, exit) are called after ``last.ckpt`` is
  written, so a requeued job finds it;
* under DDP or FSDP any rank's signal makes all ranks save and stop at the same step.

Outside ``fit`` the signals keep their usual meaning.
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
    name = "SIG" + str(name).upper().removeprefix("SIG")
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"callbacks.preemption.signals: unknown signal {name!r}") from None


def _foreign_handlers(handler: Any) -> list:
    """The callables in ``handler`` (possibly Lightning's composition of several) that are not Lightning's."""
    from lightning.pytorch.trainer.connectors.signal_connector import _HandlersCompose, _SignalConnector

    inner = handler.signal_handlers if isinstance(handler, _HandlersCompose) else [handler]
    return [h for h in inner if callable(h) and not isinstance(getattr(h, "__self__", None), _SignalConnector)]


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

    A :class:`~lightning.pytorch.callbacks.Checkpoint`, so Lightning runs it after the other callbacks
    (and ``seq2seq.train`` after the other checkpoint callbacks): the step's EMA update, logging and
    periodic checkpoint are done, and the file equals what the periodic checkpoint would hold.

    Args:
        dirpath: folder of ``last.ckpt`` (the run folder's ``checkpoints/``).
        signals: signal names that mean "preempted".
    """

    def __init__(self, dirpath: str, signals: list[str] | tuple[str, ...] = ("SIGTERM", "SIGUSR1", "SIGUSR2")) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.signals = [_signal(s) for s in signals]
        self._received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    # -- handlers ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._received is None:
            self._received = signal.Signals(signum)
            log.warning("%s received: saving %s at the end of this training step, then stopping",
                        self._received.name, self.path)

    def _restore(self, *hook_args: Any, **hook_kwargs: Any) -> None:
        """Put the previous handlers back (also Lightning's hooks on_train_end, on_exception, teardown)."""
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    on_train_end = on_exception = teardown = _restore

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._received = None
        if threading.current_thread() is not threading.main_thread():
            log.warning("Training outside the main thread: preemption signals are not handled")
            return
        for signum in self.signals:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    # -- stopping ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Not while the step's gradients are still being summed (they are not in a checkpoint), nor
        # after the epoch's last batch (its validation and end follow: stop at on_train_epoch_end).
        if not trainer.fit_loop._should_accumulate() and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
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
