"""The LightningDataModule serving one or several parallel corpora (and document/summary pairs).

A data config names one corpus (its keys: ``root``, ``src_lang``, ``format``, ...) or several
language pairs (``pairs``, see :mod:`seq2seq.data.multilingual`); either way the DataModule holds
:class:`~seq2seq.data.corpus.Corpus` objects, one per pair (one pair is a group of one), and owns
what they share: the tokenizer, batching and the loaders. Several pairs add target-language tags
and temperature sampling, nothing else.

``prepare_data`` (rank 0 only) materializes each corpus (generates the embedded one, or
downloads), trains the sentencepiece tokenizer once on the training split(s) (streamed, sampled
above :data:`~seq2seq.data.tokenizer.SAMPLE_SENTENCES`: :class:`~seq2seq.data.tokenizer.TrainingText`)
and tokenizes every split into the on-disk cache; ``setup`` (every rank) maps them. Training
batches come from a token-budget, length-bucketed sampler; validation and test batches are sorted
by length and carry each sentence's index so that outputs can be put back in corpus order.

The test split is optional: published corpora often ship without test references, and such a run
trains and validates, and :attr:`Seq2SeqDataModule.has_test` is False.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from seq2seq.data.corpus import SPLITS, Corpus, CorpusOptions, Filtering, PairDataset, SplitNames
from seq2seq.data.multilingual import RoundRobinBatchSampler, TemperatureBatchSampler, pair_probabilities
from seq2seq.data.progress import timed
from seq2seq.data.sampler import TokenBudgetBatchSampler
from seq2seq.data.sources import CorpusFormat
from seq2seq.data.storage import TokenizedSplit
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, TrainingText, language_tag
from seq2seq.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class TokenizerOptions:
    """The sentencepiece model trained on the training split(s); unused when a tokenizer is handed
    over (a fine-tuning run's parent's)."""

    vocab_size: int = 8000
    joint_vocab: bool = True
    spm_model_type: str = "unigram"


@dataclass
class Batching:
    """How batches are formed: ``max_tokens`` per training batch, padding included (fairseq's
    ``--max-tokens``), at most ``max_sentences``; ``eval_max_tokens`` for validation and test
    (None: 2 x ``max_tokens``); lengths padded up to a multiple of ``pad_to_multiple`` (see
    :func:`collate`); ``num_workers`` loader processes; ``seed`` of the shuffling."""

    max_tokens: int = 4096
    max_sentences: int | None = None
    eval_max_tokens: int | None = None
    pad_to_multiple: int = 1
    num_workers: int = 0
    seed: int = 1234

    def __post_init__(self) -> None:
        # Checked here, before any corpus is read or tokenizer trained.
        for key in ("max_tokens", "eval_max_tokens", "max_sentences"):
            value = getattr(self, key)
            if (value is None and key == "max_tokens") or (
                value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0)
            ):
                raise ConfigError(
                    f"data.{key} must be a positive number{'' if key == 'max_tokens' else ' or null'}, "
                    f"got {value!r}; e.g. data.{key}={4096 if 'tokens' in key else 64}"
                )
        self.eval_max_tokens = self.eval_max_tokens or 2 * self.max_tokens
        self.pad_to_multiple = max(1, int(self.pad_to_multiple or 1))


def collate(items: list, pad_to_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad a list of (index, src, tgt) into the batch the LightningModule expects.

    ``src`` (B, S) ends each sentence with EOS; ``tgt_in`` (B, T) = BOS + target and
    ``tgt_out`` (B, T) = target + EOS (teacher forcing); ``index`` (B,) locates each sentence in
    its split. Every row is right-padded; ``src_index`` and ``tgt_index`` are the flat positions of
    the real tokens of ``src`` and ``tgt_out``, found here on the host so that a GPU step needs no
    sync for them (the training fast path runs on those tokens only). ``pad_to_multiple``: S and T
    are padded up to a multiple of it (fewer distinct shapes, aligned for tensor cores).
    """
    batch = len(items)
    m = max(1, int(pad_to_multiple))
    src_len = m * math.ceil(max(len(s) for _, s, _ in items) / m)
    tgt_len = m * math.ceil((max(len(t) for _, _, t in items) + 1) / m)
    src = np.full((batch, src_len), PAD_ID, dtype=np.int64)
    tgt_in = np.full((batch, tgt_len), PAD_ID, dtype=np.int64)
    tgt_out = np.full((batch, tgt_len), PAD_ID, dtype=np.int64)
    for row, (_, s, t) in enumerate(items):
        src[row, : len(s)] = s
        tgt_in[row, 0] = BOS_ID
        tgt_in[row, 1 : len(t) + 1] = t
        tgt_out[row, : len(t)] = t
        tgt_out[row, len(t)] = EOS_ID
    return {
        "src": torch.from_numpy(src),
        "tgt_in": torch.from_numpy(tgt_in),
        "tgt_out": torch.from_numpy(tgt_out),
        "index": torch.tensor([i for i, _, _ in items], dtype=torch.long),
        "src_index": torch.from_numpy(np.flatnonzero(src != PAD_ID)),
        "tgt_index": torch.from_numpy(np.flatnonzero(tgt_out != PAD_ID)),
    }


