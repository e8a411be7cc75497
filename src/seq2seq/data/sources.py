"""Corpus formats: one reader class per format, found by name in a registry (:data:`FORMATS`).

Formats (:class:`CorpusFormat.format`):

``lines``
    ``{root}/{split}.{src_lang}`` and ``{root}/{split}.{tgt_lang}``, one segment per line, UTF-8;
    line *i* of one file translates line *i* of the other. Either file may instead be gzipped as
    ``{split}.{lang}.gz`` (the plain file wins when both exist).
``tsv``
    ``{root}/{split}.tsv``, one pair per row, TAB-separated, no quoting. Columns are chosen by header
    name when the first row contains both ``src_field`` and ``tgt_field``, else by 0-based index
    (``src``/``tgt`` with no header mean columns 0 and 1).
``jsonl``
    ``{root}/{split}.jsonl``, one JSON object per line, fields by dotted path, e.g.
    ``translation.en`` for WMT-style ``{"translation": {"en": ..., "de": ...}}``. Blank lines are
    skipped.
``hf``
    ``datasets.load_dataset(hf_path, hf_name, split=split, data_files=hf_data_files)`` with the same
    dotted field paths. Needs the ``datasets`` package.

A reader (:class:`CorpusReader`) opens a split's files as a :class:`PairSource`: its pairs as a
stream of chunks, never held whole in memory (``hf`` excepted: ``datasets`` holds it). A new format
is one class registered with :func:`register_format`; a one-file format of one record per line only
writes :meth:`RecordFormat.pairs`.

Text is kept exactly as in the file: only the line break (``\\n`` or ``\\r\\n``) and a UTF-8 byte
order mark at the start of a file are removed. Leading and trailing spaces are left alone, so the
text the metrics see is the reference as published; whitespace normalization belongs to the
tokenizer. Lines are split on ``\\n`` only, never on other Unicode line separators, which would
silently misalign the two sides.

Every problem a user can fix (missing file, bad UTF-8 or JSON, a missing field, different line
counts, an empty split) raises :class:`~seq2seq.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice, zip_longest
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from seq2seq.data.progress import Progress
from seq2seq.errors import DataError

__all__ = ["FORMATS", "CorpusFormat", "CorpusReader", "LinesPair", "PairChunk", "PairSource", "RecordFormat",
           "decode_lines", "find_split", "read_aligned_lines", "read_split", "register_format"]

logger = logging.getLogger(__name__)

FORMATS: dict[str, type[CorpusReader]] = {}


def register_format(name: str) -> Callable[[type[CorpusReader]], type[CorpusReader]]:
    """Class decorator: ``data.format=<name>`` reads corpora with the decorated :class:`CorpusReader`."""

    def register(cls: type[CorpusReader]) -> type[CorpusReader]:
        cls.name = name
        FORMATS[name] = cls
        return cls

    return register


@dataclass
class CorpusFormat:
    """How a corpus is stored; see the module docstring.

    ``src_field``/``tgt_field`` name the source and target: header names or 0-based column indices
    for ``tsv``, dotted paths (``translation.en``) for ``jsonl`` and ``hf``; ``lines`` ignores them.
    """

    format: str = "lines"
    src_field: str = "src"
    tgt_field: str = "tgt"
    hf_path: str | None = None
    hf_name: str | None = None
    hf_data_files: dict | None = None

    def reader(self, root: str | Path, src_lang: str, tgt_lang: str) -> CorpusReader:
        """The reader of this format for the corpus under ``root``."""
        cls = FORMATS.get(self.format)
        if cls is None:
            raise DataError(f"Unknown corpus format {self.format!r}; use one of: {', '.join(FORMATS)}.")
        return cls(Path(root), src_lang, tgt_lang, self)


def read_split(root: str | Path, split_files: str | Sequence[str] | Mapping[str, Any], src_lang: str, tgt_lang: str,
               fmt: CorpusFormat) -> tuple[list[str], list[str]]:
    """Read one split whole as ``(sources, targets)``, two lists of equal, non-zero length.

    ``split_files`` is a split base name (``"train"``, ``"test_2016_flickr"``); a list of base
    names, of which the first one present is read; or a mapping of explicit files, relative to
    ``root`` unless absolute: ``{"src": ..., "tgt": ...}`` for ``lines``, ``{"path": ...}`` for
    ``tsv``/``jsonl``, ``{"split": ...}`` for ``hf``.
    """
    return fmt.reader(root, src_lang, tgt_lang).source(split_files).texts()


def find_split(root: str | Path, candidates: Sequence[str], src_lang: str, tgt_lang: str,
               fmt: CorpusFormat) -> str | None:
    """Return the first split base name among ``candidates`` whose files exist, or ``None``."""
    return fmt.reader(root, src_lang, tgt_lang).find(candidates)


def read_aligned_lines(path: str | Path, count: int, what: str) -> list[str]:
    """The lines of a UTF-8 text file (or its ``.gz``) holding one segment per line, line *i* for
    segment *i* of ``what`` (``count`` segments): an extra reference or a hypothesis file.

    A missing file, bad UTF-8 or another number of lines raises :class:`~seq2seq.errors.DataError`
    naming the file and both counts.
    """
    path = _plain_or_gz(Path(path))
    if not path.is_file():
        raise DataError(f"Missing file: {path} (one line per segment of {what}).")
    lines = [line for _, line in _numbered_lines(path)]
    if len(lines) != count:
        raise DataError(
            f"{path} has {len(lines)} lines but {what} has {count} segments; it needs one line per "
            "segment, in order (a blank line at the end counts as a line)."
        )
    return lines


# -- reading files as lines -------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 8 << 20  # a file is read this much at a time
LINES_PER_BLOCK = 100_000  # lines of a line file decoded at a time
# Records parsed at a time (a one-file format, and counting or reading any source through its
# chunks): both sides of a pair are strings then, so fewer at once keeps the transient memory of a
# streamed TSV or JSONL file at that of line files.
RECORDS_PER_BLOCK = 10_000


def _plain_or_gz(path: Path) -> Path:
    """``path``, or its ``.gz`` when only that exists."""
    gz = path.with_name(path.name + ".gz")
    return gz if not path.is_file() and gz.is_file() else path


def _empty_split(*paths: Path) -> DataError:
    return DataError(
        f"The split is empty: {' and '.join(str(p) for p in paths)} contain(s) no examples. "
        "Check that the right files were downloaded or point data.root=DIR at another folder."
    )


def decode_lines(data: bytes, path: Path | str = "?", first_line: int = 1) -> list[str]:
    """The lines of ``data``, whole lines each ending with ``\\n`` (as :class:`_LineReader` hands
    them out), decoded: UTF-8, a final ``\\r`` dropped. Bad UTF-8 raises :class:`DataError` naming
    ``path`` and the line (``first_line`` is the first one's number)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_no = first_line + data.count(b"\n", 0, e.start)
        line_start = data.rfind(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}, line {line_no}: invalid UTF-8 (byte {data[e.start : e.start + 1].hex(' ')} at "
            f"column {e.start - line_start + 1}). Convert the file to UTF-8, e.g. with "
            f"`iconv -f LATIN1 -t UTF-8`, or remove the line from both sides."
        ) from None
    lines = text.split("\n")
    lines.pop()  # the text ends with a line break, which ends the last line
    if "\r" in text:
        lines = [line.removesuffix("\r") for line in lines]
    return lines


class _LineReader:
    """A plain or gzipped file handed out as runs of whole lines (bytes), each ending with ``\\n``:
    a UTF-8 byte order mark at the start is dropped and a last line without a line break gets one."""

    def __init__(self, path: Path):
        self.blocks = _blocks(path)
        self.buf = b""
        self.newlines = np.empty(0, dtype=np.int64)  # positions of b"\n" in buf
        self.next = 0  # index into newlines of the next line's end
        self.start = 0  # where the next line starts in buf
        self.eof = False
        self.at_start = True

    def _fill(self) -> None:
        data = next(self.blocks, b"")
        if self.at_start:
            data = data.removeprefix(_BOM)
            self.at_start = False
        rest = self.buf[self.start :]
        if not data:
            self.eof = True
            if rest and not rest.endswith(b"\n"):
                rest += b"\n"
            data, rest = rest, b""
        self.buf = rest + data
        self.start = 0
        self.newlines = np.flatnonzero(np.frombuffer(self.buf, dtype=np.uint8) == 10)
        self.next = 0

    def take(self, n: int) -> tuple[bytes, int]:
        """The next ``n`` lines (fewer at the end of the file) and how many there are."""
        while len(self.newlines) - self.next < n and not self.eof:
            self._fill()
        k = min(n, len(self.newlines) - self.next)
        if k <= 0:
            return b"", 0
        end = int(self.newlines[self.next + k - 1]) + 1
        out = self.buf[self.start : end]
        self.start, self.next = end, self.next + k
        return out, k

    def close(self) -> None:
        self.blocks.close()


def _line_blocks(path: Path, lines_per_block: int | None = None) -> Iterator[tuple[int, bytes, int]]:
    """``(number of the first line, raw lines, how many)`` of a file, block by block."""
    reader = _LineReader(path)
    first = 1
    try:
        while True:
            data, n = reader.take(lines_per_block or LINES_PER_BLOCK)
            if not n:
                return
            yield first, data, n
            first += n
    finally:
        reader.close()


def _numbered_lines(path: Path, lines_per_block: int | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a file, decoded."""
    for first, data, _ in _line_blocks(path, lines_per_block):
        yield from enumerate(decode_lines(data, path, first), first)


def _blocks(path: Path, progress: Progress | None = None) -> Iterator[bytes]:
    """A file's content (decompressed for ``.gz``) in blocks; read errors as :class:`DataError`."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            while data := f.read(BLOCK_BYTES):
                yield data
                if progress is not None:
                    progress.update(len(data))
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a complete gzip file ({e}); download or compress it again.") from None
    except FileNotFoundError:
        raise DataError(f"Missing corpus file: {path}.") from None
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}.") from None


def file_digest(path: Path, progress: Progress | None = None) -> str:
    """SHA-256 of a file's content (decompressed for ``.gz``), ~1.1 GB per CPU second."""
    digest = hashlib.sha256()
    for data in _blocks(path, progress):
        digest.update(data)
    return digest.hexdigest()


def _file_lines(path: Path, progress: Progress | None = None) -> int:
    """The number of lines of a file (counted with numpy, ~3 GB/s)."""
    lines, last = 0, b"\n"
    for data in _blocks(path, progress):
        lines += int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))
        last = data[-1:]
    return lines + (last != b"\n")


