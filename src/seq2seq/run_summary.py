"""What a finished run leaves behind: ``metrics.json`` and the final table on the console."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from seq2seq.utils.io import atomic_write_text


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Logged tensors and numbers as plain floats, under their logged names."""
    out = {}
    for name, value in metrics.items():
        value = float(value.item() if hasattr(value, "item") else value)
        if math.isfinite(value):
            out[name] = value
    return dict(sorted(out.items()))


def write_metrics(path: str | Path, metrics: dict[str, float], **extra: Any) -> dict:
    """Write ``metrics.json``: metrics at the top level under their logged names, plus ``extra``."""
    payload = {**metrics, **extra}
    atomic_write_text(Path(path), json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return payload


def print_metrics_table(metrics: dict[str, float], title: str = "Final metrics") -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}")
    Console().print(table)


def finish_run(output_dir: str | Path, metrics: dict[str, float], title: str = "Final metrics", **extra: Any) -> dict:
    """How every command ends: ``<output_dir>/metrics.json`` (``metrics`` + ``extra``, with the run
    folder), the metrics table, and the run folder's path on the console. Returns what was written."""
    payload = write_metrics(Path(output_dir) / "metrics.json", metrics, **extra, run_dir=str(output_dir))
    print_metrics_table(metrics, title=title)
    print(f"Run folder: {output_dir}")
    return payload
