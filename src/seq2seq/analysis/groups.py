"""Rows of a sweep report: jobs grouped (seeds of one setting), summarized, and tested against a baseline row.

A row is the jobs whose overrides differ only in ``seed``, or that share the values of ``group_by``'s
keys (``["job"]``: one row per job). Each number is summarized over the row's finished jobs (mean,
sample standard deviation, n, min, max). Against a baseline row each job is tested against the
baseline's job of the same seed (by rank of the seeds when the rows share none); a row is significant
only if every seed pair is. docs/baselines.md explains why.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seq2seq.analysis import hypotheses as hypothesis_files
from seq2seq.analysis.significance import RESAMPLES, SEED, TESTABLE, PairedResult, paired_test
from seq2seq.errors import ConfigError, DataError

SEED_KEY = "seed"
# Numbers summarized besides the metrics.
NUMBERS = ("parameters", "tokens/s", "wall_time_s")
SPLITS = ("val", "test")
P_THRESHOLD = 0.05


@dataclass
class Summary:
    """Mean, sample standard deviation (None for one value), count, minimum and maximum."""

    mean: float
    std: float | None
    n: int
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values),
                   min(values), max(values))


@dataclass
class Comparison:
    """A row against the baseline row on one metric column: every seed pair and their summary."""

    pairs: list[tuple[Any, Any, PairedResult]] = field(default_factory=list)  # (baseline job, job, result)
    skipped: list[str] = field(default_factory=list)  # why a seed pair could not be tested

    @property
    def p_value(self) -> float:
        """The worst (largest) p-value over the seed pairs."""
        return max(result.p_value for _, _, result in self.pairs)

    @property
    def delta(self) -> float:
        return statistics.fmean(result.delta for _, _, result in self.pairs)

    @property
    def interval(self) -> tuple[float, float]:
        """The interval covering every seed pair's 95 % interval of the difference."""
        lows, highs = zip(*(result.delta_interval for _, _, result in self.pairs))
        return min(lows), max(highs)

    @property
    def significant(self) -> bool:
        """Every seed pair at p < 0.05. A pair with identical scores never is: sacreBLEU's test gives
        a tie its smallest p-value (it counts resampled differences strictly above the observed 0)."""
        return (bool(self.pairs) and self.p_value < P_THRESHOLD
                and all(result.delta != 0 for _, _, result in self.pairs))


@dataclass
class Group:
    """One row of the report: jobs of one setting (``key``), their summaries and comparisons."""

    number: int  # 1-based, as printed
    key: tuple[str, ...]  # the overrides (or KEY=VALUE pairs of group_by) that define the row
    jobs: list[dict]
    summaries: dict[str, Summary] = field(default_factory=dict)
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    @property
    def finished(self) -> list[dict]:
        return [job for job in self.jobs if job["status"] == "ok"]

    @property
    def failed(self) -> list[dict]:
        return [job for job in self.jobs if job["status"] != "ok"]

    @property
    def label(self) -> str:
        return " ".join(self.key)

    def common(self, column: str) -> Any:
        """The value every finished job has in ``column`` (size, device, signature), else ``mixed``."""
        values = {job.get(column) for job in self.finished or self.jobs if job.get(column) not in (None, "")}
        return values.pop() if len(values) == 1 else ("mixed" if values else None)


