"""Checkpoints that a crash cannot damage, and resuming a run exactly where it stopped.

Four pieces, used by :mod:`seq2seq.train`:

* :class:`AtomicCheckpointIO` (a Trainer plugin): a run killed while saving leaves the previous
  ``last.ckpt`` intact instead of a truncated one.
* :class:`LastCheckpoint` (``callbacks.periodic_checkpoint``) writes ``last.ckpt`` after every
  validation, every ``every_n_train_steps`` optimizer steps and when training ends.
* :class:`ResumeState` (``callbacks.resume_state``) stores what Lightning does not: the random
  generators and the CSV logger's rows, so dropout masks and ``csv/metrics.csv`` continue as if the
  run had never stopped (Lightning restores the rest, the train loader's position included).
* :func:`resume_checkpoint` resolves and checks ``ckpt_path`` before anything is trained.

Resume a killed run in its own folder with ``python -m seq2seq.train <same overrides> ckpt_path=last
hydra.run.dir=<run folder>``, or give ``ckpt_path=auto`` from the start: the same command then starts
the run, continues it after a kill or a preemption (:mod:`seq2seq.callbacks.preemption`), and does
nothing once it has finished (:func:`finished_run`). The resumed run ends with the same weights,
metrics and loss curve as an uninterrupted one (``tests/test_resume.py``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import check_architecture, read_checkpoint
from seq2seq.utils.io import atomic_open_binary

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file beside the target, fsync, then ``os.replace`` onto it.

    Lightning's own writer saves through an fsspec transaction whose temporary file lives in the
    system's temp folder: across file systems the final "move" is a copy into the target, which a
    crash can leave half-written.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        with atomic_open_binary(path) as f:
            torch.save(checkpoint, f)


class LastCheckpoint(ModelCheckpoint):
    """Writes ``<dirpath>/last.ckpt`` only: every ``every_n_train_steps`` optimizer steps, after every
    validation (or at the end of every epoch without one), and when training ends.

    Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` after a validation only when
    it also wrote a top-k checkpoint (Lightning >= 2.5): a run whose score stopped improving kept an
    old one. A step-triggered save on the last batch of an epoch is left to the epoch's end, right
    after it, with the validation's results (best score, early stopping) included.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(dirpath=dirpath, monitor=None, save_top_k=0, save_last=True,
                         every_n_train_steps=every_n_train_steps, **kwargs)

    def _save_last(self, trainer: L.Trainer, now: bool = True) -> None:
        if now and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer, not self._should_save_on_train_epoch_end(trainer))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer, self._should_save_on_train_epoch_end(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_last(trainer)


# ---------------------------------------------------------------------------------- RNG and logs
def _rng_state() -> dict[str, Any]:
    """Every global generator's state, as types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state["kind"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["internal"]), py_state["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            rank_zero_warn(f"The checkpoint holds the RNG state of {len(cuda)} GPUs, this machine has "
                           f"{torch.cuda.device_count()}: CUDA random numbers will differ from the saved run.")


def _csv_loggers(trainer: L.Trainer) -> list[CSVLogger]:
    return [logger for logger in trainer.loggers if isinstance(logger, CSVLogger)]


class ResumeState(L.Callback):
    """Save and restore the random generators and the CSV logger's rows with each checkpoint.

    The generators (each rank's, under DDP) are captured when the checkpoint is written and set back
    in ``on_train_start``; nothing draws from the global generators between those two points (the
    data loaders have their own), so dropout continues with the same masks.

    The CSV logger deletes an existing ``metrics.csv`` when it starts, so the rows written up to the
    checkpoint are kept in it and written back on resume; a training step that is saved before its
    metrics are logged (``every_n_train_steps``) carries that pending row as well. Rows the crashed
    run logged after its checkpoint are dropped: the resumed run logs them again.
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None
        self._trainer: L.Trainer | None = None  # set in setup; state_dict needs it to gather and read the CSV

    # -- saving --------------------------------------------------------------------------------
    @staticmethod
    def _pending_row(trainer: L.Trainer) -> dict[str, Any] | None:
        """The step metrics this training batch will log right after the checkpoint, if any."""
        loop = trainer.fit_loop.epoch_loop
        current = loop.batch_progress.current
        connector = trainer._logger_connector
        in_batch_end = trainer.training and current.processed > current.completed
        if not in_batch_end or connector._first_loop_iter is None or trainer.fit_loop._should_accumulate():
            return None
        if not (connector.should_update_logs or trainer.fast_dev_run):
            return None
        from lightning.fabric.utilities.apply_func import convert_tensors_to_scalars

        metrics = convert_tensors_to_scalars(dict(connector.metrics["log"]))
        if not metrics:
            return None
        metrics.setdefault("epoch", trainer.current_epoch)
        return {"metrics": metrics, "step": int(loop._batches_that_stepped)}

    def state_dict(self) -> dict[str, Any]:
        trainer = self._trainer
        state: dict[str, Any] = {"rng": _rng_state(), "csv": []}
        if trainer is None:
            return state
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank saves (Trainer.save_checkpoint runs on all of them); rank 0's file keeps
            # each rank's generators, which differ once dropout has drawn for batches of other shapes.
            gathered: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, state["rng"])
            state["rng_per_rank"] = gathered
        pending = self._pending_row(trainer)
        if trainer.is_global_zero:
            for logger in _csv_loggers(trainer):
                logger.save()
                path = Path(logger.experiment.metrics_file_path)
                text = path.read_text(encoding="utf-8") if path.is_file() else ""
                state["csv"].append({"text": text, "pending": pending})
        return state

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    # -- restoring -----------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if not state:
            return
        if trainer.is_global_zero:
            for logger, saved in zip(_csv_loggers(trainer), state.get("csv", [])):
                self._restore_csv(logger, saved)
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) == trainer.world_size:
            _set_rng_state(per_rank[trainer.global_rank])
        else:
            if trainer.world_size > 1 or per_rank is not None:
                rank_zero_warn(f"The checkpoint was saved by {len(per_rank or [0])} process(es), this run has "
                               f"{trainer.world_size}: random numbers (dropout) will not continue exactly.")
            _set_rng_state(state["rng"])

    @staticmethod
    def _restore_csv(logger: CSVLogger, saved: dict[str, Any]) -> None:
        writer = logger.experiment  # creating it removes the file the crashed run left
        writer.save()
        text = saved.get("text") or ""
        header = next(csv.reader(io.StringIO(text)), [])
        path = Path(writer.metrics_file_path)
        if header:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8", newline="")
        else:  # nothing was logged before the checkpoint: the writer starts a fresh file
            path.unlink(missing_ok=True)
        # The columns of the file, in its order: later rows are appended under this header.
        writer.metrics_keys = list(header)
        pending = saved.get("pending")
        if pending:
            writer.log_metrics(pending["metrics"], pending["step"])
            writer.save()
        log.info("Restored %s rows of %s from the checkpoint", max(text.count("\n") - 1, 0), path)


# -------------------------------------------------------------------------------- resuming
def finished_run(output_dir: str | Path) -> dict | None:
    """The ``metrics.json`` of a run that ended (``"status": "finished"``) in ``output_dir``, else None
    (``seq2seq.train`` writes it last, so a run stopped at any earlier point has none)."""
    path = Path(output_dir) / "metrics.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and stored.get("status") == "finished" else None


def check_budget_left(path: Path, checkpoint: dict, budget: Any) -> None:
    """:class:`ConfigError` when the checkpoint has trained past ``trainer.max_steps`` or ``max_epochs``.

    A checkpoint that reached its budget exactly is fine (Lightning trains no further; the run tests and
    finishes, which is how a run stopped after its training resumes); one past it means the budget was
    lowered, which Lightning would end with a traceback (epochs) or silently ignore (steps)."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    steps = int(checkpoint.get("global_step") or 0)
    epochs = int(progress.get("processed", checkpoint.get("epoch") or 0))  # epochs whose batches all ran
    max_steps, max_epochs = budget.get("max_steps", -1), budget.get("max_epochs")
    past = []
    if max_steps is not None and max_steps != -1 and steps > max_steps:
        past.append(f"trainer.max_steps={max_steps} (it is at step {steps})")
    if max_epochs is not None and max_epochs != -1 and epochs > max_epochs:
        past.append(f"trainer.max_epochs={max_epochs} (it has trained {epochs} epochs)")
    if past:
        raise ConfigError(
            f"{path} has already trained past {' and '.join(past)}: nothing is left to train. To train on, "
            "raise that budget above the checkpoint's progress; to score it as it is, "
            f"python -m seq2seq.eval ckpt_path={path}"
        )


def resume_checkpoint(ckpt_path: str | None, output_dir: str | Path, model: Any = None,
                      budget: Any = None) -> str | None:
    """The checkpoint file to resume from, checked; None to start anew.

    ``ckpt_path=last`` is ``<output_dir>/checkpoints/last.ckpt``; ``auto`` is that file when it
    exists and a fresh start when it does not. The file must be a complete training checkpoint
    written by ``seq2seq.train`` of the same architecture as ``model`` (the ``model`` config), else
    :class:`CheckpointError`; with ``budget`` (the ``trainer`` config), one that has not trained past
    it (:func:`check_budget_left`), else :class:`ConfigError`.
    """
    ckpt_path = str(ckpt_path or "").strip()
    if not ckpt_path:
        return None
    path = Path(ckpt_path)
    if ckpt_path in ("last", "auto"):
        path = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not path.is_file() and ckpt_path == "auto":
            log.info("ckpt_path=auto: no %s yet, starting a new run", path)
            return None
        if not path.is_file():
            raise ConfigError(
                f"ckpt_path=last: there is no {path}. To resume a run, pass its folder as well: "
                "ckpt_path=last hydra.run.dir=<run folder> (or ckpt_path=<a .ckpt file>, or ckpt_path=auto "
                "to start a new run when there is no checkpoint)"
            )
    checkpoint = read_checkpoint(path, resumable=True)
    if model is not None:
        check_architecture(path, checkpoint, model)
    if budget is not None:
        check_budget_left(path, checkpoint, budget)
    if ckpt_path == "auto":
        log.info("ckpt_path=auto: resuming from %s (step %s)", path, checkpoint.get("global_step"))
    return str(path)