# -- a split's pairs, streamed --------------------------------------------------------------------


@dataclass
class PairChunk:
    """Consecutive pairs of a split: raw bytes of whole lines (from :class:`LinesPair`) or strings.

    ``first_line`` numbers the first pair's line in its files (from 1), for error messages.
    """

    src: bytes | list[str]
    tgt: bytes | list[str]
    first_line: int = 1
    src_path: str = "?"
    tgt_path: str = "?"

    def texts(self) -> tuple[list[str], list[str]]:
        src = self.src if isinstance(self.src, list) else decode_lines(self.src, self.src_path, self.first_line)
        tgt = self.tgt if isinstance(self.tgt, list) else decode_lines(self.tgt, self.tgt_path, self.first_line)
        return src, tgt

    def __len__(self) -> int:
        return len(self.src) if isinstance(self.src, list) else self.src.count(b"\n")

    def head(self, n: int) -> PairChunk:
        """The first ``n`` pairs."""

        def cut(side: bytes | list[str]) -> bytes | list[str]:
            if isinstance(side, list):
                return side[:n]
            ends = np.flatnonzero(np.frombuffer(side, dtype=np.uint8) == 10)
            return side[: int(ends[n - 1]) + 1] if n else b""

        return PairChunk(cut(self.src), cut(self.tgt), self.first_line, self.src_path, self.tgt_path)


