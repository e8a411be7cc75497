"""Translate text with a trained checkpoint.

    python -m seq2seq.translate ckpt_path=PATH [input=FILE] [output=FILE] [key=value ...]
    seq2seq-translate ckpt_path=PATH < source.txt > hypotheses.txt

Configuration: ``conf/translate.yaml`` (``input``, ``output``, ``batch_size``, ``max_tokens``,
``device``, ``n_best``, ``max_src_len``, ``progress``) and the ``decoding`` group, beam search by
default (``decoding=greedy``, ``decoding=sampling``, ``decoding.beam_size=8`` ...).

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
from collections.abc import Callable, Sequence
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from seq2seq.config import config_dir, user_errors_exit
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig, generate
from seq2seq.errors import CheckpointError, ConfigError, DataError
from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig
from seq2seq.utils.io import atomic_write_text

__all__ = [
    "format_results",
    "load_checkpoint",
    "main",
    "make_batches",
    "read_lines",
    "resolve_device",
    "translate",
    "translate_lines",
]


def _one_line(err: BaseException, limit: int = 200) -> str:
    """First line of an exception message, shortened: user errors are one line."""
    text = str(err).strip().splitlines()
    first = text[0].split(". ")[0] if text else ""  # torch's messages run on: the first sentence says enough
    first = first if len(first) <= limit else first[: limit - 3] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cpu``, ``cuda`` and ``cuda:N`` as given."""
    name = (name or "auto").strip()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device={name!r} is not a device: use cpu, cuda, cuda:N or auto") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device={name} was asked for but CUDA is not available here; use device=cpu or auto"
        )
    return device


