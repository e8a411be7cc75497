"""Paired significance tests of a system against a baseline on the same sentences: sacreBLEU's own.

Every metric goes through :class:`sacrebleu.significance.PairedTest` (``test_type="bs"``, paired
bootstrap resampling from a fixed seed: the same numbers as ``sacrebleu --paired-bs``); ROUGE as a
sacreBLEU metric over ``rouge-score``'s sentence F-measures (:class:`RougeMetric`). sacreBLEU gives no
interval of the *difference*: :func:`paired_test` adds one from the very resamples its p-value came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from unittest import mock

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.metrics.base import Metric, Score
from sacrebleu.significance import PairedTest, estimate_ci

from seq2seq.errors import ConfigError
from seq2seq.metrics.text_metrics import ROUGE_KEYS, bleu_tokenizer, moses_lowercase, split_sentences

RESAMPLES = 1000
SEED = 12345  # sacreBLEU's default SACREBLEU_SEED
TESTABLE = ("bleu", "chrf", "bleu_tok_lc", *ROUGE_KEYS)


@dataclass
class PairedResult:
    """One system against the baseline on one metric (scores on the 0-100 scale)."""

    metric: str
    baseline: float  # the baseline's score on the whole set
    system: float  # the system's
    p_value: float  # sacreBLEU's paired bootstrap p-value
    system_mean: float  # bootstrap mean of the system's score and half its 95 % interval (sacreBLEU's)
    system_ci: float
    delta_mean: float  # bootstrap mean of system - baseline and half its 95 % interval
    delta_ci: float

    @property
    def delta(self) -> float:
        """The observed difference, system - baseline."""
        return self.system - self.baseline

    @property
    def delta_interval(self) -> tuple[float, float]:
        """The 95 % interval of the difference: ``delta_mean ± delta_ci``."""
        return self.delta_mean - self.delta_ci, self.delta_mean + self.delta_ci


class RougeMetric(Metric):
    """One ROUGE variant as a sacreBLEU :class:`Metric`: each sentence's ``rouge-score`` F-measure
    (its best over the references) and a count are its statistics; the score is their mean x 100."""

    def __init__(self, key: str):
        super().__init__()
        try:
            from rouge_score import rouge_scorer
        except ImportError as err:
            raise ConfigError(f"the ROUGE significance test needs rouge-score: pip install rouge-score ({err})") from None
        self.key = key
        self._scorer = rouge_scorer.RougeScorer([key], use_stemmer=True)

    def _preprocess_segment(self, sent: str) -> str:
        # rouge-score's rougeLsum reads sentences one per line (as the corpus score splits them).
        return "\n".join(split_sentences(sent)) if self.key == "rougeLsum" else sent

    def _extract_reference_info(self, refs: Sequence[str]) -> dict:
        return {"refs": list(refs)}

    def _compute_segment_statistics(self, hypothesis: str, ref_kwargs: dict) -> list[float]:
        best = max(self._scorer.score(ref, hypothesis)[self.key].fmeasure for ref in ref_kwargs["refs"])
        return [best, 1.0]

    def _compute_score_from_stats(self, stats: Sequence[float]) -> Score:
        return Score(self.key, 100.0 * float(stats[0]) / max(float(stats[1]), 1.0))

    def _aggregate_and_compute(self, stats: Sequence[Sequence[float]]) -> Score:
        return self._compute_score_from_stats(np.asarray(stats, dtype=np.float64).sum(axis=0))


def _metric_and_texts(metric: str, systems: Sequence[Sequence[str]], references: Sequence[Sequence[str]],
                      tgt_lang: str | None, bleu_tokenize: str | None):
    """The sacreBLEU metric object that scores ``metric``, and the texts as it reads them."""
    if metric == "bleu":
        return BLEU(tokenize=bleu_tokenizer(tgt_lang, bleu_tokenize)), systems, references
    if metric == "chrf":
        return CHRF(), systems, references
    if metric == "bleu_tok_lc":
        return (BLEU(tokenize="none", lowercase=True, force=True), [moses_lowercase(s, tgt_lang) for s in systems],
                [moses_lowercase(r, tgt_lang) for r in references])
    if metric in ROUGE_KEYS:
        return RougeMetric(metric), systems, references
    raise ConfigError(f"no paired test for {metric!r}: it is one of {', '.join(TESTABLE)}")


def paired_test(metric: str, baseline: Sequence[str], system: Sequence[str], references: Sequence[Sequence[str]], *,
                tgt_lang: str | None = None, bleu_tokenize: str | None = None, resamples: int = RESAMPLES,
                seed: int = SEED) -> PairedResult:
    """Paired bootstrap resampling of ``system`` against ``baseline`` on ``metric`` (see the module
    docstring); ``references``: sacreBLEU's streams, the same sentences in the same order."""
    if len(baseline) != len(system):
        raise ConfigError(f"a paired test needs the same sentences: {len(baseline)} hypotheses against {len(system)}")
    scorer, (base_texts, sys_texts), refs = _metric_and_texts(metric, [baseline, system], references, tgt_lang,
                                                              bleu_tokenize)
    with mock.patch.dict(os.environ, {"SACREBLEU_SEED": str(seed)}):  # PairedTest reads its seed there
        test = PairedTest([("baseline", base_texts), ("system", sys_texts)], {metric: scorer}, refs,
                          test_type="bs", n_samples=resamples)
        _, results = test()
    (name,) = [k for k in results if k != "System"]
    base_result, sys_result = results[name]
    # The difference on the resamples PairedTest drew (its own seed and index draw).
    stats = [np.asarray(scorer._extract_corpus_statistics(texts, refs), dtype="float32") for texts in (base_texts, sys_texts)]
    idxs = np.random.default_rng(seed).choice(len(base_texts), size=(resamples, len(base_texts)), replace=True)
    base_scores, sys_scores = ([scorer._compute_score_from_stats(s.sum(0)).score for s in part[idxs]] for part in stats)
    delta_mean, delta_ci = estimate_ci(np.asarray(sys_scores) - np.asarray(base_scores))
    return PairedResult(metric=metric, baseline=float(base_result.score), system=float(sys_result.score),
                        p_value=float(sys_result.p_value), system_mean=float(sys_result.mean),
                        system_ci=float(sys_result.ci), delta_mean=float(delta_mean), delta_ci=float(delta_ci))
