"""Results of a sweep: ``python -m seq2seq.report SWEEP_DIR [--format markdown|latex|csv] [--group-by KEY[,KEY]]
[--baseline ROW] [--metrics PATTERN[,PATTERN]] [--out DIR]``.

Jobs whose overrides differ only in ``seed`` form one row (mean ± sample standard deviation and n of
every metric; min/max in the CSV; failed jobs counted per row and listed with their reasons);
``--group-by`` chooses the keys that make a row instead (``job``: one row per job). ``--baseline ROW``
(a row number, or text unique to one row's overrides) tests every other row against it: sacreBLEU's
paired bootstrap resampling (1,000 resamples, fixed seed) on the hypotheses the jobs kept, each seed
against the baseline's same seed. Writes ``results.md``, ``results.tex``, ``results.csv``,
``jobs.csv``, ``significance.csv`` (with a baseline) and ``bleu_vs_params.png`` into ``--out``
(default: the sweep folder) and prints the table in the chosen format; see :mod:`seq2seq.analysis.sweep`,
:mod:`seq2seq.analysis.groups` and :mod:`seq2seq.analysis.tables`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from seq2seq.analysis.significance import RESAMPLES, SEED
from seq2seq.analysis.sweep import FORMATS, report
from seq2seq.errors import user_error_message


def _keys(value: str | None) -> list[str] | None:
    return [k.strip() for k in value.split(",") if k.strip()] if value else None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a user error, with one message)."""
    parser = argparse.ArgumentParser(prog="python -m seq2seq.report", description="Results table and plot of a sweep.")
    parser.add_argument("sweep_dir", help="a multirun folder (<sweep>/<N>/ per job)")
    parser.add_argument("--out", default=None, help="where to write the tables and plot (default: SWEEP_DIR)")
    parser.add_argument("--format", choices=FORMATS, default="markdown", help="what to print (every format is written)")
    parser.add_argument("--group-by", default=None,
                        help="KEY[,KEY]: jobs with equal values make a row (default: equal overrides but seed; job: one row per job)")
    parser.add_argument("--baseline", default=None, help="ROW: test every other row against it (row number or unique label text)")
    parser.add_argument("--metrics", default=None, help="PATTERN[,PATTERN]: the metric columns to show, e.g. 'val/bleu*,eval_beam5/*'")
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples of the paired test")
    parser.add_argument("--bootstrap-seed", type=int, default=SEED, help="seed of the resampling (sacreBLEU's default)")
    parser.add_argument("--caption", default=None, help="caption of the LaTeX table (default: the sweep folder's name)")
    args = parser.parse_args(argv)
    try:
        result = report(args.sweep_dir, args.out, group_by=_keys(args.group_by), baseline=args.baseline,
                        metrics=_keys(args.metrics), resamples=args.resamples, seed=args.bootstrap_seed,
                        caption=args.caption)
    except Exception as err:  # a user error (also a full disk or a forbidden folder) is one line
        if (message := user_error_message(err)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(result[args.format], end="")
    failed = sum(r["status"] != "ok" for r in result["rows"])
    files = [result[k] for k in ("markdown_file", "latex_file", "csv_file", "jobs_file", "significance_file", "plot_file")
             if k in result]
    rows = len(result["groups"])
    print(f"{len(result['rows'])} jobs ({failed} failed) in {rows} row{'s' if rows != 1 else ''}: {', '.join(map(str, files))}",
          file=sys.stdout if args.format == "markdown" else sys.stderr)  # `--format latex > table.tex` stays clean
    return 0


if __name__ == "__main__":
    sys.exit(main())
