"""The DataModule end to end: every corpus format to batches, the cache, filtering, DDP, named configs.

Small synthetic corpora keep this file fast; one integration test trains a few steps on the real
Multi30k through ``seq2seq.train.train`` and is skipped where ``../shared/data`` is absent.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from helpers import compose_train
from seq2seq.data.datamodule import Seq2SeqDataModule
from seq2seq.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from seq2seq.errors import DataError

WORDS = ["a", "big", "cat", "dog", "sees", "the", "small", "red", "house", "near", "green", "tree", "under",
         "blue", "sky", "with", "old", "man"]
# A word-for-word "translation" so every target is a deterministic function of its source.
TRANSLATE = {w: w[::-1] + "x" for w in WORDS}


def make_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` sentence pairs of 1-15 words (varied lengths, so batches and padding are non-trivial)."""
    rng = random.Random(seed)
    src = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 15))) for _ in range(n)]
    return src, [" ".join(TRANSLATE[w] for w in s.split()) for s in src]


SPLIT_SIZES = {"train": 300, "val": 90, "test": 40}


def write_lines(root: Path, splits=("train", "val"), gz: bool = False) -> dict[str, tuple[list[str], list[str]]]:
    corpus = {}
    root.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(splits):
        src, tgt = corpus[split] = make_pairs(SPLIT_SIZES[split], seed=i)
        for lang, texts in (("en", src), ("de", tgt)):
            data = ("\n".join(texts) + "\n").encode()
            if gz:
                (root / f"{split}.{lang}.gz").write_bytes(gzip.compress(data))
            else:
                (root / f"{split}.{lang}").write_bytes(data)
    return corpus


