"""Training speed: this project's step against torch.nn.Transformer and HuggingFace BART.

    python benchmarks/train_throughput.py --device cpu --size small
    python benchmarks/train_throughput.py --lengths uniform --batch 32 --min-len 16 --max-len 32

Times an optimizer-step loop (forward, label-smoothed loss, backward, gradient clipping, AdamW
step) of several systems of identical size on identical batches, in one run:

* ``ours``: :class:`seq2seq.models.transformer.Seq2SeqTransformer` trained as ``seq2seq.train``
  trains it (:func:`seq2seq.models.loss.sequence_loss`): position-wise layers on real tokens only
  (:meth:`Seq2SeqTransformer.target_states` on packed layouts), logits of real targets only through the fused chunked
  label-smoothed cross-entropy, the project's optimizer
  (:func:`seq2seq.training.optimizer.build_optimizer`);
* ``ours_plain``: the same model through the padded forward with full logits and
  ``F.cross_entropy`` (the peers' loss): what our implementation does without skipping padding;
* ``torch``: ``torch.nn.Transformer`` (post-LN, ``batch_first``) with the same embeddings (our
  :class:`Embedding`: one table shared by source and target, scaled by sqrt(d), sinusoidal
  positions, dropout) and output matrix tied to it; attention dropout set to ours (0);
* ``hf``: ``transformers.BartForConditionalGeneration`` (``attn_implementation=sdpa``), random
  weights, same d_model / layers / heads / d_ff / vocabulary / dropout (residual and activation
  dropout = ``dropout``, attention dropout as ours), scaled and tied embeddings, as many learned
  positions as the batches need.

A further ablation (``--systems``): ``ours_padded`` (padded forward, fused loss over real targets).

The peers compute the usual loss: ``F.cross_entropy`` of the full ``(B, T, V)`` logits with
``ignore_index=pad`` and the same label smoothing. Every system divides by the number of real
target tokens, clips gradients to norm 1 (as ``trainer.gradient_clip_val``) and uses the same
AdamW (:func:`build_optimizer`: fused where torch has the kernel, on CUDA and CPU).

Batches (``--lengths``), the same for every system:

* ``multi30k`` (default): the (source, target) lengths of the Multi30k en-de training set
  (``--data-root``, default ``../shared/data/multi30k``), tokenized as ``experiment=multi30k_en_de``
  does (joint 8k BPE; source + EOS, target + BOS/EOS), batched by the project's
  :class:`seq2seq.data.sampler.TokenBudgetBatchSampler` with ``--max-tokens`` (3072, the
  experiment's budget): about 3.6 % padding, as in training. ``--batches`` batches are taken from
  as many equal strata of the length-sorted batch list (short, medium and long ones), each the one
  whose padding is nearest its stratum's, so that they pad about as much as the epoch. Where the
  corpus is absent, the ``lognormal`` lengths are used instead (the row says so);
* ``lognormal``: as many length pairs drawn (``--seed``) from a bivariate log-normal fitted to those
  Multi30k lengths (log means 2.682 / 2.703, log std 0.295 / 0.329, correlation 0.859), batched
  the same way;
* ``uniform`` (the former default): ``--batch`` pairs per batch, source and target lengths drawn
  uniformly from ``[--min-len, --max-len]``, right-padded to the longest of the batch, no
  bucketing (~25 % padding at 16-32).

``--compile ours|all`` compiles the step's forward + loss with dynamic shapes (one graph for every
batch shape) of ours or of every system; on a 2-core CPU compiling made ours slower (size small:
312 ms a step compiled, 248 ms eager), hence ``speed.compile=auto`` is CUDA only. Summary ratios
compare like with like: ``--compile off`` (every system eager) or ``all`` (every system compiled);
``ours`` alone compiled gets none.

Output: one JSON object per system, then one summary object. ``tok_s`` counts source + target
tokens without padding per second: the median over ``--rounds`` timed rounds of ``--steps`` steps
each (by default one pass over the ``--batches`` batches), every round's rate from its own tokens;
the systems' rounds are interleaved, the order rotating, so background load slows them alike. ``padding`` is the padding fraction of the batches (the
same for every system); ``padding_computed`` the fraction of the positions that the system's
position-wise layers and logits run on that are padding (0 for ``ours``, which skips them;
attention still sees the padded layout in every system). The summary's ``ours`` and
``ours_plain`` are the ratios of those systems' tokens per second to the faster peer's
(``faster_peer``: ``torch`` or ``hf``); ``speedup_vs_torch`` / ``speedup_vs_hf`` are ``ours``'
ratios to each peer. ``tflops`` and ``mfu`` use the model FLOP count of
:func:`seq2seq.callbacks.throughput.flops_per_token` over the padded lengths (the same for all
systems, whatever they skip) and the device peak of :func:`device_peak_flops` (``--peak-tflops``
on CPUs). On CUDA, ``step_peak_mib`` is the memory one step allocates above what was allocated
before it (activations, logits, gradients, optimizer temporaries) and ``state_mib`` the parameters
+ gradients + AdamW state.

``--profile N``: after the timed rounds, run ``torch.profiler`` over N steps of every system and
print each system's top operators by self time (stderr), plus a JSON line per system
(``"profile": true``) with the top operators' self milliseconds per step.

Needs ``pip install transformers`` for the HF column (``--systems ours,torch`` skips it).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn

from seq2seq.callbacks.throughput import device_peak_flops, flops_per_token
from seq2seq.data.sampler import TokenBudgetBatchSampler
from seq2seq.models.loss import plain_sequence_loss, sequence_loss, source_index, target_index
from seq2seq.models.transformer import Embedding, Seq2SeqTransformer, TransformerConfig
from seq2seq.training.compile import compile_dynamic
from seq2seq.training.optimizer import build_optimizer

REPO = Path(__file__).resolve().parents[1]
PAD, BOS, EOS = 0, 2, 3
DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="small", choices=["tiny", "small", "base", "big"], help="conf/model/size/*.yaml")
    p.add_argument(
        "--lengths", default="multi30k", choices=["multi30k", "lognormal", "uniform"],
        help="multi30k: the corpus' training lengths in token-budget batches (lognormal where the corpus "
        "is absent); lognormal: fitted to them; uniform: --batch pairs of --min-len..--max-len tokens",
    )
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "multi30k"),
                   help="Multi30k {train}.{en,de} for --lengths multi30k")
    p.add_argument("--max-tokens", type=int, default=3072,
                   help="token budget per batch (data.max_tokens; experiment=multi30k_en_de: 3072)")
    p.add_argument("--batch", type=int, default=32, help="--lengths uniform: sentence pairs per batch")
    p.add_argument("--min-len", type=int, default=16, help="--lengths uniform: shortest source/target (tokens)")
    p.add_argument("--max-len", type=int, default=32, help="--lengths uniform: longest source/target (tokens)")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="bf16: autocast mixed precision")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per timed round (default: --batches)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per system (median taken)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per system first")
    p.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument(
        "--compile", default="off", choices=["off", "ours", "all"],
        help="torch.compile (dynamic shapes) the step's forward + loss of ours only, or of every system",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--systems", default="ours,ours_plain,torch,hf",
        help="comma-separated: ours, torch, hf, and our ablations ours_plain (padded forward, full logits, "
        "F.cross_entropy) and ours_padded (padded forward, fused loss over real targets)",
    )
    p.add_argument("--dropout", type=float, default=None, help="default: the size's dropout")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping (0: none)")
    p.add_argument("--loss-chunk", type=int, default=None, help="our fused loss's tokens per chunk")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (CPUs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="profile N steps of every system after timing; print the top operators")
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


# Multi30k en-de training lengths (joint 8k BPE; source + EOS, target + BOS/EOS): a bivariate
# log-normal fitted to them, for machines without the corpus.
LOGNORMAL_MULTI30K = {"mean": (2.682, 2.703), "std": (0.2945, 0.3288), "corr": 0.8586, "n": 29000,
                      "min": (5, 4), "max": (49, 53)}


def multi30k_lengths(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Source (+EOS) and target (+BOS/EOS) lengths of Multi30k train.en/train.de, tokenized as the
    multi30k experiment tokenizes them (joint 8k BPE trained on the training split)."""
    from seq2seq.data.tokenizer import Tokenizer

    en = (root / "train.en").read_text(encoding="utf-8").splitlines()
    de = (root / "train.de").read_text(encoding="utf-8").splitlines()
    tok = Tokenizer.train(en, de, 8000, joint=True, model_type="bpe")
    src = np.array([len(ids) for ids in tok.encode_source(en)])  # EOS included
    tgt = np.array([len(ids) + 1 for ids in tok.encode_target(de)])  # tgt_in = BOS + target
    return src, tgt


