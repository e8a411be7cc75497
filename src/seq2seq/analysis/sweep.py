"""Results table and plot of a sweep (the library behind ``python -m seq2seq.report SWEEP_DIR``).

A Hydra multirun folder holds one folder per job, ``<sweep>/<N>/``, each with
``.hydra/overrides.yaml``, ``.hydra/config.yaml``, ``.hydra/hydra.yaml``, ``metrics.json`` and
``csv/metrics.csv``. The report reads them into one row per job:

===============  =============================================================================
size             the ``model/size`` choice and the model's shape (d_model, layers)
parameters       ``num_parameters`` of metrics.json
val/*, test/*    every validation and test metric (BLEU, chrF, ROUGE), one rule for all: the val/*
                 values of the validation that chose best.ckpt (the best ``monitor`` value in
                 csv/metrics.csv; without the curve, ``<monitor>_best``), and test/* of best.ckpt
selected by      the monitored metric and its mode (metrics.json's ``monitor``, else the task's)
tokens/s         mean of ``train/tokens_per_s`` over csv/metrics.csv, else metrics.json's value
wall time        ``wall_time_s`` of metrics.json, else the job folder's timestamps
device           metrics.json's ``device``, else the trainer config (accelerator, devices, precision)
signature        the sacreBLEU BLEU signature; ``rouge_signature`` beside ROUGE figures
overrides        the job's command-line overrides (in Markdown: those that differ between jobs;
                 the ones common to every job are listed above the table)
===============  =============================================================================

A job folder without metrics.json (a failed, killed or still running job) gives a row whose
status is ``failed``. It writes ``results.md``, ``results.csv`` and ``bleu_vs_params.png`` (BLEU
against parameters; test BLEU when the jobs have it, else validation BLEU) into ``--out``
(default: the sweep folder) and prints the Markdown table.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from seq2seq.errors import DataError
from seq2seq.metrics.text_metrics import DEFAULT_MONITOR
from seq2seq.utils.io import atomic_path, atomic_write_text

TOKENS_PER_S = "train/tokens_per_s"

# (column, how to format it in Markdown); ROUGE columns are inserted after chrF when present.
BASE_COLUMNS = [
    "job", "status", "size", "parameters", "selected by", "val/bleu", "test/bleu", "val/chrf", "test/chrf",
    "tokens/s", "wall_time_s", "device", "sacrebleu_signature", "overrides",
]


def _load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return None


def _get(tree: Any, dotted: str, default: Any = None) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (``0/``, ``1/``, ... in numeric order); a single run is its own job."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not jobs and ((sweep_dir / ".hydra").is_dir() or (sweep_dir / "metrics.json").is_file()):
        return [sweep_dir]
    return jobs


def _csv_rows(path: Path) -> list[dict[str, float]]:
    """csv/metrics.csv as rows of the finite numbers they hold (empty cells left out)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []
    number = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
    return [{k: float(v) for k, v in row.items() if v and number.fullmatch(v)} for row in rows]


def _mean(rows: Sequence[dict], key: str) -> float | None:
    values = [row[key] for row in rows if key in row]
    return sum(values) / len(values) if values else None


def best_validation(rows: Sequence[dict], monitor: str, mode: str = "max") -> dict[str, float]:
    """The ``val/*`` values of the validation that chose best.ckpt: the first row where ``monitor``
    reached its best (ModelCheckpoint saves only on a strict improvement); {} without one."""
    scored = [row for row in rows if monitor in row]
    if not scored:
        return {}
    # max/min return the first of equal values: the validation that saved the checkpoint.
    best = (max if mode == "max" else min)(scored, key=lambda row: row[monitor])
    return {k: v for k, v in best.items() if k.startswith("val/") and not k.endswith("_best")}


