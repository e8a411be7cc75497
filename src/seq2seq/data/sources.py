"""Reading parallel corpora into two aligned lists of strings.

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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq.data.progress import Progress
from seq2seq.errors import DataError

__all__ = ["FORMATS", "CorpusFormat", "LinesPair", "PairChunk", "decode_lines", "find_split", "lines_files",
           "read_aligned_lines", "read_split"]

logger = logging.getLogger(__name__)

FORMATS = ("lines", "tsv", "jsonl", "hf")


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


# -- public API -----------------------------------------------------------------------------------


def read_split(
    root: str | Path,
    split_files: str | Sequence[str] | Mapping[str, Any],
    src_lang: str,
    tgt_lang: str,
    fmt: CorpusFormat,
) -> tuple[list[str], list[str]]:
    """Read one split as ``(sources, targets)``, two lists of equal, non-zero length.

    ``split_files`` is a split base name (``"train"``, ``"test_2016_flickr"``); a list of base
    names, of which the first one present is read; or a mapping of explicit files, relative to
    ``root`` unless absolute: ``{"src": ..., "tgt": ...}`` for ``lines``, ``{"path": ...}`` for
    ``tsv``/``jsonl``, ``{"split": ...}`` for ``hf``.
    """
    _check_format(fmt)
    root = Path(root)
    if isinstance(split_files, Mapping):
        return _read_explicit(root, split_files, fmt)
    if isinstance(split_files, str):
        split = split_files
    else:
        candidates = [str(c) for c in split_files]
        if not candidates:
            raise DataError("No split names given: the list of split candidates is empty.")
        found = find_split(root, candidates, src_lang, tgt_lang, fmt)
        if found is None:
            expected = "; ".join(_describe_expected(root, c, src_lang, tgt_lang, fmt) for c in candidates)
            raise DataError(
                f"None of the splits {candidates} was found. Expected one of: {expected}. "
                "Put the files there or point data.root=DIR at the folder that holds them."
            )
        split = found

    if fmt.format == "lines":
        src_path = _resolve_lines_file(root, split, src_lang)
        tgt_path = _resolve_lines_file(root, split, tgt_lang)
        missing = [p for p in (src_path, tgt_path) if not p.is_file()]
        if missing:
            raise DataError(
                f"Missing corpus file(s) for split '{split}': "
                + ", ".join(f"{p} (or {p}.gz)" for p in missing)
                + ". Put the files there or point data.root=DIR at the folder that holds them."
            )
        return _read_lines_pair(src_path, tgt_path)
    if fmt.format == "hf":
        return _read_hf(root, split, fmt)
    path = root / f"{split}.{fmt.format}"
    if not path.is_file():
        raise DataError(
            f"Missing corpus file for split '{split}': {path}. "
            "Put the file there or point data.root=DIR at the folder that holds it."
        )
    return _read_tsv(path, fmt) if fmt.format == "tsv" else _read_jsonl(path, fmt)


def find_split(
    root: str | Path,
    candidates: Sequence[str],
    src_lang: str,
    tgt_lang: str,
    fmt: CorpusFormat,
) -> str | None:
    """Return the first split base name among ``candidates`` whose files exist, or ``None``.

    For ``hf`` a split exists when it is a key of ``hf_data_files`` or, without data files, one of
    the dataset's split names (which may need the network).
    """
    _check_format(fmt)
    root = Path(root)
    if fmt.format == "hf":
        names = _hf_split_names(root, fmt)
        return next((c for c in candidates if c in names), None)
    for split in candidates:
        if fmt.format == "lines":
            paths = [_resolve_lines_file(root, split, lang) for lang in (src_lang, tgt_lang)]
        else:
            paths = [root / f"{split}.{fmt.format}"]
        if all(p.is_file() for p in paths):
            return split
    return None


def read_aligned_lines(path: str | Path, count: int, what: str) -> list[str]:
    """The lines of a UTF-8 text file (or its ``.gz``) holding one segment per line, line *i* for
    segment *i* of ``what`` (``count`` segments): an extra reference or a hypothesis file.

    A missing file, bad UTF-8 or another number of lines raises :class:`~seq2seq.errors.DataError`
    naming the file and both counts.
    """
    path = Path(path)
    gz = path.with_name(path.name + ".gz")
    if not path.is_file() and gz.is_file():
        path = gz
    if not path.is_file():
        raise DataError(f"Missing file: {path} (one line per segment of {what}).")
    lines = _read_text_lines(path)
    if len(lines) != count:
        raise DataError(
            f"{path} has {len(lines)} lines but {what} has {count} segments; it needs one line per "
            "segment, in order (a blank line at the end counts as a line)."
        )
    return lines


# -- helpers shared by the formats ----------------------------------------------------------------


def _check_format(fmt: CorpusFormat) -> None:
    if fmt.format not in FORMATS:
        raise DataError(f"Unknown corpus format {fmt.format!r}; use one of: {', '.join(FORMATS)}.")


def _describe_expected(root: Path, split: str, src_lang: str, tgt_lang: str, fmt: CorpusFormat) -> str:
    if fmt.format == "lines":
        return " and ".join(f"{root / f'{split}.{lang}'}[.gz]" for lang in (src_lang, tgt_lang))
    if fmt.format == "hf":
        return f"split '{split}' of {fmt.hf_path}"
    return str(root / f"{split}.{fmt.format}")


def _resolve_lines_file(root: Path, split: str, lang: str) -> Path:
    """``{split}.{lang}``, or its ``.gz`` when only that exists (the plain path when neither does)."""
    plain = root / f"{split}.{lang}"
    gz = plain.with_name(plain.name + ".gz")
    if not plain.is_file() and gz.is_file():
        return gz
    return plain


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"Missing corpus file: {path}.") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a complete gzip file ({e}); download or compress it again.") from None
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}.") from None


def _read_text_lines(path: Path) -> list[str]:
    """Return the lines of a UTF-8 file without their line breaks.

    The whole file is decoded at once (fast); on failure the line number is recovered from the
    error's byte offset, which is exact because ``\\n`` never occurs inside a UTF-8 sequence.
    """
    data = _read_bytes(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, data, e, 1) from None
    text = text.removeprefix("\ufeff")
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final line break ends the last line; it does not start an empty one
    return [line.removesuffix("\r") for line in lines]


def _utf8_error(path: Path | str, data: bytes, e: UnicodeDecodeError, first_line: int) -> DataError:
    """The message for bad UTF-8 in ``data``, whose first line is line ``first_line`` of ``path``."""
    line_no = first_line + data.count(b"\n", 0, e.start)
    line_start = data.rfind(b"\n", 0, e.start) + 1
    return DataError(
        f"{path}, line {line_no}: invalid UTF-8 (byte {data[e.start : e.start + 1].hex(' ')} at "
        f"column {e.start - line_start + 1}). Convert the file to UTF-8, e.g. with "
        f"`iconv -f LATIN1 -t UTF-8`, or remove the line from both sides."
    )


def _empty_split(*paths: Path) -> DataError:
    return DataError(
        f"The split is empty: {' and '.join(str(p) for p in paths)} contain(s) no examples. "
        "Check that the right files were downloaded or point data.root=DIR at another folder."
    )


# -- lines ----------------------------------------------------------------------------------------


def _line_count_error(src_path: Path, src_lines: int, tgt_path: Path, tgt_lines: int) -> DataError:
    return DataError(
        f"{src_path} has {src_lines} lines but {tgt_path} has {tgt_lines}; line i of one file must "
        "be the translation of line i of the other. Check that neither file is cut short or has "
        "extra lines (a blank line at the end counts as a line)."
    )


def _read_lines_pair(src_path: Path, tgt_path: Path) -> tuple[list[str], list[str]]:
    src, tgt = _read_text_lines(src_path), _read_text_lines(tgt_path)
    if len(src) != len(tgt):
        raise _line_count_error(src_path, len(src), tgt_path, len(tgt))
    if not src:
        raise _empty_split(src_path, tgt_path)
    return src, tgt


# -- lines, streamed --------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
_BLOCK = 8 << 20


def lines_files(root: str | Path, split: str, src_lang: str, tgt_lang: str) -> tuple[Path, Path]:
    """The two files of a ``lines`` split (``{split}.{lang}``, or its ``.gz`` when only that exists)."""
    return _resolve_lines_file(Path(root), split, src_lang), _resolve_lines_file(Path(root), split, tgt_lang)


def decode_lines(data: bytes, path: Path | str = "?", first_line: int = 1) -> list[str]:
    """The lines of ``data``, whole lines each ending with ``\\n`` (as :class:`LinesPair` reads
    them), decoded as :func:`read_split` decodes a file: UTF-8, a final ``\\r`` dropped. Bad UTF-8
    raises :class:`DataError` naming ``path`` and the line (``first_line`` is the first one's number)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, data, e, first_line) from None
    lines = text.split("\n")
    lines.pop()  # the text ends with a line break, which ends the last line
    if "\r" in text:
        lines = [line.removesuffix("\r") for line in lines]
    return lines


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


class _LineReader:
    """A plain or gzipped file read in blocks and handed out as runs of whole lines (bytes).

    A UTF-8 byte order mark at the start is dropped and a last line without a line break gets one,
    so every run ends with ``\\n`` and holds exactly the lines :func:`read_split` would give.
    """

    def __init__(self, path: Path, block: int = _BLOCK):
        self.path, self.block = path, block
        try:
            self.file = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
        except OSError as e:
            raise DataError(f"Cannot read {path}: {e.strerror or e}.") from None
        self.buf = b""
        self.newlines = np.empty(0, dtype=np.int64)  # positions of b"\n" in buf
        self.next = 0  # index into newlines of the next line's end
        self.start = 0  # where the next line starts in buf
        self.eof = False
        self.at_start = True

    def _read(self) -> bytes:
        try:
            return self.file.read(self.block)
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise DataError(f"{self.path} is not a complete gzip file ({e}); download or compress it again.") from None
        except OSError as e:
            raise DataError(f"Cannot read {self.path}: {e.strerror or e}.") from None

    def _fill(self) -> None:
        data = self._read()
        if self.at_start:
            data = data.removeprefix(_BOM)
            self.at_start = False
        rest = self.buf[self.start :]
        if not data:
            self.eof = True
            self.file.close()
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
        self.file.close()


def _blocks(path: Path, progress: Progress | None = None) -> Iterator[bytes]:
    """A file's content (decompressed for ``.gz``) in blocks; read errors as :class:`DataError`."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            while data := f.read(_BLOCK):
                yield data
                if progress is not None:
                    progress.update(len(data))
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a complete gzip file ({e}); download or compress it again.") from None
    except OSError as e:
        raise DataError(f"Cannot read {path}: {e.strerror or e}.") from None


def _file_digest(path: Path, progress: Progress | None = None) -> str:
    """SHA-256 of a file's content (decompressed for ``.gz``), ~1.1 GB per CPU second."""
    digest = hashlib.sha256()
    for data in _blocks(path, progress):
        digest.update(data)
    return digest.hexdigest()


def _file_lines(path: Path, progress: Progress | None = None) -> int:
    """The number of lines :func:`read_split` gives for a file (counted with numpy, ~3 GB/s)."""
    lines, last = 0, b"\n"
    for data in _blocks(path, progress):
        lines += int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8) == 10))
        last = data[-1:]
    return lines + (last != b"\n")


