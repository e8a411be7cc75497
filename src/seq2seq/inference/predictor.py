"""The one prediction path: batches in, hypotheses out, in input order.

:class:`Predictor` holds a network, its tokenizer and a :class:`DecodingConfig` (greedy, beam or
sampling, n-best). Validation in the LightningModule and ``eval`` feed it the DataModule's own
batches (:meth:`Predictor.predict_batch`, sorted by the token-budget sampler, each sentence tagged
with its corpus index); ``translate``, the notebooks and the Python API feed it raw lines
(:meth:`Predictor.translate`), which it tokenizes and sorts into batches with :func:`make_batches`.
:meth:`Predictor.score` scores given (source, target) pairs by forced decoding, batched the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from seq2seq.data.tokenizer import Tokenizer, truncate_source
from seq2seq.decoding.ensemble import teacher_forced_nll
from seq2seq.decoding.search import DecodingConfig, Hypothesis, generate, sequence_scores
from seq2seq.errors import ConfigError
from seq2seq.models.transformer import Seq2SeqTransformer


def make_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Group indices into batches of similar length (sorted, longest first): at most ``batch_size``
    items and, with ``max_tokens``, at most that many padded tokens (``len(batch) * longest``; an
    item longer than that gets a batch alone)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size} must be at least 1")
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens} must be at least 1 (or null)")
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


class PairScore(NamedTuple):
    """A target's forced-decoding score given its source (:meth:`Predictor.score`)."""

    log_prob: float  # sum of the log-probabilities of its tokens and EOS
    n_tokens: int  # tokens scored, EOS included
    score: float  # log_prob / length penalty, the score a search reports for the same output