def write_tsv(root: Path, splits=("train", "val")) -> dict:
    corpus = {}
    root.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(splits):
        src, tgt = corpus[split] = make_pairs(SPLIT_SIZES[split], seed=i)
        rows = ["en\tde", *(f"{s}\t{t}" for s, t in zip(src, tgt))]
        (root / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return corpus


def write_jsonl(root: Path, splits=("train", "val"), names: dict | None = None) -> dict:
    """WMT-style records: ``{"translation": {"en": ..., "de": ...}}``."""
    corpus = {}
    root.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(splits):
        src, tgt = corpus[split] = make_pairs(SPLIT_SIZES[split], seed=i)
        lines = [json.dumps({"id": j, "translation": {"en": s, "de": t}}) for j, (s, t) in enumerate(zip(src, tgt))]
        (root / f"{(names or {}).get(split, split)}.jsonl").write_text("\n".join(lines) + "\n")
    return corpus


def datamodule(root: Path, cache: Path, **kwargs) -> Seq2SeqDataModule:
    options = {"root": str(root), "src_lang": "en", "tgt_lang": "de", "vocab_size": 64, "max_tokens": 256,
               "eval_max_tokens": 256, "cache_dir": str(cache)}
    return Seq2SeqDataModule.from_config(**{**options, **kwargs})


def prepared(dm: Seq2SeqDataModule) -> Seq2SeqDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def check_batch(dm: Seq2SeqDataModule, batch: dict, split: str) -> None:
    """Keys, shapes and the BOS/EOS layout; decoding ``tgt_out`` gives back the indexed reference."""
    assert set(batch) == {"src", "tgt_in", "tgt_out", "index", "src_index", "tgt_index"}
    src, tgt_in, tgt_out, index = batch["src"], batch["tgt_in"], batch["tgt_out"], batch["index"]
    # The flat positions of the real tokens, for the training fast path.
    assert torch.equal(batch["src_index"], (src.reshape(-1) != PAD_ID).nonzero().squeeze(1))
    assert torch.equal(batch["tgt_index"], (tgt_out.reshape(-1) != PAD_ID).nonzero().squeeze(1))
    assert src.dim() == 2 and tgt_in.shape == tgt_out.shape and index.shape == (src.size(0),)
    assert src.size(0) == tgt_in.size(0) > 0
    assert (tgt_in[:, 0] == BOS_ID).all()
    for row in range(src.size(0)):
        n_src, n_tgt = int((src[row] != PAD_ID).sum()), int((tgt_out[row] != PAD_ID).sum())
        assert src[row, n_src - 1] == EOS_ID and tgt_out[row, n_tgt - 1] == EOS_ID  # EOS last
        assert (tgt_in[row, 1:n_tgt] == tgt_out[row, : n_tgt - 1]).all()  # shifted by one
    refs = dm.references(split)
    decoded = dm.tokenizer.decode_target(tgt_out.tolist())
    assert decoded == [refs[i] for i in index.tolist()]


# -- formats --------------------------------------------------------------------------------------


def _hf_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    write_jsonl(tmp_path / "corpus", names={"val": "valid"})
    return {"format": "hf", "hf_path": "json", "src_field": "translation.en", "tgt_field": "translation.de",
            "hf_data_files": {"train": "train.jsonl", "validation": "valid.jsonl"},
            "splits": {"train": "train", "val": "validation", "test": ["test"]}}


FORMATS = {
    "lines": lambda tmp, mp: (write_lines(tmp / "corpus"), {})[1],
    "lines_gz": lambda tmp, mp: (write_lines(tmp / "corpus", gz=True), {})[1],
    "tsv": lambda tmp, mp: (write_tsv(tmp / "corpus"), {"format": "tsv"})[1],
    "jsonl": lambda tmp, mp: (write_jsonl(tmp / "corpus"), {
        "format": "jsonl", "src_field": "translation.en", "tgt_field": "translation.de"})[1],
    "hf": _hf_options,
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_gives_batches(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    options = FORMATS[name](tmp_path, monkeypatch)
    dm = prepared(datamodule(tmp_path / "corpus", tmp_path / "cache", **options))
    assert len(dm.datasets["train"]) == SPLIT_SIZES["train"]
    assert len(dm.datasets["val"]) == SPLIT_SIZES["val"]
    assert not dm.has_test  # no test files: optional, no error
    batches = list(dm.train_dataloader())
    assert len(batches) > 1
    check_batch(dm, batches[0], "train")
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(SPLIT_SIZES["train"]))
    check_batch(dm, next(iter(dm.val_dataloader())), "val")


@pytest.fixture
def format_registry():
    """The registry of corpus formats, as it was before the test registered its own."""
    from seq2seq.data.sources import FORMATS

    before = dict(FORMATS)
    yield FORMATS
    FORMATS.clear()
    FORMATS.update(before)


def test_a_new_format_is_one_registered_class_and_trains(format_registry, tmp_path: Path) -> None:
    """ARCHITECTURE's recipe: write one reader class and register it; data.format=<name> then reads,
    streams, caches and trains on it like any other format, and its errors name file and line."""
    from helpers import QUICK
    from seq2seq.data import toy
    from seq2seq.data.sources import RecordFormat, register_format
    from seq2seq.train import train

    @register_format("bars")
    class BarsFormat(RecordFormat):
        """``{split}.bars``: ``source ||| target`` on each line (Moses' phrase-table style)."""

        def pairs(self, path, lines):
            for line_no, line in lines:
                src, sep, tgt = line.partition(" ||| ")
                if not sep:
                    raise DataError(f"{path}, line {line_no}: no ' ||| ' between source and target")
                yield src, tgt

    assert format_registry["bars"] is BarsFormat
    generated = toy.write_corpus(tmp_path / "toy", sizes={"train": 600, "val": 16, "test": 16})
    root = tmp_path / "bars"
    root.mkdir()
    for split in ("train", "val", "test"):
        en, de = ((generated / f"{split}.{lang}").read_text().splitlines() for lang in ("en", "de"))
        (root / f"{split}.bars").write_text("".join(f"{s} ||| {t}\n" for s, t in zip(en, de)))

    dm = prepared(datamodule(root, tmp_path / "cache", format="bars"))
    assert dm.sources("val") == (generated / "val.en").read_text().splitlines()
    assert dm.references("test") == de
    assert len(dm.datasets["train"]) == 600 and dm.has_test
    check_batch(dm, next(iter(dm.train_dataloader())), "train")

    overrides = [o for o in QUICK if not o.startswith("data.generate")]
    cfg = compose_train(tmp_path / "train", ["experiment=toy", *overrides, "data.generate=null", f"data.root={root}",
                                             "data.format=bars"])
    metrics = train(cfg)
    written = json.loads((tmp_path / "train" / "run" / "metrics.json").read_text())
    assert written["status"] == "finished" and "test/bleu" in written and "val/bleu" in metrics

    (root / "train.bars").write_text("ein ||| one\nzwei two\n")
    with pytest.raises(DataError, match=f"{root / 'train.bars'}, line 2: no ' \\|\\|\\| '"):
        datamodule(root, tmp_path / "cache2", format="bars").prepare_data()
    with pytest.raises(DataError, match="Unknown corpus format 'csv'; use one of: lines, tsv, jsonl, hf, bars"):
        datamodule(root, tmp_path / "cache2", format="csv").prepare_data()


def test_validation_covers_every_sentence_once_in_length_order(tmp_path: Path) -> None:
    write_lines(tmp_path / "corpus")
    dm = prepared(datamodule(tmp_path / "corpus", tmp_path / "cache", eval_max_tokens=128))
    batches = list(dm.val_dataloader())
    assert len(batches) > 3
    indices = [i for b in batches for i in b["index"].tolist()]
    assert sorted(indices) == list(range(SPLIT_SIZES["val"]))  # every sentence exactly once
    data = dm.datasets["val"].data
    keys = np.maximum(data.src_lengths, data.tgt_lengths + 1)[indices]
    assert (np.diff(keys) >= 0).all()  # shortest first
    # Outputs gathered in batch order go back to corpus order through the indices.
    outputs = {}
    for b in batches:
        outputs.update(zip(b["index"].tolist(), dm.tokenizer.decode_target(b["tgt_out"].tolist())))
    assert [outputs[i] for i in range(len(outputs))] == dm.references("val")
    # Twice the same order: no randomness in evaluation.
    assert indices == [i for b in dm.val_dataloader() for i in b["index"].tolist()]


def test_test_split_is_optional(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_lines(tmp_path / "no_test")
    with caplog.at_level(logging.WARNING, logger="seq2seq.data"):
        dm = prepared(datamodule(tmp_path / "no_test", tmp_path / "cache"))
    assert not dm.has_test
    assert "No test split found" in caplog.text
    with pytest.raises(DataError, match="no test split"):
        dm.test_dataloader()

    corpus = write_lines(tmp_path / "with_test", splits=("train", "val", "test"))
    dm = prepared(datamodule(tmp_path / "with_test", tmp_path / "cache", splits={"test": ["test_2016", "test"]}))
    assert dm.has_test and dm.references("test") == corpus["test"][1]
    check_batch(dm, next(iter(dm.test_dataloader())), "test")


# -- cache ----------------------------------------------------------------------------------------


def test_second_run_reuses_tokenizer_and_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_lines(tmp_path / "corpus", splits=("train", "val", "test"))
    first = prepared(datamodule(tmp_path / "corpus", tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise AssertionError("the second run must not train or tokenize again")

    with monkeypatch.context() as m:
        for name in ("train", "encode_source", "encode_target", "encode_flat"):
            m.setattr(Tokenizer, name, refuse)
        second = prepared(datamodule(tmp_path / "corpus", tmp_path / "cache"))
    for split in ("train", "val", "test"):
        a, b = first.datasets[split].data, second.datasets[split].data
        for key in ("src_flat", "src_offsets", "tgt_flat", "tgt_offsets"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))

    # The cache is keyed on content: an edited file is tokenized again, the others are not.
    calls = []
    encode = Tokenizer.encode_flat

    def counting(self, texts, side, *args, **kwargs):
        if side == "source":
            calls.append(len(texts))
        return encode(self, texts, side, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "encode_flat", counting)
    val = tmp_path / "corpus" / "val.en"
    val.write_text(val.read_text().replace("dog", "cat"))
    prepared(datamodule(tmp_path / "corpus", tmp_path / "cache"))
    assert calls == [SPLIT_SIZES["val"]]


def test_interrupted_cache_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from seq2seq.data import storage

    write_lines(tmp_path / "corpus")
    cache = tmp_path / "cache"
    append = storage._NpyAppender.append

    def crash_midway(self, values):
        self.file.write(b"\x01\x02 half a chunk")  # some bytes reach the disk, then the write dies
        raise OSError("No space left on device")

    monkeypatch.setattr(storage._NpyAppender, "append", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        datamodule(tmp_path / "corpus", cache).prepare_data()
    leftovers = sorted(p.name for p in cache.iterdir())
    assert not [n for n in leftovers if n.startswith(("ids-", ".ids-")) or n.endswith(".tmp")], leftovers

    monkeypatch.setattr(storage._NpyAppender, "append", append)
    dm = prepared(datamodule(tmp_path / "corpus", cache))  # the next run recovers cleanly
    entries = list(cache.glob("ids-*"))
    assert len(entries) == 2 and all(e.is_dir() for e in entries)
    assert len(dm.datasets["train"]) == SPLIT_SIZES["train"]


# -- filtering ------------------------------------------------------------------------------------


def test_filter_counts_are_stored_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_lines(tmp_path / "corpus")
    with caplog.at_level(logging.INFO, logger="seq2seq.data"):
        dm = prepared(datamodule(tmp_path / "corpus", tmp_path / "cache", max_src_len=12, max_tgt_len=200))
    counts = dm.filter_counts
    assert counts["total"] == SPLIT_SIZES["train"] and counts["too_long"] > 0
    assert counts["kept"] + counts["too_long"] + counts["empty"] + counts["ratio"] == counts["total"]
    assert len(dm.datasets["train"]) == counts["kept"]
    assert (dm.datasets["train"].data.src_lengths <= 12 + 1).all()  # + EOS
    assert "Training pairs filtered" in caplog.text
    assert len(dm.datasets["val"]) == SPLIT_SIZES["val"]  # evaluation data is never dropped
    check_batch(dm, next(iter(dm.train_dataloader())), "train")

    dm = prepared(datamodule(tmp_path / "corpus", tmp_path / "cache", max_src_len=12, overlong="truncate"))
    assert dm.filter_counts["kept"] == SPLIT_SIZES["train"] and dm.filter_counts["truncated"] > 0
    data = dm.datasets["train"].data
    assert (data.src_lengths <= 13).all()
    assert all(data.src(i)[-1] == EOS_ID for i in range(len(data)))  # truncation keeps the final EOS


# -- user errors ----------------------------------------------------------------------------------


def test_mismatched_line_counts_name_both_files(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_lines(root)
    (root / "train.de").write_text("\n".join((root / "train.de").read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError) as err:
        datamodule(root, tmp_path / "cache").prepare_data()
    assert str(root / "train.en") in str(err.value) and str(root / "train.de") in str(err.value)
    assert "300 lines" in str(err.value) and "299" in str(err.value)


def test_missing_files_list_expected_paths(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    with pytest.raises(DataError) as err:
        datamodule(root, tmp_path / "cache").prepare_data()
    assert str(root / "train.en") in str(err.value) and str(root / "train.de") in str(err.value)
    assert "data.root" in str(err.value)

    write_lines(root, splits=("train",))  # a missing validation split is an error too
    with pytest.raises(DataError, match="val.en"):
        prepared(datamodule(root, tmp_path / "cache"))


# -- DDP ------------------------------------------------------------------------------------------


def test_train_sampler_takes_rank_and_world_size_from_the_trainer(tmp_path: Path) -> None:
    write_lines(tmp_path / "corpus")
    dm = prepared(datamodule(tmp_path / "corpus", tmp_path / "cache", max_tokens=128))
    per_rank = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.train_dataloader()
        assert (dm.train_sampler.num_replicas, dm.train_sampler.rank) == (2, rank)
        per_rank.append([tuple(b["index"].tolist()) for b in loader])
    assert len(per_rank[0]) == len(per_rank[1])  # same number of steps on every rank
    total = dm.train_sampler.num_batches_total
    # Disjoint batches; with an odd number of batches one is repeated to even out the ranks.
    assert len(set(per_rank[0]) & set(per_rank[1])) == total % 2
    assert {i for batches in per_rank for b in batches for i in b} == set(range(SPLIT_SIZES["train"]))


# -- named configs --------------------------------------------------------------------------------

DATA_CONFIGS = ["multi30k", "multi30k_de_en", "tatoeba_de_en", "wmt14_en_de", "iwslt2017_de_en", "samsum",
                "cnn_dailymail"]


@pytest.mark.parametrize("name", DATA_CONFIGS)
def test_named_data_configs_instantiate(name: str, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [f"data={name}", "data.root=/somewhere/else"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, Seq2SeqDataModule)
    assert dm.root == Path("/somewhere/else") and dm.cache_dir == tmp_path / "cache"
    assert dm.corpora[None].splits.test is not None  # every config looks for a test split, none requires one


@pytest.mark.parametrize("name, write", [
    ("wmt14_en_de", lambda root: write_jsonl(root, names={"val": "validation"})),  # Hub-style names, jsonl
    ("iwslt2017_de_en", lambda root: write_lines(root)),  # plain {split}.{lang} files
])
def test_hub_configs_read_local_files_under_data_root(name, write, tmp_path: Path, monkeypatch) -> None:
    # data.root=DIR with local copies: the Hub (and the `datasets` package) is never touched.
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails
    write(tmp_path / "local")
    cfg = compose_train(tmp_path, [f"data={name}", f"data.root={tmp_path / 'local'}", "data.vocab_size=64",
                                   "data.num_workers=0"])
    dm = prepared(instantiate(cfg.data))
    src, tgt = make_pairs(SPLIT_SIZES["train"], seed=0)
    if name == "iwslt2017_de_en":
        src, tgt = tgt, src  # de->en over the same files
    assert dm.sources("train") == src and dm.references("train") == tgt
    assert len(dm.datasets["val"]) == SPLIT_SIZES["val"] and not dm.has_test


def test_named_configs_find_the_shared_corpora(shared_data: Path, tmp_path: Path) -> None:
    from seq2seq.data.sources import find_split

    for name in ("multi30k", "multi30k_de_en", "tatoeba_de_en", "samsum"):
        cfg = compose_train(tmp_path, [f"data={name}"])
        cfg.paths.data_dir = str(shared_data)  # the configs' default roots, under the shared folder
        corpus = instantiate(cfg.data).corpora[None]
        for split in ("train", "val"):
            names = getattr(corpus.splits, split)
            assert find_split(corpus.root, [names] if isinstance(names, str) else list(names),
                              corpus.src_lang, corpus.tgt_lang, corpus.format), (name, split)


@pytest.mark.parametrize("name, pair", [("multi30k_en_de", ("en", "de")), ("multi30k_de_en", ("de", "en")),
                                        ("tatoeba_de_en", ("de", "en"))])
def test_experiments_compose(name: str, pair: tuple, tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, [f"experiment={name}"])
    assert (cfg.data.src_lang, cfg.data.tgt_lang) == pair
    assert cfg.model.d_model == 256 and cfg.optim.label_smoothing == 0.1
    assert cfg.data.vocab_size == 8000 and cfg.data.joint_vocab and 2500 <= cfg.data.max_tokens <= 4096


# -- the real thing -------------------------------------------------------------------------------


def test_multi30k_trains_a_few_steps_without_test_split(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from seq2seq.train import train

    cfg = compose_train(tmp_path, [
        "experiment=multi30k_en_de",
        f"data.root={shared_data / 'multi30k'}",
        "data.vocab_size=1000",
        "data.eval_max_tokens=1024",
        "model.d_model=32", "model.num_heads=2", "model.d_ff=64",
        "model.num_encoder_layers=1", "model.num_decoder_layers=1",
        "++trainer.max_steps=3", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1",
        "trainer.max_epochs=1", "trainer.max_time=null",
        "logger=csv", "callbacks.progress_bar=null", "trainer.enable_model_summary=false",
    ])
    with caplog.at_level(logging.WARNING):
        metrics = train(cfg)
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "val/bleu" in written and "val/bleu" in metrics
    assert not any(k.startswith("test/") for k in written)
    assert "No test split" in caplog.text
