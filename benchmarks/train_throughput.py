"""Training speed: this project's step against torch.nn.Transformer and HuggingFace BART.

    python benchmarks/train_throughput.py --size small --batch 32 --min-len 16 --max-len 32 --vocab 8000

Times an optimizer-step loop (forward, label-smoothed loss, backward, gradient clipping, AdamW
step) of three systems of identical size on identical batches, in one run:

* ``ours``: :class:`seq2seq.models.transformer.Seq2SeqTransformer` trained as ``seq2seq.train``
  trains it (:func:`seq2seq.models.loss.sequence_loss`): position-wise layers on real tokens only
  (:mod:`seq2seq.models.unpadded`), logits of real targets only through the fused chunked
  label-smoothed cross-entropy, the project's optimizer
  (:func:`seq2seq.models.lit_module.build_optimizer`);
* ``torch``: ``torch.nn.Transformer`` (post-LN, ``batch_first``) with the same embeddings (our
  :class:`Embedding`: one table shared by source and target, scaled by sqrt(d), sinusoidal
  positions, dropout) and output matrix tied to it; attention dropout set to ours (0);
* ``hf``: ``transformers.BartForConditionalGeneration`` (``attn_implementation=sdpa``), random
  weights, same d_model / layers / heads / d_ff / vocabulary / dropout (residual and activation
  dropout = ``dropout``, attention dropout as ours), scaled and tied embeddings, as many learned
  positions as the batches need.

Ablations of ours (``--systems``): ``ours_padded`` (padded forward, fused loss over real targets)
and ``ours_plain`` (padded forward, full logits through ``F.cross_entropy``: the peers' loss).

The peers compute the usual loss: ``F.cross_entropy`` of the full ``(B, T, V)`` logits with
``ignore_index=pad`` and the same label smoothing. Every system divides by the number of real
target tokens, clips gradients to norm 1 (as ``trainer.gradient_clip_val``) and uses the same
AdamW (:func:`build_optimizer`: fused where torch has the kernel, on CUDA and CPU). Batches:
``--batch`` sentence pairs, source and target lengths drawn uniformly from ``[--min-len,
--max-len]``, right-padded to the longest of the batch; ``--batches`` distinct batches are cycled
through. ``--compile ours|all`` compiles the step's forward + loss with dynamic shapes (one graph
for every batch shape) of ours or of every system; on a 2-core CPU compiling made ours slower
(size small: 312 ms a step compiled, 248 ms eager), hence ``model.compile=auto`` is CUDA only.

Output: one JSON object per system, then one summary object. ``tok_s`` counts source + target
tokens without padding per second (the median of ``--rounds`` timed rounds of ``--steps`` steps
each; the systems' rounds are interleaved, so background load slows them alike);
``speedup_vs_torch``, ``speedup_vs_hf`` and ``speedup_vs_best_peer`` are ratios of ``ours``' tokens
per second to the peers'. ``tflops`` and ``mfu`` use the model FLOP count of
:func:`seq2seq.callbacks.throughput.flops_per_token` over the padded lengths (the same for all
systems, whatever they skip) and the device peak of :func:`device_peak_flops` (``--peak-tflops``
on CPUs). On CUDA, ``step_peak_mib`` is the memory one step allocates above what was allocated
before it (activations, logits, gradients, optimizer temporaries) and ``state_mib`` the parameters
+ gradients + AdamW state.

Needs ``pip install transformers`` for the HF column (``--systems ours,torch`` skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from seq2seq.callbacks.throughput import device_peak_flops, flops_per_token
from seq2seq.models.lit_module import build_optimizer, compile_dynamic
from seq2seq.models.loss import plain_sequence_loss, sequence_loss, source_index, target_index
from seq2seq.models.transformer import Embedding, Seq2SeqTransformer, TransformerConfig

REPO = Path(__file__).resolve().parents[1]
PAD, BOS, EOS = 0, 2, 3
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "base", "big"], help="conf/model/size/*.yaml")
    p.add_argument("--batch", type=int, default=32, help="sentence pairs per batch")
    p.add_argument("--min-len", type=int, default=16, help="shortest source/target (tokens)")
    p.add_argument("--max-len", type=int, default=32, help="longest source/target (tokens)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16: autocast mixed precision")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per system (median taken)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per system first")
    p.add_argument("--batches", type=int, default=8, help="distinct batches cycled through")
    p.add_argument(
        "--compile", default="off", choices=["off", "ours", "all"],
        help="torch.compile (dynamic shapes) the step's forward + loss of ours only, or of every system",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--systems", default="ours,torch,hf",
        help="comma-separated: ours, torch, hf, and our ablations ours_padded (padded forward, fused loss "
        "over real targets) and ours_plain (padded forward, full logits, F.cross_entropy)",
    )
    p.add_argument("--dropout", type=float, default=None, help="default: the size's dropout")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    p.add_argument("--loss-chunk", type=int, default=None, help="our fused loss's tokens per chunk")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (CPUs)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def model_size(size: str) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "size" / f"{size}.yaml"))
    return {k: cfg[k] for k in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "d_ff", "dropout")}


def model_defaults() -> dict:
    """conf/model/transformer.yaml's TransformerConfig fields (pre_norm, activation ...)."""
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "transformer.yaml"))
    return {k: v for k, v in cfg.items() if k in TransformerConfig.__dataclass_fields__ and k != "max_positions"}


