"""The LightningModule: teacher-forced training, autoregressive validation/test, metrics.

The network is built once the vocabulary is known: from the DataModule's tokenizer in
:meth:`Seq2SeqModule.setup` when training, or from the tokenizer stored in the checkpoint when
loading one (:meth:`on_load_checkpoint` runs before the weights are loaded). A checkpoint
therefore carries everything needed to translate: weights, model config and tokenizer.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig, greedy_search
from seq2seq.errors import CheckpointError, Seq2SeqError
from seq2seq.metrics.text_metrics import translation_scores
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig


class TrainingError(Seq2SeqError):
    """Training cannot go on (e.g. the loss became NaN)."""


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


def inverse_sqrt_schedule(warmup_steps: int):
    """Linear warmup to the peak learning rate, then decay with 1/sqrt(step) (Vaswani et al.)."""

    def factor(step: int) -> float:
        step = step + 1
        if step < warmup_steps:
            return step / warmup_steps
        return math.sqrt(warmup_steps / step)

    return factor


class Seq2SeqModule(L.LightningModule):
    """Trains a :class:`Seq2SeqTransformer` and evaluates it with corpus BLEU and chrF.

    Args:
        model: :class:`TransformerConfig` fields except the vocabulary sizes and special ids,
            which come from the tokenizer.
        optim: ``lr`` (peak), ``warmup_steps``, ``betas``, ``eps``, ``weight_decay``,
            ``label_smoothing``.
        decoding: :class:`DecodingConfig` fields for validation and test.
        tokenizer: builds the network at once when given (otherwise in ``setup``).
    """

    def __init__(
        self,
        model: dict | DictConfig,
        optim: dict | DictConfig,
        decoding: dict | DictConfig | None = None,
        tokenizer: Tokenizer | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(
            {"model": _plain(model), "optim": _plain(optim), "decoding": _plain(decoding)}
        )
        self.tokenizer: Tokenizer | None = None
        self.net: Seq2SeqTransformer | None = None
        self.bleu_best = 0.0
        self._eval_outputs: list[tuple[int, str]] = []
        self.eval_results: dict[str, dict] = {}  # last val/test scores, signatures and hypotheses
        if tokenizer is not None:
            self.build(tokenizer)

    # ------------------------------------------------------------------ building
    def build(self, tokenizer: Tokenizer) -> None:
        """Create the network for ``tokenizer``'s vocabulary (once)."""
        if self.net is not None:
            return
        self.tokenizer = tokenizer
        fields = {k: v for k, v in self.hparams.model.items() if k in TransformerConfig.__dataclass_fields__}
        fields["share_embeddings"] = fields.get("share_embeddings", True) and tokenizer.joint
        cfg = TransformerConfig(
            **fields,
            src_vocab_size=tokenizer.src_vocab_size,
            tgt_vocab_size=tokenizer.tgt_vocab_size,
            pad_id=tokenizer.pad_id,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
        )
        self.net = Seq2SeqTransformer(cfg)

    def setup(self, stage: str) -> None:
        if self.net is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or getattr(datamodule, "tokenizer", None) is None:
                raise RuntimeError("Seq2SeqModule needs a tokenizer: pass one, or train with a Seq2SeqDataModule")
            self.build(datamodule.tokenizer)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer"] = self.tokenizer.state_dict()
        checkpoint["model_config"] = dict(self.net.config.__dict__)
        checkpoint["bleu_best"] = self.bleu_best

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "tokenizer" not in checkpoint:
            raise CheckpointError("the checkpoint holds no tokenizer: it was not written by seq2seq.train")
        if self.net is None:
            self.build(Tokenizer.from_state_dict(checkpoint["tokenizer"]))
        elif self.tokenizer.state_dict() != checkpoint["tokenizer"]:
            raise CheckpointError(
                "the checkpoint's tokenizer differs from the one trained on this run's data: it comes "
                "from another corpus or vocabulary. Resume with the same data.* settings, or start anew."
            )
        self.bleu_best = checkpoint.get("bleu_best", 0.0)

    @property
    def decoding_config(self) -> DecodingConfig:
        fields = DecodingConfig.__dataclass_fields__
        return DecodingConfig(**{k: v for k, v in (self.hparams.decoding or {}).items() if k in fields})

    # ------------------------------------------------------------------ training
    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.net(src, tgt_in)

    def _loss(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Label-smoothed cross-entropy summed over non-pad targets; returns (smoothed, nll, n_tokens)."""
        logits = self.net(batch["src"], batch["tgt_in"])
        target = batch["tgt_out"]
        pad = self.net.config.pad_id
        flat_logits, flat_target = logits.reshape(-1, logits.size(-1)), target.reshape(-1)
        smoothed = F.cross_entropy(
            flat_logits.float(), flat_target, ignore_index=pad, reduction="sum",
            label_smoothing=self.hparams.optim.get("label_smoothing", 0.0),
        )
        nll = F.cross_entropy(flat_logits.detach().float(), flat_target, ignore_index=pad, reduction="sum")
        return smoothed, nll, (target != pad).sum()

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        smoothed, nll, n_tokens = self._loss(batch)
        loss = smoothed / n_tokens
        if not torch.isfinite(loss):
            # A NaN/inf loss would silently poison the weights: stop, or skip this batch.
            if self.hparams.optim.get("nonfinite", "stop") == "skip":
                self.log("train/skipped_batches", 1.0, reduce_fx="sum", on_step=False, on_epoch=True)
                return None
            raise TrainingError(
                f"non-finite loss ({loss.item()}) at step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}). Lower optim.lr, raise optim.warmup_steps or check the data; "
                "optim.nonfinite=skip skips such batches instead."
            )
        size = batch["src"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/nll", nll / n_tokens, batch_size=size)
        return loss

    def on_train_epoch_start(self) -> None:
        # Lightning sets the epoch on samplers, not on batch samplers: reshuffle ours per epoch.
        sampler = getattr(getattr(self.trainer, "datamodule", None), "train_sampler", None)
        if sampler is not None:
            sampler.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        opt = self.hparams.optim
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": opt.get("weight_decay", 0.0)}, {"params": no_decay, "weight_decay": 0.0}],
            lr=opt["lr"],
            betas=tuple(opt.get("betas", (0.9, 0.98))),
            eps=opt.get("eps", 1e-9),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, inverse_sqrt_schedule(opt.get("warmup_steps", 4000)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict, prefix: str) -> None:
        _, nll, n_tokens = self._loss(batch)
        # Summed over batches then divided, so the epoch loss is per token, not per batch.
        self.log(f"{prefix}/loss", nll / n_tokens, batch_size=int(n_tokens), sync_dist=True)
        hyps = self.tokenizer.decode_target(greedy_search(self.net, batch["src"], self.decoding_config))
        self._eval_outputs.extend(zip(batch["index"].tolist(), hyps))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def _eval_epoch_end(self, prefix: str) -> dict:
        indices, hypotheses = self.gathered_hypotheses()
        all_refs = self.trainer.datamodule.references(prefix)
        references = [all_refs[i] for i in indices]
        scores = translation_scores(hypotheses, references)
        # Every rank holds the same gathered corpus score, so no reduction is needed.
        self.log(f"{prefix}/bleu", scores["bleu"])
        self.log(f"{prefix}/chrf", scores["chrf"])
        loss = self.trainer.callback_metrics.get(f"{prefix}/loss")
        if loss is not None:
            self.log(f"{prefix}/ppl", torch.exp(loss.float().clamp(max=50)))
        self.eval_results[prefix] = {**scores, "indices": indices, "hypotheses": hypotheses}
        return scores

    def gathered_hypotheses(self) -> tuple[list[int], list[str]]:
        """This epoch's (dataset indices, hypotheses) from every rank, in dataset order."""
        outputs = self._eval_outputs
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        by_index = dict(outputs)  # DDP padding may repeat a sentence; it has one hypothesis
        indices = sorted(by_index)
        return indices, [by_index[i] for i in indices]

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        scores = self._eval_epoch_end("val")
        self.bleu_best = max(self.bleu_best, scores["bleu"])
        self.log("val/bleu_best", self.bleu_best)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
