"""One language pair's corpus: its splits read through the format's reader, tokenized into the
on-disk cache, and the training split filtered on lengths.

A :class:`Corpus` is what a one-pair run trains on and what each pair of a multilingual run is;
:class:`~seq2seq.data.datamodule.Seq2SeqDataModule` serves one or several of them and owns what
they share (the tokenizer, batching, the loaders).

Reading. The training split is a :class:`~seq2seq.data.sources.PairSource`: streamed in chunks
from its files and never held whole in memory (``data.max_train_pairs`` takes its first pairs);
validation and test are read whole and kept, being the references. ``format=hf`` (a Hugging Face
Hub dataset) is read from local files instead when ``root`` holds the training split as
``{split}.jsonl`` (with the same fields) or ``{split}.{src_lang}`` / ``{split}.{tgt_lang}`` lines, so
``data.root=DIR`` points any named corpus at files on disk.

The cache (:mod:`seq2seq.data.storage`) is keyed on content, not on names: a tokenized split lives
in ``ids-<key>/``, the key hashing the tokenizer and the split's content (:meth:`PairSource.digest`:
the files' bytes for a file format's training split, hashed as a stream at ~1 GB/s by every run;
the texts otherwise), so an edited file or another vocabulary never serves stale ids. A damaged
entry is rebuilt with a warning. ``setup`` reads only the per-pair lengths of a cached split
(filtering and batching need nothing else); a batch reads the ids of its own pairs.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from seq2seq.data.filtering import filter_lengths
from seq2seq.data.progress import Progress, timed
from seq2seq.data.sources import CorpusFormat, CorpusReader, PairSource, TextPairs, read_aligned_lines
from seq2seq.data.storage import CacheDamaged, SplitWriter, TokenizedSplit, id_dtype, open_split, remove_entry
from seq2seq.data.tokenizer import Tokenizer, available_cpus, encode_chunks, truncate_source
from seq2seq.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CHUNK_PAIRS = 20_000  # pairs per tokenization chunk (a few MB of text)
POOL_MIN_PAIRS = 100_000  # smaller splits are tokenized in this process: starting workers costs more
MAX_AUTO_WORKERS = 8  # prepare_workers=None uses the available CPUs, at most this many


@dataclass
class SplitNames:
    """Base names of each split's files; a list gives candidates, the first that exists wins."""

    train: str | list[str] = "train"
    val: str | list[str] = "val"
    test: str | list[str] | None = field(default_factory=lambda: ["test"])


@dataclass
class Filtering:
    """Which training pairs are kept (the data config's ``max_src_len``, ``max_tgt_len``, ``overlong``,
    ``max_len_ratio``; see :mod:`seq2seq.data.filtering`); validation and test sources longer than
    ``max_src_len`` are cut, never dropped."""

    max_src_len: int = 256
    max_tgt_len: int = 256
    overlong: str = "drop"
    max_len_ratio: float | None = None


@dataclass
class CorpusOptions:
    """One corpus (the data config's corpus keys; a multilingual config's pair overrides them).

    ``root``: the folder of the files; ``src_lang``/``tgt_lang``: file suffixes (``train.en``) or
    field names; ``splits``: base names per split (test is optional); ``format``: how the files are
    stored; ``generate``: options of the embedded corpus (``seed``, ``sizes``), written into ``root``;
    ``download``: a downloadable corpus (``multi30k``) fetched into ``root`` when missing;
    ``extra_references``: more references of val/test, ``{"test": [FILE, ...]}``, one segment per
    line, relative to ``root`` unless absolute (BLEU, chrF and ROUGE score against all);
    ``bleu_tokenize``: sacreBLEU's tokenizer for this corpus's targets (None: by ``tgt_lang``);
    ``max_train_pairs``: the first N training pairs only (None: all).
    """

    root: str | Path
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    splits: SplitNames = field(default_factory=SplitNames)
    format: CorpusFormat = field(default_factory=CorpusFormat)
    filtering: Filtering = field(default_factory=Filtering)
    generate: dict | None = None
    download: str | None = None
    extra_references: dict[str, list[str]] = field(default_factory=dict)
    bleu_tokenize: str | None = None
    max_train_pairs: int | None = None


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

    def row(self, i: int) -> int:
        """The split's row (its files' line) that position ``i`` holds."""
        return i if self.rows is None else int(self.rows[i])

    def src(self, i: int) -> np.ndarray:
        return truncate_source(self.base.src(self.row(i)), self.max_src_len)

    def tgt(self, i: int) -> np.ndarray:
        ids = self.base.tgt(self.row(i))
        return ids if self.max_tgt_len is None else ids[: self.max_tgt_len]


