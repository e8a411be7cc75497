"""The final scores of a training run (``final:`` in ``conf/train.yaml``), computed as training ends.

As fairseq's recipes score for their papers: the average of the last ``final.average_last``
checkpoints of ``final.checkpoints`` (else ``best.ckpt``), decoded with the ``decoding`` group through
the same predictor and scorer as ``seq2seq-eval``, into ``final/`` as an eval run folder; the run's
``metrics.json`` repeats the numbers as ``final/val/bleu``, ...
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from seq2seq.analysis import hypotheses as hypothesis_files
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.inference.checkpoint import average_checkpoints, last_checkpoints, load_model, save_checkpoint
from seq2seq.inference.predictor import Predictor
from seq2seq.metrics.text_metrics import score, signatures_by_metric
from seq2seq.utils.io import atomic_write_text

log = logging.getLogger(__name__)

FOLDER = "final"
PREFIX = "final/"


def check_final(final: Mapping[str, Any] | None, datamodule) -> None:
    """Refuse, before training, a ``final`` config that could not run when training ends."""
    if not final:
        return
    average_last = final.get("average_last")
    if average_last is not None and (isinstance(average_last, bool) or int(average_last) < 0):
        raise ConfigError(f"final.average_last={average_last!r}: the number of last checkpoints to average (0: none)")
    if average_last and not final.get("checkpoints"):
        raise ConfigError("final.average_last needs final.checkpoints: the folder of the checkpoints to average "
                          "(callbacks=epoch_checkpoints keeps one per epoch under <run>/checkpoints/epochs)")
    if datamodule.multilingual:
        raise ConfigError("final scores one language pair; evaluate a multilingual run with seq2seq-eval (final=null)")


def final_model(final: Mapping[str, Any], output_dir: Path, best: str | None) -> tuple[Path, list[Path]]:
    """``(checkpoint to score, checkpoints averaged into it)``: the average of the last
    ``average_last`` checkpoints of ``final.checkpoints`` (fewer if fewer were written, with a
    warning), or ``best`` without averaging."""
    average_last = int(final.get("average_last") or 0)
    if average_last:
        try:
            paths = last_checkpoints(final["checkpoints"], average_last)
        except CheckpointError as err:
            log.warning("final: nothing to average (%s); scoring best.ckpt", err)
            paths = []
        if paths:
            if len(paths) < average_last:
                log.warning("final.average_last=%d but %s holds %d checkpoints: averaging those",
                            average_last, final["checkpoints"], len(paths))
            averaged = save_checkpoint(average_checkpoints(paths), output_dir / "checkpoints" / "averaged.ckpt")
            log.info("final: averaged %d checkpoints into %s", len(paths), averaged)
            return averaged, paths
    if not best:
        raise CheckpointError("final: no checkpoint to score (no best.ckpt: is checkpointing off?)")
    return Path(best), []


def final_scores(final: Mapping[str, Any], output_dir: str | Path, datamodule, task: str,
                 decoding: Mapping[str, Any], best: str | None, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Score the final model (see the module docstring); returns what the run's metrics.json adds:
    ``final/<split>/<metric>`` numbers, and ``final`` (the checkpoint, the averaged inputs, the
    decoding, the signatures)."""
    started = time.perf_counter()
    output_dir = Path(output_dir)
    checkpoint, averaged = final_model(final, output_dir, best)
    net, tokenizer = load_model(checkpoint, device)
    settings = DecodingConfig.from_mapping(decoding)
    predictor = Predictor(net, tokenizer, settings, device)
    folder = output_dir / FOLDER
    metrics: dict[str, float] = {}
    signatures: dict[str, dict[str, str]] = {}
    for split in ("val", "test") if datamodule.has_test else ("val",):
        nbest, nll, n_tokens = predictor.predict_loader(datamodule.eval_dataloader(split, tokenizer))
        texts = tokenizer.decode_target([hyps[0].tokens for hyps in nbest])
        references = datamodule.reference_streams(split)
        scores, sigs = score(task, texts, references, datamodule.tgt_lang, datamodule.bleu_tokenize)
        loss = nll / max(n_tokens, 1)
        metrics.update({f"{split}/{k}": v for k, v in scores.items()})
        metrics.update({f"{split}/loss": loss, f"{split}/ppl": math.exp(min(loss, 50.0))})
        signatures[split] = signatures_by_metric(sigs)
        hypothesis_files.write(folder, split, texts, references, corpus=datamodule.corpora[None],
                               decoding=dataclasses.asdict(settings), task=task, checkpoint=str(checkpoint),
                               bleu_tokenize=datamodule.bleu_tokenize)
    about = {"checkpoint": str(checkpoint), "averaged": [str(p) for p in averaged],
             "decoding": dataclasses.asdict(settings), "signatures": signatures,
             "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(folder / "metrics.json", json.dumps({**metrics, **about, "task": task, "ckpt_path": str(checkpoint),
                                                          "run_dir": str(folder)}, indent=2) + "\n")
    return {**{PREFIX + k: v for k, v in metrics.items()}, "final": about}
