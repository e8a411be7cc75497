"""Data at scale: memory-mapped token storage, streamed and parallel tokenization, sampled
sentencepiece training, preparation faults (damaged cache, small vocabulary, data.root a file),
the length-only filter and sampler, progress lines, and benchmarks/data_scale.py end to end.

Small corpora keep each test to a few seconds; the worker-pool tests force two processes on them.
"""

from __future__ import annotations

import gzip
import json
import logging
import multiprocessing
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from seq2seq.data import corpus as corpus_module
from seq2seq.data import tokenizer as tok_module
from seq2seq.data.datamodule import Seq2SeqDataModule
from seq2seq.data.filtering import filter_lengths, filter_pairs
from seq2seq.data.progress import Progress
from seq2seq.data.sampler import TokenBudgetBatchSampler, _greedy_boundaries
from seq2seq.data.sources import CorpusFormat, PairChunk, read_split
from seq2seq.data.storage import CacheDamaged, TokenizedSplit, id_dtype, open_split
from seq2seq.data.tokenizer import EOS_ID, Tokenizer
from seq2seq.errors import DataError

REPO = Path(__file__).resolve().parents[1]
WORDS = ["a", "big", "cat", "dog", "sees", "the", "small", "red", "house", "near", "green", "tree", "über",
         "blue", "sky", "with", "old", "man", "naïve", "café", "straße", "東京"]


def make_corpus(root: Path, n: int = 300, seed: int = 0, split: str = "train", crlf: bool = False,
                bom: bool = False, final_newline: bool = True, gz: bool = False) -> tuple[list[str], list[str]]:
    """``n`` pairs of 1-20 words (some empty targets), written as {split}.en / {split}.de."""
    rng = random.Random(seed)
    src = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 20))) for _ in range(n)]
    tgt = [" ".join(w[::-1] for w in s.split()) if i % 37 else "" for i, s in enumerate(src)]
    root.mkdir(parents=True, exist_ok=True)
    for lang, lines in (("en", src), ("de", tgt)):
        end = "\r\n" if crlf else "\n"
        text = end.join(lines) + (end if final_newline else "")
        data = (("\ufeff" if bom else "") + text).encode()
        path = root / f"{split}.{lang}"
        if gz:
            (path.with_name(path.name + ".gz")).write_bytes(gzip.compress(data))
        else:
            path.write_bytes(data)
    return src, tgt


def datamodule(root: Path, cache: Path, **kwargs) -> Seq2SeqDataModule:
    options = {"root": str(root), "src_lang": "en", "tgt_lang": "de", "vocab_size": 64, "max_tokens": 256,
               "eval_max_tokens": 256, "cache_dir": str(cache), "splits": {"train": "train", "val": "val",
                                                                         "test": None}}
    return Seq2SeqDataModule.from_config(**{**options, **kwargs})


def prepared(dm: Seq2SeqDataModule) -> Seq2SeqDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    make_corpus(root, 300, seed=0)
    make_corpus(root, 60, seed=1, split="val")
    return root


def entry_of(cache: Path, dm: Seq2SeqDataModule, split: str = "train") -> Path:
    corpus = dm.corpora[None]
    return corpus._cache_file(dm.tokenizer, corpus.source(split).digest())


def as_lists(data) -> tuple[list[list[int]], list[list[int]]]:
    return ([np.asarray(data.src(i)).tolist() for i in range(len(data))],
            [np.asarray(data.tgt(i)).tolist() for i in range(len(data))])


# -- storage ---------------------------------------------------------------------------------------