def _wall_time(job: Path, metrics: dict | None) -> float | None:
    """``wall_time_s`` of metrics.json, else from the job's first file (its config) to its last."""
    if metrics and isinstance(metrics.get("wall_time_s"), (int, float)):
        return float(metrics["wall_time_s"])
    start_file = job / ".hydra" / "config.yaml"
    if not start_file.is_file():
        return None
    times = [p.stat().st_mtime for p in job.rglob("*") if p.is_file()]
    return max(times) - start_file.stat().st_mtime if times else None


def _size(config: dict | None, hydra_cfg: dict | None) -> str:
    choice = _get(hydra_cfg, "hydra.runtime.choices", {}) or {}
    name = choice.get("model/size") or ""
    model = _get(config, "model") or {}
    if not model.get("d_model"):
        return name or "?"
    shape = f"d{model['d_model']} L{model.get('num_encoder_layers', '?')}+{model.get('num_decoder_layers', '?')}"
    return f"{name} ({shape})" if name else shape


def _device(config: dict | None, metrics: dict | None) -> str:
    if metrics and metrics.get("device"):
        return str(metrics["device"])
    trainer = _get(config, "trainer") or {}
    if not trainer:
        return ""
    nodes = trainer.get("num_nodes") or 1
    devices = trainer.get("devices", 1)
    count = f"{nodes}x{devices}" if nodes != 1 else f"{devices}"
    return f"{trainer.get('accelerator', '?')} x{count} {trainer.get('precision', '')}".strip()


def read_job(job: Path) -> dict[str, Any]:
    """One job folder as a row (column -> value); see the module docstring."""
    overrides = _load_yaml(job / ".hydra" / "overrides.yaml") or []
    config = _load_yaml(job / ".hydra" / "config.yaml")
    hydra_cfg = _load_yaml(job / ".hydra" / "hydra.yaml")
    metrics = None
    metrics_file = job / "metrics.json"
    if metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, json.JSONDecodeError):
            metrics = None
    row: dict[str, Any] = {
        "job": job.name,
        "status": "ok" if isinstance(metrics, dict) else "failed",
        "size": _size(config, hydra_cfg),
        "device": _device(config, metrics),
        "overrides": " ".join(str(o) for o in overrides),
        "wall_time_s": _wall_time(job, metrics),
    }
    if not isinstance(metrics, dict):
        return row
    row["parameters"] = metrics.get("num_parameters")
    task = metrics.get("task") if metrics.get("task") in DEFAULT_MONITOR else "translation"
    monitor = {"metric": DEFAULT_MONITOR[task], "mode": "max", **(metrics.get("monitor") or {})}
    row["selected by"] = f"{monitor['metric']} ({monitor['mode']})"
    curve = _csv_rows(job / "csv" / "metrics.csv")
    # One rule for every val/* column: its value at the validation that chose best.ckpt (the one
    # test/* is measured with). Without the curve, the best monitored value and the others as logged.
    at_best = best_validation(curve, monitor["metric"], monitor["mode"])
    for key, value in metrics.items():
        if key.startswith(("val/", "test/")) and not key.endswith("_best") and isinstance(value, (int, float)):
            row[key] = value
    if at_best:
        row.update(at_best)
    elif f"{monitor['metric']}_best" in metrics:
        row[monitor["metric"]] = metrics[f"{monitor['metric']}_best"]
    for key in [k for k in row if k.endswith(("/loss", "/ppl"))]:
        del row[key]
    tokens = _mean(curve, TOKENS_PER_S)
    row["tokens/s"] = tokens if tokens is not None else metrics.get(TOKENS_PER_S)
    signature = metrics.get("sacrebleu_signature")
    row["sacrebleu_signature"] = signature.get("bleu") if isinstance(signature, dict) else signature
    row["rouge_signature"] = metrics.get("rouge_signature")
    return row


