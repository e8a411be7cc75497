"""Atomic file writes, and reading text lines as a stream.

A reader (another process, a later run, a DDP rank) must never see a half-written file: a crash,
Ctrl-C or full disk during a write would otherwise leave a truncated corpus or vocabulary that looks
valid. Everything is written to a temporary file in the destination folder (same file system, so
:func:`os.replace` is atomic) and moved onto the final name only once it is complete.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, TextIO

from seq2seq.errors import DataError


def fsync_dir(folder: Path) -> None:
    """Make a rename into ``folder`` durable; best effort, as not every platform can open a folder."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on error delete it.

    The temporary file already exists (empty) when yielded, so its name is reserved; write to it
    with any API that opens by name. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL reserves the name; mode 0o666 lets the umask decide permissions, as for a plain open(),
    # where tempfile.mkstemp would leave the final file readable by its owner only.
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield tmp
        # Flush the data to disk before the rename, so a power cut cannot leave the final name
        # pointing at an empty file.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):
            err.filename = str(path)  # the user asked for path; the temporary name means nothing to them
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path`` as a :class:`Path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8, newlines written as given) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


class _CheckedWriter:
    """A binary file's ``write`` and ``flush`` that remember the first :class:`OSError`: serializers that
    call them (``torch.save``) report a failed write as their own error, without the errno."""

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as err:
            self.error = self.error or err
            raise


@contextlib.contextmanager
def atomic_open_binary(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file to write (``torch.save(obj, f)``) that appears under ``path`` only once complete
    (see :func:`atomic_path`). A write that fails (a full disk) raises its :class:`OSError`, naming
    ``path``, even where the serializer turned it into another exception; ``path`` keeps its old file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        writer = _CheckedWriter(f)
        try:
            yield writer  # type: ignore[misc]
        except Exception:
            if writer.error is not None:
                raise writer.error from None
            raise


@contextlib.contextmanager
def atomic_open_text(path: str | os.PathLike[str], encoding: str = "utf-8") -> Iterator[TextIO]:
    """A text file (``\\n`` newlines) to write in pieces that appears under ``path`` only once the
    block succeeds (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding=encoding, newline="\n") as f:
        yield f


class TextLines:
    """The lines of a UTF-8 text file, or of stdin when ``path`` is ``None``, read one at a time.

    Lines are split on ``\\n`` only (``str.splitlines`` would also split on ``\\x0b``, ``\\x1c``,
    ``\\u2028`` ..., changing the line count) and a trailing ``\\r`` is dropped, so a file of N lines
    gives N strings whatever they hold. A line that is not UTF-8 raises :class:`DataError` naming
    the file and the line (counted from 1). Nothing is read ahead beyond the current line, so lines
    arriving through a pipe are given out as they come. The file is opened here, so an unreadable
    input fails before any work. ``count``: the lines given out so far. ``where``: the path, or ``"stdin"``.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None):
        if path is None:
            self.where, self._file, self._owned = "stdin", sys.stdin.buffer, False
        else:
            self.where, self._owned = str(path), True
            try:
                self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by the iteration
            except OSError as err:
                raise DataError(f"cannot read {path}: {err.strerror or err}") from None
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        try:
            for raw in iter(self._file.readline, b""):
                self.count += 1
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{self.where} line {self.count}: not UTF-8 ({err.reason})") from None
                yield line.removesuffix("\n").removesuffix("\r")
        finally:
            if self._owned:
                self._file.close()


def count_lines(path: str | os.PathLike[str], block: int = 1 << 20) -> int:
    """The number of lines :class:`TextLines` gives for ``path`` (``\\n`` count, plus an unterminated
    last line), read in blocks without decoding."""
    lines, last = 0, b"\n"
    try:
        with open(path, "rb") as f:
            for data in iter(lambda: f.read(block), b""):
                lines += data.count(b"\n")
                last = data[-1:]
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    return lines + (last != b"\n")


def paired_lines(first: TextLines, second: TextLines) -> Iterator[tuple[str, str]]:
    """``zip`` of two line streams that must be line-aligned; when one ends before the other, the
    other is counted to its end and :class:`DataError` names both with their line counts."""
    for a, b in itertools.zip_longest(first, second):
        if a is None or b is None:
            for _ in second if a is None else first:  # count the longer one to its end
                pass
            raise line_count_mismatch(first.where, first.count, second.where, second.count)
        yield a, b


def line_count_mismatch(first: str, n_first: int, second: str, n_second: int) -> DataError:
    """The error for two files that should have one line per line of the other."""
    return DataError(
        f"{first} has {n_first} lines but {second} has {n_second}; line i of one must belong to line i of "
        "the other (a blank line at the end counts as a line)"
    )
