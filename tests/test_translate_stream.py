"""translate as a stream, run as users run it: interactive through a pipe (each answer read back before
the next line is sent), chunked output equal to unchunked, a failure leaving no output file, and
score_reference (scores of the API and of the searches, blank lines, mismatched line counts)."""

from __future__ import annotations

import os
import pty
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from helpers import TOY_SENTENCES
from seq2seq.api import Translator
from seq2seq.decoding.search import DecodingConfig
from seq2seq.inference.checkpoint import load_model
from seq2seq.inference.predictor import Predictor

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = TOY_SENTENCES
LONG = " ".join([SENTENCES[1]] * 8)
LINES = [SENTENCES[0], "", LONG, *SENTENCES[1:4], "   ", *SENTENCES[4:], LONG]  # 11 lines
MAX_SRC_LEN = 16


def command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "seq2seq.translate", *args]


def env() -> dict:
    # One thread: the model is tiny, and a shared CPU makes multi-threaded small ops crawl.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(args: list[str], cwd: Path, stdin: bytes | str | None = None) -> subprocess.CompletedProcess:
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    result = subprocess.run(command(args), cwd=cwd, input=data if data is not None else b"", capture_output=True,
                            env=env(), timeout=180, check=False)
    result.stdout, result.stderr = result.stdout.decode("utf-8"), result.stderr.decode("utf-8", "replace")
    return result


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("stdin", ["pipe", "terminal"])
def test_interactive_answers_each_line_before_the_next_is_sent(tiny_checkpoint, tmp_path, stdin):
    """``interactive=true`` through a pipe, and the default when stdin is a terminal (a pty)."""
    lines = SENTENCES[:3] + [""] + SENTENCES[3:4]
    expected = Translator.from_checkpoint(tiny_checkpoint, device="cpu").translate(lines)
    args = [f"ckpt_path={tiny_checkpoint}", "decoding=greedy", "device=cpu"]
    if stdin == "pipe":
        process = subprocess.Popen(command([*args, "interactive=true"]), cwd=tmp_path, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env())

        def send(data: bytes) -> None:
            process.stdin.write(data)
            process.stdin.flush()

        def end() -> None:
            process.stdin.close()
    else:
        terminal, tty_end = pty.openpty()
        process = subprocess.Popen(command(args), cwd=tmp_path, stdin=tty_end, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=env())
        os.close(tty_end)

        def send(data: bytes) -> None:
            os.write(terminal, data)

        def end() -> None:
            os.write(terminal, b"\x04")  # Ctrl-D at the start of a line: end of input

    answers: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [answers.put(line) for line in iter(process.stdout.readline, b"")],
                              daemon=True)
    reader.start()
    try:
        for i, line in enumerate(lines):
            send(line.encode("utf-8") + b"\n")  # the input stays open: the answer must come without EOF
            try:
                answer = answers.get(timeout=120 if i == 0 else 60)  # the first includes start-up
            except queue.Empty:
                pytest.fail(f"no translation of line {i + 1} while the input stays open")
            assert answer.decode("utf-8") == expected[i] + "\n", f"line {i + 1}"
        end()
        assert process.wait(timeout=60) == 0
        assert answers.empty()
        assert process.stderr.read() == b""  # no progress lines when interactive
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if stdin == "terminal":
            os.close(terminal)


def test_chunked_output_equals_unchunked(tiny_checkpoint, tmp_path):
    source = write_lines(tmp_path / "source.txt", LINES)
    common = [f"ckpt_path={tiny_checkpoint}", "input=source.txt", f"max_src_len={MAX_SRC_LEN}", "device=cpu",
              "progress=false", "decoding.beam_size=3"]
    small = run([*common, "chunk_lines=3", "output=small.txt"], tmp_path)
    large = run([*common, "chunk_lines=10000", "output=large.txt"], tmp_path)
    for result in (small, large):
        assert result.returncode == 0, result.stderr
    out = (tmp_path / "small.txt").read_text(encoding="utf-8")
    assert out == (tmp_path / "large.txt").read_text(encoding="utf-8")
    assert out.count("\n") == len(LINES) and out.split("\n")[1] == "" and out.split("\n")[6] == ""
    # Warnings count lines over the whole input, whatever the chunk.
    assert small.stderr == large.stderr
    warned = [w.split(":")[1].strip() for w in small.stderr.splitlines()]
    assert warned[0] == "line 3" and warned[-1] == f"line {len(LINES)}" and len(warned) >= 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["large.txt", "small.txt", "source.txt"]

    # n-best: line_index runs over the whole input, stdin to stdout.
    nbest = [run([f"ckpt_path={tiny_checkpoint}", "n_best=2", "decoding.beam_size=3", f"max_src_len={MAX_SRC_LEN}",
                  "progress=false", f"chunk_lines={n}"], tmp_path, stdin=source.read_text()) for n in (3, 100)]
    assert nbest[0].returncode == 0 and nbest[0].stdout == nbest[1].stdout
    assert [int(row.split("\t")[0]) for row in nbest[0].stdout.splitlines()] == [i for i in range(len(LINES)) for _ in "ab"]
    assert [row.split("\t")[3] for row in nbest[0].stdout.splitlines()][::2] == out.splitlines()