class PairSource:
    """A split's pairs as a stream: what tokenizing, sentencepiece sampling and references read.

    Subclasses give :meth:`chunks`, :meth:`digest` and :meth:`side_key`; counting and reading
    sentences go through the chunks unless a format has a faster way. ``where`` names the split in
    messages.
    """

    where = "?"

    def digest(self) -> str:
        """The digest of the split's content (what the cache keys on)."""
        raise NotImplementedError

    def side_key(self, side: str) -> str:
        """A digest of one side's text (``"src"`` or ``"tgt"``): equal for the same text in two corpora
        (en-de and en-fr sharing their English), so sentencepiece sees it once."""
        raise NotImplementedError

    def chunks(self, pairs_per_chunk: int) -> Iterator[PairChunk]:
        """Every pair, in order, ``pairs_per_chunk`` at a time."""
        raise NotImplementedError

    def count(self) -> int:
        """The number of pairs (at least one)."""
        return sum(len(chunk) for chunk in self.chunks(RECORDS_PER_BLOCK))

    def sentences(self, side: str, indices: np.ndarray | None = None, progress: Progress | None = None) -> list[str]:
        """The decoded texts of one side (``"src"`` or ``"tgt"``): all, or those at sorted ``indices``."""
        out: list[str] = []
        base = 0
        for chunk in self.chunks(RECORDS_PER_BLOCK):
            texts = chunk.texts()[0 if side == "src" else 1]
            if indices is None:
                out.extend(texts)
            else:
                lo, hi = np.searchsorted(indices, [base, base + len(texts)])
                out.extend(texts[i - base] for i in indices[lo:hi].tolist())
            base += len(texts)
            if progress is not None:
                progress.update(len(texts))
        return out

    def texts(self) -> tuple[list[str], list[str]]:
        """Both sides whole (validation and test: they are the references)."""
        return self.sentences("src"), self.sentences("tgt")

    def head(self, n: int) -> PairSource:
        """The first ``n`` pairs (``data.max_train_pairs``)."""
        return _Head(self, n)


