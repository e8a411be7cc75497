"""The grouped sweep report (rows: :mod:`seq2seq.analysis.groups`) as Markdown, LaTeX (booktabs) and CSV.

``results.csv`` holds each number of a row as ``<column>``, ``_std``, ``_n``, ``_min``, ``_max`` and,
against a baseline, ``_delta``, ``_ci_low``, ``_ci_high``, ``_p``; ``significance.csv`` one line per
tested seed pair. docs/baselines.md shows them all.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from seq2seq.analysis.groups import NUMBERS, P_THRESHOLD, Group

SIGNATURES = (("sacrebleu_signature", "BLEU"), ("bleu_tok_lc_signature", "BLEU, tokenized and lowercased"),
              ("rouge_signature", "ROUGE"))
_METRIC_NAMES = {"bleu": "BLEU", "bleu_tok_lc": "BLEU (tok., lc)", "chrf": "chrF", "rouge1": "ROUGE-1",
                 "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}


def split_common(keys: Sequence[Sequence[str]]) -> tuple[list[str], list[str]]:
    """(overrides in every one of ``keys``, each one's other overrides joined): what tells rows (their
    ``Group.key``) or jobs apart; of one row, all its overrides are shared and its label is empty."""
    common = [o for o in keys[0] if all(o in key for key in keys[1:])] if keys else []
    return common, [" ".join(o for o in key if o not in common) for key in keys]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table, ``|`` inside a cell escaped (signatures hold some)."""
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)]


def write_csv(header: Sequence[str], lines: Iterable[dict]) -> str:
    """CSV text of ``lines`` (dicts; other keys ignored, None and missing columns empty)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(header), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in line.items()} for line in lines)
    return out.getvalue()


def format_number(column: str, value: float) -> str:
    """A number as the tables print it: parameters in millions, wall time in minutes and seconds."""
    if column == "parameters":
        return f"{value / 1e6:.2f}M"
    if column == "wall_time_s":
        minutes, seconds = divmod(float(value), 60)
        return f"{int(minutes)}m{seconds:04.1f}s" if minutes else f"{seconds:.1f}s"
    if column == "tokens/s":
        return f"{value:,.0f}"
    return f"{value:.2f}"


def _cell(group: Group, column: str, plus_minus: str, dagger: str) -> str:
    """``mean<plus_minus>std`` of ``column`` (its value for one job; parameters without std: seeds of
    one setting have one size), with ``dagger`` where it differs from the baseline; "" without."""
    summary = group.summaries.get(column)
    if summary is None:
        return ""
    text = format_number(column, summary.mean)
    if summary.std is not None and column != "parameters":
        text += f"{plus_minus}{format_number(column, summary.std)}"
    comparison = group.comparisons.get(column)
    return text + dagger if comparison is not None and comparison.significant else text


def _signatures(groups: Sequence[Group]) -> list[tuple[str, str]]:
    """(name, signature) of every distinct signature of the finished jobs."""
    return [(name, str(value)) for key, name in SIGNATURES
            for value in dict.fromkeys(job.get(key) for g in groups for job in g.finished if job.get(key))]


def _test_note(baseline: Group | None, resamples: int, seed: int) -> str:
    return (f"paired bootstrap resampling against row {baseline.number} (sacreBLEU's PairedTest, {resamples:,} "
            f"resamples, seed {seed}; each seed against the baseline's same seed, the worst p over seed pairs)")


# ---------------------------------------------------------------------------------- Markdown
def markdown(groups: Sequence[Group], columns: Sequence[str], baseline: Group | None = None,
             resamples: int = 0, seed: int = 0) -> str:
    """``results.md``: each number as ``mean ± std``, ``†`` where the row differs from the baseline row
    at p < 0.05; then the significance table, the failed jobs and the signatures."""
    common, varying = split_common([group.key for group in groups])
    header = ["row", "jobs", "n", "failed", "size", "parameters", *columns, "tokens/s", "wall_time_s", "device", "overrides"]
    rows = [[f"{group.number}{' (baseline)' if group is baseline else ''}", ", ".join(j["job"] for j in group.jobs),
             str(len(group.finished)), str(len(group.failed)), str(group.common("size") or ""),
             *(_cell(group, c, " ± ", " †") for c in ["parameters", *columns, "tokens/s", "wall_time_s"]),
             str(group.common("device") or ""), label] for group, label in zip(groups, varying)]
    lines = [f"Overrides of every row: `{' '.join(common)}`", ""] if common else []
    lines += [*markdown_table(header, rows), ""]
    lines.append("Each number: mean ± sample standard deviation over the row's finished jobs (n); one job: its value.")
    if baseline is not None:
        lines += ["", f"† p < {P_THRESHOLD} in a {_test_note(baseline, resamples, seed)}.", ""]
        lines += _significance_markdown(groups, baseline)
    failed = [(group, job) for group in groups for job in group.failed]
    if failed:
        lines += ["", f"Failed jobs ({len(failed)}):"]
        lines += [f"- row {group.number}, job {job['job']}" + (f" (seed={job['seed']})" if job.get("seed") is not None else "")
                  + f": {job.get('error') or 'failed'}" for group, job in failed]
    signatures = _signatures(groups)
    if signatures:
        lines += ["", "Signatures:"] + [f"- {name}: `{value}`" for name, value in signatures]
    return "\n".join(lines) + "\n"


def _significance_markdown(groups: Sequence[Group], baseline: Group) -> list[str]:
    rows = []
    for group in groups:
        for column, comparison in group.comparisons.items():
            if comparison.pairs:
                low, high = comparison.interval
                rows.append([str(group.number), column, f"{comparison.delta:+.2f}", f"[{low:+.2f}, {high:+.2f}]",
                             f"{comparison.p_value:.4f}{' †' if comparison.significant else ''}", str(len(comparison.pairs))])
            rows += [[str(group.number), column, "", "", f"not tested: {reason}", ""] for reason in comparison.skipped]
    if not rows:
        return [f"No metric could be tested against row {baseline.number}: no hypotheses with their records "
                "(hypotheses.<split>.json) in its jobs' folders."]
    header = ["row", "metric", "Δ (row − baseline)", "95 % CI of Δ", "p (worst over seed pairs)", "seed pairs"]
    return [f"Significance against row {baseline.number} ({baseline.label or 'no overrides'}):", "",
            *markdown_table(header, rows)]


# ---------------------------------------------------------------------------------- LaTeX
_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}


def latex_escape(text: str) -> str:
    """``text`` as LaTeX prints it literally."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_header(column: str) -> str:
    *prefix, metric = column.split("/")
    return latex_escape(" ".join([*prefix, _METRIC_NAMES.get(metric, metric)]))


