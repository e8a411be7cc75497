"""The package's shape: commands are thin and nothing imports them, packages import only what
docs/ARCHITECTURE.md allows, the wheel carries the configuration, one `monitor` drives every consumer."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from hydra.utils import instantiate

from helpers import REPO, TINY_OVERRIDES, compose_train
from seq2seq.config import resolve_monitor

PACKAGE = REPO / "src" / "seq2seq"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# The commands: every console script's module.
ENTRY_POINTS = {target.split(":")[0] for target in PYPROJECT["project"]["scripts"].values()}

# What each part of the package may import (besides itself and seq2seq.errors); the longest
# matching prefix rules. Mirrors the table in docs/ARCHITECTURE.md.
ALLOWED = {
    "seq2seq.errors": set(),
    "seq2seq.utils": set(),
    "seq2seq.metrics": set(),
    "seq2seq.data": {"seq2seq.utils"},
    "seq2seq.models": {"seq2seq.metrics"},
    "seq2seq.decoding": {"seq2seq.models"},
    "seq2seq.inference": {"seq2seq.utils", "seq2seq.data", "seq2seq.models", "seq2seq.decoding"},
    # The CTranslate2 export, its model card and the predictor over an exported model.
    "seq2seq.inference.ct2_export": {"seq2seq.data", "seq2seq.models"},
    "seq2seq.inference.model_card": {"seq2seq.metrics"},
    "seq2seq.inference.ct2_predictor": {"seq2seq.data", "seq2seq.decoding"},
    # Hugging Face transformers: the export (with its model card) and the import of a Marian folder.
    "seq2seq.inference.hf_export": {"seq2seq.data", "seq2seq.models", "seq2seq.decoding"},
    "seq2seq.inference.hf_import": {"seq2seq.data", "seq2seq.models"},
    "seq2seq.analysis": {"seq2seq.utils", "seq2seq.metrics", "seq2seq.data", "seq2seq.models", "seq2seq.decoding",
                         "seq2seq.inference"},
    # Optimizer, schedule and budget, compile, non-finite guard: torch and Lightning only.
    "seq2seq.training": set(),
    # The LightningModule trains a model: it wires the training parts, the tokenizer, the predictor and the metrics.
    "seq2seq.models.lit_module": {"seq2seq.data", "seq2seq.metrics", "seq2seq.decoding", "seq2seq.inference",
                                  "seq2seq.training"},
    "seq2seq.callbacks": {"seq2seq.utils", "seq2seq.models", "seq2seq.inference", "seq2seq.analysis"},
    # The Python API: one object over the predictor; analysis for Translator.attention.
    "seq2seq.api": {"seq2seq.utils", "seq2seq.data", "seq2seq.models", "seq2seq.decoding", "seq2seq.inference",
                    "seq2seq.analysis"},
    # Serving over HTTP: the web app over the API; the run folder's description as the model card reads it.
    "seq2seq.serving": {"seq2seq.api", "seq2seq.decoding", "seq2seq.inference"},
    "seq2seq.config": {"seq2seq.metrics"},
    "seq2seq.run_summary": {"seq2seq.utils"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every seq2seq module ``path`` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == "seq2seq" or n.startswith("seq2seq.")}


def test_no_module_imports_a_command():
    modules = _modules()
    assert ENTRY_POINTS <= modules.keys()
    offenders = [f"{name} imports {target}" for name, path in modules.items() for target in _imports(path)
                 if target in ENTRY_POINTS and target != name]
    assert offenders == []


def test_commands_are_thin_and_define_main():
    for name in ENTRY_POINTS:
        tree = ast.parse(_modules()[name].read_text())
        functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        assert "main" in functions and classes == [], name


def test_packages_import_only_what_the_architecture_allows():
    modules = _modules()
    broken = []
    for name, path in modules.items():
        if name in ENTRY_POINTS or name == "seq2seq":
            continue
        rule = max((prefix for prefix in ALLOWED if name == prefix or name.startswith(prefix + ".")), key=len, default=None)
        assert rule is not None, f"{name} has no rule in ALLOWED (and docs/ARCHITECTURE.md)"
        own = rule.split(".")[:2]
        for target in _imports(path):
            top = ".".join(target.split(".")[:2])
            if top in ("seq2seq", "seq2seq.errors") or target.split(".")[:2] == own:
                continue
            if not any(top == allowed or target.startswith(allowed + ".") for allowed in ALLOWED[rule]):
                broken.append(f"{name} imports {target}")
    assert broken == []


# -------------------------------------------------------------------------------------- monitor
@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["experiment=samsum"], ("val/rougeLsum", "max")),
        (["experiment=multi30k_en_de"], ("val/bleu", "max")),
        (["monitor.metric=val/loss", "monitor.mode=min"], ("val/loss", "min")),
    ],
)
def test_checkpointing_and_early_stopping_follow_monitor(overrides, expected, tmp_path):
    cfg = compose_train(tmp_path, [*overrides, "callbacks=early_stopping"])
    assert resolve_monitor(cfg) == expected
    callbacks = {name: instantiate(c) for name, c in cfg.callbacks.items() if c is not None and name in (
        "model_checkpoint", "early_stopping")}
    for callback in callbacks.values():
        assert (callback.monitor, callback.mode) == expected
    assert len(callbacks) == 2


def test_summarization_run_ranks_by_rouge(tmp_path):
    """A real summarization run: best.ckpt chosen by val/rougeLsum, its best logged, no BLEU anywhere."""
    from seq2seq.train import train

    cfg = compose_train(tmp_path, [*TINY_OVERRIDES, "task=summarization", "debug=limit", "test=false",
                                   "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"])
    metrics = train(cfg)
    assert "val/rougeLsum_best" in metrics and not any("bleu" in k for k in metrics)
    assert cfg.monitor.metric == "val/rougeLsum"


# -------------------------------------------------------------------------------------- packaging
def test_every_config_folder_is_a_listed_package():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {"seq2seq.conf" + ".".join([""] + list(p.relative_to(REPO / "conf").parts))
               for p in (REPO / "conf").rglob("*") if p.is_dir()} | {"seq2seq.conf"}
    assert folders <= listed


def test_non_editable_install_runs_outside_the_checkout(tmp_path, tiny_checkpoint):
    """Build the wheel, install it (no editable link to the checkout) into a fresh venv whose other
    packages come from this one's, then run the console scripts from an empty folder."""
    wheels, venv, work, source = tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere", tmp_path / "source"
    work.mkdir()
    # Built from a copy: building writes build/ and *.egg-info beside the sources.
    local = {".git", ".venv", "outputs", "data", ".cache", "build", "wandb", "multirun", "local_data"}
    shutil.copytree(REPO, source, ignore=lambda folder, names: [
        n for n in names if (Path(folder) == REPO and n in local) or n == "__pycache__" or n.endswith(".egg-info")])
    # Without PYTHONPATH: a checkout's src/ on it (with its egg-info) makes pip think the package is installed.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SEQ2SEQ_CONFIG_DIR")}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, cwd=tmp_path, timeout=300, env=env)
    wheel = next(wheels.glob("seq2seq-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("seq2seq/conf/")}
    assert shipped == {"seq2seq/conf/" + str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert "seq2seq/serving/static/index.html" in zipfile.ZipFile(wheel).namelist()  # seq2seq-serve's demo page
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, capture_output=True, timeout=300, env=env)
    # torch, lightning, hydra ... from this environment (a .pth path: its own .pth files, such as the
    # editable install's link to the checkout, are not run).
    import sysconfig

    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env.update(WANDB_MODE="offline", SEQ2SEQ_ROOT=str(work))

    def run(*args, stdin=None):
        return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=work, env=env, input=stdin,
                              capture_output=True, text=True, timeout=600)

    where = run("python", "-c", "import seq2seq, seq2seq.config as c; print(seq2seq.__file__); print(c.config_dir())")
    module_file, conf = where.stdout.split()
    assert module_file.startswith(site) and conf == str(Path(site) / "seq2seq" / "conf"), where.stdout

    page = run("python", "-c", "from seq2seq.serving.app import demo_page; print(demo_page().count('id=\"heatmap\"'))")
    assert page.returncode == 0 and page.stdout.strip() == "1", page.stderr[-3000:]
    help_text = run("seq2seq-train", "--help")
    assert help_text.returncode == 0 and "experiment: " in help_text.stdout and "speed: default" in help_text.stdout
    smoke = run("seq2seq-train", "debug=fast_dev_run", *TINY_OVERRIDES, "data.generate.sizes={train:300,val:16,test:16}")
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    assert (work / "data" / "toy" / "train.en").is_file() and (work / "outputs" / "train" / "runs").is_dir()
    translated = run("seq2seq-translate", f"ckpt_path={tiny_checkpoint}", "decoding=greedy", "progress=false",
                     stdin="The old man saw a dog.\n\nA dog sees the man.\n")
    assert translated.returncode == 0, translated.stderr[-3000:]
    lines = translated.stdout.split("\n")
    assert len(lines) == 4 and lines[0] and lines[1] == "" and lines[2] and lines[3] == ""