class Predictor:
    """Decode with ``net`` as ``decoding`` says; see the module docstring.

    ``net``: a network or an :class:`~seq2seq.decoding.ensemble.Ensemble` of networks.
    ``device``: where batches go (default: the network's). ``decoding.n_best`` hypotheses per source.
    """

    def __init__(self, net: Seq2SeqTransformer, tokenizer: Tokenizer, decoding: DecodingConfig | None = None,
                 device: torch.device | str | None = None):
        self.net, self.tokenizer = net, tokenizer
        self.decoding = (decoding or DecodingConfig()).validate()
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        # The longest source (and output) the model takes, in tokens, and its padding id.
        self.max_positions, self.pad_id = net.config.max_positions, net.config.pad_id

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
            nll += float(teacher_forced_nll(self.net.eval(), src, tgt_in, tgt_out))
            n_tokens += int((tgt_out != self.net.config.pad_id).sum())
            nbest.update(self.predict_batch(batch))
        return [nbest[i] for i in sorted(nbest)], nll, n_tokens

    def texts(self, hypotheses: Sequence[Hypothesis]) -> list[str]:
        """Detokenized text of each hypothesis."""
        return self.tokenizer.decode_target([h.tokens for h in hypotheses])

    def source_ids(self, lines: Sequence[str], *, max_src_len: int | None = None,
                   warn: Callable[[str], None] | None = None, first_line: int = 1,
                   todo: Sequence[int] | None = None) -> list[list[int]]:
        """Source ids of ``lines[i]`` for ``i`` in ``todo`` (default: every line) as :meth:`translate`
        encodes them: cut to ``max_src_len`` with a warning that names the line."""
        todo = range(len(lines)) if todo is None else todo
        limit = self.max_positions if max_src_len is None else min(int(max_src_len), self.max_positions)
        if limit < 2:
            raise ConfigError(f"max_src_len={max_src_len} must be at least 2 (one token and EOS)")
        sources = self.tokenizer.encode_source([lines[i] for i in todo]) if todo else []
        for j, (i, ids) in enumerate(zip(todo, sources)):
            if len(ids) > limit:
                if warn is not None:
                    warn(f"line {i + first_line}: {len(ids)} source tokens, more than {limit}; truncated to {limit}")
                sources[j] = truncate_source(ids, limit)
        return sources

    def _padded(self, rows: Sequence[Sequence[int]]) -> Tensor:
        """A (len(rows), longest) tensor of ids, padded on the right."""
        return pad_sequence([torch.tensor(row, dtype=torch.long) for row in rows], True, self.pad_id)

    def translate(
        self,
        lines: Sequence[str],
        *,
        batch_size: int = 64,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        first_line: int = 1,
    ) -> list[list[tuple[str, float]]]:
        """Translate ``lines``; returns, per line in input order, ``n_best`` ``(text, score)`` pairs, best first.

        Blank lines give ``("", 0.0)`` pairs without a model call. Sources longer than
        ``max_src_len`` tokens (default and upper bound: the model's ``max_positions``) are cut to
        that length, keeping their EOS, and reported through ``warn(message)``, which names the line
        (``lines[0]`` is line ``first_line``). ``progress(done_lines, total_lines)`` is called after each batch.
        """
        n_best = self.decoding.n_best
        results: list[list[tuple[str, float]]] = [[("", 0.0)] * n_best for _ in lines]
        todo = [i for i, line in enumerate(lines) if line.strip()]
        sources = self.source_ids(lines, max_src_len=max_src_len, warn=warn, first_line=first_line, todo=todo)
        done = len(lines) - len(todo)
        for batch in make_batches([len(s) for s in sources], batch_size, max_tokens):
            groups = self.generate(self._padded([sources[j] for j in batch]))
            for j, group in zip(batch, groups):
                pairs = list(zip(self.texts(group), (h.score for h in group)))
                # Beam search has at least n_best hypotheses but for degenerate inputs; repeat the last.
                results[todo[j]] = (pairs + [pairs[-1]] * n_best)[:n_best]
            done += len(batch)
            if progress is not None:
                progress(done, len(lines))
        return results

    def score(
        self,
        sources: Sequence[str],
        targets: Sequence[str],
        *,
        batch_size: int = 64,
        max_tokens: int | None = None,
        max_src_len: int | None = None,
        warn: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        first_line: int = 1,
    ) -> list[PairScore]:
        """Force-decode ``targets[i]`` given ``sources[i]``: one :class:`PairScore` per pair, in input order.

        The target is scored with its EOS (:func:`~seq2seq.decoding.search.sequence_scores`, with
        ``decoding``'s length penalty), so a search's output scores what the search reported; a blank
        target is EOS alone. A blank source is not scored, ``(0.0, 0, 0.0)``, as :meth:`translate`
        gives it 0.0 (with a warning when its target is not blank). Sources are cut as in
        :meth:`translate`, targets longer than the model's positions are cut to them and scored
        without EOS, with a warning. Batches are sorted by the longer side.
        """
        if len(sources) != len(targets):
            raise ConfigError(f"{len(sources)} sources but {len(targets)} targets: give one target per source")
        results = [PairScore(0.0, 0, 0.0)] * len(sources)
        todo = [i for i, line in enumerate(sources) if line.strip()]
        if warn is not None:
            for i, (source, target) in enumerate(zip(sources, targets)):
                if not source.strip() and target.strip():
                    warn(f"line {i + first_line}: blank source with a non-blank target; not scored (0.0)")
        src_ids = self.source_ids(sources, max_src_len=max_src_len, warn=warn, first_line=first_line, todo=todo)
        tgt_ids = self.tokenizer.encode_target([targets[i] for i in todo]) if todo else []
        positions = self.max_positions
        eos = [True] * len(todo)
        for j, ids in enumerate(tgt_ids):
            # Teacher forcing feeds BOS + the tokens before EOS: at most max_positions inputs.
            if len(ids) >= positions:
                if warn is not None:
                    warn(f"line {todo[j] + first_line}: {len(ids)} target tokens, more than {positions - 1}; "
                         f"scored its first {positions} without EOS")
                tgt_ids[j], eos[j] = ids[:positions], False
        done = len(sources) - len(todo)
        lengths = [max(len(s), len(t) + 1) for s, t in zip(src_ids, tgt_ids)]
        alpha, kind = self.decoding.alpha, self.decoding.length_penalty
        was_training = self.net.training
        self.net.eval()
        try:
            for batch in make_batches(lengths, batch_size, max_tokens):
                src = self._padded([src_ids[j] for j in batch]).to(self.device)
                scored = sequence_scores(self.net, src, [tgt_ids[j] for j in batch], [eos[j] for j in batch], alpha, kind)
                for j, (score, log_prob) in zip(batch, scored):
                    results[todo[j]] = PairScore(log_prob, len(tgt_ids[j]) + int(eos[j]), score)
                done += len(batch)
                if progress is not None:
                    progress(done, len(sources))
        finally:
            self.net.train(was_training)
        return results

