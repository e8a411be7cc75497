"""seq2seq.eval: a checkpoint alone, evaluated on a data config's split, reproduces training's scores."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from helpers import TINY_OVERRIDES, compose_train
from helpers.forked_commands import run_command
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.eval import evaluate


def eval_config(tmp_path: Path, overrides: list[str]):
    return compose_train(tmp_path, overrides, config_name="eval")


def tiny_data(tiny_run) -> list[str]:
    """The tiny run's corpus, read as it is (generate=null: never regenerated, whatever its sizes)."""
    return ["data=toy", f"data.root={tiny_run['data_dir']}", "data.generate=null"]


@pytest.fixture
def run_folder(tiny_run, tiny_checkpoint, tmp_path) -> Path:
    """A run folder as `python -m seq2seq.train` leaves it: .hydra/config.yaml beside checkpoints/."""
    run = tmp_path / "train_run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, run / "checkpoints" / "best.ckpt")
    train_cfg = compose_train(tmp_path / "compose", [*TINY_OVERRIDES, *tiny_data(tiny_run)[1:]])
    (run / ".hydra").mkdir()
    data = OmegaConf.to_container(train_cfg.data, resolve=True)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": 1234, "data": data}))
    return run


def test_eval_reproduces_the_test_bleu_of_training(tiny_run, tiny_checkpoint, tmp_path):
    payload = evaluate(eval_config(tmp_path, [f"ckpt_path={tiny_checkpoint}", *tiny_data(tiny_run)]))
    # Training logs float32 values: equal up to float32 rounding.
    for key in ("test/bleu", "test/chrf"):
        assert payload[key] == pytest.approx(tiny_run[key], rel=1e-6, abs=1e-6), key
    assert payload["test/loss"] == pytest.approx(tiny_run["test/loss"], rel=1e-5)
    assert payload["test/chrf"] > 0

    out = tmp_path / "run"
    written = json.loads((out / "metrics.json").read_text())
    assert written["test/bleu"] == payload["test/bleu"]
    assert written["sacrebleu_signature"]["bleu"].startswith("nrefs:1|case:mixed")
    trained = json.loads((Path(tiny_run["run_dir"]) / "metrics.json").read_text())
    assert written["num_parameters"] == trained["num_parameters"]
    assert written["ckpt_path"] == str(tiny_checkpoint.resolve())
    assert written["decoding"]["strategy"] == "greedy" and written["split"] == "test"
    lines = (out / "hypotheses.test.txt").read_text().split("\n")
    test_sources = (Path(tiny_run["data_dir"]) / "test.en").read_text().splitlines()
    assert lines[-1] == "" and len(lines) - 1 == len(test_sources) == written["num_sentences"]


def test_eval_hyp_file_reproduces_the_test_bleu_of_training(run_folder, tiny_run, tmp_path):
    ckpt = run_folder / "checkpoints" / "best.ckpt"
    decoded = evaluate(eval_config(tmp_path / "decode", [f"ckpt_path={ckpt}"]))
    hyp_file = Path(decoded["hypotheses"])
    # Another system's output file, scored by one command: with a data config, or with the run's.
    for overrides in ([*tiny_data(tiny_run)], [f"ckpt_path={ckpt}"]):
        payload = evaluate(eval_config(tmp_path / "score", [f"hyp_file={hyp_file}", *overrides]))
        assert payload["test/bleu"] == pytest.approx(tiny_run["test/bleu"], rel=1e-6, abs=1e-6)
        assert payload["test/chrf"] == pytest.approx(tiny_run["test/chrf"], rel=1e-6, abs=1e-6)
        assert "test/loss" not in payload and payload["hyp_file"] == str(hyp_file.resolve())
    trained = json.loads((Path(tiny_run["run_dir"]) / "metrics.json").read_text())
    assert trained["signatures"]["test"] == payload["signatures"]["test"] == decoded["signatures"]["test"]
    assert "|tok:13a|" in trained["signatures"]["test"]["bleu"] and "val" in trained["signatures"]

    # A second reference (here the hypotheses themselves) through the data config: nrefs:2, BLEU 100.
    two = evaluate(eval_config(tmp_path / "two", [f"hyp_file={hyp_file}", *tiny_data(tiny_run),
                                                 f"data.extra_references={{test:[{hyp_file}]}}"]))
    assert two["test/bleu"] == pytest.approx(100.0) and two["signatures"]["test"]["bleu"].startswith("nrefs:2|")

    short = tmp_path / "short.txt"
    short.write_text("".join(hyp_file.read_text().splitlines(keepends=True)[:-1]))
    with pytest.raises(DataError, match=rf"{short} has {decoded['num_sentences'] - 1} lines but the test split "
                                        rf".* has {decoded['num_sentences']} segments"):
        evaluate(eval_config(tmp_path / "short", [f"hyp_file={short}", *tiny_data(tiny_run)]))


def test_eval_of_a_japanese_target_without_mecab_stops_before_scoring(tiny_run, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "MeCab", None)  # as if sacrebleu[ja] were not installed
    hyp_file = tmp_path / "hyps.txt"
    hyp_file.write_text("x\n")
    with pytest.raises(ConfigError, match=r"pip install 'sacrebleu\[ja\]'"):
        evaluate(eval_config(tmp_path, [f"hyp_file={hyp_file}", *tiny_data(tiny_run), "data.tgt_lang=ja"]))


