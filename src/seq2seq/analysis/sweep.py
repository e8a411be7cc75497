"""Results table and plot of a sweep (the library behind ``python -m seq2seq.report SWEEP_DIR``).

A Hydra multirun folder holds one folder per job (``<sweep>/<N>/`` with ``.hydra/``,
``metrics.json`` and ``csv/metrics.csv``); :func:`read_job` makes each a row (its columns:
docs/baselines.md, "Columns of jobs.csv"); a job without a finished metrics.json is ``failed``, with
the reason its ``failure.json`` or its folder gives. :mod:`seq2seq.analysis.groups` groups, summarizes
and tests the rows, :mod:`seq2seq.analysis.tables` writes them, :func:`report` writes every file into ``--out``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from seq2seq.analysis import tables
from seq2seq.analysis.groups import (
    SEED_KEY,
    Group,
    compare,
    dotted,
    find_group,
    group_jobs,
    job_value,
    metric_columns,
)
from seq2seq.analysis.significance import RESAMPLES, SEED
from seq2seq.errors import DataError
from seq2seq.metrics.text_metrics import DEFAULT_MONITOR
from seq2seq.utils.io import atomic_path, atomic_write_text

TOKENS_PER_S = "train/tokens_per_s"
FINAL_PREFIX = "final/"
# Written by a job that raised inside a multirun (seq2seq.run_summary.record_failure).
FAILURE_FILE = "failure.json"

# The jobs table's columns; ROUGE columns go after chrF when present (columns_of).
BASE_COLUMNS = [
    "job", "status", "size", "parameters", "selected by", "val/bleu", "test/bleu", "val/chrf", "test/chrf",
    "tokens/s", "wall_time_s", "device", "sacrebleu_signature", "overrides",
]


def _load(path: Path, parse: Callable[[str], Any] = json.loads) -> Any:
    """``path`` parsed (JSON, or e.g. ``yaml.safe_load``); None when missing or unreadable."""
    try:
        return parse(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError, yaml.YAMLError, csv.Error):
        return None


def _read_json(path: Path) -> dict | None:
    value = _load(path)
    return value if isinstance(value, dict) else None


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (``0/``, ``1/``, ... in numeric order); a single run is its own job."""
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not jobs and ((sweep_dir / ".hydra").is_dir() or (sweep_dir / "metrics.json").is_file()):
        return [sweep_dir]
    return jobs


def _csv_rows(path: Path) -> list[dict[str, float]]:
    """csv/metrics.csv as rows of the finite numbers they hold (empty cells left out)."""
    rows = _load(path, lambda text: list(csv.DictReader(io.StringIO(text)))) or []
    number = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
    return [{k: float(v) for k, v in row.items() if v and number.fullmatch(v)} for row in rows]


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


def _size(config: dict | None, choices: dict) -> str:
    name = choices.get("model/size") or ""
    model = dotted(config, "model") or {}
    if not model.get("d_model"):
        return name or "?"
    shape = f"d{model['d_model']} L{model.get('num_encoder_layers', '?')}+{model.get('num_decoder_layers', '?')}"
    return f"{name} ({shape})" if name else shape


def _device(config: dict | None, metrics: dict | None) -> str:
    if metrics and metrics.get("device"):
        return str(metrics["device"])
    trainer = dotted(config, "trainer") or {}
    if not trainer:
        return ""
    nodes = trainer.get("num_nodes") or 1
    devices = trainer.get("devices", 1)
    count = f"{nodes}x{devices}" if nodes != 1 else f"{devices}"
    return f"{trainer.get('accelerator', '?')} x{count} {trainer.get('precision', '')}".strip()


def failure_reason(job: Path) -> str:
    """Why a job has no finished metrics.json: the one line its failure record holds
    (``failure.json``, written by a job that raised inside a multirun), else what the folder shows."""
    record = _read_json(job / FAILURE_FILE)
    if record and record.get("error"):
        return str(record["error"])
    if not (job / ".hydra").is_dir():
        return "no .hydra folder: the job never started"
    logs = sorted(job.glob("*.log"))
    where = f" (see {logs[0]})" if logs else ""
    return f"no metrics.json: killed, interrupted or still running{where}"


