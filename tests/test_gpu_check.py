"""benchmarks/gpu_check.py's dry run: the GPU check runs on the CPU with tiny sizes (about a minute),
so that the script a lent GPU depends on cannot rot between the rare sessions that have one; and
decode_ct2's probe and skips, without a GPU."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
import types

import pytest

from helpers import REPO, command_env

PARTS = {"gpu_tests", "throughput_base", "throughput_big", "decode", "multi30k", "decode_ct2"}
HAS_CT2 = importlib.util.find_spec("ctranslate2") is not None
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
            logs = [f"{name}_eager.log"] if name.startswith("throughput") else [f"{name}.log"]
            assert part["seconds"] <= part["limit_s"] + 15, name
            assert all((tmp_path / "check" / log).exists() for log in logs), name
    # Every part runs on a CPU (the GPU tests are collected and skip), with its figures.
    parts = report["parts"]
    if not HAS_CT2:  # skipped with its reason, not failed
        ct2 = parts.pop("decode_ct2")
        assert ct2["status"] == "skipped" and "ctranslate2 is not importable" in ct2["reason"]
    assert all(p["status"] == "ok" for p in parts.values()), {n: p.get("reason") for n, p in parts.items()}
    assert parts["gpu_tests"]["figures"]["skipped"] == parts["gpu_tests"]["figures"]["total"] > 0
    for name in ("throughput_base", "throughput_big"):  # the dry run: every system eager, no compiled run
        figures = parts[name]["figures"]
        assert figures["ours_tok_s_eager"] > 0 and figures["torch_tok_s_eager"] > 0
        assert figures["speedup_vs_best_peer_eager"] > 0 and not any(k.endswith("_compiled") for k in figures)
        assert 0 < figures["ours_mfu_eager"]  # the dry run passes a nominal peak, so the MFU path runs too
        assert list(parts[name]["runs"]) == ["eager"] and "--compile off" in " ".join(parts[name]["runs"]["eager"]["command"])
    assert parts["decode"]["figures"]["ours_cached_tok_s"] > 0
    assert "ctranslate2" not in parts["decode"].get("skipped", {})  # measured in decode_ct2 now
    assert {"val_bleu_best", "train_budget_s"} <= set(parts["multi30k"]["figures"])
    # CTranslate2 on the exported weights of the Multi30k part's checkpoint (CPU backend here).
    if HAS_CT2:
        ct2 = parts["decode_ct2"]
        assert ct2["checkpoint"] == parts["multi30k"]["checkpoint"] and ct2["probes"][0]["ok"]
        figures = ct2["figures"]
        assert figures["batch"] == 8 and figures["sentences"] == 8
        for strategy in ("greedy", "beam5"):  # the dry run leaves int8 out (the probe translates int8 weights)
            assert figures[f"{strategy}_ours_over_ct2_fp32"] > 0
            assert all(figures[f"{strategy}_{s}_sent_s"] > 0 for s in ("ours", "ct2_fp32"))
            assert 0 <= figures[f"{strategy}_ct2_fp32_identical"] <= 1
        row = next(line for line in proc.stdout.splitlines() if line.startswith("decode_ct2 "))
        assert "greedy_ours_over_ct2_fp32" in row and "beam5_ours_over_ct2_fp32" in row
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


# ------------------------------------------------------------------------------ decode_ct2 without a GPU
@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def test_probe_reasons(gpu_check, monkeypatch):
    """The probe says why CTranslate2 cannot run: not importable, or no CUDA device for it."""
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    answer = gpu_check.probe_ctranslate2("cuda")
    assert not answer["ok"] and "ctranslate2 is not importable" in answer["reason"]
    fake = types.SimpleNamespace(__version__="9.9", get_cuda_device_count=lambda: 0)
    monkeypatch.setitem(sys.modules, "ctranslate2", fake)
    answer = gpu_check.probe_ctranslate2("cuda")
    assert not answer["ok"] and "no CUDA support" in answer["reason"] and "get_cuda_device_count() == 0" in answer["reason"]


def test_throughput_runs_every_system_eager_then_compiled_and_judges_both_ratios(gpu_check, tmp_path, monkeypatch):
    """On the GPU each throughput part runs train_throughput.py with every system eager, then every
    system compiled (like with like); the goal's value is the lower ratio, and its note gives both."""
    speeds = {"off": {"ours": 300.0, "torch": 100.0, "hf": 120.0}, "all": {"ours": 500.0, "torch": 250.0, "hf": 150.0}}
    runs = []

    def fake_run(name, command, limit_s, env=None):
        mode = command[command.index("--compile") + 1]
        runs.append((name, mode, limit_s))
        rows = [json.dumps({"system": s, "tok_s": v, "mfu": 0.4 if mode == "all" else 0.3}) for s, v in speeds[mode].items()]
        part = {"status": "ok", "limit_s": limit_s, "seconds": 10.0, "command": command, "log": f"{name}.log", "figures": {}}
        return part, gpu_check.Outcome(0, 10.0, "\n".join(rows))

    check = gpu_check.Check(gpu_check.GPU, tmp_path / "report.json", ["throughput_base"], None, 540.0, 8.0, ("off", "all"))
    monkeypatch.setattr(check, "_run", fake_run)
    monkeypatch.setattr(gpu_check, "has_transformers", lambda: True)
    part = check.throughput("throughput_base")
    limit = gpu_check.GPU.limits["throughput_base"]
    assert runs == [("throughput_base_eager", "off", limit * gpu_check.EAGER_SHARE), ("throughput_base_compiled", "all", limit - 10.0)]
    figures = part["figures"]
    assert figures["speedup_vs_best_peer_eager"] == 2.5 and figures["speedup_vs_best_peer_compiled"] == 2.0
    assert figures["speedup_vs_torch_compiled"] == 2.0 and part["status"] == "ok" and part["seconds"] == 20.0
    goal = next(g for g in gpu_check.evaluate_goals({"throughput_base": part}) if g["figure"].startswith("throughput_base"))
    assert goal["value"] == 2.0 and goal["status"] == "not met" and "eager 2.5x, compiled 2x" in goal["note"]


