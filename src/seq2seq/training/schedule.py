"""The learning-rate schedule: linear warmup, inverse square root decay, and an optional cooldown
to 0 over the end of the run's budget (steps or time)."""

from __future__ import annotations

import math
from collections.abc import Callable

import lightning as L
import torch

from seq2seq.errors import ConfigError


def cooldown_factor(progress: float, cooldown: float) -> float:
    """1 until the last ``cooldown`` fraction of the budget, then linearly down to 0 at its end.

    The "warmup-stable-decay" shape (Hägele et al., 2024): a run that knows its budget anneals at
    the end instead of stopping at a high learning rate.
    """
    if cooldown <= 0.0:
        return 1.0
    return min(1.0, max(0.0, (1.0 - progress) / cooldown))


def _timer(trainer: L.Trainer) -> L.pytorch.callbacks.Timer | None:
    return next((c for c in trainer.callbacks if isinstance(c, L.pytorch.callbacks.Timer)), None)


def budget_progress(trainer: L.Trainer, step_budget: float) -> float:
    """How much of the run's budget is spent, 0..1: the larger of steps over ``step_budget``
    (``trainer.estimated_stepping_batches``: ``max_steps``, or ``max_epochs`` times the updates per
    epoch) and time over ``max_time`` (Lightning's Timer, which keeps its clock across an exact resume)."""
    progress = 0.0
    if math.isfinite(step_budget) and step_budget > 0:
        progress = trainer.global_step / step_budget
    timer = _timer(trainer)
    if timer is not None:
        elapsed = timer.time_elapsed("train")
        remaining = timer.time_remaining("train")
        if remaining is not None and elapsed + remaining > 0:
            spent = elapsed / (elapsed + remaining)
            if getattr(trainer, "world_size", 1) > 1:
                # Ranks read their clocks at slightly different moments: all take rank 0's, or the
                # replicas' learning rates, hence their weights, would drift apart.
                spent = float(trainer.strategy.broadcast(spent, src=0))
            progress = max(progress, spent)
    return min(1.0, progress)


def lr_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, cooldown: float | None,
                trainer: Callable[[], L.Trainer | None]) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the peak learning rate, then 1/sqrt(step) decay (Vaswani et al.), times the
    cooldown of the last ``cooldown`` fraction of the budget of ``trainer()`` (:func:`cooldown_factor`),
    stepped per update."""
    cooldown = float(cooldown or 0.0)
    if not 0.0 <= cooldown <= 1.0:
        raise ConfigError(f"optim.cooldown must be a fraction of the budget in [0, 1], got {cooldown}.")
    budget, run = math.inf, trainer()
    if cooldown > 0.0 and run is not None:
        budget = float(run.estimated_stepping_batches)  # in optimizer steps
        if not (math.isfinite(budget) and budget > 0) and _timer(run) is None:
            raise ConfigError(
                "optim.cooldown anneals the learning rate over the end of the budget, but the run has none: "
                "set trainer.max_steps, trainer.max_epochs or trainer.max_time, or optim.cooldown=0."
            )

    def factor(step: int) -> float:
        # A plain function (not an object): LambdaLR would store an object's attributes,
        # the trainer included, in every checkpoint.
        step = step + 1
        warmup = step / warmup_steps if step < warmup_steps else math.sqrt(warmup_steps / step)
        run = trainer()
        progress = budget_progress(run, budget) if cooldown > 0.0 and run is not None else 0.0
        return warmup * cooldown_factor(progress, cooldown)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
