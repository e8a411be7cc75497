"""Data pipeline at WMT14 scale: preparation time and memory, cached reload, per-rank memory, first batch.

    python benchmarks/data_scale.py [--pairs 4500000] [--seed 0] [--workdir outputs/data_scale]
        [--config wmt14_en_de] [--format lines|tsv] [--prepare-workers N] [--out result.json]

Writes a synthetic WMT14-like corpus of ``--pairs`` pairs (``benchmarks/synthetic_corpus.py``:
log-normal sentence lengths, ~25 words per side, Zipfian vocabulary; reproducible from ``--seed``)
under ``--workdir`` (kept for the next run; it is not part of the repository), points the data
config ``--config`` (default ``wmt14_en_de``: joint 32k BPE, ``max_tokens=8192``,
``max_len_ratio=3``) at it with an empty cache, and measures, each in a fresh process:
(``--format tsv``: the same pairs as one ``{split}.tsv`` file per split, header ``en<TAB>de``, so
that the two formats' preparation can be compared on one corpus)

* ``prepare``: ``prepare_data()`` on the empty cache (hashing the corpus, sentencepiece training,
  tokenizing every split, writing the cache): wall seconds, the seconds per step
  (``prepare_steps``), CPU seconds, and the peak memory of the process and its child processes
  (sentencepiece training, tokenizing workers) together, polled every 50 ms: the sum of their
  resident sizes (``prepare_peak_rss_mb``; forked children share pages, which each counts, so
  this is an upper bound) and of their proportional set sizes (``prepare_peak_pss_mb``, the
  physical memory), and the largest single process (``getrusage``);
* ``reload``: ``prepare_data()`` + ``setup("fit")`` on the filled cache, what a rerun does;
* ``ranks``: two processes started together, as two DDP ranks of one node: each builds the
  DataModule with its rank and ``setup("fit")``; its resident memory before and after
  (``rss_extra_mb``, VmRSS of ``/proc/self/status``, with the file-backed part), then the time to
  its first training batch from the start of ``setup`` (``to_first_batch_s``).

Prints one JSON object (``--out`` also writes it) with the goals of issue 18 for 4.5M pairs on a
2-core machine and whether each was met (``within_goals``; meaningful at the full size).
Times vary with machine load; ``load_avg`` records it at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
GOALS = {"prepare_s": 600, "prepare_peak_rss_mb": 4096, "reload_s": 3.0, "rank_rss_extra_mb": 300,
         "to_first_batch_s": 5.0}
SPLITS = {"train": "train", "val": "val", "test": "test"}


def _rss_mb() -> dict[str, float]:
    """This process's resident memory (MiB): total, anonymous, file-backed (/proc/self/status)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


# -- the measured steps, each run in a child process -------------------------------------------------


def child_prepare(options: dict) -> dict:
    from seq2seq.data.datamodule import Seq2SeqDataModule

    cpu, start = _cpu_s(), time.perf_counter()
    dm = Seq2SeqDataModule.from_config(**options)
    dm.prepare_data()
    seconds = time.perf_counter() - start
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    tok = dm.training_tokenizer()  # from the cache prepare_data just filled
    return {"seconds": seconds, "cpu_s": _cpu_s() - cpu, "steps": dm.prepare_times,
            "maxrss_self_mb": me.ru_maxrss / 1024, "maxrss_children_mb": kids.ru_maxrss / 1024,
            "vocab_size": tok.src_vocab_size}


def child_reload(options: dict) -> dict:
    from seq2seq.data.datamodule import Seq2SeqDataModule

    start = time.perf_counter()
    dm = Seq2SeqDataModule.from_config(**options)
    dm.prepare_data()
    dm.setup("fit")
    seconds = time.perf_counter() - start
    train = dm.datasets["train"]
    meta = getattr(train.data, "meta", None) or getattr(getattr(train.data, "base", None), "meta", {})
    return {"seconds": seconds, "steps": dm.prepare_times, "filter_counts": dm.filter_counts,
            "train_tokens": {"src": meta.get("src_tokens"), "tgt": meta.get("tgt_tokens")},
            "dtype": meta.get("dtype")}


