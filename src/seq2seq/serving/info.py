"""What ``GET /info`` says about the served model: the network's parameter count, the server's
settings and, when the checkpoint sits in its run folder, what the exported model card reads from
that run (:mod:`seq2seq.inference.model_card`). What is not known is ``null``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from seq2seq.api import Translator
from seq2seq.inference.model_card import dataset_name, read_run, run_folder, scores


def model_info(translator: Translator, ckpt_path: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """The model's description: checkpoint(s), run folder, task, languages, parameters, training
    data, scores (test first, each with its signature; ``bleu`` the first BLEU row), decoding, device."""
    paths = [str(ckpt_path)] if isinstance(ckpt_path, str | Path) else [str(p) for p in ckpt_path]
    run = run_folder(paths[0])
    metrics, config, _ = read_run(run)
    task = metrics.get("task") or config.get("task") or "translation"
    data = config.get("data") or {}
    rows = scores(metrics, task)
    return {
        "checkpoints": paths,
        "ensemble": len(paths) > 1,
        "run_dir": str(run) if run else None,
        "task": task,
        "languages": {"source": data.get("src_lang"), "target": data.get("tgt_lang")},
        "parameters": translator.num_parameters,
        "quantize": translator.quantize,
        "training_data": dataset_name(config),
        "scores": rows,
        "bleu": next((row for row in rows if row["metric"] == "bleu"), None),
        "decoding": asdict(translator.decoding),
        "device": str(translator.device),
    }
