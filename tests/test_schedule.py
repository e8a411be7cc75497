"""The learning-rate schedule: warmup, inverse-square-root decay, and the optional cooldown that
anneals to 0 over the end of the run's step or time budget (``optim.cooldown``)."""

from __future__ import annotations

import math
from datetime import timedelta
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import Timer

from helpers import TINY_MODEL, TINY_OPTIM, tiny_trainer, toy_datamodule
from seq2seq.errors import ConfigError
from seq2seq.models.lit_module import Seq2SeqModule
from seq2seq.training.schedule import budget_progress, cooldown_factor


class LearningRates(L.Callback):
    """The learning rate each optimizer step used."""

    def __init__(self):
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_cooldown_factor_is_one_until_the_last_fraction_then_linear_to_zero():
    assert cooldown_factor(0.5, 0.0) == 1.0
    assert cooldown_factor(0.79, 0.2) == 1.0
    assert cooldown_factor(0.9, 0.2) == pytest.approx(0.5)
    assert cooldown_factor(1.0, 0.2) == 0.0
    assert cooldown_factor(1.3, 0.2) == 0.0


def test_progress_is_the_larger_of_steps_and_time_spent():
    timer = Timer(duration=timedelta(seconds=100))
    timer.load_state_dict({"time_elapsed": {"train": 80.0}})  # what an exact resume restores
    trainer = SimpleNamespace(global_step=50, callbacks=[timer])
    assert budget_progress(trainer, 100) == pytest.approx(0.8)
    trainer.global_step = 90
    assert budget_progress(trainer, 100) == pytest.approx(0.9)
    assert budget_progress(SimpleNamespace(global_step=30, callbacks=[]), 120) == pytest.approx(0.25)
    assert budget_progress(SimpleNamespace(global_step=30, callbacks=[]), math.inf) == 0.0
    # Under DDP every rank takes rank 0's clock (the learning rates, hence the replicas, stay equal).
    sent = []
    strategy = SimpleNamespace(broadcast=lambda value, src=0: sent.append((value, src)) or 0.6)
    trainer = SimpleNamespace(global_step=10, callbacks=[timer], world_size=2, strategy=strategy)
    assert budget_progress(trainer, 100) == pytest.approx(0.6) and sent == [(pytest.approx(0.8), 0)]


def test_a_run_anneals_to_zero_over_the_last_fraction_of_max_steps(tmp_path):
    peak, warmup, steps = 1e-2, 4, 20
    dm = toy_datamodule(tmp_path, max_tokens=100)
    module = Seq2SeqModule(model=TINY_MODEL, optim={**TINY_OPTIM, "lr": peak, "warmup_steps": warmup, "cooldown": 0.5},
                           speed={"compile": False})
    recorder = LearningRates()
    tiny_trainer(max_steps=steps, limit_val_batches=0, callbacks=[recorder]).fit(module, datamodule=dm)

    assert len(recorder.lrs) == steps
    for step, lr in enumerate(recorder.lrs):
        inverse_sqrt = (step + 1) / warmup if step + 1 < warmup else math.sqrt(warmup / (step + 1))
        anneal = min(1.0, (steps - step) / (steps * 0.5))
        assert lr == pytest.approx(peak * inverse_sqrt * anneal, rel=1e-9), step
    assert recorder.lrs[9] == pytest.approx(peak * math.sqrt(warmup / 10))  # not annealed yet
    assert recorder.lrs[-1] == pytest.approx(peak * math.sqrt(warmup / steps) * 0.1)  # one step from 0


def test_cooldown_without_a_budget_is_one_message(tmp_path):
    dm = toy_datamodule(tmp_path, max_tokens=100)
    module = Seq2SeqModule(model=TINY_MODEL, optim={**TINY_OPTIM, "cooldown": 0.2}, speed={"compile": False})
    with pytest.raises(ConfigError, match=r"optim.cooldown .* trainer.max_time"):
        tiny_trainer(max_steps=-1, max_epochs=-1, limit_val_batches=0).fit(module, datamodule=dm)


def test_cooldown_outside_zero_to_one_is_refused(tmp_path):
    dm = toy_datamodule(tmp_path, max_tokens=100)
    module = Seq2SeqModule(model=TINY_MODEL, optim={**TINY_OPTIM, "cooldown": 1.5}, speed={"compile": False})
    with pytest.raises(ConfigError, match=r"optim.cooldown must be"):
        tiny_trainer(max_steps=2, limit_val_batches=0).fit(module, datamodule=dm)
