"""Training entry point: ``python -m seq2seq.train [experiment=NAME] [model/size=SIZE] [key=value ...]``.

Composes the DataModule, the LightningModule, callbacks, loggers and the Trainer from the Hydra
config, trains, tests the best checkpoint, and writes ``metrics.json`` into the run folder.
``ckpt_path`` resumes a run exactly (``auto``: from the run folder's ``last.ckpt``, if any, unless
the run finished); ``init_from`` starts a new run from another run's weights and tokenizer. A
SIGTERM, SIGUSR1 or SIGUSR2 writes ``last.ckpt`` and exits with status 75
(:mod:`seq2seq.callbacks.preemption`). Returns the best value of ``monitor.metric`` for Hydra
sweepers; a job of a multirun that raises writes ``failure.json`` and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from torch.distributed.fsdp import FullyShardedDataParallel

from seq2seq.analysis.final_scores import check_final, final_scores
from seq2seq.callbacks.checkpointing import AtomicCheckpointIO, finished_run, resume_checkpoint
from seq2seq.callbacks.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptionCheckpoint
from seq2seq.config import check_budget, config_dir, in_multirun, resolve_monitor, user_errors_exit
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import fine_tuned_tokenizer, load_parent, read_checkpoint
from seq2seq.models.lit_module import Seq2SeqModule
from seq2seq.models.transformer import TransformerConfig
from seq2seq.run_summary import FAILURE_FILE, finish_run, record_failure, scalar_metrics
from seq2seq.utils.run_info import log_run_info, run_info

log = logging.getLogger(__name__)


def _plugins(configured) -> list:
    """The trainer's plugins, with checkpoints written atomically unless another CheckpointIO is set."""
    from lightning.fabric.plugins import CheckpointIO

    plugins = [instantiate(p) if isinstance(p, DictConfig) else p for p in (configured or [])]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return plugins


def _trainer(cfg: DictConfig) -> L.Trainer:
    """The Trainer of ``cfg.trainer`` with the configured callbacks, loggers and plugins. The preemption
    checkpoint goes last (Lightning runs checkpoint callbacks after the others in their given order:
    it saves after every other checkpoint of the step), and is dropped without checkpointing."""

    def instantiate_all(group: DictConfig | None) -> list:
        return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]

    callbacks = sorted(instantiate_all(cfg.get("callbacks")), key=lambda c: isinstance(c, PreemptionCheckpoint))
    if cfg.trainer.get("enable_checkpointing", True) is False:
        callbacks = [c for c in callbacks if not isinstance(c, PreemptionCheckpoint)]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.get("logger")) or False,
                       plugins=_plugins(cfg.trainer.get("plugins")))


def requested_checkpoint(cfg: DictConfig) -> str | None:
    """``cfg.ckpt_path``; unset in a SLURM job that was requeued (``SLURM_RESTART_COUNT`` > 0), ``auto``:
    the requeued job runs the same command in the same folder and continues from its ``last.ckpt``."""
    requested = str(cfg.get("ckpt_path") or "").strip() or None
    if requested is None and int(os.environ.get("SLURM_RESTART_COUNT") or 0) > 0:
        log.info("Requeued SLURM job (SLURM_RESTART_COUNT=%s): ckpt_path=auto", os.environ["SLURM_RESTART_COUNT"])
        return "auto"
    return requested


