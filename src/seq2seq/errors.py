"""User-facing errors.

A :class:`Seq2SeqError` is a mistake the user can fix (a bad corpus, config or checkpoint). Its
message names the file, line or key and says what to do. Entry points catch it, print the message
alone (no traceback) and exit with status 2.
"""


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
