"""Length filtering of tokenized sentence pairs.

Works on token-id lists *without* BOS/EOS: ``max_src_len`` and ``max_tgt_len`` count content tokens,
so a caller whose model has ``max_positions`` positions and adds BOS and EOS passes
``max_positions - 2``.

Each pair is checked in this order and counted under the first reason that applies:

1. ``empty``: either side has no tokens (only when ``drop_empty``). Empty targets teach the model
   to stop at once, empty sources are alignment errors.
2. ``ratio``: ``longer / shorter > max_len_ratio`` (only when both sides are non-empty), the usual
   sign of a misaligned pair. It uses the original lengths, since truncating does not realign.
3. ``too_long``: a side exceeds its maximum and ``overlong="drop"``. With ``overlong="truncate"``
   the pair is kept with the long side(s) cut to the maximum and counted as ``truncated``.

``kept + empty + ratio + too_long`` is the number of input pairs; ``truncated`` counts kept pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from seq2seq.errors import ConfigError

__all__ = ["FilterResult", "filter_lengths", "filter_pairs"]

_OVERLONG_MODES = ("drop", "truncate")


class FilterResult(NamedTuple):
    """What :func:`filter_pairs` kept: ``src_ids[i]`` and ``tgt_ids[i]`` belong to input pair ``kept[i]``
    (truncated copies where needed, the input objects themselves otherwise)."""

    kept: np.ndarray
    counts: dict[str, int]
    src_ids: list[Sequence[int]]
    tgt_ids: list[Sequence[int]]


def _lengths(seqs: Sequence[Sequence[int]]) -> np.ndarray:
    return np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))


def filter_pairs(
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    *,
    max_src_len: int,
    max_tgt_len: int,
    overlong: str = "drop",
    max_len_ratio: float | None = None,
    drop_empty: bool = True,
) -> FilterResult:
    """Select the pairs (token ids without BOS/EOS) worth training on; see the module docstring for
    the rules (``max_len_ratio``: ``>= 1``, None: no check). ``kept`` of the :class:`FilterResult` is
    an ``int64`` array of input indices in input order; ``counts`` has the keys ``empty``,
    ``too_long``, ``ratio`` and ``truncated``."""
    if len(src_ids) != len(tgt_ids):
        raise ValueError(f"{len(src_ids)} sources but {len(tgt_ids)} targets")
    kept, counts = filter_lengths(
        _lengths(src_ids), _lengths(tgt_ids), max_src_len=max_src_len, max_tgt_len=max_tgt_len,
        overlong=overlong, max_len_ratio=max_len_ratio, drop_empty=drop_empty,
    )
    # Slicing copies only the sequences that are too long (truncate); the rest are passed through.
    out_src = [s[:max_src_len] if len(s) > max_src_len else s for s in (src_ids[i] for i in kept.tolist())]
    out_tgt = [t[:max_tgt_len] if len(t) > max_tgt_len else t for t in (tgt_ids[i] for i in kept.tolist())]
    return FilterResult(kept, counts, out_src, out_tgt)


def filter_lengths(
    src_len: np.ndarray,
    tgt_len: np.ndarray,
    *,
    max_src_len: int,
    max_tgt_len: int,
    overlong: str = "drop",
    max_len_ratio: float | None = None,
    drop_empty: bool = True,
) -> tuple[np.ndarray, dict[str, int]]:
    """:func:`filter_pairs` on the lengths alone (without BOS/EOS): ``(kept, counts)``.

    Vectorized over two length arrays, so it never reads token ids: the DataModule filters a
    memory-mapped corpus with it. Pairs kept under ``overlong="truncate"`` are cut by the reader.
    """
    src_len = np.asarray(src_len)
    tgt_len = np.asarray(tgt_len)
    if src_len.shape != tgt_len.shape:
        raise ValueError(f"{src_len.size} source lengths but {tgt_len.size} target lengths")
    for name, value in (("max_src_len", max_src_len), ("max_tgt_len", max_tgt_len)):
        if value is None or int(value) <= 0:
            raise ConfigError(f"data.{name} must be a positive number of tokens, got {value!r}")
    if overlong not in _OVERLONG_MODES:
        raise ConfigError(f"data.overlong must be one of {', '.join(_OVERLONG_MODES)}, got {overlong!r}")
    if max_len_ratio is not None and not max_len_ratio >= 1:
        raise ConfigError(f"data.max_len_ratio must be >= 1 or null, got {max_len_ratio!r}")

    alive = np.ones(src_len.shape, dtype=bool)

    empty = (src_len == 0) | (tgt_len == 0)
    n_empty = 0
    if drop_empty:
        n_empty = int(empty.sum())
        alive &= ~empty

    n_ratio = 0
    if max_len_ratio is not None:
        both = ~empty
        longer = np.maximum(src_len, tgt_len).astype(np.int64)
        shorter = np.maximum(np.minimum(src_len, tgt_len), 1).astype(np.int64)
        # Compare by multiplication: no float division, and exact for integer ratios.
        bad_ratio = alive & both & (longer > max_len_ratio * shorter)
        n_ratio = int(bad_ratio.sum())
        alive &= ~bad_ratio

    overlong_mask = alive & ((src_len > max_src_len) | (tgt_len > max_tgt_len))
    n_too_long = n_truncated = 0
    if overlong == "drop":
        n_too_long = int(overlong_mask.sum())
        alive &= ~overlong_mask
    else:
        n_truncated = int(overlong_mask.sum())

    kept = np.flatnonzero(alive).astype(np.int64)
    counts = {"empty": n_empty, "too_long": n_too_long, "ratio": n_ratio, "truncated": n_truncated}
    return kept, counts