def test_cached_splits_are_read_only_memmaps_that_round_trip(corpus: Path, tmp_path: Path) -> None:
    dm = prepared(datamodule(corpus, tmp_path / "cache"))
    data = dm.datasets["train"].data  # a SplitView: the pairs with an empty target are filtered out
    base = getattr(data, "base", data)
    for array in (base.src_flat, base.tgt_flat, base.src_offsets, base.src_lens):
        assert isinstance(array, np.memmap) and not array.flags.writeable
    assert base.src_flat.dtype == np.uint8  # vocab of 64: the smallest dtype that fits
    assert base.src_offsets.dtype == np.int64
    # The ids are exactly what the tokenizer gives, sentence by sentence.
    src, tgt = read_split(corpus, "train", "en", "de", CorpusFormat())
    assert as_lists(base) == (dm.tokenizer.encode_source(src), dm.tokenizer.encode_target(tgt))
    assert all(ids[-1] == EOS_ID for ids in as_lists(base)[0])
    with pytest.raises(ValueError):
        base.src_flat[0] = 5  # read-only

    # save/load round trip of an in-memory split, and the smallest dtype for a larger vocabulary.
    split = TokenizedSplit.from_lists([[5, 300, 3], [3]], [[70000, 1], []])
    split.save(tmp_path / "entry")
    loaded = TokenizedSplit.load(tmp_path / "entry")
    assert loaded.src_flat.dtype == np.uint32 and as_lists(loaded) == as_lists(split)
    assert id_dtype(256) == np.uint8 and id_dtype(257) == np.uint16 and id_dtype(65536) == np.uint16
    assert id_dtype(65537) == np.uint32
    # A memory-mapped split pickles as its path (a spawned worker maps it again, no copy of the ids).
    blob = pickle.dumps(loaded)
    assert len(blob) < 1000 and as_lists(pickle.loads(blob)) == as_lists(split)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "entry_is_a_file", "meta_missing"])
