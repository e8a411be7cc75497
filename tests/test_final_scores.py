"""A training run keeps the hypotheses it scored (with their records), and `final:` averages its last
epoch checkpoints as training ends and scores that model exactly as `seq2seq-eval` would."""

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY_OVERRIDES, compose_train
from seq2seq.analysis import hypotheses as hypothesis_files
from seq2seq.analysis.sweep import report
from seq2seq.errors import ConfigError
from seq2seq.eval import evaluate
from seq2seq.metrics.text_metrics import score

pytestmark = pytest.mark.usefixtures("one_thread")

FINAL = ["callbacks=epoch_checkpoints", "+final.average_last=2",
         "+final.checkpoints=${paths.output_dir}/checkpoints/epochs", "decoding=beam", "decoding.beam_size=3"]
# ~100 updates of a tiny model: enough to score above 0.
RUN = [*TINY_OVERRIDES, "data.generate.sizes={train:1200,val:32,test:32}", "data.max_tokens=384", "optim.lr=3e-3",
       "optim.warmup_steps=50", "trainer.max_epochs=3", "trainer.max_time=null", *FINAL]


@pytest.fixture(scope="module")
def final_run(tmp_path_factory) -> Path:
    from seq2seq.train import train

    tmp = tmp_path_factory.mktemp("final")
    train(compose_train(tmp, RUN))
    return tmp


def test_training_keeps_the_hypotheses_it_scored_with_their_records(final_run):
    run = final_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    for split, scored in (("val", metrics["val/bleu_best"]), ("test", metrics["test/bleu"])):
        record, hypotheses = hypothesis_files.load(run, split)
        references = hypothesis_files.references_of(record)
        assert record["num_sentences"] == len(hypotheses) == 32 and record["indices"] is None
        assert record["decoding"]["strategy"] == "greedy" and record["checkpoint"].endswith("best.ckpt")
        assert record["references"]["files"] == [str(final_run / "data" / "toy" / f"{split}.de")]
        # The file holds what was scored: the validation that chose best.ckpt, the test of best.ckpt.
        rescored, _ = score("translation", hypotheses, references[0], "de")
        assert rescored["bleu"] == pytest.approx(scored, abs=1e-4), split
    assert metrics["test/bleu_tok_lc"] > 0 and "bleu_tok_lc" in metrics["signatures"]["test"]


def test_final_scores_the_average_of_the_last_epochs_as_eval_does(final_run, tmp_path):
    run = final_run / "run"
    metrics = json.loads((run / "metrics.json").read_text())
    averaged = run / "checkpoints" / "averaged.ckpt"
    inputs = [Path(p) for p in metrics["final"]["averaged"]]
    epochs = sorted((run / "checkpoints" / "epochs").glob("*.ckpt"))
    assert len(epochs) == 3 and inputs == epochs[-2:]  # the last two of three epochs
    assert metrics["final"]["checkpoint"] == str(averaged) and metrics["final"]["decoding"]["beam_size"] == 3
    weights = [torch.load(p, weights_only=True)["state_dict"] for p in (*inputs, averaged)]
    for name in [k for k, v in weights[0].items() if v.is_floating_point()][:5]:
        torch.testing.assert_close(weights[2][name], (weights[0][name] + weights[1][name]) / 2)

    # seq2seq-eval on the averaged checkpoint, beam 3, on the same splits: the same numbers and outputs.
    for split in ("val", "test"):
        data = ["data=toy", f"data.root={final_run / 'data' / 'toy'}", "data.generate=null"]
        cfg = compose_train(tmp_path / split, [f"ckpt_path={averaged}", f"split={split}", "decoding=beam",
                                               "decoding.beam_size=3", *data], config_name="eval")
        payload = evaluate(cfg)
        for metric in ("bleu", "bleu_tok_lc", "chrf", "loss"):
            assert metrics[f"final/{split}/{metric}"] == pytest.approx(payload[f"{split}/{metric}"], abs=1e-6), metric
        assert (run / "final" / f"hypotheses.{split}.txt").read_text() == (tmp_path / split / "run" / f"hypotheses.{split}.txt").read_text()
        record, _ = hypothesis_files.load(tmp_path / split / "run", split)  # eval keeps its record too
        assert record["decoding"]["strategy"] == "beam" and record["checkpoint"] == str(averaged)
    final = json.loads((run / "final" / "metrics.json").read_text())
    assert final["val/bleu"] == metrics["final/val/bleu"]

    # The report shows them beside the run's own scores.
    result = report(run)
    assert {"final/val/bleu", "final/test/bleu_tok_lc", "val/bleu", "test/bleu"} <= set(result["columns"])
    assert result["columns"].index("test/bleu") < result["columns"].index("final/val/bleu")


def test_final_config_errors_stop_before_training(tmp_path):
    from seq2seq.train import train

    cfg = compose_train(tmp_path, [*TINY_OVERRIDES, "+final.average_last=3"])
    with pytest.raises(ConfigError, match="final.average_last needs final.checkpoints"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_paper_recipe_is_revisit_mmts_transformer_tiny(tmp_path):
    """experiment=multi30k_en_de_tiny_paper composes to the fairseq command of Revisit-MMT's README-baseline.md."""
    cfg = compose_train(tmp_path, ["experiment=multi30k_en_de_tiny_paper"])
    model, optim, trainer = cfg.model, cfg.optim, cfg.trainer
    assert (model.d_model, model.num_heads, model.num_encoder_layers, model.num_decoder_layers, model.d_ff) == (128, 4, 4, 4, 256)
    assert not model.pre_norm and model.share_embeddings and model.tie_output and model.dropout == 0.3
    assert (optim.lr, optim.warmup_steps, optim.eps, optim.label_smoothing, optim.cooldown) == (5e-3, 2000, 1e-8, 0.1, 0.0)
    assert list(optim.betas) == [0.9, 0.98] and optim.weight_decay == 0.0
    # --max-tokens 4096 on 2 GPUs: two accumulated batches of 4,096 tokens; --max-update 8000; clip 25.
    assert (cfg.data.max_tokens, trainer.accumulate_grad_batches, trainer.max_steps) == (4096, 2, 8000)
    assert trainer.gradient_clip_val == 25.0 and trainer.max_time == "00:01:25:00"
    # The last 10 epoch checkpoints kept, averaged at the end and decoded with beam 5.
    assert cfg.callbacks.epoch_checkpoints.save_top_k == 10 and cfg.callbacks.epoch_checkpoints.monitor == "step"
    assert cfg.final.average_last == 10 and cfg.final.checkpoints.endswith("checkpoints/epochs")
    assert (cfg.decoding.strategy, cfg.decoding.beam_size) == ("beam", 5)