def lognormal_lengths(seed: int) -> tuple[np.ndarray, np.ndarray]:
    p = LOGNORMAL_MULTI30K
    (s1, s2), rho = p["std"], p["corr"]
    cov = [[s1 * s1, rho * s1 * s2], [rho * s1 * s2, s2 * s2]]
    logs = np.random.default_rng(seed).multivariate_normal(p["mean"], cov, size=p["n"])
    lengths = np.rint(np.exp(logs)).astype(np.int64)
    lengths = np.clip(lengths, p["min"], p["max"])
    return lengths[:, 0], lengths[:, 1]


def length_batches(args) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """(source lengths, target lengths) of each batch, and where the lengths come from."""
    if args.lengths == "uniform":
        g = torch.Generator().manual_seed(args.seed)
        out = []
        for _ in range(args.batches):
            src = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=g).numpy()
            tgt = torch.randint(args.min_len, args.max_len + 1, (args.batch,), generator=g).numpy()
            out.append((src, tgt))
        return out, f"uniform {args.min_len}-{args.max_len}, {args.batch} pairs a batch"
    root = Path(args.data_root)
    if args.lengths == "multi30k" and (root / "train.en").is_file() and (root / "train.de").is_file():
        src, tgt = multi30k_lengths(root)
        source = f"multi30k train ({root})"
    else:
        if args.lengths == "multi30k":
            print(f"{root} has no train.en/train.de: log-normal lengths fitted to Multi30k instead", file=sys.stderr)
        src, tgt = lognormal_lengths(args.seed)
        source = "lognormal fitted to multi30k train"
    sampler = TokenBudgetBatchSampler(src, tgt, args.max_tokens, shuffle=False, seed=args.seed)
    everything = list(sampler)  # shortest first

    def real_and_cells(batches):
        real = sum(int(src[b].sum() + tgt[b].sum()) for b in batches)
        return real, sum(len(b) * int(src[b].max() + tgt[b].max()) for b in batches)

    # One batch from each of --batches equal strata of the length-sorted list: the one whose padding
    # is nearest its stratum's, so that short, medium and long batches and the epoch's padding are
    # all represented.
    picks = []
    for stratum in np.array_split(np.arange(len(everything)), min(args.batches, len(everything))):
        real, cells = real_and_cells([everything[i] for i in stratum])
        pads = [1 - np.divide(*real_and_cells([everything[i]])) for i in stratum]
        picks.append(int(stratum[int(np.argmin(np.abs(np.array(pads) - (1 - real / cells))))]))
    real, cells = real_and_cells(everything)
    note = f"{source}, token budget {args.max_tokens}, {len(everything)} batches with {1 - real / cells:.2%} padding"
    return [(src[everything[i]], tgt[everything[i]]) for i in picks], note