def test_damaged_cache_entry_is_rebuilt_with_a_warning(damage: str, corpus: Path, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    first = prepared(datamodule(corpus, cache))
    expected = as_lists(first.datasets["train"].data)
    entry = entry_of(cache, first)
    if damage == "truncated":  # a crash or a full disk cut the file
        data = (entry / "src.npy").read_bytes()
        (entry / "src.npy").write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        (entry / "tgt_offsets.npy").write_bytes(b"this is not an array" * 20)
    elif damage == "entry_is_a_file":
        import shutil

        shutil.rmtree(entry)
        entry.write_bytes(b"PK\x03\x04 an old archive, or anything else")
    else:
        (entry / "meta.json").unlink()
    with pytest.raises(CacheDamaged):
        open_split(entry)

    with caplog.at_level(logging.WARNING, logger="seq2seq.data.datamodule"):
        second = prepared(datamodule(corpus, cache))
    assert "damaged" in caplog.text and "Tokenizing it again" in caplog.text
    assert as_lists(second.datasets["train"].data) == expected
    open_split(entry)  # whole again


def test_damaged_tokenizer_file_is_retrained_with_a_warning(corpus: Path, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    first = prepared(datamodule(corpus, cache))
    (model,) = cache.glob("spm-*.src.model")
    model.write_bytes(model.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        second = prepared(datamodule(corpus, cache))
    assert "sentencepiece model" in caplog.text and "damaged" in caplog.text
    assert second.tokenizer.state_dict() == first.tokenizer.state_dict()


def test_vocab_size_shortfall_is_reported(corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="seq2seq.data.datamodule"):
        dm = prepared(datamodule(corpus, tmp_path / "cache", vocab_size=3000))
    reached = dm.tokenizer.src_vocab_size
    assert reached < 3000
    messages = [r.getMessage() for r in caplog.records if "vocab_size" in r.getMessage()]
    assert len(messages) == 1  # once, not in both prepare_data and setup
    assert f"data.vocab_size=3000, but sentencepiece reached only {reached} pieces" in messages[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seq2seq.data.datamodule"):
        prepared(datamodule(corpus, tmp_path / "cache", vocab_size=reached))
    assert "vocab_size" not in caplog.text


def test_data_root_that_is_a_file_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import seq2seq.data.download as download

    root = tmp_path / "train.en"
    root.write_text("a file, not a folder\n")
    monkeypatch.setattr(download, "download_multi30k", lambda *a, **k: pytest.fail("must not download"))
    for kwargs in ({}, {"download": "multi30k"}, {"format": "tsv"}):
        dm = datamodule(root, tmp_path / "cache", **kwargs)
        for name, args in (("prepare_data", ()), ("setup", ("fit",)), ("texts", ("val",))):
            with pytest.raises(DataError) as err:
                getattr(dm, name)(*args)
            assert f"data.root={root} is a file, not a folder" in str(err.value)
            assert "\n" not in str(err.value)


# -- streaming and parallel tokenization ----------------------------------------------------------


@pytest.mark.parametrize("layout", [dict(crlf=True, bom=True, final_newline=False), dict(gz=True)])
def test_parallel_streamed_tokenization_matches_the_single_process_path(
    layout: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "corpus"
    make_corpus(root, 257, seed=3, **layout)
    make_corpus(root, 40, seed=4, split="val")
    monkeypatch.setattr(corpus_module, "CHUNK_PAIRS", 23)  # many chunks, the last one short
    contexts = []
    get_context = multiprocessing.get_context
    monkeypatch.setattr(tok_module.multiprocessing, "get_context",
                        lambda method=None: contexts.append(method) or get_context(method))

    one = prepared(datamodule(root, tmp_path / "cache1", prepare_workers=1, max_src_len=1000, max_tgt_len=1000))
    assert contexts == []
    two = prepared(datamodule(root, tmp_path / "cache2", prepare_workers=2, max_src_len=1000, max_tgt_len=1000))
    assert contexts, "prepare_workers=2 must tokenize in worker processes"
    assert one.tokenizer.state_dict() == two.tokenizer.state_dict()
    a, b = one.datasets["train"].data, two.datasets["train"].data
    base_a, base_b = getattr(a, "base", a), getattr(b, "base", b)
    for key in ("src_flat", "src_offsets", "tgt_flat", "tgt_offsets", "src_lens", "tgt_lens"):
        np.testing.assert_array_equal(getattr(base_a, key), getattr(base_b, key))
    assert base_a.meta["src_unk"] == base_b.meta["src_unk"]
    # ... and what the in-memory path (read_split + encode_source/encode_target) gives.
    src, tgt = read_split(root, "train", "en", "de", CorpusFormat())
    reference = TokenizedSplit.from_lists(one.tokenizer.encode_source(src), one.tokenizer.encode_target(tgt))
    assert as_lists(base_a) == as_lists(reference)
    assert one.references("train") == tgt  # the lines as the reader gives them (BOM, \r, last line)


@pytest.mark.parametrize("fmt", ["tsv", "jsonl"])
def test_tsv_and_jsonl_training_splits_stream_as_lines_do(fmt: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-file training split is read in blocks and tokenized chunk by chunk, never whole: the
    file reader's buffer stays a small part of the file, every chunk holds at most CHUNK_PAIRS pairs,
    and the cached ids are those of the same corpus as line files."""
    from seq2seq.data import sources

    root = tmp_path / "corpus"
    src, tgt = make_corpus(root, 400, seed=8)
    make_corpus(root, 40, seed=9, split="val")
    if fmt == "tsv":
        (root / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in zip(["en", *src], ["de", *tgt])))
        options = {"format": "tsv", "src_field": "en", "tgt_field": "de"}
    else:
        (root / "train.jsonl").write_text("".join(json.dumps({"t": {"en": s, "de": t}}, ensure_ascii=False) + "\n"
                                                  for s, t in zip(src, tgt)))
        options = {"format": "jsonl", "src_field": "t.en", "tgt_field": "t.de"}
    (root / f"val.{fmt}").write_bytes((root / f"train.{fmt}").read_bytes())
    monkeypatch.setattr(sources, "BLOCK_BYTES", 512)
    monkeypatch.setattr(sources, "RECORDS_PER_BLOCK", 16)
    monkeypatch.setattr(corpus_module, "CHUNK_PAIRS", 23)
    buffers, chunks = [], []
    fill = sources._LineReader._fill

    def watched_fill(reader):
        fill(reader)
        buffers.append(len(reader.buf))

    encode = corpus_module.encode_chunks

    def watched_encode(tokenizer, pieces, *args):
        return encode(tokenizer, (chunks.append(len(c)) or c for c in pieces), *args)

    monkeypatch.setattr(sources._LineReader, "_fill", watched_fill)
    monkeypatch.setattr(corpus_module, "encode_chunks", watched_encode)
    streamed = prepared(datamodule(root, tmp_path / "cache_a", max_src_len=1000, max_tgt_len=1000, **options))
    assert isinstance(streamed.corpora[None].source("train"), sources.RecordFile)
    assert max(buffers) < (root / f"train.{fmt}").stat().st_size / 8
    assert max(chunks) == 23 and sum(chunks) == 400 + 400  # train and val, 23 pairs at a time
    lines = prepared(datamodule(root, tmp_path / "cache_b", max_src_len=1000, max_tgt_len=1000))
    assert streamed.tokenizer.state_dict() == lines.tokenizer.state_dict()
    a, b = (getattr(d, "base", d) for d in (streamed.datasets["train"].data, lines.datasets["train"].data))
    assert as_lists(a) == as_lists(b) and len(a) == 400
    assert streamed.references("train") == tgt


def test_bad_utf8_in_a_worker_chunk_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "corpus"
    make_corpus(root, 120, seed=5)
    make_corpus(root, 20, seed=6, split="val")
    lines = (root / "train.de").read_bytes().split(b"\n")
    lines[76] = b"caf\xe9 au lait"  # Latin-1, line 77
    (root / "train.de").write_bytes(b"\n".join(lines))
    monkeypatch.setattr(corpus_module, "CHUNK_PAIRS", 10)
    # A tokenizer trained on a clean copy, so the bad line is met while tokenizing in the workers.
    tokenizer = Tokenizer.train(*make_corpus(tmp_path / "clean", 120, seed=5), vocab_size=64)
    with pytest.raises(DataError) as err:
        datamodule(root, tmp_path / "cache", prepare_workers=2, tokenizer=tokenizer).prepare_data()
    assert f"{root / 'train.de'}, line 77: invalid UTF-8" in str(err.value)
    assert not list((tmp_path / "cache").glob("*ids-*")), "no cache entry, complete or temporary, is left"


class _ChunkThatKillsItsWorker(PairChunk):
    """Ends the worker process that decodes it, as the kernel's OOM killer would."""

    def texts(self) -> tuple[list[str], list[str]]:
        os._exit(9)


def test_a_worker_that_dies_is_an_error_not_a_wait(tmp_path: Path) -> None:
    tokenizer = Tokenizer.train(*make_corpus(tmp_path / "corpus", 60, seed=7), vocab_size=64)
    chunks = [PairChunk(["a dog ."], ["ein hund ."]), _ChunkThatKillsItsWorker(["a"], ["b"])]
    with pytest.raises(RuntimeError, match="a tokenization worker process died .* fewer data.prepare_workers"):
        list(tok_module.encode_chunks(tokenizer, chunks, np.uint16, workers=2))
    # The same chunks without the killer come back in order, from the workers.
    encoded = list(tok_module.encode_chunks(tokenizer, chunks[:1] * 3, np.uint16, workers=2))
    assert [len(e) for e in encoded] == [1, 1, 1]


def test_sentencepiece_trains_on_a_seeded_sample_above_the_threshold(corpus: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tok_module, "SAMPLE_SENTENCES", 150)  # 600 sentences (joint): sample 150
    seen = []
    train = Tokenizer.train.__func__

    def spy(cls, src_texts, tgt_texts, *args, **kwargs):
        seen.append(list(src_texts) + list(tgt_texts))
        return train(cls, src_texts, tgt_texts, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "train", classmethod(spy))
    a = prepared(datamodule(corpus, tmp_path / "cache_a"))
    b = prepared(datamodule(corpus, tmp_path / "cache_b"))
    assert len(seen) == 2 and len(seen[0]) == 150 and seen[0] == seen[1]  # same seed, same sample
    everything = set(a.sources("train")) | set(a.references("train"))
    assert set(seen[0]) <= everything and len(set(seen[0])) > 100
    assert a.tokenizer.state_dict() == b.tokenizer.state_dict()
    # Not the first 150 lines in file order: a shuffled sample from both sides.
    assert seen[0] != (a.sources("train") + a.references("train"))[:150]


# -- filtering and batching on lengths alone ------------------------------------------------------


def test_length_filter_equals_the_list_filter() -> None:
    rng = np.random.default_rng(0)
    for trial in range(50):
        n = int(rng.integers(0, 200))
        src = [list(range(int(k))) for k in rng.integers(0, 30, n)]
        tgt = [list(range(int(k))) for k in rng.integers(0, 30, n)]
        options = dict(max_src_len=int(rng.integers(1, 25)), max_tgt_len=int(rng.integers(1, 25)),
                       overlong=["drop", "truncate"][trial % 2], max_len_ratio=[None, 1.5, 3.0][trial % 3])
        res = filter_pairs(src, tgt, **options)
        kept, counts = filter_lengths(np.array([len(s) for s in src], dtype=np.uint16),
                                      np.array([len(t) for t in tgt], dtype=np.uint16), **options)
        np.testing.assert_array_equal(kept, res.kept)
        assert counts == res.counts


def test_sampler_batches_are_unchanged_by_the_fast_paths() -> None:
    def reference_boundaries(sorted_keys, max_tokens, max_sentences):
        boundaries, start = [], 0
        for i, key in enumerate(sorted_keys.tolist()):
            n = i - start
            if n > 0 and ((n + 1) * key > max_tokens or (max_sentences is not None and n + 1 > max_sentences)):
                boundaries.append(i)
                start = i
        return boundaries

    rng = np.random.default_rng(1)
    for trial in range(500):
        keys = np.sort(rng.integers(0 if trial % 5 == 0 else 1, int(rng.integers(2, 90)), int(rng.integers(0, 400))))
        max_tokens, max_sentences = int(rng.integers(1, 400)), None if trial % 3 else int(rng.integers(1, 30))
        assert _greedy_boundaries(keys, max_tokens, max_sentences) == reference_boundaries(
            keys, max_tokens, max_sentences)
    src, tgt = rng.integers(1, 60, 3000), rng.integers(1, 60, 3000)
    sampler = TokenBudgetBatchSampler(src, tgt, 512, shuffle=True, seed=3)
    candidates = rng.permutation(3000)
    expected = candidates[np.lexsort((tgt[candidates], src[candidates], np.maximum(src, tgt)[candidates]))]
    np.testing.assert_array_equal(sampler._sort(candidates), expected)


def test_setup_reads_only_lengths(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Filtering and batching a cached split never touch the id arrays (they stay unread pages)."""
    prepared(datamodule(corpus, tmp_path / "cache", max_src_len=12, max_tgt_len=12))
    touched = []
    real_open = corpus_module.open_split

    class Watched(np.memmap):
        def __getitem__(self, key):
            touched.append(key)
            return super().__getitem__(key)

    def watching_open(path):
        data = real_open(path)
        data.src_flat, data.tgt_flat = data.src_flat.view(Watched), data.tgt_flat.view(Watched)
        return data

    monkeypatch.setattr(corpus_module, "open_split", watching_open)
    dm = prepared(datamodule(corpus, tmp_path / "cache", max_src_len=12, max_tgt_len=12))
    dm.train_dataloader()
    assert touched == [] and dm.filter_counts["too_long"] > 0
    batch = next(iter(dm.train_dataloader()))
    assert len(touched) == 2 * batch["src"].shape[0]  # the batch's own pairs, one slice per side


# -- progress ------------------------------------------------------------------------------------


def test_progress_logs_rate_lines_when_not_on_a_terminal(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("SEQ2SEQ_PROGRESS", "log")
    with caplog.at_level(logging.INFO, logger="seq2seq.data"):
        with Progress("Tokenizing corpus/train", total=1000, unit="pairs", log_every=0.0) as progress:
            progress.update(400)
            progress.update(600)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("Tokenizing corpus/train: 400 / 1,000 (40%) pairs, ") and "pairs/s" in lines[0]
    assert lines[-1].startswith("Tokenizing corpus/train: done, 1,000 / 1,000 (100%) pairs")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="seq2seq.data"):
        with Progress("short step", total=10) as progress:  # under log_every: silent
            progress.update(10)
    assert caplog.text == ""


# -- the benchmark ---------------------------------------------------------------------------------


@pytest.mark.slow  # four fresh processes that import torch and Lightning: 15-60 s on a shared 2-core machine
def test_data_scale_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "data_scale.py"), "--pairs", "2000", "--workdir",
         str(tmp_path / "work"), "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    for key in ("pairs", "corpus", "prepare_s", "prepare_steps", "prepare_peak_rss_mb", "reload_s", "ranks",
                "rank_rss_extra_mb", "to_first_batch_s", "within_goals", "cache_mb", "train_tokens"):
        assert key in printed, key
    assert printed["pairs"] == 2000 and len(printed["ranks"]) == 2
    assert {r["rank"] for r in printed["ranks"]} == {0, 1}
    assert 20 <= printed["corpus"]["words_per_side_mean"]["en"] <= 30
    assert printed["prepare_peak_rss_mb"] > 50 and printed["reload_s"] > 0
    assert all(r["to_first_batch_s"] > 0 and r["first_batch_shape"][0] > 0 for r in printed["ranks"])
    assert printed["filter_counts"]["total"] == 2000 and printed["id_dtype"] == "<u2"
    # Reproducible from the seed: the same corpus bytes again.
    sys.path.insert(0, str(REPO / "benchmarks"))
    from synthetic_corpus import write_corpus

    write_corpus(tmp_path / "again", 2000, 0)
    corpus = next((tmp_path / "work").glob("corpus-2000-seed0"))
    for name in ("train.en", "train.de", "test.de"):
        assert (tmp_path / "again" / name).read_bytes() == (corpus / name).read_bytes()


def test_sentencepiece_can_train_in_a_child_process(corpus: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Large corpora train sentencepiece in a forked process (its memory is freed when it ends): the
    same model as in this process; an error in the child (bad UTF-8 while reading) comes back."""
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("needs fork")
    here = prepared(datamodule(corpus, tmp_path / "cache_here"))
    pids = tmp_path / "pids"
    train = Tokenizer.train.__func__

    def spy(cls, *args, **kwargs):
        with open(pids, "a") as f:
            f.write(f"{os.getpid()}\n")
        return train(cls, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "train", classmethod(spy))
    monkeypatch.setattr(tok_module, "SUBPROCESS_TRAINING_SENTENCES", 0)
    there = prepared(datamodule(corpus, tmp_path / "cache_there"))
    assert pids.read_text().split() != [str(os.getpid())] and len(pids.read_text().split()) == 1
    assert there.tokenizer.state_dict() == here.tokenizer.state_dict()

    lines = (corpus / "train.en").read_bytes().split(b"\n")
    lines[9] = b"na\xefve"
    (corpus / "train.en").write_bytes(b"\n".join(lines))
    with pytest.raises(DataError, match=r"train\.en, line 10: invalid UTF-8"):
        datamodule(corpus, tmp_path / "cache_bad").prepare_data()