class PairDataset(Dataset):
    """Position -> (corpus index, source ids, target ids), sources cut to ``max_src_len`` ids.

    The corpus index is the line of the split's files that the position holds (:meth:`SplitView.row`:
    the position itself unless filtering dropped pairs), so a batch's ``index`` always locates
    sentences in the corpus; ``offset`` is added to it (a pair's place among several corpora).
    """

    def __init__(self, data: TokenizedSplit | SplitView, max_src_len: int | None = None, offset: int = 0):
        self.data, self.max_src_len, self.offset = data, max_src_len, int(offset)

    def __len__(self) -> int:
        return len(self.data)

    def shifted(self, offset: int) -> PairDataset:
        return PairDataset(self.data, self.max_src_len, offset)

    def __getitem__(self, i: int):
        index = self.data.row(i) if isinstance(self.data, SplitView) else i
        return self.offset + index, truncate_source(self.data.src(i), self.max_src_len), self.data.tgt(i)


class Corpus:
    """One language pair (see the module docstring): its splits, their cache entries, its datasets.

    ``cache_dir``: where tokenized splits are cached; ``prepare_workers``: processes that tokenize a
    split (None: the available CPUs, at most 8, from 100k pairs; 1: this process); ``prepare_times``:
    where the seconds of each tokenizing step (cache hits included) are added, for benchmarks and logs.
    """

    def __init__(self, options: CorpusOptions, cache_dir: str | Path, prepare_workers: int | None = None,
                 prepare_times: dict[str, float] | None = None):
        for split in options.extra_references:
            if split not in ("val", "test"):
                raise ConfigError(
                    f"data.extra_references.{split}: only the val and test splits are scored against "
                    "references; use {test: [FILE, ...]} or {val: [FILE, ...]}"
                )
        self.options = options
        self.root = Path(options.root)
        self.src_lang, self.tgt_lang = options.src_lang, options.tgt_lang
        self.splits, self.filtering, self.bleu_tokenize = options.splits, options.filtering, options.bleu_tokenize or None
        self.cache_dir, self.prepare_workers = Path(cache_dir), prepare_workers
        self.datasets: dict[str, PairDataset] = {}
        self.filter_counts: dict[str, int] = {}
        self.prepare_times = {} if prepare_times is None else prepare_times
        self._format: CorpusFormat | None = None  # the format read with (see format)
        self._train: PairSource | None = None
        self._texts: dict[str, TextPairs] = {}  # val and test, read whole
        self._more_refs: dict[str, list[list[str]]] = {}

    # ------------------------------------------------------------------ reading
    @staticmethod
    def _candidates(names: str | Sequence[str] | None) -> list[str]:
        if names is None:
            return []
        return [names] if isinstance(names, str) else [str(n) for n in names]

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise DataError(
                f"data.root={self.root} is a file, not a folder: point data.root at the folder that holds the "
                "corpus files (e.g. train.<src_lang> and train.<tgt_lang>)"
            )

    def reader(self, fmt: CorpusFormat | None = None) -> CorpusReader:
        """The reader of this corpus in ``fmt`` (default: :attr:`format`)."""
        return (fmt or self.format).reader(self.root, self.src_lang, self.tgt_lang)

    @property
    def format(self) -> CorpusFormat:
        """The format to read with: ``format=hf`` becomes a local format when ``root`` holds the files
        (checked once, on the training split, so all splits are read the same way)."""
        if self._format is None:
            fmt = self.options.format
            if fmt.format == "hf" and fmt.hf_data_files is None and self.root.is_dir():
                train = self._candidates(self.splits.train)
                for local in ("jsonl", "lines"):
                    candidate = replace(fmt, format=local)
                    if self.reader(candidate).find(train) is not None:
                        log.info("Reading %s files under %s instead of the Hub dataset %s", local, self.root, fmt.hf_path)
                        fmt = candidate
                        break
            self._format = fmt
        return self._format

    def materialize(self) -> None:
        """Generate the embedded corpus or download one into ``root``, as the options say."""
        self._check_root()
        if self.options.generate is not None:
            from seq2seq.data.toy import write_corpus

            write_corpus(self.root, **self.options.generate)
        download = self.options.download
        if download == "multi30k":
            from seq2seq.data.download import download_multi30k

            if self.reader().find(self._candidates(self.splits.train)) is None:
                download_multi30k(self.root, langs=(self.src_lang, self.tgt_lang))
        elif download:
            raise DataError(f"data.download={download!r} is not a known corpus; use 'multi30k' or null")

    def source(self, split: str) -> PairSource | None:
        """``split``'s pairs; None for a missing optional (test) split. A missing required split
        raises with the expected paths of every candidate (or the file(s) missing of one)."""
        if split == "train" and self._train is not None:
            return self._train
        if split in self._texts:
            return self._texts[split]
        self._check_root()
        candidates = self._candidates(getattr(self.splits, split))
        if not candidates:
            if split == "test":
                return None
            raise DataError(f"data.splits.{split} is empty; name the {split} split's files (e.g. '{split}')")
        reader = self.reader()
        found = reader.find(candidates)
        if found is None and split == "test":
            return None
        source = reader.source(found or (candidates[0] if len(candidates) == 1 else candidates))
        if split == "train":
            limit = self.options.max_train_pairs
            self._train = source if limit is None else source.head(limit)
            return self._train
        self._texts[split] = TextPairs(*source.texts(), f"{self.root}/{found}")
        return self._texts[split]

    def _required(self, split: str) -> PairSource:
        source = self.source(split)
        if source is None:
            raise DataError(
                f"no {split} split under {self.root} (looked for {getattr(self.splits, split)}); "
                "evaluate split=val, or set data.splits.test"
            )
        return source

    def texts(self, split: str) -> tuple[list[str], list[str]]:
        """(sources, references) of ``split``, generating or downloading the corpus first if the options say so."""
        self.materialize()
        return self._required(split).texts()

    def sources(self, split: str) -> list[str]:
        """The split's raw source sentences."""
        return self._required(split).texts()[0]

    def references(self, split: str) -> list[str]:
        """The split's raw target sentences (its first reference; see :meth:`reference_streams`)."""
        return self._required(split).texts()[1]

    def reference_streams(self, split: str) -> list[list[str]]:
        """Every reference of ``split`` in sacreBLEU's layout, one list per reference: the split's
        target side, then each file of ``extra_references[split]`` (read once, line counts checked)."""
        source = self._required(split)
        references = source.texts()[1]
        if split not in self._more_refs:
            self._more_refs[split] = [read_aligned_lines(path, len(references), f"the {split} split ({source.where})")
                                      for path in self.extra_reference_files(split)]
        return [references, *self._more_refs[split]]

    def split_name(self, split: str) -> str:
        """The base name ``split`` is read from (``test_2016_flickr``): the first of its candidates
        whose files exist in :attr:`format`, else (a Hub dataset that cannot be listed now) the first."""
        candidates = self._candidates(getattr(self.splits, split)) or [split]
        try:
            found = self.reader().find(candidates)
        except DataError:
            found = None
        return found or candidates[0]

    def extra_reference_files(self, split: str) -> list[Path]:
        """The files of ``extra_references[split]``, relative paths under ``root``."""
        return [Path(name) if Path(name).is_absolute() else self.root / name
                for name in self.options.extra_references.get(split, ())]

    def reference_files(self, split: str) -> list[Path]:
        """The files ``split``'s references are read from: the target side's (none for a Hub
        dataset), then :meth:`extra_reference_files`."""
        return self.reader().target_files(self.split_name(split)) + self.extra_reference_files(split)

    # ------------------------------------------------------------------ the token cache
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

    def tokenized(self, tokenizer: Tokenizer, split: str) -> TokenizedSplit | None:
        """The split's ids from the cache; tokenized and written there first when missing or damaged.
        None for a missing optional (test) split."""
        source = self.source(split)
        if source is None:
            return None
        with timed(self.prepare_times, f"tokenize_{split}"):
            path = self._cache_file(tokenizer, source.digest())
            try:
                return open_split(path)
            except FileNotFoundError:
                pass
            except CacheDamaged as err:
                log.warning("The cached token ids of %s (%s) are damaged: %s. Tokenizing it again.", source.where, path, err)
                remove_entry(path)
            pairs = source.count()
            dtype = id_dtype(max(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size))
            with SplitWriter(path, dtype) as writer, Progress(f"Tokenizing {source.where}", pairs, unit="pairs") as progress:
                for chunk in encode_chunks(tokenizer, source.chunks(CHUNK_PAIRS), dtype, self._workers(pairs)):
                    writer.add(chunk.src, chunk.src_lengths, chunk.tgt, chunk.tgt_lengths, chunk.unknown)
                    progress.update(len(chunk))
                writer.commit(source=source.where)
            try:
                return open_split(path)
            except CacheDamaged as err:  # written a moment ago: the disk lost it
                raise DataError(f"cannot read back the token ids just written to {path}: {err}") from None

    def release(self) -> None:
        """Forget the training source: a format read whole (``hf``) holds its texts."""
        if isinstance(self._train, TextPairs):
            self._train = None

    # ------------------------------------------------------------------ datasets
    def setup(self, tokenizer: Tokenizer, given_tokenizer: bool = False) -> None:
        """The datasets of every split (every rank): the training split filtered, val/test sources cut.

        ``given_tokenizer``: a tokenizer that was not trained on this corpus (fine-tuning), whose
        ``<unk>`` share is reported."""
        for split in SPLITS:
            data = self.tokenized(tokenizer, split)
            if data is None:
                if self.splits.test is None:
                    log.info("No test split configured (data.splits.test=null); the run will not test.")
                else:
                    log.warning("No test split found under %s (looked for %s); the run will not test.",
                                self.root, self.splits.test)
                continue
            if split == "train":
                if given_tokenizer:
                    self._report_unknown(data)
                self.datasets[split] = PairDataset(self._filter_train(data))
            else:
                # Every reference is scored; over-long sources are cut rather than dropped.
                self.datasets[split] = PairDataset(data, max_src_len=self.filtering.max_src_len + 1)
                self.reference_streams(split)  # a missing or misaligned extra reference stops here

    def _report_unknown(self, data: TokenizedSplit) -> None:
        """Warn when a handed-over tokenizer maps much of this corpus to the unknown piece."""
        for side, key in (("source", "src"), ("target", "tgt")):
            unknown, total = data.meta[f"{key}_unk"], data.meta[f"{key}_tokens"]  # counted while tokenizing
            share = unknown / total if total else 0.0
            if share > 0.01:
                log.warning(
                    "%.1f%% of the %s tokens of %s are unknown to the tokenizer this run was given (the parent's "
                    "in fine-tuning): its vocabulary does not cover this corpus well", 100 * share, side, self.root,
                )

    def _filter_train(self, data: TokenizedSplit) -> TokenizedSplit | SplitView:
        """Drop (or truncate) training pairs as :class:`Filtering` says: the kept pairs (``data`` itself
        when every pair was kept whole). Works on the length arrays alone: this runs in every
        ``setup``, including cached runs, and never reads the ids."""
        f = self.filtering
        src_len = data.src_lengths.astype(np.int32) - 1  # without EOS, as filter_lengths expects
        kept, counts = filter_lengths(src_len, data.tgt_lengths, max_src_len=f.max_src_len, max_tgt_len=f.max_tgt_len,
                                      overlong=f.overlong, max_len_ratio=f.max_len_ratio)
        del src_len
        self.filter_counts = {**counts, "kept": len(kept), "total": len(data)}
        if len(kept) < len(data) or counts.get("truncated"):
            log.info("Training pairs filtered: %s", self.filter_counts)
        if len(kept) == 0:
            raise DataError(
                f"every training pair under {self.root} was filtered out ({self.filter_counts}); "
                "raise data.max_src_len / data.max_tgt_len or relax data.max_len_ratio"
            )
        truncated = bool(counts.get("truncated"))
        if len(kept) == len(data) and not truncated:
            return data
        return SplitView(
            data, None if len(kept) == len(data) else kept,
            max_src_len=f.max_src_len + 1 if truncated else None,  # + EOS
            max_tgt_len=f.max_tgt_len if truncated else None,
        )
