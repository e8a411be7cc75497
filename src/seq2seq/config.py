"""Locating the Hydra configuration, settings read from it, and running commands with clean user errors."""

from __future__ import annotations

import errno
import functools
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from seq2seq.errors import ConfigError, Seq2SeqError
from seq2seq.metrics.text_metrics import DEFAULT_MONITOR, check_task


def config_dir() -> str:
    """The Hydra configuration: ``$SEQ2SEQ_CONFIG_DIR`` if set, else the copy installed with the
    package (``seq2seq/conf`` of a wheel), else the checkout's ``conf/`` (an editable install)."""
    override = os.environ.get("SEQ2SEQ_CONFIG_DIR")
    package = Path(__file__).resolve().parent
    candidates = [Path(override)] if override else [package / "conf", package.parents[1] / "conf"]
    for path in candidates:
        if (path / "train.yaml").exists():
            return str(path)
    sys.exit(
        f"error: no Hydra configuration at {candidates[0]} (expected train.yaml there). "
        "Reinstall the package (pip install seq2seq, or pip install -e . in its repository), or set SEQ2SEQ_CONFIG_DIR."
    )


# `${seq2seq.monitor:${task}}` in conf/train.yaml: the metric a task's runs are ranked by, unless
# `monitor.metric` is set. Registered with this module, which every command and test imports to
# find conf/ (config_dir).
OmegaConf.register_new_resolver("seq2seq.monitor", lambda task: DEFAULT_MONITOR[check_task(task)], replace=True)


def resolve_monitor(cfg: DictConfig) -> tuple[str, str]:
    """``(metric, mode)`` of ``cfg.monitor`` (a null metric means the task's), checked."""
    task = check_task(cfg.get("task") or "translation")
    monitor = cfg.get("monitor") or {}
    metric, mode = monitor.get("metric") or DEFAULT_MONITOR[task], monitor.get("mode") or "max"
    if mode not in ("max", "min"):
        raise ConfigError(f"monitor.mode={mode!r}: use max or min")
    return metric, mode


def _whole_number(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_budget(trainer: DictConfig | dict | None) -> None:
    """Check the training budget of the ``trainer`` config group before any work: ``max_steps`` (-1: none),
    ``max_epochs`` (-1 or null: none) and ``accumulate_grad_batches``; :class:`ConfigError` naming the key."""
    trainer = trainer or {}
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    if max_steps is not None and (not _whole_number(max_steps) or max_steps == 0 or max_steps < -1):
        raise ConfigError(f"trainer.max_steps={max_steps!r}: use a number of optimizer steps of at least 1, or -1 for no limit")
    if max_epochs is not None and (not _whole_number(max_epochs) or max_epochs == 0 or max_epochs < -1):
        raise ConfigError(f"trainer.max_epochs={max_epochs!r}: use a number of epochs of at least 1, or -1 for no limit")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if not _whole_number(accumulate) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r}: use a whole number of at least 1")


# What to do about the operating-system errors a user can fix, by errno.
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "free space on that disk, or write somewhere else (e.g. hydra.run.dir=..., output_dir=...)",
    errno.EDQUOT: "your disk quota is used up: free space, or write somewhere else",
    errno.EFBIG: "the file is larger than the file system or the file-size limit (ulimit -f) allows: "
                 "raise the limit, or write somewhere else",
    errno.EACCES: "you may not write or read there: choose another path, or change its permissions",
    errno.EPERM: "you may not write or read there: choose another path, or change its permissions",
    errno.EROFS: "that file system is read-only: write somewhere else",
    errno.ENOENT: "no such file or folder: check the path (and that its folders exist)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: correct the path",
    errno.EISDIR: "that path is a folder: give a file name",
}


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug (which keeps its traceback).

    User errors are a :class:`Seq2SeqError` (also wrapped by Hydra's ``instantiate``, which re-raises
    what a constructor raises with the original as its cause) and the operating-system errors a user
    can fix (a full disk, a read-only or forbidden folder, a missing path), named by path.
    """
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Seq2SeqError):
            return str(err)
        if isinstance(err, OSError) and err.errno in _OS_ERROR_ADVICE:
            where = " -> ".join(str(name) for name in (err.filename, err.filename2) if name is not None)
            reason = err.strerror or os.strerror(err.errno)
            return f"{where}: {reason}: {_OS_ERROR_ADVICE[err.errno]}" if where else \
                f"{reason}: {_OS_ERROR_ADVICE[err.errno]}"
        seen.add(id(err))
        err = err.__cause__
    return None


def user_errors_exit(fn):
    """Turn a user error (see :func:`user_error_message`) into one message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            message = user_error_message(err)
            if message is None:
                raise
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def _unwritable_folder(path: Path) -> str | None:
    """Why the folder ``path`` cannot be created or written, or None when it can (nothing is created)."""
    path = path.absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder (Not a directory)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (Permission denied)"
    return None


class CheckRunFolder(Callback):
    """Hydra callback (``hydra.callbacks.check_run_folder``): one message when the run folder cannot be made.

    Hydra creates ``hydra.run.dir`` (or ``hydra.sweep.dir``) before the command's code runs, and
    reports a failure there with a traceback; this check runs just before and ends the command with
    ``error: ...`` and exit status 2 instead.
    """

    def _check(self, folder: str, key: str) -> None:
        problem = _unwritable_folder(Path(folder))
        if problem is not None:
            print(f"error: cannot create the run folder {folder} ({key}): {problem}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config, **kwargs) -> None:
        self._check(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(str(config.hydra.sweep.dir), "hydra.sweep.dir")
