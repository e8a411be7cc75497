"""Decoding speed: this project's cached search against its uncached path and HuggingFace generate.

    python benchmarks/decode.py --size small --batch 16 --new-tokens 64 --src-len 32

Prints one JSON object per line, one per strategy (greedy, beam-k), with output tokens per second
(``batch * new_tokens / seconds``, the median of ``--repeats`` timed runs after ``--warmup`` runs)
for

* ``ours_cached``: :func:`seq2seq.decoding.search.generate` over the KV cache,
* ``ours_uncached``: the same search recomputing the whole prefix every step (``use_cache=False``),
* ``hf_generate``: ``transformers.BartForConditionalGeneration.generate`` (KV cache on), random
  weights, same d_model / layers / heads / d_ff / vocabulary, same batch and source,

* ``eager_gemm_bound``: the model's weight matmuls alone, as eager ``F.linear`` calls of the
  same shapes (:func:`eager_gemm_bound`): the encoder once, the cross-attention keys/values once,
  then per new token every decoder layer's projections and the vocabulary projection,

and the ratios ``speedup_vs_hf`` and ``speedup_vs_uncached`` of ``ours_cached`` to the others,
``ours_cached_of_bound`` (how close we are to the eager-GEMM bound) and ``bound_vs_hf`` (its
tokens per second over HF's). The bound leaves out everything but those matmuls: embeddings,
attention scores, softmax and weighted sums over the cache, norms, residuals and activations,
the log-softmax / argmax / top-k over the vocabulary, cache writes, beam reordering and Python
overhead. It bounds implementations that run these GEMMs eagerly, one ``F.linear`` at a time; it
is no bound for every implementation: prepacked weights (oneDNN), fused or compiled kernels
(``torch.compile``, TensorRT) or lower precision can run the same multiplies faster.
Every system produces exactly ``--new-tokens`` tokens per sequence: EOS is blocked until then
(our ``min_len`` = the length limit, HF's ``min_new_tokens`` = ``max_new_tokens``), so random
weights cannot end sequences early. The runs of all systems, the bound included, are interleaved
(the order rotates every repeat), so a load from other processes on the machine slows them alike.
``hf_attn_implementation`` records the attention HF ran (e.g. ``sdpa``, ``eager``).

Needs ``pip install transformers`` for the HF column (``--no-hf`` skips it).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from seq2seq.decoding.search import DecodingConfig, generate
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig

REPO = Path(__file__).resolve().parents[1]
PAD, BOS, EOS = 0, 2, 3
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size", default="small", choices=["tiny", "small", "base", "big"], help="conf/model/size/*.yaml"
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=64, help="output tokens per sequence (forced)")
    p.add_argument("--src-len", type=int, default=32, help="source tokens per sequence")
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--beam", type=int, default=4, help="beam size of the beam rows")
    p.add_argument("--strategies", default="greedy,beam", help="comma-separated: greedy, beam")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-hf", action="store_true", help="skip HuggingFace generate")
    p.add_argument("--no-uncached", action="store_true", help="skip our uncached path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-bound", action="store_true", help="skip the eager-GEMM bound")
    return p.parse_args(argv)


def model_size(size: str) -> dict:
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "model" / "size" / f"{size}.yaml"))
    return {k: cfg[k] for k in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "d_ff")}


def build_ours(size: dict, vocab: int, max_positions: int) -> Seq2SeqTransformer:
    cfg = TransformerConfig(
        src_vocab_size=vocab,
        tgt_vocab_size=vocab,
        dropout=0.0,
        max_positions=max_positions,
        pad_id=PAD,
        bos_id=BOS,
        eos_id=EOS,
        **size,
    )
    return Seq2SeqTransformer(cfg).eval()


def build_hf(size: dict, vocab: int, max_positions: int):
    from transformers import BartConfig, BartForConditionalGeneration
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = BartConfig(
        vocab_size=vocab,
        max_position_embeddings=max_positions,
        d_model=size["d_model"],
        encoder_layers=size["num_encoder_layers"],
        decoder_layers=size["num_decoder_layers"],
        encoder_attention_heads=size["num_heads"],
        decoder_attention_heads=size["num_heads"],
        encoder_ffn_dim=size["d_ff"],
        decoder_ffn_dim=size["d_ff"],
        activation_function="relu",
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        decoder_start_token_id=BOS,
        forced_eos_token_id=None,
        scale_embedding=True,
    )
    return BartForConditionalGeneration(cfg).eval()


def eager_gemm_bound(size: dict, vocab: int, batch: int, src_len: int, beams: int, n_new: int, device, dtype):
    """A function that runs only the weight matmuls of encoding ``batch`` sources of ``src_len``
    tokens and decoding ``n_new`` tokens for ``batch * beams`` hypotheses, as eager ``F.linear``.

    Once per call: every encoder layer's QKV, output and feed-forward projections over the
    ``batch * src_len`` source states, and every decoder layer's cross-attention key/value
    projection of them (computed once, before the beams are expanded). Per new token: every decoder
    layer's self-attention QKV and output, cross-attention query and output and feed-forward
    projections, then the projection to ``vocab``, over ``batch`` rows for the first token and
    ``batch * beams`` after it (the beams fork from the first step). Nothing else (see the module
    docstring for what that leaves out).
    """
    d, ff = size["d_model"], size["d_ff"]
    encoder = [(d, 3 * d), (d, d), (d, ff), (ff, d)] * size["num_encoder_layers"]
    cross_kv = [(d, 2 * d)] * size["num_decoder_layers"]
    decoder = [(d, 3 * d), (d, d), (d, d), (d, d), (d, ff), (ff, d)] * size["num_decoder_layers"] + [(d, vocab)]

    def weights(shapes):
        return [torch.randn(out, inp, device=device, dtype=dtype) for inp, out in shapes]

    w_enc, w_kv, w_dec = weights(encoder), weights(cross_kv), weights(decoder)
    source = {w: torch.randn(batch * src_len, w, device=device, dtype=dtype) for w in (d, ff)}
    first = {w: torch.randn(batch, w, device=device, dtype=dtype) for w in (d, ff)}
    later = {w: torch.randn(batch * beams, w, device=device, dtype=dtype) for w in (d, ff)}
    linear = torch.nn.functional.linear

    def run() -> None:
        for w in w_enc + w_kv:
            linear(source[w.size(1)], w)
        for step in range(n_new):
            rows = first if step == 0 else later
            for w in w_dec:
                linear(rows[w.size(1)], w)

    return run


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    size = model_size(args.size)
    n_new = args.new_tokens
    max_positions = max(1024, args.src_len + n_new + 8)

    src = torch.randint(EOS + 1, args.vocab, (args.batch, args.src_len))
    src[:, -1] = EOS
    src = src.to(device)
    attention_mask = torch.ones_like(src)

    ours = build_ours(size, args.vocab, max_positions).to(device=device, dtype=dtype)
    hf = None if args.no_hf else build_hf(size, args.vocab, max_positions).to(device=device, dtype=dtype)
    hf_version = None
    if hf is not None:
        import transformers

        hf_version = transformers.__version__

    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        beams = args.beam if strategy == "beam" else 1
        # a = 0, b = min_len = n_new: exactly n_new tokens per hypothesis, EOS never earlier.
        dec = {
            "strategy": strategy,
            "beam_size": beams,
            "n_best": 1,
            "max_len_a": 0.0,
            "max_len_b": n_new,
            "min_len": n_new,
            "alpha": 1.0,
        }
        runs = {"ours_cached": lambda d=dec: generate(ours, src, DecodingConfig(**d, use_cache=True))}
        if not args.no_uncached:
            runs["ours_uncached"] = lambda d=dec: generate(ours, src, DecodingConfig(**d, use_cache=False))
        if not args.no_bound:
            runs["eager_gemm_bound"] = eager_gemm_bound(
                size, args.vocab, args.batch, args.src_len, beams, n_new, device, dtype
            )
        if hf is not None:
            runs["hf_generate"] = lambda b=beams: hf.generate(
                input_ids=src,
                attention_mask=attention_mask,
                num_beams=b,
                do_sample=False,
                min_new_tokens=n_new,
                max_new_tokens=n_new,
                use_cache=True,
                length_penalty=1.0,
                early_stopping=False,
                no_repeat_ngram_size=0,
            )

        with torch.inference_mode():
            # Check that every system really produces n_new tokens per sequence.
            for name, run in runs.items():
                out = run()
                if name == "eager_gemm_bound":
                    continue
                lengths = {len(h[0].tokens) for h in out} if name.startswith("ours") else {out.size(1) - 1}
                if lengths != {n_new}:
                    sys.exit(f"{name} produced {sorted(lengths)} tokens per sequence instead of {n_new}")
            for _ in range(max(0, args.warmup - 1)):
                for run in runs.values():
                    run()
            times: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            for r in range(args.repeats):
                # Interleaved, the order rotating: background load hits every system alike.
                for name in names[r % len(names):] + names[: r % len(names)]:
                    times[name].append(timed(runs[name], device))

        tok_s = {name: args.batch * n_new / statistics.median(t) for name, t in times.items()}
        row = {
            "strategy": strategy if strategy == "greedy" else f"beam-{beams}",
            "size": args.size,
            **size,
            "vocab": args.vocab,
            "batch": args.batch,
            "src_len": args.src_len,
            "new_tokens": n_new,
            "dtype": args.dtype,
            "device": str(device),
            "threads": torch.get_num_threads(),
            **{f"{name}_tok_s": round(v, 1) for name, v in tok_s.items()},
            **{f"{name}_s_median": round(statistics.median(t), 4) for name, t in times.items()},
        }
        if "hf_generate" in tok_s:
            row["speedup_vs_hf"] = round(tok_s["ours_cached"] / tok_s["hf_generate"], 2)
        if "eager_gemm_bound" in tok_s:
            bound = tok_s["eager_gemm_bound"]
            row["ours_cached_of_bound"] = round(tok_s["ours_cached"] / bound, 2)
            if "hf_generate" in tok_s:
                # The most an implementation running these GEMMs eagerly could gain over HF here.
                row["bound_vs_hf"] = round(bound / tok_s["hf_generate"], 2)
        if hf is not None:
            row["hf_attn_implementation"] = hf.config._attn_implementation
        if "ours_uncached" in tok_s:
            row["speedup_vs_uncached"] = round(tok_s["ours_cached"] / tok_s["ours_uncached"], 2)
        row.update(torch=torch.__version__, transformers=hf_version, python=platform.python_version())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
