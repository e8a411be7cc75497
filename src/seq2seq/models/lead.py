"""Lead-n: the extractive summarization baseline (the first n sentences, or dialogue turns).

Lead-3 takes the first three sentences of a document (See et al., 2017) or, for a dialogue, its
first three turns (Gliwa et al., 2019, report it on SAMSum); ``python -m seq2seq.baselines lead3``.

SAMSum holds one dialogue per line (``Amanda: I baked cookies. Jerry: Sure!``). :func:`split_turns`
starts a turn at every ``Name:`` (a capitalized word, or the first speaker's name as written),
followed by a colon, or by `` :`` and whitespace (so that ``Wow :)`` is not a turn). A capitalized
word and a colon inside a turn (``Note: ...``) starts a turn too; this is rare.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from seq2seq.errors import ConfigError
from seq2seq.metrics.text_metrics import split_sentences

BASELINES = ("lead3",)
UNITS = ("auto", "sentences", "turns")

# A speaker name: one word starting with a capital letter (``Amanda``, ``O'Neil``, ``J.J.``).
_NAME = r"[A-Z][\w.'\u2019&-]*"
# The colon right after the name, or after a space when whitespace follows (not the emoticon ``Wow :)``).
_COLON = r"(?::|\s:(?=\s|$))"
_FIRST_SPEAKER = re.compile(rf"\s*([^\s:][^:\n]{{0,40}}?){_COLON}")


def split_turns(dialogue: str) -> list[str]:
    """The turns of a one-line dialogue (``Name: text Name: text ...``), each with its speaker."""
    text = dialogue.strip()
    names = [_NAME]
    first = _FIRST_SPEAKER.match(text)
    if first:
        names.insert(0, re.escape(first.group(1)))  # tried first: a multi-word name stays whole
    starts = [m.start() for m in re.finditer(rf"(?:^|(?<=\s))(?:{'|'.join(names)}){_COLON}", text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = starts + [len(text)]
    return [text[a:b].strip() for a, b in zip(bounds, bounds[1:]) if text[a:b].strip()]


def looks_like_dialogue(sources: Sequence[str], sample: int = 200) -> bool:
    """Whether most sources (of the first ``sample``) start with ``Name:`` and have several turns."""
    texts = [s for s in sources[:sample] if s.strip()]
    if not texts:
        return False
    hits = sum(1 for s in texts if _FIRST_SPEAKER.match(s) and len(split_turns(s)) > 1)
    return hits > len(texts) / 2


def lead(source: str, n: int = 3, unit: str = "sentences") -> str:
    """The first ``n`` sentences (or turns) of ``source``, joined by spaces."""
    if unit not in ("sentences", "turns"):
        raise ConfigError(f"unit={unit!r}: use sentences or turns")
    parts = split_turns(source) if unit == "turns" else split_sentences(source)
    return " ".join(p.replace("\n", " ") for p in parts[:n])


def lead_n(sources: Sequence[str], n: int = 3, unit: str = "auto") -> tuple[list[str], str]:
    """Lead-``n`` of every source; returns (summaries, the unit used)."""
    if unit not in UNITS:
        raise ConfigError(f"unit={unit!r}: use one of {', '.join(UNITS)}")
    if n < 1:
        raise ConfigError(f"n={n} must be at least 1")
    if unit == "auto":
        unit = "turns" if looks_like_dialogue(sources) else "sentences"
    return [lead(s, n, unit) for s in sources], unit
