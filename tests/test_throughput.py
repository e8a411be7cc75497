"""The throughput/MFU callback: FLOP count against a hand count, and logged values."""

import pytest

from seq2seq.callbacks.throughput import device_peak_flops, flops_per_token
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig


def test_flop_count_matches_hand_count():
    cfg = TransformerConfig(src_vocab_size=10, tgt_vocab_size=10, d_model=4, num_heads=2,
                            num_encoder_layers=1, num_decoder_layers=1, d_ff=8)
    # d=4, d_ff=8, S=3, T=2, V=10, one layer each, 2 FLOPs per multiply-add.
    # Source token: encoder QKV+out 4*16=64, FFN 2*4*8=64, attention 2*3*4=24 -> 152;
    #               decoder cross K/V projection 2*16=32 -> 184 MACs -> 368 FLOPs.
    # Target token: self QKV+out 64, self attention 2*2*4=16, cross Q+out 32, cross attention
    #               2*3*4=24, FFN 64, vocabulary 4*10=40 -> 240 MACs -> 480 FLOPs.
    flops = flops_per_token(Seq2SeqTransformer(cfg), src_len=3, tgt_len=2)
    assert flops.source == 368
    assert flops.target == 480
    # Training = forward + backward (2x forward): 3 * (368 * 5 + 480 * 7)
    assert flops.training(5, 7) == 3 * (368 * 5 + 480 * 7)
    # A variant's own layers count with it: the copy head's gate (d -> 1) on the target side.
    with_copy = flops_per_token(Seq2SeqTransformer(TransformerConfig(**{**cfg.__dict__, "copy_attention": True})), 3, 2)
    assert (with_copy.source, with_copy.target) == (368, 480 + 2 * 4)


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
    """Validation runs inside the epoch (every 5 batches here, so also in the middle of each 10-step
    log window): a sleep in the validations of some windows must not lower their logged tokens/s,
    since the clock counts training steps only."""
    import statistics
    import time

    import torch

    from helpers import TINY_OVERRIDES, compose_train
    from seq2seq.models.lit_module import Seq2SeqModule
    from seq2seq.train import train

    sleeps = (15, 35, 55)  # mid-window validations of windows 2, 4 and 6 (steps 11-20, 31-40, 51-60)
    slept_at = []

    def sleep_in_some_validations(self, *args):
        if self.global_step in sleeps:
            slept_at.append(self.global_step)
            time.sleep(1.5)

    monkeypatch.setattr(Seq2SeqModule, "on_validation_batch_end", sleep_in_some_validations, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy machine stall each other: 10x swings in speed
    try:
        train(compose_train(tmp_path, TINY_OVERRIDES + [
            "data.generate.sizes={train:1600,val:16,test:16}", "data.max_tokens=512",
            "trainer.max_epochs=1", "trainer.max_time=null",
            "trainer.limit_train_batches=70", "+trainer.val_check_interval=5", "trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=10", "callbacks.validation_samples=null", "callbacks.lr_monitor=null",
            "decoding.max_len_a=0", "decoding.max_len_b=4", "test=false",
        ]))
    finally:
        torch.set_num_threads(threads)
    speeds = _logged_speeds(tmp_path / "run")
    assert slept_at == list(sleeps) and len(speeds) == 7
    # Windows 2, 4 and 6 hold a 1.5 s sleep, windows 3, 5 and 7 none (window 1 warms up). Ten
    # tiny-model steps take a fraction of a second, so a clock that counted the sleep would log a
    # fraction of the other windows' tokens/s; the windows alternate, so a load from other
    # processes slows both kinds alike.
    ratio = statistics.median(speeds[1::2]) / statistics.median(speeds[2::2])
    print(f"tokens/s per window {[round(s) for s in speeds]}: windows with a sleep / without {ratio:.2f}")
    assert ratio > 0.6
