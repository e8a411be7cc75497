"""Translate text with a trained checkpoint.

    python -m seq2seq.translate ckpt_path=PATH [input=FILE] [output=FILE] [key=value ...]
    seq2seq-translate ckpt_path=PATH < source.txt > hypotheses.txt
    seq2seq-translate 'ckpt_path=[A.ckpt,B.ckpt]' < source.txt > hypotheses.txt   # an ensemble

Configuration: ``conf/translate.yaml`` (``input``, ``output``, ``batch_size``, ``max_tokens``,
``device``, ``n_best``, ``max_src_len``, ``progress``) and the ``decoding`` group, beam search by
default (``decoding=greedy``, ``decoding=sampling``, ``decoding.beam_size=8`` ...).

Several checkpoints, given as a Hydra list, decode as an ensemble: the mean of the models'
probabilities at every step (:mod:`seq2seq.decoding.ensemble`). They must share one tokenizer;
otherwise the command stops with one ``error:`` line naming the two checkpoints and what differs.

Input: source sentences, one per line, UTF-8, from ``input=FILE`` or stdin. Lines are split on
``\\n`` only (a trailing ``\\r`` is dropped), so the output always has as many lines as the input.

Output, to ``output=FILE`` or stdout, in input order:

* ``n_best=1``: one line per input line, the detokenized translation.
* ``n_best=K`` > 1: K lines per input line, best first, each::

      {line_index}\\t{rank}\\t{score:.4f}\\t{text}

  ``line_index`` counts input lines from 0, ``rank`` runs from 1 to K, ``score`` is the
  hypothesis's length-penalized log-probability (see :mod:`seq2seq.decoding.search`; higher is
  better). Beam search gives the K best hypotheses (K <= ``decoding.beam_size``), sampling K
  independent samples sorted by score.

An empty (or blank) input line gives an empty translation (K lines with score 0.0000 and empty
text when K > 1) without calling the model. A line with more source tokens than ``max_src_len``
(default: the model's ``max_positions``) is truncated, with a warning on stderr naming its line
number (counted from 1). Progress and warnings go to stderr only. The output file is written
atomically once every line is translated, so a failed run leaves no partial file. A missing or
invalid checkpoint, an unreadable input, or an output that cannot be written (checked before
decoding) ends with one ``error: ...`` line and exit status 2.
Nothing else is written: no run folder, no log file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from seq2seq.config import config_dir, user_errors_exit
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError, DataError
from seq2seq.inference.checkpoint import load_models, resolve_device
from seq2seq.inference.predictor import Predictor
from seq2seq.utils.io import atomic_write_text


def read_lines(path: str | Path | None) -> list[str]:
    """Source lines from ``path``, or stdin when ``None``; split on ``\\n`` only, ``\\r`` dropped."""
    if path is None:
        data = sys.stdin.buffer.read()
        where = "stdin"
    else:
        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise DataError(f"cannot read input {path}: {err.strerror or err}") from None
        where = str(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{where} line {line}: not UTF-8 ({err.reason})") from None
    if not text:
        return []
    # str.splitlines would also split on \x0b, \x1c, \u2028 ..., changing the line count.
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def format_results(results: Sequence[Sequence[tuple[str, float]]], n_best: int) -> str:
    """The output text: one line per input for ``n_best=1``, else the tab-separated n-best format."""
    out = []
    for index, pairs in enumerate(results):
        if n_best == 1:
            out.append(pairs[0][0])
        else:
            out.extend(f"{index}\t{rank}\t{score:.4f}\t{text}" for rank, (text, score) in enumerate(pairs, 1))
    # Detokenized text cannot hold a newline, but guard the line count anyway.
    return "".join(line.replace("\n", " ") + "\n" for line in out)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _check_output(path: str) -> None:
    """Raise :class:`ConfigError` when ``output=path`` cannot be written (its folder is created)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"output={path} is a folder; name a file to write the translations to")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot write output={path}: {err.strerror or err} ({path.parent})") from None


@user_errors_exit
def translate(cfg: DictConfig) -> None:
    """Run the command for a composed ``translate`` config (user errors: one message, exit 2)."""
    n_best = int(cfg.get("n_best") or 1)
    decoding = DecodingConfig.from_mapping({**OmegaConf.to_container(cfg.decoding, resolve=True), "n_best": n_best})
    decoding.validate()
    device = resolve_device(cfg.get("device"))
    if cfg.get("output"):
        _check_output(cfg.output)  # before minutes of decoding, not after
    net, tokenizer = load_models(cfg.get("ckpt_path"), device)
    lines = read_lines(cfg.get("input"))
    show = bool(cfg.get("progress", True))
    start = time.perf_counter()
    last = [start]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if show and (now - last[0] >= 2.0 or done == total):
            last[0] = now
            _stderr(f"translate: {done}/{total} lines, {now - start:.1f} s")

    results = Predictor(net, tokenizer, decoding, device).translate(
        lines,
        batch_size=int(cfg.get("batch_size") or 64),
        max_tokens=cfg.get("max_tokens"),
        max_src_len=cfg.get("max_src_len"),
        warn=lambda message: _stderr(f"warning: {message}"),
        progress=progress,
    )
    text = format_results(results, n_best)
    if cfg.get("output"):
        try:
            atomic_write_text(cfg.output, text)
        except OSError as err:
            raise ConfigError(f"cannot write output={cfg.output}: {err.strerror or err}") from None
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="translate")
def main(cfg: DictConfig) -> None:
    """Console script ``seq2seq-translate``."""
    translate(cfg)


if __name__ == "__main__":
    main()
