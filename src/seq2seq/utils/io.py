"""Atomic file writes.

A reader (another process, a later run, a DDP rank) must never see a half-written file: a crash,
Ctrl-C or full disk during a write would otherwise leave a truncated corpus or vocabulary that looks
valid. Everything is written to a temporary file in the destination folder (same file system, so
:func:`os.replace` is atomic) and moved onto the final name only once it is complete.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable; best effort, as not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``, on error delete it.

    The temporary file already exists (empty) when yielded, so its name is reserved; write to it
    with any API that opens by name. Parent folders are created. ``path`` is left untouched when the
    block raises.

    >>> with atomic_path("out/vocab.txt") as tmp:      # doctest: +SKIP
    ...     tmp.write_text("hello\\n")
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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path`` as a :class:`Path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8, newlines written as given) and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))
