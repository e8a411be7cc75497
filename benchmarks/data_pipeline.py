"""Data-pipeline benchmark: preparation, cache reuse, tokenization, batching and padding.

Runs a named data config (``conf/data/NAME.yaml``, Multi30k en-de by default) the way training
does, with a fresh temporary cache folder, and prints one JSON object per line:

* ``first_preparation``: ``prepare_data()`` + ``setup()`` on an empty cache (sentencepiece
  training, tokenization of every split, writing the cache), in seconds;
* ``cached_load``: the same with a new DataModule on the filled cache, and the speedup;
* ``sentencepiece_training``: the tokenizer training alone;
* ``tokenization``: encoding both sides of the training split (sentences/s, tokens/s);
* ``batching``: one epoch over the training DataLoader at ``--max-tokens`` (batches/s);
* ``padding``: the share of pad positions in training batches (``src`` and ``tgt_out``) for each
  budget in ``--padding-budgets``, with the number of batches.

Usage::

    python benchmarks/data_pipeline.py [--config multi30k] [--root DIR] [--src-lang en]
        [--tgt-lang de] [--vocab-size 8000] [--max-tokens 4096] [--padding-budgets 2048,4096,8192]

Times are wall-clock seconds in this process (Python imports excluded) and vary with machine load.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from seq2seq.config import config_dir
from seq2seq.data.datamodule import Seq2SeqDataModule
from seq2seq.data.tokenizer import PAD_ID, Tokenizer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "multi30k"


def data_options(config: str, overrides: list[str]) -> dict[str, Any]:
    """The ``data`` section of the train config with ``data=CONFIG``, resolved (no ``_target_``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={config}", *overrides])
    options = OmegaConf.to_container(cfg.data, resolve=True)
    options.pop("_target_", None)
    return options


def emit(context: dict[str, Any], name: str, **values: Any) -> None:
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
    print(json.dumps({"benchmark": "data_pipeline", "name": name, **rounded, **context}), flush=True)


def padding_stats(dm: Seq2SeqDataModule, max_tokens: int) -> dict[str, Any]:
    """Iterate one training epoch at ``max_tokens``; count real and pad positions and time it."""
    dm.batching.max_tokens = max_tokens
    loader = dm.train_dataloader()
    batches = sentences = 0
    real = {"src": 0, "tgt_out": 0}
    total = {"src": 0, "tgt_out": 0}
    start = time.perf_counter()
    for batch in loader:
        batches += 1
        sentences += batch["src"].size(0)
        for key in real:
            real[key] += int((batch[key] != PAD_ID).sum())
            total[key] += batch[key].numel()
    seconds = time.perf_counter() - start
    return {
        "max_tokens": max_tokens,
        "batches": batches,
        "mean_sentences_per_batch": sentences / max(batches, 1),
        "padding_fraction": 1 - sum(real.values()) / max(sum(total.values()), 1),
        "src_padding_fraction": 1 - real["src"] / max(total["src"], 1),
        "tgt_padding_fraction": 1 - real["tgt_out"] / max(total["tgt_out"], 1),
        "epoch_seconds": seconds,
        "batches_per_s": batches / seconds,
        "sentences_per_s": sentences / seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="multi30k", help="data config name under conf/data")
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="corpus folder (data.root)")
    parser.add_argument("--src-lang", default=None, help="data.src_lang (default: the config's)")
    parser.add_argument("--tgt-lang", default=None, help="data.tgt_lang (default: the config's)")
    parser.add_argument("--vocab-size", type=int, default=None, help="data.vocab_size (default: the config's)")
    parser.add_argument("--spm-model-type", default=None, help="data.spm_model_type (default: the config's)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="training batch budget for `batching`")
    parser.add_argument("--padding-budgets", default="2048,4096,8192", help="comma-separated budgets")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    overrides = [f"data.root={args.root}"]
    for key, value in (
        ("src_lang", args.src_lang), ("tgt_lang", args.tgt_lang),
        ("vocab_size", args.vocab_size), ("spm_model_type", args.spm_model_type),
    ):
        if value is not None:
            overrides.append(f"data.{key}={value}")
    options = data_options(args.config, overrides)

    with tempfile.TemporaryDirectory(prefix="seq2seq-bench-") as cache:
        options.update(cache_dir=cache, max_tokens=args.max_tokens)
        context = {
            "config": args.config,
            "pair": f"{options['src_lang']}-{options['tgt_lang']}",
            "vocab_size": options["vocab_size"],
            "spm_model_type": options["spm_model_type"],
        }

        start = time.perf_counter()
        dm = Seq2SeqDataModule.from_config(**options)
        dm.prepare_data()
        dm.setup("fit")
        first = time.perf_counter() - start
        src, tgt = dm.sources("train"), dm.references("train")
        emit(context, "first_preparation", seconds=first, train_pairs=len(src),
             kept_pairs=len(dm.datasets["train"]), has_test=dm.has_test,
             real_vocab_size=dm.tokenizer.src_vocab_size)

        start = time.perf_counter()
        dm = Seq2SeqDataModule.from_config(**options)
        dm.prepare_data()
        dm.setup("fit")
        cached = time.perf_counter() - start
        emit(context, "cached_load", seconds=cached, speedup_vs_first_preparation=first / cached)

        start = time.perf_counter()
        Tokenizer.train(src, tgt, options["vocab_size"], options["joint_vocab"], options["spm_model_type"])
        emit(context, "sentencepiece_training", seconds=time.perf_counter() - start)

        start = time.perf_counter()
        ids = dm.tokenizer.encode_source(src) + dm.tokenizer.encode_target(tgt)
        seconds = time.perf_counter() - start
        tokens = sum(len(x) for x in ids)
        emit(context, "tokenization", seconds=seconds, sentences=len(ids), tokens=tokens,
             sentences_per_s=len(ids) / seconds, tokens_per_s=tokens / seconds)

        stats = padding_stats(dm, args.max_tokens)
        emit(context, "batching", **{k: stats[k] for k in (
            "max_tokens", "batches", "epoch_seconds", "batches_per_s", "sentences_per_s")})
        for budget in (int(b) for b in args.padding_budgets.split(",") if b.strip()):
            stats = padding_stats(dm, budget)
            emit(context, "padding", **{k: stats[k] for k in (
                "max_tokens", "batches", "mean_sentences_per_batch", "padding_fraction",
                "src_padding_fraction", "tgt_padding_fraction")})


if __name__ == "__main__":
    main()
