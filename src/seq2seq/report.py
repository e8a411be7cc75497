"""Results table and plot of a sweep: ``python -m seq2seq.report SWEEP_DIR [--out DIR]``.

Writes ``results.md``, ``results.csv`` and ``bleu_vs_params.png`` into ``--out`` (default: the sweep
folder) and prints the Markdown table; the columns are described in :mod:`seq2seq.analysis.sweep`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from seq2seq.analysis.sweep import report
from seq2seq.config import user_error_message


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a user error, with one message)."""
    parser = argparse.ArgumentParser(prog="python -m seq2seq.report", description="Results table and plot of a sweep.")
    parser.add_argument("sweep_dir", help="a multirun folder (<sweep>/<N>/ per job)")
    parser.add_argument("--out", default=None, help="where to write the table and plot (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    try:
        result = report(args.sweep_dir, args.out)
    except Exception as err:  # a user error (also a full disk or a forbidden folder) is one line
        if (message := user_error_message(err)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(result["markdown"])
    failed = sum(r["status"] != "ok" for r in result["rows"])
    print(f"{len(result['rows'])} jobs ({failed} failed): {result['markdown_file']}, {result['csv_file']}, "
          f"{result['plot_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