def train(cfg: DictConfig) -> dict:
    """Train and test as ``cfg`` says; returns the final metrics (also written to metrics.json)."""
    started = time.time()
    output_dir = Path(cfg.paths.output_dir)
    monitor, monitor_mode = resolve_monitor(cfg)
    # Impossible settings end the command before any data is read or checkpoint loaded.
    TransformerConfig.check_settings(cfg.model)
    DecodingConfig.from_mapping(cfg.get("decoding")).validate()
    check_budget(cfg.trainer)
    requested = requested_checkpoint(cfg)
    init_from = cfg.get("init_from") or None
    if init_from is not None and requested is not None and requested != "auto":
        raise ConfigError(
            f"init_from={init_from} and ckpt_path={cfg.ckpt_path} are both set: ckpt_path resumes a run exactly, "
            "init_from starts a new run from another run's weights. Give one (to resume a fine-tuning run, "
            "ckpt_path alone: its checkpoints hold the parent's tokenizer; ckpt_path=auto may go with init_from)"
        )
    if requested == "auto" and (stored := finished_run(output_dir)) is not None:
        # A rerun multirun (or requeued job) leaves a finished run alone and reports its numbers again.
        log.info("ckpt_path=auto: %s holds a finished run (metrics.json); nothing to do", output_dir)
        print(f"Run folder: {output_dir} (finished earlier; not trained again)")
        return {k: v for k, v in stored.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    (output_dir / FAILURE_FILE).unlink(missing_ok=True)  # an earlier failure of this job, run again
    L.seed_everything(cfg.seed, workers=True)
    # Checked before anything is prepared: a damaged or foreign checkpoint ends with one message.
    ckpt_path = resume_checkpoint(requested, output_dir, cfg.model, cfg.trainer)
    if ckpt_path is not None:
        init_from = None  # ckpt_path=auto found a checkpoint: it holds the parent's record and tokenizer
    parent = load_parent(init_from, cfg.model, cfg.data) if init_from is not None else None
    if parent is not None:
        tokenizer, lineage = parent.tokenizer, parent.record()
    elif ckpt_path is not None:  # resuming: a fine-tuning run tokenizes with its parent's tokenizer again
        resumed = read_checkpoint(ckpt_path)
        tokenizer, lineage = fine_tuned_tokenizer(resumed), resumed.get("hyper_parameters", {}).get("init_from")
    else:
        tokenizer, lineage = None, None
    datamodule = instantiate(cfg.data, tokenizer=tokenizer)
    if tokenizer is not None and tokenizer.target_tags and not datamodule.multilingual:
        # A one-pair DataModule would tokenize without the target-language tag the model expects.
        raise ConfigError(
            f"{init_from or cfg.get('ckpt_path')} is a multilingual model (target languages "
            f"{', '.join(tokenizer.target_languages)}): train it with a multilingual data config, e.g. "
            "data=multi30k_multilingual (en-de alone: '~data.pairs.en-fr' '~data.pairs.en-cs')"
        )
    check_final(cfg.get("final"), datamodule)
    module = Seq2SeqModule(
        model=cfg.model, optim=cfg.optim, decoding=cfg.decoding, task=cfg.get("task", "translation"),
        monitor=monitor, monitor_mode=monitor_mode, speed=cfg.get("speed"), init_from=lineage,
    )
    if parent is not None:
        module.start_from(parent.net, parent.tokenizer)
        log.info("Fine-tuning %s (step %s) on %s with its %s-piece vocabulary (data.vocab_size and "
                 "data.spm_model_type are not used)", parent.path, parent.global_step, datamodule.root,
                 parent.tokenizer.tgt_vocab_size)
    trainer = _trainer(cfg)
    resolved = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}
    resolved = OmegaConf.to_container(OmegaConf.create(resolved), resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)

    with warnings.catch_warnings():
        # Noise from library internals that a user cannot act on.
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")
        final: dict = {}
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
            metrics = scalar_metrics(trainer.callback_metrics)
            best = (trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else "") or None
            if cfg.get("test") and datamodule.has_test:
                trainer.test(module, datamodule=datamodule, ckpt_path=best)
                metrics.update(scalar_metrics({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
            elif cfg.get("test"):
                log.warning("No test split under %s: trained and validated only.", datamodule.root)
            if cfg.get("final") and trainer.is_global_zero and not trainer.fast_dev_run:  # decoded as papers do
                final = final_scores(cfg.final, output_dir, datamodule, module.task, cfg.decoding, best,
                                     trainer.strategy.root_device)
                metrics.update({k: v for k, v in final.items() if k != "final"})
        except SIGTERMException:  # Lightning's own handler (testing, or callbacks.preemption=null): no new checkpoint
            raise _report_preemption(Preempted("SIGTERM", None, trainer.global_step, trainer.current_epoch),
                                     trainer, output_dir) from None
        except Preempted as stop:
            raise _report_preemption(stop, trainer, output_dir) from None

    results = module.eval_results.get("test") or module.eval_results.get("val") or {}
    full_parameters = contextlib.nullcontext()
    if isinstance(trainer.model, FullyShardedDataParallel):  # each rank holds shards: count the gathered ones
        full_parameters = FullyShardedDataParallel.summon_full_params(trainer.model, writeback=False)
    with full_parameters:
        num_parameters = module.net.num_parameters()
    checkpoints = {}
    if trainer.checkpoint_callback is not None and not trainer.fast_dev_run:
        folder = Path(trainer.checkpoint_callback.dirpath)
        checkpoints = {name: str(folder / f"{name}.ckpt") for name in ("best", "last")}
    if trainer.is_global_zero:
        signatures = {k: v for k, v in results.items() if k.endswith("_signature")}
        signatures.setdefault("sacrebleu_signature", {"bleu": None, "chrf": None})
        data_filter = datamodule.truncation_counts()
        if data_filter.get("truncated") or data_filter.get("val_truncated") or data_filter.get("test_truncated"):
            log.info("Sources truncated to data.max_src_len=%s: %s", cfg.data.get("max_src_len"), data_filter)
        info = run_info(num_parameters=num_parameters, sacrebleu_signature=signatures["sacrebleu_signature"],
                        trainer=trainer)
        log_run_info(trainer.loggers, info)
        finish_run(
            output_dir, metrics, **signatures, signatures=module.signatures, task=module.task,
            monitor={"metric": monitor, "mode": monitor_mode},
            data_filter=data_filter, num_parameters=num_parameters, git_commit=info["git_commit"],
            checkpoints=checkpoints, wall_time_s=round(time.time() - started, 1), device=str(trainer.strategy.root_device),
            **({"init_from": lineage} if lineage else {}), **({"final": final["final"]} if final else {}),
            status="finished",
        )
    return metrics


def _report_preemption(stop: Preempted, trainer: L.Trainer, output_dir: Path) -> Preempted:
    """Say (rank 0, on stderr) where the run stopped and how to continue it; returns ``stop``."""
    from hydra.core.hydra_config import HydraConfig

    if trainer.is_global_zero:
        saved = (f"saved {stop.checkpoint}" if stop.checkpoint
                 else "no new checkpoint (outside training steps: it continues from the last one written)")
        requeued = " The SLURM job was requeued: it will continue by itself." if stop.requeued else ""
        hint = f"run the same command with ckpt_path=auto hydra.run.dir={output_dir}"
        if in_multirun():
            hint = (f"rerun the same multirun (-m) with ckpt_path=auto hydra.sweep.dir={HydraConfig.get().sweep.dir}: "
                    "finished jobs are skipped, this one continues")
        print(f"Preempted by {stop.signal_name} at step {stop.global_step} (epoch {stop.epoch}): {saved}.{requeued} "
              f"To continue, {hint}. Exit status {PREEMPTED_EXIT_CODE}.", file=sys.stderr, flush=True)
    return stop


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float:
    monitor, _ = resolve_monitor(cfg)
    try:
        return train(cfg).get(f"{monitor}_best", 0.0)
    except Preempted:
        # SystemExit, not an error: it passes through Hydra's job runner, so a preempted local
        # multirun stops as a whole (rerun it with ckpt_path=auto).
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except Exception as err:
        if not in_multirun():
            raise
        # One job of a sweep that raises (an impossible config, a non-finite loss, out of memory) is
        # recorded in its folder and the sweep goes on with the others (basic, joblib, Optuna).
        return record_failure(cfg.paths.output_dir, err)


if __name__ == "__main__":
    main()
