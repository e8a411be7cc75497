"""The hypotheses a run scored, kept beside its numbers, so that two runs can be compared sentence by sentence.

Training, ``final`` scoring and ``seq2seq-eval`` write ``hypotheses.<split>.txt`` (one hypothesis per
line, in corpus order) and its record ``hypotheses.<split>.json`` (the references: where to read
them again and a SHA-256 of the scored text; the decoding, checkpoint, task, target language, BLEU's
tokenizer; ``indices`` when only part of the split was scored) into the folder of its ``metrics.json``.
:func:`load` and :func:`references_of` read them back for ``seq2seq-report --baseline``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seq2seq.data.sources import CorpusFormat, read_aligned_lines, read_split
from seq2seq.errors import DataError
from seq2seq.utils.io import atomic_write_text

if TYPE_CHECKING:
    from seq2seq.data.corpus import Corpus

RECORD_VERSION = 1


def file_names(split: str) -> tuple[str, str]:
    """``(hypotheses file, record file)`` of ``split``: ``hypotheses.<split>.txt`` and ``.json``."""
    return f"hypotheses.{split}.txt", f"hypotheses.{split}.json"


def references_digest(streams: Sequence[Sequence[str]]) -> str:
    """SHA-256 of reference streams (each line, then a separator per stream): the same text, the same digest."""
    key = hashlib.sha256()
    for stream in streams:
        for line in stream:
            key.update(line.encode("utf-8", "surrogatepass") + b"\n")
        key.update(b"\x00")
    return key.hexdigest()


def write(folder: str | Path, split: str, hypotheses: Sequence[str], references: Sequence[Sequence[str]], *,
          corpus: Corpus, decoding: Mapping[str, Any], task: str, checkpoint: str | None = None,
          bleu_tokenize: str | None = None, indices: Sequence[int] | None = None) -> Path:
    """Write ``hypotheses.<split>.txt`` and its record into ``folder``; returns the text file's path.

    ``corpus``: the one whose ``split`` was scored; ``references``: the streams the hypotheses were
    scored against (for the digest); ``indices``: the corpus lines scored, when not the whole split
    (None: all of it, in order)."""
    folder = Path(folder)
    text_name, record_name = file_names(split)
    # One line per hypothesis: a line break inside one would shift every later line.
    path = atomic_write_text(folder / text_name, "".join(f"{' '.join(h.splitlines())}\n" for h in hypotheses))
    record = {
        "version": RECORD_VERSION,
        "split": split,
        "hypotheses": text_name,
        "num_sentences": len(hypotheses),
        "indices": list(indices) if indices is not None else None,
        "references": {  # the corpus as it was read, and its files (target side, then data.extra_references)
            "root": str(corpus.root), "split": corpus.split_name(split), "src_lang": corpus.src_lang,
            "tgt_lang": corpus.tgt_lang, "format": dataclasses.asdict(corpus.format),
            "files": [str(p) for p in corpus.reference_files(split)],
            "extra_references": [str(p) for p in corpus.extra_reference_files(split)],
            "sha256": references_digest(references), "streams": len(references),
        },
        "decoding": dict(decoding),
        "checkpoint": checkpoint,
        "task": task,
        "tgt_lang": corpus.tgt_lang,
        "bleu_tokenize": bleu_tokenize,
    }
    atomic_write_text(folder / record_name, json.dumps(record, indent=2) + "\n")
    return path


def load(folder: str | Path, split: str) -> tuple[dict, list[str]] | None:
    """``(record, hypotheses)`` written by :func:`write` into ``folder`` for ``split``; None if absent."""
    text_name, record_name = file_names(split)
    record_file, text_file = Path(folder) / record_name, Path(folder) / text_name
    if not record_file.is_file() or not text_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{record_file} cannot be read ({err}): rerun the evaluation that wrote it") from None
    hypotheses = read_aligned_lines(text_file, int(record["num_sentences"]), f"its record {record_file}")
    return record, hypotheses


def references_of(record: Mapping[str, Any]) -> list[list[str]]:
    """The reference streams ``record``'s hypotheses were scored against, read again from the corpus
    (only the scored lines) and checked: another text than the one scored is a :class:`DataError`."""
    source = record["references"]
    fmt = CorpusFormat(**source["format"])
    _, targets = read_split(source["root"], source["split"], source["src_lang"], source["tgt_lang"], fmt)
    streams = [targets] + [read_aligned_lines(f, len(targets), f"the {record['split']} split")
                           for f in source.get("extra_references") or ()]
    indices = record.get("indices")
    if indices is not None:
        streams = [[stream[i] for i in indices] for stream in streams]
    if references_digest(streams) != source["sha256"]:
        where = ", ".join(source.get("files") or [source["root"]])
        raise DataError(
            f"the references under {where} are not the ones its hypotheses ({record['hypotheses']}, "
            f"{record['split']}) were scored against (their SHA-256 differs): the corpus changed since"
        )
    return streams
