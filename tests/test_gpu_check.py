"""benchmarks/gpu_check.py's dry run: the GPU check runs on the CPU with tiny sizes (about a minute),
so that the script a lent GPU depends on cannot rot between the rare sessions that have one."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from helpers import REPO, command_env

PARTS = {"gpu_tests", "throughput_base", "throughput_big", "decode", "multi30k"}
GOALS = ("GPU tests pass", "training tokens/s, base", "training tokens/s, big", "MFU at big",
         "greedy decoding at batch 64", "Multi30k base val BLEU")


def test_dry_run_reports_every_part_and_the_goals(tmp_path):
    out = tmp_path / "check" / "report.json"
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--out", str(out)], cwd=REPO,
                          env=command_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["wall_s"] > 0
    assert set(report["parts"]) == PARTS
    for name, part in report["parts"].items():
        assert part["status"] in ("ok", "failed", "timeout", "skipped"), name
        assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in part["figures"].values()), name
        if part["status"] == "skipped":
            assert part["reason"], name
        else:
            assert part["seconds"] <= part["limit_s"] + 15 and (tmp_path / "check" / f"{name}.log").exists(), name
    # Every part runs on a CPU (the GPU tests are collected and skip), with its figures.
    parts = report["parts"]
    assert all(p["status"] == "ok" for p in parts.values()), {n: p.get("reason") for n, p in parts.items()}
    assert parts["gpu_tests"]["figures"]["skipped"] == parts["gpu_tests"]["figures"]["total"] > 0
    for name in ("throughput_base", "throughput_big"):
        figures = parts[name]["figures"]
        assert figures["ours_tok_s"] > 0 and figures["torch_tok_s"] > 0 and figures["speedup_vs_best_peer"] > 0
        assert 0 < figures["ours_mfu"]  # the dry run passes a nominal peak, so the MFU path runs too
    assert parts["decode"]["figures"]["ours_cached_tok_s"] > 0
    assert {"val_bleu_best", "train_budget_s"} <= set(parts["multi30k"]["figures"])
    # Without transformers the HF peers are skipped with a reason, not a crash.
    if report["environment"]["transformers"] is None:
        assert "transformers" in parts["throughput_big"]["skipped"]["hf"]
        assert "transformers" in parts["decode"]["skipped"]["hf_generate"]
    # The goals, each with a verdict, in the report and in the printed table.
    assert len(report["goals"]) == len(GOALS)
    assert all(g["goal"].startswith(prefix) for g, prefix in zip(report["goals"], GOALS))
    assert all(g["status"] in ("met", "not met", "not measured") for g in report["goals"])
    assert "Goals (issue 19)" in proc.stdout and "DRY RUN" in proc.stdout
    for goal in report["goals"]:
        assert goal["goal"] in proc.stdout and (goal["status"] != "not measured" or goal["note"])
