"""Ensembles: several networks decode as one with the mean of their probabilities (decoding/ensemble.py),
through every search, teacher forcing, the predictor, load_models and the translate/eval commands."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from helpers import compose_train
from helpers.forked_commands import run_command as forked
from helpers.random_models import VOCAB, make_model, make_sources
from seq2seq.data import toy
from seq2seq.data.tokenizer import Tokenizer, train_sentencepiece
from seq2seq.decoding.ensemble import Ensemble, EnsembleStepper, mean_log_probs, teacher_forced_nll
from seq2seq.decoding.search import DecoderStepper, DecodingConfig, generate, make_stepper, sequence_scores
from seq2seq.errors import CheckpointError, ConfigError
from seq2seq.inference.checkpoint import load_model, load_models, save_checkpoint
from seq2seq.inference.predictor import Predictor
from seq2seq.models.loss import sequence_loss
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = {
    "greedy": DecodingConfig(strategy="greedy"),
    "beam": DecodingConfig(strategy="beam", beam_size=4, n_best=3),
    "sampling": DecodingConfig(strategy="sampling", n_best=3, seed=7, top_p=0.9),
}


def assert_same_hypotheses(a, b, tol: float = 1e-5) -> None:
    assert [[h.tokens for h in group] for group in a] == [[h.tokens for h in group] for group in b]
    assert [[h.eos for h in group] for group in a] == [[h.eos for h in group] for group in b]
    for group_a, group_b in zip(a, b):
        for x, y in zip(group_a, group_b):
            assert abs(x.score - y.score) <= tol and abs(x.log_prob - y.log_prob) <= tol


def pair(kind: str) -> tuple[Seq2SeqTransformer, Seq2SeqTransformer]:
    """Two different models: other seeds, sizes, layer counts, layer norm placement and heads."""
    first = make_model(seed=0, std=0.1, copy_attention=kind == "copy")
    second = make_model(seed=1, std=0.1, pre_norm=False, d_model=48, num_heads=6, num_decoder_layers=3, d_ff=96)
    return first, second


# ----------------------------------------------------------------------------- a model with itself
@pytest.mark.parametrize("strategy", list(CONFIGS))
@pytest.mark.parametrize("twin", ["same object", "copy"])
def test_ensemble_of_a_model_with_itself_is_the_model(strategy, twin):
    model, src = make_model(eos_bias=1.0), make_sources()
    other = model if twin == "same object" else copy.deepcopy(model)
    ensemble = Ensemble([model, other])
    assert_same_hypotheses(generate(ensemble, src, CONFIGS[strategy]), generate(model, src, CONFIGS[strategy]))


def test_ensemble_of_a_model_with_itself_scores_as_the_model():
    model, src = make_model(eos_bias=1.0), make_sources()
    hyps = [group[0] for group in generate(model, src, CONFIGS["beam"])]
    outputs, eos = [h.tokens for h in hyps], [h.eos for h in hyps]
    alone = sequence_scores(model, src, outputs, eos)
    both = sequence_scores(Ensemble([model, model]), src, outputs, eos)
    assert max(abs(a - b) for x, y in zip(alone, both) for a, b in zip(x, y)) <= 1e-5
    # And teacher forcing reproduces the search's scores.
    assert max(abs(s - h.score) for (s, _), h in zip(alone, hyps)) <= 1e-4


# ----------------------------------------------------------------------------- two different models
@pytest.mark.parametrize("kind", ["plain", "copy"])
def test_step_is_the_log_mean_exp_of_the_members_cached_and_uncached(kind):
    first, second = pair(kind)
    ensemble, src = Ensemble([first, second]), make_sources()
    forced = torch.randint(4, VOCAB, (src.size(0), 10), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cached, uncached = make_stepper(ensemble, src, True), make_stepper(ensemble, src, False)
        assert isinstance(cached, EnsembleStepper)
        members = [DecoderStepper(m, src, use_cache=False) for m in (first, second)]
        prefix, rows = torch.full((src.size(0), 1), 2), torch.arange(src.size(0))
        for step in range(forced.size(1)):
            a, b = cached.step(prefix), uncached.step(prefix)
            p1, p2 = (m.step(prefix).double() for m in members)
            by_hand = ((p1.exp() + p2.exp()) / 2).log()
            assert (a.double() - by_hand).abs().max() <= 1e-5, f"step {step}"
            assert (a - b).abs().max() <= 1e-5, f"step {step}"
            assert (a.exp().sum(-1) - 1).abs().max() <= 1e-5
            assert min((a.double() - p).abs().max() for p in (p1, p2)) > 1e-2  # a real mixture
            if step in (3, 7):  # drop and reorder rows, as finished sequences and beams do
                keep = torch.arange(rows.numel() - 1, 0, -1)
                for stepper in (cached, uncached, *members):
                    stepper.select(keep)
                prefix, rows = prefix[keep], rows[keep]
            prefix = torch.cat([prefix, forced[rows, step : step + 1]], dim=1)
        # The last step agrees with the ensemble's teacher forcing of the same rows.
        assert (cached.step(prefix) - ensemble(src[rows], prefix)[:, -1]).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["plain", "copy"])
def test_two_models_decode_differently_and_scores_are_reproduced(kind):
    first, second = pair(kind)
    ensemble, src = Ensemble([first, second]), make_sources()
    cfg = DecodingConfig(strategy="beam", beam_size=3, max_len_a=0, max_len_b=8)
    hyps = generate(ensemble, src, cfg)
    tokens = [group[0].tokens for group in hyps]
    for member in (first, second):
        assert tokens != [group[0].tokens for group in generate(member, src, cfg)]
    best = [group[0] for group in hyps]
    rescored = sequence_scores(ensemble, src, tokens, [h.eos for h in best], alpha=cfg.alpha)
    assert max(abs(s - h.score) for (s, _), h in zip(rescored, best)) <= 1e-4
    # Batched = one by one: every member's cache (and a copy head's source ids) follows its rows.
    for i in range(src.size(0)):
        alone = generate(ensemble, src[i : i + 1, : int((src[i] != 0).sum())], cfg)
        assert alone[0][0].tokens == tokens[i]
    uncached = generate(ensemble, src, DecodingConfig(**{**asdict(cfg), "use_cache": False}))
    assert [group[0].tokens for group in uncached] == tokens


def test_ensemble_config_and_vocabulary_check():
    small, large = make_model(max_positions=64), make_model(seed=1, max_positions=128)
    config = Ensemble([small, large]).config
    assert config.max_positions == 64 and config.tgt_vocab_size == VOCAB and config.eos_id == 3
    with pytest.raises(ValueError, match="tgt_vocab_size=48 vs 50"):
        Ensemble([small, make_model(src_vocab_size=50, tgt_vocab_size=50)])
    with pytest.raises(ValueError, match="source length 70"):
        generate(Ensemble([small, large]), torch.full((1, 70), 5))
    log_probs = torch.randn(2, 5).log_softmax(-1)
    assert torch.equal(mean_log_probs([log_probs]), log_probs)


def test_predictor_takes_an_ensemble_and_its_loss():
    first, second = pair("plain")
    ensemble, src = Ensemble([first, second]).train(), make_sources()  # dropout on: the predictor turns it off
    predictor = Predictor(ensemble, tokenizer=None, decoding=CONFIGS["beam"])
    assert predictor.device == torch.device("cpu")
    assert_same_hypotheses(predictor.generate(src), generate(ensemble.eval(), src, CONFIGS["beam"]), tol=0)
    # Teacher-forced NLL: an ensemble's is -log of the mean; one network's, its head's loss.
    tgt_out = torch.tensor([[5, 6, 3], [7, 3, 0]])
    tgt_in = torch.tensor([[2, 5, 6], [2, 7, 3]])
    pair_src = src[:2]
    with torch.inference_mode():
        p1, p2 = (m(pair_src, tgt_in).double().log_softmax(-1).exp() for m in (first, second))
        by_hand = -((p1 + p2) / 2).log().gather(2, tgt_out.unsqueeze(2)).squeeze(2)[tgt_out != 0].sum()
        assert abs(float(teacher_forced_nll(ensemble, pair_src, tgt_in, tgt_out)) - float(by_hand)) <= 1e-4
        single = sequence_loss(first, pair_src, tgt_in, tgt_out, fused=False)[1]
        assert float(teacher_forced_nll(first, pair_src, tgt_in, tgt_out)) == float(single)


# ----------------------------------------------------------------------------- checkpoints
def tokenizer(seed: int, vocab_size: int) -> Tokenizer:
    """A joint sentencepiece model trained on a small toy corpus (about a second)."""
    pairs = toy.generate(seed, {"train": 300})["train"]
    return Tokenizer(train_sentencepiece([text for p in pairs for text in p], vocab_size))


def write_checkpoint(path: Path, tok: Tokenizer, seed: int, **config) -> Path:
    """A checkpoint as training writes its inference part: weights, model config, tokenizer."""
    torch.manual_seed(seed)
    sizes = dict(d_model=32, num_heads=4, num_encoder_layers=1, num_decoder_layers=1, d_ff=64, max_positions=128)
    cfg = TransformerConfig(src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size, **{**sizes, **config})
    net = Seq2SeqTransformer(cfg)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    return save_checkpoint({"state_dict": state, "model_config": asdict(cfg), "tokenizer": tok.state_dict()}, path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """a, b: one tokenizer, different models (b pre-LN with copy attention); c: another tokenizer."""
    folder = tmp_path_factory.mktemp("ensemble_ckpts")
    shared, other = tokenizer(1, 120), tokenizer(2, 120)
    return {
        "a": write_checkpoint(folder / "a.ckpt", shared, seed=0),
        "b": write_checkpoint(folder / "b.ckpt", shared, seed=1, pre_norm=True, copy_attention=True, num_decoder_layers=2,
                                max_positions=256),
        "c": write_checkpoint(folder / "c.ckpt", other, seed=2),
    }


def test_load_models_builds_an_ensemble_of_one_tokenizer(checkpoints):
    a, b = checkpoints["a"], checkpoints["b"]
    single, _ = load_models(a)
    assert isinstance(single, Seq2SeqTransformer) and isinstance(load_models([str(a)])[0], Seq2SeqTransformer)
    ensemble, tok = load_models([a, b])
    assert isinstance(ensemble, Ensemble) and len(ensemble.models) == 2 and not ensemble.training
    assert tok.difference(load_model(b)[1]) is None
    assert ensemble.models[1].config.copy_attention and ensemble.config.max_positions == 128
    with pytest.raises(CheckpointError, match="names no checkpoint"):
        load_models([])
    with pytest.raises(CheckpointError, match="names several checkpoints"):
        load_model([a, b])  # where one checkpoint is read (the attention command)
    with pytest.raises(CheckpointError, match=r"does not exist \(several checkpoints.*ckpt_path=\[A,B\]"):
        load_models(f"{a}:{b}")  # fairseq's form is not ours: colons appear in Windows paths


def test_mismatched_tokenizers_stop_with_one_message(checkpoints):
    with pytest.raises(ConfigError) as err:
        load_models([checkpoints["a"], checkpoints["b"], checkpoints["c"]])
    message = str(err.value)
    assert str(checkpoints["a"]) in message and str(checkpoints["c"]) in message and str(checkpoints["b"]) not in message
    assert "different tokenizers" in message and "\n" not in message


def test_tokenizer_difference_names_what_differs():
    base = tokenizer(1, 120)
    assert base.difference(Tokenizer(*base.state_dict().values())) is None
    assert "vocabulary of" in base.difference(tokenizer(1, 100))
    same_size = tokenizer(3, base.tgt_vocab_size)
    assert same_size.tgt_vocab_size == base.tgt_vocab_size and "joint piece" in base.difference(same_size)
    separate = Tokenizer(base.state_dict()["src_model"], base.state_dict()["src_model"])
    assert "joint vocabulary vs separate" in base.difference(separate)


# ----------------------------------------------------------------------------- the commands
def run_command(module: str, args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return forked(module, args, cwd=cwd, input=stdin, text=True, env=env, timeout=120)


LINES = ["The old man saw a dog.", "", "A dog sees the man."]


def test_translate_cli_decodes_with_two_checkpoints(checkpoints, tmp_path):
    a, b = checkpoints["a"], checkpoints["b"]
    result = run_command("seq2seq.translate", [f"ckpt_path=[{a},{b}]", "decoding=greedy", "progress=false",
                                               "device=cpu"], tmp_path, stdin="\n".join(LINES) + "\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout.split("\n")
    assert len(out) == len(LINES) + 1 and out[0] and out[1] == "" and out[2] and out[3] == ""
    ensemble, tok = load_models([a, b])
    expected = Predictor(ensemble, tok, DecodingConfig(strategy="greedy")).translate(LINES)
    assert out[:3] == [group[0][0] for group in expected]


def test_translate_cli_mismatched_tokenizers_is_one_error_line(checkpoints, tmp_path):
    a, c = checkpoints["a"], checkpoints["c"]
    result = run_command("seq2seq.translate", [f"ckpt_path=[{a},{c}]", "output=out.txt"], tmp_path, stdin="Hallo.\n")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: checkpoints "), result.stderr
    assert str(a) in lines[0] and str(c) in lines[0] and "different tokenizers" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == "" and not (tmp_path / "out.txt").exists()


def test_eval_scores_an_ensemble(checkpoints, tmp_path):
    """eval with a list: an ensemble of a checkpoint with itself scores as the checkpoint; two differ."""
    from seq2seq.eval import evaluate

    corpus = toy.write_corpus(tmp_path / "corpus", sizes={"train": 20, "val": 8, "test": 8})
    data = ["data=toy", f"data.root={corpus}", "data.generate=null"]
    a, b = checkpoints["a"], checkpoints["b"]
    payloads = {}
    for name, ckpt in {"a": f"{a}", "aa": f"[{a},{a}]", "ab": f"[{a},{b}]"}.items():
        cfg = compose_train(tmp_path / name, [f"ckpt_path={ckpt}", *data, "device=cpu"], config_name="eval")
        payloads[name] = evaluate(cfg)
        payloads[name]["hyps"] = (tmp_path / name / "run" / "hypotheses.test.txt").read_text()
    assert payloads["aa"]["hyps"] == payloads["a"]["hyps"]
    assert payloads["aa"]["test/loss"] == pytest.approx(payloads["a"]["test/loss"], rel=1e-5)
    assert payloads["ab"]["test/loss"] != pytest.approx(payloads["a"]["test/loss"], rel=1e-3)
    written = json.loads((tmp_path / "ab" / "run" / "metrics.json").read_text())
    assert written["ckpt_path"] == [str(a.resolve()), str(b.resolve())]
    assert written["num_parameters"] == sum(load_model(p)[0].num_parameters() for p in (a, b))


def test_python_api_takes_several_checkpoints(checkpoints):
    from seq2seq.api import Translator

    a, b = checkpoints["a"], checkpoints["b"]
    translator = Translator.from_checkpoint([a, b], "cpu")
    assert isinstance(translator.net, Ensemble)
    ensemble, tok = load_models([a, b])
    expected = Predictor(ensemble, tok, DecodingConfig(strategy="beam", beam_size=3)).translate(LINES)
    assert translator.translate(LINES, strategy="beam", beam_size=3) == [group[0][0] for group in expected]
    # Forced decoding through the API: an ensemble of a model with itself scores as the model.
    done = [i for i, line in enumerate(LINES) if line.strip()]
    sources, targets = [LINES[i] for i in done], [expected[i][0][0] for i in done]
    twin, single = Translator.from_checkpoint([a, a], "cpu").score(sources, targets), Translator.from_checkpoint(a, "cpu").score(sources, targets)
    assert [p.n_tokens for p in twin] == [p.n_tokens for p in single]
    assert all(abs(p.log_prob - q.log_prob) < 1e-4 and abs(p.score - q.score) < 1e-5 for p, q in zip(twin, single))
    assert any(abs(p.log_prob - q.log_prob) > 1e-2 for p, q in zip(translator.score(sources, targets), single))
    with pytest.raises(ConfigError, match="attention maps need one model"):
        translator.attention(LINES[0])
