"""Greedy, beam and sampling search over the KV cache, on small random-weight models."""

from __future__ import annotations

import pytest
import torch

from helpers.random_models import LENGTHS, PAD, VOCAB, make_model, make_sources
from seq2seq.decoding.search import (
    DecoderStepper,
    DecodingConfig,
    Hypothesis,
    beam_search,
    generate,
    greedy_search,
    length_penalty,
    max_output_lengths,
    rerank,
    sequence_scores,
)
from seq2seq.errors import ConfigError


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: a single thread is faster, and steadier on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def unpadded(src: torch.Tensor, i: int) -> torch.Tensor:
    return src[i : i + 1, : int((src[i] != PAD).sum())]


def tokens_of(hyps: list[list[Hypothesis]]) -> list[list[list[int]]]:
    return [[h.tokens for h in group] for group in hyps]


def ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# ----------------------------------------------------------------------------- the cache
@pytest.mark.parametrize("pre_norm", [True, False])
def test_cached_and_uncached_logits_match_at_every_step(pre_norm):
    model = make_model(pre_norm=pre_norm, std=0.1)
    src = make_sources()
    g = torch.Generator().manual_seed(1)
    forced = torch.randint(4, VOCAB, (src.size(0), 12), generator=g)  # the tokens fed back
    with torch.inference_mode():
        cached, uncached = (
            DecoderStepper(model, src, use_cache=True),
            DecoderStepper(model, src, use_cache=False),
        )
        prefix = torch.full((src.size(0), 1), 2)
        rows = torch.arange(src.size(0))
        for step in range(forced.size(1)):
            a, b = cached.step(prefix), uncached.step(prefix)
            assert a.shape == (rows.numel(), VOCAB)
            assert (a - b).abs().max().item() <= 1e-5, f"step {step}"
            if step in (3, 7):  # drop and reorder rows, as finished sequences and beams do
                keep = torch.arange(rows.numel() - 1, 0, -1)
                cached.select(keep)
                uncached.select(keep)
                prefix, rows = prefix[keep], rows[keep]
            prefix = torch.cat([prefix, forced[rows, step : step + 1]], dim=1)
        # And the last step agrees with plain teacher forcing of the same rows.
        full = model(src[rows], prefix)[:, -1].float().log_softmax(-1)  # the stepper gives log-probabilities
        assert (cached.step(prefix) - full).abs().max().item() <= 1e-5


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sampling"])
def test_uncached_search_gives_the_same_output(strategy):
    model, src = make_model(), make_sources()
    cfg = {
        "strategy": strategy,
        "beam_size": 3,
        "n_best": 2 if strategy != "greedy" else 1,
        "seed": 5,
        "top_p": 0.9,
    }
    cached = generate(model, src, DecodingConfig(**cfg))
    uncached = generate(model, src, DecodingConfig(**cfg, use_cache=False))
    assert tokens_of(cached) == tokens_of(uncached)


# ----------------------------------------------------------------------------- greedy and beam
@pytest.mark.parametrize("seed,eos_bias,min_len", [(0, 0.0, 0), (1, 1.5, 0), (2, 3.0, 2), (3, 1.0, 0)])
def test_beam_size_one_is_greedy(seed, eos_bias, min_len):
    model, src = make_model(seed=seed, eos_bias=eos_bias), make_sources(seed=seed)
    greedy = greedy_search(model, src, DecodingConfig(min_len=min_len))
    beam = generate(model, src, DecodingConfig(strategy="beam", beam_size=1, min_len=min_len))
    assert [group[0].tokens for group in beam] == greedy
    assert [len(group) for group in beam] == [1] * src.size(0)


