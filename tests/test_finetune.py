"""Fine-tuning (``init_from=CKPT``): a new run that starts from another run's weights and tokenizer.

A toy parent is trained briefly; its child fine-tunes on a second corpus (the embedded grammar drawn
with another seed: other sentences). The child tokenizes with the parent's tokenizer (no new
sentencepiece model), its first validation loss is the parent's loss on the child's data (far below
a fresh network's), its optimizer, schedule, step counter and best score start fresh, metrics.json
names the parent, and resuming the child (``ckpt_path``) tokenizes with the parent's tokenizer again.
A config that asks for another architecture or vocabulary stops with one message naming the keys.
"""

from __future__ import annotations

import json

import pytest
import torch

from helpers import TINY_OVERRIDES, compose_train
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.inference.checkpoint import load_model, load_parent
from seq2seq.models.loss import sequence_loss
from seq2seq.models.transformer import Seq2SeqTransformer
from seq2seq.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

COMMON = [
    *TINY_OVERRIDES,
    "model.d_model=32",
    "data.max_tokens=512",
    "trainer.max_time=null",
    "trainer.log_every_n_steps=1",
    "callbacks=early_stopping",
    "callbacks.validation_samples=null",
    "test=false",
]
PARENT = [*COMMON, "data.generate.sizes={train:1000,val:32,test:8}", "optim.lr=3e-3", "optim.warmup_steps=30",
          "trainer.max_steps=60"]
# One optimizer step at a learning rate of lr / warmup_steps (1e-7), then a validation: the loss
# validation reports is the loss of the weights the run started from.
CHILD = [*COMMON, "data.generate.seed=99", "data.generate.sizes={train:300,val:32,test:8}", "optim.lr=1e-3",
         "optim.warmup_steps=10000", "trainer.max_steps=1", "+trainer.val_check_interval=1"]


def _checkpoint(run) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _val_loss(net: Seq2SeqTransformer, datamodule, tokenizer) -> float:
    """Per-token NLL of ``net`` on the validation split, summed over batches as validation does."""
    total = tokens = 0.0
    with torch.no_grad():
        for batch in datamodule.eval_dataloader("val", tokenizer):
            _, nll = sequence_loss(net.eval(), batch["src"], batch["tgt_in"], batch["tgt_out"])
            total, tokens = total + float(nll), tokens + int((batch["tgt_out"] != net.config.pad_id).sum())
    return total / tokens


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("parent")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = train(compose_train(tmp, PARENT))
    finally:
        torch.set_num_threads(threads)
    ckpt = tmp / "run" / "checkpoints" / "best.ckpt"
    return {"ckpt": ckpt, "metrics": metrics, "step": torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]}


def test_fine_tuning_starts_from_the_parent_with_a_fresh_optimizer(parent, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(tmp_path, [*CHILD, f"init_from={parent['ckpt']}"])
    metrics = train(cfg)
    run = tmp_path / "run"

    # The corpus was tokenized with the parent's tokenizer: no sentencepiece model was trained.
    assert not list((tmp_path / "cache").glob("spm-*"))
    parent_net, tokenizer = load_model(parent["ckpt"])
    child = _checkpoint(run)
    assert child["tokenizer"] == torch.load(parent["ckpt"], map_location="cpu", weights_only=True)["tokenizer"]

    # Its first validation loss is the parent's loss on the child's data, far below a fresh network's.
    datamodule = instantiate(cfg.data)
    expected = _val_loss(parent_net, datamodule, tokenizer)
    torch.manual_seed(0)
    fresh = _val_loss(Seq2SeqTransformer(parent_net.config), datamodule, tokenizer)
    assert metrics["val/loss"] == pytest.approx(expected, rel=2e-3)
    assert metrics["val/loss"] < 0.75 * fresh

    # A fresh run: one optimizer step, at the first warmup step, the best score its own.
    assert parent["step"] > 40
    assert child["global_step"] == 1
    assert {float(s["step"]) for s in child["optimizer_states"][0]["state"].values()} == {1.0}
    assert child["lr_schedulers"][0]["last_epoch"] == 1
    assert child["lr_schedulers"][0]["_last_lr"][0] == pytest.approx(1e-3 * 2 / 10000)
    assert child["best_scores"] == {"val/bleu": metrics["val/bleu"]}
    early_stopping = next(v for k, v in child["callbacks"].items() if k.startswith("EarlyStopping"))
    assert early_stopping["wait_count"] == 0 and float(early_stopping["best_score"]) == metrics["val/bleu"]

    recorded = json.loads((run / "metrics.json").read_text())["init_from"]
    assert recorded["path"] == str(parent["ckpt"].resolve()) and recorded["global_step"] == parent["step"]
    assert recorded["run_metrics"]["val/loss"] == parent["metrics"]["val/loss"]

    # Resuming the child tokenizes with the parent's tokenizer again (no "tokenizer differs" stop).
    resumed = train(compose_train(tmp_path, [*CHILD, "trainer.max_steps=2", "ckpt_path=last"]))
    assert _checkpoint(run)["global_step"] == 2 and "val/loss" in resumed
    assert json.loads((run / "metrics.json").read_text())["init_from"] == recorded
    assert not list((tmp_path / "cache").glob("spm-*"))


def test_a_config_that_differs_from_the_parent_stops_with_one_message(parent, tmp_path):
    overrides = [*CHILD, f"init_from={parent['ckpt']}"]
    with pytest.raises(CheckpointError) as err:
        train(compose_train(tmp_path, [*overrides, "model.d_model=64", "model.num_decoder_layers=2",
                                       "data.joint_vocab=false"]))
    message = str(err.value)
    assert "\n" not in message
    for part in ("model.d_model (parent 32, this run 64)", "model.num_decoder_layers (parent 1, this run 2)",
                 "data.joint_vocab (parent True, this run False)",
                 "set model.d_model=32 model.num_decoder_layers=1 data.joint_vocab=true"):
        assert part in message
    # Dropout is the child's to choose; data.vocab_size is not used (sentencepiece may make fewer pieces
    # than asked, so the parent's own config need not match its vocabulary).
    cfg = compose_train(tmp_path, [*overrides, "model.dropout=0.3", "data.vocab_size=5000"])
    assert load_parent(cfg.init_from, cfg.model, cfg.data).net.config.dropout == 0.3

    with pytest.raises(ConfigError, match="init_from=.* and ckpt_path=.* are both set") as err:
        train(compose_train(tmp_path, [*overrides, "ckpt_path=last"]))
    assert "\n" not in str(err.value)
