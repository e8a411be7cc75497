"""Locating the Hydra configuration, settings read from it, and running commands with clean user errors."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from seq2seq.errors import ConfigError, print_user_error
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
    """Check the training budget of the ``trainer`` config group before any work: ``max_steps`` and
    ``max_epochs`` (-1 or null: none) and ``accumulate_grad_batches``; :class:`ConfigError` naming the key."""
    trainer = trainer or {}
    for key, unit in (("max_steps", "optimizer steps"), ("max_epochs", "epochs")):
        value = trainer.get(key)
        if value is not None and (not _whole_number(value) or value == 0 or value < -1):
            raise ConfigError(f"trainer.{key}={value!r}: use a number of {unit} of at least 1, or -1 for no limit")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if not _whole_number(accumulate) or accumulate < 1:
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r}: use a whole number of at least 1")


def user_errors_exit(fn):
    """Turn a user error (see :func:`~seq2seq.errors.print_user_error`) into one message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            sys.exit(print_user_error(err))

    return wrapper


class CheckRunFolder(Callback):
    """Hydra callback (``hydra.callbacks.check_run_folder``): Hydra creates ``hydra.run.dir`` (or
    ``hydra.sweep.dir``) before the command runs and reports a failure with a traceback; this check
    runs just before and ends the command with one ``error: ...`` line and exit status 2 instead."""

    def _check(self, folder: str, key: str) -> None:
        existing = Path(folder).absolute()  # its nearest existing folder must be writable (nothing is created)
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            problem = f"{existing} is a file, not a folder (Not a directory)"
        elif not os.access(existing, os.W_OK | os.X_OK):
            problem = f"{existing} is not writable (Permission denied)"
        else:
            return
        print(f"error: cannot create the run folder {folder} ({key}): {problem}", file=sys.stderr)
        sys.exit(2)

    def on_run_start(self, config, **kwargs) -> None:
        self._check(str(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(str(config.hydra.sweep.dir), "hydra.sweep.dir")


def in_multirun() -> bool:
    """Whether this process runs a job of a Hydra multirun (``-m``, a sweeper, a launcher)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class SweepMonitor(Callback):
    """Hydra callback (``hydra.callbacks.sweep_monitor``) of a multirun: registers this package's
    sweepers before Hydra instantiates the sweeper, and when the sweep ends lists the jobs that failed
    (their ``failure.json``, see :func:`seq2seq.run_summary.record_failure`)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        # Hydra's plugin scan finds hydra_plugins.seq2seq_sweepers in a wheel, not in an editable install.
        from hydra.core.plugins import Plugins

        try:
            from hydra_plugins.seq2seq_sweepers import SWEEPERS
        except ImportError:
            return
        for sweeper in SWEEPERS:
            Plugins.instance().register(sweeper)

    def on_multirun_end(self, config, **kwargs) -> None:
        import json

        sweep_dir = Path(str(config.hydra.sweep.dir))
        failures = []
        for record in sorted(sweep_dir.glob("*/failure.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
            if (record.parent / "metrics.json").is_file():
                continue  # failed once, finished when the sweep was run again
            try:
                failures.append(f"job {record.parent.name}: {json.loads(record.read_text()).get('error')}")
            except (OSError, ValueError):
                failures.append(f"job {record.parent.name}: (unreadable {record})")
        if failures:
            print(f"{len(failures)} job(s) of the sweep failed (the others ran; seq2seq-report {sweep_dir} lists them):\n  "
                  + "\n  ".join(failures), file=sys.stderr, flush=True)
