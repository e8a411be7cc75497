"""The Python API: :class:`Translator` loads a checkpoint once, then translates, scores and shows
the attention; the README's example and docs/decoding.md show it in use.

Everything goes through :class:`~seq2seq.inference.predictor.Predictor`, the path ``translate``,
``eval`` and validation use. Decoding settings (:class:`~seq2seq.decoding.search.DecodingConfig`
fields) given to :meth:`Translator.from_checkpoint` are defaults; given to a call, they apply to that
call only. :meth:`Translator.translate_chunks` and :meth:`Translator.score_chunks` stream any
iterable of lines chunk by chunk. A multilingual checkpoint translates into ``tgt_lang``. The
attention maps come from :mod:`seq2seq.analysis.attention`, imported (with matplotlib) only when
:meth:`Translator.attention` is first called.
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

    ``layers[i]`` and ``mean`` (over layers) are (target words, source words) maps whose rows sum to 1;
    a target word's row is where it looks in the source (the last target word is ``</s>``).
    ``maps`` holds everything else: pieces, every head, the self-attention maps
    (``seq2seq.analysis.attention.strongest_sources(maps, "mean")`` lists each target word's
    strongest source word).
    """

    source: str
    translation: str
    source_words: list[str]
    target_words: list[str]
    layers: list[Tensor]
    mean: Tensor
    maps: AttentionMaps


