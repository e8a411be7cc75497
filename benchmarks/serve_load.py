"""Load test of seq2seq-serve on loopback: concurrent clients, one sentence per request, against
offline batch translation of the same sentences.

    python benchmarks/serve_load.py --ckpt RUN/checkpoints/best.ckpt --data ../shared/data/multi30k
    python benchmarks/serve_load.py --ckpt PATH --data DIR --clients 16 --seconds 60 --threads 2 --decoding greedy
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 --data DIR    # a server already running
    python benchmarks/serve_load.py --ckpt PATH --data DIR --seconds 5 --clients 4   # a smoke run

Phases, one after the other (never at the same time):

1. **load**: starts ``python -m seq2seq.serve ckpt_path=--ckpt port=0`` (with ``--threads``,
   ``--decoding``, ``--max-batch``, ``--max-wait-ms`` and any ``--set key=value``), unless ``--url``
   names a running server. ``--clients`` threads, each with one keep-alive HTTP connection, send
   ``POST /translate {"text": <one sentence>}`` back to back, taking the lines of ``--data``/val.en
   in turn (cycling), for ``--seconds`` (or ``--requests`` requests, whichever ends first), after a
   warm-up of two requests per client. Reports requests/s and served sentences/s (one sentence per
   request: the same number), latency p50/p95/p99/mean/max in ms (successful requests), errors
   (a non-200 status, a body without a translation, a broken connection), and the server's
   batches over the phase (``GET /stats``: how many, their mean size, the histogram).
2. **offline**: the server stopped (when this script started it), the sentences it served are
   translated again in this process with :meth:`seq2seq.api.Translator.translate`: the checkpoint,
   decoding settings, device and torch threads the server reported in ``GET /info``, in batches of
   ``--offline-batch`` (16): once as ``seq2seq-translate`` does (length-sorted batches, one call),
   once in input order, 16 sentences per call (no sorting across calls, like the server).
3. **summary**: ``ratio`` = served sentences/s over offline (length-sorted) sentences/s,
   ``ratio_input_order`` over the input-order pass; errors; p95 latency.

Prints one JSON line per phase. The clients are threads of this process (cheap: ``http.client``,
no torch loaded until the offline phase), so they share the machine's cores with the server;
on a small machine give the server fewer threads than cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import threading
import time
from pathlib import Path

import numpy as np

from seq2seq.serving.process import Client, ServerProcess


def emit(record: dict) -> None:
    print(json.dumps(record, ensure_ascii=False), flush=True)


def read_sentences(data: Path, limit: int | None = None) -> list[str]:
    path = data / "val.en" if data.is_dir() else data
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"error: {path} holds no sentences")
    return lines[:limit] if limit else lines


def run_clients(url: str, sentences: list[str], clients: int, seconds: float, max_requests: int | None) -> dict:
    """``clients`` threads sending one sentence per request until ``seconds`` pass or
    ``max_requests`` are sent; every request's (index, latency, ok)."""
    counter = itertools.count()
    records: list[tuple[int, float, bool]] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client() -> None:
        connection = Client(url)
        while time.perf_counter() < deadline:
            index = next(counter)
            if max_requests is not None and index >= max_requests:
                break
            sent = time.perf_counter()
            try:
                status, body = connection.post("/translate", {"text": sentences[index % len(sentences)]})
                ok = status == 200 and isinstance(body, dict) and isinstance(body.get("translation"), str)
                problem = None if ok else f"status {status}: {str(body)[:200]}"
            except OSError as err:
                connection.close()
                ok, problem = False, f"{type(err).__name__}: {err}"
            latency = time.perf_counter() - sent
            with lock:
                records.append((index, latency, ok))
                if problem and len(errors) < 5:
                    errors.append(problem)
        connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"records": records, "wall_s": time.perf_counter() - start, "first_errors": errors}


