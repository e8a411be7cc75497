"""End-to-end translation speed and quality: our PyTorch search against the exported CTranslate2 model.

    python benchmarks/translate_e2e.py --ckpt RUN/checkpoints/best.ckpt --data ../shared/data/multi30k
    python benchmarks/translate_e2e.py --data ../shared/data/multi30k --train-minutes 5   # trains one first
    python benchmarks/translate_e2e.py --quick --ckpt PATH --data DIR --split test        # seconds (the test)

Translates a corpus split (default: the Multi30k validation set, ``val.en`` -> ``val.de``, 1,014
lines) as a user would, lines in and detokenized text out, with

* ``ours``: :class:`seq2seq.inference.predictor.Predictor` (``translate``: tokenization, length-sorted
  batches of ``--batch-sizes``, our cached greedy / beam search in float32 with the linear layers
  packed for oneDNN as ``seq2seq-translate`` loads them, detokenization);
* ``ours_int8``: the same with ``quantize="int8"`` (:mod:`seq2seq.inference.quantize`: every linear
  layer in int8), CPU only; compared with ``ct2_int8``;
* ``ct2_fp32`` and ``ct2_int8``, the speed peers: the checkpoint exported by ``seq2seq-export`` with
  float32 and int8 weights, called as CTranslate2's users call it (``CT2Predictor(...,
  engine_defaults=True)``): ``translate_batch(batch, beam_size=B, max_decoding_length=limit)``, its own
  length penalty, one hypothesis, no token suppression; the same tokenization and batches as ours;
* ``ct2_fp32_exact``, the parity check: the float32 export set up to reproduce our search token for
  token (``num_hypotheses=B``, a neutral length penalty and our GNMT re-ranking, PAD/BOS
  suppressed), which costs CTranslate2 work ours does not do, so it is not a speed peer.
  Every CTranslate2 system: one ``translate_batch`` call per batch, with the batch's largest limit
  (``--exact-limits``: one call per distinct limit, exactly ours; only sentences that reach their
  limit can differ). Rows name their call (``ct2_call``); the summary describes both.

torch and CTranslate2 get the same number of threads (``--threads``: ``torch.set_num_threads`` and
CTranslate2's ``intra_threads``; one translation at a time). Each system runs in a process of its
own (this script with ``--worker``), driven over a pipe: in one process, CTranslate2's OpenMP
threads and torch's compete for the two cores after each other's passes, and our passes ran
25-40 % slower than alone. Each row is one (system, strategy, batch size): ``sent_s`` (sentences
per second) and ``tgt_tok_s`` (target tokens per second, EOS included, of the best hypotheses)
are the median of ``--rounds`` timed passes over the whole split, timed inside the worker; the
systems' passes are interleaved, the order rotating every round, so background load slows them
alike. ``bleu`` / ``chrf`` are sacreBLEU's against the references (with the signature),
``identical_to_ours`` the fraction of lines whose output equals ours. The last line is a summary
with the ratios ``{strategy}_b{batch}_ours/ct2_fp32``, ``{strategy}_b{batch}_ct2_int8/ours`` and
``{strategy}_b{batch}_ours_int8/ct2_int8`` of sentences per second.

Without ``--ckpt`` a small Multi30k en-de model is trained first for ``--train-minutes``
(``python -m seq2seq.train experiment=multi30k_en_de data.root=--data model/size=--size``) into
``--out-dir``.
``--device cuda`` runs every system on the GPU: ours on ``cuda`` in float32 (as on the CPU),
CTranslate2 with ``device="cuda"`` and the exported weight type (float32; int8 weights through its
CUDA int8 kernels). A pass ends with the texts on the host, so its time includes the GPU's work.
``--systems`` leaves out a CTranslate2 variant (ours is always run: the others are compared with it).
``--quick`` takes the first 24 lines, batch size 8, one round, no warm-up (a few seconds).
``benchmarks/gpu_check.py`` (part ``decode_ct2``) runs this with ``--device cuda --batch-sizes 64
--rounds 1 --max-lines 512`` on its Multi30k run's checkpoint.
Needs ``pip install 'seq2seq[export]'``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from seq2seq.decoding.search import DecodingConfig
from seq2seq.inference.checkpoint import load_model
from seq2seq.inference.ct2_export import export_ctranslate2, require_ctranslate2
from seq2seq.inference.ct2_predictor import CT2Predictor
from seq2seq.inference.predictor import Predictor
from seq2seq.inference.quantize import for_inference
from seq2seq.metrics.text_metrics import score

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("ours", "ours_int8", "ct2_fp32", "ct2_int8", "ct2_fp32_exact")
# How each CTranslate2 system calls translate_batch: "default" is the engine as its users run it (the speed
# peer); "token_exact" is set up to reproduce our search token for token (a parity check).
CT2_CALL = {"ct2_fp32": "default", "ct2_int8": "default", "ct2_fp32_exact": "token_exact"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", help="checkpoint to translate with (default: train one, see --train-minutes)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "multi30k"),
                   help="folder with {split}.{src} and {split}.{tgt} (default ../shared/data/multi30k)")
    p.add_argument("--split", default="val")
    p.add_argument("--src-lang", default="en")
    p.add_argument("--tgt-lang", default="de")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--alpha", type=float, default=DecodingConfig.alpha, help="GNMT length penalty of beam search")
    p.add_argument("--strategies", nargs="+", default=["greedy", "beam"], choices=["greedy", "beam"])
    p.add_argument("--threads", type=int, default=2, help="torch threads = CTranslate2 intra_threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where both systems translate: ours on this torch device, CTranslate2 with device=")
    p.add_argument("--rounds", type=int, default=3, help="timed passes per system (median taken)")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS,
                   help="systems compared (ours always: the others are compared with it)")
    p.add_argument("--exact-limits", action="store_true", help="CTranslate2: one call per distinct length limit")
    p.add_argument("--train-minutes", type=float, default=5.0, help="training time without --ckpt")
    p.add_argument("--size", default="small", choices=["tiny", "small", "base", "big"],
                   help="model/size trained without --ckpt (the experiment's is small)")
    p.add_argument("--train-precision", help="trainer.precision of that training (default: the experiment's)")
    p.add_argument("--out-dir", help="where the exports (and a trained model) go (default: a temporary folder)")
    p.add_argument("--max-lines", type=int, help="translate only the first N lines of the split")
    p.add_argument("--quick", action="store_true", help="24 lines, batch 8, one round, no warm-up")
    p.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)  # internal: one system's process
    p.add_argument("--worker-model", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def train(args, out: Path) -> Path:
    """Train a small Multi30k model for ``--train-minutes``; returns its best checkpoint."""
    minutes = max(1, round(args.train_minutes))
    run = out / "train"
    command = [sys.executable, "-m", "seq2seq.train", "experiment=multi30k_en_de", f"data.root={args.data}",
               f"data.src_lang={args.src_lang}", f"data.tgt_lang={args.tgt_lang}", f"model/size={args.size}",
               *([f"trainer.precision={args.train_precision}"] if args.train_precision else []),
               f"trainer.max_time=00:00:{minutes:02d}:00", "callbacks.progress_bar=null", f"hydra.run.dir={run}"]
    print(json.dumps({"training": " ".join(command[1:])}), file=sys.stderr, flush=True)
    subprocess.run(command, check=True, cwd=REPO, stdout=sys.stderr)  # stdout: the JSON rows only
    return run / "checkpoints" / "best.ckpt"


def read_split(args) -> tuple[list[str], list[str]]:
    """Source lines and references of the split (``--quick``/``--max-lines``: the first N)."""
    data = Path(args.data)
    lines = (data / f"{args.split}.{args.src_lang}").read_text(encoding="utf-8").splitlines()
    refs = (data / f"{args.split}.{args.tgt_lang}").read_text(encoding="utf-8").splitlines()
    if args.quick or args.max_lines:
        n = 24 if args.quick else args.max_lines
        lines, refs = lines[:n], refs[:n]
    return lines, refs


def strategies_of(args) -> dict[str, DecodingConfig]:
    strategies = {"greedy": DecodingConfig(strategy="greedy", alpha=args.alpha),
                  f"beam{args.beam}": DecodingConfig(strategy="beam", beam_size=args.beam, alpha=args.alpha)}
    return {k: v for k, v in strategies.items() if v.strategy in args.strategies}


def worker(args) -> None:
    """One system in its own process: read ``{"strategy", "batch_size", "warmup"}`` requests as JSON
    lines on stdin, translate the split, answer ``{"seconds", "outputs", "tokens"}`` on stdout."""
    torch.set_num_threads(args.threads)
    name, model = args.worker, Path(args.worker_model)
    lines, _ = read_split(args)
    if name.startswith("ours"):
        net, tokenizer = load_model(model, args.device)
        net = for_inference(net, "int8" if name == "ours_int8" else None, torch.device(args.device))
    tokens = 0

    def build(decoding):
        nonlocal tokens
        if name.startswith("ours"):
            predictor = Predictor(net, tokenizer, decoding)
        else:
            exact = CT2_CALL[name] == "token_exact"
            predictor = CT2Predictor(model, decoding, device=args.device, compute_type="default",
                                     threads=args.threads, exact_limits=args.exact_limits,
                                     suppress_special=exact, engine_defaults=not exact)
        generate = predictor.generate

        def counted(src):  # target tokens (EOS included) of the best hypotheses
            nonlocal tokens
            groups = generate(src)
            tokens += sum(g[0].num_scored for g in groups)
            return groups

        predictor.generate = counted
        return predictor

    predictors = {label: build(decoding) for label, decoding in strategies_of(args).items()}
    out = sys.stdout
    sys.stdout = sys.stderr  # only the answers go to the pipe
    for request in sys.stdin:
        request = json.loads(request)
        predictor = predictors[request["strategy"]]
        if request["warmup"]:  # allocators, oneDNN/MKL kernels, CTranslate2's first call
            predictor.translate(lines[:32], batch_size=request["batch_size"])
        tokens = 0
        start = time.perf_counter()
        results = predictor.translate(lines, batch_size=request["batch_size"])
        seconds = time.perf_counter() - start
        out.write(json.dumps({"seconds": seconds, "outputs": [pairs[0][0] for pairs in results],
                              "tokens": tokens}) + "\n")
        out.flush()


def start_workers(args, models: dict[str, Path], argv: list[str]) -> dict[str, subprocess.Popen]:
    """One ``--worker`` process per system, with this run's options."""
    return {name: subprocess.Popen([sys.executable, __file__, *argv, "--worker", name, "--worker-model", str(model)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
            for name, model in models.items()}


def ask(process: subprocess.Popen, **request) -> dict:
    process.stdin.write(json.dumps(request) + "\n")
    process.stdin.flush()
    answer = process.stdout.readline()
    if not answer:
        raise RuntimeError(f"a benchmark worker stopped (exit code {process.wait()}); see its messages above")
    return json.loads(answer)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    ctranslate2 = require_ctranslate2()
    if args.quick:
        args.batch_sizes, args.rounds = [8], 1
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"error: --device cuda, but torch {torch.__version__} sees no CUDA device here")
    if args.device == "cuda" and ctranslate2.get_cuda_device_count() == 0:
        raise SystemExit(f"error: --device cuda, but ctranslate2 {ctranslate2.__version__} has no CUDA support here "
                         "(get_cuda_device_count() == 0)")
    systems = tuple(s for s in SYSTEMS if s == "ours" or s in args.systems)
    if args.device == "cuda":
        systems = tuple(s for s in systems if s != "ours_int8")  # torch's int8 kernels are the CPU's
    out = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="translate_e2e-"))
    lines, refs = read_split(args)
    ckpt = Path(args.ckpt) if args.ckpt else train(args, out)
    if not args.ckpt:
        argv += ["--ckpt", str(ckpt)]
    exports = {"ct2_fp32": None, "ct2_int8": "int8"}  # export folder -> quantization
    exports = {folder: export_ctranslate2(ckpt, out / folder, quantization, force=True)
               for folder, quantization in exports.items()
               if any(s.startswith(folder) for s in systems)}
    models = {name: ckpt if name.startswith("ours") else exports[name.removesuffix("_exact")] for name in systems}
    net, _ = load_model(ckpt)
    strategies = strategies_of(args)
    workers = start_workers(args, models, argv)
    rows = []
    try:
        for label in strategies:
            for batch_size in args.batch_sizes:
                seconds: dict[str, list[float]] = {s: [] for s in systems}
                outputs: dict[str, list[str]] = {}
                tokens: dict[str, int] = {}
                for r in range(args.rounds):
                    order = systems[r % len(systems):] + systems[: r % len(systems)]
                    for name in order:
                        answer = ask(workers[name], strategy=label, batch_size=batch_size,
                                     warmup=r == 0 and not args.quick)
                        seconds[name].append(answer["seconds"])
                        outputs[name], tokens[name] = answer["outputs"], answer["tokens"]
                for name in systems:
                    metrics, signatures = score("translation", outputs[name], refs)
                    median = statistics.median(seconds[name])
                    row = {
                        "system": name, "ct2_call": CT2_CALL.get(name), "strategy": label, "batch_size": batch_size, "device": args.device,
                        "threads": args.threads,
                        "process": "own", "sentences": len(lines), "seconds": round(median, 3),
                        "seconds_rounds": [round(t, 3) for t in seconds[name]],
                        "sent_s": round(len(lines) / median, 2), "tgt_tok_s": round(tokens[name] / median, 1),
                        "bleu": round(metrics["bleu"], 2), "chrf": round(metrics["chrf"], 2),
                        "identical_to_ours": round(
                            sum(a == b for a, b in zip(outputs[name], outputs["ours"])) / len(lines), 4),
                        "bleu_signature": signatures["sacrebleu_signature"]["bleu"],
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait()

    summary = {"summary": True, "checkpoint": str(ckpt), "split": f"{args.data}/{args.split}",
               "sentences": len(lines), "device": args.device, "threads": args.threads,
               "exact_limits": args.exact_limits,
               "ct2_calls": {
                   "default": "translate_batch(batch, beam_size=B, max_decoding_length=limit): CTranslate2's own "
                              "length penalty, one hypothesis, nothing suppressed (the speed peer)",
                   "token_exact": "beam_size=B, num_hypotheses=B, a neutral length penalty and our GNMT re-ranking, "
                                  "PAD/BOS suppressed (a parity check, not a speed peer)"},
               "num_parameters": net.num_parameters(), "torch": torch.__version__,
               "ctranslate2": ctranslate2.__version__, "python": platform.python_version(),
               "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or "cpu"}
    rate = {(r["system"], r["strategy"], r["batch_size"]): r["sent_s"] for r in rows}
    for label in strategies:
        for batch_size in args.batch_sizes:
            ours = rate["ours", label, batch_size]
            if "ct2_fp32" in systems:
                summary[f"{label}_b{batch_size}_ours/ct2_fp32"] = round(ours / rate["ct2_fp32", label, batch_size], 3)
            if "ct2_int8" in systems:
                summary[f"{label}_b{batch_size}_ct2_int8/ours"] = round(rate["ct2_int8", label, batch_size] / ours, 3)
            if "ct2_int8" in systems and "ours_int8" in systems:
                summary[f"{label}_b{batch_size}_ours_int8/ct2_int8"] = round(
                    rate["ours_int8", label, batch_size] / rate["ct2_int8", label, batch_size], 3)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
