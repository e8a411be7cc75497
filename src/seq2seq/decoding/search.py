"""Autoregressive decoding over the cached decoder: greedy, beam search and sampling.

Every search encodes the source once and feeds one new token per row and step through a
:class:`DecoderStepper`, which keeps the decoder's :class:`~seq2seq.models.transformer.KVCache`;
finished rows leave the active batch. The searches read only ``model.config`` and get their stepper
from :func:`make_stepper`, so an :class:`~seq2seq.decoding.ensemble.Ensemble` decodes as a network.
Shapes: B sources, S source length, t tokens so far (BOS included), R active rows, V vocabulary.

Scores (docs/decoding.md). A :class:`Hypothesis`' ``log_prob`` sums the log-probabilities of its n
scored tokens (its EOS included, if any), its ``score`` is ``log_prob`` over GNMT's ``((5 + n) / 6)
** alpha`` or ``n ** alpha`` (``length_penalty="average"``). Constraints (``min_len``,
``no_repeat_ngram_size``, top-k/top-p) only remove candidates and never renormalize the others, so
:func:`sequence_scores` (teacher forcing) reproduces the scores the searches report. A source of
``n`` tokens gets at most ``int(max_len_a * n + max_len_b)`` output tokens (EOS included, capped by
``max_positions``); a hypothesis cut there has ``eos=False``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from seq2seq.errors import ConfigError
from seq2seq.models.transformer import Seq2SeqTransformer

STRATEGIES = ("greedy", "beam", "sampling")
LENGTH_PENALTIES = ("gnmt", "average")


@dataclass
class DecodingConfig:
    """Options shared by the searches (the ``decoding`` config group)."""

    strategy: str = "greedy"  # "greedy" | "beam" | "sampling"
    max_len_a: float = 1.2  # output length limit: a * source_length + b
    max_len_b: int = 10
    min_len: int = 0  # EOS is blocked for the first min_len output tokens
    beam_size: int = 5
    alpha: float = 1.0  # length penalty exponent; 0 ranks by the plain sum of log-probabilities
    length_penalty: str = "gnmt"  # "gnmt": ((5 + n) / 6) ** alpha; "average": n ** alpha (see the module docstring)
    n_best: int = 1  # hypotheses returned per source (beam: <= beam_size; sampling: independent samples)
    no_repeat_ngram_size: int = 0  # 0 = off; n > 0 forbids repeating any n-gram of the output
    temperature: float = 1.0  # sampling only
    top_k: int = 0  # sampling only; 0 = off
    top_p: float = 1.0  # sampling only (nucleus); 1.0 = off
    seed: int | None = None  # sampling only; None = torch's global generator
    use_cache: bool = True  # False recomputes the whole prefix at every step (reference path)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> DecodingConfig:
        """Build from a dict or DictConfig; keys that are not fields (other config entries) are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values or {}).items() if k in names})

    def validate(self) -> DecodingConfig:
        """Raise :class:`~seq2seq.errors.ConfigError` for values no search can use; return self."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"decoding.strategy={self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        if self.length_penalty not in LENGTH_PENALTIES:
            raise ConfigError(f"decoding.length_penalty={self.length_penalty!r}: use one of {', '.join(LENGTH_PENALTIES)}")
        if self.beam_size < 1:
            raise ConfigError(f"decoding.beam_size={self.beam_size} must be at least 1")
        if self.n_best < 1:
            raise ConfigError(f"n_best={self.n_best} must be at least 1")
        if self.strategy == "greedy" and self.n_best > 1:
            raise ConfigError(
                f"n_best={self.n_best} needs decoding=beam or decoding=sampling (greedy has one output)"
            )
        if self.strategy == "beam" and self.n_best > self.beam_size:
            raise ConfigError(f"n_best={self.n_best} is larger than decoding.beam_size={self.beam_size}")
        if self.min_len < 0 or self.no_repeat_ngram_size < 0 or self.top_k < 0:
            raise ConfigError("decoding.min_len, no_repeat_ngram_size and top_k must not be negative")
        if not self.temperature > 0:
            raise ConfigError(f"decoding.temperature={self.temperature} must be positive")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"decoding.top_p={self.top_p} must be in (0, 1]")
        return self


@dataclass
class Hypothesis:
    """One output: token ids without BOS/EOS, and its scores (see the module docstring)."""

    tokens: list[int]
    score: float  # log_prob / length penalty
    log_prob: float  # sum of the log-probabilities of the scored tokens
    eos: bool  # True when it ended with EOS, False when cut at the length limit

    @property
    def num_scored(self) -> int:
        """Number of scored tokens: the output tokens plus the EOS, if any."""
        return len(self.tokens) + int(self.eos)


def length_penalty(length: float | Tensor, alpha: float, kind: str = "gnmt"):
    """The divisor of a hypothesis' log-probability: GNMT's ``((5 + length) / 6) ** alpha``, or
    ``length ** alpha`` (``kind="average"``)."""
    return ((5.0 + length) / 6.0) ** alpha if kind == "gnmt" else length ** alpha


def rerank(hypotheses: Sequence[Hypothesis], alpha: float, kind: str = "gnmt") -> list[Hypothesis]:
    """``hypotheses`` rescored with another length penalty, best first (ties keep their order)."""
    rescored = [Hypothesis(h.tokens, h.log_prob / length_penalty(max(h.num_scored, 1), alpha, kind), h.log_prob, h.eos)
                for h in hypotheses]
    return sorted(rescored, key=lambda h: -h.score)


def max_output_lengths(src: Tensor, pad_id: int, a: float, b: int, limit: int) -> Tensor:
    """Per-sentence output limit ``a * source_length + b`` (B,), capped by the model's positions."""
    src_len = (src != pad_id).sum(dim=1)
    return (src_len.float() * a + b).long().clamp(min=1, max=limit - 1)