# ---------------------------------------------------------------------------------------- batches
@dataclass
class Batch:
    src: Tensor
    tgt_in: Tensor
    tgt_out: Tensor
    n_src: int  # real (non-pad) tokens
    n_tgt: int
    index: Tensor | None = None  # our non-pad target positions, found on the host (CUDA only)
    src_index: Tensor | None = None  # the same for the source


def make_batches(args, device: torch.device) -> list[Batch]:
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(args.batches):
        src_lens = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=g)
        tgt_lens = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=g)
        src = torch.full((args.batch, int(src_lens.max())), PAD)
        tgt_in = torch.full((args.batch, int(tgt_lens.max())), PAD)
        tgt_out = torch.full_like(tgt_in, PAD)
        for row, (s, t) in enumerate(zip(src_lens.tolist(), tgt_lens.tolist())):
            src[row, :s] = torch.randint(EOS + 1, args.vocab, (s,), generator=g)
            src[row, s - 1] = EOS
            words = torch.randint(EOS + 1, args.vocab, (t - 1,), generator=g)
            tgt_in[row, 0], tgt_in[row, 1:t] = BOS, words
            tgt_out[row, : t - 1], tgt_out[row, t - 1] = words, EOS
        on_host = device.type == "cuda"
        batches.append(
            Batch(
                src.to(device), tgt_in.to(device), tgt_out.to(device),
                int(src_lens.sum()), int(tgt_lens.sum()),
                target_index(tgt_out, PAD).to(device) if on_host else None,
                source_index(src, PAD).to(device) if on_host else None,
            )
        )
    return batches


# ---------------------------------------------------------------------------------------- systems
class TorchTransformer(nn.Module):
    """``nn.Transformer`` between our shared embedding and an output matrix tied to it."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pad_id = cfg.pad_id
        self.embed = Embedding(cfg.src_vocab_size, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # enable_nested_tensor notes
            self.transformer = nn.Transformer(
                d_model=cfg.d_model, nhead=cfg.num_heads,
                num_encoder_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
                dim_feedforward=cfg.d_ff, dropout=cfg.dropout, activation=cfg.activation,
                batch_first=True, norm_first=cfg.pre_norm,
            )
        for m in self.transformer.modules():  # nn.Transformer ties attention dropout to dropout
            if isinstance(m, nn.MultiheadAttention):
                m.dropout = cfg.attention_dropout
        self.output = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self.output.weight = self.embed.tokens.weight

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        pad = src == self.pad_id
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.size(1), device=src.device)
        out = self.transformer(
            self.embed(src), self.embed(tgt_in), tgt_mask=causal, tgt_is_causal=True,
            src_key_padding_mask=pad, memory_key_padding_mask=pad,
        )
        return self.output(out)


def build_hf(cfg: TransformerConfig, max_positions: int):
    from transformers import BartConfig, BartForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_cfg = BartConfig(
        vocab_size=cfg.tgt_vocab_size,
        max_position_embeddings=max_positions,  # learned: only as many as the batches need
        d_model=cfg.d_model,
        encoder_layers=cfg.num_encoder_layers,
        decoder_layers=cfg.num_decoder_layers,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff,
        activation_function=cfg.activation,
        dropout=cfg.dropout,
        activation_dropout=cfg.dropout,  # ours drops out inside the feed-forward too
        attention_dropout=cfg.attention_dropout,
        pad_token_id=cfg.pad_id,
        bos_token_id=cfg.bos_id,
        eos_token_id=cfg.eos_id,
        decoder_start_token_id=cfg.bos_id,
        forced_eos_token_id=None,
        scale_embedding=True,
        tie_word_embeddings=True,
        use_cache=False,
    )
    hf_cfg._attn_implementation = "sdpa"
    return BartForConditionalGeneration(hf_cfg)


def peer_loss(logits: Tensor, tgt_out: Tensor, eps: float) -> Tensor:
    """The usual label-smoothed loss over the full padded logits (summed)."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), tgt_out.reshape(-1),
        ignore_index=PAD, label_smoothing=eps, reduction="sum",
    )


