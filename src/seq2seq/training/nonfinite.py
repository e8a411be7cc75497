"""What a non-finite training loss does (``optim.nonfinite``): stop the run, or skip the batch."""

from __future__ import annotations

import torch
from torch import Tensor

from seq2seq.errors import ConfigError, TrainingError

MODES = ("stop", "skip")


class NonFiniteGuard:
    """Checks every training loss; ``mode="stop"`` raises a :class:`TrainingError`, ``"skip"`` tells
    the caller to skip the batch (a NaN/inf loss would silently poison the weights).

    Reading the loss back every step would stall a GPU: with ``every > 1`` (``stop`` mode) the first
    non-finite step and its loss are kept on the device and checked every ``every`` steps and
    whenever :meth:`raise_if_seen` is called (before saving, validating and at the end).
    """

    def __init__(self, mode: str = "stop", every: int = 1):
        if mode not in MODES:
            raise ConfigError(f"optim.nonfinite={mode!r}: use one of {', '.join(MODES)}")
        self.mode, self.every = mode, max(1, int(every))
        self.first: Tensor | None = None  # (step, loss) of the first non-finite loss; step -1: none yet

    @staticmethod
    def error(value: float, step: int, where: str) -> TrainingError:
        return TrainingError(
            f"non-finite loss ({value}) at step {step} ({where}). Lower optim.lr, raise "
            "optim.warmup_steps or check the data; optim.nonfinite=skip skips such batches instead."
        )

    def skip(self, loss: Tensor, step: int, where: str) -> bool:
        """Whether to skip this batch (its loss is not finite and the mode is ``skip``); raises in ``stop`` mode."""
        if self.every > 1 and self.mode == "stop":
            # No host-device sync: keep (first non-finite step, its loss) on the device.
            here = torch.stack([torch.full_like(loss.detach(), step), loss.detach()])
            if self.first is None:
                self.first = torch.full_like(here, -1.0)
            new = ~torch.isfinite(here[1]) & (self.first[0] < 0)
            self.first = torch.where(new, here, self.first)
            if (step + 1) % self.every == 0:
                self.raise_if_seen()
            return False
        if torch.isfinite(loss):
            return False
        if self.mode == "skip":
            return True
        raise self.error(loss.item(), step, where)

    def raise_if_seen(self) -> None:
        """Raise if the deferred check recorded a non-finite loss."""
        if self.first is not None:
            step, value = self.first.tolist()
            if step >= 0:
                raise self.error(value, int(step), "found by the periodic check")
