"""Token-budget batching (fairseq style) for variable-length sequence pairs.

A batch is a list of dataset indices whose padded size fits a token budget::

    cost(batch) = len(batch) * max(longest source, longest target) <= max_tokens

Lengths are the lengths of the tensors the model sees (with BOS/EOS), so ``cost`` counts padding.
A single example longer than ``max_tokens`` forms a batch of its own rather than being lost; drop
such examples beforehand with :func:`seq2seq.data.filtering.filter_pairs`.

How batches are formed, and why:

* Examples are sorted by ``max(src_len, tgt_len)`` (the quantity the cost depends on), then by
  source length and target length, so neighbours have nearly the same shape and padding stays
  small. Ties are broken by a permutation drawn from ``(seed, epoch)``, so with ``shuffle=True``
  the members of a batch change from epoch to epoch while the padding does not.
* Batches are cut greedily from that order. Because the cost only depends on the sorted sequence of
  ``max(src_len, tgt_len)``, which the tie-breaking cannot change, the batch boundaries and
  therefore ``len(sampler)`` are the same in every epoch; they are computed once.
* With ``shuffle=True`` the order of the batches is shuffled from ``(seed, epoch)``; with
  ``shuffle=False`` (validation, test) batches come shortest first and no randomness is used.
* DDP: every rank builds the same global batch list and takes every ``num_replicas``-th batch, so
  ranks see disjoint batches. All ranks must run the same number of steps (else collective ops
  hang), so the list is padded to a multiple of ``num_replicas`` by repeating batches from its
  start (a few examples are seen twice per epoch, as with ``DistributedSampler``); with
  ``drop_last=True`` the remainder is dropped instead.

Resuming mid-epoch (:class:`ResumableBatchSampler`): :meth:`state_dict` records the epoch and how
many of this rank's batches were consumed; after :meth:`load_state_dict`, the next iteration
continues with the next unseen batch of that epoch, then later epochs run in full.

Use it as ``DataLoader(dataset, batch_sampler=sampler, ...)``. Lightning only calls ``set_epoch``
on ``loader.sampler`` and ``loader.batch_sampler.sampler``, not on a batch sampler, so call
:meth:`set_epoch` yourself at the start of each epoch, and create the Trainer with
``use_distributed_sampler=False`` (Lightning cannot re-create this sampler with a
``DistributedSampler`` inside); pass ``num_replicas``/``rank`` from the trainer instead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch.utils.data

from seq2seq.errors import CheckpointError, ConfigError

__all__ = ["ResumableBatchSampler", "TokenBudgetBatchSampler"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


def _greedy_boundaries(sorted_keys: np.ndarray, max_tokens: int, max_sentences: int | None) -> list[int]:
    """Return the start offset of every batch after the first, for keys sorted ascending.

    Sorted ascending, the example being added is always the longest so far, so the cost of the batch
    with it is ``(n + 1) * key``: a batch starting at ``start`` ends before the first ``i > start``
    with ``(i - start + 1) * key[i] > max_tokens`` (or at ``max_sentences`` examples). That cost
    grows with ``i`` and exceeds the budget within ``max_tokens // key[start] + 1`` examples, so each
    batch's end is found in a short window with one vectorized comparison (one step per batch, not
    per example: millions of examples take a fraction of a second).
    """
    boundaries: list[int] = []
    n = len(sorted_keys)
    start = 0
    while start < n:
        first = int(sorted_keys[start])
        limit = n - start - 1 if first == 0 else min(n - start - 1, max_tokens // first + 1)
        if max_sentences is not None:
            limit = min(limit, max_sentences)  # a batch's (max_sentences + 1)-th example starts a new one
        # Candidates i = start + 1 .. start + limit, whose batch would hold i - start + 1 examples.
        window = sorted_keys[start + 1 : start + 1 + limit].astype(np.int64)
        over = np.arange(2, len(window) + 2, dtype=np.int64) * window > max_tokens
        if max_sentences is not None:
            over |= np.arange(2, len(window) + 2) > max_sentences
        hit = int(np.argmax(over)) if len(over) else 0
        if not len(over) or not over[hit]:
            break  # the window reaches past the budget unless it reaches the end: the last batch
        end = start + 1 + hit
        boundaries.append(end)
        start = end
    return boundaries


class ResumableBatchSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler whose position in the epoch is saved in checkpoints (see "Resuming" above).

    A subclass sets ``seed``, ``num_replicas`` and ``num_batches`` (this rank's batches per epoch),
    gives :meth:`_batches` (the epoch's batches from a position on) and :meth:`_fingerprint` (what
    must be the same to resume); ``what`` and ``same`` word the refusal to resume.
    """

    what = "batch sampler"
    same = "the same data, data.max_tokens and number of devices"
    seed: int
    num_replicas: int
    num_batches: int

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self._resume_at = 0  # batches of self.epoch to skip on the next iteration
        self._position = 0  # batches of self.epoch handed out so far

    def _batches(self, start: int) -> Iterator[list[int]]:
        raise NotImplementedError

    def _fingerprint(self) -> dict[str, Any]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration uses (call before every epoch). Setting
        the epoch a checkpoint was saved in keeps its position, so calling it after
        :meth:`load_state_dict` is safe."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self._resume_at, self._position = epoch, 0, 0

    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_at = self._resume_at, 0
        self._position = start
        for batch in self._batches(start):
            self._position += 1
            yield batch

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank and in every epoch)."""
        return self.num_batches

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """The position in the current epoch: by default the batches handed out; a training loop
        whose ``DataLoader`` workers fetch ahead passes the batches it actually finished."""
        position = self._position if batches_consumed is None else int(batches_consumed)
        return {"version": _STATE_VERSION, "epoch": self.epoch, "position": position, "seed": self.seed,
                **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch after its consumed batches, after checking that the state fits
        this run (else one CheckpointError naming every difference)."""
        mismatches = [f"{key} {state.get(key)!r} (now {now!r})" for key, now in self._fingerprint().items()
                      if state.get(key) != now]
        if mismatches:
            raise CheckpointError(
                f"The checkpoint's {self.what} state does not fit this run: saved " + ", ".join(mismatches)
                + f". Resume with {self.same}, or start a new run without resuming."
            )
        position = int(state["position"])
        if not 0 <= position <= self.num_batches:
            raise CheckpointError(f"The checkpoint's batch sampler position {position} is outside 0..{self.num_batches}.")
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._resume_at = self._position = position


