"""Experiments x sizes x trainers compose; launchers and the Optuna sweeper compose; real tiny sweeps run.

The real sweeps run `python -m seq2seq.train -m ...` in a subprocess, as a user would, with
SEQ2SEQ_ROOT pointing at tmp_path and wandb offline.
"""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from helpers import QUICK, REPO, TINY_OVERRIDES, command_env, compose_train, run_train
from seq2seq.analysis.sweep import report
from seq2seq.config import config_dir

CONF = REPO / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
SIZES = sorted(p.stem for p in (CONF / "model" / "size").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml"))

def _trainer_value(name: str, key: str):
    """``key`` as trainer/<name>.yaml sets it, else as trainer/default.yaml does."""
    own = yaml.safe_load((CONF / "trainer" / f"{name}.yaml").read_text()) or {}
    return own[key] if key in own else yaml.safe_load((CONF / "trainer" / "default.yaml").read_text())[key]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_every_size_and_trainer(experiment, tmp_path):
    # Every size and every trainer with this experiment (pairs cycled: sizes and trainers set
    # disjoint keys, so their own combinations add nothing); the whole config must resolve.
    pairs = zip(itertools.islice(itertools.cycle(SIZES), max(len(SIZES), len(TRAINERS))),
                itertools.islice(itertools.cycle(TRAINERS), max(len(SIZES), len(TRAINERS))))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        for size, trainer in pairs:
            overrides = [f"experiment={experiment}", f"model/size={size}", f"trainer={trainer}",
                         f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"]
            cfg = compose("train", overrides=overrides)
            resolved = OmegaConf.to_container(cfg, resolve=True)
            expected = yaml.safe_load((CONF / "model" / "size" / f"{size}.yaml").read_text())
            assert resolved["model"]["d_model"] == expected["d_model"], (experiment, size)
            assert resolved["trainer"]["accelerator"] == _trainer_value(trainer, "accelerator"), (experiment, trainer)
            assert resolved["data"]["root"] and resolved["trainer"]["_target_"] == "lightning.pytorch.Trainer"


def test_distributed_trainers(tmp_path):
    ddp_sim = compose_train(tmp_path, ["trainer=ddp_sim"]).trainer
    assert (ddp_sim.accelerator, ddp_sim.devices, ddp_sim.strategy) == ("cpu", 2, "ddp")
    multinode = compose_train(tmp_path, ["trainer=multinode"]).trainer
    assert (multinode.num_nodes, multinode.devices, multinode.strategy) == (2, 8, "ddp")
    gpu = compose_train(tmp_path, ["trainer=ddp"]).trainer
    assert gpu.accelerator == "gpu" and gpu.precision == "bf16-mixed"


def test_callbacks_and_debug_options_compose(tmp_path):
    cfg = compose_train(tmp_path, ["callbacks=early_stopping"])
    assert cfg.callbacks.early_stopping.monitor == "val/bleu" and "model_checkpoint" in cfg.callbacks
    cfg = compose_train(tmp_path, ["callbacks=epoch_checkpoints"])
    assert cfg.callbacks.epoch_checkpoints.save_top_k == -1 and "model_checkpoint" in cfg.callbacks
    cfg = compose_train(tmp_path, ["debug=overfit"])
    assert cfg.trainer.overfit_batches > 0 and "fixed_train_batches" in cfg.callbacks and cfg.model.dropout == 0
    assert compose_train(tmp_path, ["debug=profiler"]).trainer.profiler._target_.endswith("SimpleProfiler")
    assert compose_train(tmp_path, ["debug=limit"]).trainer.limit_train_batches == 10


@pytest.mark.parametrize(
    "launcher, target",
    [
        ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("slurm", "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"),
        ("local_parallel", "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"),
    ],
)
def test_launchers_compose(launcher, target, tmp_path):
    cfg = compose_train(tmp_path, [f"hydra/launcher={launcher}", "trainer=ddp"])
    assert cfg.hydra.launcher._target_ == target
    OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    if launcher == "slurm":
        assert cfg.hydra.launcher.timeout_min == 1440 and cfg.hydra.launcher.tasks_per_node == 1


def test_optuna_search_composes(tmp_path):
    cfg = compose_train(tmp_path, ["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert set(sweeper.params) == {"optim.lr", "optim.warmup_steps", "model.dropout", "optim.label_smoothing"}
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    for key in sweeper.params:
        assert OmegaConf.select(cfg, key) is not None  # every searched key exists in the config


def test_make_sweep_runs_train_then_report(tmp_path):
    result = subprocess.run(["make", "-n", "sweep", "SWEEP_ARGS=model.d_model=32,64", f"SWEEP_DIR={tmp_path}/s"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "-m seq2seq.train -m" in result.stdout and "model.d_model=32,64" in result.stdout
    assert "-m seq2seq.report" in result.stdout


def test_multirun_two_jobs_get_own_folders_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_train(["-m", *QUICK, "model.d_model=32,64", "logger=csv", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for num, d_model in ((0, 32), (1, 64)):
        job = sweep / str(num)
        assert f"model.d_model={d_model}" in (job / ".hydra" / "overrides.yaml").read_text()
        assert (job / "checkpoints" / "best.ckpt").is_file() and (job / "csv" / "metrics.csv").is_file()
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["run_dir"] == str(job) and "test/bleu" in metrics

    result = report(sweep)
    assert [row["status"] for row in result["rows"]] == ["ok", "ok"]
    params = [row["parameters"] for row in result["rows"]]
    assert params[0] < params[1]
    table = [line for line in result["markdown"].splitlines() if line.startswith("| ")]
    assert len(table) == 3 and "model.d_model=32" in table[1] and "model.d_model=64" in table[2]
    assert result["plot_file"].read_bytes().startswith(b"\x89PNG")


def test_optuna_sweep_of_two_trials_returns_the_metric(tmp_path):
    sweep = tmp_path / "search"
    result = run_train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", *QUICK, "test=false",
                        f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    objectives = [json.loads((sweep / str(n) / "metrics.json").read_text())["val/bleu_best"] for n in (0, 1)]
    assert results["best_value"] == pytest.approx(max(objectives))
    assert set(results["best_params"]) == {"optim.lr", "optim.warmup_steps", "model.dropout", "optim.label_smoothing"}
    overrides = (sweep / "0" / ".hydra" / "overrides.yaml").read_text()
    assert "optim.lr=" in overrides and "model.dropout=" in overrides


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_runs_fast_dev_run_on_local_fixture_data(experiment, tmp_path):
    """Each recipe trains one batch and validates one batch on small line-aligned files it is pointed at."""
    from seq2seq.train import train

    probe = compose_train(tmp_path / "probe", [f"experiment={experiment}"])
    # A multilingual data config names its pairs (SRC-TGT) under data.pairs.
    languages = {lang for name in (probe.data.get("pairs") or {}) for lang in str(name).split("-")}
    languages |= {lang for lang in (probe.data.src_lang, probe.data.tgt_lang) if lang}
    if not probe.data.get("pairs"):
        assert len(languages) == 2, languages
    first = lambda names: names if isinstance(names, str) else list(names)[0]  # noqa: E731
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in (first(probe.data.splits.train), first(probe.data.splits.val)):
        for lang in languages:
            (corpus / f"{split}.{lang}").write_text("".join(f"{lang} sentence number {i} .\n" for i in range(40)))
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("data.generate")]
    overrides = [f"experiment={experiment}", *tiny, f"data.root={corpus}", "++data.generate=null",
                 "++data.download=null", "data.vocab_size=60", "trainer=cpu", "trainer.precision=32-true",
                 "debug=fast_dev_run"]
    metrics = train(compose_train(tmp_path, overrides))
    assert "val/loss" in metrics


# ---------------------------------------------------------------------------------- sweeps that survive
# In these sweeps model.d_model=30 is impossible (not divisible by the 4 heads): that job fails as soon
# as its model is built.


def test_seed_sweep_with_an_impossible_job_finishes_groups_and_reports(tmp_path):
    """A real 3 x 2 sweep (two sizes and an impossible one, two seeds each): the impossible jobs are
    recorded as failed, the others run; the report has one row per size, mean ± std over the seeds."""
    sweep = tmp_path / "sweep"
    quick = [o for o in QUICK if not o.startswith("model.d_model=")]
    result = run_train(["-m", *quick, "model.d_model=32,30,64", "seed=1,2", "logger=csv",
                        f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 job(s) of the sweep failed" in result.stderr and "job 2: ValueError: d_model=30" in result.stderr
    failed = sorted(p.parent.name for p in sweep.glob("*/failure.json"))
    assert failed == ["2", "3"] and all((sweep / str(n) / "metrics.json").is_file() for n in (0, 1, 4, 5))
    assert json.loads((sweep / "2" / "failure.json").read_text())["error"] == (
        "ValueError: d_model=30 is not divisible by num_heads=4")

    out = report(sweep, baseline="model.d_model=32", resamples=100)
    small, impossible, large = out["groups"]
    assert [[o for o in g.key if o.startswith("model.d_model=")] for g in out["groups"]] == [
        ["model.d_model=32"], ["model.d_model=30"], ["model.d_model=64"]]
    assert [(len(g.finished), len(g.failed)) for g in out["groups"]] == [(2, 0), (0, 2), (2, 0)]
    assert [j["seed"] for j in small.jobs] == [1, 2]
    values = [j["val/chrf"] for j in small.jobs]
    assert small.summaries["val/chrf"].mean == pytest.approx(sum(values) / 2)
    assert small.summaries["val/chrf"].std == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
    # Each seed of row 3 against the same seed of row 1, on the hypotheses the jobs kept.
    assert [(b, j) for b, j, _ in large.comparisons["val/chrf"].pairs] == [("0", "4"), ("1", "5")]
    assert "- row 2, job 2 (seed=1): ValueError: d_model=30 is not divisible by num_heads=4" in out["markdown"]
    assert r"\begin{tabular}" in out["latex"] and (sweep / "results.tex").is_file()


def test_joblib_launcher_goes_on_after_a_failing_job(tmp_path):
    sweep = tmp_path / "sweep"
    quick = [o for o in QUICK if not o.startswith("model.d_model=")]
    result = run_train(["-m", "hydra/launcher=local_parallel", *quick, "model.d_model=32,30",
                        "logger=csv", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (sweep / "0" / "metrics.json").is_file() and not (sweep / "1" / "metrics.json").exists()
    assert "not divisible" in json.loads((sweep / "1" / "failure.json").read_text())["error"]
    rows = report(sweep)["rows"]
    assert [r["status"] for r in rows] == ["ok", "failed"] and "not divisible" in rows[1]["error"]


def _optuna_command(sweep: Path, storage: Path, n_trials: int) -> list[str]:
    # num_heads 3 does not divide d_model 32: those trials fail; TPE's seeded start draws both values.
    return [sys.executable, "-m", "seq2seq.train", "hparams_search=optuna", f"hydra.sweeper.n_trials={n_trials}",
            f"hydra.sweeper.storage=sqlite:///{storage}", f"hydra.sweep.dir={sweep}", "test=false",
            *(o for o in QUICK if not o.startswith("model.num_heads=")),  # a fixed value would win over the choice
            "callbacks.periodic_checkpoint=null", "model.num_heads=choice(3,4)"]


def _trials(storage: Path) -> list:
    import optuna

    return optuna.load_study(study_name="train_search", storage=f"sqlite:///{storage}").trials


def test_optuna_study_survives_failing_trials_and_resumes_after_a_kill(tmp_path):
    """Trials whose job raises are FAIL in the study and the study goes on; a sweep killed during a
    trial, run again with the same command, marks that trial failed and runs only what is left."""
    import os
    import signal
    import time

    import optuna

    sweep, storage = tmp_path / "search", tmp_path / "optuna.db"
    command = _optuna_command(sweep, storage, n_trials=4)
    env = command_env(tmp_path)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (sweep / "1" / ".hydra" / "config.yaml").exists():  # trial 1 has started
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "trial 1 never started"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.kill()
        first.wait()
    states = [t.state for t in _trials(storage)]
    assert states[1] == optuna.trial.TrialState.RUNNING  # what a killed sweep leaves in the study

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    trials = _trials(storage)
    # Trial 1 (interrupted) is failed and does not count: 4 ended trials besides it, numbered on.
    assert len(trials) == 5 and trials[1].state == optuna.trial.TrialState.FAIL
    assert trials[1].user_attrs.get("interrupted") is True
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3", "4"]
    failed = [t.number for t in trials if t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("interrupted")]
    complete = [t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert failed and complete and sorted(failed + complete + [1]) == [0, 1, 2, 3, 4]
    for number in failed:  # the failing trials' reasons, in their folders
        assert "not divisible by num_heads=3" in json.loads((sweep / str(number) / "failure.json").read_text())["error"]
        assert trials[number].params["model.num_heads"] == 3
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"]["model.num_heads"] == 4
