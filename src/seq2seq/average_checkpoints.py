"""Average the weights of several checkpoints (Vaswani et al. average the last 5 or 20).

Either form works::

    python -m seq2seq.average_checkpoints inputs=[a.ckpt,b.ckpt] output=avg.ckpt
    python -m seq2seq.average_checkpoints --inputs a.ckpt b.ckpt --output avg.ckpt
    python -m seq2seq.average_checkpoints --dir RUN/checkpoints/epochs --last 5 --output avg.ckpt
    python -m seq2seq.average_checkpoints dir=RUN/checkpoints/epochs last=5 output=avg.ckpt

``--dir`` takes the ``*.ckpt`` files of a folder ordered by training step (read from each file), a
checkpoint saved twice at the same step (``last.ckpt`` and an epoch checkpoint) counting once;
``--last N`` keeps the N most recent (of ``--dir``'s files or of ``--inputs``, in the order given).
Keep every epoch's checkpoint with ``callbacks=epoch_checkpoints`` (under
``<run>/checkpoints/epochs``).

The output holds the element-wise mean of the floating-point weights
(:func:`seq2seq.inference.checkpoint.average_checkpoints`); the tokenizer, the model config and the
hyperparameters come from the most recent input, so it translates like any checkpoint. Training
state is dropped: it is for evaluation and translation, not for resuming. The file is written
atomically. Mismatched inputs (other keys or shapes) stop with one message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from seq2seq.errors import ConfigError, user_error_message
from seq2seq.inference.checkpoint import average_checkpoints, last_checkpoints, save_checkpoint


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """``--flag`` arguments with argparse, otherwise Hydra-style ``key=value`` pairs."""
    parser = argparse.ArgumentParser(
        prog="python -m seq2seq.average_checkpoints",
        description="Average the weights of checkpoints into one checkpoint.",
    )
    parser.add_argument("--inputs", nargs="+", default=None, help="checkpoints to average")
    parser.add_argument("--dir", default=None, help="average the *.ckpt files of this folder")
    parser.add_argument("--last", type=int, default=None, help="only the N most recent checkpoints")
    parser.add_argument("--output", required=False, help="where to write the averaged checkpoint")
    if any(arg.startswith("-") for arg in argv):
        args = parser.parse_args(argv)
    else:
        try:
            values = OmegaConf.to_container(OmegaConf.from_dotlist(list(argv)))
        except Exception as err:  # a malformed key=value is a user error
            raise ConfigError(f"cannot parse {' '.join(argv)!r}: {err}") from err
        unknown = set(values) - {"inputs", "dir", "last", "output"}
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}: use inputs, dir, last, output")
        inputs = values.get("inputs")
        if isinstance(inputs, str):
            inputs = [inputs]
        args = argparse.Namespace(inputs=inputs, dir=values.get("dir"), last=values.get("last"),
                                  output=values.get("output"))
    if not args.output:
        raise ConfigError("output=PATH (or --output PATH) is required")
    if bool(args.inputs) == bool(args.dir):
        raise ConfigError("give either inputs=[a.ckpt,b.ckpt] (--inputs) or dir=DIR (--dir), not both or neither")
    if args.last is not None and int(args.last) < 1:
        raise ConfigError(f"last={args.last} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; returns the exit status (2 for a user error, with one message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _parse(argv)
        if args.dir:
            paths = last_checkpoints(args.dir, args.last)
        else:
            paths = [Path(p) for p in args.inputs]
            paths = paths[-int(args.last):] if args.last else paths
        output = save_checkpoint(average_checkpoints(paths), args.output)
    except Exception as err:  # a user error (also a full disk or a forbidden folder) is one line
        if (message := user_error_message(err)) is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"Averaged {len(paths)} checkpoints into {output}:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
