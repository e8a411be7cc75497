"""User-facing errors: a :class:`Seq2SeqError` is a mistake the user can fix, its message names the
file, line or key and says what to do. Entry points print it alone (no traceback) and exit with
status 2, as they do for the operating-system errors a user can fix (:func:`user_error_message`).
"""

from __future__ import annotations

import errno
import os
import sys


class Seq2SeqError(Exception):
    """A user error whose message is shown as is."""


class DataError(Seq2SeqError):
    """A corpus or data file that cannot be used."""


class ConfigError(Seq2SeqError):
    """A configuration value that cannot be used."""


class CheckpointError(Seq2SeqError):
    """A checkpoint that is missing, damaged or does not fit."""


class TrainingError(Seq2SeqError):
    """Training cannot go on (e.g. the loss became NaN)."""


def one_line(err: BaseException, limit: int = 160) -> str:
    """The first sentence of an exception message: torch's messages run on, a user error is one line."""
    text = str(err).strip().splitlines()
    first = text[0].split(". ")[0] if text else ""
    first = first if len(first) <= limit else first[: limit - 3] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


# What to do about the operating-system errors a user can fix, by errno.
_OS_ERROR_ADVICE = {
    errno.ENOSPC: "free space on that disk, or write somewhere else (e.g. hydra.run.dir=..., output_dir=...)",
    errno.EDQUOT: "your disk quota is used up: free space, or write somewhere else",
    errno.EFBIG: "the file is larger than the file system or the file-size limit (ulimit -f) allows: "
                 "raise the limit, or write somewhere else",
    errno.EACCES: "you may not write or read there: choose another path, or change its permissions",
    errno.EPERM: "you may not write or read there: choose another path, or change its permissions",
    errno.EROFS: "that file system is read-only: write somewhere else",
    errno.ENOENT: "no such file or folder: check the path (and that its folders exist)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: correct the path",
    errno.EISDIR: "that path is a folder: give a file name",
}


def user_error_message(err: BaseException) -> str | None:
    """The one-line message of a user error, or None for a bug (which keeps its traceback): a
    :class:`Seq2SeqError` (also as the cause of what Hydra's ``instantiate`` re-raises) or an
    operating-system error a user can fix (a full disk, a read-only or forbidden folder, a missing path)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, Seq2SeqError):
            return str(err)
        if isinstance(err, OSError) and err.errno in _OS_ERROR_ADVICE:
            where = " -> ".join(str(name) for name in (err.filename, err.filename2) if name is not None)
            advice = f"{err.strerror or os.strerror(err.errno)}: {_OS_ERROR_ADVICE[err.errno]}"
            return f"{where}: {advice}" if where else advice
        seen.add(id(err))
        err = err.__cause__
    return None


def print_user_error(err: BaseException) -> int:
    """Print a user error as one ``error: ...`` line on stderr and return exit status 2; re-raise a bug."""
    message = user_error_message(err)
    if message is None:
        raise err
    print(f"error: {message}", file=sys.stderr)
    return 2
