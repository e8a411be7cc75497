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

from seq2seq.decoding.search import DecodingConfig, Hypothesis, _constrain, length_penalty, max_output_lengths
from seq2seq.errors import ConfigError
from seq2seq.models.transformer import KVCache, Seq2SeqTransformer, pad_dim


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
        self.cache: KVCache | None = None
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
        if self.cache is None:
            self.cache = self.model.decoder.new_cache()
            self.cache.cross_k, self.cache.cross_v = cross_k, cross_v
        else:
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
        cfg, mc, k, vocab = self.cfg, self.mc, self.k, self.mc.tgt_vocab_size
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
        logprobs = _constrain(logprobs.float(), self.generated, row_steps, cfg, mc)
        candidates = (self.scores.unsqueeze(-1) + logprobs.view(n_active, k, vocab)).view(n_active, k * vocab)
        cand_scores, cand_index = candidates.topk(2 * k, dim=1)  # (A, 2k), best first
        cand_beam = torch.div(cand_index, vocab, rounding_mode="floor")
        cand_token = cand_index % vocab
        steps = [s + 1 for s in self.steps]
        self.steps = steps
        is_eos = cand_token == mc.eos_id
        at_limit = torch.tensor([lim <= s for lim, s in zip(self.limits, steps)], device=self.device)
        to_finish = (is_eos[:, :k] | at_limit.unsqueeze(1)) & torch.isfinite(cand_scores[:, :k])
        finishing = to_finish.nonzero().tolist()
        if finishing:
            rows_of = sorted({a for a, _ in finishing})
            width = self.generated.size(1)
            beams_of = self.generated.view(n_active, k, width)[rows_of].tolist()
            prefixes = dict(zip(rows_of, beams_of))
            eos_l, beam_l, token_l, score_l = (t[:, :k].tolist() for t in (is_eos, cand_beam, cand_token, cand_scores))
            for a, j in finishing:
                step = steps[a]
                if len(self.finished[a]) >= k and self.limits[a] > step:
                    continue
                beam = prefixes[a][beam_l[a][j]]
                tokens_out = beam[width - (step - 1):] if step > 1 else []
                if not eos_l[a][j]:
                    tokens_out = tokens_out + [token_l[a][j]]
                total = score_l[a][j]
                self.finished[a].append(Hypothesis(tokens_out, total / length_penalty(step, cfg.alpha), total, eos_l[a][j]))

        done = [lim <= s or len(f) >= k for lim, s, f in zip(self.limits, steps, self.finished)]
        positions = torch.arange(2 * k, device=self.device)
        order = (positions + is_eos.long() * 2 * k).topk(k, dim=1, largest=False).indices  # (A, k)
        next_beam = cand_beam.gather(1, order)
        next_token = cand_token.gather(1, order)
        next_scores = cand_scores.gather(1, order)
        results: list[tuple[Any, list[Hypothesis]]] = []
        if any(done):
            for a in range(n_active):
                if not done[a]:
                    continue
                if not self.finished[a]:
                    # Nothing could finish (every extension blocked): return the best live beam.
                    width, step = self.generated.size(1), steps[a]
                    row = a * k + int(next_beam[a, 0])
                    prefix = self.generated[row, width - (step - 1):].tolist() if step > 1 else []
                    total = float(next_scores[a, 0])
                    self.finished[a].append(
                        Hypothesis(prefix + [int(next_token[a, 0])], total / length_penalty(step, cfg.alpha), total, False))
                hyps = sorted(self.finished[a], key=lambda h: -h.score)[: self.n_best[a]]
                results.append((self.tags[a], hyps))
            keep_l = [a for a, d in enumerate(done) if not d]
            for name in ("tags", "n_best", "limits", "steps", "finished"):
                values = getattr(self, name)
                setattr(self, name, [values[a] for a in keep_l])
            if not keep_l:
                self._reset()
                return results
            keep = torch.tensor(keep_l, dtype=torch.long, device=self.device)
            next_beam, next_token, next_scores = next_beam[keep], next_token[keep], next_scores[keep]
            sentence = keep
        else:
            sentence = torch.arange(n_active, device=self.device)
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
