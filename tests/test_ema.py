"""EMA of the weights (``callbacks=ema``, :class:`seq2seq.callbacks.ema.EMA`).

* After k optimizer steps the average equals one computed by hand from the weights recorded after
  each step; validation runs on it, the checkpoint's ``state_dict`` holds it (the trained weights
  beside it), ``inference.checkpoint.load_model`` (translate, eval, the API) loads it, testing the
  checkpoint runs on it, and after training the network holds it.
* A run killed (SIGKILL) in mid-epoch and resumed ends with the same average: tests/test_resume.py's
  killed run trains with ``callbacks=ema``.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import (
    TINY_MODEL,
    TINY_OPTIM,
    tiny_trainer,
    toy_datamodule,
)
from seq2seq.callbacks.ema import EMA
from seq2seq.errors import ConfigError
from seq2seq.inference.checkpoint import average_checkpoints, load_model, network_weights
from seq2seq.models.lit_module import Seq2SeqModule

pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.net.state_dict().items()}


class Recorder(L.Callback):
    """The network's weights after every optimizer step, and what validation ran on."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.validated: list[dict[str, torch.Tensor]] = []
        self.tested: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(_weights(pl_module))

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.validated.append(_weights(pl_module))

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.tested.append(_weights(pl_module))


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)


def test_ema_equals_a_hand_computed_average_and_is_what_validation_checkpoints_and_inference_use(tmp_path):
    decay, k = 0.8, 6
    dm = toy_datamodule(tmp_path, max_tokens=200)
    torch.manual_seed(0)
    module = Seq2SeqModule(model={**TINY_MODEL, "dropout": 0.1}, optim={**TINY_OPTIM, "lr": 1e-2}, speed={"compile": False})
    recorder, ema = Recorder(), EMA(decay=decay)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0, monitor=None)
    trainer = tiny_trainer(max_steps=k, val_check_interval=k, limit_val_batches=1, limit_test_batches=1,
                           enable_checkpointing=True, callbacks=[recorder, ema, checkpoint])
    trainer.fit(module, datamodule=dm)

    assert len(recorder.steps) == k
    expected = dict(recorder.steps[0])  # the first update copies the weights
    for weights in recorder.steps[1:]:
        expected = {n: decay * expected[n] + (1 - decay) * w for n, w in weights.items()}
    assert not _close(expected, recorder.steps[-1])  # the average is not the last weights
    assert _close(ema.average_weights(module), expected)
    assert len(recorder.validated) == 1 and _close(recorder.validated[0], expected)  # validation ran on it
    assert _close(_weights(module), expected)  # after training the network holds it

    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == k
    assert _close(network_weights(saved["state_dict"]), expected)
    assert _close(network_weights(saved["current_model_state"]), recorder.steps[-1])
    assert int(saved["averaging_state"]["n_averaged"]) == k
    net, _ = load_model(tmp_path / "ckpt" / "last.ckpt")  # translate, eval, the API, export
    assert _close({n: p for n, p in net.state_dict().items()}, expected)
    averaged = average_checkpoints([tmp_path / "ckpt" / "last.ckpt"])  # the trained weights are training state
    assert "current_model_state" not in averaged and "averaging_state" not in averaged

    # Testing a checkpoint (train.py tests best.ckpt this way) runs on its averaged weights.
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()
    trainer.test(module, datamodule=dm, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert len(recorder.tested) == 1 and _close(recorder.tested[0], expected)


def test_before_its_first_update_validation_and_checkpoints_use_the_trained_weights(tmp_path):
    dm = toy_datamodule(tmp_path, max_tokens=200)
    torch.manual_seed(0)
    module = Seq2SeqModule(model=TINY_MODEL, optim={**TINY_OPTIM, "lr": 1e-2}, speed={"compile": False})
    recorder, ema = Recorder(), EMA(decay=0.5, update_starting_at_step=3)  # updates after steps 4 and 5
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, monitor=None, every_n_train_steps=2,
                                 filename="{step}")
    trainer = tiny_trainer(max_steps=5, val_check_interval=2, limit_val_batches=1, enable_checkpointing=True,
                           callbacks=[recorder, ema, checkpoint])
    trainer.fit(module, datamodule=dm)
    steps = recorder.steps
    assert len(recorder.validated) == 2
    assert _close(recorder.validated[0], steps[1])  # step 2: no average yet
    assert _close(recorder.validated[1], steps[3])  # step 4: the first update copied the weights
    early = torch.load(tmp_path / "ckpt" / "step=2.ckpt", map_location="cpu", weights_only=True)
    assert _close(network_weights(early["state_dict"]), steps[1])
    assert _close(network_weights(early["current_model_state"]), steps[1])
    assert _close(_weights(module), {n: 0.5 * steps[3][n] + 0.5 * w for n, w in steps[4].items()})


def test_ema_settings_are_checked():
    with pytest.raises(ConfigError, match="callbacks.ema.decay"):
        EMA(decay=1.5)
    with pytest.raises(ConfigError, match="update_every_n_steps"):
        EMA(update_every_n_steps=0)
