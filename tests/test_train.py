"""End-to-end training through the Hydra entry point on the embedded corpus."""

import json
from pathlib import Path

import torch

from seq2seq.models.lit_module import Seq2SeqModule


def test_tiny_run_writes_run_folder(tiny_run):
    run = Path(tiny_run["run_dir"])
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("val/bleu", "val/bleu_best", "val/chrf", "val/loss", "test/bleu", "test/chrf", "num_parameters"):
        assert key in metrics, key
    assert metrics["sacrebleu_signature"]["bleu"].startswith("nrefs:1|case:mixed")
    assert (run / "checkpoints" / "best.ckpt").exists() and (run / "checkpoints" / "last.ckpt").exists()
    assert metrics["num_parameters"] > 10_000


def test_checkpoint_alone_rebuilds_model(tiny_checkpoint):
    module = Seq2SeqModule.load_from_checkpoint(tiny_checkpoint, map_location="cpu")
    assert module.tokenizer is not None and module.net is not None
    src = torch.tensor([module.tokenizer.encode_source(["The old man saw a dog."])[0]])
    logits = module.net(src, torch.tensor([[module.tokenizer.bos_id]]))
    assert logits.shape == (1, 1, module.tokenizer.tgt_vocab_size)


def test_short_training_learns_the_embedded_corpus(tiny_run):
    """Five short epochs on 4,000 sentences: the model must translate well beyond chance."""
    # Measured: val 60.6 / test 54.8 BLEU; an untrained or broken model scores below 1.
    assert tiny_run["val/bleu_best"] >= 40.0
    assert tiny_run["test/bleu"] >= 35.0
    assert tiny_run["val/loss"] < 1.0
