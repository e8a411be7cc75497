"""Paired bootstrap resampling as sacreBLEU does it (and its command line prints), for every metric,
and `seq2seq-report --baseline` on hypotheses kept with their records (seeds paired by value)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_job
from seq2seq.analysis import hypotheses as hypothesis_files
from seq2seq.analysis.significance import paired_test
from seq2seq.analysis.sweep import report
from seq2seq.data.toy import generate
from seq2seq.metrics.text_metrics import score

SENTENCES = 150


def corpus(worse: int = 3, better: int = 10) -> tuple[list[str], list[str], list[str]]:
    """References (German of the toy grammar) and two systems: one that drops the next-to-last word
    of every ``worse``-th sentence, one that drops it of every ``better``-th (others)."""
    refs = [de for _, de in generate(7, {"val": SENTENCES})["val"]]

    def damaged(every: int, offset: int) -> list[str]:
        return [" ".join(r.split()[:-2] + r.split()[-1:]) if (i + offset) % every == 0 else r
                for i, r in enumerate(refs)]

    return refs, damaged(worse, 0), damaged(better, 1)


def sacrebleu_cli(tmp_path: Path, refs, base, system, seed: int) -> dict[str, tuple[float, float, float, float]]:
    """``sacrebleu REF -i BASE SYS -m bleu chrf --paired-bs`` as run by hand: the system's
    (score, mean, ci, p) per metric, parsed from the text table (4 decimals)."""
    for name, lines in (("ref", refs), ("base", base), ("sys", system)):
        (tmp_path / name).write_text("".join(f"{line}\n" for line in lines))
    cli = Path(sys.executable).with_name("sacrebleu")
    run = subprocess.run([str(cli), "ref", "-i", "base", "sys", "-m", "bleu", "chrf", "--paired-bs", "--paired-bs-n",
                          "1000", "-w", "4", "-f", "text"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SACREBLEU_SEED": str(seed)})
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    row = next(i for i, line in enumerate(lines) if line.strip("│ ").startswith("sys"))
    scores = re.findall(r"([\d.]+) \(([\d.]+) ± ([\d.]+)\)", lines[row])
    p_values = re.findall(r"p = ([\d.]+)", lines[row + 1])
    return {metric: (*map(float, s), float(p)) for metric, s, p in zip(("bleu", "chrf"), scores, p_values)}


@pytest.mark.parametrize("seed, worse, better", [(12345, 5, 6), (7, 7, 8), (12345, 3, 10)])
def test_paired_test_equals_the_sacrebleu_command_line(tmp_path, seed, worse, better):
    """p-value, score and bootstrap mean ± 95 % CI as `sacrebleu --paired-bs` prints them, on the same
    files and seed (systems close enough for p near 0.2, and far apart for p at its floor)."""
    refs, base, system = corpus(worse, better)
    expected = sacrebleu_cli(tmp_path, refs, base, system, seed)
    for metric in ("bleu", "chrf"):
        result = paired_test(metric, base, system, [refs], tgt_lang="de", seed=seed)
        got = (result.system, result.system_mean, result.system_ci, result.p_value)
        assert [round(v, 4) for v in got] == pytest.approx(expected[metric], abs=1e-4), metric
    assert os.environ.get("SACREBLEU_SEED") is None  # the test's seed does not leak out


def test_the_interval_of_the_difference_comes_from_the_same_resamples():
    refs, base, system = corpus()
    result = paired_test("bleu", base, system, [refs], tgt_lang="de")
    low, high = result.delta_interval
    assert result.delta > 0 and 0 < low < result.delta_mean < high  # the better system: the interval excludes 0
    assert result.p_value < 0.05
    # The same outputs: no difference on any resample.
    same = paired_test("bleu", base, list(base), [refs], tgt_lang="de")
    assert same.delta == 0 and same.delta_interval == (0.0, 0.0)


def test_tokenized_bleu_and_rouge_are_tested_on_the_scores_they_report():
    refs, base, system = corpus()
    reported, _ = score("translation", system, refs, tgt_lang="de")
    result = paired_test("bleu_tok_lc", base, system, [refs], tgt_lang="de")
    assert result.system == pytest.approx(reported["bleu_tok_lc"]) and result.p_value < 0.05
    rouge = paired_test("rouge1", base, system, [refs])
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    mean = 100 * sum(scorer.score(r, h)["rouge1"].fmeasure for r, h in zip(refs, system)) / len(refs)
    assert rouge.system == pytest.approx(mean, abs=1e-4)  # the mean of rouge-score's sentence F-measures
    summarized, _ = score("summarization", system, refs)
    assert rouge.system == pytest.approx(summarized["rouge1"], abs=0.1)  # what the report shows, within 0.1
    assert rouge.delta > 0 and rouge.p_value < 0.05


# ---------------------------------------------------------------------------------- report --baseline
def sweep_with_hypotheses(root: Path) -> Path:
    """Row 1 (baseline) and row 2, seeds 1 and 2 each, every job with val hypotheses and their record;
    row 2 is better with seed 1 and equal with seed 2."""
    from helpers import toy_datamodule

    refs, worse, better = corpus()
    data_root = root / "toy"
    data_root.mkdir(parents=True)
    (data_root / "val.en").write_text("".join(f"s{i}\n" for i in range(SENTENCES)))
    (data_root / "val.de").write_text("".join(f"{r}\n" for r in refs))
    datamodule = toy_datamodule(root, generate=None)
    sweep = root / "sweep"
    outputs = {("base", 1): worse, ("base", 2): worse, ("new", 1): better, ("new", 2): worse}
    for num, ((variant, seed), hyps) in enumerate(outputs.items()):
        bleu = score("translation", hyps, refs, "de")[0]["bleu"]
        job = make_job(sweep, num, [f"model.variant={variant}", f"seed={seed}"], 32,
                       {"val/bleu": bleu, "num_parameters": 10})
        hypothesis_files.write(job, "val", hyps, [refs], datamodule=datamodule, decoding={"strategy": "greedy"},
                               task="translation")
    return sweep


def test_baseline_rows_are_tested_seed_by_seed_reporting_the_worst_p(tmp_path):
    sweep = sweep_with_hypotheses(tmp_path)
    result = report(sweep, baseline="variant=base", metrics=["val/bleu"], resamples=200)
    base, new = result["groups"]
    assert result["baseline"] is base and not base.comparisons
    comparison = new.comparisons["val/bleu"]
    assert [(b, j) for b, j, _ in comparison.pairs] == [("0", "2"), ("1", "3")]  # seed 1 with seed 1, 2 with 2
    seed1, seed2 = (r for _, _, r in comparison.pairs)
    assert seed1.p_value < 0.05 and seed2.delta == 0
    assert comparison.p_value == max(seed1.p_value, seed2.p_value)
    assert not comparison.significant  # seed 2 ties: not every seed pair differs
    markdown = result["markdown"]
    assert "Significance against row 1 (model.variant=base):" in markdown
    assert "| 2 | val/bleu |" in markdown and "† p < 0.05" in markdown
    significance = result["significance_file"].read_text().splitlines()
    assert significance[0].startswith("row,metric,baseline_job,job") and len(significance) == 3


def test_a_significant_row_is_marked_in_every_format_and_the_latex_compiles(tmp_path):
    sweep = sweep_with_hypotheses(tmp_path)
    # Seed 2 of row 2 made better too: both pairs differ.
    refs, _, better = corpus()
    (sweep / "3" / "hypotheses.val.txt").write_text("".join(f"{h}\n" for h in better))
    result = report(sweep, baseline="1", metrics=["val/bleu"], resamples=200)
    comparison = result["groups"][1].comparisons["val/bleu"]
    assert comparison.significant and comparison.interval[0] > 0
    row = next(line for line in result["markdown"].splitlines() if line.startswith("| 2 |"))
    assert row.count("†") == 1
    assert r"^{\dagger}$" in result["latex"] and r"$^\dagger$: $p < 0.05$" in result["latex"]
    assert "val/bleu_p" in result["csv"].splitlines()[0]
    if shutil.which("pdflatex"):
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                       + result["latex"] + "\\end{document}\n")
        run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-3000:]


def test_hypotheses_scored_on_other_references_are_not_compared(tmp_path):
    sweep = sweep_with_hypotheses(tmp_path)
    record = sweep / "3" / "hypotheses.val.json"
    record.write_text(record.read_text().replace('"sha256": "', '"sha256": "0'))
    comparison = report(sweep, baseline="1", metrics=["val/bleu"], resamples=100)["groups"][1].comparisons["val/bleu"]
    assert len(comparison.pairs) == 1
    assert comparison.skipped == ["job 3: scored on other sentences than baseline job 1"]


def test_references_that_changed_since_scoring_are_refused(tmp_path):
    from seq2seq.errors import DataError

    sweep = sweep_with_hypotheses(tmp_path)
    val = tmp_path / "toy" / "val.de"
    val.write_text(val.read_text().replace("der", "die", 1))
    with pytest.raises(DataError, match="not the ones its hypotheses .* were scored against"):
        report(sweep, baseline="1", metrics=["val/bleu"], resamples=100)