class _Head(PairSource):
    def __init__(self, source: PairSource, n: int):
        self.source, self.n, self.where = source, int(n), source.where

    def digest(self) -> str:
        return f"{self.source.digest()}|first={self.n}"

    def side_key(self, side: str) -> str:
        return f"{self.source.side_key(side)}|first={self.n}"

    def count(self) -> int:
        return min(self.n, self.source.count())

    def chunks(self, pairs_per_chunk: int) -> Iterator[PairChunk]:
        left = self.n
        for chunk in self.source.chunks(pairs_per_chunk):
            if left <= 0:
                return
            k = len(chunk)
            yield chunk if k <= left else chunk.head(left)
            left -= k


class TextPairs(PairSource):
    """Pairs held in memory (a Hugging Face dataset, texts given by a caller)."""

    def __init__(self, src: list[str], tgt: list[str], where: str = "?"):
        self.src, self.tgt, self.where = src, tgt, where
        self._digests: dict[str, str] = {}

    def _hash(self, name: str, *sides: list[str]) -> str:
        """The digest of ``sides``, computed once and remembered under ``name``."""
        if name not in self._digests:
            key = hashlib.sha256(b"texts\0")
            for i, texts in enumerate(sides):
                if i:
                    key.update(b"\x00\n")
                for start in range(0, len(texts), 100_000):  # joined in batches: much faster than per line
                    key.update(("\n".join(texts[start : start + 100_000]) + "\n").encode("utf-8", "surrogatepass"))
            self._digests[name] = key.hexdigest()
        return self._digests[name]

    def digest(self) -> str:
        return self._hash("both", self.src, self.tgt)

    def side_key(self, side: str) -> str:
        return self._hash(side, self.src if side == "src" else self.tgt)

    def count(self) -> int:
        return len(self.src)

    def chunks(self, pairs_per_chunk: int) -> Iterator[PairChunk]:
        for start in range(0, len(self.src), pairs_per_chunk):
            end = start + pairs_per_chunk
            yield PairChunk(self.src[start:end], self.tgt[start:end], start + 1)

    def texts(self) -> tuple[list[str], list[str]]:
        return self.src, self.tgt