@pytest.mark.parametrize(
    "cfg",
    [
        DecodingConfig(strategy="greedy"),
        DecodingConfig(strategy="beam", beam_size=4, n_best=3),
        DecodingConfig(strategy="beam", beam_size=3, alpha=1.0, no_repeat_ngram_size=2),
    ],
    ids=["greedy", "beam4", "beam3-norepeat"],
)
def test_batched_equals_one_by_one(cfg):
    model, src = make_model(eos_bias=1.0), make_sources()
    batched = generate(model, src, cfg)
    for i in range(src.size(0)):
        alone = generate(model, unpadded(src, i), cfg)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]], f"source {i}"
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-4)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_never_scores_below_greedy(alpha, seed):
    model, src = make_model(seed=seed, eos_bias=1.0), make_sources(seed=seed)
    greedy = generate(model, src, DecodingConfig(alpha=alpha))
    beam = generate(model, src, DecodingConfig(strategy="beam", beam_size=5, alpha=alpha))
    greedy_scores = sequence_scores(
        model, src, [g[0].tokens for g in greedy], [g[0].eos for g in greedy], alpha
    )
    beam_scores = sequence_scores(model, src, [b[0].tokens for b in beam], [b[0].eos for b in beam], alpha)
    for i in range(src.size(0)):
        # The searches' scores are the teacher-forced ones...
        assert greedy[i][0].score == pytest.approx(greedy_scores[i][0], abs=1e-4)
        assert beam[i][0].score == pytest.approx(beam_scores[i][0], abs=1e-4)
        # ...and beam search finds at least as good a hypothesis as greedy.
        assert beam_scores[i][0] >= greedy_scores[i][0] - 1e-5, f"source {i}"


def test_beam_improves_on_greedy_somewhere():
    """Guards the test above against a beam search that merely copies greedy."""
    model, src = make_model(eos_bias=1.0), make_sources()
    greedy = generate(model, src, DecodingConfig())
    beam = generate(model, src, DecodingConfig(strategy="beam", beam_size=5))
    assert any(b[0].score > g[0].score + 1e-3 for g, b in zip(greedy, beam))


def test_n_best_returns_k_sorted_distinct_hypotheses():
    model, src = make_model(eos_bias=1.0), make_sources()
    hyps = generate(model, src, DecodingConfig(strategy="beam", beam_size=5, n_best=4))
    for group in hyps:
        assert len(group) == 4
        scores = [h.score for h in group]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in group}) == 4
        for h in group:
            assert h.score == pytest.approx(h.log_prob / length_penalty(h.num_scored, DecodingConfig.alpha))


# ----------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("strategy", ["greedy", "beam", "sampling"])
def test_max_length_holds(strategy):
    model, src = make_model(), make_sources()
    cfg = DecodingConfig(
        strategy=strategy,
        max_len_a=0.5,
        max_len_b=3,
        beam_size=3,
        n_best=2 if strategy != "greedy" else 1,
        seed=0,
    )
    limits = max_output_lengths(src, PAD, 0.5, 3, 128).tolist()
    assert limits == [int(0.5 * n + 3) for n in LENGTHS]
    for limit, group in zip(limits, generate(model, src, cfg)):
        for h in group:
            assert h.num_scored <= limit
            assert h.eos or len(h.tokens) == limit  # cut at the limit only when it ran out of room


@pytest.mark.parametrize("strategy", ["greedy", "beam", "sampling"])
def test_min_length_holds(strategy):
    model, src = make_model(eos_bias=6.0), make_sources()  # EOS wins whenever it is allowed
    free = generate(model, src, DecodingConfig(strategy=strategy, beam_size=3, seed=0))
    assert sum(h.tokens == [] for group in free for h in group) >= len(LENGTHS) - 1
    cfg = DecodingConfig(
        strategy=strategy, min_len=4, beam_size=3, n_best=2 if strategy != "greedy" else 1, seed=0
    )
    for group in generate(model, src, cfg):
        for h in group:
            assert len(h.tokens) >= 4
            if strategy != "sampling":  # a sample may still pass over EOS now and then
                assert len(h.tokens) == 4 and h.eos


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("strategy", ["greedy", "beam", "sampling"])
def test_no_repeat_ngram_size_holds(strategy, n):
    model, src = make_model(seed=1), make_sources(seed=1)
    cfg = {
        "strategy": strategy,
        "beam_size": 4,
        "n_best": 2 if strategy != "greedy" else 1,
        "max_len_b": 20,
        "seed": 0,
        "temperature": 0.5,
    }
    plain = generate(model, src, DecodingConfig(**cfg))
    assert any(
        len(set(ngrams(h.tokens, n))) < len(ngrams(h.tokens, n)) for g in plain for h in g
    )  # repeats without
    for group in generate(model, src, DecodingConfig(**cfg, no_repeat_ngram_size=n)):
        for h in group:
            grams = ngrams(h.tokens, n)
            assert len(set(grams)) == len(grams), h.tokens