def metric_columns(rows: Sequence[dict], patterns: Sequence[str] | None = None) -> list[str]:
    """The metric columns of the jobs that match one of ``patterns`` (shell-style, e.g. ``val/bleu*``,
    ``eval_beam5/*``; all without patterns), ordered: the run's own (val, then test), ``final/``, then
    each eval folder's; within one, BLEU, tokenized lowercased BLEU, chrF, ROUGE, then the rest."""
    order = ("bleu", "bleu_tok_lc", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum")
    found = {k for row in rows for k, v in row.items() if isinstance(v, (int, float)) and _parts(k)}

    def rank(column: str) -> tuple:
        prefix, split, metric = _parts(column)
        source = 0 if not prefix else 1 if prefix == "final" else 2
        return (source, prefix, SPLITS.index(split), order.index(metric) if metric in order else len(order), metric)

    columns = sorted((c for c in found if not c.endswith(("/loss", "/ppl")) and "/loss/" not in c), key=rank)
    if not patterns:
        return columns
    chosen = [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]
    if not chosen:
        raise ConfigError(f"--metrics {','.join(patterns)} matches no metric; the jobs have: {', '.join(columns) or 'none'}")
    return chosen


def _parts(column: str) -> tuple[str, str, str] | None:
    """``[prefix/]split/metric`` -> (prefix, split, metric); None for a column without a split."""
    parts = column.split("/")
    at = next((i for i, part in enumerate(parts[:-1]) if part in SPLITS), None)
    return None if at is None else ("/".join(parts[:at]), parts[at], "/".join(parts[at + 1:]))


def dotted(tree: Any, path: str, default: Any = None) -> Any:
    """``tree[a][b]`` for ``path="a.b"``, else ``default``."""
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return default
        tree = tree[part]
    return tree


def job_value(job: dict, key: str) -> Any:
    """``key`` of a job: its override, the Hydra choice of that group, else the config at that path."""
    for override in job.get("_overrides", ()):
        name, _, value = override.lstrip("+~").partition("=")
        if name == key:
            return value
    if key in job.get("_choices", {}):
        return job["_choices"][key]
    return dotted(job.get("_config", {}), key)


def _key(job: dict, group_by: Sequence[str] | None) -> tuple[str, ...]:
    if group_by == ["job"]:
        return (f"job={job['job']}",)
    if group_by:
        return tuple(f"{key}={job_value(job, key)}" for key in group_by)
    return tuple(o for o in job.get("_overrides", ()) if o.lstrip("+~").partition("=")[0] != SEED_KEY)


def group_jobs(rows: Sequence[dict], group_by: Sequence[str] | None, columns: Sequence[str]) -> list[Group]:
    """Rows grouped and ``columns`` summarized (see the module docstring), in the order of their first job."""
    by_key: dict[tuple[str, ...], list[dict]] = {}
    for row in rows:
        by_key.setdefault(_key(row, group_by), []).append(row)
    groups = [Group(i, key, jobs) for i, (key, jobs) in enumerate(by_key.items(), 1)]
    for group in groups:
        for column in [*columns, *NUMBERS]:
            values = [float(job[column]) for job in group.finished
                      if isinstance(job.get(column), (int, float)) and math.isfinite(job[column])]
            if values:
                group.summaries[column] = Summary.of(values)
    return groups


def find_group(groups: Sequence[Group], wanted: str) -> Group:
    """The row ``wanted`` names: its number, or text that occurs in exactly one row's label."""
    if wanted.isdigit():
        if 1 <= int(wanted) <= len(groups):
            return groups[int(wanted) - 1]  # numbered from 1 in order
        raise ConfigError(f"--baseline {wanted}: there are rows 1 to {len(groups)}")
    matches = [group for group in groups if wanted in group.label]
    if len(matches) != 1:
        labels = "; ".join(f"{g.number}: {g.label or '(no overrides)'}" for g in groups)
        which = "no row" if not matches else f"{len(matches)} rows"
        raise ConfigError(f"--baseline {wanted!r} matches {which}; give a row number or a unique part of its label ({labels})")
    return matches[0]


def _seed_pairs(baseline: Group, group: Group) -> list[tuple[dict, dict]]:
    """Jobs of ``group`` with the baseline's job of the same seed (by rank when no seed value is shared)."""
    base = {job.get("seed"): job for job in baseline.finished}
    own = {job.get("seed"): job for job in group.finished}
    shared = [seed for seed in own if seed in base]
    if shared:
        return [(base[seed], own[seed]) for seed in shared]
    ranked = lambda jobs: [jobs[s] for s in sorted(jobs, key=str)]  # noqa: E731
    return list(zip(ranked(base), ranked(own)))


def compare(groups: Sequence[Group], baseline: Group, columns: Sequence[str], resamples: int = RESAMPLES,
            seed: int = SEED) -> None:
    """Fill each other group's ``comparisons`` with paired tests against ``baseline`` (module docstring)."""
    if not baseline.finished:
        raise DataError(f"the baseline row {baseline.number} ({baseline.label}) has no finished job")
    load = functools.cache(hypothesis_files.load)
    references = functools.cache(lambda folder, split: hypothesis_files.references_of(load(folder, split)[0]))
    testable = [c for c in columns if _parts(c)[2] in TESTABLE]
    for group in groups:
        if group is baseline:
            continue
        for column in testable:
            prefix, split, metric = _parts(column)
            comparison = Comparison()
            for base_job, job in _seed_pairs(baseline, group):
                base_folder = Path(base_job["_folder"]) / prefix
                base, own = load(base_folder, split), load(Path(job["_folder"]) / prefix, split)
                if base is None or own is None:
                    comparison.skipped.append(f"job {job['job']}: no hypotheses.{split}.txt with its record")
                    continue
                (base_record, base_hyps), (record, hyps) = base, own
                same = (record["references"]["sha256"] == base_record["references"]["sha256"]
                        and record.get("indices") == base_record.get("indices"))
                if not same:
                    comparison.skipped.append(f"job {job['job']}: scored on other sentences than baseline job {base_job['job']}")
                    continue
                result = paired_test(metric, base_hyps, hyps, references(base_folder, split),
                                     tgt_lang=base_record.get("tgt_lang"), bleu_tokenize=base_record.get("bleu_tokenize"),
                                     resamples=resamples, seed=seed)
                comparison.pairs.append((base_job["job"], job["job"], result))
            if comparison.pairs or comparison.skipped:
                group.comparisons[column] = comparison

