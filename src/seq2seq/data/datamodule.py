"""The LightningDataModule serving parallel corpora (and document/summary pairs).

``prepare_data`` (rank 0 only) materializes the corpus (generates the embedded one, or downloads),
trains the sentencepiece tokenizer on the training split and tokenizes every split into an
on-disk cache; ``setup`` (every rank) loads them. Training batches come from a token-budget,
length-bucketed sampler; validation and test batches are sorted by length and carry each
sentence's index so that outputs can be put back in corpus order.

The cache is keyed on content, not on names: a tokenizer file is named after a hash of its options
and the training split's content (see :meth:`Tokenizer.cached_or_trained`), a tokenized split after
a hash of the tokenizer and the split's content. Editing a corpus file or changing ``vocab_size``
therefore never serves stale ids, and a second run with the same data skips sentencepiece training
and tokenization. The content of ``lines`` files is hashed as bytes, streamed (every run reads them
once, at ~1 GB/s); other formats hash their texts. Entries are written atomically, so an
interrupted run leaves no partial cache entry, and DDP ranks may share one cache folder.

A tokenized split is a folder of flat ``.npy`` arrays (:mod:`seq2seq.data.storage`) written once and
memory-mapped read-only by every rank, so a rank's memory after ``setup`` does not grow with the
corpus: filtering and batching read only the per-pair lengths, and a batch reads the ids of its own
pairs. ``lines`` splits are read as a stream in chunks and tokenized by several worker processes
(``prepare_workers``), never holding the training text in memory; sentencepiece trains on all
training sentences up to :data:`~seq2seq.data.tokenizer.SAMPLE_SENTENCES`, and on a seeded sample of
that many above. Long steps show progress (:mod:`seq2seq.data.progress`). A cache entry that is
damaged (truncated, or not an entry at all) is rebuilt with a warning.

The test split is optional: published corpora often ship without test references, and such a run
trains and validates, and :attr:`Seq2SeqDataModule.has_test` is False.

``format=hf`` (a Hugging Face Hub dataset) is read from local files instead when ``root`` holds the
training split as ``{split}.jsonl`` (with the same fields) or ``{split}.{src_lang}`` /
``{split}.{tgt_lang}`` lines, so ``data.root=DIR`` points any named corpus at files on disk.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seq2seq.data.filtering import filter_lengths
from seq2seq.data.progress import Progress
from seq2seq.data.sampler import TokenBudgetBatchSampler
from seq2seq.data.sources import (
    CorpusFormat,
    LinesPair,
    PairChunk,
    find_split,
    lines_files,
    read_aligned_lines,
    read_split,
)
from seq2seq.data.storage import CacheDamaged, SplitWriter, TokenizedSplit, id_dtype, open_split, remove_entry
from seq2seq.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SAMPLE_SEED,
    SAMPLE_SENTENCES,
    UNK_ID,
    Tokenizer,
    available_cpus,
    encode_chunks,
    sample_indices,
)
from seq2seq.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHUNK_PAIRS = 20_000  # pairs per tokenization chunk (a few MB of text)
POOL_MIN_PAIRS = 100_000  # smaller splits are tokenized in this process: starting workers costs more
SUBPROCESS_TRAINING_SENTENCES = 500_000  # sentencepiece trains in a child process on this many or more
MAX_AUTO_WORKERS = 8  # prepare_workers=None uses the available CPUs, at most this many


class SplitView:
    """Some rows of a :class:`TokenizedSplit`, optionally cut to a length, read like one (no copy).

    What the training filter keeps: ``rows`` (None: all) index the split; a source longer than
    ``max_src_len`` ids (EOS included) keeps its first ``max_src_len - 1`` ids and its EOS, a
    target keeps its first ``max_tgt_len``. The lengths are the cut ones, computed once from the
    split's small length arrays; ids are read only for the pairs asked for.
    """

    def __init__(self, data: TokenizedSplit, rows: np.ndarray | None = None, max_src_len: int | None = None,
                 max_tgt_len: int | None = None):
        self.base, self.rows = data, rows
        self.max_src_len, self.max_tgt_len = max_src_len, max_tgt_len
        src, tgt = data.src_lengths, data.tgt_lengths
        if rows is not None:
            src, tgt = src[rows], tgt[rows]
        self.src_lengths = src if max_src_len is None else np.minimum(src, max_src_len).astype(src.dtype)
        self.tgt_lengths = tgt if max_tgt_len is None else np.minimum(tgt, max_tgt_len).astype(tgt.dtype)

    def __len__(self) -> int:
        return len(self.base) if self.rows is None else len(self.rows)

    def _row(self, i: int) -> int:
        return i if self.rows is None else int(self.rows[i])

    def src(self, i: int) -> np.ndarray:
        ids = self.base.src(self._row(i))
        if self.max_src_len is not None and len(ids) > self.max_src_len:
            ids = np.concatenate([ids[: self.max_src_len - 1], np.asarray([EOS_ID], dtype=ids.dtype)])
        return ids

    def tgt(self, i: int) -> np.ndarray:
        ids = self.base.tgt(self._row(i))
        return ids if self.max_tgt_len is None else ids[: self.max_tgt_len]


class PairDataset(Dataset):
    """Position -> (corpus index, source ids, target ids), with optional per-side truncation.

    ``corpus_index[i]`` is the line of the split's files that position ``i`` holds (the identity
    unless filtering dropped pairs), so a batch's ``index`` always locates sentences in the corpus.
    """

    def __init__(
        self,
        data: TokenizedSplit | SplitView,
        max_src_len: int | None = None,
        max_tgt_len: int | None = None,
        corpus_index: np.ndarray | None = None,
    ):
        self.data = data
        self.max_src_len = max_src_len
        self.max_tgt_len = max_tgt_len
        if corpus_index is not None and len(corpus_index) != len(data):
            raise ValueError(f"corpus_index has {len(corpus_index)} entries for {len(data)} pairs")
        self.corpus_index = corpus_index

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        src, tgt = self.data.src(i), self.data.tgt(i)
        if self.max_src_len is not None and len(src) > self.max_src_len:
            src = np.concatenate([src[: self.max_src_len - 1], [EOS_ID]])  # keep the final EOS
        if self.max_tgt_len is not None:
            tgt = tgt[: self.max_tgt_len]
        return (i if self.corpus_index is None else int(self.corpus_index[i])), src, tgt


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

    Lightning stores ``state_dict()`` of every train dataloader that has one (under the fit loop's
    ``combined_loader`` state) and calls ``load_state_dict`` when resuming, before the first batch
    is drawn. Both delegate to the :class:`TokenBudgetBatchSampler`: after a resume in the middle of
    an epoch the loader yields the epoch's remaining batches only, which is what Lightning's epoch
    loop expects of a stateful loader (it counts the batches already done and stops at
    ``len(loader)``).

    The position saved is what the training loop actually consumed (``batches_consumed()``), not
    what the sampler handed out: worker processes fetch batches ahead of the training step.
    """

    def __init__(self, *args, batches_consumed: Callable[[], int | None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_consumed = batches_consumed

    def state_dict(self) -> dict:
        consumed = self.batches_consumed() if self.batches_consumed is not None else None
        return {"batch_sampler": self.batch_sampler.state_dict(batches_consumed=consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state["batch_sampler"])


def _update_with_texts(key: hashlib._Hash, texts: Sequence[str], batch: int = 100_000) -> None:
    """Feed ``text + "\\n"`` for every text into ``key`` (joined in batches: much faster than per line)."""
    for start in range(0, len(texts), batch):
        key.update(("\n".join(texts[start : start + batch]) + "\n").encode("utf-8", "surrogatepass"))


@dataclass
class _Split:
    src_text: list[str]
    tgt_text: list[str]
    files: str = ""


class _Source:
    """Where a split's pairs come from for tokenizing: ``lines`` files streamed from disk, or texts."""

    def __init__(self, where: str, lines: LinesPair | None = None, texts: _Split | None = None):
        self.where, self.lines, self.texts = where, lines, texts
        self._digest: str | None = None

    def digest(self) -> str:
        """The content digest the cache keys on (lines files: their bytes; texts: the texts)."""
        if self.lines is not None:
            return self.lines.digest()
        if self._digest is None:
            key = hashlib.sha256(b"texts\0")
            _update_with_texts(key, self.texts.src_text)
            _update_with_texts(key, ["\x00"])
            _update_with_texts(key, self.texts.tgt_text)
            self._digest = key.hexdigest()
        return self._digest

    def pairs(self) -> int:
        """The number of pairs (lines files: counted, and their line counts checked)."""
        return self.lines.count() if self.lines is not None else len(self.texts.src_text)

    def chunks(self, pairs: int) -> Iterator[PairChunk]:
        if self.lines is not None:
            yield from self.lines.chunks(pairs)
            return
        src, tgt = self.texts.src_text, self.texts.tgt_text
        for start in range(0, len(src), pairs):
            yield PairChunk(src[start : start + pairs], tgt[start : start + pairs], start + 1)

    def sentences(self, side: str, indices: np.ndarray | None, progress: Progress | None) -> list[str]:
        if self.lines is not None:
            return self.lines.sentences(side, indices, progress)
        texts = self.texts.src_text if side == "src" else self.texts.tgt_text
        return list(texts) if indices is None else [texts[i] for i in indices.tolist()]

    def training_sentences(self, joint: bool) -> int:
        """How many sentences sentencepiece trains on (see :meth:`training_texts`)."""
        population = 2 * self.pairs() if joint else self.pairs()
        return min(population, SAMPLE_SENTENCES)

    def training_texts(self, joint: bool) -> tuple[list[str], list[str]]:
        """What sentencepiece trains on: every sentence of the split up to SAMPLE_SENTENCES of them
        (both sides together for a joint vocabulary); above, a sample of that many drawn with
        SAMPLE_SEED, in a seeded random order (what sentencepiece's shuffle_input_sentence does)."""
        pairs = self.pairs()
        population = 2 * pairs if joint else pairs
        if population <= SAMPLE_SENTENCES:
            with Progress(f"Reading {self.where} for sentencepiece", 2 * pairs, unit="lines") as progress:
                return self.sentences("src", None, progress), self.sentences("tgt", None, progress)
        picked = sample_indices(population, SAMPLE_SENTENCES, SAMPLE_SEED)
        src_idx, tgt_idx = (picked[picked < pairs], picked[picked >= pairs] - pairs) if joint else (picked, picked)
        with Progress(f"Sampling {SAMPLE_SENTENCES:,} sentences of {self.where} for sentencepiece", 2 * pairs,
                      unit="lines") as progress:
            src, tgt = self.sentences("src", src_idx, progress), self.sentences("tgt", tgt_idx, progress)
        if not joint:
            return src, tgt
        both = src + tgt
        del src, tgt
        order = np.random.default_rng(SAMPLE_SEED + 1).permutation(len(both))
        return [both[i] for i in order.tolist()], []


@dataclass
class SplitNames:
    """Base names of each split's files; a list gives candidates, the first that exists wins."""

    train: str | list[str] = "train"
    val: str | list[str] = "val"
    test: str | list[str] | None = field(default_factory=lambda: ["test"])


class Seq2SeqDataModule(L.LightningDataModule):
    """Parallel text for sequence-to-sequence training.

    Args:
        root: folder holding the corpus files.
        src_lang, tgt_lang: file suffixes (``train.en``) or field names of the two sides.
        splits: base names per split (see :class:`SplitNames`); test is optional.
        format: ``lines`` | ``tsv`` | ``jsonl`` | ``hf``, with ``src_field``/``tgt_field`` etc.
        generate: options of the embedded corpus (``seed``, ``sizes``), generated into ``root``.
        download: name of a downloadable corpus (``multi30k``) fetched into ``root`` when missing.
        vocab_size, joint_vocab, spm_model_type: the sentencepiece tokenizer.
        max_tokens: token budget of a training batch, padding included (fairseq's ``--max-tokens``).
        eval_max_tokens: the same for validation and test (default: 2 x max_tokens).
        pad_to_multiple: pad every batch's lengths up to a multiple of this (see :func:`collate`).
        max_src_len, max_tgt_len, overlong, max_len_ratio: training-pair filtering.
        cache_dir: where tokenizers and tokenized splits are cached.
        extra_references: more references of the evaluation splits, ``{"test": [FILE, ...], "val":
            [...]}``: files of one segment per line (line *i* for segment *i*), relative to ``root``
            unless absolute, ``.gz`` allowed. The split's own target side stays the first
            reference; BLEU, chrF and ROUGE score against all (:meth:`reference_streams`).
        bleu_tokenize: sacreBLEU's tokenizer for BLEU on this corpus's targets; None: by
            ``tgt_lang`` (:func:`seq2seq.metrics.text_metrics.bleu_tokenizer`).
        tokenizer: tokenize every split with this one (a fine-tuning run's parent's) instead of
            training a sentencepiece model on the training split; ``vocab_size``, ``joint_vocab`` and
            ``spm_model_type`` are then unused.
        max_train_pairs: keep only the first N pairs of the training split (quick runs, or a smaller
            pair in a multilingual mix); None keeps all.
        prepare_workers: processes that tokenize a split; None: the available CPUs (at most 8) for
            splits of 100k pairs or more, this process alone below; 1: always this process.
    """

    def __init__(
        self,
        root: str,
        src_lang: str = "src",
        tgt_lang: str = "tgt",
        splits: dict | SplitNames | None = None,
        format: str = "lines",
        src_field: str | None = None,
        tgt_field: str | None = None,
        hf_path: str | None = None,
        hf_name: str | None = None,
        hf_data_files: dict | None = None,
        generate: dict | None = None,
        download: str | None = None,
        vocab_size: int = 8000,
        joint_vocab: bool = True,
        spm_model_type: str = "unigram",
        max_tokens: int = 4096,
        max_sentences: int | None = None,
        pad_to_multiple: int = 1,
        eval_max_tokens: int | None = None,
        max_src_len: int = 256,
        max_tgt_len: int = 256,
        overlong: str = "drop",
        max_len_ratio: float | None = None,
        cache_dir: str = ".cache/seq2seq",
        num_workers: int = 0,
        seed: int = 1234,
        extra_references: dict | None = None,
        bleu_tokenize: str | None = None,
        tokenizer: Tokenizer | None = None,
        max_train_pairs: int | None = None,
        prepare_workers: int | None = None,
    ):
        super().__init__()
        # Checked here, before any corpus is read or tokenizer trained.
        for key, value in (("max_tokens", max_tokens), ("eval_max_tokens", eval_max_tokens),
                           ("max_sentences", max_sentences), ("max_train_pairs", max_train_pairs)):
            if (value is None and key == "max_tokens") or (
                value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0)
            ):
                raise ConfigError(
                    f"data.{key} must be a positive number{'' if key == 'max_tokens' else ' or null'}, "
                    f"got {value!r}; e.g. data.{key}={4096 if 'tokens' in key else 64}"
                )
        self.extra_references = self._check_extra_references(extra_references)
        self.bleu_tokenize = bleu_tokenize or None
        self.root = Path(root)
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        self.splits = splits if isinstance(splits, SplitNames) else SplitNames(**dict(splits or {}))
        # What the config asked for; ``_corpus_format`` may switch a Hub dataset to local files.
        self.format = CorpusFormat(
            format=format,
            src_field=src_field or src_lang,
            tgt_field=tgt_field or tgt_lang,
            hf_path=hf_path,
            hf_name=hf_name,
            hf_data_files=dict(hf_data_files) if hf_data_files else None,
        )
        self.generate = dict(generate) if generate else None
        self.download = download
        self.vocab_size, self.joint_vocab, self.spm_model_type = vocab_size, joint_vocab, spm_model_type
        self.max_tokens, self.max_sentences = max_tokens, max_sentences
        self.pad_to_multiple = max(1, int(pad_to_multiple or 1))
        self.eval_max_tokens = eval_max_tokens or 2 * max_tokens
        self.max_src_len, self.max_tgt_len = max_src_len, max_tgt_len
        self.overlong, self.max_len_ratio = overlong, max_len_ratio
        self.cache_dir = Path(cache_dir)
        self.num_workers = num_workers
        self.prepare_workers = prepare_workers
        self.seed = seed
        self.tokenizer: Tokenizer | None = tokenizer
        self._given_tokenizer = tokenizer is not None
        self.max_train_pairs = None if max_train_pairs is None else int(max_train_pairs)
        self.datasets: dict[str, PairDataset] = {}
        self._texts: dict[str, _Split] = {}
        self._more_refs: dict[str, list[list[str]]] = {}
        self.filter_counts: dict[str, int] = {}
        self.train_sampler: TokenBudgetBatchSampler | None = None
        self._resolved_format: CorpusFormat | None = None
        self._train_source: _Source | None = None
        self._vocab_warned = False
        # Seconds spent per preparation step in this process (reading/hashing the training split,
        # sentencepiece, tokenizing each split; cache hits included): for benchmarks and logs.
        self.prepare_times: dict[str, float] = {}

    def _timed(self, step: str, start: float) -> None:
        self.prepare_times[step] = self.prepare_times.get(step, 0.0) + time.perf_counter() - start

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _check_extra_references(extra: dict | None) -> dict[str, list[str]]:
        out = {}
        for split, files in dict(extra or {}).items():
            if split not in ("val", "test"):
                raise ConfigError(
                    f"data.extra_references.{split}: only the val and test splits are scored against "
                    "references; use {test: [FILE, ...]} or {val: [FILE, ...]}"
                )
            out[split] = [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files or ()]
        return out

    @staticmethod
    def _candidates(names: str | Sequence[str] | None) -> list[str]:
        if names is None:
            return []
        return [names] if isinstance(names, str) else [str(n) for n in names]

    def _corpus_format(self) -> CorpusFormat:
        """The format to read with: ``format=hf`` becomes a local format when ``root`` holds the files.

        Checked once, on the training split, so all splits are read the same way.
        """
        if self._resolved_format is not None:
            return self._resolved_format
        fmt = self.format
        if fmt.format == "hf" and fmt.hf_data_files is None and self.root.is_dir():
            train = self._candidates(self.splits.train)
            for local in ("jsonl", "lines"):
                candidate = replace(fmt, format=local)
                if find_split(self.root, train, self.src_lang, self.tgt_lang, candidate) is not None:
                    log.info("Reading %s files under %s instead of the Hub dataset %s", local, self.root, fmt.hf_path)
                    fmt = candidate
                    break
        self._resolved_format = fmt
        return fmt

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DataError(
                f"data.root={self.root} is a file, not a folder: point data.root at the folder that holds the "
                "corpus files (e.g. train.<src_lang> and train.<tgt_lang>)"
            )

    def _materialize(self) -> None:
        self._check_root()
        if self.generate is not None:
            from seq2seq.data.toy import write_corpus

            write_corpus(self.root, **self.generate)
        if self.download == "multi30k":
            from seq2seq.data.download import download_multi30k

            train = self._candidates(self.splits.train)
            if find_split(self.root, train, self.src_lang, self.tgt_lang, self._corpus_format()) is None:
                download_multi30k(self.root, langs=(self.src_lang, self.tgt_lang))
        elif self.download:
            raise DataError(f"data.download={self.download!r} is not a known corpus; use 'multi30k' or null")

    def _read(self, split: str) -> _Split | None:
        """The split's texts, or None for a missing optional (test) split."""
        if split in self._texts:
            return self._texts[split]
        self._check_root()
        candidates = self._candidates(getattr(self.splits, split))
        if not candidates:
            if split == "test":
                return None
            raise DataError(f"data.splits.{split} is empty; name the {split} split's files (e.g. '{split}')")
        fmt = self._corpus_format()
        found = find_split(self.root, candidates, self.src_lang, self.tgt_lang, fmt)
        if found is None and split == "test":
            return None
        # A required split that is missing: read_split raises with the expected paths of every candidate
        # (for a single candidate, naming just the file(s) that are missing).
        src, tgt = read_split(
            self.root, found or (candidates[0] if len(candidates) == 1 else candidates), self.src_lang, self.tgt_lang, fmt
        )
        if split == "train" and self.max_train_pairs is not None:
            src, tgt = src[: self.max_train_pairs], tgt[: self.max_train_pairs]
        self._texts[split] = _Split(src, tgt, f"{self.root}/{found or candidates[0]}")
        return self._texts[split]

    # ------------------------------------------------------------------ preparation
    def _source(self, split: str) -> _Source | None:
        """How to read ``split`` for tokenizing; None for a missing optional (test) split.

        The training split of a ``lines`` corpus is streamed from its files and never kept in memory;
        other splits and formats are read whole (validation and test texts are kept: they are the
        references).
        """
        if split == "train" and self._train_source is not None:
            return self._train_source
        fmt = self._corpus_format()
        # max_train_pairs (a quick run, a small pair of a mix) reads the split whole and cuts it.
        if split == "train" and fmt.format == "lines" and self.max_train_pairs is None:
            self._check_root()
            candidates = self._candidates(self.splits.train)
            found = find_split(self.root, candidates, self.src_lang, self.tgt_lang, fmt)
            if found is None:  # read_split names the missing files
                read_split(self.root, candidates[0] if len(candidates) == 1 else candidates, self.src_lang,
                           self.tgt_lang, fmt)
            self._train_source = _Source(f"{self.root}/{found}",
                                         lines=LinesPair(*lines_files(self.root, found, self.src_lang, self.tgt_lang)))
            return self._train_source
        if split == "train" and "train" not in self._texts:
            # Read whole for this prepare_data or setup only (see _done_preparing); references("train")
            # reads it again if asked.
            texts = self._read("train")
            self._texts.pop("train", None)
            self._train_source = _Source(texts.files, texts=texts)
            return self._train_source
        texts = self._read(split)
        return None if texts is None else _Source(texts.files, texts=texts)

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is not None:  # handed over (fine-tuning): never retrained
            return self.tokenizer
        source = self._source("train")
        start = time.perf_counter()
        digest = source.digest()
        self._timed("read_train", start)
        start = time.perf_counter()
        # Whether sentencepiece samples follows from the content and these constants, so they are
        # part of the key rather than the sample size (the cached path never counts lines).
        tokenizer = Tokenizer.cached_or_trained(
            self.cache_dir, f"{digest}|sample={SAMPLE_SENTENCES},{SAMPLE_SEED}",
            lambda: source.training_texts(self.joint_vocab), self.vocab_size, self.joint_vocab,
            self.spm_model_type,
            in_subprocess=lambda: source.training_sentences(self.joint_vocab) >= SUBPROCESS_TRAINING_SENTENCES,
        )
        self._timed("sentencepiece", start)
        reached = (tokenizer.src_vocab_size,) if tokenizer.joint else (tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
        if min(reached) < self.vocab_size and not self._vocab_warned:
            self._vocab_warned = True  # once per DataModule, not in both prepare_data and setup
            log.warning(
                "data.vocab_size=%d, but sentencepiece reached only %s pieces on the training split of %s (too "
                "little text for more); the model's vocabulary has %s. Set data.vocab_size=%d or lower to "
                "silence this.", self.vocab_size, " and ".join(map(str, reached)) + (
                    " (source, target)" if len(reached) > 1 else ""), self.root,
                "that size" if len(reached) == 1 else "those sizes", min(reached),
            )
        return tokenizer

    def _cache_file(self, tokenizer: Tokenizer, digest: str) -> Path:
        key = hashlib.sha256(b"ids-v2\0")
        for blob in tokenizer.state_dict().values():
            key.update(blob or b"")
            key.update(b"\0")
        key.update(digest.encode())
        return self.cache_dir / f"ids-{key.hexdigest()[:24]}"

    def _workers(self, pairs: int) -> int:
        if self.prepare_workers is not None:
            return max(1, int(self.prepare_workers))
        return min(available_cpus(), MAX_AUTO_WORKERS) if pairs >= POOL_MIN_PAIRS else 1

    def _tokenized(self, tokenizer: Tokenizer, source: _Source, split: str = "") -> TokenizedSplit:
        """The split's ids from the cache; tokenized and written there first when missing or damaged."""
        start = time.perf_counter()
        try:
            return self._load_or_tokenize(tokenizer, source)
        finally:
            self._timed(f"tokenize_{split}" if split else "tokenize", start)

    def _load_or_tokenize(self, tokenizer: Tokenizer, source: _Source) -> TokenizedSplit:
        path = self._cache_file(tokenizer, source.digest())
        try:
            return open_split(path)
        except FileNotFoundError:
            pass
        except CacheDamaged as err:
            log.warning("The cached token ids of %s (%s) are damaged: %s. Tokenizing it again.", source.where, path, err)
            remove_entry(path)
        pairs = source.pairs()
        dtype = id_dtype(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
        workers = self._workers(pairs)
        with SplitWriter(path, dtype) as writer, Progress(f"Tokenizing {source.where}", pairs, unit="pairs") as progress:
            for chunk in encode_chunks(tokenizer, source.chunks(CHUNK_PAIRS), dtype, workers):
                writer.add(chunk.src, chunk.src_lengths, chunk.tgt, chunk.tgt_lengths, chunk.unknown)
                progress.update(len(chunk))
            writer.commit(source=source.where)
        try:
            return open_split(path)
        except CacheDamaged as err:  # written a moment ago: the disk lost it
            raise DataError(f"cannot read back the token ids just written to {path}: {err}") from None

    def _done_preparing(self) -> None:
        """Drop the training texts of a format that is read whole (a ``lines`` source holds none)."""
        if self._train_source is not None and self._train_source.texts is not None:
            self._train_source = None

    def prepare_data(self) -> None:
        try:
            self._materialize()
            tokenizer = self._tokenizer()
            for split in SPLITS:
                source = self._source(split)
                if source is not None:
                    self._tokenized(tokenizer, source, split)
        finally:
            self._done_preparing()

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        try:
            self._setup()
        finally:
            self._done_preparing()

    def _setup(self) -> None:
        if self.tokenizer is None:
            self.tokenizer = self._tokenizer()
        for split in SPLITS:
            source = self._source(split)
            if source is None:
                if self.splits.test is None:
                    log.info("No test split configured (data.splits.test=null); the run will not test.")
                else:
                    log.warning("No test split found under %s (looked for %s); the run will not test.",
                                self.root, self.splits.test)
                continue
            data = self._tokenized(self.tokenizer, source, split)
            if split == "train":
                if self._given_tokenizer:
                    self._report_unknown(data)
                view, kept = self._filter_train(data)
                self.datasets[split] = PairDataset(view, corpus_index=kept)
            else:
                # Every reference is scored; over-long sources are truncated rather than dropped
                # (as eval_dataloader does).
                self.datasets[split] = PairDataset(data, max_src_len=self.max_src_len + 1)
                self.reference_streams(split)  # a missing or misaligned extra reference stops here

    def _report_unknown(self, data: TokenizedSplit) -> None:
        """Warn when a handed-over tokenizer maps much of this corpus to the unknown piece."""
        for side, key in (("source", "src"), ("target", "tgt")):
            flat = getattr(data, f"{key}_flat")
            if f"{key}_unk" in data.meta:  # counted while tokenizing: the ids need not be read
                unknown, total = data.meta[f"{key}_unk"], data.meta[f"{key}_tokens"]
            else:
                unknown, total = int((flat == UNK_ID).sum()), flat.size
            share = unknown / total if total else 0.0
            if share > 0.01:
                log.warning(
                    "%.1f%% of the %s tokens of %s are unknown to the tokenizer this run was given (the parent's "
                    "in fine-tuning): its vocabulary does not cover this corpus well", 100 * share, side, self.root,
                )

    def _filter_train(self, data: TokenizedSplit) -> tuple[TokenizedSplit | SplitView, np.ndarray | None]:
        """Drop (or truncate) training pairs as ``max_src_len``/``max_tgt_len``/``max_len_ratio`` say.

        Returns the kept pairs (a :class:`SplitView`, or ``data`` itself when every pair was kept
        whole) and their corpus indices (None when every pair was kept). The counts go to
        :attr:`filter_counts` and the log. Works on the length arrays alone: this runs in every
        ``setup``, including cached runs, and never reads the ids.
        """
        src_len = data.src_lengths.astype(np.int32) - 1  # without EOS, as filter_lengths expects
        kept, counts = filter_lengths(
            src_len, data.tgt_lengths, max_src_len=self.max_src_len, max_tgt_len=self.max_tgt_len,
            overlong=self.overlong, max_len_ratio=self.max_len_ratio,
        )
        del src_len
        self.filter_counts = {**counts, "kept": len(kept), "total": len(data)}
        if len(kept) < len(data) or counts.get("truncated"):
            log.info("Training pairs filtered: %s", self.filter_counts)
        if len(kept) == 0:
            raise DataError(
                f"every training pair under {self.root} was filtered out ({self.filter_counts}); "
                "raise data.max_src_len / data.max_tgt_len or relax data.max_len_ratio"
            )
        if len(kept) == len(data) and not counts.get("truncated"):
            return data, None
        truncated = bool(counts.get("truncated"))
        view = SplitView(
            data, None if len(kept) == len(data) else kept,
            max_src_len=self.max_src_len + 1 if truncated else None,  # + EOS
            max_tgt_len=self.max_tgt_len if truncated else None,
        )
        return view, kept

    # ------------------------------------------------------------------ loaders
    @property
    def has_test(self) -> bool:
        """Whether the corpus has a test split (known after ``setup``)."""
        return "test" in self.datasets

    def references(self, split: str) -> list[str]:
        """The split's raw target sentences (its first reference; see :meth:`reference_streams`)."""
        return self._read(split).tgt_text

    def reference_streams(self, split: str) -> list[list[str]]:
        """Every reference of ``split`` in sacreBLEU's layout, one list per reference: the split's
        target side, then each file of ``extra_references[split]`` (read once, line counts checked)."""
        texts = self._required(split)
        if split not in self._more_refs:
            self._more_refs[split] = [
                read_aligned_lines(Path(name) if Path(name).is_absolute() else self.root / name,
                                   len(texts.tgt_text), f"the {split} split ({texts.files})")
                for name in self.extra_references.get(split, ())
            ]
        return [texts.tgt_text, *self._more_refs[split]]

    def sources(self, split: str) -> list[str]:
        """The split's raw source sentences."""
        return self._read(split).src_text

    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """(sources, references) of ``split``, generating or downloading the corpus first if the config says so."""
        self._materialize()
        texts = self._required(split)
        return texts.src_text, texts.tgt_text

    def _required(self, split: str) -> _Split:
        texts = self._read(split)
        if texts is None:
            raise DataError(
                f"no {split} split under {self.root} (looked for {getattr(self.splits, split)}); "
                "evaluate split=val, or set data.splits.test"
            )
        return texts

    def eval_dataloader(self, split: str, tokenizer: Tokenizer, max_tokens: int | None = None) -> DataLoader:
        """Batches of ``split`` tokenized with ``tokenizer`` (a checkpoint's), formed as validation and
        test form them (same truncation, order and token budget unless ``max_tokens`` is given)."""
        sources, references = self.texts(split)
        data = TokenizedSplit.from_lists(tokenizer.encode_source(sources), tokenizer.encode_target(references))
        dataset = PairDataset(data, max_src_len=self.max_src_len + 1)
        sampler = TokenBudgetBatchSampler(
            data.src_lengths, data.tgt_lengths + 1, max_tokens or self.eval_max_tokens, shuffle=False, seed=self.seed
        )
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=self._collate)

    def _sampler(self, data: TokenizedSplit | SplitView, train: bool) -> TokenBudgetBatchSampler:
        # Under DDP every rank builds the same batch list and keeps its share (the Trainer runs
        # with use_distributed_sampler=False, so it does not wrap this sampler itself).
        trainer = self.trainer
        return TokenBudgetBatchSampler(
            data.src_lengths,
            data.tgt_lengths + 1,  # BOS/EOS
            self.max_tokens if train else self.eval_max_tokens,
            max_sentences=self.max_sentences if train else None,
            shuffle=train,
            seed=self.seed,
            num_replicas=trainer.world_size if trainer else 1,
            rank=trainer.global_rank if trainer else 0,
        )

    @property
    def _collate(self) -> Callable:
        return collate if self.pad_to_multiple == 1 else partial(collate, pad_to_multiple=self.pad_to_multiple)

    def _train_batches_consumed(self) -> int | None:
        """Training batches of the current epoch the Trainer has taken (what a resume skips)."""
        trainer = self.trainer
        if trainer is None:
            return None
        # `started` counts batches whose training step began: at every point where a checkpoint is
        # saved (end of a training batch, end of validation, end of the epoch) those are done.
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.started)

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        sampler = self._sampler(dataset.data, train)
        # A generator of its own: creating the loader's iterator then draws its base seed from it,
        # not from torch's global generator, whose state (dropout) a resumed run must continue exactly.
        options = dict(
            batch_sampler=sampler,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )
        if train:
            self.train_sampler = sampler
            return ResumableDataLoader(dataset, batches_consumed=self._train_batches_consumed, **options)
        return DataLoader(dataset, **options)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        if not self.has_test:
            raise DataError(f"no test split under {self.root}; looked for {self.splits.test}")
        return self._loader("test", train=False)
