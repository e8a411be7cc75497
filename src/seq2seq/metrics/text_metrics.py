"""Text metrics on detokenized text: sacreBLEU BLEU and chrF (translation), ROUGE (summarization).

sacreBLEU is the reference implementation papers cite; its signature records the tokenizer,
smoothing and casing so that a number can be reproduced. ROUGE follows Google's ``rouge-score``
(see :func:`rouge_scores`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sacrebleu.metrics import BLEU, CHRF

from seq2seq.errors import ConfigError


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float | str]:
    """Corpus BLEU and chrF of hypotheses against one reference each.

    Returns ``{"bleu": float, "chrf": float, "bleu_signature": str, "chrf_signature": str}``.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu, chrf = BLEU(), CHRF()
    refs = [list(references)]
    bleu_score = bleu.corpus_score(list(hypotheses), refs)
    chrf_score = chrf.corpus_score(list(hypotheses), refs)
    return {
        "bleu": float(bleu_score.score),
        "chrf": float(chrf_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }


# ---------------------------------------------------------------------------------- summarization
#
# ROUGE (Lin, 2004) as Google's ``rouge-score`` package computes it (the implementation papers
# since PEGASUS/BART report), via torchmetrics' ``ROUGEScore``: lowercased ``[a-z0-9]+`` tokens,
# Porter stemming of tokens longer than 3 characters, the F-measure of each summary against its
# one reference, averaged over summaries, scaled to 0-100. tests/test_summarization.py checks it
# against ``rouge-score`` to within 0.1 point for every variant.
#
# rougeLsum (summary-level LCS) needs summaries split into sentences, one per line. Both summaries
# are split with :func:`split_sentences`, a small regex splitter (no model or download, the same
# on every machine), and rejoined with newlines. torchmetrics would split with nltk's punkt model
# instead, which needs a download (absent offline) and ignores the newlines; :func:`rouge_scores`
# makes it split on the newlines, which is what ``rouge-score`` does with ``split_summaries=False``.

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Words whose final period does not end a sentence (compared lowercased, without the period).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e a.m p.m u.s u.k inc ltd co corp gen gov sen rep jan feb "
    "mar apr jun jul aug sep sept oct nov dec".split()
)
_SENTENCE_END = re.compile(r"([.!?\u2026]+[\"'\u201d\u2019)\]]*)\s+")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences: at line breaks, and after ``.``, ``!``, ``?`` or ``…`` (with
    any closing quotes or brackets) followed by whitespace.

    A single period after a known abbreviation (``Mr.``, ``e.g.``, ``Jan.``) or a one-letter
    initial (``J.``) does not end a sentence. Deliberately simple and deterministic: it serves
    rougeLsum and the Lead-3 baseline, and numbers stay comparable across machines.
    """
    sentences: list[str] = []
    for line in text.split("\n"):
        start = 0
        for match in _SENTENCE_END.finditer(line):
            end = match.end(1)
            if match.group(1) == ".":
                words = line[start:end].split()
                last = words[-1][:-1].lower() if words else ""
                if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                    continue
            sentence = line[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = match.end()
        rest = line[start:].strip()
        if rest:
            sentences.append(rest)
    return sentences


def _split_on_newlines(text: str) -> list[str]:
    return text.split("\n")


def rouge_signature(use_stemmer: bool = True) -> str:
    """What :func:`rouge_scores` computes, for metrics.json (like sacreBLEU's signatures)."""
    import torchmetrics

    stem = "porter" if use_stemmer else "none"
    return (
        f"torchmetrics.ROUGEScore|v:{torchmetrics.__version__}|f-measure|mean-over-summaries|"
        f"tok:[a-z0-9]+|stem:{stem}|lsum-sents:seq2seq.split_sentences"
    )


def rouge_scores(
    hypotheses: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> dict[str, float | str]:
    """Mean ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures (0-100) against one reference each.

    Returns ``{"rouge1", "rouge2", "rougeL", "rougeLsum": float, "rouge_signature": str}``.
    Stemming needs ``nltk`` (installed with ``rouge-score``, or ``pip install nltk``).
    """
    from unittest import mock

    import torchmetrics.functional.text.rouge as tm_rouge
    from torchmetrics.text.rouge import ROUGEScore

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    result: dict[str, float | str] = {key: 0.0 for key in ROUGE_KEYS}
    result["rouge_signature"] = rouge_signature(use_stemmer)
    if not hypotheses:
        return result
    try:
        metric = ROUGEScore(use_stemmer=use_stemmer, rouge_keys=ROUGE_KEYS)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"ROUGE with stemming needs nltk: pip install nltk (or rouge-score). ({err})"
        ) from err
    hyps = ["\n".join(split_sentences(h)) for h in hypotheses]
    refs = ["\n".join(split_sentences(r)) for r in references]
    # ROUGEScore's rougeLsum would re-split with nltk punkt (a download); split on our newlines.
    with mock.patch.object(tm_rouge, "_split_sentence", _split_on_newlines):
        metric.update(hyps, refs)
        scores = metric.compute()
    for key in ROUGE_KEYS:
        result[key] = float(scores[f"{key}_fmeasure"]) * 100.0
    return result


# ---------------------------------------------------------------------------------- per task
# The corpus metrics of each task (logged as {split}/<name>) and the one that picks the best
# checkpoint unless the config's `monitor` says otherwise.
TASK_METRICS = {"translation": ("bleu", "chrf"), "summarization": ROUGE_KEYS}
DEFAULT_MONITOR = {"translation": "val/bleu", "summarization": "val/rougeLsum"}


def check_task(task: str | None) -> str:
    """``task``, if the project knows it; else a :class:`~seq2seq.errors.ConfigError`."""
    if task not in TASK_METRICS:
        raise ConfigError(f"task={task!r}: use one of {', '.join(TASK_METRICS)}")
    return task


def score(task: str, hypotheses: Sequence[str], references: Sequence[str]) -> tuple[dict[str, float], dict]:
    """The task's corpus metrics and their signatures: ``({"bleu": .., "chrf": ..}, {"sacrebleu_signature":
    {"bleu": .., "chrf": ..}})`` for translation, ``({"rouge1": .., ...}, {"rouge_signature": ..})`` for
    summarization. What validation, ``eval`` and the baselines report, and what metrics.json stores."""
    if check_task(task) == "summarization":
        scores = rouge_scores(hypotheses, references)
        return {k: scores[k] for k in ROUGE_KEYS}, {"rouge_signature": scores["rouge_signature"]}
    scores = translation_scores(hypotheses, references)
    signature = {"bleu": scores["bleu_signature"], "chrf": scores["chrf_signature"]}
    return {"bleu": scores["bleu"], "chrf": scores["chrf"]}, {"sacrebleu_signature": signature}