class _StampedFiles(PairSource):
    """A source over files whose digest and count are remembered while the files' size, times and
    inode stay the same: a second call in the same process (``setup`` after ``prepare_data``)
    does not read them again; another process does. The digest hashes ``tag`` (the format, its
    fields) with the files' digests."""

    tag: tuple[str, ...] = ()

    def __init__(self, *paths: Path):
        self.paths = tuple(Path(p) for p in paths)
        self.where = str(self.paths[0])
        self._remembered: dict[str, tuple[tuple, Any]] = {}

    def _stamp(self) -> tuple:
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise DataError("Missing corpus file(s): " + ", ".join(str(p) for p in missing) + ".")
        stats = [p.stat() for p in self.paths]
        return tuple((str(p), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for p, s in zip(self.paths, stats))

    def _remember(self, what: str, compute: Callable[[], Any]) -> Any:
        stamp = self._stamp()
        if what not in self._remembered or self._remembered[what][0] != stamp:
            self._remembered[what] = stamp, compute()
        return self._remembered[what][1]

    def _progress(self, what: str) -> Progress:
        total = None if any(p.suffix == ".gz" for p in self.paths) else sum(p.stat().st_size for p in self.paths)
        return Progress(f"{what} {' and '.join(p.name for p in self.paths)}", total, unit="B")

    def _file_digests(self) -> list[str]:
        def compute() -> list[str]:
            with self._progress("Hashing") as progress:
                return [file_digest(p, progress) for p in self.paths]

        return self._remember("files", compute)

    def digest(self) -> str:
        return hashlib.sha256("\0".join([*self.tag, *self._file_digests()]).encode()).hexdigest()

    def count(self) -> int:
        return self._remember("count", super().count)


class LinesPair(_StampedFiles):
    """A ``lines`` split: two line-aligned files, streamed (raw lines, decoded by the tokenizing
    workers), counted with numpy, sampled by decoding only the picked lines."""

    def __init__(self, src_path: str | Path, tgt_path: str | Path):
        super().__init__(src_path, tgt_path)
        self.src_path, self.tgt_path = self.paths
        self.where = str(self.src_path.with_suffix("")) if self.src_path.suffix != ".gz" else str(self.src_path)
        self.tag = ("lines",)

    def side_key(self, side: str) -> str:
        return self._file_digests()[0 if side == "src" else 1]

    def count(self) -> int:
        def compute() -> int:
            with self._progress("Counting the lines of") as progress:
                src_lines, tgt_lines = (_file_lines(p, progress) for p in self.paths)
            if src_lines != tgt_lines:
                raise DataError(
                    f"{self.src_path} has {src_lines} lines but {self.tgt_path} has {tgt_lines}; line i of one file "
                    "must be the translation of line i of the other. Check that neither file is cut short or has "
                    "extra lines (a blank line at the end counts as a line)."
                )
            if not src_lines:
                raise _empty_split(self.src_path, self.tgt_path)
            return src_lines

        return self._remember("count", compute)

    def chunks(self, pairs_per_chunk: int) -> Iterator[PairChunk]:
        blocks = [_line_blocks(p, pairs_per_chunk) for p in self.paths]
        for (first, src, n_src), (other, tgt, n_tgt) in zip_longest(*blocks, fillvalue=(0, b"", 0)):
            if n_src != n_tgt:
                raise DataError(f"{self.src_path} and {self.tgt_path} no longer have the same number of lines "
                                f"(one ends at line {max(first, other) + min(n_src, n_tgt)}); were they changed "
                                "while being read?")
            yield PairChunk(src, tgt, first, str(self.src_path), str(self.tgt_path))

    def sentences(self, side: str, indices: np.ndarray | None = None, progress: Progress | None = None) -> list[str]:
        path = self.src_path if side == "src" else self.tgt_path
        out: list[str] = []
        for first, data, n in _line_blocks(path):
            base = first - 1
            if indices is None:
                out.extend(decode_lines(data, path, first))
            else:
                lo, hi = np.searchsorted(indices, [base, base + n])
                if hi > lo:
                    lines = data.split(b"\n")
                    for i in indices[lo:hi].tolist():
                        out.extend(decode_lines(lines[i - base] + b"\n", path, i + 1))
            if progress is not None:
                progress.update(n)
        return out

    def texts(self) -> tuple[list[str], list[str]]:
        self.count()  # the files' line counts checked
        return super().texts()


class RecordFile(_StampedFiles):
    """A one-file split of one record per line (TSV, JSONL), streamed: its lines parsed into pairs
    by the format (:meth:`RecordFormat.pairs`) chunk by chunk."""

    def __init__(self, path: Path, fmt: RecordFormat):
        super().__init__(path)
        self.path, self.format = self.paths[0], fmt
        self.tag = (fmt.name, f"{fmt.fmt.src_field}", f"{fmt.fmt.tgt_field}")

    def side_key(self, side: str) -> str:
        return "\0".join([self.tag[0], self.tag[1 if side == "src" else 2], self._file_digests()[0]])

    def chunks(self, pairs_per_chunk: int) -> Iterator[PairChunk]:
        pairs = self.format.pairs(self.path, _numbered_lines(self.path, RECORDS_PER_BLOCK))
        first = 1
        while batch := list(islice(pairs, pairs_per_chunk)):
            yield PairChunk([s for s, _ in batch], [t for _, t in batch], first)
            first += len(batch)
        if first == 1:
            raise _empty_split(self.path)


# -- the readers ----------------------------------------------------------------------------------


class CorpusReader:
    """How one format stores a corpus under ``root``: a subclass, registered with
    :func:`register_format`, gives :meth:`files` (a split's files) and :meth:`open` (them as a
    :class:`PairSource`); ``explicit_keys`` are the keys of a split given as explicit files."""

    name: ClassVar[str] = ""
    explicit_keys: ClassVar[tuple[str, ...]] = ("path",)

    def __init__(self, root: Path, src_lang: str, tgt_lang: str, fmt: CorpusFormat):
        self.root, self.src_lang, self.tgt_lang, self.fmt = root, src_lang, tgt_lang, fmt

    def files(self, split: str) -> list[Path]:
        raise NotImplementedError

    def open(self, files: list[Path]) -> PairSource:
        raise NotImplementedError

    def missing(self, path: Path) -> str:
        """How a missing file is named in messages."""
        return str(path)

    def target_files(self, split: str) -> list[Path]:
        """The files that hold the split's targets (its references): the last of :meth:`files`."""
        return self.files(split)[-1:]

    def describe(self, split: str) -> str:
        """What the split's files would be, for the message that none was found."""
        return " and ".join(str(p) for p in self.files(split))

    def find(self, candidates: Sequence[str]) -> str | None:
        """The first of ``candidates`` whose files exist, or None."""
        return next((c for c in candidates if all(p.is_file() for p in self.files(c))), None)

    def _open_files(self, files: list[Path], where: str, what: str) -> PairSource:
        """:meth:`open` once every file exists; else the message names the missing ones and ``what`` to do."""
        missing = [p for p in files if not p.is_file()]
        if missing:
            many = "(s)" if len(self.explicit_keys) > 1 else ""
            named = [self.missing(p) if where else str(p) for p in missing]
            raise DataError(f"Missing corpus file{many}{where}: {', '.join(named)}. Put the file{many} there or {what}.")
        return self.open(files)

    def open_split(self, split: str) -> PairSource:
        files = self.files(split)
        return self._open_files(files, f" for split '{split}'",
                                "point data.root=DIR at the folder that holds " + ("them" if len(files) > 1 else "it"))

    def open_explicit(self, files: Mapping[str, Any]) -> PairSource:
        paths = []
        for key in self.explicit_keys:
            if key not in files:
                raise DataError(f"Split files {dict(files)} for format={self.name} need the key '{key}'.")
            path = Path(str(files[key]))
            paths.append(path if path.is_absolute() else self.root / path)
        return self._open_files(paths, "", f"fix the split's file name{'s' if len(paths) > 1 else ''}")

    def source(self, split_files: str | Sequence[str] | Mapping[str, Any]) -> PairSource:
        """The split named by ``split_files`` (see :func:`read_split`) as a :class:`PairSource`."""
        if isinstance(split_files, Mapping):
            return self.open_explicit(split_files)
        if isinstance(split_files, str):
            return self.open_split(split_files)
        candidates = [str(c) for c in split_files]
        if not candidates:
            raise DataError("No split names given: the list of split candidates is empty.")
        found = self.find(candidates)
        if found is None:
            expected = "; ".join(self.describe(c) for c in candidates)
            raise DataError(f"None of the splits {candidates} was found. Expected one of: {expected}. "
                            "Put the files there or point data.root=DIR at the folder that holds them.")
        return self.open_split(found)


@register_format("lines")
class LinesFormat(CorpusReader):
    explicit_keys = ("src", "tgt")

    def files(self, split: str) -> list[Path]:
        return [_plain_or_gz(self.root / f"{split}.{lang}") for lang in (self.src_lang, self.tgt_lang)]

    def open(self, files: list[Path]) -> PairSource:
        return LinesPair(*files)

    def missing(self, path: Path) -> str:
        return f"{path} (or {path}.gz)" if path.suffix != ".gz" else str(path)

    def describe(self, split: str) -> str:
        return " and ".join(f"{self.root / f'{split}.{lang}'}[.gz]" for lang in (self.src_lang, self.tgt_lang))


class RecordFormat(CorpusReader):
    """A format of one file per split, ``{root}/{split}.{name}``, one record per line: a subclass
    writes :meth:`pairs`."""

    def files(self, split: str) -> list[Path]:
        return [self.root / f"{split}.{self.name}"]

    def open(self, files: list[Path]) -> PairSource:
        return RecordFile(files[0], self)

    def pairs(self, path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[str, str]]:
        """The ``(source, target)`` pairs of a file's ``(line number, text)`` lines, in order; bad
        input raises :class:`DataError` naming ``path`` and the line."""
        raise NotImplementedError


def _as_index(field: Any) -> int | None:
    if isinstance(field, int) and not isinstance(field, bool):
        return field
    return int(field) if isinstance(field, str) and field.strip().isdigit() else None


@register_format("tsv")
class TsvFormat(RecordFormat):
    def _columns(self, path: Path, first: list[str]) -> tuple[int, int, bool]:
        """(source column, target column, whether the first row is a header)."""
        src_f, tgt_f = self.fmt.src_field, self.fmt.tgt_field
        if str(src_f) in first and str(tgt_f) in first:
            return first.index(str(src_f)), first.index(str(tgt_f)), True
        src_col, tgt_col = (0, 1) if (src_f, tgt_f) == ("src", "tgt") else (_as_index(src_f), _as_index(tgt_f))
        if src_col is None or tgt_col is None:
            raise DataError(
                f"{path}, line 1: the first row is not a header with columns '{src_f}' and "
                f"'{tgt_f}' (it has: {', '.join(repr(c) for c in first[:10])}). Set src_field and "
                "tgt_field to header names of this file or to 0-based column numbers."
            )
        if max(src_col, tgt_col) >= len(first):
            raise DataError(
                f"{path}, line 1: has {len(first)} column(s) but columns {src_col} and {tgt_col} are "
                "needed. Separate the columns with TAB characters or set src_field/tgt_field."
            )
        return src_col, tgt_col, False

    def pairs(self, path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[str, str]]:
        columns = None
        blank: list[tuple[int, str]] = []  # blank lines at the end of a file are ignored, not inside it
        for line_no, line in lines:
            if columns is None:
                first = line.split("\t")
                src_col, tgt_col, header = self._columns(path, first)
                columns = len(first)
                if header:
                    continue
            if not line.strip():
                blank.append((line_no, line))
                continue
            for number, text in [*blank, (line_no, line)]:
                cells = text.split("\t")
                if len(cells) != columns:
                    raise DataError(
                        f"{path}, line {number}: {len(cells)} TAB-separated column(s), expected {columns} "
                        "like line 1. TSV files are read without quoting, so a TAB inside a segment must be "
                        "replaced (e.g. by a space)."
                    )
                yield cells[src_col], cells[tgt_col]
            blank = []


def _get_field(obj: Any, path: str) -> str:
    """Follow a dotted path (``translation.en``); a key that itself contains dots is tried first.

    A path that does not lead to a string raises ``LookupError``; the caller adds file and line.
    """
    if isinstance(obj, Mapping) and path in obj:
        value = obj[path]
    else:
        value = obj
        for depth, part in enumerate(path.split(".")):
            if not isinstance(value, Mapping) or part not in value:
                where = ".".join(path.split(".")[:depth]) or "the record"
                keys = list(value.keys())[:10] if isinstance(value, Mapping) else type(value).__name__
                raise LookupError(f"field '{path}' not found ({where} has: {keys})")
            value = value[part]
    if not isinstance(value, str):
        raise LookupError(f"field '{path}' is {type(value).__name__}, not a string")
    return value


@register_format("jsonl")
class JsonlFormat(RecordFormat):
    def pairs(self, path: Path, lines: Iterator[tuple[int, str]]) -> Iterator[tuple[str, str]]:
        src_f, tgt_f = str(self.fmt.src_field), str(self.fmt.tgt_field)
        for line_no, line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line_no}: invalid JSON ({e.msg} at column {e.colno}). "
                                "Each line must be one complete JSON object.") from None
            try:
                yield _get_field(record, src_f), _get_field(record, tgt_f)
            except LookupError as e:
                raise DataError(f"{path}, line {line_no}: {e}. Set src_field/tgt_field to the paths of the source "
                                "and target text, e.g. 'translation.en'.") from None


