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


def _logged_speeds(run_dir) -> list[float]:
    import csv
    from pathlib import Path

    rows = list(csv.DictReader(open(Path(run_dir) / "csv" / "metrics.csv")))
    return [float(r["train/tokens_per_s"]) for r in rows if r.get("train/tokens_per_s")]


def test_validation_does_not_count_as_training_time(tmp_path, monkeypatch):
    """Validation runs inside the epoch (every 5 batches here, mid log window): a 1 s sleep per
    validation batch must not lower the logged tokens/s, since the clock counts training steps only."""
    import statistics
    import time

    from conftest import TINY_OVERRIDES, compose_train
    from seq2seq.models.lit_module import Seq2SeqModule
    from seq2seq.train import train

    overrides = TINY_OVERRIDES + [
        "data.generate.sizes={train:1200,val:16,test:16}", "data.max_tokens=512",
        "trainer.max_epochs=1", "trainer.max_time=null",
        "trainer.limit_train_batches=30", "+trainer.val_check_interval=5", "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=10", "callbacks.validation_samples=null", "callbacks.lr_monitor=null",
        "decoding.max_len_a=0", "decoding.max_len_b=4", "test=false",
    ]

    def run(name: str, sleep_s: float) -> list[float]:
        cfg = compose_train(tmp_path / name, overrides)
        cfg.paths.data_dir = str(tmp_path / "data")  # the two runs share the corpus and tokenizer
        cfg.paths.cache_dir = str(tmp_path / "cache")
        with monkeypatch.context() as m:
            m.setattr(Seq2SeqModule, "on_validation_batch_end", lambda *args: time.sleep(sleep_s), raising=False)
            train(cfg)
        return _logged_speeds(tmp_path / name / "run")

    plain = run("plain", 0.0)
    slept = run("sleep", 1.0)
    # 3 log windows of 10 steps, each holding 2 validations (every 5 batches). Ten tiny-model steps
    # take well under 2 s on any CPU, so a clock that counted the 2 s of sleep would log at most a
    # half of the plain run's tokens/s; noise on a shared CPU stays far from that.
    assert len(plain) == len(slept) == 3
    ratio = statistics.median(slept) / statistics.median(plain)
    print(f"tokens/s plain {plain}, with sleep in validation {slept}: ratio {ratio:.2f}")
    assert ratio > 0.7