class DecoderStepper:
    """Feeds a growing target prefix through the decoder (``model`` in eval mode), one position per call.

    ``src`` (B, S): padded source ids; row ``i`` of the first step is source ``i``. ``use_cache``:
    keep a :class:`KVCache` (each step runs the new position only), or recompute the whole prefix.
    """

    def __init__(self, model: Seq2SeqTransformer, src: Tensor, use_cache: bool = True):
        mc = model.config
        if src.size(1) > mc.max_positions:
            raise ValueError(
                f"source length {src.size(1)} exceeds the model's max_positions={mc.max_positions}"
            )
        self.model = model
        self.use_cache = use_cache
        self.src = src  # a copy head scatters onto the source ids, row for row
        self.memory, self.memory_mask = model.encode(src)
        self.cache = model.decoder.new_cache() if use_cache else None
        self.steps = 0

    def step(self, prefix: Tensor) -> Tensor:
        """prefix (R, t) -> log-probabilities of the next token (R, V)."""
        if self.use_cache:
            if prefix.size(1) != self.cache.length + 1:
                raise ValueError(
                    f"prefix of length {prefix.size(1)} after {self.cache.length} cached positions"
                )
            # Only the first step needs the encoder states: it fills the cross-attention cache.
            memory = self.memory if self.steps == 0 else None
            tokens = prefix[:, -1:]
        else:
            memory, tokens = self.memory, prefix
        hidden, attention, _ = self.model.decoder.states(tokens, memory, self.memory_mask, cache=self.cache)
        # Score the last position only: the vocabulary projection dominates small models.
        last = attention[:, -1] if attention is not None else None
        scores = self.model.head.log_probs(hidden[:, -1], last, self.src)
        if self.use_cache and self.steps == 0:
            self.memory = None  # keys/values are cached; let the encoder states go
        self.steps += 1
        return scores

    def select(self, index: Tensor, same_sources: bool = False) -> None:
        """Keep rows ``index`` (R',) in that order (drop finished rows, reorder or expand beams).

        ``same_sources``: row ``i`` keeps the source it had (beams reordered within their
        sentence), so everything computed from the source (the cross-attention keys/values, the
        source mask) stays as it is and only the target side is reordered.
        """
        if self.use_cache:
            self.cache.select(index, self_only=same_sources)
        if same_sources:
            return
        self.memory_mask = self.memory_mask.index_select(0, index)
        self.src = self.src.index_select(0, index)
        if not self.use_cache:
            self.memory = self.memory.index_select(0, index)


def make_stepper(model, src: Tensor, use_cache: bool = True):
    """The stepper every search uses: a network's :class:`DecoderStepper`, or the one a model that
    brings its own (``model.stepper(src, use_cache)``, e.g. an ensemble's) builds."""
    own = getattr(model, "stepper", None)
    return own(src, use_cache) if own is not None else DecoderStepper(model, src, use_cache)


