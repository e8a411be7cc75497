"""The LightningDataModule serving parallel corpora (and document/summary pairs).

``prepare_data`` (rank 0 only) materializes the corpus (generates the embedded one, or downloads),
trains the sentencepiece tokenizer on the training split and tokenizes every split into an
on-disk cache; ``setup`` (every rank) loads them. Training batches come from a token-budget,
length-bucketed sampler; validation and test batches are sorted by length and carry each
sentence's index so that outputs can be put back in corpus order.

The cache is keyed on content, not on names: a tokenizer file is named after a hash of its options
and training texts (see :meth:`Tokenizer.load_or_train`), a tokenized split after a hash of the
tokenizer and the split's texts. Editing a corpus file or changing ``vocab_size`` therefore never
serves stale ids, and a second run with the same data skips sentencepiece training and
tokenization. Files are written atomically (:func:`seq2seq.utils.io.atomic_path`), so an
interrupted run leaves no partial cache entry, and DDP ranks may share one cache folder.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from seq2seq.data.filtering import filter_pairs
from seq2seq.data.sampler import TokenBudgetBatchSampler
from seq2seq.data.sources import CorpusFormat, find_split, read_aligned_lines, read_split
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer
from seq2seq.errors import ConfigError, DataError
from seq2seq.utils.io import atomic_path

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass
class TokenizedSplit:
    """A split's token ids as flat arrays with offsets (compact, fast to save and load)."""

    src_flat: np.ndarray
    src_offsets: np.ndarray
    tgt_flat: np.ndarray
    tgt_offsets: np.ndarray

    @classmethod
    def from_lists(cls, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]]) -> TokenizedSplit:
        """Pack per-sentence id sequences (lists, or numpy arrays which are concatenated, faster)."""

        def pack(seqs):
            lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
            np.cumsum(lengths, out=offsets[1:])
            if len(seqs) and isinstance(seqs[0], np.ndarray):
                flat = np.concatenate(seqs).astype(np.int32, copy=False)
            else:
                flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
            return flat, offsets

        return cls(*pack(src), *pack(tgt))

    def __len__(self) -> int:
        return len(self.src_offsets) - 1

    def src(self, i: int) -> np.ndarray:
        return self.src_flat[self.src_offsets[i] : self.src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        return self.tgt_flat[self.tgt_offsets[i] : self.tgt_offsets[i + 1]]

    @property
    def src_lengths(self) -> np.ndarray:
        return np.diff(self.src_offsets)

    @property
    def tgt_lengths(self) -> np.ndarray:
        return np.diff(self.tgt_offsets)

    def save(self, path: Path) -> None:
        # Written under a temporary name and renamed when complete: a crash mid-write leaves no
        # ``ids-*.npz`` that a later run would take for a valid cache entry.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **self.__dict__)

    @classmethod
    def load(cls, path: Path) -> TokenizedSplit:
        with np.load(path) as data:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})


class PairDataset(Dataset):
    """Position -> (corpus index, source ids, target ids), with optional per-side truncation.

    ``corpus_index[i]`` is the line of the split's files that position ``i`` holds (the identity
    unless filtering dropped pairs), so a batch's ``index`` always locates sentences in the corpus.
    """

    def __init__(
        self,
        data: TokenizedSplit,
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


def _update_with_texts(key: hashlib._Hash, texts: Sequence[str]) -> None:
    """Feed ``text + "\\n"`` for every text into ``key`` (one join: much faster than per line)."""
    if texts:
        key.update(("\n".join(texts) + "\n").encode("utf-8", "surrogatepass"))


@dataclass
class _Split:
    src_text: list[str]
    tgt_text: list[str]
    files: str = ""


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

    def _materialize(self) -> None:
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
    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is not None:  # handed over (fine-tuning): never retrained
            return self.tokenizer
        train = self._read("train")
        return Tokenizer.load_or_train(
            self.cache_dir, train.src_text, train.tgt_text, self.vocab_size, self.joint_vocab, self.spm_model_type
        )

    def _cache_file(self, tokenizer: Tokenizer, split: _Split) -> Path:
        key = hashlib.sha256()
        for blob in tokenizer.state_dict().values():
            key.update(blob or b"")
        _update_with_texts(key, split.src_text)
        _update_with_texts(key, ["\x00"])
        _update_with_texts(key, split.tgt_text)
        return self.cache_dir / f"ids-{key.hexdigest()[:24]}.npz"

    def _tokenized(self, tokenizer: Tokenizer, split: _Split) -> TokenizedSplit:
        path = self._cache_file(tokenizer, split)
        if path.exists():
            return TokenizedSplit.load(path)
        data = TokenizedSplit.from_lists(tokenizer.encode_source(split.src_text), tokenizer.encode_target(split.tgt_text))
        path.parent.mkdir(parents=True, exist_ok=True)
        data.save(path)
        return data

    def prepare_data(self) -> None:
        self._materialize()
        tokenizer = self._tokenizer()
        for split in SPLITS:
            texts = self._read(split)
            if texts is not None:
                self._tokenized(tokenizer, texts)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.tokenizer is None:
            self.tokenizer = self._tokenizer()
        for split in SPLITS:
            texts = self._read(split)
            if texts is None:
                if self.splits.test is None:
                    log.info("No test split configured (data.splits.test=null); the run will not test.")
                else:
                    log.warning("No test split found under %s (looked for %s); the run will not test.",
                                self.root, self.splits.test)
                continue
            data = self._tokenized(self.tokenizer, texts)
            if split == "train":
                if self._given_tokenizer:
                    self._report_unknown(data)
                data, kept = self._filter_train(data)
                self.datasets[split] = PairDataset(data, corpus_index=kept)
            else:
                # Every reference is scored; over-long sources are truncated rather than dropped
                # (as eval_dataloader does).
                self.datasets[split] = PairDataset(data, max_src_len=self.max_src_len + 1)
                self.reference_streams(split)  # a missing or misaligned extra reference stops here

    def _report_unknown(self, data: TokenizedSplit) -> None:
        """Warn when a handed-over tokenizer maps much of this corpus to the unknown piece."""
        for side, flat in (("source", data.src_flat), ("target", data.tgt_flat)):
            share = float((flat == UNK_ID).mean()) if flat.size else 0.0
            if share > 0.01:
                log.warning(
                    "%.1f%% of the %s tokens of %s are unknown to the tokenizer this run was given (the parent's "
                    "in fine-tuning): its vocabulary does not cover this corpus well", 100 * share, side, self.root,
                )

    def _filter_train(self, data: TokenizedSplit) -> tuple[TokenizedSplit, np.ndarray | None]:
        """Drop (or truncate) training pairs as ``max_src_len``/``max_tgt_len``/``max_len_ratio`` say.

        Returns the kept pairs and their corpus indices (None when every pair was kept). The counts
        go to :attr:`filter_counts` and the log. Works on array views, not lists: this
        runs in every ``setup``, including cached runs.
        """
        src = [data.src(i)[:-1] for i in range(len(data))]  # without EOS, as filter_pairs expects
        tgt = [data.tgt(i) for i in range(len(data))]
        kept, counts, src, tgt = filter_pairs(
            src, tgt, max_src_len=self.max_src_len, max_tgt_len=self.max_tgt_len,
            overlong=self.overlong, max_len_ratio=self.max_len_ratio,
        )
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
        eos = np.array([EOS_ID], dtype=np.int32)
        return TokenizedSplit.from_lists([np.concatenate([s, eos]) for s in src], tgt), kept

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

    def _sampler(self, data: TokenizedSplit, train: bool) -> TokenBudgetBatchSampler:
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
