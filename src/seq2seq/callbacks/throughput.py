"""Training throughput and model-FLOPs utilization (MFU), logged to every logger.

FLOPs are counted from the network's own layers, per source and per target token, the usual way
(Kaplan et al. 2020; PaLM appendix B): every weight multiply is 2 FLOPs forward, the backward
pass costs twice the forward, and attention adds its score and weighted-sum products over the
full (unmasked) key length. MFU = achieved model FLOPs / the device's peak FLOPs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import torch

from seq2seq.models.transformer import Seq2SeqTransformer

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) for the usual training GPUs, by device-name substring.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,  # SXM; the PCIe card is 756
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "RTX 4090": 165.0,
    "V100": 125.0,
    "T4": 65.0,
}


@dataclass
class FlopsPerToken:
    """Forward FLOPs per source token and per target token, for sequences of the given lengths."""

    source: float
    target: float

    def training(self, n_src: float, n_tgt: float) -> float:
        """Forward + backward FLOPs of a batch with ``n_src`` source and ``n_tgt`` target tokens."""
        return 3.0 * (self.source * n_src + self.target * n_tgt)


def flops_per_token(net: Seq2SeqTransformer, src_len: float, tgt_len: float) -> FlopsPerToken:
    """Count the matmul FLOPs of one forward pass of ``net``, split per source and per target token.

    Every ``nn.Linear`` (the output head included) costs its weight's size in multiply-adds per token
    it sees: the encoder's and the cross-attention key/value projections count per source token, the
    decoder's others per target token. Attention adds ``2 L d`` per query over ``L`` keys (``src_len``
    in the encoder and cross-attention, ``tgt_len`` in decoder self-attention). A multiply-add is 2
    FLOPs; embeddings, norms and softmax are left out, as usual.
    """
    cfg = net.config

    def weights(module: torch.nn.Module, cross_kv: bool | None = None) -> int:
        return sum(m.weight.numel() for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)
                   and (cross_kv is None or name.endswith("cross_attn.kv_proj") == cross_kv))

    source = weights(net.encoder) + weights(net.decoder, cross_kv=True) + cfg.num_encoder_layers * 2 * src_len * cfg.d_model
    target = weights(net.decoder, cross_kv=False) + cfg.num_decoder_layers * 2 * (tgt_len + src_len) * cfg.d_model
    return FlopsPerToken(source=2.0 * source, target=2.0 * target)


def device_peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of ``device``: the override if given, else a known GPU's bf16 peak, else None."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


class ThroughputMonitor(L.Callback):
    """Logs ``train/tokens_per_s`` (source + target, padding excluded) and ``train/mfu``.

    The clock runs from ``on_train_batch_start`` to ``on_train_batch_end`` of each batch (forward,
    backward, optimizer step) only: validation, checkpoints, logging, other callbacks and loading
    the next batch (benchmarks/data_pipeline.py measures it) are left out. On CUDA the steps are
    timed with CUDA events, so kernels still running after the host has left a step count with it.
    Token counts and timings stay on the device and are read back only every ``log_every_n_steps``
    steps, so the other steps get no host-device sync.

    Args:
        peak_tflops: the device's peak in TFLOP/s; by default looked up from the GPU's name
            (MFU is not logged where the peak is unknown, e.g. on CPUs).
        log_every_n_steps: how often to measure and log (default: the Trainer's).
    """

    def __init__(self, peak_tflops: float | None = None, log_every_n_steps: int | None = None):
        self.peak_tflops = peak_tflops
        self.log_every_n_steps = log_every_n_steps
        self._reset()

    def _reset(self) -> None:
        self._steps = 0
        self._sentences = 0
        self._src_cells = self._tgt_cells = 0
        self._start = None
        self._elapsed = 0.0  # seconds of training steps in this window (host clock)
        self._events: list = []  # CUDA: (start, end) event of each step in this window
        self._counts: torch.Tensor | None = None  # real (non-pad) source and target tokens, on the device

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.strategy.root_device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is not None and trainer.strategy.root_device.type == "cuda":
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._events.append((self._start, end))
        elif self._start is not None:
            self._elapsed += time.perf_counter() - self._start
        self._start = None
        pad = pl_module.net.config.pad_id
        counts = torch.stack([(batch["src"] != pad).sum(), (batch["tgt_out"] != pad).sum()])
        self._counts = counts if self._counts is None else self._counts + counts
        self._src_cells += batch["src"].numel()
        self._tgt_cells += batch["tgt_out"].numel()
        self._sentences += batch["src"].size(0)
        self._steps += 1
        if self._steps < (self.log_every_n_steps or trainer.log_every_n_steps):
            return
        if self._events:
            self._events[-1][1].synchronize()
            self._elapsed += sum(start.elapsed_time(end) for start, end in self._events) / 1e3
        elapsed = self._elapsed
        n_src, n_tgt = (float(x) for x in self._counts.tolist())
        world = trainer.world_size
        cells = self._src_cells + self._tgt_cells
        metrics = {"train/tokens_per_s": (n_src + n_tgt) * world / elapsed, "train/padding": 1 - (n_src + n_tgt) / cells}
        # Attention cost grows with the padded lengths the kernels actually see.
        flops = flops_per_token(pl_module.net, self._src_cells / self._sentences, self._tgt_cells / self._sentences)
        peak = device_peak_flops(trainer.strategy.root_device, self.peak_tflops)
        achieved = flops.training(n_src, n_tgt) / elapsed
        metrics["train/tflops"] = achieved / 1e12
        if peak:
            metrics["train/mfu"] = achieved / peak
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._reset()
