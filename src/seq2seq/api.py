"""The Python API: :class:`Translator` loads a checkpoint once, then translates, scores and shows the
attention, through the :class:`~seq2seq.inference.predictor.Predictor` that ``translate``, ``eval``
and validation use (the README and docs/decoding.md show it in use).

Decoding settings (:class:`~seq2seq.decoding.search.DecodingConfig` fields) given to
:meth:`Translator.from_checkpoint` are defaults; given to a call, they apply to that call only.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.ensemble import Ensemble
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import load_models, resolve_device
from seq2seq.inference.predictor import PairScore, Predictor
from seq2seq.inference.quantize import pack_linear_layers
from seq2seq.inference.quantize import quantize as quantize_linear_layers
from seq2seq.models.transformer import Seq2SeqTransformer

if TYPE_CHECKING:
    from seq2seq.analysis.attention import AttentionMaps

__all__ = ["CrossAttention", "PairScore", "Translation", "Translator"]

DECODING_OPTIONS = tuple(f.name for f in fields(DecodingConfig))
# One input line's result: its translation (n_best=1), or its n_best (text, score) pairs, best first.
Translation = str | list[tuple[str, float]]
Warn = Callable[[str], None]


def _warn(message: str) -> None:
    warnings.warn(message, UserWarning, stacklevel=4)


def with_options(decoding: DecodingConfig, options: dict[str, Any]) -> DecodingConfig:
    """A validated copy of ``decoding`` with ``options`` (DecodingConfig fields) changed."""
    unknown = sorted(set(options) - set(DECODING_OPTIONS))
    if unknown:
        raise TypeError(f"unknown decoding option(s) {', '.join(unknown)}; the options are {', '.join(DECODING_OPTIONS)}")
    return replace(decoding, **options).validate()


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of ``size`` items (the last may be shorter), read lazily from ``items``."""
    if size < 1:
        raise ValueError(f"chunk size {size} must be at least 1")
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


@dataclass
class CrossAttention:
    """Decoder cross-attention of one sentence pair, subwords merged into words, heads averaged.

    ``layers[i]`` and ``mean`` (over layers) are (target words, source words) maps whose rows sum to 1
    (the last target word is ``</s>``). ``maps`` holds everything else: pieces, every head, the
    self-attention maps (``seq2seq.analysis.attention.strongest_sources(maps, "mean")`` lists each
    target word's strongest source word).
    """

    source: str
    translation: str
    source_words: list[str]
    target_words: list[str]
    layers: list[Tensor]
    mean: Tensor
    maps: AttentionMaps