class Translator:
    """A trained model ready to translate, score and inspect; see the module docstring.

    ``decoding``: the default settings (default: greedy search with the usual length limits).
    ``device``: where the network runs (it is moved there; default: where it is). ``batch_size``, ``max_tokens``
    (padded source tokens per batch) and ``max_src_len`` (source tokens kept, EOS included;
    default the model's ``max_positions``) are defaults every call may override, as is ``tgt_lang``
    (a multilingual model's target language; checked here when given).
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
        (``auto``: CUDA when available); ``options`` are default decoding settings, ``tgt_lang`` the
        default target language of a multilingual checkpoint. A list of checkpoints that share one
        tokenizer decodes as their ensemble (:mod:`seq2seq.decoding.ensemble`). ``quantize="int8"``:
        int8 linear layers on the CPU; otherwise, on the CPU, float32 linear layers packed for oneDNN
        (:mod:`seq2seq.inference.quantize`)."""
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
    def max_src_len(self) -> int | None:
        """Source tokens kept per text by default (None: the model's ``max_positions``)."""
        return self._batching["max_src_len"]

    @property
    def target_languages(self) -> list[str]:
        """The languages a multilingual checkpoint translates into (pass one as ``tgt_lang``); empty
        for a checkpoint of one language pair."""
        return self.tokenizer.target_languages

    def source_tokenizer(self, tgt_lang: str | None = None) -> Tokenizer:
        """The tokenizer that encodes sources for ``tgt_lang`` (default: the Translator's): a multilingual
        model's puts the language's tag first. A :class:`~seq2seq.errors.ConfigError` says what to pass
        when ``tgt_lang`` is missing (multilingual), unknown, or given to a one-pair model."""
        return self.tokenizer.for_target(self.tgt_lang if tgt_lang is None else tgt_lang)

    def predictor(self, tgt_lang: str | None = None, **options: Any) -> Predictor:
        """The :class:`Predictor` of the defaults with ``options`` changed (for this predictor only),
        into ``tgt_lang`` (see :meth:`source_tokenizer`)."""
        tokenizer = self.source_tokenizer(tgt_lang)
        return Predictor(self.net, tokenizer, with_options(self._decoding, options), self.device)

    def _batches(self, batch_size: int | None, max_tokens: int | None, max_src_len: int | None) -> dict[str, Any]:
        given = {"batch_size": batch_size, "max_tokens": max_tokens, "max_src_len": max_src_len}
        return {k: self._batching[k] if v is None else v for k, v in given.items()}

    # ----------------------------------------------------------------------------------- translate
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
        pairs, best first (score: the length-penalized log-probability, higher is better); one
        string gives one result. Blank texts give ``""`` (score 0.0) without a model call. Sources
        longer than ``max_src_len`` are truncated and reported through ``warn`` (default:
        :func:`warnings.warn`; ``None``: silent). ``options``: decoding settings for this call.
        ``tgt_lang``: the target language of a multilingual model (default: the Translator's).
        """
        single = isinstance(texts, str)
        predictor = self.predictor(tgt_lang, **options)
        [results] = self._translate_chunks(predictor, [[texts] if single else list(texts)],
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
        """Translate a stream of lines ``chunk_lines`` at a time: yields each chunk's results (as
        :meth:`translate` gives them) in input order, read lazily from ``lines``. Within a chunk,
        lines are sorted by length into batches. Warnings name lines counted from 1 over the whole
        stream; ``progress(lines_done)`` is called after each batch. ``chunk_lines=1`` answers each
        line as soon as it is read (interactive use). ``tgt_lang``: as in :meth:`translate`."""
        predictor = self.predictor(tgt_lang, **options)
        return self._translate_chunks(predictor, chunks(lines, chunk_lines),
                                      self._batches(batch_size, max_tokens, max_src_len), warn, progress)

    def _translate_chunks(self, predictor: Predictor, line_chunks: Iterable[Sequence[str]], batching: dict,
                          warn: Warn | None, progress: Callable[[int], None] | None) -> Iterator[list[Translation]]:
        done = 0
        for chunk in line_chunks:
            nbest = predictor.translate(chunk, **batching, warn=warn, first_line=done + 1,
                                        progress=None if progress is None else lambda d, _, start=done: progress(start + d))
            done += len(chunk)
            yield [pairs[0][0] for pairs in nbest] if predictor.decoding.n_best == 1 else nbest

    # ------------------------------------------------------------------------------------- score
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
        decoding default's), the score the searches report: a greedy or beam output scores exactly
        what the search said. A blank target scores the empty output (EOS alone); a pair with a
        blank source is not scored (``0.0, 0, 0.0``), as a blank line translates to ``""``
        with score 0.0. See :meth:`Predictor.score`. ``tgt_lang``: as in :meth:`translate`.
        """
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources but {len(targets)} targets: give one target per source")
        [results] = self._score_chunks([list(zip(sources, targets))], self._batches(batch_size, max_tokens, max_src_len),
                                       alpha, warn, None, tgt_lang)
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
        """:meth:`score` over a stream of ``(source, target)`` pairs, ``chunk_lines`` pairs at a
        time, as :meth:`translate_chunks` does for translation."""
        predictor = self.predictor(tgt_lang, **({} if alpha is None else {"alpha": alpha}))  # checked now
        return self._score_chunks(chunks(pairs, chunk_lines), self._batches(batch_size, max_tokens, max_src_len),
                                  alpha, warn, progress, tgt_lang, predictor)

    def _score_chunks(self, pair_chunks: Iterable[Sequence[tuple[str, str]]], batching: dict, alpha: float | None,
                      warn: Warn | None, progress: Callable[[int], None] | None, tgt_lang: str | None = None,
                      predictor: Predictor | None = None) -> Iterator[list[PairScore]]:
        predictor = predictor or self.predictor(tgt_lang, **({} if alpha is None else {"alpha": alpha}))
        done = 0
        for chunk in pair_chunks:
            sources, targets = [s for s, _ in chunk], [t for _, t in chunk]
            scores = predictor.score(sources, targets, **batching, warn=warn, first_line=done + 1,
                                     progress=None if progress is None else lambda d, _, start=done: progress(start + d))
            done += len(chunk)
            yield scores

    # --------------------------------------------------------------------------------- attention
    def attention(self, source: str, target: str | None = None, tgt_lang: str | None = None,
                  **options: Any) -> CrossAttention:
        """The cross-attention of ``source`` and its translation (decoded with the defaults and
        ``options``, one hypothesis), or of a given ``target`` (forced, e.g. a reference): per
        decoder layer and their mean, heads averaged, subwords merged into words
        (:func:`seq2seq.analysis.attention.attention_maps`). ``tgt_lang``: as in :meth:`translate`
        (a multilingual model's tag is then the first source word)."""
        from seq2seq.analysis.attention import attention_maps  # matplotlib, only when used

        if isinstance(self.net, Ensemble):
            raise ConfigError("attention maps need one model; this Translator holds an ensemble of "
                              f"{len(self.net.models)} (load one checkpoint to look at its attention)")
        decoding = with_options(self._decoding, {"n_best": 1, **options})
        maps = attention_maps(self.net, self.source_tokenizer(tgt_lang), source, target=target, decoding=decoding)
        layers = [maps.cross_map(layer)[2] for layer in range(maps.num_layers)]
        target_words, source_words, mean = maps.cross_map("mean")
        return CrossAttention(source, maps.translation, source_words, target_words, layers, mean, maps)
