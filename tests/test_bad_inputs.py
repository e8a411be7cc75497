"""Bad inputs through the real commands: each ends with a non-zero exit and one clear message.

Every case runs ``python -m seq2seq.train|translate|eval`` in a process of its own, as a user would, with a
malformed corpus, a damaged or foreign checkpoint, a bad option or an unwritable output. Each must
exit non-zero with one message on stderr (``error: ...`` and status 2 for the project's own
errors; Hydra's own report, status 1, for a config group that does not exist), never a traceback,
and must leave the checkpoints, the cache, the corpora and any existing output exactly as they
were (bytes and modification times).

The cases are independent: they all run at once (a few in parallel) the first time a test asks for
a result, reusing the session's tiny checkpoint, its corpus and its tokenizer cache. Each process
is forked from a server that imported the commands once (``helpers.forked_commands``): the ~6 s
that every command spends importing torch and Lightning is paid once, not twenty times.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import SHORT_TRAINING_OVERRIDES, TINY_OVERRIDES
from helpers.forked_commands import run_command


@dataclass
class Case:
    name: str
    command: str  # train | translate | eval
    args: list[str]
    words: list[str]  # must all appear in the message
    stdin: bytes | None = None
    status: int = 2


def _snapshot(paths: list[Path]) -> dict[str, tuple]:
    state = {}
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            stat = path.stat()
            state[str(path)] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return state


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def _corpus_variant(good: Path, folder: Path, **files: bytes | str | None) -> Path:
    """A copy of the good corpus (lines format) with some files replaced (None: removed)."""
    shutil.copytree(good, folder)
    for name, data in files.items():
        name = name.replace("_", ".")
        if data is None:
            (folder / name).unlink()
        else:
            _write(folder / name, data)
    return folder


def _prepare_inputs(base: Path, checkpoint: Path, good: Path) -> None:
    """Write the defective corpora, checkpoints and outputs the cases use, under ``base``."""
    en = (good / "train.en").read_text(encoding="utf-8").splitlines()
    de = (good / "train.de").read_text(encoding="utf-8").splitlines()
    lines = lambda rows: "".join(f"{r}\n" for r in rows)  # noqa: E731

    # Corpora, each with one defect.
    corpora = base / "corpora"
    _corpus_variant(good, corpora / "count", train_de=lines(de[:-1]))
    # Line 3 of train.de in Latin-1.
    _corpus_variant(good, corpora / "utf8", train_de=lines(de[:2]).encode() + b"Gr\xfc\xdfe\n" + lines(de[3:]).encode())
    _corpus_variant(good, corpora / "missing", train_de=None)
    _corpus_variant(good, corpora / "empty_val", val_en="", val_de="")
    test_de = (good / "test.de").read_text(encoding="utf-8").splitlines()
    _corpus_variant(good, corpora / "eval_count", test_de=lines(test_de[:-3]))
    tsv = ["en\tde"] + [f"{s}\t{t}" for s, t in zip(en[:50], de[:50])]
    tsv[5] = tsv[5] + "\textra"  # line 6
    _write(corpora / "tsv" / "train.tsv", lines(tsv))
    _write(corpora / "tsv" / "val.tsv", lines(tsv[:1] + tsv[10:20]))
    rows = [json.dumps({"en": s, "de": t}, ensure_ascii=False) for s, t in zip(en[:50], de[:50])]
    _write(corpora / "jsonl_bad" / "train.jsonl", lines([rows[0], '{"en": "A dog saw the', *rows[2:]]))
    _write(corpora / "jsonl_bad" / "val.jsonl", lines(rows[10:20]))
    _write(corpora / "jsonl_field" / "train.jsonl", lines([*rows[:2], json.dumps({"en": en[2]}), *rows[3:]]))
    _write(corpora / "jsonl_field" / "val.jsonl", lines(rows[10:20]))

    # Checkpoints: truncated, without tokenizer, and a run folder whose last.ckpt is truncated.
    ckpts = base / "ckpts"
    ckpts.mkdir()
    data = checkpoint.read_bytes()
    _write(ckpts / "truncated.ckpt", data[: len(data) // 2])
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state.pop("tokenizer")
    torch.save(state, ckpts / "no_tokenizer.ckpt")
    shutil.copy2(checkpoint, ckpts / "tiny.ckpt")
    run = base / "run"
    shutil.copytree(checkpoint.parent.parent, run, ignore=shutil.ignore_patterns(".hydra", "*.log"))
    _write(run / "checkpoints" / "last.ckpt", data[: len(data) - 1000])
    # A run folder as training leaves it (last.ckpt after 5 epochs), to resume with a smaller budget.
    shutil.copytree(checkpoint.parent.parent, base / "done", ignore=shutil.ignore_patterns(".hydra", "*.log"))

    # Outputs: a file where a folder is expected, and an existing translation that must survive.
    _write(base / "blocker", "a file, not a folder\n")
    _write(base / "out" / "previous.txt", "an earlier translation\n")
    _write(base / "source.txt", "Ein Hund sah den alten Mann.\n")


def _cases(base: Path) -> list[Case]:
    corpora, ckpts, run, cache = base / "corpora", base / "ckpts", base / "run", base / "cache"
    tiny_model = [o for o in TINY_OVERRIDES if o.startswith("model.")]
    trained_model = [o for o in SHORT_TRAINING_OVERRIDES if o.startswith("model.")]  # the session's tiny run
    # The session's corpus and tokenizer settings: the cached tokenizer is found, none is trained.
    corpus = lambda name: ["data.generate=null", "data.vocab_size=400", f"paths.cache_dir={cache}",  # noqa: E731
                           f"data.root={corpora / name}"]
    stdin = b"Ein Hund sah den Mann.\n"
    tiny = f"ckpt_path={ckpts / 'tiny.ckpt'}"
    return [
        # -- malformed corpora (train)
        Case("lines: line counts differ", "train", corpus("count"), ["train.en has 4000 lines", "train.de has 3999"]),
        Case("lines: invalid UTF-8", "train", corpus("utf8"), ["train.de, line 3: invalid UTF-8"]),
        Case("lines: missing file", "train", corpus("missing"), ["Missing corpus file(s) for split 'train'", "missing/train.de (or"]),
        Case("lines: empty val split", "train", corpus("empty_val"), ["split is empty", "val.en"]),
        Case("tsv: wrong column count", "train", [*corpus("tsv"), "data.format=tsv"],
             ["train.tsv, line 6: 3 TAB-separated column(s), expected 2"]),
        Case("jsonl: invalid JSON", "train", [*corpus("jsonl_bad"), "data.format=jsonl"], ["train.jsonl", "line 2"]),
        Case("jsonl: missing field", "train", [*corpus("jsonl_field"), "data.format=jsonl"],
             ["train.jsonl", "line 3", "de"]),
        # -- checkpoints (train)
        Case("train: truncated checkpoint", "train", [*tiny_model, f"ckpt_path={ckpts / 'truncated.ckpt'}"],
             ["truncated.ckpt is not a readable checkpoint"]),
        Case("train: checkpoint of another model size", "train", ["model/size=small", tiny],
             ["holds a different model", "d_model=64", "d_model=256"]),
        Case("train: checkpoint without tokenizer", "train", [*tiny_model, f"ckpt_path={ckpts / 'no_tokenizer.ckpt'}"],
             ["holds no tokenizer"]),
        Case("train: resume a run whose last.ckpt is truncated", "train",
             [*tiny_model, "ckpt_path=last", f"hydra.run.dir={run}"], ["last.ckpt is not a readable checkpoint"]),
        Case("train: ckpt_path=last without a checkpoint", "train", ["ckpt_path=last"],
             ["ckpt_path=last", "hydra.run.dir=<run folder>"]),
        Case("train: resume with a smaller trainer.max_epochs", "train",
             [*trained_model, "ckpt_path=last", f"hydra.run.dir={base / 'done'}", "trainer.max_epochs=2"],
             ["done/checkpoints/last.ckpt", "past trainer.max_epochs=2", "nothing is left to train"]),
        Case("train: resume with a smaller trainer.max_steps", "train",
             [*trained_model, f"ckpt_path={base / 'done' / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=10"],
             ["past trainer.max_steps=10", "raise that budget"]),
        # -- options (train)
        Case("train: num_heads does not divide d_model", "train", ["model.d_model=128", "model.num_heads=3"],
             ["model.num_heads=3 does not divide model.d_model=128", "[1, 2, 4, 8, 16, 32, 64]"]),
        Case("train: odd d_model", "train", ["model.d_model=63", "model.num_heads=3"], ["model.d_model=63 must be even"]),
        Case("train: dropout out of range", "train", ["model.dropout=1.2"], ["model.dropout=1.2", "[0, 1)"]),
        Case("train: beam size 0", "train", ["decoding=beam", "decoding.beam_size=0"], ["decoding.beam_size=0"]),
        Case("train: max_steps 0", "train", ["trainer.max_steps=0"], ["trainer.max_steps=0", "-1 for no limit"]),
        Case("train: unknown experiment", "train", ["experiment=nope"], ["Could not find 'experiment/nope'"], status=1),
        Case("train: negative data.max_tokens", "train", [*corpus("count"), "data.max_tokens=-5"],
             ["data.max_tokens must be a positive number", "-5"]),
        Case("train: run folder not writable", "train", [f"hydra.run.dir={base / 'blocker' / 'run'}"],
             ["cannot create the run folder", "blocker is a file, not a folder"]),
        # -- translate
        Case("translate: truncated checkpoint", "translate", [f"ckpt_path={ckpts / 'truncated.ckpt'}"],
             ["truncated.ckpt is not a readable checkpoint"], stdin=stdin),
        Case("translate: checkpoint without tokenizer", "translate", [f"ckpt_path={ckpts / 'no_tokenizer.ckpt'}"],
             ["lacks tokenizer"], stdin=stdin),
        Case("translate: missing checkpoint", "translate", [f"ckpt_path={ckpts / 'nope.ckpt'}"],
             ["nope.ckpt does not exist"], stdin=stdin),
        Case("translate: non-UTF-8 on stdin", "translate", [tiny, f"output={base / 'out' / 'previous.txt'}"],
             ["stdin line 2: not UTF-8"], stdin=b"Ein Hund.\nGr\xfc\xdfe\n"),
        Case("translate: output folder not writable", "translate",
             [tiny, f"input={base / 'source.txt'}", f"output={base / 'blocker' / 'sub' / 'out.txt'}"],
             ["cannot write output=", "blocker/sub/out.txt", "Not a directory"]),
        # -- eval
        Case("eval: truncated checkpoint", "eval", [f"ckpt_path={ckpts / 'truncated.ckpt'}", "data=toy"],
             ["truncated.ckpt is not a readable checkpoint"]),
        Case("eval: test split line counts differ", "eval", [tiny, "data=toy", *corpus("eval_count")],
             ["test.en has 100 lines", "test.de has 97"]),
        Case("eval: output folder not writable", "eval", [tiny, "data=toy", f"hydra.run.dir={base / 'blocker' / 'eval'}"],
             ["cannot create the run folder", "blocker is a file, not a folder"]),
    ]


# Everything that must come out of the suite unchanged (relative to its folder).
PROTECTED = ["good", "corpora", "cache", "ckpts", "run/checkpoints", "run/metrics.json", "run/csv", "done/checkpoints",
             "done/metrics.json", "done/csv", "out", "blocker"]
CASE_NAMES = [case.name for case in _cases(Path("suite"))]


def _run_all(cases: list[Case], base: Path) -> list[subprocess.CompletedProcess]:
    """Every case as its own ``python -m seq2seq.<command>`` process, a few at a time."""
    env = {**os.environ, "SEQ2SEQ_ROOT": str(base / "work"), "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)  # what a user sees by default
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        return list(pool.map(lambda c: run_command(f"seq2seq.{c.command}", c.args, cwd=base, env=env,
                                                   input=c.stdin, timeout=300), cases))


@pytest.fixture(scope="module")
def suite(tiny_run, tiny_checkpoint, tmp_path_factory) -> dict:
    """Prepare the inputs, run every case, and return the results and the files that changed."""
    base = tmp_path_factory.mktemp("bad_inputs")
    good = base / "good"
    shutil.copytree(tiny_run["data_dir"], good)
    shutil.copytree(Path(tiny_run["run_dir"]).parent / "cache", base / "cache")
    _prepare_inputs(base, tiny_checkpoint, good)
    cases = _cases(base)
    watched = [base / p for p in PROTECTED] + [tiny_checkpoint.parent.parent]
    before = _snapshot(watched)
    results = dict(zip([c.name for c in cases], _run_all(cases, base)))
    after = _snapshot(watched)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return {"cases": {c.name: (c, results[c.name]) for c in cases}, "changed": changed}


def message_of(result: subprocess.CompletedProcess) -> str:
    """The error message: the ``error:`` line, or Hydra's report."""
    stderr = result.stderr.decode("utf-8", "replace").strip()
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return errors[0] if len(errors) == 1 else stderr


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_gives_one_clear_message(suite, name):
    case, result = suite["cases"][name]
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == case.status, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert "Error executing job" not in stderr, stderr[-3000:]
    if case.status == 2:
        # The project's own errors: one line, "error: ...", last on stderr (after the library's
        # informational lines, if any).
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and lines[-1] == errors[0], stderr[-3000:]
        if case.command == "translate":
            assert len(lines) == 1, stderr[-3000:]
    else:
        # Hydra's report: its message, then its hint to set HYDRA_FULL_ERROR.
        assert lines[-1].startswith("Set the environment variable HYDRA_FULL_ERROR=1"), stderr[-3000:]
    for word in case.words:
        assert word in stderr, (word, stderr[-3000:])
    if case.command == "translate":
        assert result.stdout == b""


def test_bad_inputs_leave_checkpoints_cache_and_outputs_untouched(suite):
    assert len(suite["cases"]) >= 15
    assert suite["changed"] == []