def columns_of(rows: Sequence[dict]) -> list[str]:
    """The base columns, with any ROUGE columns after chrF and the ROUGE signature after sacreBLEU's."""
    rouge = sorted({k for row in rows for k in row if k.startswith(("val/rouge", "test/rouge"))})
    at, sig = BASE_COLUMNS.index("tokens/s"), BASE_COLUMNS.index("sacrebleu_signature") + 1
    extra = ["rouge_signature"] if any(row.get("rouge_signature") for row in rows) else []
    return BASE_COLUMNS[:at] + rouge + BASE_COLUMNS[at:sig] + extra + BASE_COLUMNS[sig:]


def _fmt(column: str, value: Any) -> str:
    """A cell for the Markdown table (the CSV keeps raw values)."""
    if value is None or value == "":
        return ""
    if column == "parameters":
        return f"{value / 1e6:.2f}M"
    if column == "wall_time_s":
        minutes, seconds = divmod(float(value), 60)
        return f"{int(minutes)}m{seconds:04.1f}s" if minutes else f"{seconds:.1f}s"
    if column == "tokens/s":
        return f"{value:,.0f}"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value).replace("|", "\\|")  # signatures hold |, which would split Markdown cells


def split_overrides(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    """(overrides common to every job, each job's other overrides joined): what tells jobs apart."""
    per_job = [str(row.get("overrides") or "").split() for row in rows]
    common = [o for o in per_job[0] if all(o in job for job in per_job[1:])] if len(per_job) > 1 else []
    return common, [" ".join(o for o in job if o not in common) for job in per_job]


def to_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table; the overrides column shows what differs between jobs, the rest goes above."""
    common, varying = split_overrides(rows)
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = [
        "| " + " | ".join(_fmt(c, vary if c == "overrides" else row.get(c)) for c in columns) + " |"
        for row, vary in zip(rows, varying)
    ]
    intro = [f"Overrides of every job: `{' '.join(common)}`", ""] if common else []
    return "\n".join([*intro, header, rule, *body]) + "\n"


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return out.getvalue()


def plot(rows: Sequence[dict], path: Path, title: str = "") -> Path:
    """BLEU (test when every finished job has it, else validation) against parameters, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    _, varying = split_overrides(rows)
    done = [(r, v) for r, v in zip(rows, varying) if r["status"] == "ok" and r.get("parameters")]
    key = "test/bleu" if done and all(r.get("test/bleu") is not None for r, _ in done) else "val/bleu"
    # Each point is labelled with its job number and what sets it apart from the other jobs.
    points = [(r["parameters"], r[key], f"{r['job']}: {v}"[:40].rstrip(": ")) for r, v in done if r.get(key) is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    if points:
        xs, ys, _ = zip(*points)
        ax.scatter(xs, ys)
        for x, y, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if max(xs) > 10 * min(xs):
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_ylim(bottom=0, top=max(1.0, max(ys) * 1.15))
    else:
        ax.text(0.5, 0.5, "no finished job", ha="center", va="center", transform=ax.transAxes)
    failed = sum(r["status"] != "ok" for r in rows)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{key} (sacreBLEU)")
    ax.set_title(f"{title} ({len(points)} jobs{f', {failed} failed' if failed else ''})", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def report(sweep_dir: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Write results.md, results.csv and bleu_vs_params.png for ``sweep_dir``; returns rows and paths."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"sweep folder {sweep_dir} does not exist")
    jobs = job_folders(sweep_dir)
    if not jobs:
        raise DataError(f"no job folders (0/, 1/, ...) in {sweep_dir}: is it a multirun's folder?")
    rows = [read_job(job) for job in jobs]
    columns = columns_of(rows)
    out = Path(out) if out else sweep_dir
    markdown = to_markdown(rows, columns)
    return {
        "rows": rows,
        "columns": columns,
        "markdown": markdown,
        "markdown_file": atomic_write_text(out / "results.md", markdown),
        "csv_file": atomic_write_text(out / "results.csv", to_csv(rows, columns)),
        "plot_file": plot(rows, out / "bleu_vs_params.png", title=sweep_dir.name),
    }
