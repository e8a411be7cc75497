"""Translate text with a trained checkpoint, or score given translations.

    python -m seq2seq.translate ckpt_path=PATH [input=FILE] [output=FILE] [key=value ...]
    seq2seq-translate ckpt_path=PATH < source.txt > hypotheses.txt
    seq2seq-translate 'ckpt_path=[A.ckpt,B.ckpt]' < source.txt > hypotheses.txt   # an ensemble
    seq2seq-translate ckpt_path=PATH input=source.txt score_reference=target.txt > scores.tsv
    seq2seq-translate ckpt_path=MULTILINGUAL.ckpt tgt_lang=fr < source.txt > hypotheses.fr.txt

Configuration: ``conf/translate.yaml`` (``input``, ``output``, ``batch_size``, ``max_tokens``,
``device``, ``n_best``, ``max_src_len``, ``chunk_lines``, ``interactive``, ``score_reference``,
``progress``) and the ``decoding`` group, beam search by default (``decoding=greedy``,
``decoding=sampling``, ``decoding.beam_size=8`` ...). The work is done by
:class:`seq2seq.api.Translator`, the Python API.

``tgt_lang``: the target language of a multilingual checkpoint (:mod:`seq2seq.data.multilingual`),
whose tag (``<2fr>``) is put first on every source; required for such a checkpoint, refused by a
checkpoint of one language pair, and checked against the checkpoint's languages before any input is
read (one ``error:`` line naming them).

Several checkpoints, given as a Hydra list, decode as an ensemble: the mean of the models'
probabilities at every step (:mod:`seq2seq.decoding.ensemble`). They must share one tokenizer;
otherwise the command stops with one ``error:`` line naming the two checkpoints and what differs.

Input: source sentences, one per line, UTF-8, from ``input=FILE`` or stdin. Lines are split on
``\\n`` only (a trailing ``\\r`` is dropped), so the output always has as many lines as the input.

Streaming: the input is read and translated ``chunk_lines`` lines at a time (default 10,000):
each chunk is sorted by length into batches, translated, written in input order and flushed
before the next is read. Memory stays bounded however long the input, and the first lines come
out before it ends. ``interactive=true`` translates and writes (flushes) each line as soon as it
arrives; it is the default when stdin is a terminal and no ``input`` is given (``interactive=false``
turns it off), and it prints no progress.

Output, to ``output=FILE`` or stdout, in input order:

* ``n_best=1``: one line per input line, the detokenized translation.
* ``n_best=K`` > 1: K lines per input line, best first, each::

      {line_index}\\t{rank}\\t{score:.4f}\\t{text}

  ``line_index`` counts input lines from 0, ``rank`` runs from 1 to K, ``score`` is the
  hypothesis's length-penalized log-probability (see :mod:`seq2seq.decoding.search`; higher is
  better). Beam search gives the K best hypotheses (K <= ``decoding.beam_size``), sampling K
  independent samples sorted by score.
* ``score_reference=FILE``: no decoding; each input line is scored with the line of FILE at the
  same position as its translation (forced decoding), one output line per pair::

      {log_prob:.4f}\\t{n_tokens}\\t{score:.4f}

  ``log_prob`` sums the model's log-probabilities of the reference's tokens and its EOS,
  ``n_tokens`` counts them (EOS included), ``score`` is ``log_prob`` over the length penalty with
  ``decoding.alpha``: the score a search reports for the same output (a greedy or beam hypothesis
  scored here gets the score ``n_best`` printed for it). A blank reference is scored as the empty
  output (EOS alone, ``n_tokens`` 1); a blank source line gives ``0.0000\\t0\\t0.0000`` without a
  model call, as it translates to an empty line, with a warning when its reference is not blank.
  References longer than the model's positions are cut (scored without EOS), with a warning. The
  two files must have the same number of lines: when ``input`` is a file this is checked before
  anything is scored, else when stdin ends; either way the run stops with one message naming
  both files and their line counts. Scores stream in chunks like translations.

An empty (or blank) input line gives an empty translation (K lines with score 0.0000 and empty
text when K > 1) without calling the model. A line with more source tokens than ``max_src_len``
(default: the model's ``max_positions``) is truncated, with a warning on stderr naming its line
number (counted from 1). Progress and warnings go to stderr only.

The output file is written to a temporary file beside it (``.NAME.<pid>.<random>.tmp``), flushed
after every chunk, and renamed onto ``output`` once every line is done, so a failed run leaves no
partial output file (an earlier file of that name stays as it was). Stdout gets every chunk as it
is done, so a run that fails part-way (a line that is not UTF-8) has printed the chunks before it.
A missing or invalid checkpoint, an unreadable input, a line that is not UTF-8 (named with its line
number), an output that cannot be written (checked before decoding) or mismatched line counts end
with one ``error: ...`` line and exit status 2. Nothing else is written: no run folder, no log file.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from seq2seq.api import PairScore, Translation, Translator
from seq2seq.config import config_dir, user_errors_exit
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.utils.io import TextLines, atomic_open_text, count_lines, line_count_mismatch, paired_lines


def read_lines(path: str | Path | None) -> list[str]:
    """All source lines of ``path``, or stdin when ``None``; split on ``\\n`` only, ``\\r`` dropped."""
    return list(TextLines(path))


def format_results(results: Sequence[Translation], n_best: int, first_index: int = 0) -> str:
    """The output text of consecutive input lines, the first being line ``first_index`` (from 0):
    one line per input for ``n_best=1``, else the tab-separated n-best format. A result is a
    translation or its list of ``(text, score)`` pairs."""
    out = []
    for index, pairs in enumerate(results, first_index):
        if n_best == 1:
            out.append(pairs if isinstance(pairs, str) else pairs[0][0])
        else:
            out.extend(f"{index}\t{rank}\t{score:.4f}\t{text}" for rank, (text, score) in enumerate(pairs, 1))
    # Detokenized text cannot hold a newline, but guard the line count anyway.
    return "".join(line.replace("\n", " ") + "\n" for line in out)


def format_scores(scores: Sequence[PairScore]) -> str:
    """``{log_prob:.4f}\\t{n_tokens}\\t{score:.4f}`` lines, one per scored pair."""
    return "".join(f"{s.log_prob:.4f}\t{s.n_tokens}\t{s.score:.4f}\n" for s in scores)


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


@contextlib.contextmanager
def _open_output(path: str | None):
    """stdout, or a temporary file renamed onto ``path`` when the block succeeds."""
    if not path:
        yield sys.stdout
        return
    try:
        with atomic_open_text(path) as f:
            yield f
    except OSError as err:
        raise ConfigError(f"cannot write output={path}: {err.strerror or err}") from None


@user_errors_exit
def translate(cfg: DictConfig) -> None:
    """Run the command for a composed ``translate`` config (user errors: one message, exit 2)."""
    n_best = int(cfg.get("n_best") or 1)
    decoding = DecodingConfig.from_mapping({**OmegaConf.to_container(cfg.decoding, resolve=True), "n_best": n_best})
    decoding.validate()
    interactive = cfg.get("interactive")
    if interactive is None:
        interactive = cfg.get("input") is None and sys.stdin.isatty()
    chunk_lines = cfg.get("chunk_lines")
    chunk_lines = 1 if interactive else int(10_000 if chunk_lines is None else chunk_lines)
    if chunk_lines < 1:
        raise ConfigError(f"chunk_lines={chunk_lines} must be at least 1")
    if cfg.get("output"):
        _check_output(cfg.output)  # before minutes of decoding, not after
    # Opened now, so that an unreadable input fails before the model loads.
    sources = TextLines(cfg.get("input"))
    reference = cfg.get("score_reference")
    if reference:
        references = TextLines(reference)
        if cfg.get("input"):
            n_src, n_ref = count_lines(cfg.input), count_lines(reference)
            if n_src != n_ref:
                raise line_count_mismatch(sources.where, n_src, references.where, n_ref)
    translator = Translator.from_checkpoint(
        cfg.get("ckpt_path"),
        cfg.get("device"),
        decoding=decoding,
        batch_size=int(cfg.get("batch_size") or 64),
        max_tokens=cfg.get("max_tokens"),
        max_src_len=cfg.get("max_src_len"),
        tgt_lang=cfg.get("tgt_lang"),
    )
    translator.source_tokenizer()  # a multilingual checkpoint without tgt_lang stops here, before reading input
    show = bool(cfg.get("progress", True)) and not interactive
    start = time.perf_counter()
    last = [start]

    def progress(done: int) -> None:
        now = time.perf_counter()
        if show and now - last[0] >= 2.0:
            last[0] = now
            _stderr(f"translate: {done} lines, {now - start:.1f} s")

    options = {"chunk_lines": chunk_lines, "warn": lambda message: _stderr(f"warning: {message}"), "progress": progress}
    with _open_output(cfg.get("output")) as out:
        if reference:
            for scores in translator.score_chunks(paired_lines(sources, references), **options):
                out.write(format_scores(scores))
                out.flush()
        else:
            for results in translator.translate_chunks(sources, **options):
                out.write(format_results(results, n_best, sources.count - len(results)))
                out.flush()
    if show and sources.count:
        _stderr(f"translate: {sources.count} lines, {time.perf_counter() - start:.1f} s")


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="translate")
def main(cfg: DictConfig) -> None:
    """Console script ``seq2seq-translate``."""
    translate(cfg)


if __name__ == "__main__":
    main()