class ResumableDataLoader(DataLoader):
    """A training ``DataLoader`` whose position in the epoch is saved in checkpoints.

    Lightning stores ``state_dict()`` of every train dataloader that has one and calls
    ``load_state_dict`` when resuming, before the first batch is drawn; both delegate to the batch
    sampler, so a resumed loader yields the epoch's remaining batches only (what Lightning's epoch
    loop expects). The position saved is what the training loop consumed (``batches_consumed()``),
    not what the sampler handed out: worker processes fetch batches ahead of the training step.
    """

    def __init__(self, *args, batches_consumed: Callable[[], int | None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_consumed = batches_consumed

    def state_dict(self) -> dict:
        consumed = self.batches_consumed() if self.batches_consumed is not None else None
        return {"batch_sampler": self.batch_sampler.state_dict(batches_consumed=consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state["batch_sampler"])


def _plain(value: Any) -> Any:
    """Config containers (Hydra passes DictConfig/ListConfig) as dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value


def _take(cls: type, values: dict) -> dict:
    """The entries of ``values`` that are fields of dataclass ``cls``, removed from it."""
    return {f.name: values.pop(f.name) for f in fields(cls) if f.name in values}


def corpus_options(values: Mapping[str, Any], where: str = "data") -> CorpusOptions:
    """:class:`CorpusOptions` from a data config's flat corpus keys (``where`` names them in errors)."""
    values = dict(values)
    fmt = _take(CorpusFormat, values)
    fmt.setdefault("format", "lines")
    fmt["src_field"] = fmt.get("src_field") or values.get("src_lang", "src")
    fmt["tgt_field"] = fmt.get("tgt_field") or values.get("tgt_lang", "tgt")
    extra = values.pop("extra_references", None) or {}
    splits, filtering = SplitNames(**(values.pop("splits", None) or {})), Filtering(**_take(Filtering, values))
    try:
        return CorpusOptions(
            **values, format=CorpusFormat(**fmt), filtering=filtering, splits=splits,
            extra_references={str(split): [files] if isinstance(files, str) else list(files or ())
                              for split, files in extra.items()},
        )
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None


def pair_corpora(pairs: Mapping[str, Mapping | None] | Sequence[str], keys: dict) -> dict[str, CorpusOptions]:
    """:class:`CorpusOptions` of every pair of a data config's ``pairs`` (a mapping ``{name: options}``
    or a list of names) over the shared corpus ``keys``, which a pair's non-null options override. A
    name ``SRC-TGT`` gives the languages the options do not (then the shared ``src_lang``/``tgt_lang``);
    a pair listed twice, or a pair setting a key every pair shares, is an error."""
    if isinstance(pairs, str) or not pairs:
        raise ConfigError("data.pairs names no language pair: give e.g. {en-de: {}, en-fr: {}} or [en-de, en-fr]")
    items = list(pairs.items()) if isinstance(pairs, Mapping) else [(name, {}) for name in pairs]
    src_lang, tgt_lang = keys.pop("src_lang", None), keys.pop("tgt_lang", None)
    shared_only = {f.name for f in (*fields(TokenizerOptions), *fields(Batching))} | {"cache_dir", "prepare_workers"}
    corpora, seen = {}, set()
    for name, options in items:
        name = str(name)
        own = {k: v for k, v in dict(options or {}).items() if v is not None}
        parts = name.split("-")
        guess = parts if len(parts) == 2 and all(parts) else (None, None)
        src = own.get("src_lang") or guess[0] or src_lang
        tgt = own.get("tgt_lang") or guess[1] or tgt_lang
        if not src or not tgt:
            raise ConfigError(
                f"data.pairs.{name}: no source or target language; name the pair SRC-TGT (en-de) or give "
                "src_lang and tgt_lang"
            )
        if (src, tgt, own.get("root")) in seen:
            raise ConfigError(f"data.pairs.{name}: the pair {src}-{tgt} is listed twice")
        seen.add((src, tgt, own.get("root")))
        for key in sorted(set(own) & shared_only):
            raise ConfigError(f"data.pairs.{name}.{key}: every pair shares it; set data.{key} instead")
        corpora[name] = corpus_options({**keys, **own, "src_lang": src, "tgt_lang": tgt}, f"data.pairs.{name}")
    return corpora


# What run folders written before from_config name as the data config's _target_ (eval reads them).
LEGACY_TARGETS = {"seq2seq.data.datamodule.Seq2SeqDataModule": "seq2seq.data.datamodule.Seq2SeqDataModule.from_config",
                  "seq2seq.data.multilingual.MultilingualDataModule": "seq2seq.data.datamodule.Seq2SeqDataModule.from_config"}


class Seq2SeqDataModule(L.LightningDataModule):
    """Parallel text for sequence-to-sequence training; see the module docstring.

    ``corpora``: ``{None: options}`` for one corpus, ``{"en-de": ..., ...}`` for the pairs of a
    multilingual model (the name is the metrics' suffix, ``val/bleu/en-de``); :meth:`from_config`
    builds them and the other blocks from a data config's flat keys. ``prepare_workers``: see
    :class:`~seq2seq.data.corpus.Corpus`; ``temperature``: ``T`` of the sampling across pairs,
    ``p_i ∝ n_i^(1/T)``; ``tokenizer``: tokenize every split with this one (a fine-tuning run's
    parent's) instead of training a sentencepiece model.
    """

    def __init__(
        self,
        corpora: Mapping[str | None, CorpusOptions],
        tokenizer_options: TokenizerOptions | None = None,
        batching: Batching | None = None,
        *,
        cache_dir: str | Path = ".cache/seq2seq",
        prepare_workers: int | None = None,
        temperature: float = 5.0,
        tokenizer: Tokenizer | None = None,
    ):
        super().__init__()
        if not corpora:
            raise ConfigError("the data config names no corpus")
        self.multilingual = list(corpora) != [None]
        self.tokenizer_options = tokenizer_options or TokenizerOptions()
        if self.multilingual and not self.tokenizer_options.joint_vocab:
            raise ConfigError(
                "data.joint_vocab=false: a multilingual model has one joint vocabulary over every pair (its "
                "target-language tags are pieces of it); set data.joint_vocab=true"
            )
        self.batching = batching or Batching()
        self.temperature = float(temperature)
        if self.multilingual:
            pair_probabilities([1], self.temperature)  # checks the temperature now
        self.cache_dir = Path(cache_dir)
        self._times: dict[str, float] = {}
        self.corpora = {name: Corpus(options, cache_dir, prepare_workers, self._times) for name, options in corpora.items()}
        self.target_tags = {c.tgt_lang: language_tag(c.tgt_lang) for c in self.corpora.values()} if self.multilingual else {}
        missing = [lang for lang in self.target_tags if tokenizer is not None and lang not in tokenizer.target_tags]
        if missing:
            raise ConfigError(
                f"the tokenizer this run was given (init_from's) has no target-language tag for {', '.join(missing)} "
                f"(its target languages: {', '.join(tokenizer.target_tags) or 'none'}); fine-tune a multilingual "
                "model on pairs into its own languages"
            )
        self.tokenizer: Tokenizer | None = tokenizer
        self._given_tokenizer = tokenizer is not None
        self.train_sampler: TokenBudgetBatchSampler | TemperatureBatchSampler | None = None
        self.filter_counts: dict[str, int] = {}
        self._offsets: dict[str, list[int]] = {}  # per evaluation split: where each corpus starts
        self._vocab_warned = False
        self._ready = False

    @classmethod
    def from_config(cls, *, pairs: Mapping | Sequence[str] | None = None, temperature: float = 5.0,
                    tokenizer: Tokenizer | None = None, cache_dir: str = ".cache/seq2seq",
                    prepare_workers: int | None = None, **keys: Any) -> Seq2SeqDataModule:
        """From a data config's flat keys (``conf/data/base.yaml`` lists them): the tokenizer and
        batching keys are shared; the others describe the corpus, or, with ``pairs``, every pair,
        whose own options override them (a null option keeps the shared value)."""
        keys = _plain(keys)
        tokenizer_options = TokenizerOptions(**_take(TokenizerOptions, keys))
        batching = Batching(**_take(Batching, keys))
        corpora = {None: corpus_options(keys)} if pairs is None else pair_corpora(_plain(pairs), keys)
        return cls(corpora, tokenizer_options, batching, cache_dir=cache_dir, prepare_workers=prepare_workers,
                   temperature=temperature, tokenizer=tokenizer)

    # ------------------------------------------------------------------ about the corpora
    @property
    def _only(self) -> Corpus | None:
        return self.corpora[None] if not self.multilingual else None

    @property
    def root(self) -> Path:
        """The (first) corpus's folder."""
        return next(iter(self.corpora.values())).root

    @property
    def tgt_lang(self) -> str | None:
        """The target language of a one-corpus config (None for several pairs: each has its own)."""
        return self._only.tgt_lang if self._only else None

    @property
    def bleu_tokenize(self) -> str | None:
        return self._only.bleu_tokenize if self._only else None

    @property
    def datasets(self) -> dict[str, PairDataset]:
        """The one corpus's datasets per split (several pairs: ``corpora[name].datasets``)."""
        return self._only.datasets if self._only else {}

    @property
    def prepare_times(self) -> dict[str, float]:
        """Seconds per preparation step in this process (hashing the training split(s), sentencepiece,
        tokenizing each split; cache hits included): for benchmarks and logs."""
        return dict(self._times)

    def pair(self, tgt_lang: str) -> tuple[str | None, Corpus]:
        """The one corpus into ``tgt_lang`` (its name and itself), or a :class:`ConfigError`."""
        found = [(name, c) for name, c in self.corpora.items() if c.tgt_lang == tgt_lang]
        if len(found) != 1:
            targets = ", ".join(dict.fromkeys(c.tgt_lang for c in self.corpora.values()))
            why = "is not a target language of" if not found else "is the target of several pairs in"
            raise ConfigError(f"tgt_lang={tgt_lang} {why} this data config (pairs {', '.join(map(str, self.corpora))}; "
                              f"target languages {targets})")
        return found[0]

    def _tokenizer_of(self, corpus: Corpus, tokenizer: Tokenizer) -> Tokenizer:
        """What ``corpus`` tokenizes with: a multilingual pair's sources start with its target's tag."""
        return tokenizer.for_target(corpus.tgt_lang) if self.multilingual else tokenizer

    # ------------------------------------------------------------------ preparation
    def training_tokenizer(self) -> Tokenizer:
        """The tokenizer every corpus is encoded with: the one handed over, else the one trained on
        every corpus's training split (:class:`TrainingText`), from the cache once trained."""
        if self.tokenizer is not None:  # handed over (fine-tuning): never retrained
            return self.tokenizer
        with timed(self._times, "read_train"):
            text = TrainingText([c.source("train") for c in self.corpora.values()], self.target_tags)
        opts = self.tokenizer_options
        with timed(self._times, "sentencepiece"):
            tokenizer = Tokenizer.cached_or_trained(self.cache_dir, text, opts.vocab_size, opts.joint_vocab,
                                                    opts.spm_model_type)
        reached = (tokenizer.src_vocab_size,) if tokenizer.joint else (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        if min(reached) < opts.vocab_size and not self._vocab_warned:
            self._vocab_warned = True  # once per DataModule, not in both prepare_data and setup
            log.warning(
                "data.vocab_size=%d, but sentencepiece reached only %s pieces on the training split of %s (too "
                "little text for more); the model's vocabulary has %s. Set data.vocab_size=%d or lower to "
                "silence this.", opts.vocab_size, " and ".join(map(str, reached)) + (
                    " (source, target)" if len(reached) > 1 else ""), self.root,
                "that size" if len(reached) == 1 else "those sizes", min(reached),
            )
        return tokenizer

    def prepare_data(self) -> None:
        try:
            for corpus in self.corpora.values():
                corpus.materialize()
            tokenizer = self.training_tokenizer()
            for corpus in self.corpora.values():
                for split in SPLITS:  # into the cache
                    corpus.tokenized(self._tokenizer_of(corpus, tokenizer), split)
        finally:
            for corpus in self.corpora.values():
                corpus.release()

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        try:
            if self.tokenizer is None:
                self.tokenizer = self.training_tokenizer()
            for corpus in self.corpora.values():
                corpus.setup(self._tokenizer_of(corpus, self.tokenizer), self._given_tokenizer)
        finally:
            for corpus in self.corpora.values():
                corpus.release()
        counts = [c.filter_counts for c in self.corpora.values()]
        self.filter_counts = {key: sum(int(c.get(key, 0)) for c in counts) for key in counts[0]}
        for split in ("val", "test"):
            if all(split in c.datasets for c in self.corpora.values()):
                self._offsets[split] = [0, *np.cumsum([len(c.datasets[split]) for c in self.corpora.values()]).tolist()]
        if self.multilingual:
            sizes = self.train_sizes
            log.info("Language pairs (temperature %s): %s", self.temperature, ", ".join(
                f"{name} {n} pairs (p={p:.3f})"
                for name, n, p in zip(self.corpora, sizes, pair_probabilities(sizes, self.temperature))))
        self._ready = True

    def truncation_counts(self) -> dict[str, int]:
        """The training filter's counts (``truncated``, ``too_long``, ...) and the val/test sources cut
        to ``max_src_len`` (``val_truncated``, ``test_truncated``), over every corpus."""
        counts = dict(self.filter_counts)
        for split in ("val", "test"):
            cut = [int((c.datasets[split].data.src_lengths > c.datasets[split].max_src_len).sum())
                   for c in self.corpora.values() if split in c.datasets]
            if cut:
                counts[f"{split}_truncated"] = sum(cut)
        return counts

    @property
    def train_sizes(self) -> list[int]:
        """Each corpus's number of training pairs (after filtering), the ``n_i`` of the temperature."""
        return [len(c.datasets["train"]) for c in self.corpora.values()]

    # ------------------------------------------------------------------ loaders
    @property
    def has_test(self) -> bool:
        """Whether every corpus has a test split (known after ``setup``)."""
        return "test" in self._offsets

    @property
    def collate(self) -> Callable:
        pad = self.batching.pad_to_multiple
        return collate if pad == 1 else partial(collate, pad_to_multiple=pad)

    def _sampler(self, dataset: PairDataset, train: bool, seed: int, max_tokens: int | None = None):
        # Under DDP every rank builds the same batch list and keeps its share (the Trainer runs
        # with use_distributed_sampler=False, so it does not wrap this sampler itself).
        trainer, b = self.trainer, self.batching
        return TokenBudgetBatchSampler(
            dataset.data.src_lengths, dataset.data.tgt_lengths + 1,  # + BOS/EOS
            max_tokens or (b.max_tokens if train else b.eval_max_tokens),
            max_sentences=b.max_sentences if train else None, shuffle=train, seed=seed,
            num_replicas=trainer.world_size if trainer else 1, rank=trainer.global_rank if trainer else 0,
        )

    def _loader_options(self) -> dict:
        workers = self.batching.num_workers
        # A generator of its own: creating the loader's iterator then draws its base seed from it,
        # not from torch's global generator, whose state (dropout) a resumed run must continue exactly.
        return dict(collate_fn=self.collate, num_workers=workers, pin_memory=torch.cuda.is_available(),
                    persistent_workers=workers > 0, generator=torch.Generator().manual_seed(self.batching.seed))

    def _train_batches_consumed(self) -> int | None:
        """Training batches of the current epoch the Trainer has taken (what a resume skips)."""
        trainer = self.trainer
        if trainer is None:
            return None
        # `started` counts batches whose training step began: at every point where a checkpoint is
        # saved (end of a training batch, end of validation, end of the epoch) those are done.
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.started)

    def train_dataloader(self) -> DataLoader:
        # Each pair's batches are shuffled with a seed of its own: pairs sharing a source side
        # (en-de, en-fr) would otherwise be cut and ordered alike.
        datasets = [c.datasets["train"] for c in self.corpora.values()]
        samplers = [self._sampler(ds, True, self.batching.seed + i) for i, ds in enumerate(datasets)]
        if self.multilingual:
            self.train_sampler = TemperatureBatchSampler(samplers, [len(ds) for ds in datasets], self.temperature,
                                                         seed=self.batching.seed)
        else:
            self.train_sampler = samplers[0]
        return ResumableDataLoader(ConcatDataset(datasets), batch_sampler=self.train_sampler,
                                   batches_consumed=self._train_batches_consumed, **self._loader_options())

    def _eval_loader(self, split: str) -> DataLoader:
        offsets = self._offsets[split]
        datasets = [c.datasets[split].shifted(offset) for c, offset in zip(self.corpora.values(), offsets)]
        samplers = [self._sampler(ds, False, self.batching.seed + i) for i, ds in enumerate(datasets)]
        # One corpus: its own batches (offset 0); several: the pairs' batches in turn.
        return DataLoader(ConcatDataset(datasets), batch_sampler=RoundRobinBatchSampler(samplers, offsets[:-1]),
                          **self._loader_options())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        if not self.has_test:
            missing = [str(name or c.root) for name, c in self.corpora.items() if "test" not in c.datasets]
            raise DataError(f"no test split for {', '.join(missing)}; looked for "
                            f"{next(iter(self.corpora.values())).splits.test}")
        return self._eval_loader("test")

    def eval_dataloader(self, split: str, tokenizer: Tokenizer, max_tokens: int | None = None,
                        corpus: str | None = None) -> DataLoader:
        """Batches of ``split`` of ``corpus`` (by name) tokenized with ``tokenizer`` (a checkpoint's), formed
        as validation and test form them (same truncation, order and token budget unless ``max_tokens``)."""
        chosen = self.corpora[corpus]
        sources, references = chosen.texts(split)
        data = TokenizedSplit.from_lists(tokenizer.encode_source(sources), tokenizer.encode_target(references))
        dataset = PairDataset(data, max_src_len=chosen.filtering.max_src_len + 1)
        return DataLoader(dataset, batch_sampler=self._sampler(dataset, False, self.batching.seed, max_tokens),
                          collate_fn=self.collate)

    # ------------------------------------------------------------------ scoring and texts
    def pair_of_index(self, split: str, index: int) -> str | None:
        """The corpus (its name) a global evaluation index of ``split`` belongs to (None: the one corpus)."""
        offsets = self._offsets[split]
        return list(self.corpora)[int(np.searchsorted(offsets, index, side="right")) - 1]

    def by_corpus(self, split: str, indices: Sequence[int], hypotheses: Sequence[str]
                  ) -> dict[str | None, tuple[Corpus, list[str], list[list[str]]]]:
        """Hypotheses of ``split`` (by global index) grouped by corpus, each with its references (of the
        decoded sentences only, every stream): ``{name: (corpus, hypotheses, references)}``. A pair
        none of whose sentences was decoded (``trainer.limit_val_batches``) is left out, with a warning."""
        offsets = self._offsets[split]
        names = list(self.corpora)
        grouped: dict[str | None, tuple[list[int], list[str]]] = {name: ([], []) for name in names}
        for index, hypothesis in zip(indices, hypotheses):
            k = int(np.searchsorted(offsets, index, side="right")) - 1
            grouped[names[k]][0].append(int(index) - offsets[k])
            grouped[names[k]][1].append(hypothesis)
        out = {}
        for name, corpus in self.corpora.items():
            local, hyps = grouped[name]
            if not hyps and self.multilingual:
                log.warning("No %s sentence of the pair %s was decoded (trainer.limit_%s_batches?): it is left out "
                            "of the mean", split, name, split)
                continue
            out[name] = corpus, hyps, [[stream[i] for i in local] for stream in corpus.reference_streams(split)]
        return out

    def sources(self, split: str) -> list[str]:
        """Every corpus's raw sources of ``split`` in global-index order (a pair's shown with its tag)."""
        return [f"{self.target_tags[c.tgt_lang]} {s}" if self.multilingual else s
                for c in self.corpora.values() for s in c.sources(split)]

    def references(self, split: str) -> list[str]:
        """Every corpus's references of ``split`` (first stream), in global-index order."""
        return [ref for c in self.corpora.values() for ref in c.references(split)]

    def reference_streams(self, split: str) -> list[list[str]]:
        """Every corpus's reference streams of ``split`` joined (corpora must have as many references)."""
        streams = [c.reference_streams(split) for c in self.corpora.values()]
        if len({len(s) for s in streams}) != 1:
            raise DataError(f"the pairs have different numbers of {split} references; score them per pair")
        return [[ref for pair in streams for ref in pair[k]] for k in range(len(streams[0]))]

    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """(sources, references) of ``split``, generating or downloading the corpora first if the config says so."""
        for corpus in self.corpora.values():
            corpus.materialize()
        return self.sources(split), self.references(split)
