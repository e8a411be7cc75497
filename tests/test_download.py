"""Multi30k download against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import shared_corpus
from seq2seq.data import download
from seq2seq.data.download import download_multi30k
from seq2seq.data.sources import CorpusFormat, read_split
from seq2seq.errors import DataError

FIXTURES = {
    "train.en": "A dog runs .\nTwo men talk .\nA child plays .\n",
    "train.de": "Ein Hund rennt .\nZwei Männer reden .\nEin Kind spielt .\n",
    "val.en": "A cat .\n",
    "val.de": "Eine Katze .\n",
}


class _Server:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

        handler = functools.partial(Handler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/raw/"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    served = tmp_path / "served" / "raw"
    served.mkdir(parents=True)
    for name, text in FIXTURES.items():
        (served / f"{name}.gz").write_bytes(gzip.compress(text.encode("utf-8")))
    table = {name: hashlib.sha256(text.encode("utf-8")).hexdigest() for name, text in FIXTURES.items()}
    monkeypatch.setattr(download, "SHA256", table)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # talk to 127.0.0.1 directly
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = _Server(tmp_path / "served")
    yield srv
    srv.close()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_gunzips_verifies_and_feeds_read_split(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "cache" / "multi30k"
    out = download_multi30k(dest, splits=("train", "val"), base_url=server.url, timeout=5)
    assert out == dest
    assert _files(dest) == ["train.de", "train.en", "val.de", "val.en"]
    assert (dest / "train.de").read_text("utf-8") == FIXTURES["train.de"]
    assert sorted(server.requests) == [
        "/raw/train.de.gz",
        "/raw/train.en.gz",
        "/raw/val.de.gz",
        "/raw/val.en.gz",
    ]
    src, tgt = read_split(dest, "train", "en", "de", CorpusFormat())
    assert len(src) == len(tgt) == 3 and tgt[1] == "Zwei Männer reden ."


def test_second_call_makes_no_request(server: _Server, tmp_path: Path) -> None:
    download_multi30k(tmp_path / "d", splits=("train", "val"), base_url=server.url, timeout=5)
    assert len(server.requests) == 4
    download_multi30k(tmp_path / "d", splits=("train", "val"), base_url=server.url, timeout=5)
    assert len(server.requests) == 4


def test_damaged_local_file_is_downloaded_again(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    download_multi30k(dest, splits=("val",), base_url=server.url, timeout=5)
    (dest / "val.en").write_text("tampered\n")
    download_multi30k(dest, splits=("val",), base_url=server.url, timeout=5)
    assert server.requests == ["/raw/val.en.gz", "/raw/val.de.gz", "/raw/val.en.gz"]
    assert (dest / "val.en").read_text() == FIXTURES["val.en"]


def test_checksum_mismatch_raises_and_leaves_no_file(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(download.SHA256, "val.de", "0" * 64)
    dest = tmp_path / "d"
    with pytest.raises(DataError) as err:
        download_multi30k(dest, splits=("val",), base_url=server.url, timeout=5)
    message = str(err.value)
    assert f"Checksum mismatch for {server.url}val.de.gz" in message
    assert "expected " + "0" * 64 in message
    assert "data.root=DIR" in message
    assert _files(dest) == ["val.en"]  # the good file stays, no trace of the bad one or a temp file


def test_http_404_raises_with_url_and_hint(server: _Server, tmp_path: Path) -> None:
    dest = tmp_path / "d"
    with pytest.raises(DataError) as err:
        download_multi30k(dest, langs=("en", "fr"), splits=("val",), base_url=server.url, timeout=5)
    message = str(err.value)
    assert f"Could not download {server.url}val.fr.gz: HTTP 404" in message
    assert "val.en.gz, val.fr.gz" in message and "data.root=DIR" in message
    assert _files(dest) == ["val.en"]


def test_unreachable_server_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with pytest.raises(DataError, match="Could not download http://127.0.0.1:9/val.en.gz"):
        download_multi30k(tmp_path / "d", splits=("val",), base_url="http://127.0.0.1:9", timeout=2)
    assert _files(tmp_path / "d") == []


def test_not_gzip_raises(server: _Server, tmp_path: Path) -> None:
    (tmp_path / "served" / "raw" / "val.en.gz").write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="val.en.gz: the file is not a complete gzip file"):
        download_multi30k(tmp_path / "d", splits=("val",), base_url=server.url, timeout=5)
    assert _files(tmp_path / "d") == []


def test_unknown_checksum_is_accepted(
    server: _Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(download.SHA256, "val.en", None)
    download_multi30k(tmp_path / "d", splits=("val",), base_url=server.url, timeout=5)
    assert (tmp_path / "d" / "val.en").read_text() == FIXTURES["val.en"]
    assert "No known checksum" in caplog.text


def test_unpublished_split_or_language_fails_before_any_request(server: _Server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="'test_2017_flickr' is not published in cs"):
        download_multi30k(
            tmp_path / "d", langs=("en", "cs"), splits=("test_2017_flickr",), base_url=server.url
        )
    with pytest.raises(DataError, match="no split 'dev'"):
        download_multi30k(tmp_path / "d", splits=("dev",), base_url=server.url)
    assert server.requests == []


def test_checksum_table_matches_shared_copy() -> None:
    folder = shared_corpus("multi30k")
    for split in ("train", "val"):
        for lang in ("en", "de", "fr", "cs"):
            data = (folder / f"{split}.{lang}").read_bytes()
            assert hashlib.sha256(data).hexdigest() == download.SHA256[f"{split}.{lang}"], f"{split}.{lang}"
