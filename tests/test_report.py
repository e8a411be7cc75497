"""seq2seq.report: a multirun folder becomes a Markdown/CSV table and a BLEU-vs-parameters plot."""

import csv
import json
import os
from pathlib import Path

import pytest

from helpers import make_job
from helpers.forked_commands import run_command
from seq2seq.analysis.sweep import columns_of, read_job, report, split_overrides
from seq2seq.report import main

SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"


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
    assert "Overrides of every row: `experiment=toy trainer.max_steps=10`" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, rule, one row per setting (here: per job)
    # row 3 holds job 2: no finished job, one failed, listed below the table with its reason.
    assert table[-1].startswith("| 3 | 2 | 0 | 1 |") and "model.d_model=128" in table[-1]
    assert "- row 3, job 2: no metrics.json: killed, interrupted or still running" in markdown
    assert f"- BLEU: `{SIGNATURE}`" in markdown  # signatures below the table
    with (sweep / "jobs.csv").open() as f:
        job_rows = list(csv.DictReader(f))
    assert [r["status"] for r in job_rows] == ["ok", "ok", "failed"]
    assert float(job_rows[1]["test/bleu"]) == 19.0 and job_rows[2]["test/bleu"] == ""
    assert "experiment=toy" in job_rows[0]["overrides"]  # the CSV keeps every override
    with (sweep / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert [(r["n"], r["failed"]) for r in csv_rows] == [("1", "0"), ("1", "0"), ("0", "1")]
    assert float(csv_rows[1]["test/bleu"]) == 19.0 and csv_rows[1]["test/bleu_std"] == ""
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
    assert "| 2 | 1 | 1 | 0 |" in capsys.readouterr().out
    for name in ("results.md", "results.tex", "results.csv", "jobs.csv", "bleu_vs_params.png"):
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
    columns = columns_of(result["rows"])
    assert columns.index("rouge_signature") == columns.index("sacrebleu_signature") + 1
    assert "val/rouge1" in result["columns"] and "torchmetrics.ROUGEScore" in result["markdown"]


# ---------------------------------------------------------------------------------- seeds, formats
def seed_sweep(root: Path) -> Path:
    """Two sizes x three seeds; seed 3 of d64 failed (its failure.json says why)."""
    sweep = root / "seeds"
    bleu = {(32, 1): 10.0, (32, 2): 12.0, (32, 3): 14.0, (64, 1): 20.0, (64, 2): 21.0}
    for num, ((d_model, seed), value) in enumerate(sorted(bleu.items())):
        make_job(sweep, num, ["experiment=toy", f"model.d_model={d_model}", f"seed={seed}"], d_model, {
            "val/bleu": value, "val/bleu_tok_lc": value + 5, "num_parameters": d_model * 1000,
            "sacrebleu_signature": {"bleu": SIGNATURE}, "wall_time_s": 60.0 * seed, "device": "cpu"})
    failed = make_job(sweep, 5, ["experiment=toy", "model.d_model=64", "seed=3"], 64, None)
    (failed / "failure.json").write_text(json.dumps({"status": "failed", "error": "TrainingError: non-finite loss"}))
    return sweep


def test_seeds_of_one_setting_form_one_row_with_mean_std_and_range(tmp_path):
    result = report(seed_sweep(tmp_path))
    small, large = result["groups"]
    assert small.key == ("experiment=toy", "model.d_model=32") and [j["seed"] for j in small.jobs] == [1, 2, 3]
    bleu = small.summaries["val/bleu"]
    assert (bleu.mean, bleu.std, bleu.n, bleu.min, bleu.max) == (12.0, 2.0, 3, 10.0, 14.0)  # sample std (n - 1)
    assert large.summaries["val/bleu"].std == pytest.approx(0.7071, abs=1e-4) and len(large.failed) == 1
    assert small.summaries["wall_time_s"].mean == 120.0

    table = [line for line in result["markdown"].splitlines() if line.startswith("| ")]
    assert table[1].startswith("| 1 | 0, 1, 2 | 3 | 0 |") and "12.00 ± 2.00" in table[1] and "17.00 ± 2.00" in table[1]
    assert table[2].startswith("| 2 | 3, 4, 5 | 2 | 1 |") and "20.50 ± 0.71" in table[2]
    assert "- row 2, job 5 (seed=3): TrainingError: non-finite loss" in result["markdown"]
    with (result["csv_file"]).open() as f:
        rows = list(csv.DictReader(f))
    assert (rows[0]["val/bleu_min"], rows[0]["val/bleu_max"], rows[0]["val/bleu_n"]) == ("10.0", "14.0", "3")
    assert rows[0]["seeds"] == "1 2 3" and rows[1]["errors"] == "job 5: TrainingError: non-finite loss"


def test_group_by_chooses_the_keys_of_a_row(tmp_path):
    sweep = seed_sweep(tmp_path)
    by_seed = report(sweep, group_by=["seed"])["groups"]  # an override
    assert [g.key for g in by_seed] == [("seed=1",), ("seed=2",), ("seed=3",)]
    assert by_seed[0].summaries["val/bleu"].mean == 15.0
    by_width = report(sweep, group_by=["model.d_model"])["groups"]  # a config path
    assert [len(g.jobs) for g in by_width] == [3, 3]
    per_job = report(sweep, group_by=["job"])["groups"]
    assert len(per_job) == 6
    assert [g.key for g in report(sweep, metrics=["val/bleu"])["groups"]] == [g.key for g in report(sweep)["groups"]]
    assert report(sweep, metrics=["val/bleu"])["columns"] == ["val/bleu"]


def test_format_option_prints_each_format(tmp_path, capsys):
    sweep = seed_sweep(tmp_path)
    assert main([str(sweep), "--format", "latex", "--metrics", "val/*"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("% seq2seq-report --format latex") and r"\toprule" in out and r"$12.00 \pm 2.00$" in out
    assert main([str(sweep), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("row,label,jobs,seeds,n,failed") and "6 jobs (1 failed) in 2 rows" in captured.err
    assert main([str(sweep), "--metrics", "nothing*"]) == 2
    assert "--metrics nothing* matches no metric" in capsys.readouterr().err
    assert main([str(sweep), "--baseline", "7"]) == 2
    assert "--baseline 7: there are rows 1 to 2" in capsys.readouterr().err


def _latex_document(table: str) -> str:
    return "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n" + table + "\\end{document}\n"


def test_latex_table_is_well_formed(tmp_path):
    """Without TeX: every row has as many cells as the header, braces balance, booktabs rules in order."""
    latex = report(seed_sweep(tmp_path))["latex"]
    lines = [line.strip() for line in latex.splitlines()]
    start, end = lines.index(r"\toprule"), lines.index(r"\bottomrule")
    assert lines[start + 2] == r"\midrule"
    rows = [lines[start + 1], *lines[start + 3:end]]
    columns = latex.split(r"\begin{tabular}{")[1].split("}")[0]
    assert all(row.endswith(r"\\") and row.count(" & ") == len(columns) - 1 for row in rows)
    assert latex.count("{") == latex.count("}") + latex.count(r"\{") - latex.count(r"\}")
    assert r"\_" in latex  # model.d\_model: TeX specials escaped


def test_latex_table_compiles_with_pdflatex(tmp_path):
    """The table as written compiles in a document that loads booktabs (pdflatex from Debian's
    texlive-latex-base + texlive-latex-recommended; .ci/run installs them; skipped without, except under CI)."""
    import os
    import shutil
    import subprocess

    if shutil.which("pdflatex") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("pdflatex is missing; CI=true, where .ci/run installs it")
        pytest.skip("pdflatex is not installed (apt-get install texlive-latex-base texlive-latex-recommended)")
    sweep = seed_sweep(tmp_path)
    result = report(sweep)
    doc = tmp_path / "table.tex"
    doc.write_text(_latex_document(result["latex_file"].read_text()))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:]
    assert (tmp_path / "table.pdf").read_bytes().startswith(b"%PDF")


def test_eval_runs_inside_a_job_are_columns_of_their_own(tmp_path):
    """`seq2seq-eval ... hydra.run.dir=<job>/eval_beam5` beside training's greedy validation: both summarized."""
    sweep = seed_sweep(tmp_path)
    for num, beam in ((0, 11.0), (1, 13.5), (2, 15.0)):
        folder = sweep / str(num) / "eval_beam5"
        folder.mkdir()
        (folder / "metrics.json").write_text(json.dumps({"val/bleu": beam, "val/loss": 2.0, "split": "val",
                                                         "decoding": {"strategy": "beam", "beam_size": 5}}))
    result = report(sweep, metrics=["val/bleu", "eval_beam5/val/*"])
    assert result["columns"] == ["val/bleu", "eval_beam5/val/bleu"]  # loss is no column
    small = result["groups"][0]
    assert small.summaries["eval_beam5/val/bleu"].mean == pytest.approx(13.1667, abs=1e-4)
    assert small.summaries["eval_beam5/val/bleu"].n == 3 and "eval_beam5/val/bleu" not in result["groups"][1].summaries
    assert "eval\\_beam5 val BLEU" in result["latex"]
