"""Peak memory of ``seq2seq.translate`` against input length: it streams, so it must not grow.

    python benchmarks/translate_memory.py --ckpt RUN/checkpoints/best.ckpt --source data/toy/test.en \
        --lines 100000 400000 [--chunk-lines 10000] [--decoding greedy] [--work DIR]

For each N, writes an N-line input by cycling the ``--source`` lines, runs the command as a user
would (``python -m seq2seq.translate ckpt_path=... input=... output=... decoding=greedy``) under
``/usr/bin/time -v``, checks that the output has N lines, and prints one JSON line: lines, max RSS
(MiB), wall time, lines per second, and how long the first translated chunk took to appear in
the (temporary) output file, which shows the output streams before the input ends.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


def write_input(path: Path, source: Path, n: int) -> None:
    lines = [line for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(path, "w", encoding="utf-8") as f:
        for line in itertools.islice(itertools.cycle(lines), n):
            f.write(line + "\n")


def first_output_seconds(process: subprocess.Popen, folder: Path, name: str, start: float) -> float | None:
    """Seconds until a temporary output file beside ``name`` holds data (None if the run ended first)."""
    while process.poll() is None:
        for tmp in folder.glob(f".{name}.*.tmp"):
            try:
                if tmp.stat().st_size > 0:
                    return time.perf_counter() - start
            except FileNotFoundError:
                pass
        time.sleep(0.05)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, type=Path)
    parser.add_argument("--source", required=True, type=Path, help="lines to cycle through (e.g. data/toy/test.en)")
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--chunk-lines", type=int, default=10_000)
    parser.add_argument("--decoding", default="greedy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("outputs/translate_memory"))
    parser.add_argument("--keep", action="store_true", help="keep the input and output files")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for n in args.lines:
        source, output = args.work / f"input_{n}.txt", args.work / f"output_{n}.txt"
        write_input(source, args.source, n)
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "seq2seq.translate", f"ckpt_path={args.ckpt}",
                   f"input={source}", f"output={output}", f"decoding={args.decoding}", "device=cpu",
                   "progress=false", f"chunk_lines={args.chunk_lines}", f"batch_size={args.batch_size}"]
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
        first = first_output_seconds(process, args.work, output.name, start)
        out, err = process.communicate()
        wall = time.perf_counter() - start
        if process.returncode != 0:
            print(err[-3000:], file=sys.stderr)
            return process.returncode
        rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
        with open(output, "rb") as f:
            written = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
        print(json.dumps({"lines": n, "output_lines": written, "max_rss_mib": round(rss_kb / 1024, 1),
                          "wall_s": round(wall, 1), "lines_per_s": round(n / wall), "first_chunk_s": first and round(first, 1),
                          "chunk_lines": args.chunk_lines, "decoding": args.decoding}), flush=True)
        if written != n:
            print(f"error: {written} output lines for {n} input lines", file=sys.stderr)
            return 1
        if not args.keep:
            source.unlink()
            output.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