def constrain(logprobs: Tensor, generated: Tensor, step: int, cfg: DecodingConfig, model_cfg) -> Tensor:
    """Block tokens that may not come next; logprobs (R, V), modified in place and returned.

    PAD and BOS are never targets in training (their logits are untrained), so they are always
    blocked; EOS before ``min_len``; and tokens that would repeat an n-gram.
    ``generated`` (R, step) holds the output tokens so far (no BOS), the latest in the last column.
    """
    logprobs[:, model_cfg.pad_id] = float("-inf")
    logprobs[:, model_cfg.bos_id] = float("-inf")
    if step < cfg.min_len:
        logprobs[:, model_cfg.eos_id] = float("-inf")
    n = cfg.no_repeat_ngram_size
    width = generated.size(1)
    if n > 0 and width >= n:
        # Every earlier n-gram whose first n-1 tokens equal the last n-1 generated tokens bans
        # its n-th token. unfold gives all n-grams at once: (R, W - n + 1, n).
        grams = generated.unfold(1, n, 1)
        suffix = generated[:, width - n + 1 :].unsqueeze(1)  # (R, 1, n-1)
        match = (grams[:, :, :-1] == suffix).all(dim=-1)  # (R, W - n + 1)
        # scatter_add is safe with repeated indices (a plain scatter of booleans is not).
        penalty = torch.zeros_like(logprobs).scatter_add_(
            1,
            grams[:, :, -1],
            torch.zeros_like(match, dtype=logprobs.dtype).masked_fill_(match, float("-inf")),
        )
        logprobs += penalty
    return logprobs


def _sample(logprobs: Tensor, cfg: DecodingConfig, generator: torch.Generator | None) -> Tensor:
    """Draw one token per row (R,) from logprobs (R, V) with temperature, top-k and top-p."""
    logits = logprobs / cfg.temperature
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass; the most
        # likely token always stays.
        drop = (probs.cumsum(dim=-1) - probs) >= cfg.top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(1)