class LinesPair:
    """A ``lines`` split read as a stream: two line-aligned files, never held whole in memory.

    :meth:`scan` hashes both files and counts their lines (checking that they match);
    :meth:`chunks` gives the pairs in order as :class:`PairChunk` s of raw lines; :meth:`sentences`
    decodes one side, or only the lines at given indices (a sample). Lines are what
    :func:`read_split` gives for the same files (same BOM, ``\\r`` and last-line handling).
    """

    def __init__(self, src_path: str | Path, tgt_path: str | Path):
        self.src_path, self.tgt_path = Path(src_path), Path(tgt_path)
        self._digest: tuple[tuple, str] | None = None  # (stamp of the files, digest)
        self._lines: tuple[tuple, int] | None = None

    @property
    def paths(self) -> tuple[Path, Path]:
        return self.src_path, self.tgt_path

    def _stamp(self) -> tuple:
        stats = [p.stat() for p in self.paths]
        return tuple((str(p), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for p, s in zip(self.paths, stats))

    def _checked_stamp(self) -> tuple:
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise DataError("Missing corpus file(s): " + ", ".join(str(p) for p in missing) + ".")
        return self._stamp()

    def _progress(self, what: str) -> Progress:
        total = sum(p.stat().st_size for p in self.paths) if not any(p.suffix == ".gz" for p in self.paths) else None
        return Progress(f"{what} {self.src_path.name} and {self.tgt_path.name}", total, unit="B")

    def digest(self) -> str:
        """The content digest of both files (what the cache keys on).

        Remembered while the files' size, times and inode stay the same: a second call in the same
        process (``setup`` after ``prepare_data``) does not read them again; another process does.
        """
        stamp = self._checked_stamp()
        if self._digest is None or self._digest[0] != stamp:
            with self._progress("Hashing") as progress:
                src, tgt = (_file_digest(p, progress) for p in self.paths)
            self._digest = stamp, hashlib.sha256(f"lines\0{src}\0{tgt}".encode()).hexdigest()
        return self._digest[1]

    def count(self) -> int:
        """The number of pairs; the two files must have the same number of lines, and some."""
        stamp = self._checked_stamp()
        if self._lines is None or self._lines[0] != stamp:
            with self._progress("Counting the lines of") as progress:
                src_lines, tgt_lines = (_file_lines(p, progress) for p in self.paths)
            if src_lines != tgt_lines:
                raise _line_count_error(self.src_path, src_lines, self.tgt_path, tgt_lines)
            if not src_lines:
                raise _empty_split(self.src_path, self.tgt_path)
            self._lines = stamp, src_lines
        return self._lines[1]

    def scan(self) -> tuple[str, int]:
        """(content digest of both files, number of pairs): :meth:`digest` and :meth:`count`."""
        return self.digest(), self.count()

    def chunks(self, pairs_per_chunk: int) -> Iterator[PairChunk]:
        """Every pair, in order, ``pairs_per_chunk`` at a time."""
        readers = [_LineReader(p) for p in self.paths]
        try:
            first = 1
            while True:
                (src, n_src), (tgt, n_tgt) = (r.take(pairs_per_chunk) for r in readers)
                if n_src != n_tgt:
                    raise DataError(f"{self.src_path} and {self.tgt_path} no longer have the same number of "
                                    f"lines (one ends at line {first + min(n_src, n_tgt)}); were they changed "
                                    "while being read?")
                if not n_src:
                    return
                yield PairChunk(src, tgt, first, str(self.src_path), str(self.tgt_path))
                first += n_src
        finally:
            for r in readers:
                r.close()

    def sentences(self, side: str, indices: np.ndarray | None = None, progress: Progress | None = None,
                  lines_per_block: int = 100_000) -> list[str]:
        """The decoded lines of one side (``"src"`` or ``"tgt"``): all, or those at sorted ``indices``."""
        path = self.src_path if side == "src" else self.tgt_path
        reader = _LineReader(path)
        out: list[str] = []
        base = 0
        try:
            while True:
                data, n = reader.take(lines_per_block)
                if not n:
                    return out
                if indices is None:
                    out.extend(decode_lines(data, path, base + 1))
                else:
                    lo, hi = np.searchsorted(indices, [base, base + n])
                    if hi > lo:
                        lines = data.split(b"\n")
                        for i in indices[lo:hi].tolist():
                            out.extend(decode_lines(lines[i - base] + b"\n", path, i + 1))
                base += n
                if progress is not None:
                    progress.update(n)
        finally:
            reader.close()


# -- tsv ------------------------------------------------------------------------------------------


def _as_index(field: Any) -> int | None:
    if isinstance(field, bool):
        return None
    if isinstance(field, int):
        return field
    if isinstance(field, str) and field.strip().isdigit():
        return int(field)
    return None


def _read_tsv(path: Path, fmt: CorpusFormat) -> tuple[list[str], list[str]]:
    lines = _read_text_lines(path)
    while lines and lines[-1].strip() == "":
        lines.pop()
    if not lines:
        raise _empty_split(path)
    first = lines[0].split("\t")
    n_cols = len(first)
    src_f, tgt_f = fmt.src_field, fmt.tgt_field

    if str(src_f) in first and str(tgt_f) in first:
        src_col, tgt_col = first.index(str(src_f)), first.index(str(tgt_f))
        first_data = 1
    else:
        if (src_f, tgt_f) == ("src", "tgt"):
            src_col, tgt_col = 0, 1
        else:
            src_col, tgt_col = _as_index(src_f), _as_index(tgt_f)
            if src_col is None or tgt_col is None:
                raise DataError(
                    f"{path}, line 1: the first row is not a header with columns '{src_f}' and "
                    f"'{tgt_f}' (it has: {', '.join(repr(c) for c in first[:10])}). Set src_field and "
                    "tgt_field to header names of this file or to 0-based column numbers."
                )
        first_data = 0
        if max(src_col, tgt_col) >= n_cols:
            raise DataError(
                f"{path}, line 1: has {n_cols} column(s) but columns {src_col} and {tgt_col} are "
                "needed. Separate the columns with TAB characters or set src_field/tgt_field."
            )

    src: list[str] = []
    tgt: list[str] = []
    for line_no, line in enumerate(lines[first_data:], start=first_data + 1):
        cells = line.split("\t")
        if len(cells) != n_cols:
            raise DataError(
                f"{path}, line {line_no}: {len(cells)} TAB-separated column(s), expected {n_cols} "
                "like line 1. TSV files are read without quoting, so a TAB inside a segment must be "
                "replaced (e.g. by a space)."
            )
        src.append(cells[src_col])
        tgt.append(cells[tgt_col])
    if not src:
        raise _empty_split(path)
    return src, tgt


# -- jsonl / hf fields ----------------------------------------------------------------------------


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


def _read_jsonl(path: Path, fmt: CorpusFormat) -> tuple[list[str], list[str]]:
    src: list[str] = []
    tgt: list[str] = []
    src_f, tgt_f = str(fmt.src_field), str(fmt.tgt_field)
    for line_no, line in enumerate(_read_text_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {line_no}: invalid JSON ({e.msg} at column {e.colno}). "
                "Each line must be one complete JSON object."
            ) from None
        try:
            src.append(_get_field(record, src_f))
            tgt.append(_get_field(record, tgt_f))
        except LookupError as e:
            raise DataError(
                f"{path}, line {line_no}: {e}. Set src_field/tgt_field to the paths of the source and "
                "target text, e.g. 'translation.en'."
            ) from None
    if not src:
        raise _empty_split(path)
    return src, tgt


# -- hf -------------------------------------------------------------------------------------------


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            "format=hf needs the Hugging Face `datasets` package: run `pip install datasets` "
            "(or install this project with its `hf` extra)."
        ) from None
    return datasets


