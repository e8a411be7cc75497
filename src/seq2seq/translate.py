"""``seq2seq-translate``: translate text with a trained checkpoint (or an ensemble), or score given
translations; the work is :class:`seq2seq.api.Translator`'s.

    seq2seq-translate ckpt_path=PATH [input=FILE] [output=FILE] [n_best=K] [tgt_lang=LANG] [decoding=...]
    seq2seq-translate ckpt_path=PATH input=source.txt score_reference=target.txt > scores.tsv

Input is read, translated and written in chunks of ``chunk_lines`` lines (``interactive=true``: line
by line), one output line per input line (``n_best=K``: ``index<TAB>rank<TAB>score<TAB>text`` lines;
``score_reference``: ``log_prob<TAB>n_tokens<TAB>score``), an output file written atomically.
docs/decoding.md describes the options, formats and errors.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.api import Translation, Translator
from seq2seq.config import config_dir, user_errors_exit
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.utils.io import TextLines, atomic_open_text, count_lines, line_count_mismatch, paired_lines


def read_lines(path: str | Path | None) -> list[str]:
    """All source lines of ``path``, or stdin when ``None``; split on ``\\n`` only, ``\\r`` dropped."""
    return list(TextLines(path))


def format_results(results: Sequence[Translation], n_best: int, first_index: int = 0) -> str:
    """The output text of consecutive input lines, the first being line ``first_index`` (from 0):
    one line per input for ``n_best=1``, else the tab-separated n-best format."""
    out = []
    for index, pairs in enumerate(results, first_index):
        if n_best == 1:
            out.append(pairs if isinstance(pairs, str) else pairs[0][0])
        else:
            out.extend(f"{index}\t{rank}\t{score:.4f}\t{text}" for rank, (text, score) in enumerate(pairs, 1))
    # Detokenized text cannot hold a newline, but guard the line count anyway.
    return "".join(line.replace("\n", " ") + "\n" for line in out)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


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
    decoding = DecodingConfig.from_mapping({**cfg.decoding, "n_best": n_best}).validate()
    interactive = cfg.get("interactive")
    if interactive is None:
        interactive = cfg.get("input") is None and sys.stdin.isatty()
    chunk_lines = cfg.get("chunk_lines")
    chunk_lines = 1 if interactive else int(10_000 if chunk_lines is None else chunk_lines)
    if chunk_lines < 1:
        raise ConfigError(f"chunk_lines={chunk_lines} must be at least 1")
    if cfg.get("output"):  # checked (and its folder created) before minutes of decoding, not after
        path = Path(cfg.output)
        if path.is_dir():
            raise ConfigError(f"output={path} is a folder; name a file to write the translations to")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot write output={path}: {err.strerror or err} ({path.parent})") from None
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
        quantize=cfg.get("quantize"),
    )
    translator.source_tokenizer()  # a multilingual checkpoint without tgt_lang stops here, before reading input
    show = bool(cfg.get("progress", True)) and not interactive
    start = last = time.perf_counter()

    def progress(done: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if show and now - last >= 2.0:
            last = now
            _stderr(f"translate: {done} lines, {now - start:.1f} s")

    options = {"chunk_lines": chunk_lines, "warn": lambda message: _stderr(f"warning: {message}"), "progress": progress}
    with _open_output(cfg.get("output")) as out:
        if reference:
            for scores in translator.score_chunks(paired_lines(sources, references), **options):
                out.write("".join(f"{s.log_prob:.4f}\t{s.n_tokens}\t{s.score:.4f}\n" for s in scores))
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
