"""Every notebook runs top to bottom against a tiny checkpoint made in the tests, and draws its figures."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from helpers import REPO, TINY_OVERRIDES
from seq2seq.utils.notebooks import execute, has_outputs, strip

NOTEBOOKS = REPO / "notebooks"
NAMES = ["01_quickstart", "02_cross_attention", "03_sweep_results"]


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def _text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def test_committed_notebooks_are_stripped():
    found = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == NAMES
    assert not [name for name in NAMES if has_outputs(NOTEBOOKS / f"{name}.ipynb")]


@pytest.fixture(scope="module")
def notebook_env(tmp_path_factory, tiny_run, monkeypatch_module):
    """Environment that points the notebooks at tiny, fast settings under a temporary folder."""
    tmp = tmp_path_factory.mktemp("notebooks")
    quick = [o for o in TINY_OVERRIDES if not o.startswith(("logger=", "callbacks.progress_bar"))]
    monkeypatch_module.setenv("SEQ2SEQ_ROOT", str(tmp / "root"))  # data, cache and logs of the quickstart run
    monkeypatch_module.setenv("SEQ2SEQ_NB_OUT", str(tmp / "out"))
    monkeypatch_module.setenv("SEQ2SEQ_NB_OVERRIDES", shlex.join(quick + ["trainer.max_epochs=2", "trainer.max_time=null"]))
    return {"tmp": tmp, "out": tmp / "out", "tiny_run": tiny_run}


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_notebooks_run_top_to_bottom(notebook_env, monkeypatch):
    out = notebook_env["out"]
    # 01: trains the toy experiment (tiny) and translates with its checkpoint.
    nb1 = execute(NOTEBOOKS / "01_quickstart.ipynb", out / "executed" / "01.ipynb")
    runs = sorted((out / "quickstart").glob("*/checkpoints/best.ckpt"))
    assert len(runs) == 1
    run_dir = runs[0].parents[1]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/bleu" in metrics and f"{'test/bleu':>15}: {metrics['test/bleu']}" in _text(nb1)
    assert _text(nb1).count("  -> ") == 6  # three sentences, greedy and beam
    assert _images(nb1) == 1 and (out / "figures" / "quickstart_curve.png").stat().st_size > 5000

    # 02: the tiny checkpoint of the test session; heatmaps per layer and per head.
    monkeypatch.setenv("SEQ2SEQ_CKPT", str(Path(notebook_env["tiny_run"]["run_dir"]) / "checkpoints" / "best.ckpt"))
    nb2 = execute(NOTEBOOKS / "02_cross_attention.ipynb", out / "executed" / "02.ipynb")
    assert _images(nb2) == 2
    for name in ("cross_attention_layers", "cross_attention_heads"):
        assert (out / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert "translation:" in _text(nb2) and "mean of layers" in _text(nb2)
    # Without SEQ2SEQ_CKPT, 02 falls back to the newest quickstart run.
    monkeypatch.delenv("SEQ2SEQ_CKPT")
    assert "quickstart" in _text(execute(NOTEBOOKS / "02_cross_attention.ipynb"))

    # 03: a sweep folder of two real runs (the session's tiny run and the quickstart run).
    sweep = notebook_env["tmp"] / "sweep"
    shutil.copytree(notebook_env["tiny_run"]["run_dir"], sweep / "0")
    shutil.copytree(run_dir, sweep / "1")
    monkeypatch.setenv("SEQ2SEQ_SWEEP", str(sweep))
    nb3 = execute(NOTEBOOKS / "03_sweep_results.ipynb", out / "executed" / "03.ipynb")
    assert _images(nb3) == 2
    for name in ("sweep_scores", "sweep_curves"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000
    table = _text(nb3)
    assert table.count("\n| 0 ") + table.count("\n| 1 ") >= 2 or ("| 0 |" in table and "| 1 |" in table)


def test_strip_removes_outputs(tmp_path, notebook_env):
    executed = notebook_env["out"] / "executed" / "02.ipynb"
    if not executed.is_file():
        pytest.skip("the notebook run did not leave an executed copy")
    copy = tmp_path / "02.ipynb"
    shutil.copy(executed, copy)
    assert has_outputs(copy)
    assert strip(copy) and not has_outputs(copy)
    assert not strip(copy)  # already clean