def _hf_data_files(root: Path, fmt: CorpusFormat) -> dict | None:
    """``hf_data_files`` with relative local paths taken relative to ``root``, like other formats."""
    if fmt.hf_data_files is None:
        return None

    def resolve(p: Any) -> Any:
        if isinstance(p, str) and "://" not in p and not Path(p).is_absolute():
            return str(root / p)
        if isinstance(p, Sequence) and not isinstance(p, str):
            return [resolve(x) for x in p]
        return p

    return {str(k): resolve(v) for k, v in dict(fmt.hf_data_files).items()}


def _hf_split_names(root: Path, fmt: CorpusFormat) -> list[str]:
    data_files = _hf_data_files(root, fmt)
    if data_files is not None:
        return list(data_files)
    datasets = _import_datasets()
    try:
        return list(datasets.get_dataset_split_names(fmt.hf_path, fmt.hf_name))
    except Exception as e:  # noqa: BLE001 -- datasets raises many types (network, missing config, ...)
        raise DataError(f"Cannot list the splits of Hugging Face dataset {fmt.hf_path!r}: {e}") from None


def _read_hf(root: Path, split: str, fmt: CorpusFormat) -> tuple[list[str], list[str]]:
    if not fmt.hf_path:
        raise DataError("format=hf needs hf_path (a Hub dataset name or a builder such as 'json').")
    datasets = _import_datasets()
    what = f"Hugging Face dataset {fmt.hf_path!r}" + (f" ({fmt.hf_name!r})" if fmt.hf_name else "")
    try:
        ds = datasets.load_dataset(
            fmt.hf_path, fmt.hf_name, split=split, data_files=_hf_data_files(root, fmt)
        )
    except Exception as e:  # noqa: BLE001 -- datasets raises many types (network, missing files, unknown split, ...)
        raise DataError(f"Cannot load split '{split}' of {what}: {type(e).__name__}: {e}") from None

    columns = list(ds.column_names)
    out: list[list[str]] = []
    for field in (str(fmt.src_field), str(fmt.tgt_field)):
        top = field if field in columns else field.split(".", 1)[0]
        if top not in columns:
            raise DataError(
                f"Split '{split}' of {what} has no field '{field}' (columns: {columns}). "
                "Set src_field/tgt_field, e.g. 'translation.en'."
            )
        rest = field[len(top) + 1 :]
        values: list[str] = []
        # Column access is far faster than iterating rows; nested parts are walked per value.
        for row, value in enumerate(ds[top]):
            try:
                values.append(_get_field({top: value}, f"{top}.{rest}" if rest else top))
            except LookupError as e:
                raise DataError(f"Split '{split}' of {what}, row {row}: {e}.") from None
        out.append(values)
    if not out[0]:
        raise DataError(f"Split '{split}' of {what} is empty.")
    return out[0], out[1]


