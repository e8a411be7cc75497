"""Several language pairs, one model: a target-language tag on the source, one joint vocabulary,
sampling across pairs with a temperature, and scores per pair.

:class:`MultilingualDataModule` composes one :class:`~seq2seq.data.datamodule.Seq2SeqDataModule`
per pair (each reads, filters, tokenizes and caches its own corpus as for a one-pair run) and adds
what several pairs need:

* **One joint sentencepiece vocabulary** trained over every pair's training text (each side's text
  once: en->de and en->fr share their English), with the target-language tags (``<2de>``,
  ``<2fr>``, ...) as user-defined symbols, so a tag is always one piece and never split.
* **The tag on the source** (Johnson et al. 2017; fairseq's ``--encoder-langtok tgt``): every source
  of the pair ``en-de`` starts with the id of ``<2de>``. Each pair's DataModule tokenizes with a view
  of the joint tokenizer (:meth:`Tokenizer.for_target`) that puts the tag first. Why the source and
  not the first decoder token: the decoder then starts from BOS as in every one-pair model, so
  greedy, beam and sampling search, ensembles, forced-decoding scores, the loss and the CTranslate2
  export need no forced prefix and stay unchanged; the tag is part of the input the encoder sees
  (the model learns to attend to it from the first layer), and a translation's score is that of
  its own tokens, not of a forced tag. The language list (``{language: tag}``) is part of the
  tokenizer's state, so every checkpoint knows the languages it translates into.
* **Sampling across pairs with a temperature** (:class:`TemperatureBatchSampler`): pair *i* with
  ``n_i`` training pairs is drawn with probability ``p_i ∝ n_i^(1/T)``: ``T=1`` is proportional to
  the corpus sizes (the plain concatenation), a large ``T`` uniform (small pairs upsampled).
  Batches hold one pair each: every pair's own token-budget sampler forms its batches, so a batch
  pads no more than in a one-pair run, and each pair's length-bucketing, DDP sharding and exact
  resume are those of :class:`~seq2seq.data.sampler.TokenBudgetBatchSampler`. An optimizer step
  mixes pairs with gradient accumulation; consecutive steps alternate pairs in a shuffled order.
* **Validation per pair**: one validation loader walks the pairs' batches in turn (round robin, so
  ``trainer.limit_val_batches=k`` with ``k`` >= the number of pairs still sees every pair); each
  sentence carries a global index (the pair's offset plus its line), and :meth:`score_split` scores
  each pair against its own references with its own BLEU tokenizer: ``val/bleu/en-de``,
  ``val/chrf/en-de``, ... and their unweighted means ``val/bleu`` and ``val/chrf``, which pick the
  best checkpoint as in a one-pair run.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from seq2seq.data.datamodule import ResumableDataLoader, Seq2SeqDataModule, collate
from seq2seq.data.sampler import TokenBudgetBatchSampler, checked_position
from seq2seq.data.tokenizer import Tokenizer, language_tag
from seq2seq.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["MultilingualDataModule", "PairOutputs", "TemperatureBatchSampler", "pair_probabilities"]

_STATE_VERSION = 1


def pair_probabilities(sizes: Sequence[int], temperature: float) -> np.ndarray:
    """``p_i ∝ n_i^(1/T)`` over the pairs' sizes ``n_i`` (``T=inf``: uniform); empty pairs get 0."""
    try:
        temperature = float(temperature)
    except (TypeError, ValueError):
        temperature = float("nan")
    if not temperature > 0:  # also NaN
        raise ConfigError(
            f"data.temperature={temperature}: the sampling temperature must be > 0 (1: proportional to the "
            "pairs' sizes, 5: the usual multilingual choice, large: uniform)"
        )
    sizes = np.asarray(sizes, dtype=np.float64)
    weights = np.where(sizes > 0, sizes ** (1.0 / temperature) if np.isfinite(temperature) else 1.0, 0.0)
    total = weights.sum()
    if total <= 0:
        raise DataError("every language pair has an empty training split")
    return weights / total


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` that sum to ``total`` (largest-remainder rounding); a
    positive weight gets at least 1 when ``total`` allows."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    for i in np.flatnonzero((weights > 0) & (counts == 0)):  # a tiny pair still gets a batch
        donor = int(np.argmax(counts))
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[i] += 1
    return counts


class TemperatureBatchSampler(Sampler[list[int]]):
    """Batches of one pair each, pairs drawn with the temperature's probabilities; resumable.

    Args:
        samplers: each pair's token-budget batch sampler (indices into that pair's dataset; with DDP
            already built for this rank).
        sizes: each pair's number of training pairs ``n_i``.
        temperature: ``T`` of ``p_i ∝ n_i^(1/T)``.
        offsets: where each pair's dataset starts in the concatenated dataset (default: the
            cumulative ``sizes``); yielded indices are ``offsets[i] + index``.
        seed: the order of an epoch depends only on ``(seed, epoch)``.

    An epoch holds as many batches as the pairs' samplers together (``B = Σ b_i``, the plain
    concatenation's count). The share of pair *i* is chosen so that *sentences*, not batches,
    follow ``p_i``: batches are drawn with weights ``p_i · b_i / n_i`` (``n_i / b_i`` sentences per
    batch), i.e. ``c_i`` batches of pair *i* per epoch (rounded, summing to ``B``), in an order
    shuffled from ``(seed, epoch)``. Stratified rather than independent draws: each epoch has the
    exact proportions, and the position in every pair's stream is known in closed form, which makes
    resuming exact. Within an epoch each pair's batches are spread evenly (see :meth:`plan`). Pair *i*'s batches come from its sampler's epochs one after another (an
    upsampled pair goes through its data more than once per epoch, each time in a new order): its
    ``k``-th batch of epoch ``E`` is batch ``E · c_i + k`` of that stream.

    ``shuffle=False`` (``debug=overfit``): the pairs interleave evenly, and every epoch starts each
    pair's stream from its beginning, so the first N batches are the same in every epoch.
    """

    def __init__(
        self,
        samplers: Sequence[TokenBudgetBatchSampler],
        sizes: Sequence[int],
        temperature: float,
        *,
        offsets: Sequence[int] | None = None,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if len(samplers) != len(sizes) or not samplers:
            raise ValueError(f"{len(samplers)} samplers for {len(sizes)} pair sizes")
        self.samplers = list(samplers)
        self.sizes = [int(n) for n in sizes]
        self.temperature = float(temperature)
        self.probabilities = pair_probabilities(self.sizes, self.temperature)
        self.offsets = list(offsets) if offsets is not None else [0, *np.cumsum(self.sizes)[:-1].tolist()]
        self.seed = int(seed)
        self._shuffle = bool(shuffle)
        self.num_replicas = self.samplers[0].num_replicas
        self.batches_per_pair = np.array([len(s) for s in self.samplers], dtype=np.int64)
        self.num_batches = int(self.batches_per_pair.sum())
        sentences = np.maximum(np.asarray(self.sizes, dtype=np.float64), 1.0)
        weights = np.where(self.batches_per_pair > 0, self.probabilities * self.batches_per_pair / sentences, 0.0)
        if weights.sum() <= 0:
            raise DataError("no language pair has a training batch")
        self.counts = _largest_remainder(self.num_batches, weights)
        self.epoch = 0
        self._resume_at = 0
        self._position = 0
        self._cache: dict[int, tuple[int, list[list[int]]]] = {}
        if not self._shuffle:
            self.shuffle = False  # the pairs' samplers too

    @property
    def shuffle(self) -> bool:
        return self._shuffle

    @shuffle.setter
    def shuffle(self, value: bool) -> None:
        """Off (``debug=overfit``'s FixedTrainBatches): also every pair's own order, so the first
        batches are the same in every epoch."""
        self._shuffle = bool(value)
        for sampler in self.samplers:
            sampler.shuffle = self._shuffle
        self._cache = {}

    # -- order ------------------------------------------------------------------------------------
    def plan(self, epoch: int) -> np.ndarray:
        """The pair of every batch of ``epoch``, in order.

        Spread evenly, with jitter: the j-th of pair i's ``c_i`` batches sits at ``(j + u) / c_i`` of
        the epoch, ``u`` uniform in [0, 1) from ``(seed, epoch)`` (0.5 without shuffling). Every
        stretch of the epoch then holds each pair in about its share: no long runs of one pair, whose
        consecutive single-language updates would pull the model towards that language."""
        rng = np.random.default_rng([self.seed, int(epoch), 0x6D6C]) if self.shuffle else None  # a stream of its own
        keys, pairs = [], []
        for i, c in enumerate(self.counts.tolist()):
            if c > 0:
                jitter = rng.random(c) if rng is not None else np.full(c, 0.5)
                keys.append((np.arange(c) + jitter) / c)
                pairs.append(np.full(c, i))
        if not keys:
            return np.zeros(0, dtype=np.int64)
        keys, pairs = np.concatenate(keys), np.concatenate(pairs)
        if rng is not None:  # ties (equal counts, equal jitter) in random order, not by pair
            order = rng.permutation(len(keys))
            keys, pairs = keys[order], pairs[order]
        return pairs[np.argsort(keys, kind="stable")]

    def _pair_batch(self, pair: int, number: int) -> list[int]:
        """Batch ``number`` (from 0) of ``pair``'s endless stream: its sampler's epochs in turn."""
        sampler = self.samplers[pair]
        epoch, j = divmod(number, len(sampler))
        cached = self._cache.get(pair)
        if cached is None or cached[0] != epoch:
            sampler.set_epoch(epoch)
            cached = (epoch, list(iter(sampler)))
            self._cache[pair] = cached
        return cached[1][j]

    # -- Sampler API ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration; the epoch a checkpoint was saved in keeps its position."""
        epoch = int(epoch)
        if epoch != self.epoch:
            self.epoch, self._resume_at, self._position = epoch, 0, 0

    def __iter__(self) -> Iterator[list[int]]:
        start, self._resume_at = self._resume_at, 0
        plan = self.plan(self.epoch)
        done = np.bincount(plan[:start], minlength=len(self.counts))
        cursors = (self.epoch * self.counts if self.shuffle else np.zeros_like(self.counts)) + done
        self._position = start
        for pair in plan[start:].tolist():
            batch = self._pair_batch(pair, int(cursors[pair]))
            cursors[pair] += 1
            self._position += 1
            offset = self.offsets[pair]
            yield [offset + i for i in batch]

    def __len__(self) -> int:
        return self.num_batches

    # -- resuming ---------------------------------------------------------------------------------
    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """The position in the current epoch (as :meth:`TokenBudgetBatchSampler.state_dict`)."""
        return {
            "version": _STATE_VERSION,
            "kind": "temperature",
            "epoch": self.epoch,
            "position": self._position if batches_consumed is None else int(batches_consumed),
            "seed": self.seed,
            "num_replicas": self.num_replicas,
            "sizes": list(self.sizes),
            "temperature": self.temperature,
            "num_batches": self.num_batches,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved epoch after its consumed batches."""
        position = checked_position(
            state, "multilingual batch sampler",
            (("kind", "temperature"), ("sizes", list(self.sizes)), ("temperature", self.temperature),
             ("num_replicas", self.num_replicas), ("num_batches", self.num_batches)),
            "the same pairs, data.temperature, data.max_tokens and number of devices", self.num_batches,
        )
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])
        self._resume_at = self._position = position


class RoundRobinBatchSampler(Sampler[list[int]]):
    """Evaluation batches of several pairs, taken in turn (one of each pair, then the next of each),
    indices shifted by each pair's offset; deterministic."""

    def __init__(self, samplers: Sequence[Sampler], offsets: Sequence[int]):
        self.samplers, self.offsets = list(samplers), list(offsets)

    def __iter__(self) -> Iterator[list[int]]:
        streams = [(iter(s), offset) for s, offset in zip(self.samplers, self.offsets)]
        while streams:
            alive = []
            for stream, offset in streams:
                batch = next(stream, None)
                if batch is not None:
                    alive.append((stream, offset))
                    yield [offset + i for i in batch]
            streams = alive

    def __len__(self) -> int:
        return sum(len(s) for s in self.samplers)


@dataclass
class PairOutputs:
    """One pair's hypotheses with their reference streams, target language and BLEU tokenizer."""

    hypotheses: list[str]
    references: list[list[str]]
    tgt_lang: str | None
    bleu_tokenize: str | None


class _Shifted(Dataset):
    """A pair's evaluation dataset whose corpus indices are shifted by the pair's offset."""

    def __init__(self, dataset: Dataset, offset: int):
        self.dataset, self.offset = dataset, int(offset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        index, src, tgt = self.dataset[i]
        return self.offset + index, src, tgt


class MultilingualDataModule(L.LightningDataModule):
    """Several language pairs for one model; see the module docstring.

    Args:
        pairs: the pairs, by name (the metrics' suffix, ``en-de``): a mapping ``{name: options}``
            whose options (``src_lang``, ``tgt_lang``, ``root``, ``max_train_pairs``, any
            :class:`Seq2SeqDataModule` argument) override the shared ones, or a list of names
            ``SRC-TGT``. A name ``SRC-TGT`` gives the languages when the options do not.
        temperature: ``T`` of the sampling across pairs, ``p_i ∝ n_i^(1/T)``.
        tokenizer: a multilingual parent's tokenizer (fine-tuning): used as is; it must have a tag
            for every target language.
        vocab_size, joint_vocab, spm_model_type: the one joint sentencepiece model (``joint_vocab``
            must be true).
        src_lang, tgt_lang: default languages of pairs that name neither (usually null).
        shared: every other :class:`Seq2SeqDataModule` argument (``root``, ``splits``, ``format``,
            ``max_tokens``, ``max_src_len``, ``cache_dir``, ``seed``, ...), given to each pair.
    """

    def __init__(
        self,
        pairs: Mapping[str, Mapping | None] | Sequence[str],
        temperature: float = 5.0,
        tokenizer: Tokenizer | None = None,
        vocab_size: int = 8000,
        joint_vocab: bool = True,
        spm_model_type: str = "bpe",
        src_lang: str | None = None,
        tgt_lang: str | None = None,
        **shared: Any,
    ):
        super().__init__()
        if not joint_vocab:
            raise ConfigError(
                "data.joint_vocab=false: a multilingual model has one joint vocabulary over every pair (its "
                "target-language tags are pieces of it); set data.joint_vocab=true"
            )
        self.temperature = float(temperature)
        pair_probabilities([1], self.temperature)  # checks the temperature now
        self.vocab_size, self.spm_model_type = vocab_size, spm_model_type
        self.joint_vocab = True
        self.pairs: dict[str, Seq2SeqDataModule] = {}
        seed = int(shared.get("seed", 1234))
        for i, (name, options) in enumerate(self._pair_options(pairs, src_lang, tgt_lang)):
            # Each pair's batches are shuffled with a seed of its own: pairs sharing a source side
            # (en-de, en-fr) would otherwise be cut and ordered alike.
            # A pair's null option keeps the shared value (the config lists keys to make overriding easy).
            options = {**shared, **{k: v for k, v in options.items() if v is not None}, "seed": seed + i,
                       "tokenizer": None}
            try:
                self.pairs[name] = Seq2SeqDataModule(**options)
            except TypeError as err:
                raise ConfigError(f"data.pairs.{name}: {err}") from None
        first = next(iter(self.pairs.values()))
        self.max_tokens = first.max_tokens
        self.max_sentences = first.max_sentences
        self.eval_max_tokens = first.eval_max_tokens
        self.max_src_len = first.max_src_len
        self.pad_to_multiple = first.pad_to_multiple
        self.num_workers = first.num_workers
        self.cache_dir = first.cache_dir
        self.seed = seed
        self.root = first.root
        source_languages = {dm.src_lang for dm in self.pairs.values()}
        self.src_lang = source_languages.pop() if len(source_languages) == 1 else None
        # Several target languages: BLEU's tokenizer is chosen per pair (split_by_pair), not here.
        self.tgt_lang, self.bleu_tokenize = None, None
        self.target_tags = {p.tgt_lang: language_tag(p.tgt_lang) for p in self.pairs.values()}
        self.tokenizer: Tokenizer | None = self._check_tokenizer(tokenizer) if tokenizer is not None else None
        self.train_sampler: TemperatureBatchSampler | None = None
        self.filter_counts: dict[str, int] = {}
        self.datasets: dict = {}  # per pair: self.pairs[name].datasets
        self._offsets: dict[str, list[int]] = {}
        self._ready = False

    # ------------------------------------------------------------------ pairs
    @staticmethod
    def _pair_options(pairs, src_lang, tgt_lang) -> list[tuple[str, dict]]:
        if isinstance(pairs, str) or not pairs:
            raise ConfigError("data.pairs names no language pair: give e.g. {en-de: {}, en-fr: {}} or [en-de, en-fr]")
        items = list(pairs.items()) if isinstance(pairs, Mapping) else [(name, {}) for name in pairs]
        out, seen = [], set()
        for name, options in items:
            name, options = str(name), dict(options or {})
            parts = name.split("-")
            guess = (parts[0], parts[1]) if len(parts) == 2 and all(parts) else (None, None)
            src = options.pop("src_lang", None) or guess[0] or src_lang
            tgt = options.pop("tgt_lang", None) or guess[1] or tgt_lang
            if not src or not tgt:
                raise ConfigError(
                    f"data.pairs.{name}: no source or target language; name the pair SRC-TGT (en-de) or give "
                    "src_lang and tgt_lang"
                )
            if (src, tgt, options.get("root")) in seen:
                raise ConfigError(f"data.pairs.{name}: the pair {src}-{tgt} is listed twice")
            seen.add((src, tgt, options.get("root")))
            out.append((name, {**options, "src_lang": src, "tgt_lang": tgt}))
        return out

    def _check_tokenizer(self, tokenizer: Tokenizer) -> Tokenizer:
        missing = [lang for lang in self.target_tags if lang not in tokenizer.target_tags]
        if missing:
            has = ", ".join(tokenizer.target_tags) or "none"
            raise ConfigError(
                f"the tokenizer this run was given (init_from's) has no target-language tag for {', '.join(missing)} "
                f"(its target languages: {has}); fine-tune a multilingual model on pairs into its own languages"
            )
        return tokenizer

    @property
    def pair_names(self) -> list[str]:
        return list(self.pairs)

    def pair(self, tgt_lang: str) -> tuple[str, Seq2SeqDataModule]:
        """The one pair into ``tgt_lang`` (its name and DataModule), or a :class:`ConfigError`."""
        found = [(name, dm) for name, dm in self.pairs.items() if dm.tgt_lang == tgt_lang]
        if len(found) != 1:
            targets = ", ".join(dict.fromkeys(dm.tgt_lang for dm in self.pairs.values()))
            why = "is not a target language of" if not found else "is the target of several pairs in"
            raise ConfigError(f"tgt_lang={tgt_lang} {why} this data config (pairs {', '.join(self.pairs)}; "
                              f"target languages {targets})")
        return found[0]

    # ------------------------------------------------------------------ preparation
    def _tokenizer(self) -> Tokenizer:
        """The joint tokenizer over every pair's training text (each side's text once), with the tags."""
        if self.tokenizer is not None:
            return self.tokenizer
        sources, targets, seen = [], [], set()
        for dm in self.pairs.values():
            src, tgt = dm.texts("train")
            for lang, texts, into in ((dm.src_lang, src, sources), (dm.tgt_lang, tgt, targets)):
                key = hashlib.sha256(("\n".join(texts)).encode("utf-8", "surrogatepass")).hexdigest()
                if (lang, key) not in seen:  # en of en-de and en of en-fr: the same text, counted once
                    seen.add((lang, key))
                    into.extend(texts)
        return Tokenizer.load_or_train(self.cache_dir, sources, targets, self.vocab_size, True, self.spm_model_type,
                                       target_tags=self.target_tags)

    def _hand_over(self, tokenizer: Tokenizer) -> None:
        for dm in self.pairs.values():
            dm.tokenizer = tokenizer.for_target(dm.tgt_lang)

    def prepare_data(self) -> None:
        tokenizer = self._tokenizer()
        self._hand_over(tokenizer)
        for dm in self.pairs.values():
            dm.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        if self.tokenizer is None:
            self.tokenizer = self._tokenizer()
        self._hand_over(self.tokenizer)
        for dm in self.pairs.values():
            dm.setup(stage)
        totals: dict[str, int] = {}
        for dm in self.pairs.values():
            for key, value in dm.filter_counts.items():
                totals[key] = totals.get(key, 0) + int(value)
        self.filter_counts = totals
        for split in ("val", "test"):
            if all(split in dm.datasets for dm in self.pairs.values()):
                self._offsets[split] = [0, *np.cumsum([len(dm.datasets[split]) for dm in self.pairs.values()]).tolist()]
        sizes = self.train_sizes
        probabilities = pair_probabilities(sizes, self.temperature)
        log.info("Language pairs (temperature %s): %s", self.temperature, ", ".join(
            f"{name} {n} pairs (p={p:.3f})" for name, n, p in zip(self.pairs, sizes, probabilities)))
        self._ready = True

    @property
    def train_sizes(self) -> list[int]:
        """Each pair's number of training pairs (after filtering), the ``n_i`` of the temperature."""
        return [len(dm.datasets["train"]) for dm in self.pairs.values()]

    @property
    def has_test(self) -> bool:
        """Whether every pair has a test split (known after ``setup``)."""
        return "test" in self._offsets

    # ------------------------------------------------------------------ loaders
    @property
    def _collate(self) -> Callable:
        return collate if self.pad_to_multiple == 1 else partial(collate, pad_to_multiple=self.pad_to_multiple)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer else (1, 0)

    def _train_batches_consumed(self) -> int | None:
        trainer = self.trainer
        if trainer is None:
            return None
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.started)

    def _loader_options(self) -> dict:
        return dict(collate_fn=self._collate, num_workers=self.num_workers, pin_memory=torch.cuda.is_available(),
                    persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        datasets = [dm.datasets["train"] for dm in self.pairs.values()]
        samplers = [
            TokenBudgetBatchSampler(ds.data.src_lengths, ds.data.tgt_lengths + 1, self.max_tokens,  # + BOS/EOS
                                    max_sentences=self.max_sentences, shuffle=True, seed=dm.seed,
                                    num_replicas=world, rank=rank)
            for dm, ds in zip(self.pairs.values(), datasets)
        ]
        self.train_sampler = TemperatureBatchSampler(samplers, [len(ds) for ds in datasets], self.temperature,
                                                     seed=self.seed)
        return ResumableDataLoader(ConcatDataset(datasets), batch_sampler=self.train_sampler,
                                   batches_consumed=self._train_batches_consumed, **self._loader_options())

    def _eval_loader(self, split: str) -> DataLoader:
        world, rank = self._ranks()
        offsets = self._offsets[split]
        datasets, samplers = [], []
        for dm, offset in zip(self.pairs.values(), offsets):
            ds = dm.datasets[split]
            datasets.append(_Shifted(ds, offset))
            samplers.append(TokenBudgetBatchSampler(ds.data.src_lengths, ds.data.tgt_lengths + 1, self.eval_max_tokens,
                                                    shuffle=False, seed=dm.seed, num_replicas=world, rank=rank))
        sampler = RoundRobinBatchSampler(samplers, offsets[:-1])
        return DataLoader(ConcatDataset(datasets), batch_sampler=sampler, **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        if not self.has_test:
            missing = [name for name, dm in self.pairs.items() if "test" not in dm.datasets]
            raise DataError(f"no test split for the pair(s) {', '.join(missing)}")
        return self._eval_loader("test")

    # ------------------------------------------------------------------ scoring
    def pair_of_index(self, split: str, index: int) -> str:
        """The pair a global evaluation index of ``split`` belongs to."""
        offsets = self._offsets[split]
        return self.pair_names[int(np.searchsorted(offsets, index, side="right")) - 1]

    def split_by_pair(self, split: str, indices: Sequence[int], hypotheses: Sequence[str]) -> dict[str, PairOutputs]:
        """Hypotheses of ``split`` (by global index) grouped by pair, each with its references (of the
        decoded sentences only), target language and BLEU tokenizer: what
        :func:`seq2seq.metrics.text_metrics.score_by_group` scores, pair by pair and their means. A
        pair none of whose sentences was decoded (``trainer.limit_val_batches``) is left out, with a warning."""
        offsets = self._offsets[split]
        names = self.pair_names
        by_pair: dict[str, tuple[list[int], list[str]]] = {name: ([], []) for name in names}
        for index, hypothesis in zip(indices, hypotheses):
            k = int(np.searchsorted(offsets, index, side="right")) - 1
            by_pair[names[k]][0].append(int(index) - offsets[k])
            by_pair[names[k]][1].append(hypothesis)
        out = {}
        for name, dm in self.pairs.items():
            local, hyps = by_pair[name]
            if not hyps:
                log.warning("No %s sentence of the pair %s was decoded (trainer.limit_%s_batches?): it is left out "
                            "of the mean", split, name, split)
                continue
            references = [[stream[i] for i in local] for stream in dm.reference_streams(split)]
            out[name] = PairOutputs(hyps, references, dm.tgt_lang, dm.bleu_tokenize)
        return out

    # ------------------------------------------------------------------ texts (samples, eval)
    def _concat(self, split: str, read: Callable[[Seq2SeqDataModule], list]) -> list:
        return [item for dm in self.pairs.values() for item in read(dm)]

    def sources(self, split: str) -> list[str]:
        """Every pair's raw sources of ``split`` in global-index order, each shown with its tag."""
        return self._concat(split, lambda dm: [f"{dm.tokenizer.source_tag if dm.tokenizer else language_tag(dm.tgt_lang)} "
                                               f"{s}" for s in dm.sources(split)])

    def references(self, split: str) -> list[str]:
        """Every pair's references of ``split`` (first stream), in global-index order."""
        return self._concat(split, lambda dm: dm.references(split))

    def reference_streams(self, split: str) -> list[list[str]]:
        """Every pair's reference streams of ``split`` joined (pairs must have as many references)."""
        streams = [dm.reference_streams(split) for dm in self.pairs.values()]
        if len({len(s) for s in streams}) != 1:
            raise DataError(f"the pairs have different numbers of {split} references; score them per pair")
        return [[ref for pair in streams for ref in pair[k]] for k in range(len(streams[0]))]

    def texts(self, split: str) -> tuple[list[str], list[str]]:
        return self.sources(split), self.references(split)