def child_rank(options: dict, rank: int, world_size: int) -> dict:
    from seq2seq.data.datamodule import Seq2SeqDataModule

    before = _rss_mb()
    start = time.perf_counter()
    dm = Seq2SeqDataModule.from_config(**options)
    dm.trainer = SimpleNamespace(world_size=world_size, global_rank=rank)
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    after_setup = _rss_mb()
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    to_first_batch = time.perf_counter() - start
    after_batch = _rss_mb()
    return {
        "rank": rank, "setup_s": setup_s, "to_first_batch_s": to_first_batch,
        "first_batch_shape": list(batch["src"].shape),
        "batches_per_epoch": len(loader),
        "rss_before_mb": before["VmRSS"], "rss_after_setup_mb": after_setup["VmRSS"],
        "rss_extra_mb": after_setup["VmRSS"] - before["VmRSS"],
        "rss_extra_anon_mb": after_setup["RssAnon"] - before["RssAnon"],
        "rss_extra_file_mb": after_setup["RssFile"] - before["RssFile"],
        "rss_extra_after_first_batch_mb": after_batch["VmRSS"] - before["VmRSS"],
    }


# -- the parent: runs the children, watches memory -------------------------------------------------


class TreeMemory(threading.Thread):
    """Polls the memory of a process and all its descendants; keeps the peaks of two sums.

    ``peak_mb``: of the resident sizes (RSS). Forked workers share their parent's pages, which
    every one of them counts, so this is an upper bound. ``peak_pss_mb``: of the proportional set
    sizes (a shared page counts 1/n in each of its n processes): the physical memory they use.
    """

    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.interval, self.peak_mb, self.peak_pss_mb, self.peak_processes = interval, 0.0, 0.0, 0
        self._done = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._done.is_set():
            rss = pss = count = 0
            try:
                for proc in [self.root, *self.root.children(recursive=True)]:
                    try:
                        info = proc.memory_full_info()
                        rss, pss, count = rss + info.rss, pss + getattr(info, "pss", info.rss), count + 1
                    except psutil.Error:
                        pass
            except psutil.Error:
                break
            if rss / 2**20 > self.peak_mb:
                self.peak_mb, self.peak_processes = rss / 2**20, count
            self.peak_pss_mb = max(self.peak_pss_mb, pss / 2**20)
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _child_command(mode: str, spec: Path, *extra: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--spec", str(spec), *extra]


def _result(proc: subprocess.Popen, what: str) -> dict:
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (exit {proc.returncode}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


def _start(mode: str, spec: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "SEQ2SEQ_PROGRESS": os.environ.get("SEQ2SEQ_PROGRESS", "log")}
    return subprocess.Popen(_child_command(mode, spec, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def write_tsv(lines_folder: Path, folder: Path) -> None:
    """The corpus of ``lines_folder`` as ``{split}.tsv`` files (header ``en<TAB>de``), written as a stream."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        target = folder / f"{split}.tsv"
        if target.is_file() and target.stat().st_mtime >= (lines_folder / f"{split}.en").stat().st_mtime:
            continue
        with open(lines_folder / f"{split}.en", "rb") as en, open(lines_folder / f"{split}.de", "rb") as de, \
                open(str(target) + ".tmp", "wb") as out:
            out.write(b"en\tde\n")
            for src, tgt in zip(en, de):
                out.write(src.rstrip(b"\n") + b"\t" + tgt)
        os.replace(str(target) + ".tmp", target)


def data_options(config: str, root: Path, cache: Path, prepare_workers: int | None, fmt: str = "lines") -> dict:
    sys.path.insert(0, str(HERE))
    from data_pipeline import data_options as compose_data

    options = compose_data(config, [f"data.root={root}"])
    # The synthetic corpus is {split}.en / {split}.de lines; the Hub config's split names list these too.
    options.update(cache_dir=str(cache), splits=dict(SPLITS), src_lang="en", tgt_lang="de")
    if fmt == "tsv":
        options.update(format="tsv", src_field="en", tgt_field="de", hf_path=None, hf_name=None, hf_data_files=None)
    if prepare_workers is not None:
        options["prepare_workers"] = prepare_workers
    return options


def run(args: argparse.Namespace) -> dict:
    sys.path.insert(0, str(HERE))
    from synthetic_corpus import write_corpus

    workdir = Path(args.workdir)
    corpus = workdir / f"corpus-{args.pairs}-seed{args.seed}"
    cache = workdir / f"cache-{args.pairs}-seed{args.seed}" if args.format == "lines" else \
        workdir / f"cache-{args.pairs}-seed{args.seed}-{args.format}"
    load_avg = os.getloadavg()
    start = time.perf_counter()
    stamp = write_corpus(corpus, args.pairs, args.seed, progress=not args.quiet)
    root = corpus
    if args.format == "tsv":
        root = workdir / f"corpus-{args.pairs}-seed{args.seed}-tsv"
        write_tsv(corpus, root)
    generation_s = time.perf_counter() - start
    shutil.rmtree(cache, ignore_errors=True)  # the first preparation starts from an empty cache
    options = data_options(args.config, root, cache, args.prepare_workers, args.format)
    spec = workdir / f"spec-{args.pairs}-seed{args.seed}-{args.format}.json"
    spec.write_text(json.dumps(options))

    proc = _start("prepare", spec)
    memory = TreeMemory(proc.pid)
    memory.start()
    try:
        prepare = _result(proc, "the first preparation")
    finally:
        memory.stop()
    reload = _result(_start("reload", spec), "the cached reload")
    ranks = [_start("rank", spec, "--rank", str(r), "--world-size", "2") for r in range(2)]
    ranks = [_result(p, f"rank {r}") for r, p in enumerate(ranks)]

    cache_mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
    result: dict[str, Any] = {
        "benchmark": "data_scale", "pairs": args.pairs, "seed": args.seed, "config": args.config, "format": args.format,
        "workdir": str(workdir), "cpus": len(os.sched_getaffinity(0)), "load_avg": [round(x, 2) for x in load_avg],
        "corpus": {"generation_s": generation_s, "train_mb": sum(stamp["train_bytes"].values()) / 2**20,
                   "words_per_side_mean": stamp["train_words_per_side_mean"]},
        "prepare_s": prepare["seconds"], "prepare_steps": prepare["steps"], "prepare_cpu_s": prepare["cpu_s"],
        "prepare_peak_rss_mb": memory.peak_mb, "prepare_peak_pss_mb": memory.peak_pss_mb,
        "prepare_peak_processes": memory.peak_processes,
        "prepare_maxrss_single_mb": max(prepare["maxrss_self_mb"], prepare["maxrss_children_mb"]),
        "vocab_size": prepare["vocab_size"],
        "reload_s": reload["seconds"], "reload_steps": reload["steps"], "filter_counts": reload["filter_counts"],
        "train_tokens": reload["train_tokens"], "id_dtype": reload["dtype"], "cache_mb": cache_mb,
        "ranks": ranks,
        "rank_rss_extra_mb": max(r["rss_extra_mb"] for r in ranks),
        "to_first_batch_s": max(r["to_first_batch_s"] for r in ranks),
        "goals_at_4_5M_pairs": GOALS,
    }
    result["within_goals"] = {k: result[k] <= v for k, v in GOALS.items()}
    return _rounded(result)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4_500_000, help="training pairs (WMT14 en-de: 4.5M)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic corpus")
    parser.add_argument("--workdir", default="outputs/data_scale", help="corpus and cache folder (not committed)")
    parser.add_argument("--config", default="wmt14_en_de", help="data config under conf/data")
    parser.add_argument("--format", choices=("lines", "tsv"), default="lines",
                        help="the corpus as line files, or the same pairs as one TSV file per split")
    parser.add_argument("--prepare-workers", type=int, default=None,
                        help="data.prepare_workers (default: the DataModule's choice)")
    parser.add_argument("--out", default=None, help="also write the JSON object here")
    parser.add_argument("--quiet", action="store_true", help="no generation progress lines")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
        options = json.loads(Path(args.spec).read_text())
        result = {"prepare": lambda: child_prepare(options), "reload": lambda: child_reload(options),
                  "rank": lambda: child_rank(options, args.rank, args.world_size)}[args.child]()
        print(json.dumps(result), flush=True)
        return

    if args.pairs < 1:
        parser.error("--pairs must be positive")
    result = run(args)
    text = json.dumps(result)
    print(text, flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