class Translator:
    """A trained model ready to translate, score and inspect.

    ``decoding``: the default settings (default: greedy search). ``device``: where the network runs
    (default: where it is). ``batch_size``, ``max_tokens`` (padded source tokens per batch),
    ``max_src_len`` (source tokens kept, EOS included; default the model's ``max_positions``) and
    ``tgt_lang`` (a multilingual model's target language) are defaults every call may override.
    """

    def __init__(
        self,
        net: Seq2SeqTransformer | Ensemble,
        tokenizer: Tokenizer,
        decoding: DecodingConfig | None = None,
        *,
        device: torch.device | str | None = None,
        batch_size: int = 64,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        tgt_lang: str | None = None,
        quantize: str | None = None,
    ):
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.num_parameters = net.num_parameters()  # before any quantization, which packs the weights
        self.quantize = quantize
        # Each call runs the network in eval mode and restores its mode after (a quantized one stays in eval).
        self.net, self.tokenizer = quantize_linear_layers(net.to(self.device), quantize, self.device), tokenizer
        self._decoding = with_options(decoding or DecodingConfig(), {})
        self._batching = {"batch_size": batch_size, "max_tokens": max_tokens, "max_src_len": max_src_len}
        if tgt_lang is not None:
            tokenizer.for_target(tgt_lang)  # a language the model does not know stops here
        self.tgt_lang = tgt_lang

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | Sequence[str | Path],
        device: torch.device | str | None = "auto",
        *,
        batch_size: int = 64,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        decoding: DecodingConfig | None = None,
        tgt_lang: str | None = None,
        quantize: str | None = None,
        **options: Any,
    ) -> Translator:
        """Read a training checkpoint (``best.ckpt``, ``last.ckpt``, an average) onto ``device``
        (``auto``: CUDA when available); ``options`` are default decoding settings. A list of
        checkpoints that share one tokenizer decodes as their ensemble. ``quantize="int8"``: int8
        linear layers on the CPU; otherwise, on the CPU, float32 linear layers packed for oneDNN."""
        device = resolve_device(device) if isinstance(device, str) or device is None else torch.device(device)
        defaults = with_options(decoding or DecodingConfig(), options)
        net, tokenizer = load_models(path, device)
        if quantize is None:  # this network is the Translator's own, so its layers may be repacked
            net = pack_linear_layers(net, device)
        return cls(net, tokenizer, defaults, device=device, batch_size=batch_size, max_tokens=max_tokens,
                   max_src_len=max_src_len, tgt_lang=tgt_lang, quantize=quantize)

    @property
    def decoding(self) -> DecodingConfig:
        """A copy of the default decoding settings (changing it changes nothing here)."""
        return replace(self._decoding)

    @property
    def target_languages(self) -> list[str]:
        """The languages a multilingual checkpoint translates into; empty for one language pair."""
        return self.tokenizer.target_languages

    def source_tokenizer(self, tgt_lang: str | None = None) -> Tokenizer:
        """The tokenizer that encodes sources for ``tgt_lang`` (default: the Translator's); a
        :class:`~seq2seq.errors.ConfigError` when it is missing (multilingual), unknown, or given to a one-pair model."""
        return self.tokenizer.for_target(self.tgt_lang if tgt_lang is None else tgt_lang)

    def predictor(self, tgt_lang: str | None = None, **options: Any) -> Predictor:
        """The :class:`Predictor` of the defaults with ``options`` changed, into ``tgt_lang``."""
        tokenizer = self.source_tokenizer(tgt_lang)
        return Predictor(self.net, tokenizer, with_options(self._decoding, options), self.device)

    def _batches(self, batch_size: int | None, max_tokens: int | None, max_src_len: int | None) -> dict[str, Any]:
        given = {"batch_size": batch_size, "max_tokens": max_tokens, "max_src_len": max_src_len}
        return {k: self._batching[k] if v is None else v for k, v in given.items()}

    def _stream(self, predictor: Predictor, line_chunks: Iterable[Sequence], batching: dict, warn: Warn | None,
                progress: Callable[[int], None] | None, score: bool = False) -> Iterator[list]:
        """Each chunk's translations (or, with ``score``, the scores of its (source, target) pairs);
        warnings and ``progress`` count lines over the whole stream."""
        done = 0
        for chunk in line_chunks:
            options = {**batching, "warn": warn, "first_line": done + 1,
                       "progress": None if progress is None else lambda d, _, start=done: progress(start + d)}
            if score:
                results = predictor.score([s for s, _ in chunk], [t for _, t in chunk], **options)
            else:
                nbest = predictor.translate(chunk, **options)
                results = [pairs[0][0] for pairs in nbest] if predictor.decoding.n_best == 1 else nbest
            done += len(chunk)
            yield results

    def translate(
        self,
        texts: str | Sequence[str],
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        warn: Warn | None = _warn,
        tgt_lang: str | None = None,
        **options: Any,
    ) -> Translation | list[Translation]:
        """Translate ``texts`` (one string, or a list), in input order.

        Returns a string per text with ``n_best=1``, else a list of ``n_best`` ``(text, score)``
        pairs, best first (score: the length-penalized log-probability); one string gives one
        result. Blank texts give ``""`` (score 0.0) without a model call. Sources longer than
        ``max_src_len`` are truncated and reported through ``warn`` (default: :func:`warnings.warn`;
        ``None``: silent). ``options``: decoding settings for this call.
        """
        single = isinstance(texts, str)
        predictor = self.predictor(tgt_lang, **options)
        [results] = self._stream(predictor, [[texts] if single else list(texts)],
                                 self._batches(batch_size, max_tokens, max_src_len), warn, None)
        return results[0] if single else results

    def translate_chunks(
        self,
        lines: Iterable[str],
        *,
        chunk_lines: int = 10_000,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        warn: Warn | None = _warn,
        progress: Callable[[int], None] | None = None,
        tgt_lang: str | None = None,
        **options: Any,
    ) -> Iterator[list[Translation]]:
        """Translate a stream of lines ``chunk_lines`` at a time, read lazily: yields each chunk's
        results (as :meth:`translate` gives them) in input order; within a chunk, lines are sorted
        by length into batches. Warnings name lines counted from 1 over the whole stream;
        ``progress(lines_done)`` is called after each batch. ``chunk_lines=1`` answers each line as
        soon as it is read (interactive use)."""
        predictor = self.predictor(tgt_lang, **options)
        return self._stream(predictor, chunks(lines, chunk_lines), self._batches(batch_size, max_tokens, max_src_len),
                            warn, progress)

    def score(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        *,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        alpha: float | None = None,
        warn: Warn | None = _warn,
        tgt_lang: str | None = None,
    ) -> list[PairScore]:
        """Score each target given its source by forced decoding: one :class:`PairScore`
        ``(log_prob, n_tokens, score)`` per pair, in input order.

        ``log_prob`` sums the log-probabilities of the target's tokens and EOS, ``n_tokens`` counts
        them, ``score`` is ``log_prob`` over the length penalty with ``alpha`` (default: the
        decoding default's): a greedy or beam output scores exactly what the search said. A blank
        target scores the empty output (EOS alone); a pair with a blank source is not scored
        (``0.0, 0, 0.0``). See :meth:`Predictor.score`.
        """
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets: give one target per source")
        predictor = self.predictor(tgt_lang, **({} if alpha is None else {"alpha": alpha}))
        [results] = self._stream(predictor, [list(zip(sources, targets))],
                                 self._batches(batch_size, max_tokens, max_src_len), warn, None, score=True)
        return results

    def score_chunks(
        self,
        pairs: Iterable[tuple[str, str]],
        *,
        chunk_lines: int = 10_000,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        alpha: float | None = None,
        warn: Warn | None = _warn,
        progress: Callable[[int], None] | None = None,
        tgt_lang: str | None = None,
    ) -> Iterator[list[PairScore]]:
        """:meth:`score` over a stream of ``(source, target)`` pairs, as :meth:`translate_chunks`
        translates a stream of lines."""
        predictor = self.predictor(tgt_lang, **({} if alpha is None else {"alpha": alpha}))
        return self._stream(predictor, chunks(pairs, chunk_lines), self._batches(batch_size, max_tokens, max_src_len),
                            warn, progress, score=True)

    def attention(self, source: str, target: str | None = None, tgt_lang: str | None = None,
                  **options: Any) -> CrossAttention:
        """The cross-attention of ``source`` and its translation (decoded with the defaults and
        ``options``, one hypothesis), or of a given ``target`` (forced, e.g. a reference).
        matplotlib is imported only now."""
        from seq2seq.analysis.attention import attention_maps

        if isinstance(self.net, Ensemble):
            raise ConfigError("attention maps need one model; this Translator holds an ensemble of "
                              f"{len(self.net.models)} (load one checkpoint to look at its attention)")
        decoding = with_options(self._decoding, {"n_best": 1, **options})
        maps = attention_maps(self.net, self.source_tokenizer(tgt_lang), source, target=target, decoding=decoding)
        layers = [maps.cross_map(layer)[2] for layer in range(maps.num_layers)]
        target_words, source_words, mean = maps.cross_map("mean")
        return CrossAttention(source, maps.translation, source_words, target_words, layers, mean, maps)