def test_failure_part_way_leaves_no_output_file(tiny_checkpoint, tmp_path):
    previous = tmp_path / "out.txt"
    previous.write_text("an earlier file\n")
    data = b"".join(line.encode() + b"\n" for line in SENTENCES[:4]) + b"Gr\xfc\xdfe\n" + SENTENCES[4].encode() + b"\n"
    (tmp_path / "bad.txt").write_bytes(data)
    args = [f"ckpt_path={tiny_checkpoint}", "input=bad.txt", "decoding=greedy", "chunk_lines=2", "device=cpu",
            "progress=false"]
    to_file = run([*args, "output=out.txt"], tmp_path)
    assert to_file.returncode == 2 and to_file.stderr.strip() == "error: bad.txt line 5: not UTF-8 (invalid start byte)"
    assert previous.read_text() == "an earlier file\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "out.txt"]  # no temporary file left
    # To stdout, the two chunks before the bad line were written before the error.
    streamed = run(args, tmp_path)
    assert streamed.returncode == 2 and streamed.stdout.count("\n") == 4


def test_score_reference(tiny_checkpoint, tmp_path):
    net, tokenizer = load_model(tiny_checkpoint)
    predictor = Predictor(net, tokenizer, DecodingConfig(strategy="greedy"))
    hyps = [predictor.generate(torch.tensor([ids]))[0][0] for ids in tokenizer.encode_source(SENTENCES)]
    texts = predictor.texts(hyps)
    sources = [*SENTENCES, "", "  ", SENTENCES[0]]
    references = [*texts, "", "Ein Hund.", ""]
    write_lines(tmp_path / "src.txt", sources)
    write_lines(tmp_path / "ref.txt", references)
    result = run([f"ckpt_path={tiny_checkpoint}", "input=src.txt", "score_reference=ref.txt", "decoding=greedy",
                  "chunk_lines=4", "progress=false", "device=cpu"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "warning: line 8: blank source with a non-blank target; not scored (0.0)"
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert len(rows) == len(sources) and all(len(r) == 3 for r in rows)

    api = Translator.from_checkpoint(tiny_checkpoint, device="cpu").score(sources, references, warn=None)
    # Chunks of 4 batch differently from one call: equal up to float rounding and the 4 decimals.
    for (log_prob, n_tokens, score), expected in zip(rows, api):
        assert int(n_tokens) == expected.n_tokens
        assert float(log_prob) == pytest.approx(expected.log_prob, abs=2e-4)
        assert float(score) == pytest.approx(expected.score, abs=2e-4)
    compared = 0
    for hyp, text, (log_prob, n_tokens, score) in zip(hyps, texts, rows):
        if hyp.eos and tokenizer.encode_target([text])[0] == hyp.tokens:
            compared += 1
            assert int(n_tokens) == hyp.num_scored
            assert float(score) == pytest.approx(hyp.score, abs=1e-4)
            assert float(log_prob) == pytest.approx(hyp.log_prob, abs=1e-4)
    assert compared >= 4
    assert rows[6] == rows[7] == ["0.0000", "0", "0.0000"]  # blank sources: not scored
    assert rows[8][1] == "1" and float(rows[8][0]) < 0  # blank reference: EOS alone

    # Mismatched line counts: one message naming both files and their counts, checked up front for
    # files, at the end of stdin otherwise; no output file either way.
    write_lines(tmp_path / "short.txt", references[:-2])
    files = run([f"ckpt_path={tiny_checkpoint}", "input=src.txt", "score_reference=short.txt", "output=scores.txt"],
                tmp_path)
    assert files.returncode == 2 and files.stdout == ""
    assert files.stderr.startswith("error: src.txt has 9 lines but short.txt has 7;") and files.stderr.count("\n") == 1
    piped = run([f"ckpt_path={tiny_checkpoint}", "score_reference=short.txt", "output=scores.txt", "progress=false"],
                tmp_path, stdin=(tmp_path / "src.txt").read_text())
    assert piped.returncode == 2
    assert piped.stderr.strip().splitlines()[-1].startswith("error: stdin has 9 lines but short.txt has 7;")
    assert not (tmp_path / "scores.txt").exists()
