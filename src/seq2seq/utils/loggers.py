"""Logger factories the ``logger`` config group instantiates.

:func:`wandb_logger` makes Weights & Biases usable everywhere: without an account or network it
logs offline into the run folder (``wandb sync <run>/wandb/offline-run-*`` uploads it later); in a
Hydra multirun every job gets its own wandb run, grouped under the sweep's name.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger


def wandb_offline_by_default() -> bool:
    """Offline unless the user set ``WANDB_API_KEY`` or chose a mode with ``WANDB_MODE``.

    With ``WANDB_MODE`` set, wandb's own setting decides (``offline``, ``online``, ``disabled``).
    A key stored by ``wandb login`` alone is not looked for: pass ``logger.wandb.offline=false``.
    """
    return not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"))


def hydra_sweep() -> tuple[str | None, str | None]:
    """(sweep name, job name) of the current Hydra multirun job; (None, None) outside a multirun.

    The sweep name is its folder's date and time (``2024-05-01_12-00-00-123456``), the same for
    all of its jobs; the job name is the job's overrides (``model.d_model=64,optim.lr=0.001``).
    """
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):  # ValueError: not inside a Hydra app
        return None, None
    if hc.mode != RunMode.MULTIRUN:
        return None, None
    from omegaconf import OmegaConf

    sweep = Path(hc.sweep.dir)
    # select(): job fields may be unset (???) when the config was composed outside a launcher.
    job = OmegaConf.select(hc, "job.override_dirname", default=None) or f"job{OmegaConf.select(hc, 'job.num', default='')}"
    return f"{sweep.parent.name}_{sweep.name}", job


def wandb_logger(
    save_dir: str,
    project: str = "seq2seq",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    offline: bool | None = None,
    log_model: bool | str = False,
    **kwargs: Any,
) -> WandbLogger:
    """A :class:`WandbLogger` writing under ``save_dir``/wandb.

    Args:
        offline: None: offline unless a key or mode is set (:func:`wandb_offline_by_default`).
        group: None: the sweep's name in a multirun, so its jobs can be compared side by side.
        name: None: the job's overrides in a multirun (wandb picks a name otherwise).
        kwargs: passed to ``wandb.init`` (``job_type``, ``entity``, ``notes``...).
    """
    import wandb

    sweep, job = hydra_sweep()
    if offline is None:
        offline = wandb_offline_by_default()
    # The jobs of a multirun share one process: close the previous job's run, or Lightning would
    # log this job into it.
    if wandb.run is not None:
        wandb.finish()
    Path(save_dir).mkdir(parents=True, exist_ok=True)  # wandb falls back to /tmp when it is missing
    return WandbLogger(save_dir=save_dir, project=project, name=name if name is not None else job,
                       group=group if group is not None else sweep, tags=list(tags), offline=offline,
                       log_model=log_model, **kwargs)
