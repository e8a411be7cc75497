"""Results of a sweep: ``python -m seq2seq.report SWEEP_DIR [--format markdown|latex|csv] [--group-by KEY[,KEY]]
[--baseline ROW] [--metrics PATTERN[,PATTERN]] [--out DIR]``.

Writes the tables, ``jobs.csv``, ``significance.csv`` (with ``--baseline``) and the plot into
``--out`` (default: the sweep folder) and prints the table in the chosen format; the work is
:func:`seq2seq.analysis.sweep.report`'s (docs/baselines.md describes rows and the paired bootstrap test).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from seq2seq.analysis.significance import RESAMPLES, SEED
from seq2seq.analysis.sweep import report
from seq2seq.errors import print_user_error


def _keys(value: str | None) -> list[str] | None:
    return [k.strip() for k in value.split(",") if k.strip()] if value else None


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a user error, with one message)."""
    parser = argparse.ArgumentParser(prog="python -m seq2seq.report", description="Results table and plot of a sweep.")
    parser.add_argument("sweep_dir", help="a multirun folder (<sweep>/<N>/ per job)")
    parser.add_argument("--out", default=None, help="where to write the tables and plot (default: SWEEP_DIR)")
    parser.add_argument("--format", choices=("markdown", "latex", "csv"), default="markdown",
                        help="what to print (every format is written)")
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
        return print_user_error(err)
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
