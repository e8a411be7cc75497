"""Run the notebooks top to bottom, and keep them without outputs in git.

    python -m seq2seq.utils.notebooks run [--out DIR] notebooks/*.ipynb   # executed copies in DIR
    python -m seq2seq.utils.notebooks strip notebooks/*.ipynb             # drop outputs in place
    python -m seq2seq.utils.notebooks check notebooks/*.ipynb             # exit 1 if any has outputs

``run`` executes each notebook with ``nbclient`` in the current Python (kernel ``python3``, working
folder: the notebook's folder) and writes the executed copy to ``--out`` (default
``outputs/notebooks/executed``), leaving the committed file untouched; a failing cell stops with
its traceback. Environment variables reach the kernel, which is how tests point the notebooks at a
tiny checkpoint (``SEQ2SEQ_CKPT``, ``SEQ2SEQ_SWEEP``, ``SEQ2SEQ_NB_OVERRIDES``, ``SEQ2SEQ_NB_OUT``).
Needs the ``notebooks`` extra (nbclient, nbformat, ipykernel), part of ``dev``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["execute", "has_outputs", "main", "strip"]


def execute(path: str | Path, out: str | Path | None = None, timeout: int = 900):
    """Execute the notebook at ``path`` and return it (``nbformat.NotebookNode``); write it to ``out``."""
    import nbformat
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent.resolve())}}
    )
    try:
        client.execute()
    finally:
        if out is not None:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, Path(out))
    return nb


def strip(path: str | Path) -> bool:
    """Remove outputs and execution counts in place; True when the file changed."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    before = nbformat.writes(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    after = nbformat.writes(nb)
    if after != before:
        path.write_text(after, encoding="utf-8")
    return after != before


def has_outputs(path: str | Path) -> bool:
    """True when a code cell of the notebook holds outputs or an execution count."""
    import nbformat

    nb = nbformat.read(Path(path), as_version=4)
    return any(c.cell_type == "code" and (c.outputs or c.execution_count is not None) for c in nb.cells)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seq2seq.utils.notebooks", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "strip", "check"])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("outputs/notebooks/executed"))
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.notebooks if not p.is_file()]
    if missing:
        print(f"error: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 2
    status = 0
    for path in args.notebooks:
        if args.command == "run":
            print(f"running {path} ...", flush=True)
            execute(path, args.out / path.name)
            print(f"  ok -> {args.out / path.name}")
        elif args.command == "strip":
            print(f"{path}: {'stripped' if strip(path) else 'already clean'}")
        elif has_outputs(path):
            print(f"{path} holds outputs: run `python -m seq2seq.utils.notebooks strip {path}`", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
