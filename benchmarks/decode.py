"""Decoding speed: this project's cached search against its uncached path and HuggingFace generate.

    python benchmarks/decode.py --size small --batch 16 --new-tokens 64 --src-len 32

Prints one JSON object per line, one per strategy (greedy, beam-k), with output tokens per second
(``batch * new_tokens / seconds``, the median of ``--repeats`` timed runs after ``--warmup`` runs)
for

* ``ours_cached``: :func:`seq2seq.decoding.search.generate` over the KV cache,
* ``ours_uncached``: the same search recomputing the whole prefix every step (``use_cache=False``),
* ``hf_generate``: ``transformers.BartForConditionalGeneration.generate`` (KV cache on), random
  weights, same d_model / layers / heads / d_ff / vocabulary, same batch and source,

and the ratios ``speedup_vs_hf`` and ``speedup_vs_uncached`` of ``ours_cached`` to the others.
The greedy row also gives ``matmul_floor_tok_s``: the tokens per second of the decoder's weight
matmuls alone at the same batch (:func:`matmul_floor`), an upper bound for any implementation,
with ``ours_cached_of_floor`` (how close we are to it) and ``floor_vs_hf`` (the largest speedup
over HF that any decoder could show on this device).
Every system produces exactly ``--new-tokens`` tokens per sequence: EOS is blocked until then
(our ``min_len`` = the length limit, HF's ``min_new_tokens`` = ``max_new_tokens``), so random
weights cannot end sequences early. The runs of the three systems are interleaved, so a load
from other processes on the machine slows them alike.

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
    p.add_argument("--no-floor", action="store_true", help="skip the matmuls-only bound (greedy)")
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


def matmul_floor(size: dict, vocab: int, rows: int, n_new: int, device, dtype, repeats: int) -> float:
    """Output tokens/s if decoding did nothing but its weight matmuls (an upper bound for any system).

    Per new token, every decoder layer multiplies the ``rows`` current states by its self-attention
    QKV and output, cross-attention query and output, and feed-forward matrices, then the output
    projection to ``vocab``; this times exactly those ``F.linear`` calls, ``n_new`` times, with no
    attention, softmax, norms, cache or Python search logic.
    """
    d, ff = size["d_model"], size["d_ff"]
    shapes = [(d, 3 * d), (d, d), (d, d), (d, d), (d, ff), (ff, d)] * size["num_decoder_layers"] + [(d, vocab)]
    weights = [torch.randn(out, inp, device=device, dtype=dtype) for inp, out in shapes]
    inputs = {width: torch.randn(rows, width, device=device, dtype=dtype) for width in (d, ff)}

    def run() -> None:
        for _ in range(n_new):
            for w in weights:
                torch.nn.functional.linear(inputs[w.size(1)], w)

    with torch.inference_mode():
        run()
        seconds = statistics.median(timed(run, device) for _ in range(repeats))
    return rows * n_new / seconds


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
                lengths = {len(h[0].tokens) for h in out} if name.startswith("ours") else {out.size(1) - 1}
                if lengths != {n_new}:
                    sys.exit(f"{name} produced {sorted(lengths)} tokens per sequence instead of {n_new}")
            for _ in range(max(0, args.warmup - 1)):
                for run in runs.values():
                    run()
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, run in runs.items():  # interleaved: background load hits all alike
                    times[name].append(timed(run, device))

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
        if strategy == "greedy" and not args.no_floor:
            floor = matmul_floor(size, args.vocab, args.batch * beams, n_new, device, dtype, args.repeats)
            row["matmul_floor_tok_s"] = round(floor, 1)
            row["ours_cached_of_floor"] = round(tok_s["ours_cached"] / floor, 2)
            if "hf_generate" in tok_s:
                # No system can beat HF by more than this: its tokens/s over the matmuls-only bound.
                row["floor_vs_hf"] = round(floor / tok_s["hf_generate"], 2)
        if "ours_uncached" in tok_s:
            row["speedup_vs_uncached"] = round(tok_s["ours_cached"] / tok_s["ours_uncached"], 2)
        row.update(torch=torch.__version__, transformers=hf_version, python=platform.python_version())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
