"""The README's Lead-3 command, end to end in a subprocess, on the real SAMSum validation split."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO, shared_corpus

# README: Lead-3 (first 3 turns) on SAMSum val (818 dialogues), ROUGE F-measures (0-100).
LEAD3_SAMSUM_VAL = {"val/rouge1": 32.53, "val/rouge2": 10.06, "val/rougeL": 25.35, "val/rougeLsum": 30.08}
SIGNATURE = (
    "torchmetrics.ROUGEScore|v:{version}|f-measure|mean-over-summaries|tok:[a-z0-9]+|stem:porter"
    "|lsum-sents:seq2seq.split_sentences"
)


def test_readme_lead3_command(tmp_path):
    import torchmetrics

    root = shared_corpus("samsum")
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "seq2seq.baselines", "lead3", "data=samsum", f"data.root={root}", "split=val",
               f"hydra.run.dir={run_dir}"]
    # This checkout's code, whatever the environment has installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key, value in LEAD3_SAMSUM_VAL.items():
        assert metrics[key] == pytest.approx(value, abs=0.05), key
    assert metrics["rouge_signature"] == SIGNATURE.format(version=torchmetrics.__version__)
    assert metrics["baseline"] == "lead3" and metrics["n"] == 3 and metrics["unit"] == "turns"
    assert metrics["split"] == "val" and metrics["num_summaries"] == 818
    hypotheses = (run_dir / "hypotheses.val.txt").read_text(encoding="utf-8").splitlines()
    assert len(hypotheses) == 818 and all(hypotheses)
    # The table the command prints holds the same figures.
    for key, value in LEAD3_SAMSUM_VAL.items():
        assert f"{value:.2f}" in done.stdout, key