def load_checkpoint(
    path: str | Path | None, device: torch.device | str = "cpu"
) -> tuple[Seq2SeqTransformer, Tokenizer]:
    """The network (eval mode, on ``device``) and tokenizer stored in a training checkpoint.

    Reads what :class:`~seq2seq.models.lit_module.Seq2SeqModule` saves (``model_config``,
    ``tokenizer`` and the ``net.*`` weights) with ``torch.load(weights_only=True)``, without
    importing Lightning, so that the command starts fast and an untrusted file cannot run code.
    Raises :class:`CheckpointError` with one line for a missing, unreadable or foreign file.
    """
    if path is None or str(path).strip() == "":
        raise CheckpointError(
            "no checkpoint given: pass ckpt_path=PATH (a .ckpt file written by seq2seq-train)"
        )
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged or foreign file
        raise CheckpointError(f"{path} is not a readable checkpoint ({_one_line(err)})") from None
    missing = [
        k
        for k in ("state_dict", "model_config", "tokenizer")
        if not isinstance(checkpoint, dict) or k not in checkpoint
    ]
    if missing:
        raise CheckpointError(
            f"{path} is not a seq2seq training checkpoint (it lacks {', '.join(missing)}); "
            "use best.ckpt or last.ckpt from a run's checkpoints/ folder"
        )
    try:
        fields = TransformerConfig.__dataclass_fields__
        net = Seq2SeqTransformer(
            TransformerConfig(**{k: v for k, v in checkpoint["model_config"].items() if k in fields})
        )
        weights = {k[len("net.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
        net.load_state_dict(weights)
        tokenizer = Tokenizer.from_state_dict(checkpoint["tokenizer"])
    except Exception as err:  # noqa: BLE001 - any failure here means the file does not fit
        raise CheckpointError(f"{path} does not hold a usable model ({_one_line(err)})") from None
    return net.to(device).eval(), tokenizer


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


def make_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Group indices into batches of similar length (sorted, longest first).

    A batch holds at most ``batch_size`` items and, with ``max_tokens``, at most that many padded
    source tokens (``len(batch) * longest``); an item longer than ``max_tokens`` gets a batch alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first, so the batch's first item is its longest.
        longest = lengths[current[0]] if current else lengths[i]
        too_many = len(current) >= batch_size or (
            max_tokens is not None and (len(current) + 1) * longest > max_tokens
        )
        if current and too_many:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def translate_lines(
    net: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    lines: Sequence[str],
    decoding: DecodingConfig,
    *,
    batch_size: int = 64,
    max_tokens: int | None = None,
    max_src_len: int | None = None,
    device: torch.device | str | None = None,
    warn: Callable[[str], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[tuple[str, float]]]:
    """Translate ``lines``; returns, per line in input order, ``n_best`` ``(text, score)`` pairs, best first.

    Blank lines give ``("", 0.0)`` pairs without a model call. Sources longer than
    ``max_src_len`` tokens (default and upper bound: the model's ``max_positions``) are cut to
    that length, keeping their EOS, and reported through ``warn(message)``.
    ``progress(done_lines, total_lines)`` is called after each batch.
    """
    decoding.validate()
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens} must be at least 1 (or null)")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    limit = (
        net.config.max_positions if max_src_len is None else min(int(max_src_len), net.config.max_positions)
    )
    if limit < 2:
        raise ConfigError(f"max_src_len={max_src_len} must be at least 2 (one token and EOS)")
    n_best = decoding.n_best
    results: list[list[tuple[str, float]] | None] = [None] * len(lines)
    todo = [i for i, line in enumerate(lines) if line.strip()]
    for i, line in enumerate(lines):
        if not line.strip():
            results[i] = [("", 0.0)] * n_best
    sources = tokenizer.encode_source([lines[i] for i in todo]) if todo else []
    for j, (i, ids) in enumerate(zip(todo, sources)):
        if len(ids) > limit:
            if warn is not None:
                warn(f"line {i + 1}: {len(ids)} source tokens, more than {limit}; truncated to {limit}")
            sources[j] = ids[: limit - 1] + [tokenizer.eos_id]

    done = len(lines) - len(todo)
    for batch in make_batches([len(s) for s in sources], batch_size, max_tokens):
        width = max(len(sources[j]) for j in batch)
        src = torch.full((len(batch), width), net.config.pad_id, dtype=torch.long)
        for row, j in enumerate(batch):
            src[row, : len(sources[j])] = torch.tensor(sources[j], dtype=torch.long)
        hyps = generate(net, src.to(device), decoding)
        texts = tokenizer.decode_target([h.tokens for group in hyps for h in group])
        pos = 0
        for j, group in zip(batch, hyps):
            pairs = [(texts[pos + r], h.score) for r, h in enumerate(group)]
            pos += len(group)
            # Beam search has at least n_best hypotheses but for degenerate inputs; repeat the last.
            pairs += [pairs[-1]] * (n_best - len(pairs))
            results[todo[j]] = pairs[:n_best]
        done += len(batch)
        if progress is not None:
            progress(done, len(lines))
    return results  # type: ignore[return-value]


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
    decoding = DecodingConfig.from_mapping(OmegaConf.to_container(cfg.decoding, resolve=True))
    decoding.n_best = n_best
    decoding.validate()
    device = resolve_device(cfg.get("device"))
    if cfg.get("output"):
        _check_output(cfg.output)  # before minutes of decoding, not after
    net, tokenizer = load_checkpoint(cfg.get("ckpt_path"), device)
    lines = read_lines(cfg.get("input"))
    show = bool(cfg.get("progress", True))
    start = time.perf_counter()
    last = [start]

    def progress(done: int, total: int) -> None:
        now = time.perf_counter()
        if show and (now - last[0] >= 2.0 or done == total):
            last[0] = now
            _stderr(f"translate: {done}/{total} lines, {now - start:.1f} s")

    results = translate_lines(
        net,
        tokenizer,
        lines,
        decoding,
        batch_size=int(cfg.get("batch_size") or 64),
        max_tokens=cfg.get("max_tokens"),
        max_src_len=cfg.get("max_src_len"),
        device=device,
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
