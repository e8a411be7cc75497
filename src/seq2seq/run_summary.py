"""What a run leaves behind: ``metrics.json`` and the final table on the console; or, for a job of a
multirun that raised, ``failure.json`` (:func:`record_failure`) while the sweep goes on."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from seq2seq.errors import Seq2SeqError, user_error_message
from seq2seq.utils.io import atomic_write_text

log = logging.getLogger(__name__)

# A failed job's record in its folder (read by seq2seq.analysis.sweep, which names the same file).
FAILURE_FILE = "failure.json"


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Logged tensors and numbers as plain floats, under their logged names."""
    out = {}
    for name, value in metrics.items():
        value = float(value.item() if hasattr(value, "item") else value)
        if math.isfinite(value):
            out[name] = value
    return dict(sorted(out.items()))


def finish_run(output_dir: str | Path, metrics: dict[str, float], title: str = "Final metrics", **extra: Any) -> dict:
    """How every command ends: ``<output_dir>/metrics.json`` (``metrics`` under their logged names,
    ``extra`` and the run folder), the metrics table, and the run folder's path on the console.
    Returns what was written."""
    payload = {**metrics, **extra, "run_dir": str(output_dir)}
    atomic_write_text(Path(output_dir) / "metrics.json", json.dumps(payload, indent=2, sort_keys=False) + "\n")
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}")
    Console().print(table)
    print(f"Run folder: {output_dir}")
    return payload


def failure_message(err: BaseException, limit: int = 300) -> str:
    """One line that says why a job failed: a user error's message as is (also a full disk's, see
    :func:`~seq2seq.errors.user_error_message`), else the exception's type and the first line of its message."""
    message = user_error_message(err)
    lines = str(err).strip().splitlines()
    if isinstance(err, Seq2SeqError):
        text = " ".join(line.strip() for line in lines)
    else:
        text = message if message is not None else (lines[0] if lines else "")
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    if message is not None:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class FailedJob:
    """What a job of a multirun that raised returns instead of its objective: Hydra's basic sweeper
    and the joblib launcher go on to the next job; the Optuna sweeper, asking for its float, gets a
    ValueError and marks the trial failed in the study (its ``max_failure_rate`` decides whether the
    study goes on: 1.0 in ``hparams_search=optuna``)."""

    def __init__(self, reason: str):
        self.reason = reason

    def __float__(self) -> float:
        raise ValueError(self.reason)

    def __repr__(self) -> str:
        return f"failed job: {self.reason}"

    __str__ = __repr__


def record_failure(output_dir: str | Path, err: BaseException) -> FailedJob:
    """A job of a multirun raised ``err``: log its traceback (the job's log file), say why on stderr in
    one line, write ``<output_dir>/failure.json`` (what ``seq2seq-report`` lists) and return a
    :class:`FailedJob`, so that the sweep goes on."""
    reason = failure_message(err)
    log.error("The job failed: %s", reason, exc_info=not isinstance(err, Seq2SeqError))
    print(f"error: {reason} (job {output_dir}; the sweep goes on)", file=sys.stderr, flush=True)
    record = {"status": "failed", "error": reason, "type": type(err).__name__}
    try:
        atomic_write_text(Path(output_dir) / FAILURE_FILE, json.dumps(record, indent=2) + "\n")
    except OSError as write_error:  # a full disk must not stop the sweep either
        log.error("Could not write %s: %s", Path(output_dir) / FAILURE_FILE, write_error)
    return FailedJob(reason)
