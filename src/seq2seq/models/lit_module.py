"""The LightningModule: teacher-forced training, autoregressive validation/test, metrics.

The network is built once the vocabulary is known: from the DataModule's tokenizer in ``setup``, or
from the model config and tokenizer a checkpoint stores (``on_load_checkpoint`` runs before the
weights are loaded), so a checkpoint carries everything needed to translate; a fine-tuning run takes
its parent's network and tokenizer (:meth:`Seq2SeqModule.start_from`). Validation and test decode
through the one prediction path (:class:`~seq2seq.inference.predictor.Predictor`). The training loss
is normalized per target token over a whole optimizer step, accumulated batches and DDP ranks
included (:meth:`Seq2SeqModule.on_before_optimizer_step`).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torchmetrics import MaxMetric, MinMetric

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.inference.checkpoint import model_config
from seq2seq.inference.predictor import Predictor
from seq2seq.metrics.text_metrics import (
    DEFAULT_MONITOR,
    PairOutputs,
    bleu_tokenizer,
    check_task,
    score_by_group,
    signatures_by_metric,
)
from seq2seq.models.loss import sequence_loss, target_index
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig
from seq2seq.training.compile import compile_dynamic, resolve_compile
from seq2seq.training.nonfinite import NonFiniteGuard
from seq2seq.training.optimizer import build_optimizer
from seq2seq.training.schedule import lr_schedule


def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg or {})


class Seq2SeqModule(L.LightningModule):
    """Trains a :class:`Seq2SeqTransformer` and evaluates it with the task's corpus metrics.

    Args:
        model: :class:`TransformerConfig` fields (the ``model`` config group) except the vocabulary
            sizes and special ids, which come from the tokenizer.
        optim: ``lr`` (peak), ``warmup_steps``, ``cooldown`` (fraction of the budget annealed to 0), ``betas``, ``eps``, ``weight_decay``,
            ``label_smoothing``, ``nonfinite``, ``nonfinite_check_every``.
        decoding: :class:`DecodingConfig` fields; validation and test decode greedily with its
            length limits and constraints.
        tokenizer: builds the network at once when given (otherwise in ``setup``).
        task: ``translation`` (validation/test log ``bleu`` and ``chrf``) or ``summarization``
            (``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum``; see :data:`~seq2seq.metrics.text_metrics.TASK_METRICS`).
        monitor, monitor_mode: the metric that picks the best checkpoint (the config's ``monitor``)
            and whether higher (``max``) or lower is better; its best value so far is logged as
            ``<monitor>_best``. Default: the task's (``val/bleu``, ``val/rougeLsum``).
        speed: the training fast path (the ``speed`` config group): ``compile``, ``unpad``,
            ``loss_chunk_tokens``.
        init_from: the parent of a fine-tuning run as ``metrics.json`` records it
            (:meth:`seq2seq.inference.checkpoint.Parent.record`); kept in the checkpoints' hyperparameters,
            so that resuming the run tokenizes with the parent's tokenizer again.
    """

    def __init__(self, model: dict | DictConfig, optim: dict | DictConfig, decoding: dict | DictConfig | None = None,
                 tokenizer: Tokenizer | None = None, task: str = "translation", monitor: str | None = None,
                 monitor_mode: str = "max", speed: dict | DictConfig | None = None, init_from: dict | None = None):
        super().__init__()
        check_task(task)
        if monitor_mode not in ("max", "min"):
            raise ConfigError(f"monitor.mode={monitor_mode!r}: use max or min")
        monitor = monitor or DEFAULT_MONITOR[task]
        self.save_hyperparameters({
            "model": _plain(model), "optim": _plain(optim), "decoding": _plain(decoding), "task": task,
            "monitor": monitor, "monitor_mode": monitor_mode, "speed": _plain(speed), "init_from": init_from,
        })
        self.task, self.monitor, self.monitor_mode = task, monitor, monitor_mode
        self.speed = self.hparams.speed
        # The best monitored value so far (restored from checkpoints, see on_load_checkpoint).
        # float64: metrics.json keeps the value as logged.
        self.best_monitor = (MaxMetric() if monitor_mode == "max" else MinMetric()).set_dtype(torch.float64)
        self.tokenizer: Tokenizer | None = None
        self.net: Seq2SeqTransformer | None = None
        self._eval_outputs: list[tuple[int, str]] = []
        self._predictor: Predictor | None = None  # validation's and test's, built per epoch
        self._step_sums: Tensor | None = None  # (smoothed loss, nll, target tokens) of this step's batches so far
        self._compiled_loss = None  # speed.compile's training loss, set up in setup("fit")
        self.nonfinite = NonFiniteGuard(self.hparams.optim.get("nonfinite", "stop"))
        self.eval_results: dict[str, dict] = {}  # last val/test scores, signatures and hypotheses
        if tokenizer is not None:
            self.build(tokenizer)

    # ------------------------------------------------------------------ building
    def build(self, tokenizer: Tokenizer, config: TransformerConfig | None = None) -> None:
        """Create the network for ``tokenizer``'s vocabulary (once), from ``config`` or the model config."""
        if self.net is not None:
            return
        self.tokenizer = tokenizer
        if config is None:
            fields = dict(self.hparams.model)
            TransformerConfig.check_settings(fields)
            fields["share_embeddings"] = fields.get("share_embeddings", True) and tokenizer.one_vocabulary
            if fields.get("copy_attention") and not tokenizer.joint:
                raise ConfigError(
                    "model.copy_attention=true copies source tokens into the output and needs one vocabulary "
                    "for both sides: set data.joint_vocab=true (or model.copy_attention=false)"
                )
            config = TransformerConfig(
                **fields, src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
            )
        self.net = Seq2SeqTransformer(config)

    def start_from(self, net: Seq2SeqTransformer, tokenizer: Tokenizer) -> None:
        """Fine-tuning: train ``net`` (a parent's network: its weights and config) with ``tokenizer``."""
        if self.net is not None:
            raise RuntimeError("start_from: the network is already built")
        self.tokenizer, self.net = tokenizer, net.train()

    def network(self) -> Seq2SeqTransformer:
        """The network, built from the DataModule's tokenizer if it is not yet (callbacks that need it in
        their ``setup``, which runs before this module's, call this)."""
        if self.net is None:
            datamodule = getattr(self.trainer, "datamodule", None)
            if datamodule is None or getattr(datamodule, "tokenizer", None) is None:
                raise RuntimeError("Seq2SeqModule needs a tokenizer: pass one, or train with a Seq2SeqDataModule")
            self.build(datamodule.tokenizer)
        return self.net

    def setup(self, stage: str) -> None:
        self.network()
        datamodule = getattr(self._trainer, "datamodule", None)
        if self.task == "translation" and datamodule is not None:
            # A BLEU tokenizer that cannot run here (a missing MeCab extra) stops before training;
            # every corpus (a multilingual DataModule's pairs) has its own.
            for corpus in datamodule.corpora.values():
                bleu_tokenizer(corpus.tgt_lang, corpus.bleu_tokenize)
        if stage != "fit":
            return
        # Compile the training loss (speed.compile): only a function closing over self.net, so that
        # checkpoints keep their net.* keys (no _orig_mod) and load anywhere uncompiled.
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        self._compiled_loss = None
        if resolve_compile(self.speed.get("compile", "auto"), device):
            net, chunk = self.net, self.speed.get("loss_chunk_tokens")

            def loss(src, tgt_in, tgt_out, index, src_index, label_smoothing, unpad):
                # Inductor fuses the loss itself: the plain (unfused) formula compiles best.
                return sequence_loss(
                    net, src, tgt_in, tgt_out, label_smoothing, index, fused=False, chunk=chunk,
                    src_index=src_index, unpad=unpad,
                )

            # Dynamic shapes: one graph for every batch size, length and token count.
            self._compiled_loss = compile_dynamic(loss)
        # Reading the loss back every step would stall a GPU: a CUDA run checks every log interval.
        every = self.hparams.optim.get("nonfinite_check_every", "auto")
        if every in (None, "auto"):
            every = self.trainer.log_every_n_steps if device.type == "cuda" and self._trainer is not None else 1
        self.nonfinite = NonFiniteGuard(self.nonfinite.mode, every)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.nonfinite.raise_if_seen()
        checkpoint["tokenizer"] = self.tokenizer.state_dict()
        checkpoint["model_config"] = dict(self.net.config.__dict__)
        checkpoint["best_scores"] = {self.monitor: float(self.best_monitor.compute())} if self.best_monitor.update_called else {}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "tokenizer" not in checkpoint:
            raise CheckpointError("the checkpoint holds no tokenizer: it was not written by seq2seq.train")
        if self.net is None:
            self.build(Tokenizer.from_state_dict(checkpoint["tokenizer"]), model_config(checkpoint))
        elif self.tokenizer.state_dict() != checkpoint["tokenizer"]:
            raise CheckpointError(
                "the checkpoint's tokenizer differs from the one trained on this run's data: it comes "
                "from another corpus or vocabulary. Resume with the same data.* settings, or start anew."
            )
        self.best_monitor.reset()
        best = checkpoint.get("best_scores", {}).get(self.monitor)
        if best is not None:
            self.best_monitor.update(best)

    @property
    def decoding_config(self) -> DecodingConfig:
        return DecodingConfig.from_mapping(self.hparams.decoding)

    # ------------------------------------------------------------------ training
    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        return self.net(src, tgt_in)

    def _loss(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Label-smoothed cross-entropy summed over non-pad targets; returns (smoothed, nll, n_tokens).

        Logits are computed for the non-pad targets only (see :mod:`seq2seq.models.loss`); with
        ``speed.unpad`` the whole network runs on real tokens only (``collate`` gives their positions).
        """
        target = batch["tgt_out"]
        index, src_index = batch.get("tgt_index"), batch.get("src_index")
        eps = self.hparams.optim.get("label_smoothing", 0.0)
        unpad = bool(self.speed.get("unpad", True)) and src_index is not None
        compiled = self._compiled_loss
        if compiled is not None and self.training and torch.is_grad_enabled():
            if index is None:
                index = target_index(target, self.net.config.pad_id)
            smoothed, nll = compiled(batch["src"], batch["tgt_in"], target, index, src_index, eps, unpad)
        else:
            chunk = self.speed.get("loss_chunk_tokens")
            smoothed, nll = sequence_loss(
                self.net, batch["src"], batch["tgt_in"], target, eps, index, chunk=chunk, src_index=src_index, unpad=unpad
            )
        return smoothed, nll, (target != self.net.config.pad_id).sum()

    def _token_exact(self) -> bool:
        """Whether an optimizer step sums several batches' gradients (accumulation or DDP ranks)."""
        trainer = self._trainer
        return trainer is not None and (trainer.accumulate_grad_batches > 1 or trainer.world_size > 1)

    def _loss_scale(self) -> float:
        """1 / data.max_tokens (the same on every rank and batch): a token-exact step's summed losses are
        scaled by it before backward, keeping gradients at a per-token size (fp16's range)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        return 1.0 / float(datamodule.batching.max_tokens) if datamodule is not None else 1.0

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        smoothed, nll, n_tokens = self._loss(batch)
        loss = smoothed / n_tokens
        if self.nonfinite.skip(loss, self.global_step, f"epoch {self.current_epoch}, batch {batch_idx}"):
            self.log("train/skipped_batches", 1.0, reduce_fx="sum", on_step=False, on_epoch=True)
            return None
        if self._token_exact():
            # The sum, not this batch's mean: on_before_optimizer_step divides by the step's total tokens
            # (and logs the step's per-token loss).
            sums = torch.stack([smoothed.detach(), nll.detach(), n_tokens]).to(torch.float64)
            self._step_sums = sums if self._step_sums is None else self._step_sums + sums
            return smoothed * self._loss_scale()
        size = batch["src"].size(0)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/nll", nll / n_tokens, batch_size=size)
        return loss

    def on_train_start(self) -> None:
        self._step_sums = None

    def on_before_optimizer_step(self, optimizer) -> None:
        """Token-exact normalization: the step's gradient is the sum of its batches' summed-loss
        gradients divided by their total number of target tokens, over every rank.

        Lightning divided each returned loss by ``accumulate_grad_batches`` (N) and DDP averaged the
        gradients over the W ranks, so what each parameter holds now is ``c / (N W)`` times the sum
        (``c``: :meth:`_loss_scale`); multiplying by ``N W / (c T)``, T the tokens of all N x W batches
        (one all-reduce), gives the gradient of one batch holding them all. This runs after the AMP
        scaler unscaled the gradients and before clipping. ``train/loss`` and ``train/nll`` are logged
        here, per token of the whole step.
        """
        if not self._token_exact():
            return
        world = self.trainer.world_size
        if self._step_sums is None and world == 1:
            return  # every batch of the step was skipped (optim.nonfinite=skip): no gradient
        sums = self._step_sums if self._step_sums is not None else torch.zeros(3, dtype=torch.float64, device=self.device)
        self._step_sums = None
        if world > 1:  # every rank takes part, also one whose batches were all skipped
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        smoothed, nll, tokens = sums.unbind()
        factor = (self.trainer.accumulate_grad_batches * world / self._loss_scale()) / tokens.clamp(min=1)
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, factor.to(grads[0].device, torch.float32))
        self.log("train/loss", (smoothed / tokens).float(), prog_bar=True)
        self.log("train/nll", (nll / tokens).float())

    def on_validation_start(self) -> None:
        self.nonfinite.raise_if_seen()

    on_train_end = on_validation_start

    def on_train_epoch_start(self) -> None:
        # Lightning sets the epoch on samplers, not on batch samplers: reshuffle ours per epoch.
        sampler = getattr(getattr(self.trainer, "datamodule", None), "train_sampler", None)
        if sampler is not None:
            sampler.set_epoch(self.current_epoch)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Lightning's clipping, except under FSDP (``trainer=fsdp``): there each rank holds a shard of
        every gradient, so the norm is the sharded module's ``clip_grad_norm_`` (over all shards);
        Lightning's FSDP precision plugin refuses norm clipping."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.trainer.model if self._trainer is not None else None
        if isinstance(model, FullyShardedDataParallel) and gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            model.clip_grad_norm_(float(gradient_clip_val))
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        opt = self.hparams.optim
        # Lightning moves the module to its device before this hook: the fused AdamW kernel fits it.
        optimizer = build_optimizer(self.named_parameters(), opt)
        scheduler = lr_schedule(optimizer, opt.get("warmup_steps", 4000), opt.get("cooldown"), lambda: self._trainer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict, prefix: str) -> None:
        _, nll, n_tokens = self._loss(batch)
        # Summed over batches then divided, so the epoch loss is per token, not per batch.
        self.log(f"{prefix}/loss", nll / n_tokens, batch_size=int(n_tokens), sync_dist=True)
        pair = self.trainer.datamodule.pair_of_index(prefix, int(batch["index"][0]))
        if pair is not None:  # several language pairs (data/multilingual.py): a batch holds one
            self.log(f"{prefix}/loss/{pair}", nll / n_tokens, batch_size=int(n_tokens), sync_dist=True)
        predictions = self._predictor.predict_batch(batch)
        texts = self._predictor.texts([nbest[0] for _, nbest in predictions])
        self._eval_outputs.extend(zip((index for index, _ in predictions), texts))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []
        self._predictor = Predictor.greedy(self.net, self.tokenizer, self.decoding_config)

    on_test_epoch_start = on_validation_epoch_start

    def _eval_epoch_end(self, prefix: str) -> dict:
        outputs = self._eval_outputs  # (dataset index, hypothesis) of this rank
        if self.trainer.world_size > 1:
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, outputs)
            outputs = [item for part in gathered for item in part]
        by_index = dict(outputs)  # DDP padding may repeat a sentence; it has one hypothesis
        indices = sorted(by_index)
        hypotheses = [by_index[i] for i in indices]
        # Several language pairs (data/multilingual.py): each scored alone, and their means.
        groups = {name: PairOutputs(hyps, refs, corpus.tgt_lang, corpus.bleu_tokenize)
                  for name, (corpus, hyps, refs) in self.trainer.datamodule.by_corpus(prefix, indices, hypotheses).items()}
        metrics, signatures = score_by_group(self.task, groups)
        # Every rank holds the same gathered corpus score, so no reduction is needed.
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value)
        loss = self.trainer.callback_metrics.get(f"{prefix}/loss")
        if loss is not None:
            self.log(f"{prefix}/ppl", torch.exp(loss.float().clamp(max=50)))
        self.eval_results[prefix] = {**metrics, **signatures, "indices": indices, "hypotheses": hypotheses}
        return metrics

    @property
    def signatures(self) -> dict[str, dict[str, str]]:
        """The signatures of the last scores of each split, ``{"val": {"bleu": .., "chrf": ..},
        "test": {...}}`` (``{"rouge": ..}`` for summarization): metrics.json's ``signatures``."""
        return {prefix: signatures_by_metric(results) for prefix, results in self.eval_results.items()}

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        current = {f"val/{name}": value for name, value in self._eval_epoch_end("val").items()}
        loss = self.trainer.callback_metrics.get("val/loss")
        if loss is not None:
            current["val/loss"] = float(loss)
        if self.monitor in current:
            self.best_monitor.update(current[self.monitor])
            self.log(f"{self.monitor}_best", self.best_monitor.compute())

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
