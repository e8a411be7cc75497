"""What several language pairs add to a one-pair run: sampling across pairs with a temperature
(:class:`TemperatureBatchSampler`) and validation that takes the pairs in turn
(:class:`RoundRobinBatchSampler`); :meth:`~seq2seq.data.datamodule.Seq2SeqDataModule.from_config`
reads the pairs of a data config.

The rest of a multilingual run is a one-pair run's: :class:`~seq2seq.data.datamodule.Seq2SeqDataModule`
holds one :class:`~seq2seq.data.corpus.Corpus` per pair, trains one joint sentencepiece model with
the target-language tags (``<2de>``) and puts a pair's tag first on its sources
(:meth:`~seq2seq.data.tokenizer.Tokenizer.for_target`); docs/ARCHITECTURE.md ("Several language
pairs") says why the tag sits on the source, docs/recipes.md how to run it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import zip_longest
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from seq2seq.data.sampler import ResumableBatchSampler, TokenBudgetBatchSampler
from seq2seq.errors import ConfigError, DataError

__all__ = ["RoundRobinBatchSampler", "TemperatureBatchSampler", "pair_probabilities"]


def pair_probabilities(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """``p_i ∝ n_i^(1/T)`` over the pairs' sizes ``n_i`` (``T=inf``: uniform); empty pairs get 0."""
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        temperature = float("nan")
    if not temperature > 0:  # also NaN
        raise ConfigError(
            f"data.temperature={temperature}: the sampling temperature must be > 0 (1: proportional to the "
            "pairs' sizes, 5: the usual multilingual choice, large: uniform)"
        )
    sizes = np.asarray(sizes, dtype=np.float64)
    weights = np.where(sizes > 0, sizes ** (1.0 / temperature) if np.isfinite(temperature) else 1.0, 0.0)
    total = weights.sum()
    if total <= 0:
        raise DataError("every language pair has an empty training split")
    return weights / total


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (largest-remainder rounding); a
    positive weight gets at least 1 when ``total`` allows."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    for i in np.flatnonzero((weights > 0) & (counts == 0)):  # a tiny pair still gets a batch
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


