"""Continuous (iteration-level) batching: sentences join and leave a running beam search between steps.

A batch decoded to its end (:func:`~seq2seq.decoding.search.beam_search`) steps until its
longest output is done; a server whose requests arrive one at a time then runs the tail of every
batch with a few rows, and new requests wait for the batch to end. :class:`ContinuousSearch` keeps
one batch running: :meth:`~ContinuousSearch.add` queues sentences, which join at the next
:meth:`~ContinuousSearch.step`, and every step returns the sentences that finished. Each step's
model call holds every sentence in flight, as offline batches do (the serving batcher keeps up to
``max_batch`` in flight: :class:`seq2seq.serving.batcher.ContinuousBatcher`).

The search is :func:`~seq2seq.decoding.search.beam_search`'s (fairseq's scheme; greedy is
``beam_size=1``, which gives greedy's outputs and scores), run per sentence with its own step
count, length limit and ``n_best``; its results equal the batch search's up to float rounding
(rows are padded differently).

Layout. Rows are sentences × k beams (a sentence joins with k rows: beam 0 scored 0, the others
-inf, so its first step extends beam 0 only, as the batch search's first step does). Time is
shared: every step writes one self-attention position for every row at the cache's length, so a
row that joined at cache length ``start`` holds its tokens in positions ``start, start + 1, …``,
its earlier positions masked out, and decodes its i-th token at model position ``i``
(``positions`` of :meth:`~seq2seq.models.transformer.TransformerDecoder.states`). The output
tokens (``generated``) are right-aligned: the newest in the last column, PAD before a row's first.
Positions no row needs any more (before the oldest row's start) are dropped. Sources of joining
sentences are encoded together; the source side is padded to the longest source in flight.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from seq2seq.decoding.search import DecodingConfig, Hypothesis, beam_step, constrain, max_output_lengths
from seq2seq.errors import ConfigError
from seq2seq.models.transformer import KVCache, Seq2SeqTransformer, pad_dim


class JoiningCache(KVCache):
    """A :class:`KVCache` whose rows join and leave a running batch: what the continuous search needs
    of a cache beyond reordering rows."""

    def drop_front(self, n: int) -> None:
        """Forget the first ``n`` self-attention positions of every row (no row attends to them any
        more: rows that started after them)."""
        if n <= 0:
            return
        for store in (self.self_k, self.self_v):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t[:, :, n:]
        self.length -= n

    def keep_memory(self, width: int) -> None:
        """Keep the first ``width`` source positions of the cross-attention keys/values (the rest is padding)."""
        for store in (self.cross_k, self.cross_v):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t[:, :, :width]

    def extend(self, cross_k: list[Tensor], cross_v: list[Tensor]) -> None:
        """Add rows whose cross-attention keys/values per layer are ``cross_k``/``cross_v``
        (B', H, S', Dh) and whose self-attention positions are all empty (masked until they write
        their own). The shorter source side is zero-padded (masked by the source mask)."""
        for layer in range(len(self.cross_k)):
            old_k, new_k = self.cross_k[layer], cross_k[layer]
            if old_k is None:
                self.cross_k[layer], self.cross_v[layer] = new_k, cross_v[layer]
                continue
            width = max(old_k.size(2), new_k.size(2))
            self.cross_k[layer] = torch.cat([pad_dim(old_k, 2, width), pad_dim(new_k, 2, width)])
            self.cross_v[layer] = torch.cat([pad_dim(self.cross_v[layer], 2, width), pad_dim(cross_v[layer], 2, width)])
            for store in (self.self_k, self.self_v):
                old = store[layer]
                if old is not None:
                    store[layer] = torch.cat([old, old.new_zeros(new_k.size(0), *old.shape[1:])])


class ContinuousSearch:
    """A beam search (greedy: one beam) that sentences join and leave between steps; see the module docstring.

    ``model``: one network in eval mode (not an ensemble). ``cfg``: strategy ``greedy`` or ``beam``,
    length limits and constraints; ``n_best`` is per sentence (:meth:`add`).
    """

    def __init__(self, model: Seq2SeqTransformer, cfg: DecodingConfig, device: torch.device | str | None = None):
        cfg = cfg.validate()
        if cfg.strategy not in ("greedy", "beam"):
            raise ConfigError(f"continuous batching decodes greedily or with beam search, not strategy={cfg.strategy}")
        self.model, self.cfg = model, cfg
        self.mc = model.config
        self.k = cfg.beam_size if cfg.strategy == "beam" else 1
        if 2 * self.k > self.mc.tgt_vocab_size:
            raise ConfigError(f"decoding.beam_size={self.k} is too large for a vocabulary of {self.mc.tgt_vocab_size} tokens")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self._pending: list[tuple[list[int], Any, int]] = []
        self._reset()

    def _reset(self) -> None:
        # Per sentence (Python): its tag, n_best, output limit, tokens so far, finished hypotheses.
        self.tags: list[Any] = []
        self.n_best: list[int] = []
        self.limits: list[int] = []
        self.steps: list[int] = []
        self.finished: list[list[Hypothesis]] = []
        # Per row (tensors): see the module docstring.
        self.cache = JoiningCache(len(self.model.decoder.layers))
        self.scores = torch.zeros(0, self.k, device=self.device)  # (A, k) summed log-probabilities
        self.generated = torch.full((0, 1), self.mc.pad_id, dtype=torch.long, device=self.device)  # (R, W)
        self.start = torch.zeros(0, dtype=torch.long, device=self.device)  # (R,) first cache position
        self.src = torch.zeros(0, 1, dtype=torch.long, device=self.device)  # (R, S) for a copy head
        self.memory_mask = torch.zeros(0, 1, 1, dtype=torch.bool, device=self.device)  # (R, 1, S), True = pad

    @property
    def size(self) -> int:
        """Sentences in flight (decoding, or waiting to join at the next step)."""
        return len(self.tags) + len(self._pending)

    def add(self, sources: Sequence[Sequence[int]], tags: Sequence[Any], n_best: Sequence[int] | int = 1) -> None:
        """Queue sentences (source ids, EOS included, at most ``max_positions``) to join at the next step;
        ``tags[i]`` comes back with sentence ``i``'s result, ``n_best[i]`` (at most ``beam_size``) hypotheses."""
        counts = [n_best] * len(sources) if isinstance(n_best, int) else list(n_best)
        for ids, tag, n in zip(sources, tags, counts, strict=True):
            if not ids:
                raise ValueError("a source must hold at least one token (its EOS)")
            if not 1 <= n <= self.k:
                raise ConfigError(f"n_best={n} must be between 1 and {self.k} (the beams)")
            self._pending.append((list(ids), tag, n))

    # ------------------------------------------------------------------------------------ join
    def _join(self) -> None:
        """Encode the pending sentences and add their rows (see the module docstring)."""
        pending, self._pending = self._pending, []
        k, pad = self.k, self.mc.pad_id
        width = max(len(ids) for ids, _, _ in pending)
        src = torch.full((len(pending), width), pad, dtype=torch.long)
        for i, (ids, _, _) in enumerate(pending):
            src[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        src = src.to(self.device)
        memory, mask = self.model.encode(src)
        cross_k, cross_v = self.model.decoder.memory_keys_values(memory)
        rows = torch.arange(len(pending), device=self.device).repeat_interleave(k)
        cross_k = [t.index_select(0, rows) for t in cross_k]
        cross_v = [t.index_select(0, rows) for t in cross_v]
        src, mask = src.index_select(0, rows), mask.index_select(0, rows)
        self.cache.extend(cross_k, cross_v)
        s = max(self.src.size(1), src.size(1))
        self.src = torch.cat([pad_dim(self.src, 1, s, pad), pad_dim(src, 1, s, pad)])
        self.memory_mask = torch.cat([pad_dim(self.memory_mask, 2, s, True), pad_dim(mask, 2, s, True)])
        new_rows = len(pending) * k
        self.generated = torch.cat([self.generated, self.generated.new_full((new_rows, self.generated.size(1)), pad)])
        self.start = torch.cat([self.start, self.start.new_full((new_rows,), self.cache.length)])
        first = torch.full((len(pending), k), float("-inf"), device=self.device)
        first[:, 0] = 0.0
        self.scores = torch.cat([self.scores, first])
        limits = max_output_lengths(src[::k], pad, self.cfg.max_len_a, self.cfg.max_len_b, self.mc.max_positions)
        for (_, tag, n), limit in zip(pending, limits.tolist()):
            self.tags.append(tag)
            self.n_best.append(n)
            self.limits.append(limit)
            self.steps.append(0)
            self.finished.append([])

    # ------------------------------------------------------------------------------------ step
    @torch.inference_mode()
    def step(self) -> list[tuple[Any, list[Hypothesis]]]:
        """Let pending sentences join, run one decoder step for every row, and return the sentences
        that finished: ``(tag, n-best hypotheses best first)``, in the order they joined."""
        if self._pending:
            self._join()
        if not self.tags:
            return []
        cfg, mc, k = self.cfg, self.mc, self.k
        n_active = len(self.tags)
        cache = self.cache
        row_steps = cache.length - self.start  # (R,) tokens each row has generated
        last = self.generated[:, -1]
        tokens = torch.where(row_steps == 0, torch.full_like(last, mc.bos_id), last).unsqueeze(1)
        columns = torch.arange(cache.length + 1, device=self.device)
        blocked = (columns < self.start.unsqueeze(1)).unsqueeze(1)  # (R, 1, T + 1)
        hidden, attention, _ = self.model.decoder.states(tokens, None, self.memory_mask, self_attn_mask=blocked,
                                                         cache=cache, positions=row_steps)
        logprobs = self.model.head.log_probs(hidden[:, -1], attention[:, -1] if attention is not None else None, self.src)
        logprobs = constrain(logprobs.float(), self.generated, row_steps, cfg, mc)
        self.steps = [s + 1 for s in self.steps]
        next_beam, next_token, next_scores, done = beam_step(
            self.scores, logprobs, self.generated, self.steps, self.limits, self.finished, k, cfg.alpha, mc.eos_id)
        results = [(self.tags[a], sorted(self.finished[a], key=lambda h: -h.score)[: self.n_best[a]])
                   for a in range(n_active) if done[a]]
        sentence = torch.arange(n_active, device=self.device)
        if any(done):
            keep_l = [a for a, d in enumerate(done) if not d]
            for name in ("tags", "n_best", "limits", "steps", "finished"):
                values = getattr(self, name)
                setattr(self, name, [values[a] for a in keep_l])
            if not keep_l:
                self._reset()
                return results
            sentence = sentence[torch.tensor(keep_l, dtype=torch.long, device=self.device)]
            next_beam, next_token, next_scores = next_beam[sentence], next_token[sentence], next_scores[sentence]
        rows = (sentence.unsqueeze(1) * k + next_beam).view(-1)
        cache.select(rows, self_only=not any(done))
        self.generated = torch.cat([self.generated.index_select(0, rows), next_token.view(-1, 1)], dim=1)
        self.start = self.start.index_select(0, rows)
        if any(done):
            self.src = self.src.index_select(0, rows)
            self.memory_mask = self.memory_mask.index_select(0, rows)
        self.scores = next_scores
        if any(done):  # only a sentence that leaves can free positions, output columns or source columns
            self._compact()
        return results

    def _compact(self) -> None:
        """Drop what no row needs: cache positions before the oldest row's start, output columns
        before the longest row's first token (kept: one column, the last tokens)."""
        oldest = int(self.start.min())  # one device sync per step, like the search's own
        if oldest > 0:
            self.cache.drop_front(oldest)
            self.start -= oldest
        longest = max(max(self.steps), 1)
        if self.generated.size(1) > longest:
            self.generated = self.generated[:, -longest:]
        # Source columns past the longest source still in flight (after a long one finished).
        width = int((~self.memory_mask[:, 0]).sum(dim=1).max())
        if width < self.src.size(1):
            self.src, self.memory_mask = self.src[:, :width], self.memory_mask[:, :, :width]
            self.cache.keep_memory(width)
