"""The throughput/MFU callback: FLOP count against a hand count, and logged values."""

import pytest

from seq2seq.callbacks.throughput import device_peak_flops, flops_per_token
from seq2seq.models.transformer import TransformerConfig


def test_flop_count_matches_hand_count():
    cfg = TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=4, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, d_ff=8)
    # d=4, d_ff=8, S=3, T=2, V=10, one layer each, 2 FLOPs per multiply-add.
    # Source token: encoder QKV+out 4*16=64, FFN 2*4*8=64, attention 2*3*4=24 -> 152;
    #               decoder cross K/V projection 2*16=32 -> 184 MACs -> 368 FLOPs.
    # Target token: self QKV+out 64, self attention 2*2*4=16, cross Q+out 32, cross attention
    #               2*3*4=24, FFN 64, vocabulary 4*10=40 -> 240 MACs -> 480 FLOPs.
    flops = flops_per_token(cfg, src_len=3, tgt_len=2)
    assert flops.source == 368
    assert flops.target == 480
    # Training = forward + backward (2x forward): 3 * (368 * 5 + 480 * 7)
    assert flops.training(5, 7) == 3 * (368 * 5 + 480 * 7)


def test_peak_flops_only_where_known():
    import torch

    assert device_peak_flops(torch.device("cpu")) is None
    assert device_peak_flops(torch.device("cpu"), override_tflops=2.0) == pytest.approx(2e12)


def test_tiny_run_logged_throughput(tiny_run):
    import csv
    from pathlib import Path

    rows = list(csv.DictReader(open(Path(tiny_run["run_dir"]) / "csv" / "metrics.csv")))
    speeds = [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]
    padding = [float(r["train/padding"]) for r in rows if r.get("train/padding")]
    assert speeds and all(s > 100 for s in speeds)  # thousands of tokens/s on any CPU
    assert padding and all(0 <= p < 0.5 for p in padding)
