"""Every config composes; bad keys and options stop with Hydra's message; the CLI runs."""

import os
import subprocess
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers import REPO, TINY_OVERRIDES, compose_train
from helpers.forked_commands import run_command

CONF = REPO / "conf"
GROUPS = ["data", "model", "model/size", "speed", "optim", "decoding", "trainer", "logger", "callbacks", "experiment", "debug"]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_config_file_composes(group, tmp_path):
    options = group_options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        cfg = compose_train(tmp_path, [f"{group}={option}"])
        for key in cfg:
            if key != "hydra" and OmegaConf.is_config(cfg[key]):
                OmegaConf.to_container(cfg[key], resolve=True)  # every interpolation resolves
        assert cfg.model.d_model > 0 and cfg.data.root


def test_every_config_file_has_a_comment_line():
    for path in CONF.rglob("*.yaml"):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        assert any(line.startswith("#") and not line.startswith("# @package") for line in lines[:3]), path


def test_size_override_wins_over_experiment(tmp_path):
    assert compose_train(tmp_path, ["model/size=small"]).model.d_model == 256
    assert compose_train(tmp_path, []).model.d_model == 128


def test_unknown_size_lists_the_options(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(tmp_path, ["model/size=huge"])
    for option in ("tiny", "small", "base", "big"):
        assert option in str(err.value)


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(tmp_path, ["trainer.no_such_key=1"])
    assert "no_such_key" in str(err.value)


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SEQ2SEQ_ROOT": str(cwd), "HYDRA_FULL_ERROR": "0"}
    return run_command("seq2seq.train", args, cwd=cwd, env=env, text=True, timeout=timeout)


def test_cli_unknown_size_exits_with_hydra_message(tmp_path):
    result = run_cli(["model/size=huge"], tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/size/huge'" in result.stderr
    assert "Available options" in result.stderr and "small" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_fast_dev_run_through_hydra_entry_point(tmp_path):
    result = run_cli([*TINY_OVERRIDES, "debug=fast_dev_run"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Run folder:" in result.stdout
    run_dir = Path(result.stdout.split("Run folder:")[1].split()[0])
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert (run_dir / "metrics.json").exists()


def test_cli_mismatched_corpus_names_both_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.en").write_text("a\nb\nc\n")
    (corpus / "train.de").write_text("x\ny\n")
    (corpus / "val.en").write_text("a\n")
    (corpus / "val.de").write_text("x\n")
    result = run_cli([*TINY_OVERRIDES, f"data.root={corpus}", "data.generate=null", "debug=fast_dev_run"], tmp_path)
    assert result.returncode == 2
    message = result.stderr.strip().splitlines()[-1]
    assert "train.en" in message and "train.de" in message and "3" in message and "2" in message
    assert "Traceback" not in result.stderr
