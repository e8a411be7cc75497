"""What makes a run's numbers reproducible, for every logger and for ``metrics.json``.

:func:`run_info` gathers the git commit of this package's checkout (and whether it had uncommitted
changes), the parameter count, the sacreBLEU signatures and the device; :func:`log_run_info` hands
them to every Lightning logger as hyperparameters, plus a TensorBoard text panel and the wandb summary.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_only

# The checkout this package runs from (src/seq2seq/utils/run_info.py -> repository root).
_REPO = Path(__file__).resolve().parents[3]


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the package's checkout, or None without git/a repo."""
    try:
        # No optional locks: `git status` must never take index.lock while the user commits.
        env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
        result = subprocess.run(["git", *args], cwd=_REPO, check=False, capture_output=True, text=True,
                                timeout=10, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit (full hash) of the checkout this package runs from; None outside a git checkout."""
    return _git("rev-parse", "HEAD") or None


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (the numbers may not reproduce from it alone)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def device_summary(trainer: Any) -> str:
    """A short description of where a Trainer ran, e.g. ``cpu x2 ddp 32-true`` or ``NVIDIA H100 x8 ...``."""
    accelerator = type(trainer.accelerator).__name__.replace("Accelerator", "").lower() or "?"
    name = accelerator
    if accelerator == "cuda":
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(trainer.strategy.root_device)
    parts = [f"{name} x{trainer.world_size}"]
    if trainer.world_size > 1:
        parts.append(type(trainer.strategy).__name__.replace("Strategy", "").lower())
    parts.append(str(trainer.precision))
    return " ".join(parts)


def run_info(
    num_parameters: int | None = None,
    sacrebleu_signature: Mapping[str, str | None] | None = None,
    trainer: Any = None,
) -> dict[str, Any]:
    """The reproducibility facts of a run as a flat-ish dict (JSON and YAML friendly)."""
    info: dict[str, Any] = {"git_commit": git_commit(), "git_dirty": git_dirty()}
    if num_parameters is not None:
        info["num_parameters"] = int(num_parameters)
    if sacrebleu_signature:
        info["sacrebleu_signature"] = {k: v for k, v in sacrebleu_signature.items() if v}
    if trainer is not None:
        info["device"] = device_summary(trainer)
    return info


def _flat(info: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    # Lightning's own flattening (lightning.fabric.utilities.logger._flatten_dict) is private.
    out: dict[str, Any] = {}
    for key, value in info.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


@rank_zero_only
def log_run_info(loggers: Iterable[Any], info: Mapping[str, Any]) -> None:
    """Give ``info`` (see :func:`run_info`) to every logger under the ``run_info`` key.

    Safe to call after ``trainer.fit``/``trainer.test`` have finalized the loggers: the CSV and
    TensorBoard ``hparams.yaml`` files are rewritten, TensorBoard reopens its event file, and the
    wandb run stays open until the process ends (or the next job's logger finishes it).
    """
    from lightning.pytorch.core.saving import save_hparams_to_yaml
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    info = dict(info)
    for logger in loggers:
        logger.log_hyperparams({"run_info": info})
        if isinstance(logger, TensorBoardLogger):
            text = "\n".join(f"- **{k}**: `{v}`" for k, v in _flat(info).items())
            logger.experiment.add_text("run_info", text)
            logger.experiment.flush()
            # Its save() writes hparams.yaml only when the file is missing: rewrite it with the info.
            save_hparams_to_yaml(os.path.join(logger.log_dir, "hparams.yaml"), logger.hparams)
        elif isinstance(logger, WandbLogger):
            # The summary is what the runs table shows; the config already has it from log_hyperparams.
            logger.experiment.summary.update({f"run_info/{k}": v for k, v in _flat(info).items()})
        logger.save()
