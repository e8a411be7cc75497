"""Tokenized splits on disk: flat ``.npy`` arrays, written once, memory-mapped read-only by every rank.

A cache entry is a folder ``ids-<key>/`` (the key: see :mod:`seq2seq.data.datamodule`) holding

=====================  =======================================================================
``src.npy``            every source's ids (each ending with EOS) one after the other; the
                       smallest unsigned dtype that holds the vocabulary (uint16 below 65536)
``src_offsets.npy``    int64, ``pairs + 1`` entries: source ``i`` is ``src[off[i]:off[i+1]]``
``src_lengths.npy``    per-pair token counts (uint16, or uint32 when a sentence is longer)
``tgt*.npy``           the same for the targets (no BOS/EOS; the collator adds them)
``meta.json``          format name and version, counts, dtypes, ``<unk>`` counts per side
=====================  =======================================================================

It is written under a temporary folder name beside the final one and renamed when complete, so a
crash leaves no entry that looks valid, and two processes writing the same entry both end with a
complete one. :func:`open_split` maps the arrays read-only (``np.load(mmap_mode="r")``): a rank
holds in memory only the pages it reads, shared with the other ranks through the page cache, and
the lengths (what filtering and batching need) are small separate files, so ``setup`` never reads
the token arrays. An entry that cannot be opened or whose files disagree (truncated, not an entry,
another format) raises :class:`CacheDamaged`; the DataModule then rebuilds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seq2seq.utils.io import fsync_dir

FORMAT, VERSION = "seq2seq-tokenized-split", 1
SIDES = ("src", "tgt")


class CacheDamaged(Exception):
    """A cache entry that cannot be used as it is (the caller rebuilds it)."""


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids ``0 .. vocab_size - 1``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@dataclass
class TokenizedSplit:
    """A split's token ids as flat arrays with offsets (in memory, or memory-mapped from the cache).

    ``src_lens``/``tgt_lens``: per-pair lengths when known (the cache stores them); else they are
    computed from the offsets. ``meta``: what the cache entry's ``meta.json`` says (empty in memory).
    """

    src_flat: np.ndarray
    src_offsets: np.ndarray
    tgt_flat: np.ndarray
    tgt_offsets: np.ndarray
    src_lens: np.ndarray | None = field(default=None, repr=False, compare=False)
    tgt_lens: np.ndarray | None = field(default=None, repr=False, compare=False)
    meta: dict = field(default_factory=dict, repr=False, compare=False)
    path: Path | None = field(default=None, repr=False, compare=False)

    def __reduce__(self):
        # A memory-mapped split travels to another process (a spawned DataLoader worker, ddp_spawn) as
        # its path and is mapped again there; pickling the arrays would copy the whole corpus.
        if self.path is not None:
            return open_split, (self.path,)
        return TokenizedSplit, (self.src_flat, self.src_offsets, self.tgt_flat, self.tgt_offsets, self.src_lens,
                                self.tgt_lens, self.meta)

    @classmethod
    def from_lists(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> TokenizedSplit:
        """Pack per-sentence id sequences (lists, or numpy arrays which are concatenated, faster)."""

        def pack(seqs):
            lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            if len(seqs) and isinstance(seqs[0], np.ndarray):
                flat = np.concatenate(seqs).astype(np.int32, copy=False)
            else:
                flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
            return flat, offsets

        return cls(*pack(src), *pack(tgt))

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src(self, i: int) -> np.ndarray:
        return self.src_flat[self.src_offsets[i] : self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_flat[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets) if self.src_lens is None else self.src_lens

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets) if self.tgt_lens is None else self.tgt_lens

    def save(self, path: str | os.PathLike) -> None:
        """Write this split as a cache entry folder at ``path`` (atomically; see the module docstring)."""
        vocab = int(max(self.src_flat.max(initial=0), self.tgt_flat.max(initial=0))) + 1
        with SplitWriter(path, id_dtype(vocab)) as writer:
            writer.add(self.src_flat, self.src_lengths, self.tgt_flat, self.tgt_lengths)
            writer.commit()

    @classmethod
    def load(cls, path: str | os.PathLike) -> TokenizedSplit:
        """Memory-map the cache entry at ``path``; :class:`CacheDamaged` when it cannot be used."""
        return open_split(path)


class _NpyAppender:
    """A 1-D ``.npy`` file written in pieces: its header is written for shape ``(0,)`` and rewritten
    with the final length on :meth:`close` (numpy pads the header so that the length fits in place)."""

    def __init__(self, path: Path, dtype: np.dtype):
        self.path, self.dtype, self.count = path, np.dtype(dtype), 0
        self.file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.header_size = self._header(0)

    def _header(self, length: int) -> int:
        self.file.seek(0)
        np.lib.format.write_array_header_1_0(
            self.file, {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                        "shape": (length,)})
        return self.file.tell()

    def append(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.file.write(memoryview(values).cast("B"))
        self.count += values.size

    def close(self) -> None:
        end = self.file.tell()
        if self._header(self.count) != self.header_size:  # cannot happen with numpy's padding; be sure
            raise RuntimeError(f"the .npy header of {self.path} changed size")
        self.file.seek(end)
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _save_npy(path: Path, values: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, values, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


class SplitWriter:
    """Write one cache entry from chunks of encoded pairs (:meth:`add`), as a context manager; see the
    module docstring for the layout. Nothing appears at ``path`` unless :meth:`commit` completes;
    leaving the block without it (an exception) deletes the temporary folder."""

    def __init__(self, path: str | os.PathLike, dtype: np.dtype):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        self.tmp.mkdir()
        self.dtype = np.dtype(dtype)
        self.flat = {side: _NpyAppender(self.tmp / f"{side}.npy", self.dtype) for side in SIDES}
        self.lengths: dict[str, list[np.ndarray]] = {side: [] for side in SIDES}
        self.unk = {side: 0 for side in SIDES}
        self.committed = False

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            for appender in self.flat.values():
                appender.file.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def add(self, src: np.ndarray, src_lengths: np.ndarray, tgt: np.ndarray, tgt_lengths: np.ndarray,
            unk: tuple[int, int] = (0, 0)) -> None:
        for side, flat, lengths, n_unk in (("src", src, src_lengths, unk[0]), ("tgt", tgt, tgt_lengths, unk[1])):
            self.flat[side].append(flat)
            self.lengths[side].append(np.asarray(lengths, dtype=np.uint32))  # half of int64, for millions
            self.unk[side] += int(n_unk)

    def commit(self, **meta) -> Path:
        """Finish the files and move the folder to its final name; returns that path.

        When another process completed the same entry first, its folder is kept and ours dropped.
        """
        counts = {}
        for side in SIDES:
            self.flat[side].close()
            parts = self.lengths.pop(side)
            lengths = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32)
            offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
            np.cumsum(lengths, dtype=np.int64, out=offsets[1:])
            if offsets[-1] != self.flat[side].count:
                raise RuntimeError(f"{side}: lengths add up to {offsets[-1]} ids, {self.flat[side].count} written")
            _save_npy(self.tmp / f"{side}_offsets.npy", offsets)
            short = lengths.max(initial=0) <= np.iinfo(np.uint16).max
            _save_npy(self.tmp / f"{side}_lengths.npy", lengths.astype(np.uint16 if short else np.uint32))
            counts[side] = {"pairs": len(lengths), "tokens": int(offsets[-1]), "unk": self.unk[side]}
            del lengths, offsets
        if counts["src"]["pairs"] != counts["tgt"]["pairs"]:
            raise RuntimeError(f"{counts['src']['pairs']} sources but {counts['tgt']['pairs']} targets")
        info = {"format": FORMAT, "version": VERSION, "pairs": counts["src"]["pairs"], "dtype": self.dtype.str,
                **{f"{side}_{k}": v for side in SIDES for k, v in counts[side].items() if k != "pairs"}, **meta}
        with open(self.tmp / "meta.json", "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.tmp)
        try:
            os.rename(self.tmp, self.path)
        except OSError:
            if not self.path.exists():
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)  # another process finished the same entry first
        self.committed = True
        fsync_dir(self.path.parent)
        return self.path


def _load(path: Path, dtype: str | None, length: int) -> np.ndarray:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim != 1 or array.shape[0] != length:
        raise CacheDamaged(f"{path.name} holds {array.shape} values, expected ({length},)")
    if dtype is not None and array.dtype.str != dtype:
        raise CacheDamaged(f"{path.name} holds {array.dtype}, expected {np.dtype(dtype)}")
    return array


def open_split(path: str | os.PathLike) -> TokenizedSplit:
    """Memory-map a cache entry read-only after checking that its files agree with each other.

    Checks what is cheap (no token array is read): the format and version, every file's shape and
    dtype against ``meta.json``, the first and last offsets, and that the lengths add up. Raises
    :class:`CacheDamaged` naming the first problem, or FileNotFoundError when there is no entry.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    if not path.is_dir():
        raise CacheDamaged(f"{path} is a file, not a cache folder")
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise CacheDamaged(f"meta.json is not a version-{VERSION} {FORMAT} header")
        pairs = int(meta["pairs"])
        arrays = {}
        for side in SIDES:
            tokens = int(meta[f"{side}_tokens"])
            flat = _load(path / f"{side}.npy", meta["dtype"], tokens)
            offsets = _load(path / f"{side}_offsets.npy", np.dtype(np.int64).str, pairs + 1)
            lengths = _load(path / f"{side}_lengths.npy", None, pairs)
            if lengths.dtype.kind != "u" or offsets[0] != 0 or offsets[-1] != tokens:
                raise CacheDamaged(f"the {side} offsets or lengths do not match its {tokens} ids")
            if int(lengths.sum(dtype=np.int64)) != tokens:
                raise CacheDamaged(f"the {side} lengths do not add up to its {tokens} ids")
            arrays[side] = (flat, offsets, lengths)
    except FileNotFoundError as err:
        raise CacheDamaged(f"{Path(err.filename or '?').name} is missing") from None
    except (OSError, ValueError, KeyError, TypeError, EOFError, UnicodeDecodeError) as err:
        raise CacheDamaged(f"{type(err).__name__}: {err}") from None
    return TokenizedSplit(arrays["src"][0], arrays["src"][1], arrays["tgt"][0], arrays["tgt"][1],
                          src_lens=arrays["src"][2], tgt_lens=arrays["tgt"][2], meta=meta, path=path)


def remove_entry(path: str | os.PathLike) -> None:
    """Delete a (damaged) cache entry, file or folder: renamed away first, so no reader sees half of it."""
    path = Path(path)
    aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.damaged")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            aside.unlink()
