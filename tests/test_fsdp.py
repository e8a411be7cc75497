"""trainer=fsdp: Lightning's FSDPStrategy with one FSDP unit per encoder and decoder layer.

FSDP needs a CUDA device (torch's FSDP refuses a CPU-only machine, gloo included, and Lightning
refuses ``accelerator=cpu`` with it), so on CPU the config is composed, the strategy built and its
wrapping policy applied to a real network; the training run is marked ``gpu``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from helpers import QUICK, command_env, compose_train


def test_fsdp_config_builds_the_strategy_and_wraps_each_layer(tmp_path):
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from seq2seq.models.transformer import DecoderLayer, EncoderLayer, Seq2SeqTransformer, TransformerConfig

    cfg = compose_train(tmp_path, ["trainer=fsdp"])
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision) == ("gpu", -1, "bf16-mixed")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    assert strategy._state_dict_type == "full"  # one checkpoint file, as every reader expects
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy.kwargs["use_orig_params"] is True
    policy = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(policy, ModuleWrapPolicy)

    net = Seq2SeqTransformer(TransformerConfig(src_vocab_size=50, tgt_vocab_size=50, d_model=16, num_heads=2,
                                               num_encoder_layers=2, num_decoder_layers=3, d_ff=32))
    wrapped = set(policy._run_policy(net, ignored_modules=set(), root_kwargs={}))
    layers = {m for m in net.modules() if isinstance(m, (EncoderLayer, DecoderLayer))}
    assert len(layers) == 5
    # Each layer is a unit of its own; the root unit (Lightning wraps the LightningModule) keeps the
    # embeddings, the output head and the final norms.
    assert wrapped == layers


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA GPU (make test-gpu)")
def test_fsdp_trains_on_one_gpu_and_writes_ordinary_checkpoints(tmp_path):
    """A short trainer=fsdp run: metrics.json, and checkpoints every reader takes (full state dict
    under net.*, full optimizer state), which translate through load_model."""
    from seq2seq.inference.checkpoint import load_model

    result = subprocess.run(
        [sys.executable, "-m", "seq2seq.train", *QUICK, "trainer=fsdp", "trainer.devices=1", "trainer.max_epochs=2",
         "trainer.limit_train_batches=20", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=command_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "test/bleu" in metrics and metrics["status"] == "finished"
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(k.startswith("net.") and "_fsdp" not in k for k in last["state_dict"])
    shapes = {tuple(t.shape) for t in last["state_dict"].values()}
    moments = [s["exp_avg"] for s in last["optimizer_states"][0]["state"].values()]
    assert moments and all(tuple(m.shape) in shapes for m in moments)  # gathered, not shards
    net, tokenizer = load_model(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert sum(p.numel() for p in net.parameters()) == metrics["num_parameters"]
