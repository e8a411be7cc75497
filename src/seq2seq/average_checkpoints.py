"""Average the weights of several checkpoints (Vaswani et al. average the last 5 or 20).

    python -m seq2seq.average_checkpoints --inputs a.ckpt b.ckpt --output avg.ckpt   # or inputs=[a.ckpt,b.ckpt] output=...
    python -m seq2seq.average_checkpoints --dir RUN/checkpoints/epochs --last 5 --output avg.ckpt   # or dir=... last=5

``--dir`` takes a folder's ``*.ckpt`` files in training-step order (one file per step);
``--last N`` keeps the N most recent. ``callbacks=epoch_checkpoints`` keeps every epoch's checkpoint.
The output (:func:`seq2seq.inference.checkpoint.average_checkpoints`, written atomically) has the
tokenizer and config of the most recent input and no training state: it is for evaluation and
translation, not for resuming. Mismatched inputs stop with one message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import OmegaConf

from seq2seq.errors import ConfigError, print_user_error
from seq2seq.inference.checkpoint import average_checkpoints, last_checkpoints, save_checkpoint


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    """``--flag`` arguments with argparse, otherwise Hydra-style ``key=value`` pairs."""
    parser = argparse.ArgumentParser(prog="python -m seq2seq.average_checkpoints",
                                     description="Average the weights of checkpoints into one checkpoint.")
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
        args = argparse.Namespace(**{k: values.get(k) for k in ("inputs", "dir", "last", "output")})
        if isinstance(args.inputs, str):
            args.inputs = [args.inputs]
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
        paths = last_checkpoints(args.dir, args.last) if args.dir else [Path(p) for p in args.inputs]
        if args.inputs and args.last:
            paths = paths[-int(args.last):]
        output = save_checkpoint(average_checkpoints(paths), args.output)
    except Exception as err:  # a user error (also a full disk or a forbidden folder) is one line
        return print_user_error(err)
    print(f"Averaged {len(paths)} checkpoints into {output}:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