def test_never_produces_pad_or_bos():
    model, src = make_model(std=0.5), make_sources()
    for strategy in ("greedy", "beam", "sampling"):
        for group in generate(model, src, DecodingConfig(strategy=strategy, seed=0)):
            assert all(t not in (0, 2) for h in group for t in h.tokens)


# ----------------------------------------------------------------------------- sampling
def test_sampling_is_reproducible_for_a_seed():
    model, src = make_model(), make_sources()
    cfg = {"strategy": "sampling", "n_best": 3, "temperature": 1.5, "top_p": 0.95, "top_k": 20}
    first = generate(model, src, DecodingConfig(**cfg, seed=7))
    assert tokens_of(first) == tokens_of(generate(model, src, DecodingConfig(**cfg, seed=7)))
    assert tokens_of(first) != tokens_of(generate(model, src, DecodingConfig(**cfg, seed=8)))
    for group in first:
        assert len(group) == 3 and [h.score for h in group] == sorted((h.score for h in group), reverse=True)


@pytest.mark.parametrize("cfg", [{"top_k": 1}, {"top_p": 1e-6}, {"top_k": 1, "temperature": 5.0}])
def test_sampling_with_one_candidate_is_greedy(cfg):
    model, src = make_model(eos_bias=1.0), make_sources()
    greedy = greedy_search(model, src)
    sampled = generate(model, src, DecodingConfig(strategy="sampling", seed=3, **cfg))
    assert [g[0].tokens for g in sampled] == greedy


# ----------------------------------------------------------------------------- configuration
def test_config_from_mapping_ignores_unknown_keys():
    cfg = DecodingConfig.from_mapping({"strategy": "beam", "beam_size": 3, "comment": "x"})
    assert cfg.strategy == "beam" and cfg.beam_size == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"strategy": "nucleus"},
        {"strategy": "beam", "beam_size": 2, "n_best": 3},
        {"strategy": "greedy", "n_best": 2},
        {"strategy": "sampling", "temperature": 0.0},
        {"strategy": "sampling", "top_p": 0.0},
        {"beam_size": 0},
        {"strategy": "beam", "length_penalty": "wu"},
    ],
)
def test_bad_config_is_a_user_error(bad):
    with pytest.raises(ConfigError):
        generate(make_model(), make_sources([3]), DecodingConfig(**bad))


def test_beam_larger_than_vocabulary_is_a_user_error():
    with pytest.raises(ConfigError):
        beam_search(make_model(), make_sources([3]), DecodingConfig(strategy="beam", beam_size=VOCAB))


@pytest.mark.parametrize("kind,alpha", [("average", 1.0), ("average", 0.5), ("gnmt", 1.0), ("gnmt", 0.0)])
def test_another_length_penalty_is_a_reranking_of_one_beam_search(kind, alpha):
    """The search keeps the same finished hypotheses whatever the penalty: reranking the n-best of
    one search (GNMT 0.6) gives exactly what a search with the other penalty returns, scores included."""
    model, src = make_model(eos_bias=1.0), make_sources(seed=5)
    base = generate(model, src, DecodingConfig(strategy="beam", beam_size=4, n_best=4))
    other = generate(model, src, DecodingConfig(strategy="beam", beam_size=4, n_best=4, alpha=alpha, length_penalty=kind))
    for group, expected in zip(base, other):
        got = rerank(group, alpha, kind)
        assert [(h.tokens, h.eos) for h in got] == [(h.tokens, h.eos) for h in expected]
        assert [h.score for h in got] == pytest.approx([h.score for h in expected], rel=1e-6)
    if kind == "average" and alpha == 1.0:  # the average log-probability per scored token
        assert all(h.score == pytest.approx(h.log_prob / h.num_scored) for group in other for h in group)
        # forced decoding reports the same scores
        outputs = [group[0].tokens for group in other]
        scored = sequence_scores(model, src, outputs, [group[0].eos for group in other], alpha, kind)
        assert [s for s, _ in scored] == pytest.approx([group[0].score for group in other], abs=1e-4)