def _scores(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The val/* and test/* numbers of a metrics.json (without their best-so-far), under ``prefix``."""
    return {f"{prefix}{key}": float(value) for key, value in metrics.items()
            if key.startswith(("val/", "test/")) and not key.endswith("_best")
            and isinstance(value, (int, float)) and not isinstance(value, bool)}


def read_job(job: Path) -> dict[str, Any]:
    """One job folder as a row (column -> value); see the module docstring. Keys starting with ``_``
    hold what grouping and tests need (the folder, the config, the overrides as a list)."""
    overrides = [str(o) for o in _load(job / ".hydra" / "overrides.yaml", yaml.safe_load) or []]
    config = _load(job / ".hydra" / "config.yaml", yaml.safe_load)
    choices = dotted(_load(job / ".hydra" / "hydra.yaml", yaml.safe_load), "hydra.runtime.choices", {}) or {}
    metrics = _read_json(job / "metrics.json")
    finished = metrics is not None and metrics.get("status", "finished") == "finished"
    row: dict[str, Any] = {
        "job": job.name,
        "status": "ok" if finished else "failed",
        "size": _size(config, choices),
        "device": _device(config, metrics),
        "overrides": " ".join(overrides),
        "wall_time_s": _wall_time(job, metrics),
        "_folder": job,
        "_overrides": overrides,
        "_config": config or {},
        "_choices": choices,
    }
    seed = job_value(row, SEED_KEY)  # its override (a string), else the config's
    row["seed"] = int(seed) if isinstance(seed, str) and seed.lstrip("-").isdigit() else seed
    if not finished:
        row["error"] = failure_reason(job)
        return row
    row["parameters"] = metrics.get("num_parameters")
    task = metrics.get("task") if metrics.get("task") in DEFAULT_MONITOR else "translation"
    monitor = {"metric": DEFAULT_MONITOR[task], "mode": "max", **(metrics.get("monitor") or {})}
    row["selected by"] = f"{monitor['metric']} ({monitor['mode']})"
    curve = _csv_rows(job / "csv" / "metrics.csv")
    # One rule for every val/* column: its value at the validation that chose best.ckpt (the one
    # test/* is measured with). Without the curve, the best monitored value and the others as logged.
    at_best = best_validation(curve, monitor["metric"], monitor["mode"])
    row.update(_scores(metrics))
    # final/ scores (the run's metrics.json repeats them as final/...) and eval runs inside the job.
    row.update({k: v for k, v in metrics.items() if k.startswith(FINAL_PREFIX) and isinstance(v, (int, float))})
    # seq2seq-eval runs written into the job (hydra.run.dir=<job>/eval_beam5) and final/.
    for folder in sorted(p for p in job.iterdir() if p.is_dir() and not p.name.startswith(".")):
        row.update(_scores(_read_json(folder / "metrics.json") or {}, f"{folder.name}/"))
    if at_best:
        row.update(at_best)
    elif f"{monitor['metric']}_best" in metrics:
        row[monitor["metric"]] = metrics[f"{monitor['metric']}_best"]
    for key in [k for k in row if k.endswith(("/loss", "/ppl"))]:
        del row[key]
    tokens = [line[TOKENS_PER_S] for line in curve if TOKENS_PER_S in line]
    row["tokens/s"] = sum(tokens) / len(tokens) if tokens else metrics.get(TOKENS_PER_S)
    signature = metrics.get("sacrebleu_signature")
    row["sacrebleu_signature"] = signature.get("bleu") if isinstance(signature, dict) else signature
    row["bleu_tok_lc_signature"] = signature.get("bleu_tok_lc") if isinstance(signature, dict) else None
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
    if isinstance(value, float) or (column in ("parameters", "wall_time_s", "tokens/s") and isinstance(value, int)):
        return tables.format_number(column, value)
    return str(value)


def split_overrides(rows: Sequence[dict]) -> tuple[list[str], list[str]]:
    """(overrides common to every job, each job's other overrides joined): what tells jobs apart."""
    per_job = [str(row.get("overrides") or "").split() for row in rows]
    return tables.split_common(per_job) if len(per_job) > 1 else ([], [" ".join(job) for job in per_job])


def to_markdown(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A Markdown table; the overrides column shows what differs between jobs, the rest goes above."""
    common, varying = split_overrides(rows)
    body = [[_fmt(c, vary if c == "overrides" else row.get(c)) for c in columns] for row, vary in zip(rows, varying)]
    intro = [f"Overrides of every job: `{' '.join(common)}`", ""] if common else []
    return "\n".join([*intro, *tables.markdown_table(columns, body)]) + "\n"


def plot(groups: Sequence[Group], path: Path, title: str = "") -> Path:
    """BLEU (test when every finished row has it, else validation; ROUGE-Lsum for summarization)
    against parameters, as a PNG: one point per row, its mean, with the standard deviation over its
    seeds as an error bar."""
    from matplotlib.figure import Figure  # not pyplot: no display, any backend
    from matplotlib.ticker import EngFormatter

    _, varying = tables.split_common([group.key for group in groups])
    done = [(g, v) for g, v in zip(groups, varying) if g.finished and "parameters" in g.summaries]
    candidates = ("test/bleu", "val/bleu", "test/rougeLsum", "val/rougeLsum")
    key = next((k for k in candidates if done and all(k in g.summaries for g, _ in done)), "val/bleu")
    points = [(g.summaries["parameters"].mean, g.summaries[key].mean, g.summaries[key].std or 0.0,
               f"{g.number}: {v}"[:40].rstrip(": ")) for g, v in done if key in g.summaries]
    fig = Figure(figsize=(7, 4.5), dpi=120)
    ax = fig.subplots()
    if points:
        xs, ys, errors, _ = zip(*points)
        ax.errorbar(xs, ys, yerr=errors, fmt="o", capsize=3)
        for x, y, _, label in points:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        if max(xs) > 10 * min(xs):
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.set_ylim(bottom=0, top=max(1.0, max(y + e for y, e in zip(ys, errors)) * 1.15))
    else:
        ax.text(0.5, 0.5, "no finished job", ha="center", va="center", transform=ax.transAxes)
    failed = sum(len(g.failed) for g in groups)
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{key} (mean ± std over seeds)")
    ax.set_title(f"{title} ({len(points)} rows{f', {failed} failed jobs' if failed else ''})", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def report(sweep_dir: str | Path, out: str | Path | None = None, *, group_by: Sequence[str] | None = None,
           baseline: str | None = None, metrics: Sequence[str] | None = None, resamples: int = RESAMPLES,
           seed: int = SEED, caption: str | None = None) -> dict[str, Any]:
    """Read the jobs of ``sweep_dir``, group them (:func:`seq2seq.analysis.groups.group_jobs`), test
    them against the ``baseline`` row if given, and write into ``out`` (default: ``sweep_dir``)
    ``results.md``, ``results.tex``, ``results.csv``, ``jobs.csv`` (one line per job),
    ``significance.csv`` (with a baseline) and ``bleu_vs_params.png``. Returns the rows, groups,
    texts and paths."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"sweep folder {sweep_dir} does not exist")
    jobs = job_folders(sweep_dir)
    if not jobs:
        raise DataError(f"no job folders (0/, 1/, ...) in {sweep_dir}: is it a multirun's folder?")
    rows = [read_job(job) for job in jobs]
    columns = metric_columns(rows, metrics)
    groups = group_jobs(rows, group_by, columns)
    base = find_group(groups, str(baseline)) if baseline is not None else None
    if base is not None:
        compare(groups, base, columns, resamples=resamples, seed=seed)
    out = Path(out) if out else sweep_dir
    texts = {
        "markdown": tables.markdown(groups, columns, base, resamples, seed),
        "latex": tables.latex(groups, columns, base, resamples, seed, caption if caption is not None else sweep_dir.name),
        "csv": tables.csv_text(groups, columns),
    }
    job_columns = columns_of(rows)
    result = {
        "rows": rows, "groups": groups, "columns": columns, "baseline": base, **texts,
        "markdown_file": atomic_write_text(out / "results.md", texts["markdown"]),
        "latex_file": atomic_write_text(out / "results.tex", texts["latex"]),
        "csv_file": atomic_write_text(out / "results.csv", texts["csv"]),
        "jobs_file": atomic_write_text(out / "jobs.csv", tables.write_csv([*job_columns[:2], "seed", *job_columns[2:], "error"], rows)),
        "plot_file": plot(groups, out / "bleu_vs_params.png", title=sweep_dir.name),
    }
    if base is not None:
        result["significance_file"] = atomic_write_text(out / "significance.csv", tables.significance_csv(groups))
    return result