def make_batches(args, device: torch.device) -> tuple[list[Batch], str]:
    g = torch.Generator().manual_seed(args.seed)
    batches = []
    lengths, source = length_batches(args)
    for src_lens, tgt_lens in lengths:
        n = len(src_lens)
        src = torch.full((n, int(src_lens.max())), PAD)
        tgt_in = torch.full((n, int(tgt_lens.max())), PAD)
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
    return batches, source


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


def build_systems(
    args, cfg: TransformerConfig, device: torch.device, names: list[str], max_len: int
) -> list[System]:
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
            model = build_hf(cfg, max_len + 2)

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


def profile_systems(systems: list[System], steps: dict, batches: list[Batch], args, device) -> None:
    """torch.profiler over ``args.profile`` steps of each system: top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for s in systems:
        run = [batches[i % len(batches)] for i in range(args.profile)]
        sync(device)
        with profile(activities=activities) as prof:
            for b in run:
                steps[s.name](b)
            sync(device)
        averages = prof.key_averages()
        print(f"\n=== {s.name}: {args.profile} step(s), top operators by self time ===", file=sys.stderr)
        print(averages.table(sort_by=sort, row_limit=25, max_name_column_width=60), file=sys.stderr)
        attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        top = sorted(averages, key=lambda e: getattr(e, attr), reverse=True)[:15]
        total = sum(getattr(e, attr) for e in averages)
        row = {
            "profile": True, "system": s.name, "steps": args.profile,
            "self_ms_per_step": round(total / 1e3 / args.profile, 1),
            "top_ms_per_step": {e.key: round(getattr(e, attr) / 1e3 / args.profile, 2) for e in top},
        }
        print(json.dumps(row), flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.steps = args.steps or args.batches  # by default every round covers each batch once
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = model_size(args.size)
    dropout = size.pop("dropout")
    dropout = dropout if args.dropout is None else args.dropout
    batches, length_source = make_batches(args, device)
    max_len = max(max(b.src.size(1), b.tgt_in.size(1)) for b in batches)
    cfg = TransformerConfig(
        **{**model_defaults(), **size}, dropout=dropout, src_vocab_size=args.vocab, tgt_vocab_size=args.vocab,
        max_positions=max(1024, max_len + 2), pad_id=PAD, bos_id=BOS, eos_id=EOS,
    )
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    systems = build_systems(args, cfg, device, names, max_len)
    steps = {s.name: make_step(s, args, device) for s in systems}

    # Warm-up (and compilation): the first losses also show the systems start alike.
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

    # Timed rounds, interleaved (the order rotates each round); each round's rate from its own tokens.
    rates: dict[str, list[float]] = {s.name: [] for s in systems}
    step_ms: dict[str, list[float]] = {s.name: [] for s in systems}
    cursor = 0
    for r in range(args.rounds):
        order = systems[r % len(systems):] + systems[: r % len(systems)]
        round_batches = [batches[(cursor + i) % len(batches)] for i in range(args.steps)]
        round_tokens = sum(b.n_src + b.n_tgt for b in round_batches)
        cursor += args.steps
        for s in order:
            step = steps[s.name]
            sync(device)
            start = time.perf_counter()
            for b in round_batches:
                loss = step(b)
            sync(device)
            seconds = time.perf_counter() - start
            rates[s.name].append(round_tokens / seconds)
            step_ms[s.name].append(1000 * seconds / args.steps)
            if not math.isfinite(float(loss)):
                raise SystemExit(f"{s.name}: the loss became non-finite")

    per_step_src = sum(b.n_src for b in batches) / len(batches)
    per_step_tgt = sum(b.n_tgt for b in batches) / len(batches)
    src_cells = sum(b.src.numel() for b in batches) / len(batches)
    tgt_cells = sum(b.tgt_out.numel() for b in batches) / len(batches)
    sentences = sum(b.src.size(0) for b in batches) / len(batches)
    with torch.device("meta"):  # the count needs the layers' shapes, not their weights
        ours = Seq2SeqTransformer(cfg)
    flops_per_token_pair = flops_per_token(ours, src_cells / sentences, tgt_cells / sentences)
    peak = device_peak_flops(device, args.peak_tflops)
    padding = 1 - (per_step_src + per_step_tgt) / (src_cells + tgt_cells)
    common = {
        "size": args.size, "d_model": cfg.d_model, "heads": cfg.num_heads, "layers": cfg.num_encoder_layers,
        "d_ff": cfg.d_ff, "vocab": args.vocab, "dropout": cfg.dropout, "lengths": length_source,
        "batches": len(batches), "sentences_per_batch": round(sentences, 1),
        "tokens_per_batch": round(per_step_src + per_step_tgt, 1), "max_len": max_len,
        "dtype": args.dtype, "device": str(device), "compile": args.compile, "threads": torch.get_num_threads(),
        "padding": round(padding, 4),
    }
    if args.lengths == "uniform":
        common.update(batch=args.batch, min_len=args.min_len, max_len=args.max_len)
    tok_s = {}
    for s in systems:
        tok_s[s.name] = statistics.median(rates[s.name])
        # The FLOPs of the median-rate round's tokens, at the batches' average padded lengths.
        flops_per_s = flops_per_token_pair.training(per_step_src, per_step_tgt) / (per_step_src + per_step_tgt) * tok_s[s.name]
        row = {
            "system": s.name, **common,
            "padding_computed": 0.0 if s.name == "ours" else round(padding, 4),
            "tok_s": round(tok_s[s.name], 1),
            "step_ms": round(statistics.median(step_ms[s.name]), 2),
            "step_ms_rounds": [round(t, 2) for t in step_ms[s.name]],
            "tflops": round(flops_per_s / 1e12, 4),
            "mfu": round(flops_per_s / peak, 4) if peak else None,
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
    peers = {n: v for n, v in tok_s.items() if n in ("torch", "hf")}
    if peers and args.compile != "ours":  # like with like: every system eager, or every system compiled
        faster = max(peers, key=peers.get)
        summary["faster_peer"] = faster
        for name in ("ours", "ours_plain"):
            if name in tok_s:
                summary[name] = round(tok_s[name] / peers[faster], 3)
        if "ours" in tok_s:
            for peer, value in peers.items():
                summary[f"speedup_vs_{peer}"] = round(tok_s["ours"] / value, 3)
    elif peers:
        summary["ratios"] = "none: only ours is compiled (run with --compile off or all for ratios)"
    import importlib.util

    hf_version = None
    if importlib.util.find_spec("transformers") is not None:
        import transformers

        hf_version = transformers.__version__
    summary.update(torch=torch.__version__, transformers=hf_version, python=platform.python_version())
    print(json.dumps(summary), flush=True)
    if args.profile:
        profile_systems(systems, steps, batches, args, device)


if __name__ == "__main__":
    main()
