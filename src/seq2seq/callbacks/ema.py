"""An exponential moving average (EMA) of the weights, through Lightning's ``EMAWeightAveraging``.

``callbacks=ema`` (or ``'callbacks=[early_stopping,ema]'``) keeps, beside the trained weights, their
average ``ema = decay * ema + (1 - decay) * weights`` updated after every ``update_every_n_steps``-th
optimizer step (the first update copies the weights). What uses it:

* validation runs on the averaged weights, swapped into the network while it runs;
* every checkpoint holds the averaged weights in ``state_dict``, so test, ``translate``, ``eval``,
  the API and the exports use them with no option; the trained weights and the average's counter
  ride along as ``current_model_state`` and ``averaging_state`` (dropped by ``average_checkpoints``);
* after training the network holds the averaged weights;
* exact resume restores the trained weights from ``current_model_state`` and the average from
  ``state_dict``, so a killed and resumed run ends with the same average.

Unlike Lightning's callback: the average covers ``pl_module.net`` only (the LightningModule's
tokenizer and metrics need no copy), built once the network exists; the swap happens at
``on_validation_start``/``end``, so callbacks reading the network after the validation epoch (the
heatmap) see the average too; loading a checkpoint outside ``fit`` keeps the average in the network;
and when training ends the average is swapped in, not copied over the trained weights, so that a
``last.ckpt`` written after that point still resumes exactly.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import AveragedModel

from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import network_weights

PREFIX = "net."  # the network's keys in the LightningModule's state dict


class EMA(EMAWeightAveraging):
    """EMA of the network's weights (see the module docstring).

    Args:
        decay: weight of the old average per update (0.999: an average over ~1,000 updates).
        update_every_n_steps: update after every N-th optimizer step.
        update_starting_at_step: first optimizer step (0-based) that updates it; until the first
            update, validation and checkpoints use the trained weights (there is no average yet).
        device: where the average lives (default: the training device; ``cpu`` saves GPU memory).
    """

    def __init__(
        self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None,
        device: str | None = None,
    ) -> None:
        if not 0.0 <= float(decay) <= 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay}: use a number in [0, 1], e.g. 0.999")
        if int(update_every_n_steps) < 1:
            raise ConfigError(f"callbacks.ema.update_every_n_steps={update_every_n_steps}: use 1 or more")
        super().__init__(device=device, use_buffers=False, decay=float(decay),
                         update_every_n_steps=int(update_every_n_steps), update_starting_at_step=update_starting_at_step)
        self._swapped = False
        self._ended = False  # training ended: the network holds the average, the average the weights

    # -- the average -----------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._ended = False
        net = pl_module.network()
        # The base class updates and swaps over pl_module's parameters and buffers: they must be the
        # network's, in its order.
        names = [n for n, _ in pl_module.named_parameters()] + [n for n, _ in pl_module.named_buffers()]
        own = [n for n, _ in net.named_parameters()] + [n for n, _ in net.named_buffers()]
        if names != [PREFIX + n for n in own]:
            raise RuntimeError("EMA averages the network: the LightningModule must hold no other parameters or buffers")
        self._average_model = AveragedModel(
            model=net, device=self._device or trainer.strategy.root_device, use_buffers=self._use_buffers, **self._kwargs
        )

    def _averaged(self) -> bool:
        """Whether the average has been updated yet (before that it holds the initial weights)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def average_weights(self, pl_module: L.LightningModule) -> dict[str, Any]:
        """The averaged weights (the network's ``state_dict`` keys, without the ``net.`` prefix)."""
        net = pl_module.net if self._ended or not self._averaged() else self._average_model.module
        return dict(net.state_dict())

    # -- validation on the average -------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pass

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._swapped = trainer.state.fn == TrainerFn.FITTING and self._averaged()
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._averaged():
            self._swap_models(pl_module)
            self._ended = True

    # -- checkpoints ---------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None or trainer.state.fn != TrainerFn.FITTING:
            return  # after fit the network holds the average
        state = self._average_model.state_dict()
        module_state = {PREFIX + k: v for k, v in self._average_model.module.state_dict().items()}
        if self._ended:  # swapped: the network holds the average, the averaged model the trained weights
            checkpoint["current_model_state"] = module_state
        elif not self._averaged():  # no update yet: the "average" is the trained weights
            checkpoint["current_model_state"] = dict(checkpoint["state_dict"])
        else:
            checkpoint["current_model_state"], checkpoint["state_dict"] = checkpoint["state_dict"], module_state
        checkpoint["averaging_state"] = {k: v for k, v in state.items() if not k.startswith("module.")}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._average_model is None or trainer.state.fn != TrainerFn.FITTING:
            return  # test/validate a checkpoint: its state_dict, the average, is what is evaluated
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            average = {"module." + k: v for k, v in network_weights(checkpoint["state_dict"]).items()}
            self._average_model.load_state_dict({**average, **checkpoint["averaging_state"]})
            # Lightning loaded state_dict (the average) into the module: the trained weights go back.
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:  # a checkpoint written without EMA: the average starts at its weights
            self._average_model.module.load_state_dict(network_weights(checkpoint["state_dict"]))
