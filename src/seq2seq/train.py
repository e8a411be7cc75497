"""Training entry point: ``python -m seq2seq.train [experiment=NAME] [model/size=SIZE] [key=value ...]``.

Composes the DataModule, the LightningModule, callbacks, loggers and the Trainer from the Hydra
config, trains, tests the best checkpoint, and writes ``metrics.json`` into the run folder.
Returns ``val/bleu_best`` so that Hydra sweepers can optimize it.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from seq2seq.config import config_dir, user_errors_exit
from seq2seq.models.lit_module import Seq2SeqModule
from seq2seq.run_summary import print_metrics_table, scalar_metrics, write_metrics
from seq2seq.utils.run_info import log_run_info, run_info

log = logging.getLogger(__name__)
# Noise from library internals that a user cannot act on.
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")


def _instantiate_all(group: DictConfig | None) -> list:
    return [instantiate(c) for c in (group or {}).values() if c is not None and "_target_" in c]


def train(cfg: DictConfig) -> dict:
    """Train and test as ``cfg`` says; returns the final metrics (also written to metrics.json)."""
    started = time.time()
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data)
    module = Seq2SeqModule(model=cfg.model, optim=cfg.optim, decoding=cfg.decoding)
    fast_dev_run = bool(cfg.trainer.get("fast_dev_run"))
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    resolved = {k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"}
    resolved = OmegaConf.to_container(OmegaConf.create(resolved), resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(resolved)

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = scalar_metrics(trainer.callback_metrics)
    metrics["val/bleu_best"] = module.bleu_best

    if cfg.get("test"):
        if datamodule.has_test:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
            metrics.update(scalar_metrics({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}))
        else:
            log.warning("No test split under %s: trained and validated only.", datamodule.root)

    results = module.eval_results.get("test") or module.eval_results.get("val") or {}
    checkpoints = {}
    if trainer.checkpoint_callback is not None and not fast_dev_run:
        folder = Path(trainer.checkpoint_callback.dirpath)
        checkpoints = {name: str(folder / f"{name}.ckpt") for name in ("best", "last")}
    if trainer.is_global_zero:
        signature = {"bleu": results.get("bleu_signature"), "chrf": results.get("chrf_signature")}
        info = run_info(num_parameters=module.net.num_parameters(), sacrebleu_signature=signature, trainer=trainer)
        log_run_info(trainer.loggers, info)
        write_metrics(
            output_dir / "metrics.json",
            metrics,
            sacrebleu_signature=signature,
            num_parameters=module.net.num_parameters(),
            git_commit=info["git_commit"],
            checkpoints=checkpoints,
            run_dir=str(output_dir),
            wall_time_s=round(time.time() - started, 1),
            device=str(trainer.strategy.root_device),
        )
        print_metrics_table(metrics)
        print(f"Run folder: {output_dir}")
    return metrics


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
@user_errors_exit
def main(cfg: DictConfig) -> float:
    metrics = train(cfg)
    return metrics.get("val/bleu_best", 0.0)


if __name__ == "__main__":
    main()
