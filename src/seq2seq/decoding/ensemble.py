"""Ensembles: several networks with the same vocabularies decode as one model.

:class:`Ensemble` holds networks trained with one tokenizer (checked by
:func:`seq2seq.inference.checkpoint.load_models`) that may differ in everything else. The searches
ask it for an :class:`EnsembleStepper` (one :class:`~seq2seq.decoding.search.DecoderStepper` per
model), and teacher forcing calls it like a network. The next-token distribution is the mean of the
models' probabilities (:func:`mean_log_probs`): a mixture, not a normalized geometric mean, so every
reported score stays a true log-probability that :func:`~seq2seq.decoding.search.sequence_scores`
reproduces, a model ensembled with itself is that model, and it is what fairseq's ``--path a:b``
computes. ``config`` (:class:`EnsembleConfig`) holds the shared vocabulary sizes and special ids and
the smallest ``max_positions`` of the models.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from seq2seq.decoding.search import DecoderStepper
from seq2seq.models.loss import sequence_loss
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig

# TransformerConfig fields every member of an ensemble must share (the tokenizer decides them).
SHARED_FIELDS = ("src_vocab_size", "tgt_vocab_size", "pad_id", "bos_id", "eos_id")


@dataclass(frozen=True)
class EnsembleConfig:
    """What an ensemble's members share, and the smallest ``max_positions``."""

    src_vocab_size: int
    tgt_vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int
    max_positions: int


def config_difference(a: TransformerConfig, b: TransformerConfig) -> str | None:
    """The shared fields (:data:`SHARED_FIELDS`) in which two models differ, as ``name=x vs y``; None when none."""
    differ = [f"{k}={getattr(a, k)} vs {getattr(b, k)}" for k in SHARED_FIELDS if getattr(a, k) != getattr(b, k)]
    return ", ".join(differ) or None


def mean_log_probs(log_probs: Sequence[Tensor]) -> Tensor:
    """``log(1/N sum_i exp(log_probs[i]))``, elementwise over N same-shape tensors (see the module docstring)."""
    if len(log_probs) == 1:
        return log_probs[0]
    return torch.stack(list(log_probs)).logsumexp(dim=0) - math.log(len(log_probs))


class Ensemble(nn.Module):
    """Networks decoding together: the mean of their next-token probabilities.

    An ``nn.Module`` holding the networks, so ``eval()``, ``to(device)`` and ``parameters()``
    reach every member; ``config`` is an :class:`EnsembleConfig`. Raises ``ValueError`` when the
    members' vocabularies or special ids differ. The same network may appear more than once.
    """

    def __init__(self, models: Sequence[Seq2SeqTransformer]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("an ensemble needs at least one model")
        first = models[0].config
        for i, model in enumerate(models[1:], 2):
            differ = config_difference(first, model.config)
            if differ:
                raise ValueError(f"model 1 and model {i} have different vocabularies ({differ})")
        self.models = nn.ModuleList(models)
        self.training = all(m.training for m in models)  # a new module says "training"; mirror the members
        self.config = EnsembleConfig(
            **{k: getattr(first, k) for k in SHARED_FIELDS},
            max_positions=min(m.config.max_positions for m in models),
        )

    def stepper(self, src: Tensor, use_cache: bool = True) -> EnsembleStepper:
        """The searches' stepper over ``src`` (B, S) (see :func:`~seq2seq.decoding.search.make_stepper`)."""
        return EnsembleStepper(self, src, use_cache)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) -> log-probabilities (B, T, V), float32, of the mean
        distribution (a network's ``forward`` returns scores whose softmax is its distribution; these are)."""
        return mean_log_probs([m(src, tgt_in).float().log_softmax(dim=-1) for m in self.models])

    def num_parameters(self) -> int:
        """Distinct trainable parameters of all members (a member given twice counts once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class EnsembleStepper:
    """One :class:`DecoderStepper` per member; :meth:`step` returns the mean distribution's log-probabilities."""

    def __init__(self, ensemble: Ensemble, src: Tensor, use_cache: bool = True):
        self.steppers = [DecoderStepper(model, src, use_cache) for model in ensemble.models]

    def step(self, prefix: Tensor) -> Tensor:
        """prefix (R, t) -> log-probabilities of the next token (R, V), float32."""
        return mean_log_probs([stepper.step(prefix) for stepper in self.steppers])

    def select(self, index: Tensor, same_sources: bool = False) -> None:
        """Keep rows ``index`` (R',) in that order, in every member's cache (see
        :meth:`~seq2seq.decoding.search.DecoderStepper.select`)."""
        for stepper in self.steppers:
            stepper.select(index, same_sources)


def teacher_forced_nll(model: Seq2SeqTransformer | Ensemble, src: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
    """Teacher-forced negative log-likelihood summed over the non-pad tokens of ``tgt_out`` (B, T).

    A network: its output head's loss (:func:`~seq2seq.models.loss.sequence_loss`, as validation
    computes it); an ensemble: ``-log`` of the mean distribution.
    """
    if not isinstance(model, Ensemble):
        return sequence_loss(model, src, tgt_in, tgt_out, fused=False)[1]
    token_lp = model(src, tgt_in).gather(2, tgt_out.unsqueeze(2)).squeeze(2)
    return -token_lp[tgt_out != model.config.pad_id].sum()
