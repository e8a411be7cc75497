"""Locating the Hydra configuration and running entry points with clean user errors."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

from seq2seq.errors import Seq2SeqError


def config_dir() -> str:
    """The ``conf/`` folder: ``$SEQ2SEQ_CONFIG_DIR`` if set, else the repository's ``conf/``.

    The template is used from a clone (``pip install -e .``), where ``conf/`` sits beside ``src/``.
    """
    override = os.environ.get("SEQ2SEQ_CONFIG_DIR")
    path = Path(override) if override else Path(__file__).resolve().parents[2] / "conf"
    if not (path / "train.yaml").exists():
        sys.exit(
            f"error: no Hydra configuration at {path} (expected train.yaml there). "
            "Install the template from its repository with `pip install -e .`, or set SEQ2SEQ_CONFIG_DIR."
        )
    return str(path)


def user_errors_exit(fn):
    """Turn a :class:`Seq2SeqError` into one message on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Seq2SeqError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