@dataclass
class System:
    name: str
    model: nn.Module
    loss: Callable[[Batch], Tensor]  # summed smoothed loss of a batch
    optimizer: torch.optim.Optimizer


def build_systems(args, cfg: TransformerConfig, device: torch.device, names: list[str]) -> list[System]:
    eps = args.label_smoothing
    optim_cfg = {"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0}
    systems = []
    for name in names:
        torch.manual_seed(args.seed)
        if name.startswith("ours"):
            # ours: the training path (real tokens only, fused loss); ours_padded: padded forward,
            # fused loss over real targets; ours_plain: padded forward, full logits, F.cross_entropy.
            model = Seq2SeqTransformer(cfg)
            variant = name.removeprefix("ours").lstrip("_") or "unpadded"
            if variant not in ("unpadded", "padded", "plain"):
                raise SystemExit(f"unknown system {name!r}: use ours, ours_padded, ours_plain, torch, hf")

            def fn(src, tgt_in, tgt_out, index, src_index, model=model, variant=variant):
                if variant == "plain":
                    return plain_sequence_loss(model, src, tgt_in, tgt_out, eps)[0]
                return sequence_loss(
                    model, src, tgt_in, tgt_out, eps, index, fused=False if args.compile != "off" else None,
                    chunk=args.loss_chunk, src_index=src_index, unpad=variant == "unpadded",
                )[0]

            if args.compile != "off":
                fn = compile_dynamic(fn)

            def loss(b: Batch, fn=fn):
                # On CUDA the indices come with the batch (found on the host, as in training).
                index = b.index if b.index is not None else target_index(b.tgt_out, PAD)
                src_index = b.src_index if b.src_index is not None else source_index(b.src, PAD)
                return fn(b.src, b.tgt_in, b.tgt_out, index, src_index)

        elif name == "torch":
            model = TorchTransformer(cfg)

            def fn(src, tgt_in, tgt_out, model=model):
                return peer_loss(model(src, tgt_in), tgt_out, eps)

            if args.compile == "all":
                fn = compile_dynamic(fn)

            def loss(b: Batch, fn=fn):
                return fn(b.src, b.tgt_in, b.tgt_out)

        elif name == "hf":
            model = build_hf(cfg, args.max_len + 2)

            def fn(src, tgt_in, tgt_out, model=model):
                out = model(input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt_in, use_cache=False)
                return peer_loss(out.logits, tgt_out, eps)

            if args.compile == "all":
                fn = compile_dynamic(fn)

            def loss(b: Batch, fn=fn):
                return fn(b.src, b.tgt_in, b.tgt_out)

        else:
            raise SystemExit(f"unknown system {name!r}: use ours, torch, hf")
        model.to(device).train()
        systems.append(System(name, model, loss, build_optimizer(model.named_parameters(), optim_cfg)))
    return systems


def make_step(system: System, args, device: torch.device) -> Callable[[Batch], Tensor]:
    autocast = DTYPES[args.dtype]
    params = [p for p in system.model.parameters() if p.requires_grad]

    def step(b: Batch) -> Tensor:
        system.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = system.loss(b) / b.n_tgt
        loss.backward()
        if args.clip:
            torch.nn.utils.clip_grad_norm_(params, args.clip)
        system.optimizer.step()
        return loss.detach()

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def state_bytes(system: System) -> int:
    """Parameters, gradients and optimizer state."""
    params = {id(p): p for p in system.model.parameters()}.values()
    total = sum(2 * p.numel() * p.element_size() for p in params)
    for state in system.optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
    return total


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = model_size(args.size)
    dropout = size.pop("dropout")
    dropout = dropout if args.dropout is None else args.dropout
    cfg = TransformerConfig(
        **{**model_defaults(), **size}, dropout=dropout, src_vocab_size=args.vocab, tgt_vocab_size=args.vocab,
        max_positions=max(1024, args.max_len + 2), pad_id=PAD, bos_id=BOS, eos_id=EOS,
    )
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    batches = make_batches(args, device)
    systems = build_systems(args, cfg, device, names)
    steps = {s.name: make_step(s, args, device) for s in systems}

    # Warm-up (and compilation): the first losses also show the three systems start alike.
    first_loss, step_peak = {}, {}
    for s in systems:
        for i in range(max(1, args.warmup)):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            loss = steps[s.name](batches[i % len(batches)])
            if i == 0:
                first_loss[s.name] = float(loss)
            if device.type == "cuda":
                sync(device)
                step_peak[s.name] = max(step_peak.get(s.name, 0), torch.cuda.max_memory_allocated(device) - before)

    # Timed rounds, interleaved (the order rotates each round).
    times: dict[str, list[float]] = {s.name: [] for s in systems}
    cursor = 0
    for r in range(args.rounds):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        round_batches = [batches[(cursor + i) % len(batches)] for i in range(args.steps)]
        cursor += args.steps
        for s in order:
            step = steps[s.name]
            sync(device)
            start = time.perf_counter()
            for b in round_batches:
                loss = step(b)
            sync(device)
            times[s.name].append(time.perf_counter() - start)
            if not math.isfinite(float(loss)):
                raise SystemExit(f"{s.name}: the loss became non-finite")

    # Every round covers as many batches; tokens per round averaged over the batch cycle.
    per_step_src = sum(b.n_src for b in batches) / len(batches)
    per_step_tgt = sum(b.n_tgt for b in batches) / len(batches)
    src_cells = sum(b.src.numel() for b in batches) / len(batches)
    tgt_cells = sum(b.tgt_out.numel() for b in batches) / len(batches)
    flops = flops_per_token(cfg, src_cells / args.batch, tgt_cells / args.batch).training(per_step_src, per_step_tgt)
    peak = device_peak_flops(device, args.peak_tflops)
    common = {
        "size": args.size, "d_model": cfg.d_model, "heads": cfg.num_heads, "layers": cfg.num_encoder_layers,
        "d_ff": cfg.d_ff, "vocab": args.vocab, "dropout": cfg.dropout, "batch": args.batch,
        "min_len": args.min_len, "max_len": args.max_len, "dtype": args.dtype, "device": str(device),
        "compile": args.compile, "threads": torch.get_num_threads(),
        "padding": round(1 - (per_step_src + per_step_tgt) / (src_cells + tgt_cells), 3),
    }
    tok_s = {}
    for s in systems:
        step_s = statistics.median(times[s.name]) / args.steps
        tok_s[s.name] = (per_step_src + per_step_tgt) / step_s
        row = {
            "system": s.name, **common,
            "tok_s": round(tok_s[s.name], 1),
            "step_ms": round(1000 * step_s, 2),
            "step_ms_rounds": [round(1000 * t / args.steps, 2) for t in times[s.name]],
            "tflops": round(flops / step_s / 1e12, 4),
            "mfu": round(flops / step_s / peak, 4) if peak else None,
            "params": sum(p.numel() for p in {id(p): p for p in s.model.parameters()}.values()),
            "first_loss": round(first_loss[s.name], 4),
        }
        if s.name == "hf":
            row["attn_implementation"] = s.model.config._attn_implementation
        if device.type == "cuda":
            row["step_peak_mib"] = round(step_peak[s.name] / 2**20, 1)
            row["state_mib"] = round(state_bytes(s) / 2**20, 1)
        print(json.dumps(row), flush=True)

    summary = {"summary": True, **common, **{f"{n}_tok_s": round(v, 1) for n, v in tok_s.items()}}
    if "ours" in tok_s:
        for peer in ("torch", "hf"):
            if peer in tok_s:
                summary[f"speedup_vs_{peer}"] = round(tok_s["ours"] / tok_s[peer], 3)
        peers = [v for n, v in tok_s.items() if n in ("torch", "hf")]
        if peers:
            summary["speedup_vs_best_peer"] = round(tok_s["ours"] / max(peers), 3)
    import importlib.util

    hf_version = None
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        hf_version = transformers.__version__
    summary.update(torch=torch.__version__, transformers=hf_version, python=platform.python_version())
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
