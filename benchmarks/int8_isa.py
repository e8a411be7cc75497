"""int8 against float32 CTranslate2 exports, under every CPU instruction set this machine can emulate.

    python benchmarks/int8_isa.py --fp32 EXPORT_FP32 --int8 EXPORT_INT8 --src val.en --ref val.de
    python benchmarks/int8_isa.py ... --isa avx2            # one instruction-set profile only

CTranslate2 picks its kernels by the CPU's instruction set, and its int8 matrix products go through
oneDNN, which on a CPU without VNNI (AVX2, and AVX-512 before Cascade Lake) multiplies unsigned 8-bit
activations by signed 8-bit weights with ``vpmaddubsw``: pairs of products are summed in 16 bits and
saturate. So the same int8 model gives other outputs on an AVX2 machine than on one with VNNI, and a
toy model's near-tied logits flip. Each profile below is a set of environment variables that caps
CTranslate2's own kernels (``CT2_FORCE_CPU_ISA``) and oneDNN's (``ONEDNN_MAX_CPU_ISA``), so one
machine with AVX-512 VNNI runs the code paths of older ones:

===============  =====================================================================
avx512_vnni      Cascade Lake and later, Zen 4: int8 products accumulate in 32 bits
avx512           Skylake-SP: AVX-512 without VNNI (16-bit saturating pairs)
avx2             Haswell to Coffee Lake, Zen 1-3: AVX2 without VNNI (16-bit saturating pairs)
avx              Sandy/Ivy Bridge: no AVX2
generic          SSE4.1 only
===============  =====================================================================

A profile needs the instruction set on this CPU (``/proc/cpuinfo``); the others are reported as
``skipped``. Each profile runs in a fresh process (this script with ``--worker``): the variables are
read when the libraries load. For each it decodes ``--src`` greedily with both exports (our
tokenization and batching, :class:`seq2seq.inference.ct2_predictor.CT2Predictor`), scores both
against ``--ref`` (sacreBLEU), and force-decodes the float32 model's outputs with both models
(``score_batch``) to compare the log-probabilities of the same tokens. One JSON line per profile:

``bleu_fp32``, ``bleu_int8``, ``bleu_delta`` (int8 - fp32), ``identical``: the fraction of lines whose
int8 output equals the float32 one; ``logprob_mean_abs``, ``logprob_p99_abs``, ``logprob_max_abs``:
the per-token differences |int8 - fp32| of the forced log-probabilities (EOS included);
``onednn_isa``: the instruction set oneDNN reported using, and ``capped``: whether it is the
profile's (so a capped profile is checked, not assumed). Needs ``pip install 'seq2seq[export]'``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

# profile -> (CT2_FORCE_CPU_ISA, ONEDNN_MAX_CPU_ISA, the /proc/cpuinfo flags it needs)
PROFILES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "avx512_vnni": ("AVX512", "AVX512_CORE_VNNI", ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni")),
    "avx512": ("AVX512", "AVX512_CORE", ("avx512f", "avx512bw", "avx512vl", "avx512dq")),
    "avx2": ("AVX2", "AVX2", ("avx2", "fma")),
    "avx": ("AVX", "AVX", ("avx",)),
    "generic": ("GENERIC", "SSE41", ("sse4_1",)),
}


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (empty where /proc/cpuinfo is absent)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def supported_profiles(flags: set[str] | None = None) -> list[str]:
    """The profiles this CPU can run, newest instruction set first."""
    flags = cpu_flags() if flags is None else flags
    return [name for name, (_, _, needs) in PROFILES.items() if set(needs) <= flags]


def profile_env(profile: str) -> dict[str, str]:
    """The environment variables that cap CTranslate2 and oneDNN to ``profile``."""
    ct2_isa, onednn_isa, _ = PROFILES[profile]
    return {"CT2_FORCE_CPU_ISA": ct2_isa, "ONEDNN_MAX_CPU_ISA": onednn_isa, "DNNL_MAX_CPU_ISA": onednn_isa}


def onednn_reports(profile: str, onednn_isa: str | None) -> bool:
    """Whether oneDNN's reported instruction set (``ONEDNN_VERBOSE``) is the one ``profile`` caps it to."""
    if not onednn_isa:
        return False
    vnni = "DL Boost" in onednn_isa or "VNNI" in onednn_isa
    family = ("AVX-512" if "AVX-512" in onednn_isa else "AVX2" if "AVX2" in onednn_isa
              else "AVX" if "AVX" in onednn_isa else "SSE4.1" if "SSE4.1" in onednn_isa else None)
    wanted = {"avx512_vnni": ("AVX-512", True), "avx512": ("AVX-512", False), "avx2": ("AVX2", False),
              "avx": ("AVX", False), "generic": ("SSE4.1", False)}
    return (family, vnni) == wanted[profile]