class TokenBudgetBatchSampler(ResumableBatchSampler):
    """Yield lists of dataset indices whose padded size fits ``max_tokens``; see the module docstring.

    ``src_lengths``/``tgt_lengths`` include BOS/EOS; ``max_tokens`` bounds
    ``n_sentences * max(src_len, tgt_len)`` (``data.max_tokens``), ``max_sentences`` the examples
    of a batch; ``shuffle=False`` keeps length order; an epoch's order depends only on ``(seed,
    epoch)``; ``drop_last``: with several ranks, drop the last ``len % num_replicas`` batches
    instead of repeating batches to even them out.
    """

    def __init__(
        self,
        src_lengths: Sequence[int] | np.ndarray,
        tgt_lengths: Sequence[int] | np.ndarray,
        max_tokens: int,
        *,
        max_sentences: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        # int32: half the memory of int64 for corpora of millions of pairs (lengths are far below 2^31).
        src = np.asarray(src_lengths).reshape(-1).astype(np.int32)
        tgt = np.asarray(tgt_lengths).reshape(-1).astype(np.int32)
        if src.shape != tgt.shape:
            raise ValueError(f"src_lengths has {src.size} entries but tgt_lengths has {tgt.size}")
        if src.size and (src.min() < 0 or tgt.min() < 0):
            raise ValueError("sequence lengths must be >= 0")
        if max_tokens is None or int(max_tokens) <= 0:
            raise ConfigError(
                f"data.max_tokens must be a positive number of tokens per batch, got {max_tokens!r}; "
                "set e.g. data.max_tokens=4096"
            )
        if max_sentences is not None and int(max_sentences) <= 0:
            raise ConfigError(f"data.max_sentences must be a positive number or null, got {max_sentences!r}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(
                f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}"
            )

        self.src_lengths, self.tgt_lengths = src, tgt
        self.max_tokens = int(max_tokens)
        self.max_sentences = None if max_sentences is None else int(max_sentences)
        self.shuffle = bool(shuffle)
        self.seed, self.num_replicas, self.rank = int(seed), int(num_replicas), int(rank)
        self._keys = np.maximum(src, tgt)
        # The boundaries depend on the sorted keys only; the order itself is needed without shuffling.
        self._boundaries = _greedy_boundaries(np.sort(self._keys), self.max_tokens, self.max_sentences)
        self._base_order: np.ndarray | None = None
        self.num_batches_total = len(self._boundaries) + 1 if src.size else 0
        total, n = self.num_batches_total, self.num_replicas
        self.num_batches = total // n if drop_last else math.ceil(total / n)
        oversized = int((self._keys > self.max_tokens).sum())
        if oversized:
            logger.warning("%d example(s) are longer than data.max_tokens=%d and will form batches of one",
                           oversized, self.max_tokens)

    def _sort(self, candidates: np.ndarray) -> np.ndarray:
        """Return ``candidates`` ordered by (max len, src len, tgt len), keeping their order on ties."""
        if self.src_lengths.size and max(int(self.src_lengths.max()), int(self.tgt_lengths.max())) < 1 << 21:
            # One stable sort of a combined key: the same order as the lexsort below, twice as fast.
            combined = self._keys[candidates].astype(np.int64) << 42
            combined |= self.src_lengths[candidates].astype(np.int64) << 21
            combined |= self.tgt_lengths[candidates]
            return candidates[np.argsort(combined, kind="stable")]
        keys = (self.tgt_lengths[candidates], self.src_lengths[candidates], self._keys[candidates])
        return candidates[np.lexsort(keys)]  # lexsort is stable; the last key is the primary one

    def _batches(self, start: int) -> Iterator[list[int]]:
        """This rank's batches of the current epoch from ``start`` on."""
        if self.num_batches_total == 0:
            return
        if not self.shuffle:
            if self._base_order is None:
                self._base_order = self._sort(np.arange(self.src_lengths.size, dtype=np.int64))
            batches = np.split(self._base_order, self._boundaries)
        else:
            rng = np.random.default_rng([self.seed, self.epoch])
            order = self._sort(rng.permutation(self.src_lengths.size))
            batches = np.split(order, self._boundaries)
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.num_replicas > 1:
            # Repeat from the start (cyclically, in case there are fewer batches than ranks).
            wanted = self.num_batches * self.num_replicas
            batches = [batches[i % len(batches)] for i in range(wanted)][self.rank :: self.num_replicas]
        for batch in batches[start:]:
            yield batch.tolist()

    def _fingerprint(self) -> dict[str, Any]:
        return {"num_examples": int(self.src_lengths.size), "num_replicas": self.num_replicas,
                "num_batches": self.num_batches}
