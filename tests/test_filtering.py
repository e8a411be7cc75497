"""Length filtering of tokenized pairs."""

from __future__ import annotations

import numpy as np
import pytest

from seq2seq.data.filtering import filter_pairs
from seq2seq.errors import ConfigError

# index:   0        1          2     3       4               5                6
SRC = [[1, 2, 3], [4, 5], [], [6], [7] * 12, [8, 9], [1] * 3]
TGT = [[1, 2], [3, 4, 5], [9], [], [2] * 4, [3] * 10, [2] * 8]


def test_drop_counts_each_pair_under_its_first_reason() -> None:
    res = filter_pairs(SRC, TGT, max_src_len=10, max_tgt_len=9, overlong="drop", max_len_ratio=3.0)
    # 2, 3: empty; 5: ratio 10/2 = 5 > 3 (also too long, but ratio comes first);
    # 4: 12 > 10 source tokens, ratio 3.0 is not > 3; 6: ratio 8/3 is fine.
    assert res.kept.tolist() == [0, 1, 6]
    assert res.kept.dtype == np.int64
    assert res.counts == {"empty": 2, "too_long": 1, "ratio": 1, "truncated": 0}
    assert len(res.kept) + res.counts["empty"] + res.counts["too_long"] + res.counts["ratio"] == len(SRC)
    assert res.src_ids == [[1, 2, 3], [4, 5], [1, 1, 1]]
    assert res.tgt_ids == [[1, 2], [3, 4, 5], [2] * 8]


def test_tuple_order_is_kept_indices_then_counts() -> None:
    kept, counts, src, _tgt = filter_pairs(SRC, TGT, max_src_len=100, max_tgt_len=100, max_len_ratio=None)
    assert kept.tolist() == [0, 1, 4, 5, 6]
    assert counts == {"empty": 2, "too_long": 0, "ratio": 0, "truncated": 0}
    assert src[2] is SRC[4]  # unchanged sequences are not copied


def test_truncate_returns_cut_copies_and_leaves_input_alone() -> None:
    res = filter_pairs(SRC, TGT, max_src_len=5, max_tgt_len=6, overlong="truncate", max_len_ratio=None)
    assert res.kept.tolist() == [0, 1, 4, 5, 6]
    assert res.counts == {"empty": 2, "too_long": 0, "ratio": 0, "truncated": 3}
    assert res.src_ids[2] == [7] * 5 and res.tgt_ids[2] == [2] * 4
    assert res.src_ids[3] == [8, 9] and res.tgt_ids[3] == [3] * 6
    assert res.tgt_ids[4] == [2] * 6
    assert SRC[4] == [7] * 12 and TGT[5] == [3] * 10


def test_ratio_uses_original_lengths_when_truncating() -> None:
    res = filter_pairs(
        [[1] * 40], [[2] * 4], max_src_len=8, max_tgt_len=8, overlong="truncate", max_len_ratio=2.0
    )
    # After truncation the ratio would be 8/4 = 2, but the pair is misaligned: 40/4 = 10.
    assert res.kept.tolist() == []
    assert res.counts == {"empty": 0, "too_long": 0, "ratio": 1, "truncated": 0}


def test_keep_empty_when_asked_and_skip_ratio_for_empty_sides() -> None:
    res = filter_pairs(SRC, TGT, max_src_len=20, max_tgt_len=20, max_len_ratio=1.5, drop_empty=False)
    # 0: 3/2 = 1.5 ok; 1: 3/2 ok; 2, 3 empty but kept; 4: 12/4 = 3; 5: 5; 6: 8/3.
    assert res.kept.tolist() == [0, 1, 2, 3]
    assert res.counts == {"empty": 0, "too_long": 0, "ratio": 3, "truncated": 0}


def test_empty_input() -> None:
    res = filter_pairs([], [], max_src_len=4, max_tgt_len=4)
    assert res.kept.tolist() == [] and res.src_ids == [] and res.tgt_ids == []
    assert res.counts == {"empty": 0, "too_long": 0, "ratio": 0, "truncated": 0}


def test_works_on_numpy_sequences() -> None:
    src = [np.arange(7), np.arange(2)]
    tgt = [np.arange(3), np.arange(2)]
    res = filter_pairs(src, tgt, max_src_len=4, max_tgt_len=4, overlong="truncate")
    assert res.counts["truncated"] == 1
    assert res.src_ids[0].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_src_len": 0}, "data.max_src_len"),
        ({"max_tgt_len": -1}, "data.max_tgt_len"),
        ({"overlong": "clip"}, "data.overlong"),
        ({"max_len_ratio": 0.5}, "data.max_len_ratio"),
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict, message: str) -> None:
    args = {"max_src_len": 5, "max_tgt_len": 5} | kwargs
    with pytest.raises(ConfigError, match=message):
        filter_pairs(SRC, TGT, **args)


def test_misaligned_inputs_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="3 sources but 2 targets"):
        filter_pairs([[1], [2], [3]], [[1], [2]], max_src_len=5, max_tgt_len=5)