def _greedy_or_sample(
    model: Seq2SeqTransformer, src: Tensor, cfg: DecodingConfig, sample: bool
) -> list[list[Hypothesis]]:
    """Greedy decoding (argmax) or sampling, ``n_best`` samples per source; see :func:`generate`."""
    mc = model.config
    device = src.device
    copies = cfg.n_best if sample else 1
    generator = None
    if sample and cfg.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(int(cfg.seed))
    stepper = make_stepper(model, src, cfg.use_cache)
    rows = src.size(0) * copies
    limits = max_output_lengths(src, mc.pad_id, cfg.max_len_a, cfg.max_len_b, mc.max_positions)
    limits = limits.repeat_interleave(copies)
    # Results live in full-size tensors indexed by original row, written through `active`, so
    # that no Python loop runs per row and step. Row `rows` is a scratch row: a finished row that
    # is still in the batch points there, so its further (ignored) steps overwrite nothing.
    scratch = rows
    out = torch.full((rows + 1, int(limits.max())), mc.pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(rows + 1, dtype=torch.long, device=device)
    log_prob = torch.zeros(rows + 1, dtype=torch.float32, device=device)
    ended = torch.zeros(rows + 1, dtype=torch.bool, device=device)
    limits = torch.cat([limits, limits.new_zeros(1)])  # the scratch row is always "at its limit"
    active = torch.arange(rows, device=device)
    prefix = torch.full((src.size(0), 1), mc.bos_id, dtype=torch.long, device=device)
    step = 0
    while True:
        logprobs = stepper.step(prefix)
        if step == 0 and copies > 1:  # each source gets its rows (samples) after the first step
            index = torch.arange(prefix.size(0), device=device).repeat_interleave(copies)
            stepper.select(index)
            prefix, logprobs = prefix.index_select(0, index), logprobs.index_select(0, index)
        # In place: constraints only set other tokens to -inf, the chosen token's value stays.
        logprobs = constrain(logprobs, prefix[:, 1:], step, cfg, mc)
        next_tokens = _sample(logprobs, cfg, generator) if sample else logprobs.argmax(dim=-1)
        step += 1
        out[active, step - 1] = next_tokens
        lengths[active] = step
        log_prob[active] += logprobs.gather(1, next_tokens.unsqueeze(1)).squeeze(1)
        is_eos = next_tokens == mc.eos_id
        ended[active] = is_eos
        finished = is_eos | (limits[active] <= step)
        active = active.masked_fill(finished, scratch)
        live = int((active != scratch).sum())
        if live == 0:
            break
        # Dropping rows copies every layer's cache: do it once a quarter of the batch has
        # finished, not at every finished row (rows finish one by one in a large batch).
        if 4 * (active.numel() - live) >= active.numel():
            keep = (active != scratch).nonzero().squeeze(1)
            active, next_tokens, prefix = active[keep], next_tokens[keep], prefix[keep]
            stepper.select(keep)
        prefix = torch.cat([prefix, next_tokens.unsqueeze(1)], dim=1)

    out_l, len_l, lp_l, eos_l = out.tolist(), lengths.tolist(), log_prob.tolist(), ended.tolist()
    hyps = []
    for row in range(rows):
        n = len_l[row]
        tokens = out_l[row][: n - 1 if eos_l[row] else n]
        score = lp_l[row] / length_penalty(n, cfg.alpha, cfg.length_penalty)
        hyps.append(Hypothesis(tokens, score, lp_l[row], eos_l[row]))
    return [sorted(hyps[i * copies : (i + 1) * copies], key=lambda h: -h.score) for i in range(src.size(0))]


def beam_step(
    scores: Tensor, logprobs: Tensor, outputs: Tensor, step: int, limits: Sequence[int],
    finished: Sequence[list[Hypothesis]], cfg: DecodingConfig, eos_id: int,
) -> tuple[Tensor, Tensor, Tensor, list[bool]]:
    """One step of fairseq's beam search for A sentences (:func:`beam_search`).

    ``scores`` (A, beams): the live beams' summed log-probabilities; ``logprobs`` (A * beams, V):
    their next tokens' (constrained); ``outputs`` (A * beams, step - 1): their output tokens;
    ``step``: the output length after this step. Of the 2k best (beam, token) extensions by summed
    log-probability, EOS ones among the best k join ``finished[a]``; at its limit all k best finish
    as they are. A sentence is done at k finished hypotheses or its limit (with none finished, its
    best live beam is returned). Returns the k best non-EOS extensions, ``(beam, token, summed
    score)`` each (A, k), and which sentences are done.
    """
    n_active, beams = scores.shape
    vocab, k = logprobs.size(-1), cfg.beam_size
    penalty = length_penalty(step, cfg.alpha, cfg.length_penalty)  # every hypothesis finishing now has step tokens
    candidates = (scores.unsqueeze(-1) + logprobs.view(n_active, beams, vocab)).view(n_active, beams * vocab)
    cand_scores, cand_index = candidates.topk(2 * k, dim=1)  # (A, 2k), best first
    cand_beam = torch.div(cand_index, vocab, rounding_mode="floor")
    cand_token = cand_index % vocab
    is_eos = cand_token == eos_id
    at_limit = torch.tensor([lim <= step for lim in limits], device=scores.device)  # (A,)
    # Only the k best extensions may finish (as in fairseq).
    to_finish = (is_eos[:, :k] | at_limit.unsqueeze(1)) & torch.isfinite(cand_scores[:, :k])
    finishing = to_finish.nonzero().tolist()  # row-major: best first within a sentence
    width = outputs.size(1)
    if finishing:
        # One conversion to Python per step, not one tensor read per finished hypothesis.
        rows_of = sorted({a for a, _ in finishing})
        prefixes = dict(zip(rows_of, outputs.view(n_active, beams, width)[rows_of].tolist()))
        eos_l, beam_l, token_l, score_l = (t[:, :k].tolist() for t in (is_eos, cand_beam, cand_token, cand_scores))
        for a, j in finishing:
            if len(finished[a]) >= k and limits[a] > step:
                continue
            out = prefixes[a][beam_l[a][j]] + ([] if eos_l[a][j] else [token_l[a][j]])
            total = score_l[a][j]
            finished[a].append(Hypothesis(out, total / penalty, total, eos_l[a][j]))
    # The first k non-EOS candidates continue: sort positions with EOS pushed to the end.
    positions = torch.arange(2 * k, device=scores.device)
    order = (positions + is_eos.long() * 2 * k).topk(k, dim=1, largest=False).indices  # (A, k)
    next_beam, next_token, next_scores = (t.gather(1, order) for t in (cand_beam, cand_token, cand_scores))
    done = [lim <= step or len(f) >= k for lim, f in zip(limits, finished)]
    for a in range(n_active):
        if done[a] and not finished[a]:  # nothing could finish (every extension blocked): the best live beam
            row = outputs[a * beams + int(next_beam[a, 0])].tolist()
            total = float(next_scores[a, 0])
            finished[a].append(Hypothesis(row + [int(next_token[a, 0])],
                                          total / penalty, total, False))
    return next_beam, next_token, next_scores, done


@torch.inference_mode()
def beam_search(model: Seq2SeqTransformer, src: Tensor, cfg: DecodingConfig) -> list[list[Hypothesis]]:
    """Batched beam search; returns, per source, ``n_best`` hypotheses sorted best first.

    Every step is :func:`beam_step`; done sources leave the batch. ``beam_size=1`` is exactly greedy.
    """
    mc = model.config
    device = src.device
    k = cfg.beam_size
    if 2 * k > mc.tgt_vocab_size:
        raise ConfigError(f"decoding.beam_size={k} is too large for a vocabulary of {mc.tgt_vocab_size} tokens")
    batch = src.size(0)
    stepper = make_stepper(model, src, cfg.use_cache)
    limits = max_output_lengths(src, mc.pad_id, cfg.max_len_a, cfg.max_len_b, mc.max_positions).tolist()
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = list(range(batch))  # source index of each active sentence
    prefix = torch.full((batch, 1), mc.bos_id, dtype=torch.long, device=device)  # (A * beams, t)
    # The first step runs one row per source (all beams would be equal); its candidates then
    # seed k beams. scores: summed log-probabilities of the live beams (A, beams).
    scores = torch.zeros(batch, 1, device=device)
    step = 0
    while active:
        beams = scores.size(1)
        logprobs = constrain(stepper.step(prefix), prefix[:, 1:], step, cfg, mc)
        step += 1
        next_beam, next_token, next_scores, done = beam_step(
            scores, logprobs, prefix[:, 1:], step, [limits[b] for b in active],
            [finished[b] for b in active], cfg, mc.eos_id)
        sentence = torch.arange(len(active), device=device)
        if any(done):
            sentence = sentence[torch.tensor([not d for d in done], device=device)]
            active = [b for b, d in zip(active, done) if not d]
            if not active:
                break
            next_beam, next_token, next_scores = next_beam[sentence], next_token[sentence], next_scores[sentence]
        rows = (sentence.unsqueeze(1) * beams + next_beam).view(-1)  # (A' * k,) rows of the old prefix
        # The beams of one sentence share its source: unless sentences left or beams were just
        # seeded, every row keeps its source and the cross-attention cache stays in place.
        stepper.select(rows, same_sources=beams == k and not any(done))
        prefix = torch.cat([prefix.index_select(0, rows), next_token.view(-1, 1)], dim=1)
        scores = next_scores

    n_best = min(cfg.n_best, k)
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]


