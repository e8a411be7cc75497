"""Loggers: wandb works offline without an account; every logger gets the run's reproducibility facts."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from seq2seq.utils.loggers import hydra_sweep, wandb_logger, wandb_offline_by_default
from seq2seq.utils.run_info import git_commit, log_run_info, run_info

SIGNATURE = {"bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0", "chrf": "nrefs:1|nc:6"}


def _deep_update(target: dict, update: dict) -> dict:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
    return target


def _leet_records(run: Path) -> list[dict] | None:
    """The records of a finished offline run via ``wandb leet inspect --json``; None without that command.

    The wandb service may still be writing the log just after the training process ended, so
    wait (a little) for its exit record.
    """
    wandb_cli = Path(sys.executable).with_name("wandb")
    for _ in range(30):
        result = subprocess.run([str(wandb_cli), "leet", "inspect", "--json", str(run)],
                                capture_output=True, text=True, timeout=120)
        if "No such command" in result.stderr:
            return None
        if result.returncode == 0:
            records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
            if any(r.get("type") == "exit" for r in records):
                return records
        time.sleep(1)
    raise AssertionError(f"wandb leet inspect found no finished run in {run}: {result.stderr[-1000:]}")


def wandb_run_record(run_dir: Path) -> dict:
    """What the one offline wandb run under ``run_dir``/wandb holds: run, config, summary (metrics).

    Reads the run's transaction log with ``wandb leet inspect --json``; older wandb versions
    wrote ``files/config.yaml`` and ``files/wandb-summary.json`` instead.
    """
    runs = sorted((Path(run_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {run_dir}/wandb, found {runs}"
    record: dict = {"run": {}, "config": {}, "summary": {}}
    records = _leet_records(runs[0])
    if records is not None:
        for item in records:
            kind = item.get("type")
            if kind == "run":
                record["run"] = item["run"]
                _deep_update(record["config"], item["run"].get("config", {}).get("update", {}))
            elif kind == "config":
                _deep_update(record["config"], item["config"].get("update", {}))
            elif kind == "history":
                record["summary"].update(item["history"].get("item", {}))
            elif kind == "summary":
                _deep_update(record["summary"], item["summary"].get("update", {}))
    else:  # wandb before `wandb leet`: plain files
        files = runs[0] / "files"
        if not (files / "config.yaml").is_file():
            pytest.skip(f"cannot read the offline run {runs[0]} with this wandb version")
        config = yaml.safe_load((files / "config.yaml").read_text())
        record["config"] = {k: v.get("value") if isinstance(v, dict) else v for k, v in config.items()}
        record["summary"] = json.loads((files / "wandb-summary.json").read_text())
    record["run_id"] = record["run"].get("run_id") or runs[0].name.rsplit("-", 1)[-1]
    return record


def test_wandb_is_offline_unless_a_key_or_mode_is_set(monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_offline_by_default()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not wandb_offline_by_default()
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert not wandb_offline_by_default()  # wandb's own mode setting decides


def test_sweep_name_only_inside_a_multirun(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig

    from helpers import compose_train

    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # other tests leave a config set
    assert hydra_sweep() == (None, None)
    cfg = compose_train(tmp_path, ["hparams_search=optuna"])  # a multirun config, set as current
    sweep = Path(cfg.hydra.sweep.dir)
    assert hydra_sweep()[0] == f"{sweep.parent.name}_{sweep.name}"
    compose_train(tmp_path, [])
    assert hydra_sweep() == (None, None)


def test_run_info_holds_commit_parameters_and_signature():
    commit = git_commit()
    assert commit is None or re.fullmatch(r"[0-9a-f]{40}", commit)
    info = run_info(num_parameters=1234, sacrebleu_signature={**SIGNATURE, "rouge": None})
    assert info["git_commit"] == commit and info["num_parameters"] == 1234
    assert info["sacrebleu_signature"] == SIGNATURE  # missing signatures are left out


def test_csv_and_tensorboard_loggers_receive_run_info(tmp_path):
    csv_logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="")
    tb_logger = TensorBoardLogger(save_dir=str(tmp_path / "tensorboard"), name=None, version="",
                                  default_hp_metric=False)
    for logger in (csv_logger, tb_logger):
        logger.log_hyperparams({"model": {"d_model": 32}})
        logger.log_metrics({"val/bleu": 1.5}, step=1)
        logger.finalize("success")  # as after trainer.test: the info comes last
    log_run_info([csv_logger, tb_logger], run_info(num_parameters=4321, sacrebleu_signature=SIGNATURE))
    for hparams_file in (tmp_path / "csv" / "hparams.yaml", tmp_path / "tensorboard" / "hparams.yaml"):
        hparams = yaml.safe_load(hparams_file.read_text())
        assert hparams["model"] == {"d_model": 32}  # earlier hyperparameters are kept
        assert hparams["run_info"]["num_parameters"] == 4321
        assert hparams["run_info"]["sacrebleu_signature"]["bleu"] == SIGNATURE["bleu"]
        assert "git_commit" in hparams["run_info"]
    events = b"".join(p.read_bytes() for p in (tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert b"run_info" in events and SIGNATURE["bleu"].encode() in events


def test_wandb_offline_run_holds_metrics_config_and_run_info(tmp_path, monkeypatch):
    import wandb

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default alone must keep it offline
    logger = wandb_logger(save_dir=str(tmp_path), tags=["toy", "test"], job_type="train")
    assert isinstance(logger, WandbLogger)
    try:
        logger.log_hyperparams({"model": {"d_model": 32}, "optim": {"lr": 0.002}})
        logger.log_metrics({"train/loss": 3.5}, step=1)
        logger.log_metrics({"val/bleu": 12.5}, step=2)
        log_run_info([logger], run_info(num_parameters=4321, sacrebleu_signature=SIGNATURE))
        assert logger.experiment.settings.mode in ("offline", "dryrun")  # wandb calls offline "dryrun"
    finally:
        wandb.finish()
    record = wandb_run_record(tmp_path)
    assert record["config"]["model"]["d_model"] == 32 and record["config"]["optim"]["lr"] == 0.002
    assert record["config"]["run_info"]["num_parameters"] == 4321
    assert record["summary"]["val/bleu"] == 12.5 and record["summary"]["train/loss"] == 3.5
    assert record["summary"]["run_info/sacrebleu_signature/bleu"] == SIGNATURE["bleu"]
    if record["run"]:
        assert record["run"].get("tags") == ["toy", "test"]
