"""The one prediction path: batches in, hypotheses out, in input order.

:class:`Predictor` holds a network, its tokenizer and a :class:`DecodingConfig` (greedy, beam or
sampling, n-best). Validation in the LightningModule and ``eval`` feed it the DataModule's own
batches (:meth:`Predictor.predict_batch`, sorted by the token-budget sampler, each sentence tagged
with its corpus index); ``translate``, the notebooks and the Python API feed it raw lines
(:meth:`Predictor.translate`), which it tokenizes and sorts into batches with :func:`make_batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig, Hypothesis, generate
from seq2seq.errors import ConfigError
from seq2seq.models.loss import sequence_loss
from seq2seq.models.transformer import Seq2SeqTransformer


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
        too_many = len(current) >= batch_size or (max_tokens is not None and (len(current) + 1) * longest > max_tokens)
        if current and too_many:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


class Predictor:
    """Decode with ``net`` as ``decoding`` says; see the module docstring.

    ``device``: where batches go (default: the network's). ``decoding.n_best`` hypotheses per source.
    """

    def __init__(self, net: Seq2SeqTransformer, tokenizer: Tokenizer, decoding: DecodingConfig | None = None,
                 device: torch.device | str | None = None):
        self.net, self.tokenizer = net, tokenizer
        self.decoding = (decoding or DecodingConfig()).validate()
        self.device = torch.device(device) if device is not None else next(net.parameters()).device

    @property
    def max_positions(self) -> int:
        """The longest source (and output) the model takes, in tokens."""
        return self.net.config.max_positions

    @property
    def pad_id(self) -> int:
        return self.net.config.pad_id

    @classmethod
    def greedy(cls, net: Seq2SeqTransformer, tokenizer: Tokenizer, decoding: DecodingConfig) -> Predictor:
        """Greedy decoding with the length limits and constraints of ``decoding`` (validation's choice)."""
        return cls(net, tokenizer, replace(decoding, strategy="greedy", n_best=1))

    def generate(self, src: Tensor) -> list[list[Hypothesis]]:
        """n-best hypotheses, best first, of a padded batch of source ids (B, S)."""
        was_training = self.net.training
        self.net.eval()
        try:
            return generate(self.net, src.to(self.device), self.decoding)
        finally:
            self.net.train(was_training)

    def predict_batch(self, batch: dict[str, Tensor]) -> list[tuple[int, list[Hypothesis]]]:
        """A DataModule batch (``src``, ``index``) -> ``(corpus index, n-best)`` per sentence."""
        return list(zip(batch["index"].tolist(), self.generate(batch["src"])))

    @torch.inference_mode()
    def predict_loader(self, loader) -> tuple[list[list[Hypothesis]], float, int]:
        """Decode every batch of a DataModule loader: the n-best lists in corpus order, and the
        teacher-forced NLL summed over the references' tokens with their count (for loss/perplexity)."""
        nbest: dict[int, list[Hypothesis]] = {}
        nll, n_tokens = 0.0, 0
        for batch in loader:
            src, tgt_in, tgt_out = (batch[k].to(self.device) for k in ("src", "tgt_in", "tgt_out"))
            nll += float(sequence_loss(self.net.eval(), src, tgt_in, tgt_out, fused=False)[1])
            n_tokens += int((tgt_out != self.net.config.pad_id).sum())
            nbest.update(self.predict_batch(batch))
        return [nbest[i] for i in sorted(nbest)], nll, n_tokens

    def texts(self, hypotheses: Sequence[Hypothesis]) -> list[str]:
        """Detokenized text of each hypothesis."""
        return self.tokenizer.decode_target([h.tokens for h in hypotheses])

    def translate(
        self,
        lines: Sequence[str],
        *,
        batch_size: int = 64,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Translate ``lines``; returns, per line in input order, ``n_best`` ``(text, score)`` pairs, best first.

        Blank lines give ``("", 0.0)`` pairs without a model call. Sources longer than
        ``max_src_len`` tokens (default and upper bound: the model's ``max_positions``) are cut to
        that length, keeping their EOS, and reported through ``warn(message)``.
        ``progress(done_lines, total_lines)`` is called after each batch.
        """
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be at least 1")
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens={max_tokens} must be at least 1 (or null)")
        positions = self.max_positions
        limit = positions if max_src_len is None else min(int(max_src_len), positions)
        if limit < 2:
            raise ConfigError(f"max_src_len={max_src_len} must be at least 2 (one token and EOS)")
        n_best, pad = self.decoding.n_best, self.pad_id
        results: list[list[tuple[str, float]]] = [[("", 0.0)] * n_best for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        sources = self.tokenizer.encode_source([lines[i] for i in todo]) if todo else []
        for j, (i, ids) in enumerate(zip(todo, sources)):
            if len(ids) > limit:
                if warn is not None:
                    warn(f"line {i + 1}: {len(ids)} source tokens, more than {limit}; truncated to {limit}")
                sources[j] = ids[: limit - 1] + [self.tokenizer.eos_id]
        done = len(lines) - len(todo)
        for batch in make_batches([len(s) for s in sources], batch_size, max_tokens):
            src = torch.full((len(batch), max(len(sources[j]) for j in batch)), pad, dtype=torch.long)
            for row, j in enumerate(batch):
                src[row, : len(sources[j])] = torch.tensor(sources[j], dtype=torch.long)
            groups = self.generate(src)
            texts = iter(self.texts([h for group in groups for h in group]))
            for j, group in zip(batch, groups):
                pairs = [(next(texts), h.score) for h in group]
                # Beam search has at least n_best hypotheses but for degenerate inputs; repeat the last.
                results[todo[j]] = (pairs + [pairs[-1]] * n_best)[:n_best]
            done += len(batch)
            if progress is not None:
                progress(done, len(lines))
        return results