@torch.inference_mode()
def generate(
    model: Seq2SeqTransformer, src: Tensor, cfg: DecodingConfig | None = None
) -> list[list[Hypothesis]]:
    """Decode a batch of sources (B, S) with ``cfg.strategy``; returns B lists of hypotheses, best first.

    greedy: one per source; beam: ``n_best``; sampling: ``n_best`` independent samples, reproducible
    with ``seed`` for the same batch (another batching draws other numbers). The model in eval mode.
    """
    cfg = (cfg or DecodingConfig()).validate()
    if cfg.strategy == "beam":
        return beam_search(model, src, cfg)
    return _greedy_or_sample(model, src, cfg, sample=cfg.strategy == "sampling")


@torch.inference_mode()
def greedy_search(
    model: Seq2SeqTransformer, src: Tensor, cfg: DecodingConfig | None = None
) -> list[list[int]]:
    """Greedy decoding of a batch of sources (B, S), whatever ``cfg.strategy`` says (validation's);
    returns B token-id lists without BOS/EOS."""
    cfg = cfg or DecodingConfig()
    return [group[0].tokens for group in _greedy_or_sample(model, src, cfg, sample=False)]


@torch.inference_mode()
def sequence_scores(
    model: Seq2SeqTransformer,
    src: Tensor,
    outputs: list[list[int]],
    eos: list[bool] | bool = True,
    alpha: float = DecodingConfig.alpha,
    kind: str = "gnmt",
) -> list[tuple[float, float]]:
    """Teacher-forced ``(score, log_prob)`` of given outputs, as the searches compute them.

    src (B, S); ``outputs``: B token lists without BOS/EOS; ``eos``: whether each ends with EOS
    (then its log-probability counts).
    """
    mc = model.config
    eos_flags = [eos] * len(outputs) if isinstance(eos, bool) else list(eos)
    targets = [list(t) + ([mc.eos_id] if e else []) for t, e in zip(outputs, eos_flags)]
    width = max(1, max(len(t) for t in targets))
    tgt_out = torch.full((len(targets), width), mc.pad_id, dtype=torch.long, device=src.device)
    for i, t in enumerate(targets):
        tgt_out[i, : len(t)] = torch.tensor(t, dtype=torch.long)
    tgt_in = torch.cat([torch.full_like(tgt_out[:, :1], mc.bos_id), tgt_out[:, :-1]], dim=1)
    logprobs = model(src, tgt_in).float().log_softmax(dim=-1)
    token_lp = logprobs.gather(2, tgt_out.unsqueeze(2)).squeeze(2)
    results = []
    for i, t in enumerate(targets):
        total = float(token_lp[i, : len(t)].sum())
        results.append((total / length_penalty(len(t), alpha, kind), total))
    return results
