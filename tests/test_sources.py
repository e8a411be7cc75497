"""Reading parallel corpora: the four formats and every user error."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pytest

from helpers import shared_corpus
from seq2seq.data.sources import CorpusFormat, find_split, read_split
from seq2seq.errors import DataError

LINES = CorpusFormat()


def _write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


# -- lines ----------------------------------------------------------------------------------------


def test_lines_keep_text_exactly_but_strip_line_breaks(tmp_path: Path) -> None:
    _write(tmp_path / "train.en", "\ufeffA dog .\r\n  two  spaces \nüber\u2028sep\nno final newline")
    _write(tmp_path / "train.de", "Ein Hund .\nzwei\nb\nd\n")
    src, tgt = read_split(tmp_path, "train", "en", "de", LINES)
    # BOM and \r\n go; inner/outer spaces stay; U+2028 is text, not a line break.
    assert src == ["A dog .", "  two  spaces ", "über\u2028sep", "no final newline"]
    assert tgt == ["Ein Hund .", "zwei", "b", "d"]


def test_lines_read_gzip_transparently_and_prefer_plain(tmp_path: Path) -> None:
    _write(tmp_path / "val.en.gz", gzip.compress(b"one\ntwo\n"))
    _write(tmp_path / "val.de", "eins\nzwei\n")
    assert read_split(tmp_path, "val", "en", "de", LINES) == (["one", "two"], ["eins", "zwei"])
    _write(tmp_path / "val.en", "ONE\nTWO\n")
    assert read_split(tmp_path, "val", "en", "de", LINES)[0] == ["ONE", "TWO"]


def test_lines_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    en = _write(tmp_path / "train.en", "a\nb\nc\n")
    de = _write(tmp_path / "train.de", "a\nb\n")
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train", "en", "de", LINES)
    assert f"{en} has 3 lines but {de} has 2" in str(err.value)


def test_lines_trailing_blank_line_counts(tmp_path: Path) -> None:
    _write(tmp_path / "train.en", "a\nb\n\n")
    _write(tmp_path / "train.de", "a\nb\n")
    with pytest.raises(DataError, match="has 3 lines but .* has 2"):
        read_split(tmp_path, "train", "en", "de", LINES)


def test_invalid_utf8_reports_file_and_line(tmp_path: Path) -> None:
    _write(tmp_path / "train.en", "ok\nfine\n")
    de = _write(tmp_path / "train.de", b"gut\nGr\xfc\xdfe\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train", "en", "de", LINES)
    assert f"{de}, line 2: invalid UTF-8 (byte fc at column 3)" in str(err.value)


def test_invalid_utf8_in_gzip_reports_line(tmp_path: Path) -> None:
    en = _write(tmp_path / "train.en.gz", gzip.compress(b"a\nb\nc\xff\n"))
    _write(tmp_path / "train.de", "a\nb\nc\n")
    with pytest.raises(DataError, match=f"{en}, line 3: invalid UTF-8"):
        read_split(tmp_path, "train", "en", "de", LINES)


def test_corrupt_gzip_is_a_data_error(tmp_path: Path) -> None:
    whole = gzip.compress(b"a\nb\n" * 100)
    en = _write(tmp_path / "train.en.gz", whole[:-4])  # cut inside the trailer
    _write(tmp_path / "train.de", "a\nb\n")
    with pytest.raises(DataError, match=f"{en} is not a complete gzip file"):
        read_split(tmp_path, "train", "en", "de", LINES)


def test_missing_files_list_the_exact_paths(tmp_path: Path) -> None:
    _write(tmp_path / "train.en", "a\n")
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train", "en", "de", LINES)
    message = str(err.value)
    assert f"{tmp_path / 'train.de'} (or {tmp_path / 'train.de'}.gz)" in message
    assert "train.en (" not in message
    assert "data.root=DIR" in message


def test_empty_split_names_the_files(tmp_path: Path) -> None:
    _write(tmp_path / "test.en", "")
    _write(tmp_path / "test.de", "")
    with pytest.raises(DataError, match="The split is empty: .*test.en and .*test.de"):
        read_split(tmp_path, "test", "en", "de", LINES)


def test_candidates_first_existing_wins(tmp_path: Path) -> None:
    for name in ("test_2016_flickr", "test"):
        _write(tmp_path / f"{name}.en", f"{name} en\n")
        _write(tmp_path / f"{name}.de", f"{name} de\n")
    _write(tmp_path / "test_2017_flickr.en", "only one side\n")
    candidates = ["test_2017_flickr", "test_2016_flickr", "test"]
    assert find_split(tmp_path, candidates, "en", "de", LINES) == "test_2016_flickr"
    assert read_split(tmp_path, candidates, "en", "de", LINES) == (
        ["test_2016_flickr en"],
        ["test_2016_flickr de"],
    )
    assert find_split(tmp_path, ["dev", "valid"], "en", "de", LINES) is None


def test_no_candidate_found_lists_every_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        read_split(tmp_path, ["val", "dev"], "en", "de", LINES)
    message = str(err.value)
    for name in ("val.en", "val.de", "dev.en", "dev.de"):
        assert f"{tmp_path / name}[.gz]" in message


def test_explicit_files_mapping(tmp_path: Path) -> None:
    _write(tmp_path / "corpus.src", "x\ny\n")
    other = tmp_path / "elsewhere"
    other.mkdir()
    _write(other / "corpus.tgt", "X\nY\n")
    files = {"src": "corpus.src", "tgt": str(other / "corpus.tgt")}
    assert read_split(tmp_path, files, "en", "de", LINES) == (["x", "y"], ["X", "Y"])


def test_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="Unknown corpus format 'csv'; use one of: lines, tsv, jsonl, hf"):
        read_split(tmp_path, "train", "en", "de", CorpusFormat(format="csv"))


def test_multi30k_train_if_present() -> None:
    folder = shared_corpus("multi30k")
    src, tgt = read_split(folder, ["train"], "en", "de", LINES)
    assert len(src) == len(tgt) == 29000
    assert sum(t.endswith(" ") for t in tgt) == 40  # kept as published
    assert "\t" in tgt[7365]


# -- tsv ------------------------------------------------------------------------------------------


def test_tsv_by_header_names(tmp_path: Path) -> None:
    _write(tmp_path / "train.tsv", "id\tde\ten\n1\tHallo\tHello\n2\tWelt \t world\n\n")
    fmt = CorpusFormat(format="tsv", src_field="en", tgt_field="de")
    assert read_split(tmp_path, "train", "en", "de", fmt) == (["Hello", " world"], ["Hallo", "Welt "])


def test_tsv_without_header_uses_columns_0_and_1(tmp_path: Path) -> None:
    _write(tmp_path / "train.tsv", "a\tA\nb\tB\r\n")
    assert read_split(tmp_path, "train", "x", "y", CorpusFormat(format="tsv")) == (["a", "b"], ["A", "B"])


def test_tsv_by_index(tmp_path: Path) -> None:
    _write(tmp_path / "train.tsv", "1\ta\tA\n2\tb\tB\n")
    fmt = CorpusFormat(format="tsv", src_field=2, tgt_field="1")  # type: ignore[arg-type]
    assert read_split(tmp_path, "train", "x", "y", fmt) == (["A", "B"], ["a", "b"])


def test_tsv_wrong_column_count_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.tsv", "src\ttgt\na\tA\nb\tB\textra\nc\tC\n")
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train", "x", "y", CorpusFormat(format="tsv"))
    assert f"{path}, line 3: 3 TAB-separated column(s), expected 2" in str(err.value)


def test_tsv_unknown_header_names(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.tsv", "english\tgerman\na\tA\n")
    with pytest.raises(
        DataError, match=f"{path}, line 1: the first row is not a header with columns 'en' and 'de'"
    ):
        read_split(tmp_path, "train", "x", "y", CorpusFormat(format="tsv", src_field="en", tgt_field="de"))


def test_tsv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"Missing corpus file for split 'dev': {tmp_path / 'dev.tsv'}"):
        read_split(tmp_path, "dev", "x", "y", CorpusFormat(format="tsv"))


# -- jsonl ----------------------------------------------------------------------------------------

WMT = CorpusFormat(format="jsonl", src_field="translation.en", tgt_field="translation.de")


def _jsonl(path: Path, records: list[object], tail: str = "") -> Path:
    return _write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records) + tail)


def test_jsonl_wmt_style_dotted_paths(tmp_path: Path) -> None:
    records = [
        {"translation": {"en": "Hi", "de": "Grüß dich"}},
        {"translation": {"en": "Bye ", "de": "Tschüs"}},
    ]
    _jsonl(tmp_path / "train.jsonl", records, tail="\n  \n")
    assert read_split(tmp_path, "train", "en", "de", WMT) == (["Hi", "Bye "], ["Grüß dich", "Tschüs"])


def test_jsonl_flat_fields_and_dotted_key(tmp_path: Path) -> None:
    _jsonl(tmp_path / "train.jsonl", [{"src": "a", "tgt.text": "A"}])
    fmt = CorpusFormat(format="jsonl", src_field="src", tgt_field="tgt.text")
    assert read_split(tmp_path, "train", "x", "y", fmt) == (["a"], ["A"])


def test_jsonl_invalid_json_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", '{"translation": {"en": "a", "de": "b"}}\n{"translation": \n')
    with pytest.raises(DataError, match=f"{path}, line 2: invalid JSON"):
        read_split(tmp_path, "train", "en", "de", WMT)


def test_jsonl_missing_field_names_line_and_keys(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "train.jsonl",
        [{"translation": {"en": "a", "de": "b"}}] * 2 + [{"translation": {"en": "c"}}],
    )
    with pytest.raises(DataError) as err:
        read_split(tmp_path, "train", "en", "de", WMT)
    assert f"{path}, line 3: field 'translation.de' not found (translation has: ['en'])" in str(err.value)


def test_jsonl_non_string_field(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "train.jsonl", [{"src": "a", "tgt": 5}])
    with pytest.raises(DataError, match=f"{path}, line 1: field 'tgt' is int, not a string"):
        read_split(tmp_path, "train", "x", "y", CorpusFormat(format="jsonl"))


def test_jsonl_only_blank_lines_is_empty(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.jsonl", "\n\n")
    with pytest.raises(DataError, match=f"The split is empty: {path}"):
        read_split(tmp_path, "train", "x", "y", CorpusFormat(format="jsonl"))


# -- hf -------------------------------------------------------------------------------------------


def test_hf_without_datasets_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    fmt = CorpusFormat(format="hf", hf_path="wmt16", hf_name="de-en")
    with pytest.raises(DataError, match="pip install datasets"):
        read_split(tmp_path, "train", "en", "de", fmt)


def test_hf_json_builder_on_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    records = [{"translation": {"en": f"s{i}", "de": f"t{i}"}} for i in range(5)]
    _jsonl(tmp_path / "train.jsonl", records)
    _jsonl(tmp_path / "valid.jsonl", records[:2])
    fmt = CorpusFormat(
        format="hf",
        hf_path="json",
        src_field="translation.en",
        tgt_field="translation.de",
        hf_data_files={"train": "train.jsonl", "validation": str(tmp_path / "valid.jsonl")},
    )
    assert read_split(tmp_path, "train", "en", "de", fmt) == (
        [f"s{i}" for i in range(5)],
        [f"t{i}" for i in range(5)],
    )
    assert find_split(tmp_path, ["val", "validation"], "en", "de", fmt) == "validation"
    assert read_split(tmp_path, ["val", "validation"], "en", "de", fmt) == (["s0", "s1"], ["t0", "t1"])
    bad = CorpusFormat(**{**fmt.__dict__, "tgt_field": "translation.fr"})
    with pytest.raises(
        DataError,
        match="Split 'train' of Hugging Face dataset 'json', row 0: field 'translation.fr' not found",
    ):
        read_split(tmp_path, "train", "en", "de", bad)
    with pytest.raises(DataError, match="has no field 'text'"):
        read_split(tmp_path, "train", "en", "de", CorpusFormat(**{**fmt.__dict__, "src_field": "text"}))