def compare(fp32_dir: str, int8_dir: str, sources: list[str], references: list[str], threads: int) -> dict:
    """Greedy BLEU of both exports and the forced log-probabilities of the float32 outputs under both."""
    import numpy as np

    from seq2seq.decoding.search import DecodingConfig
    from seq2seq.inference.ct2_predictor import CT2Predictor
    from seq2seq.metrics.text_metrics import translation_scores

    greedy = DecodingConfig(strategy="greedy")
    predictors = {name: CT2Predictor(folder, greedy, threads=threads)
                  for name, folder in (("fp32", fp32_dir), ("int8", int8_dir))}
    tokenizer = predictors["fp32"].tokenizer
    src_ids = predictors["fp32"].source_ids(sources)
    outputs = {name: p.generate(p._padded(src_ids)) for name, p in predictors.items()}
    texts = {name: p.texts([h[0] for h in outputs[name]]) for name, p in predictors.items()}
    bleu = {name: translation_scores(texts[name], references)["bleu"] for name in predictors}

    # Forced decoding of the float32 outputs: the same tokens, scored by both models.
    src_pieces = [[tokenizer.src.id_to_piece(i) for i in ids if i != tokenizer.eos_id] for ids in src_ids]
    tgt_pieces = [[tokenizer.tgt.id_to_piece(i) for i in h[0].tokens] for h in outputs["fp32"]]
    logprobs = {name: [r.log_probs for r in p.translator.score_batch(src_pieces, tgt_pieces)]
                for name, p in predictors.items()}
    deltas = np.abs(np.concatenate([np.asarray(a) - np.asarray(b)
                                    for a, b in zip(logprobs["int8"], logprobs["fp32"])]))
    same = sum(a[0].tokens == b[0].tokens for a, b in zip(outputs["fp32"], outputs["int8"])) / len(sources)
    return {"lines": len(sources), "bleu_fp32": round(bleu["fp32"], 2), "bleu_int8": round(bleu["int8"], 2),
            "bleu_delta": round(bleu["int8"] - bleu["fp32"], 2), "identical": round(same, 4),
            "tokens_scored": int(deltas.size), "logprob_mean_abs": round(float(deltas.mean()), 5),
            "logprob_p99_abs": round(float(np.quantile(deltas, 0.99)), 5),
            "logprob_max_abs": round(float(deltas.max()), 5)}


def run_profile(profile: str, args: argparse.Namespace) -> dict:
    """One profile in a fresh process, its environment capped; its JSON result."""
    if profile not in supported_profiles():
        return {"isa": profile, "skipped": "this CPU lacks " + " ".join(PROFILES[profile][2])}
    command = [sys.executable, __file__, "--worker", "--fp32", args.fp32, "--int8", args.int8, "--src", args.src,
               "--ref", args.ref, "--threads", str(args.threads), "--max-lines", str(args.max_lines)]
    env = {**os.environ, **profile_env(profile), "ONEDNN_VERBOSE": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        return {"isa": profile, "error": proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]}
    result = json.loads(next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("{")))
    isa = [line.split("isa:", 1)[1] for line in proc.stdout.splitlines() if ",cpu,isa:" in line]
    onednn_isa = isa[0] if isa else None
    return {"isa": profile, **profile_env(profile), "onednn_isa": onednn_isa,
            "capped": onednn_reports(profile, onednn_isa), **result}


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fp32", required=True, help="a seq2seq-export folder with float32 weights")
    parser.add_argument("--int8", required=True, help="the same checkpoint exported with quantization=int8")
    parser.add_argument("--src", required=True, help="source lines")
    parser.add_argument("--ref", required=True, help="reference lines")
    parser.add_argument("--isa", default="all", help=f"all, or a comma-separated list of {', '.join(PROFILES)}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-lines", type=int, default=0, help="the first N lines only (0: all)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per profile")
    parser.add_argument("--out", default=None, help="also write the results here (JSON)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sources = Path(args.src).read_text(encoding="utf-8").splitlines()
    references = Path(args.ref).read_text(encoding="utf-8").splitlines()
    if args.max_lines:
        sources, references = sources[: args.max_lines], references[: args.max_lines]
    if args.worker:
        print(json.dumps(compare(args.fp32, args.int8, sources, references, args.threads)), flush=True)
        return []
    profiles = list(PROFILES) if args.isa == "all" else args.isa.split(",")
    unknown = sorted(set(profiles) - set(PROFILES))
    if unknown:
        parser.error(f"--isa: unknown profile(s) {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    results = []
    for profile in profiles:
        results.append(run_profile(profile, args))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