@register_format("hf")
class HfFormat(CorpusReader):
    """A Hugging Face dataset: a split exists when it is a key of ``hf_data_files`` or, without data
    files, one of the dataset's split names (which may need the network)."""

    explicit_keys = ("split",)

    def _datasets(self) -> Any:
        try:
            import datasets
        except ImportError:
            raise DataError("format=hf needs the Hugging Face `datasets` package: run `pip install datasets` "
                            "(or install this project with its `hf` extra).") from None
        return datasets

    def _data_files(self) -> dict | None:
        """``hf_data_files`` with relative local paths taken relative to ``root``, like other formats."""
        if self.fmt.hf_data_files is None:
            return None

        def resolve(p: Any) -> Any:
            if isinstance(p, str) and "://" not in p and not Path(p).is_absolute():
                return str(self.root / p)
            if isinstance(p, Sequence) and not isinstance(p, str):
                return [resolve(x) for x in p]
            return p

        return {str(k): resolve(v) for k, v in dict(self.fmt.hf_data_files).items()}

    def find(self, candidates: Sequence[str]) -> str | None:
        names = self._data_files()
        if names is None:
            datasets = self._datasets()
            try:
                names = datasets.get_dataset_split_names(self.fmt.hf_path, self.fmt.hf_name)
            except Exception as e:  # noqa: BLE001 -- datasets raises many types (network, missing config, ...)
                raise DataError(f"Cannot list the splits of Hugging Face dataset {self.fmt.hf_path!r}: {e}") from None
        return next((c for c in candidates if c in names), None)

    def describe(self, split: str) -> str:
        return f"split '{split}' of {self.fmt.hf_path}"

    def target_files(self, split: str) -> list[Path]:
        return []  # a Hub dataset: no file of its own

    def open_explicit(self, files: Mapping[str, Any]) -> PairSource:
        if "split" not in files:
            raise DataError(f"Split files {dict(files)} for format=hf need the key 'split'.")
        return self.open_split(str(files["split"]))

    def open_split(self, split: str) -> PairSource:
        fmt = self.fmt
        if not fmt.hf_path:
            raise DataError("format=hf needs hf_path (a Hub dataset name or a builder such as 'json').")
        datasets = self._datasets()
        what = f"Hugging Face dataset {fmt.hf_path!r}" + (f" ({fmt.hf_name!r})" if fmt.hf_name else "")
        try:
            ds = datasets.load_dataset(fmt.hf_path, fmt.hf_name, split=split, data_files=self._data_files())
        except Exception as e:  # noqa: BLE001 -- datasets raises many types (network, missing files, unknown split, ...)
            raise DataError(f"Cannot load split '{split}' of {what}: {type(e).__name__}: {e}") from None
        columns = list(ds.column_names)
        out: list[list[str]] = []
        for field in (str(fmt.src_field), str(fmt.tgt_field)):
            top = field if field in columns else field.split(".", 1)[0]
            if top not in columns:
                raise DataError(f"Split '{split}' of {what} has no field '{field}' (columns: {columns}). "
                                "Set src_field/tgt_field, e.g. 'translation.en'.")
            values: list[str] = []
            # Column access is far faster than iterating rows; nested parts are walked per value.
            for row, value in enumerate(ds[top]):
                try:
                    values.append(_get_field({top: value}, field))
                except LookupError as e:
                    raise DataError(f"Split '{split}' of {what}, row {row}: {e}.") from None
            out.append(values)
        if not out[0]:
            raise DataError(f"Split '{split}' of {what} is empty.")
        return TextPairs(out[0], out[1], f"{fmt.hf_path}/{split}")
