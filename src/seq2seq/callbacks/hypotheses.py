"""Keep the hypotheses behind a run's numbers in its folder (:mod:`seq2seq.analysis.hypotheses`).

``hypotheses.val.txt`` holds the validation that chose ``best.ckpt`` (rewritten whenever a
validation improves the monitored metric, i.e. when ``best.ckpt`` is written), ``hypotheses.test.txt``
the test of the checkpoint training ends with; each with its record (``.json``: references,
decoding settings, checkpoint). Validation and test decode greedily with the ``decoding`` group's
length limits, and the record says so. A multilingual run (several pairs) keeps none: its
hypotheses are scored pair by pair.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from seq2seq.analysis import hypotheses as hypothesis_files

log = logging.getLogger(__name__)


class HypothesisFiles(Callback):
    """Write ``hypotheses.<split>.txt`` and its record into ``dirpath`` (the run folder); see the module docstring."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        checkpoint = trainer.checkpoint_callback
        current = trainer.callback_metrics.get(pl_module.monitor)
        if checkpoint is None or current is None or checkpoint.monitor != pl_module.monitor:
            return
        # Checkpoint callbacks run after this one: ask the one that writes best.ckpt whether it will. On
        # every rank: under DDP its answer is a collective decision (all ranks reduce it together).
        if not checkpoint.check_monitor_top_k(trainer, current) or not trainer.is_global_zero:
            return
        best = Path(checkpoint.dirpath) / f"{checkpoint.filename or 'best'}{checkpoint.FILE_EXTENSION}"
        self._write(trainer, pl_module, "val", str(best))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.fast_dev_run:
            self._write(trainer, pl_module, "test", trainer.ckpt_path)

    def _write(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str, checkpoint: str | None) -> None:
        datamodule = trainer.datamodule
        results = getattr(pl_module, "eval_results", {}).get(split)
        if not results or datamodule is None or getattr(datamodule, "split_by_pair", None) is not None:
            return
        references = datamodule.reference_streams(split)
        indices = results["indices"]
        complete = list(indices) == list(range(len(references[0])))
        scored = references if complete else [[stream[i] for i in indices] for stream in references]
        decoding = {**dataclasses.asdict(pl_module.decoding_config), "strategy": "greedy", "n_best": 1}
        hypothesis_files.write(
            self.dirpath, split, results["hypotheses"], scored, datamodule=datamodule, decoding=decoding,
            task=pl_module.task, checkpoint=checkpoint, bleu_tokenize=datamodule.bleu_tokenize,
            indices=None if complete else indices,
        )