def _read_explicit(root: Path, files: Mapping[str, Any], fmt: CorpusFormat) -> tuple[list[str], list[str]]:
    """Read a split given as explicit files (see :func:`read_split`)."""

    def path_of(key: str) -> Path:
        if key not in files:
            raise DataError(f"Split files {dict(files)} for format={fmt.format} need the key '{key}'.")
        p = Path(str(files[key]))
        return p if p.is_absolute() else root / p

    if fmt.format == "hf":
        if "split" not in files:
            raise DataError(f"Split files {dict(files)} for format=hf need the key 'split'.")
        return _read_hf(root, str(files["split"]), fmt)
    if fmt.format == "lines":
        src_path, tgt_path = path_of("src"), path_of("tgt")
        missing = [p for p in (src_path, tgt_path) if not p.is_file()]
        if missing:
            raise DataError(
                "Missing corpus file(s): "
                + ", ".join(str(p) for p in missing)
                + ". Put the files there or fix the split's file names."
            )
        return _read_lines_pair(src_path, tgt_path)
    path = path_of("path")
    if not path.is_file():
        raise DataError(f"Missing corpus file: {path}. Put the file there or fix the split's file name.")
    return _read_tsv(path, fmt) if fmt.format == "tsv" else _read_jsonl(path, fmt)
