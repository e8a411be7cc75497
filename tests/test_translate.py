"""The translate command, run as users run it: ``python -m seq2seq.translate`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import assert_one_line_error
from helpers.forked_commands import run_command
from seq2seq.config import config_dir
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import CheckpointError
from seq2seq.inference.checkpoint import load_model as load_checkpoint
from seq2seq.inference.predictor import Predictor, make_batches
from seq2seq.translate import format_results, read_lines

pytestmark = pytest.mark.usefixtures("one_thread")

NORMAL = [
    "Der Lehrer fand ein glückliches Pferd im Park.",
    "Die Lehrer fanden das kleine Kind.",
    "Ein Hund sah den alten Mann.",
]
LONG = " ".join([NORMAL[0]] * 6)  # far more than MAX_SRC_LEN tokens
MAX_SRC_LEN = 24
LINES = [NORMAL[0], "", LONG, NORMAL[1], "   ", NORMAL[2]]


def run_translate(args: list[str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    # One thread: the model is tiny, and a shared CPU makes multi-threaded small ops crawl.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return run_command("seq2seq.translate", args, cwd=cwd, input=stdin, text=True, env=env, timeout=120)


def beam_config(**overrides) -> DecodingConfig:
    """The decoding config translate uses by default (conf/decoding/beam.yaml)."""
    values = OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "decoding" / "beam.yaml"))
    return DecodingConfig.from_mapping({**values, **overrides})


def test_translate_file_keeps_lines_and_order(tiny_checkpoint, tmp_path):
    source = tmp_path / "source.txt"
    source.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    result = run_translate(
        [
            f"ckpt_path={tiny_checkpoint}",
            "input=source.txt",
            "output=out/hyp.txt",
            f"max_src_len={MAX_SRC_LEN}",
            "device=cpu",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    out = (tmp_path / "out" / "hyp.txt").read_text(encoding="utf-8").split("\n")
    assert out[-1] == "" and len(out[:-1]) == len(LINES)
    out = out[:-1]
    assert out[1] == "" and out[4] == ""  # empty and blank lines stay empty
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "line 3" in warnings[0] and "truncated" in warnings[0]
    # Nothing left behind: no run folder, no .hydra/, no log file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source.txt"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["hyp.txt"]

    # Same as translating each line alone, so sorting by length and batching kept the order.
    net, tokenizer = load_checkpoint(tiny_checkpoint)
    for i, line in enumerate(LINES):
        alone = Predictor(net, tokenizer, beam_config()).translate([line], max_src_len=MAX_SRC_LEN)
        assert out[i] == alone[0][0][0], f"line {i + 1}"


def test_translate_stdin_to_stdout_n_best(tiny_checkpoint, tmp_path):
    result = run_translate(
        [f"ckpt_path={tiny_checkpoint}", "n_best=3", "decoding.beam_size=4", "progress=false"],
        cwd=tmp_path,
        stdin="\n".join(NORMAL[:2] + [""]) + "\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == 3 * 3 and all(len(r) == 4 for r in rows)
    assert [(int(r[0]), int(r[1])) for r in rows] == [(i, k) for i in range(3) for k in (1, 2, 3)]
    for i in range(2):
        scores = [float(r[2]) for r in rows[3 * i : 3 * i + 3]]
        assert scores == sorted(scores, reverse=True) and scores[0] < 0
    assert all(r[2] == "0.0000" and r[3] == "" for r in rows[6:])
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_is_one_line_error(tmp_path):
    result = run_translate(["ckpt_path=nowhere/model.ckpt"], cwd=tmp_path, stdin="Hallo.\n")
    assert_one_line_error(result, "nowhere/model.ckpt", "does not exist")


def test_garbage_checkpoint_is_one_line_error(tmp_path):
    (tmp_path / "garbage.ckpt").write_bytes(b"this is not a checkpoint\n" * 10)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    result = run_translate(["ckpt_path=garbage.ckpt", "output=out.txt"], cwd=tmp_path, stdin="Hallo.\n")
    assert_one_line_error(result, "garbage.ckpt", "not a readable checkpoint")
    assert not (tmp_path / "out.txt").exists()
    with pytest.raises(CheckpointError, match="not a seq2seq training checkpoint"):
        load_checkpoint(tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="no checkpoint given"):
        load_checkpoint(None)


# ----------------------------------------------------------------------------- helpers, in process
def test_read_lines_splits_on_newlines_only(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes("a\r\nb\x0bc\u2028d\n\nlast".encode())
    assert read_lines(path) == ["a", "b\x0bc\u2028d", "", "last"]
    path.write_bytes(b"")
    assert read_lines(path) == []


def test_make_batches_respects_limits():
    lengths = [5, 1, 9, 3, 9, 2, 7]
    batches = make_batches(lengths, batch_size=3, max_tokens=20)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 20
    assert make_batches([30, 2], batch_size=8, max_tokens=10) == [[0], [1]]


def test_format_results():
    results = [[("ein", -1.0), ("zwei", -2.5)], [("", 0.0), ("", 0.0)]]
    assert format_results(results, 1) == "ein\n\n"
    assert (
        format_results(results, 2)
        == "0\t1\t-1.0000\tein\n0\t2\t-2.5000\tzwei\n1\t1\t0.0000\t\n1\t2\t0.0000\t\n"
    )
