"""TokenBudgetBatchSampler: budget, coverage, determinism, DDP sharding and resuming."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import shared_corpus
from seq2seq.data.sampler import TokenBudgetBatchSampler
from seq2seq.errors import CheckpointError, ConfigError


def _lengths(n: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    src = rng.integers(3, 60, size=n)
    tgt = np.clip(src + rng.integers(-5, 6, size=n), 3, None)
    return src, tgt


def _cost(batch: list[int], src: np.ndarray, tgt: np.ndarray) -> int:
    return len(batch) * int(max(src[batch].max(), tgt[batch].max()))


def test_every_index_once_and_budget_respected() -> None:
    src, tgt = _lengths()
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=512, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == sampler.num_batches_total
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert max(_cost(b, src, tgt) for b in batches) <= 512
    # Greedy batches are full: in length order (shuffle=False: the same cuts, shortest first), each
    # batch ends only because the next example would not fit into it.
    ordered = list(TokenBudgetBatchSampler(src, tgt, max_tokens=512, shuffle=False, seed=3))
    keys = np.maximum(src, tgt)
    shapes = sorted((len(b), int(keys[b].max())) for b in batches)
    assert shapes == sorted((len(b), int(keys[b].max())) for b in ordered)
    for batch, following in zip(ordered, ordered[1:]):
        assert keys[batch].max() <= keys[following[0]]
        assert (len(batch) + 1) * max(keys[batch].max(), keys[following[0]]) > 512
    # So the epoch's batches fill the budget (measured: 95.9 % of it used, padding included).
    assert sum(_cost(b, src, tgt) for b in ordered) / (512 * len(ordered)) > 0.9


def test_batch_count_is_fixed_and_order_differs_across_epochs() -> None:
    src, tgt = _lengths()
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=512, seed=3)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert len(epoch0) == len(epoch1) == len(sampler)
    assert epoch0 != epoch1
    assert sorted(i for b in epoch1 for i in b) == list(range(1000))


def test_deterministic_for_seed_and_epoch() -> None:
    src, tgt = _lengths()
    a = TokenBudgetBatchSampler(src, tgt, max_tokens=512, seed=7)
    b = TokenBudgetBatchSampler(src, tgt, max_tokens=512, seed=7)
    c = TokenBudgetBatchSampler(src, tgt, max_tokens=512, seed=8)
    for s in (a, b, c):
        s.set_epoch(4)
    assert list(a) == list(b)
    assert list(a) == list(a)  # iterating again without set_epoch replays the epoch
    assert list(a) != list(c)


def test_no_shuffle_gives_length_order() -> None:
    src, tgt = _lengths()
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=512, shuffle=False)
    batches = list(sampler)
    keys = np.maximum(src, tgt)
    flat = [i for b in batches for i in b]
    assert np.all(np.diff(keys[flat]) >= 0)
    sampler.set_epoch(5)
    assert list(sampler) == batches


def test_oversized_example_gets_its_own_batch() -> None:
    src = np.array([5, 5, 300, 5, 5])
    tgt = np.array([5, 6, 10, 5, 4])
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=100, shuffle=False)
    # Sorted by (max len, src len, tgt len): (5,4) < (5,5) = (5,5) < (5,6).
    assert list(sampler) == [[4, 0, 3, 1], [2]]


def test_max_sentences_caps_batches() -> None:
    src = tgt = np.full(10, 4)
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=1000, max_sentences=3, shuffle=False)
    assert [len(b) for b in sampler] == [3, 3, 3, 1]


def test_two_ranks_get_disjoint_batches_and_equal_counts() -> None:
    src, tgt = _lengths(n=777)
    ranks = [
        TokenBudgetBatchSampler(src, tgt, max_tokens=300, seed=1, num_replicas=2, rank=r) for r in (0, 1)
    ]
    total = ranks[0].num_batches_total
    assert total % 2 == 1  # the odd count exercises the padding
    for s in ranks:
        s.set_epoch(2)
    out = [list(s) for s in ranks]
    assert len(out[0]) == len(out[1]) == len(ranks[0]) == len(ranks[1]) == (total + 1) // 2
    seen0 = {i for b in out[0] for i in b}
    seen1 = {i for b in out[1] for i in b}
    # Padding repeats the first global batch on the last rank that needs one; all else is disjoint.
    repeated = out[1][-1]
    assert seen0 & seen1 == set(repeated)
    assert out[0].count(repeated) == 1
    assert seen0 | seen1 == set(range(777))


def test_two_ranks_drop_last_are_fully_disjoint() -> None:
    src, tgt = _lengths(n=777)
    ranks = [
        TokenBudgetBatchSampler(src, tgt, max_tokens=300, seed=1, num_replicas=2, rank=r, drop_last=True)
        for r in (0, 1)
    ]
    out = [list(s) for s in ranks]
    assert len(out[0]) == len(out[1]) == ranks[0].num_batches_total // 2
    assert not {i for b in out[0] for i in b} & {i for b in out[1] for i in b}


def test_more_ranks_than_batches_still_gives_each_rank_one() -> None:
    src = tgt = np.full(4, 5)
    ranks = [TokenBudgetBatchSampler(src, tgt, max_tokens=100, num_replicas=3, rank=r) for r in range(3)]
    assert [len(list(s)) for s in ranks] == [1, 1, 1]


def test_resume_mid_epoch_yields_the_remaining_batches() -> None:
    src, tgt = _lengths()
    first = TokenBudgetBatchSampler(src, tgt, max_tokens=512, seed=11, num_replicas=2, rank=1)
    first.set_epoch(3)
    full = list(first)
    it = iter(first)
    consumed = [next(it) for _ in range(5)]
    state = first.state_dict()
    assert state["epoch"] == 3 and state["position"] == 5

    resumed = TokenBudgetBatchSampler(src, tgt, max_tokens=512, seed=11, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # what a training loop does at the start of the (resumed) epoch
    rest = list(resumed)
    assert consumed + rest == full
    assert len(rest) == len(full) - 5
    # The next epoch is complete again.
    resumed.set_epoch(4)
    assert len(list(resumed)) == len(full)


def test_resume_with_explicit_consumed_count() -> None:
    src, tgt = _lengths()
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=512)
    full = list(sampler)
    it = iter(sampler)
    for _ in range(9):  # e.g. a DataLoader prefetched 9 batches, the loop finished 6
        next(it)
    state = sampler.state_dict(batches_consumed=6)
    resumed = TokenBudgetBatchSampler(src, tgt, max_tokens=512)
    resumed.load_state_dict(state)
    assert list(resumed) == full[6:]


def test_resume_refuses_state_from_other_data() -> None:
    src, tgt = _lengths()
    state = TokenBudgetBatchSampler(src, tgt, max_tokens=512).state_dict()
    other = TokenBudgetBatchSampler(src[:900], tgt[:900], max_tokens=512)
    with pytest.raises(CheckpointError, match="num_examples 1000 \\(now 900\\)"):
        other.load_state_dict(state)


@pytest.mark.parametrize("bad", [0, -5])
def test_non_positive_max_tokens_is_a_config_error(bad: int) -> None:
    with pytest.raises(ConfigError, match="data.max_tokens"):
        TokenBudgetBatchSampler([3], [3], max_tokens=bad)


def test_empty_dataset() -> None:
    sampler = TokenBudgetBatchSampler([], [], max_tokens=100)
    assert len(sampler) == 0 and list(sampler) == []


def test_padding_is_small_on_multi30k() -> None:
    folder = shared_corpus("multi30k")
    def read(name):
        return [len(x.split()) + 2 for x in (folder / name).read_text("utf-8").split("\n")[:-1]]
    src, tgt = np.array(read("train.en")), np.array(read("train.de"))
    batches = list(TokenBudgetBatchSampler(src, tgt, max_tokens=4096, seed=1))
    real = sum(int(src[b].sum() + tgt[b].sum()) for b in batches)
    padded = sum(len(b) * int(src[b].max() + tgt[b].max()) for b in batches)
    assert 1 - real / padded < 0.10


def test_works_as_dataloader_batch_sampler() -> None:
    import torch
    from torch.utils.data import DataLoader

    src = np.array([3, 9, 4, 8, 3])
    tgt = np.array([3, 9, 5, 8, 2])
    sampler = TokenBudgetBatchSampler(src, tgt, max_tokens=18, shuffle=False)
    loader = DataLoader(list(range(5)), batch_sampler=sampler)
    assert [b.tolist() for b in loader] == [[4, 0, 2], [3, 1]]
    assert isinstance(next(iter(loader)), torch.Tensor)