def test_eval_uses_the_runs_data_config_val_split_and_beam(run_folder, tiny_run, tmp_path):
    ckpt = run_folder / "checkpoints" / "best.ckpt"
    payload = evaluate(eval_config(tmp_path, [f"ckpt_path={ckpt}", "split=val", "decoding=beam",
                                              "decoding.beam_size=2", "n_best=2"]))
    assert payload["data"]["root"] == tiny_run["data_dir"]
    assert "val/bleu" in payload and "test/bleu" not in payload
    assert payload["decoding"]["strategy"] == "beam" and payload["decoding"]["n_best"] == 2
    n_val = len((Path(tiny_run["data_dir"]) / "val.en").read_text().splitlines())
    out = tmp_path / "run"
    assert len((out / "hypotheses.val.txt").read_text().splitlines()) == n_val
    nbest = [line.split("\t") for line in (out / "hypotheses.val.nbest.txt").read_text().splitlines()]
    assert len(nbest) == 2 * n_val and [row[:2] for row in nbest[:2]] == [["0", "1"], ["0", "2"]]
    assert float(nbest[0][2]) >= float(nbest[1][2])  # best first


def test_eval_scores_other_length_penalties_from_one_search(run_folder, tmp_path):
    """length_penalties=[...]: each penalty's choice among the same beam search's hypotheses is scored,
    and equals an eval run decoding with that penalty; the default ranking's row equals val/bleu."""
    ckpt = run_folder / "checkpoints" / "best.ckpt"
    common = [f"ckpt_path={ckpt}", "split=val", "decoding=beam", "decoding.beam_size=3"]
    swept = evaluate(eval_config(tmp_path / "swept", [*common, "length_penalties=[gnmt:1.0,average:1.0,gnmt:0]"]))
    average = evaluate(eval_config(tmp_path / "average", [*common, "decoding.length_penalty=average", "decoding.alpha=1.0"]))
    assert swept["val/length_penalty/gnmt_1/bleu"] == swept["val/bleu"]  # beam.yaml: gnmt, alpha 1.0
    assert swept["val/length_penalty/average_1/bleu"] == average["val/bleu"]
    assert swept["val/length_penalty/average_1/chrf"] == average["val/chrf"] and "val/length_penalty/gnmt_0/bleu" in swept
    assert swept["decoding"]["n_best"] == 1 and not (tmp_path / "swept" / "run" / "hypotheses.val.nbest.txt").exists()
    with pytest.raises(ConfigError, match="KIND:ALPHA"):
        evaluate(eval_config(tmp_path / "bad", [*common, "length_penalties=[wu:1]"]))
    with pytest.raises(ConfigError, match="use decoding=beam"):
        evaluate(eval_config(tmp_path / "greedy", [f"ckpt_path={ckpt}", "split=val", "length_penalties=[gnmt:1]"]))


def test_missing_test_split_is_a_data_error(tiny_run, tiny_checkpoint, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("train.en", "train.de", "val.en", "val.de"):
        shutil.copy(Path(tiny_run["data_dir"]) / name, corpus / name)
    cfg = eval_config(tmp_path, [f"ckpt_path={tiny_checkpoint}", "data=toy", f"data.root={corpus}", "data.generate=null"])
    with pytest.raises(DataError, match="no test split"):
        evaluate(cfg)


def test_missing_checkpoint_or_data_config_are_user_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(eval_config(tmp_path, [f"ckpt_path={tmp_path / 'nope.ckpt'}", "data=toy"]))
    with pytest.raises(ConfigError, match="ckpt_path=PATH is required.*or hyp_file=FILE"):
        evaluate(eval_config(tmp_path, ["data=toy"]))
    with pytest.raises(ConfigError, match="no data config: hyp_file= needs one"):
        evaluate(eval_config(tmp_path, [f"hyp_file={tmp_path / 'hyps.txt'}"]))
    # A checkpoint outside a run folder needs data=...
    lone = tmp_path / "lone" / "model.ckpt"
    lone.parent.mkdir()
    shutil.copy(tiny_checkpoint, lone)
    with pytest.raises(ConfigError, match="data=NAME"):
        evaluate(eval_config(tmp_path, [f"ckpt_path={lone}"]))


def run_eval(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEQ2SEQ_ROOT": str(cwd), "HYDRA_FULL_ERROR": "0"}
    return run_command("seq2seq.eval", args, cwd=cwd, env=env, text=True, timeout=300)


def test_cli_garbage_checkpoint_exits_2_with_one_message(tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_text("this is not a checkpoint\n")
    result = run_eval([f"ckpt_path={garbage}", "data=toy"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(garbage) in lines[0] and lines[0].startswith("error:")


def test_cli_writes_metrics_and_hypotheses_into_its_run_folder(run_folder, tmp_path):
    result = run_eval([f"ckpt_path={run_folder / 'checkpoints' / 'best.ckpt'}", "split=val"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = Path(result.stdout.split("Run folder:")[1].split()[0])
    assert out.is_relative_to(tmp_path / "outputs" / "eval")
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"val/bleu", "val/chrf", "sacrebleu_signature", "num_parameters", "ckpt_path", "decoding"} <= set(metrics)
    assert (out / "hypotheses.val.txt").is_file()