def load_phase(url: str, sentences: list[str], args) -> tuple[dict, list[str]]:
    client = Client(url)
    run_clients(url, sentences, args.clients, 3600, 2 * args.clients)  # warm-up
    before = client.get("/stats")[1]
    result = run_clients(url, sentences, args.clients, args.seconds, args.requests)
    after = client.get("/stats")[1]
    client.close()
    records = result["records"]
    ok = [r for r in records if r[2]]
    latencies = np.array([r[1] for r in ok]) * 1000
    wall = result["wall_s"]
    sizes = {size: n - before["batch_sizes"].get(size, 0) for size, n in after["batch_sizes"].items()}
    batches = after["batches"] - before["batches"]
    served = [sentences[index % len(sentences)] for index, _, good in sorted(records) if good]
    report = {
        "phase": "load",
        "clients": args.clients,
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 2),
        "sentences_per_s": round(len(served) / wall, 2),
        "latency_ms": {name: round(float(np.percentile(latencies, q)), 1) if len(ok) else None
                       for name, q in (("p50", 50), ("p95", 95), ("p99", 99))}
        | {"mean": round(float(latencies.mean()), 1) if len(ok) else None,
           "max": round(float(latencies.max()), 1) if len(ok) else None},
        "batches": batches,
        "mean_batch": round((after["sentences"] - before["sentences"]) / batches, 2) if batches else None,
        "batch_sizes": {size: n for size, n in sizes.items() if n},
        # Seconds the worker spent inside the model's translate calls, and that over the phase's wall time.
        "compute_s": round(after["compute_s"] - before["compute_s"], 2),
        "compute_share": round((after["compute_s"] - before["compute_s"]) / wall, 3),
        "first_errors": result["first_errors"],
    }
    return report, served


def offline_phase(info: dict, served: list[str], batch: int) -> list[dict]:
    import torch

    from seq2seq.api import Translator, chunks
    from seq2seq.decoding.search import DecodingConfig

    torch.set_num_threads(int(info["threads"]))
    ckpt = info["checkpoints"] if info.get("ensemble") else info["checkpoints"][0]
    translator = Translator.from_checkpoint(ckpt, device=info["device"], decoding=DecodingConfig(**info["decoding"]),
                                            batch_size=batch)
    translator.translate(served[:batch], warn=None)  # warm-up
    reports = []
    for mode, run in (
        ("length-sorted batches (as seq2seq-translate)", lambda: translator.translate(served, warn=None)),
        ("input order, one call per batch (as the server)",
         lambda: [translator.translate(chunk, warn=None) for chunk in chunks(served, batch)]),
    ):
        start = time.perf_counter()
        run()
        seconds = time.perf_counter() - start
        reports.append({"phase": "offline", "mode": mode, "batch_size": batch, "sentences": len(served),
                        "threads": torch.get_num_threads(), "seconds": round(seconds, 2),
                        "sentences_per_s": round(len(served) / seconds, 2)})
    return reports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--ckpt", help="checkpoint to serve (this script starts the server)")
    where.add_argument("--url", help="a running server (its /info names the checkpoint for the offline phase)")
    parser.add_argument("--data", type=Path, required=True, help="a folder with val.en (Multi30k), or a text file")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=None, help="stop after this many requests (also)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server (default: its default)")
    parser.add_argument("--decoding", default=None, help="the server's decoding config (default: its default, beam)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, default=None)
    parser.add_argument("--max-wait-ms", type=float, default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="more server overrides")
    parser.add_argument("--offline-batch", type=int, default=16)
    args = parser.parse_args(argv)
    sentences = read_sentences(args.data)

    server = None
    if args.ckpt:
        overrides = [f"ckpt_path={args.ckpt}", f"device={args.device}"]
        for key, value in (("threads", args.threads), ("decoding", args.decoding), ("max_batch", args.max_batch),
                           ("max_wait_ms", args.max_wait_ms)):
            if value is not None:
                overrides.append(f"{key}={value}")
        server = ServerProcess([*overrides, *args.set]).start()
    url = server.url if server else args.url
    try:
        info = Client(url).get("/info")[1]
        emit({"phase": "setup", "url": url, "checkpoints": info["checkpoints"], "decoding": info["decoding"],
              "device": info["device"], "threads": info["threads"], "batching": info["batching"],
              "clients": args.clients, "seconds": args.seconds, "requests": args.requests,
              "sentences_available": len(sentences), "data": str(args.data)})
        load, served = load_phase(url, sentences, args)
        emit(load)
    finally:
        if server is not None:
            server.stop()
    if not served:
        emit({"phase": "summary", "error": "no request succeeded", "errors": load["errors"]})
        raise SystemExit(1)
    offline = offline_phase(info, served, args.offline_batch)
    for report in offline:
        emit(report)
    emit({"phase": "summary", "served_sentences_per_s": load["sentences_per_s"],
          "offline_sentences_per_s": offline[0]["sentences_per_s"],
          "ratio": round(load["sentences_per_s"] / offline[0]["sentences_per_s"], 3),
          "ratio_input_order": round(load["sentences_per_s"] / offline[1]["sentences_per_s"], 3),
          "errors": load["errors"], "p95_ms": load["latency_ms"]["p95"], "mean_batch": load["mean_batch"]})


if __name__ == "__main__":
    main()
