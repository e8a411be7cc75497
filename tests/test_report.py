"""seq2seq.report: a multirun folder becomes a Markdown/CSV table and a BLEU-vs-parameters plot."""

import csv
import json
import os
from pathlib import Path

import yaml

from helpers.forked_commands import run_command
from seq2seq.analysis.sweep import read_job, report, split_overrides
from seq2seq.report import main

SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


def make_job(sweep: Path, num: int, overrides: list[str], d_model: int, metrics: dict | None,
             tokens_per_s: list[float] = ()) -> Path:
    """A job folder as Hydra and train leave it (metrics None: the job failed)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = {
        "model": {"d_model": d_model, "num_encoder_layers": 2, "num_decoder_layers": 2},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
    }
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": {"model/size": "tiny"}}}}))
    if tokens_per_s:
        (job / "csv").mkdir()
        with (job / "csv" / "metrics.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "train/loss", "train/tokens_per_s"])
            writer.writerows([[i, 1.0, ""] for i in range(2)] + [[i, "", v] for i, v in enumerate(tokens_per_s)])
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def fake_sweep(root: Path) -> Path:
    sweep = root / "sweep"
    common = ["experiment=toy", "trainer.max_steps=10"]
    make_job(sweep, 0, [*common, "model.d_model=32"], 32, {
        "val/bleu": 10.0, "val/bleu_best": 12.5, "test/bleu": 11.0, "val/chrf": 30.0, "test/chrf": 31.0,
        "num_parameters": 50_000, "sacrebleu_signature": {"bleu": SIGNATURE}, "wall_time_s": 75.0,
        "device": "cpu", "test/rouge1": 0.4,
    }, tokens_per_s=[1000.0, 3000.0])
    make_job(sweep, 1, [*common, "model.d_model=64"], 64, {
        "val/bleu": 20.0, "test/bleu": 19.0, "val/chrf": 40.0, "test/chrf": 41.0, "num_parameters": 150_000,
        "sacrebleu_signature": {"bleu": SIGNATURE}, "train/tokens_per_s": 1500.0,
    })
    make_job(sweep, 2, [*common, "model.d_model=128"], 128, None)  # crashed before metrics.json
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return sweep


def test_report_rows_table_csv_and_plot(tmp_path):
    sweep = fake_sweep(tmp_path)
    result = report(sweep)
    rows = result["rows"]
    assert [r["job"] for r in rows] == ["0", "1", "2"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    first, second, failed = rows
    assert first["val/bleu"] == 12.5  # the best validation BLEU when logged
    assert second["val/bleu"] == 20.0
    assert first["tokens/s"] == 2000.0  # mean over the CSV log
    assert second["tokens/s"] == 1500.0  # metrics.json's value without a CSV log
    assert first["wall_time_s"] == 75.0 and first["device"] == "cpu"
    assert second["device"] == "cpu x1 32-true"  # from the trainer config
    assert first["sacrebleu_signature"] == SIGNATURE and first["size"] == "tiny (d32 L2+2)"
    assert "test/rouge1" in result["columns"]

    markdown = (sweep / "results.md").read_text()
    assert "Overrides of every job: `experiment=toy trainer.max_steps=10`" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, one row per job
    assert "| 2 | failed |" in table[-1] and "model.d_model=128" in table[-1]
    assert "nrefs:1\\|case:mixed" in table[2]  # the signature's | does not split cells
    with (sweep / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["status"] for r in csv_rows] == ["ok", "ok", "failed"]
    assert float(csv_rows[1]["test/bleu"]) == 19.0 and csv_rows[2]["test/bleu"] == ""
    assert "experiment=toy" in csv_rows[0]["overrides"]  # the CSV keeps every override
    png = (sweep / "bleu_vs_params.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000


def test_wall_time_from_folder_timestamps(tmp_path):
    job = make_job(tmp_path / "sweep", 0, [], 32, {"val/bleu": 1.0, "num_parameters": 10})
    start = 1_700_000_000
    os.utime(job / ".hydra" / "config.yaml", (start, start))
    os.utime(job / "metrics.json", (start + 90, start + 90))
    for other in [*job.rglob("*.yaml")]:
        if other.name != "config.yaml":
            os.utime(other, (start + 1, start + 1))
    assert read_job(job)["wall_time_s"] == 90


def test_split_overrides_single_job_keeps_everything():
    common, varying = split_overrides([{"overrides": "a=1 b=2"}])
    assert common == [] and varying == ["a=1 b=2"]


def test_out_folder_and_cli(tmp_path, capsys):
    sweep = fake_sweep(tmp_path)
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    assert "| 1 | ok |" in capsys.readouterr().out
    for name in ("results.md", "results.csv", "bleu_vs_params.png"):
        assert (tmp_path / "out" / name).is_file()


def test_missing_or_empty_sweep_is_one_message(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no job folders" in capsys.readouterr().err


def test_all_jobs_failed_still_reports(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["model.d_model=32"], 32, None)
    result = report(sweep)
    assert result["rows"][0]["status"] == "failed"
    assert result["plot_file"].read_bytes().startswith(b"\x89PNG")


def test_module_runs_as_script(tmp_path):
    sweep = fake_sweep(tmp_path)
    result = run_command("seq2seq.report", [str(sweep)], cwd=tmp_path, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "3 jobs (1 failed)" in result.stdout


def test_every_validation_column_is_taken_at_the_best_checkpoint(tmp_path):
    """val/bleu and val/chrf come from the validation that chose best.ckpt, not the last or the best of each."""
    job = make_job(tmp_path / "sweep", 0, ["model.d_model=32"], 32, {
        "val/bleu": 12.0, "val/bleu_best": 14.0, "val/chrf": 36.0, "test/bleu": 13.5, "num_parameters": 1,
        "monitor": {"metric": "val/bleu", "mode": "max"},
    })
    (job / "csv").mkdir()
    with (job / "csv" / "metrics.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "train/loss", "val/bleu", "val/chrf", "val/bleu_best"])
        writer.writerows([[1, 2.0, "", "", ""], [5, "", 10.0, 30.0, 10.0], [10, "", 14.0, 33.0, 14.0],
                          [15, "", 14.0, 35.0, 14.0], [20, "", 12.0, 36.0, 14.0]])
    row = read_job(job)
    assert (row["val/bleu"], row["val/chrf"], row["test/bleu"]) == (14.0, 33.0, 13.5)
    assert row["selected by"] == "val/bleu (max)"
    # A lower-is-better monitor picks the minimum.
    metrics = json.loads((job / "metrics.json").read_text())
    (job / "metrics.json").write_text(json.dumps({**metrics, "monitor": {"metric": "val/chrf", "mode": "min"}}))
    assert (read_job(job)["val/bleu"], read_job(job)["val/chrf"]) == (10.0, 30.0)


def test_rouge_columns_carry_their_signature(tmp_path):
    job = make_job(tmp_path / "sweep", 0, [], 32, {
        "val/rougeLsum": 30.0, "val/rouge1": 33.0, "num_parameters": 1, "task": "summarization",
        "rouge_signature": "torchmetrics.ROUGEScore|stem:porter",
    })
    result = report(job.parent)
    assert result["rows"][0]["selected by"] == "val/rougeLsum (max)"
    assert result["columns"].index("rouge_signature") == result["columns"].index("sacrebleu_signature") + 1
    assert "val/rouge1" in result["columns"] and "torchmetrics.ROUGEScore" in result["markdown"]