class TemperatureBatchSampler(ResumableBatchSampler):
    """Batches of one pair each, pairs drawn with the temperature's probabilities; resumable.

    ``samplers``: each pair's batch sampler (indices into that pair's dataset; with DDP already
    built for this rank); ``sizes``: each pair's training pairs ``n_i`` (the pairs' datasets follow
    one another in the concatenated dataset).

    An epoch holds as many batches as the pairs' samplers together (``B = Σ b_i``, the plain
    concatenation's count). The share of pair *i* is chosen so that *sentences*, not batches,
    follow ``p_i``: batches are drawn with weights ``p_i · b_i / n_i`` (``n_i / b_i`` sentences per
    batch), i.e. ``c_i`` batches of pair *i* per epoch (rounded, summing to ``B``), in an order
    shuffled from ``(seed, epoch)``. Stratified rather than independent draws: each epoch has the
    exact proportions, and the position in every pair's stream is known in closed form, which makes
    resuming exact. Within an epoch each pair's batches are spread evenly (see :meth:`plan`). Pair
    *i*'s batches come from its sampler's epochs one after another (an upsampled pair goes through
    its data more than once per epoch, each time in a new order): its ``k``-th batch of epoch ``E``
    is batch ``E · c_i + k`` of that stream.

    ``shuffle=False`` (``debug=overfit``): the pairs interleave evenly, and every epoch starts each
    pair's stream from its beginning, so the first N batches are the same in every epoch.
    """

    what = "multilingual batch sampler"
    same = "the same pairs, data.temperature, data.max_tokens and number of devices"

    def __init__(
        self,
        samplers: Sequence[TokenBudgetBatchSampler],
        sizes: Sequence[int],
        temperature: float,
        *,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        super().__init__()
        if len(samplers) != len(sizes) or not samplers:
            raise ValueError(f"{len(samplers)} samplers for {len(sizes)} pair sizes")
        self.samplers = list(samplers)
        self.sizes = [int(n) for n in sizes]
        self.temperature = float(temperature)
        self.probabilities = pair_probabilities(self.sizes, self.temperature)
        self.offsets = [0, *np.cumsum(self.sizes)[:-1].tolist()]
        self.seed = int(seed)
        self._shuffle = bool(shuffle)
        self.num_replicas = self.samplers[0].num_replicas
        self.batches_per_pair = np.array([len(s) for s in self.samplers], dtype=np.int64)
        self.num_batches = int(self.batches_per_pair.sum())
        sentences = np.maximum(np.asarray(self.sizes, dtype=np.float64), 1.0)
        weights = np.where(self.batches_per_pair > 0, self.probabilities * self.batches_per_pair / sentences, 0.0)
        if weights.sum() <= 0:
            raise DataError("no language pair has a training batch")
        self.counts = _largest_remainder(self.num_batches, weights)
        self._cache: dict[int, tuple[int, list[list[int]]]] = {}
        if not self._shuffle:
            self.shuffle = False  # the pairs' samplers too

    @property
    def shuffle(self) -> bool:
        return self._shuffle

    @shuffle.setter
    def shuffle(self, value: bool) -> None:
        """Off (``debug=overfit``'s FixedTrainBatches): also every pair's own order, so the first
        batches are the same in every epoch."""
        self._shuffle = bool(value)
        for sampler in self.samplers:
            sampler.shuffle = self._shuffle
        self._cache = {}

    # -- order ------------------------------------------------------------------------------------
    def plan(self, epoch: int) -> np.ndarray:
        """The pair of every batch of ``epoch``, in order.

        Spread evenly, with jitter: the j-th of pair i's ``c_i`` batches sits at ``(j + u) / c_i`` of
        the epoch, ``u`` uniform in [0, 1) from ``(seed, epoch)`` (0.5 without shuffling). Every
        stretch of the epoch then holds each pair in about its share: no long runs of one pair, whose
        consecutive single-language updates would pull the model towards that language."""
        rng = np.random.default_rng([self.seed, int(epoch), 0x6D6C]) if self.shuffle else None  # a stream of its own
        keys, pairs = [], []
        for i, c in enumerate(self.counts.tolist()):
            if c > 0:
                jitter = rng.random(c) if rng is not None else np.full(c, 0.5)
                keys.append((np.arange(c) + jitter) / c)
                pairs.append(np.full(c, i))
        if not keys:
            return np.zeros(0, dtype=np.int64)
        keys, pairs = np.concatenate(keys), np.concatenate(pairs)
        if rng is not None:  # ties (equal counts, equal jitter) in random order, not by pair
            order = rng.permutation(len(keys))
            keys, pairs = keys[order], pairs[order]
        return pairs[np.argsort(keys, kind="stable")]

    def _pair_batch(self, pair: int, number: int) -> list[int]:
        """Batch ``number`` (from 0) of ``pair``'s endless stream: its sampler's epochs in turn."""
        sampler = self.samplers[pair]
        epoch, j = divmod(number, len(sampler))
        cached = self._cache.get(pair)
        if cached is None or cached[0] != epoch:
            sampler.set_epoch(epoch)
            cached = (epoch, list(iter(sampler)))
            self._cache[pair] = cached
        return cached[1][j]

    def _batches(self, start: int) -> Iterator[list[int]]:
        plan = self.plan(self.epoch)
        done = np.bincount(plan[:start], minlength=len(self.counts))
        cursors = (self.epoch * self.counts if self.shuffle else np.zeros_like(self.counts)) + done
        for pair in plan[start:].tolist():
            batch = self._pair_batch(pair, int(cursors[pair]))
            cursors[pair] += 1
            offset = self.offsets[pair]
            yield [offset + i for i in batch]

    def _fingerprint(self) -> dict[str, Any]:
        return {"kind": "temperature", "sizes": list(self.sizes), "temperature": self.temperature,
                "num_replicas": self.num_replicas, "num_batches": self.num_batches}


class RoundRobinBatchSampler(Sampler[list[int]]):
    """Evaluation batches of several pairs, taken in turn (one of each pair, then the next of each),
    indices shifted by each pair's offset; deterministic."""

    def __init__(self, samplers: Sequence[Sampler], offsets: Sequence[int]):
        self.samplers, self.offsets = list(samplers), list(offsets)

    def __iter__(self) -> Iterator[list[int]]:
        for batches in zip_longest(*self.samplers):
            for batch, offset in zip(batches, self.offsets):
                if batch is not None:
                    yield [offset + i for i in batch]

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)

