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

The output holds the element-wise mean of the floating-point weights (summed in float64, stored in
each tensor's own dtype); non-float tensors, the tokenizer, the model config and the
hyperparameters come from the most recent input, so it loads with
``Seq2SeqModule.load_from_checkpoint`` and translates like any checkpoint. Optimizer and scheduler
states are dropped: it is for evaluation and translation, not for resuming. The file is written
atomically. Mismatched inputs (other keys or shapes) stop with one message and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from seq2seq.errors import CheckpointError, ConfigError, Seq2SeqError
from seq2seq.utils.io import atomic_path

# Training state that belongs to the last run only; an average cannot resume training.
_DROPPED_KEYS = ("optimizer_states", "lr_schedulers", "callbacks", "loops", "native_amp_scaling_state")


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint's content on the CPU (tensors and plain data only: safe on untrusted files)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; anything else is not one
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (damaged, truncated or another kind of file)")
    try:
        # mmap: tensors are read from the file on use, so listing steps or averaging big models stays cheap.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # any failure to read a user's file is a user error
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {reason}") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def last_checkpoints(folder: str | Path, n: int | None = None) -> list[Path]:
    """The ``*.ckpt`` files of ``folder``, oldest first by training step, one per step; the last ``n``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    by_step: dict[int, Path] = {}
    for path in sorted(folder.glob("*.ckpt"), key=lambda p: (p.stat().st_mtime, p.name)):
        step = int(load(path).get("global_step", -1))
        # The same weights saved twice (last.ckpt beside an epoch checkpoint): keep the named one.
        if step not in by_step or by_step[step].name.startswith("last"):
            by_step[step] = path
    paths = [by_step[step] for step in sorted(by_step)]
    if not paths:
        raise CheckpointError(f"no *.ckpt files in {folder}")
    return paths[-n:] if n else paths


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """A checkpoint whose floating-point weights are the mean of those of ``paths`` (see the module doc)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("no checkpoints to average: give inputs=[...] or dir=DIR")
    sums: dict[str, torch.Tensor] = {}
    reference: dict[str, torch.Tensor] = {}
    newest: dict[str, Any] = {}
    for i, path in enumerate(paths):
        checkpoint = load(path)
        state = checkpoint["state_dict"]
        if i == 0:
            reference = {k: v for k, v in state.items()}
        elif set(state) != set(reference):
            diff = sorted(set(state) ^ set(reference))
            raise CheckpointError(
                f"{path} does not match {paths[0]}: different weights ({', '.join(diff[:5])}...); "
                "average checkpoints of one model only"
            )
        for name, tensor in state.items():
            if tensor.shape != reference[name].shape:
                raise CheckpointError(
                    f"{path} does not match {paths[0]}: {name} has shape {tuple(tensor.shape)}, "
                    f"not {tuple(reference[name].shape)}"
                )
            if tensor.is_floating_point():
                # float64 sums: the mean of many low-precision checkpoints is not rounded at every add.
                sums[name] = sums[name] + tensor.double() if name in sums else tensor.double()
        newest = checkpoint  # metadata and non-float tensors of the most recent input
        del state

    state = dict(newest["state_dict"])
    shared: dict[tuple, torch.Tensor] = {}
    for name, total in sums.items():
        # Tied weights (shared embeddings) are one storage under several names: keep them one tensor,
        # so the output is no larger than its inputs.
        tensor = newest["state_dict"][name]
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if key not in shared:
            shared[key] = (total / len(paths)).to(reference[name].dtype)
        state[name] = shared[key]
    averaged = {k: v for k, v in newest.items() if k not in _DROPPED_KEYS}
    averaged["state_dict"] = state
    averaged["averaged_from"] = [str(p) for p in paths]
    return averaged


def save(checkpoint: dict[str, Any], output: str | Path) -> Path:
    """Write ``checkpoint`` to ``output`` atomically (never a half-written file under that name)."""
    output = Path(output)
    with atomic_path(output) as tmp:
        torch.save(checkpoint, tmp)
    return output


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
        output = save(average_checkpoints(paths), args.output)
    except Seq2SeqError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"Averaged {len(paths)} checkpoints into {output}:")
    for path in paths:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