def make_check(gpu_check, tmp_path, device="cuda", **multi30k):
    profile = dataclasses.replace(gpu_check.DRY, ct2=["--device", device, *gpu_check.DRY.ct2[2:]])
    check = gpu_check.Check(profile, tmp_path / "report.json", list(gpu_check.PARTS), None, 1000.0, 0.5, ("off",))
    data = tmp_path / "data"
    data.mkdir()
    (data / "val.en").write_text("a\n")
    check.parts["multi30k"] = {"status": "ok", "data_dir": str(data), "checkpoint": str(tmp_path / "best.ckpt"),
                               **multi30k}
    return check


def test_decode_ct2_skips_with_the_probes_reason(gpu_check, tmp_path, monkeypatch):
    check = make_check(gpu_check, tmp_path)
    reason = "ctranslate2 4.8.5 has no CUDA support here (get_cuda_device_count() == 0)"
    monkeypatch.setattr(check, "_probe", lambda *a: {"ok": False, "reason": reason})
    part = check.decode_ct2()
    assert part["status"] == "skipped" and part["reason"] == reason and part["figures"] == {}


def test_decode_ct2_without_a_checkpoint_is_skipped(gpu_check, tmp_path):
    check = make_check(gpu_check, tmp_path)
    check.parts["multi30k"] = {"status": "skipped", "reason": "no corpus", "figures": {}}
    part = check.decode_ct2()
    assert part["status"] == "skipped" and "wrote no best.ckpt" in part["reason"]


def test_decode_ct2_retries_with_a_cublas_link(gpu_check, tmp_path, monkeypatch):
    """CTranslate2 missing libcublas.so.12 beside torch's cuBLAS 13: the probe is retried with a folder on
    LD_LIBRARY_PATH where libcublas.so.12 points to torch's (and the siblings are linked)."""
    lib = tmp_path / "cu13"
    lib.mkdir()
    for name in ("libcublas.so.13", "libcublasLt.so.13"):
        (lib / name).write_bytes(b"")
    check = make_check(gpu_check, tmp_path)
    calls = []

    def probe(device, env, limit_s, tag):
        calls.append(env.get("LD_LIBRARY_PATH", ""))
        return {"ok": False, "cublas_loaded": [str(lib / "libcublas.so.13"), str(lib / "libcublasLt.so.13")],
                "reason": "CTranslate2 4.8.5 cannot translate on cuda here (float32 weights): RuntimeError: "
                          "Library libcublas.so.12 is not found or cannot be loaded"}

    monkeypatch.setattr(check, "_probe", probe)
    monkeypatch.setattr(gpu_check, "pip_cublas_dirs", lambda major: [])
    part = check.decode_ct2()
    shim = tmp_path / "ct2_cublas_shim"
    assert len(calls) == 2 and calls[1].split(":")[0] == str(shim)
    assert (shim / "libcublas.so.12").resolve() == lib / "libcublas.so.13"
    assert (shim / "libcublasLt.so.13").resolve() == lib / "libcublasLt.so.13"
    assert part["status"] == "skipped" and "retried with libcublas.so.12 ->" in part["reason"]
