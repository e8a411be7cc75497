"""Sample outputs and a cross-attention heatmap at each validation, for the dashboards.

After every validation the first ``num_samples`` validation examples go to the loggers as a table
of source, reference and hypothesis (TensorBoard text, wandb table, CSV: ``val_samples.jsonl`` in the
logger's folder), and the first one's cross-attention (:mod:`seq2seq.analysis.attention`) as image
``val/cross_attention`` (CSV: the latest at ``cross_attention.png``). The heatmap forces the
hypothesis the validation produced, so it shows what the model attended to while writing it.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.image import imread

from seq2seq.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)


def _markdown_table(rows: list[tuple[str, str, str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ") or " "

    lines = ["| source | reference | hypothesis |", "|---|---|---|"]
    lines += [f"| {cell(s)} | {cell(r)} | {cell(h)} |" for s, r, h in rows]
    return "\n".join(lines)


class ValidationSamples(L.Callback):
    """Log ``num_samples`` validation translations and one cross-attention heatmap per validation."""

    def __init__(self, num_samples: int = 5, heatmap: bool = True, max_heatmap_tokens: int = 60):
        if num_samples < 0:
            raise ValueError(f"num_samples={num_samples} must be >= 0")
        self.num_samples = num_samples
        self.heatmap = heatmap
        self.max_heatmap_tokens = max_heatmap_tokens

    def samples(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[tuple[str, str, str]]:
        """(source, reference, hypothesis) of the first validation examples decoded this epoch."""
        results = getattr(pl_module, "eval_results", {}).get("val")
        if not results or self.num_samples == 0:
            return []
        datamodule = trainer.datamodule
        sources, references = datamodule.sources("val"), datamodule.references("val")
        pairs = list(zip(results["indices"], results["hypotheses"]))[: self.num_samples]
        return [(sources[i], references[i], hyp) for i, hyp in pairs]

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        rows = self.samples(trainer, pl_module)
        if not rows:
            return
        step = trainer.fit_loop.epoch_loop._batches_that_stepped  # the step of this validation's metrics
        image = self._heatmap(pl_module, rows[0]) if self.heatmap else None
        for logger in trainer.loggers:
            try:
                self._log(logger, rows, image, step)
            except Exception as err:  # noqa: BLE001 - a dashboard hiccup must not end a training run
                log.warning("Could not log validation samples to %s: %s", type(logger).__name__, err)

    def _heatmap(self, pl_module: L.LightningModule, row: tuple[str, str, str]) -> bytes | None:
        from seq2seq.analysis.attention import attention_maps, figure_png, plot_cross_attention

        source, _, hypothesis = row
        tokenizer = pl_module.tokenizer
        if not source.strip() or len(tokenizer.encode_source([source])[0]) > self.max_heatmap_tokens:
            return None
        maps = attention_maps(pl_module.net, tokenizer, source, target=hypothesis)
        return figure_png(plot_cross_attention(maps), dpi=80)

    @staticmethod
    def _log(logger, rows: list[tuple[str, str, str]], image: bytes | None, step: int) -> None:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_text("val/samples", _markdown_table(rows), step)
            if image is not None:
                logger.experiment.add_image("val/cross_attention", _rgb(image), step, dataformats="HWC")
        elif isinstance(logger, WandbLogger):
            logger.log_table("val/samples", columns=["source", "reference", "hypothesis"], data=[list(r) for r in rows])
            if image is not None:
                logger.log_image("val/cross_attention", [_rgb(image)])
        elif isinstance(logger, CSVLogger):
            folder = Path(logger.log_dir)
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "val_samples.jsonl", "a", encoding="utf-8") as f:
                for source, reference, hypothesis in rows:
                    record = {"step": step, "source": source, "reference": reference, "hypothesis": hypothesis}
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            if image is not None:
                atomic_write_bytes(folder / "cross_attention.png", image)


def _rgb(png: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8."""
    pixels = imread(io.BytesIO(png), format="png")  # float in [0, 1], RGBA
    return (pixels[..., :3] * 255).round().astype(np.uint8)