def _signature_tt(value: str) -> str:
    # Line breaks allowed after each field, so that a long signature wraps inside the note.
    return r"\texttt{" + r"|\allowbreak{}".join(latex_escape(part) for part in value.split("|")) + "}"


def latex(groups: Sequence[Group], columns: Sequence[str], baseline: Group | None = None, resamples: int = 0,
          seed: int = 0, caption: str = "") -> str:
    """``results.tex``: a booktabs ``table`` as :func:`markdown`'s, the notes under it."""
    common, varying = split_common([group.key for group in groups])
    body = []
    for group, label in zip(groups, varying):
        cells = [latex_escape(label or f"row {group.number}") + (" (baseline)" if group is baseline else ""),
                 str(len(group.finished))]
        for column in columns:
            cell = _cell(group, column, r" \pm ", "^{\\dagger}")
            cells.append(f"${cell}$" if cell else "--")
        body.append("    " + " & ".join(cells) + r" \\")
    notes = [r"Mean $\pm$ sample standard deviation over $n$ runs (seeds); one run: its value."]
    if common:
        notes.append(f"Overrides of every row: {latex_escape(' '.join(common))}.")
    if baseline is not None:
        notes.append(rf"$^\dagger$: $p < {P_THRESHOLD}$ in a {latex_escape(_test_note(baseline, resamples, seed))}.")
    notes += [f"{latex_escape(name)}: {_signature_tt(value)}." for name, value in _signatures(groups)]
    lines = [
        r"% seq2seq-report --format latex; needs \usepackage{booktabs} in the preamble.",
        r"\begin{table}[htbp]",
        r"  \centering",
        r"  \begin{tabular}{l" + "r" * (1 + len(columns)) + "}",
        r"    \toprule",
        "    " + " & ".join(["Setting", "$n$", *(_latex_header(c) for c in columns)]) + r" \\",
        r"    \midrule",
        *body,
        r"    \bottomrule",
        r"  \end{tabular}",
        r"  \par\smallskip",
        r"  \begin{minipage}{\linewidth}\footnotesize",
        *(f"  {note}\\par" for note in notes),
        r"  \end{minipage}",
    ]
    if caption:
        lines.append(rf"  \caption{{{latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- CSV
def csv_text(groups: Sequence[Group], columns: Sequence[str]) -> str:
    """``results.csv``: one line per row, every summary and comparison as plain numbers."""
    _, varying = split_common([group.key for group in groups])
    header = ["row", "label", "jobs", "seeds", "n", "failed", "size", "device", "selected by"]
    for column in [*columns, *NUMBERS]:
        header += [column, f"{column}_std", f"{column}_n", f"{column}_min", f"{column}_max"]
        if any(column in g.comparisons for g in groups):
            header += [f"{column}_delta", f"{column}_ci_low", f"{column}_ci_high", f"{column}_p"]
    header += [key for key, _ in SIGNATURES] + ["overrides", "errors"]
    lines = []
    for group, label in zip(groups, varying):
        line: dict[str, Any] = {
            "row": group.number, "label": label, "jobs": " ".join(j["job"] for j in group.jobs),
            "seeds": " ".join(str(j["seed"]) for j in group.jobs if j.get("seed") is not None), "n": len(group.finished),
            "failed": len(group.failed), "size": group.common("size"), "device": group.common("device"),
            "selected by": group.common("selected by"), "overrides": group.label,
            "errors": " | ".join(f"job {j['job']}: {j.get('error')}" for j in group.failed),
        }
        line.update({key: group.common(key) for key, _ in SIGNATURES})
        for column, summary in group.summaries.items():
            line.update({column: summary.mean, f"{column}_std": summary.std, f"{column}_n": summary.n,
                         f"{column}_min": summary.min, f"{column}_max": summary.max})
        for column, comparison in group.comparisons.items():
            if comparison.pairs:
                low, high = comparison.interval
                line.update({f"{column}_delta": comparison.delta, f"{column}_ci_low": low, f"{column}_ci_high": high,
                             f"{column}_p": comparison.p_value})
        lines.append(line)
    return write_csv(header, lines)


def significance_csv(groups: Sequence[Group]) -> str:
    """One line per tested seed pair: both jobs, both scores, the difference, its interval, p."""
    header = ["row", "metric", "baseline_job", "job", "baseline", "system", "delta", "delta_ci_low", "delta_ci_high",
              "p", "system_mean", "system_ci"]
    return write_csv(header, (
        dict(zip(header, [group.number, column, base_job, job, result.baseline, result.system, result.delta,
                          *result.delta_interval, result.p_value, result.system_mean, result.system_ci]))
        for group in groups for column, comparison in group.comparisons.items()
        for base_job, job, result in comparison.pairs))
