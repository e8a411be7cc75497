"""seq2seq-serve as users run it: the real server (``python -m seq2seq.serve``) in a subprocess on
127.0.0.1 (a free port), its answers against the Python API, batching of concurrent requests,
every bad input, the command's user errors, the batcher alone, and the demo page in headless
Chromium (Debian's chromium and chromium-driver; skipped without them, failed under CI=true)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from helpers import REPO, TOY_SENTENCES, assert_one_line_error, command_env
from helpers.forked_commands import run_command
from seq2seq.api import Translator
from seq2seq.decoding.search import DecodingConfig
from seq2seq.serving.batcher import Batcher
from seq2seq.serving.process import Client, ServerProcess

pytestmark = pytest.mark.usefixtures("one_thread")

MAX_TEXTS, MAX_CHARS = 8, 200
SETTINGS = ["device=cpu", "threads=1", "decoding=beam", "decoding.beam_size=4", "max_wait_ms=50",
            f"max_texts={MAX_TEXTS}", f"max_text_chars={MAX_CHARS}"]


@pytest.fixture(scope="module")
def served_checkpoint(tiny_run, tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint in a run folder as training leaves it: metrics.json, .hydra/config.yaml."""
    run = tmp_path_factory.mktemp("served_run")
    (run / "checkpoints").mkdir()
    shutil.copy(tiny_checkpoint, run / "checkpoints" / "best.ckpt")
    shutil.copy(Path(tiny_run["run_dir"]) / "metrics.json", run / "metrics.json")
    (run / ".hydra").mkdir()
    config = {"task": "translation", "data": {"src_lang": "en", "tgt_lang": "de", "generate": {"seed": 1234}}}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return run / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def server(served_checkpoint, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("serve_cwd")
    with ServerProcess([f"ckpt_path={served_checkpoint}", *SETTINGS],
                       env=command_env(cwd, threads=1), cwd=cwd, timeout=300) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    connection = Client(server.url)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def translator(served_checkpoint, client) -> Translator:
    """The Python API with the decoding settings the server reports."""
    decoding = DecodingConfig(**client.get("/info")[1]["decoding"])
    return Translator.from_checkpoint(served_checkpoint, device="cpu", decoding=decoding)


def as_json(results):
    """Translator.translate's results as the server writes them (n-best pairs as objects)."""
    return [r if isinstance(r, str) else [{"text": t, "score": s} for t, s in r] for r in results]


def assert_same_translations(got: list, expected: list) -> None:
    """Equal texts; scores equal up to float rounding (requests batched together pad differently)."""
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        if isinstance(b, str):
            assert a == b
        else:
            assert [h["text"] for h in a] == [h["text"] for h in b]
            assert [h["score"] for h in a] == pytest.approx([h["score"] for h in b], abs=1e-4)


def post_all_at_once(url: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """POST /translate each body from its own connection and thread, released together."""
    barrier = threading.Barrier(len(bodies))

    def send(body):
        connection = Client(url)
        barrier.wait()
        try:
            return connection.post("/translate", body)
        finally:
            connection.close()

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


# ---------------------------------------------------------------------------------------- the API
def test_info_describes_the_model_its_run_and_the_settings(client, tiny_run, translator):
    assert client.get("/health") == (200, {"status": "ok"})
    status, info = client.get("/info")
    assert status == 200
    trained = json.loads((Path(tiny_run["run_dir"]) / "metrics.json").read_text())
    assert info["languages"] == {"source": "en", "target": "de"} and info["training_data"] == "toy"
    assert info["parameters"] == translator.net.num_parameters() == trained["num_parameters"]
    assert info["bleu"]["split"] == "test" and info["bleu"]["value"] == round(trained["test/bleu"], 2)
    assert info["bleu"]["signature"] == trained["sacrebleu_signature"]["bleu"].strip() != ""
    assert info["decoding"]["strategy"] == "beam" and info["decoding"]["beam_size"] == 4
    assert info["limits"] == {"max_text_chars": MAX_CHARS, "max_texts": MAX_TEXTS, "max_n_best": 10}
    assert info["batching"] == {"max_batch": 32, "max_wait_ms": 50.0} and info["threads"] == 1


def test_translations_equal_the_python_api(client, translator):
    assert client.post("/translate", {"text": TOY_SENTENCES[0]}) == (
        200, {"translation": translator.translate(TOY_SENTENCES[0])})
    texts = [*TOY_SENTENCES[:4], ""]
    assert client.post("/translate", {"texts": texts}) == (200, {"translations": translator.translate(texts)})
    status, body = client.post("/translate", {"texts": texts[:3], "n_best": 3})
    assert status == 200
    assert_same_translations(body["translations"], as_json(translator.translate(texts[:3], n_best=3)))
    status, body = client.post("/translate", {"text": texts[1], "n_best": 2})
    assert status == 200 and len(body["translation"]) == 2
    assert_same_translations([body["translation"]], as_json([translator.translate(texts[1], n_best=2)]))


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, client, translator):
    """8 one-sentence requests at once (two with n_best=2, which must not share a batch with the
    others): each answer is the API's for its sentence, and fewer than 8 model calls served them."""
    bodies = [{"text": s} for s in TOY_SENTENCES] + [{"text": s, "n_best": 2} for s in TOY_SENTENCES[:2]]
    before = client.get("/stats")[1]
    answers = post_all_at_once(server.url, bodies)
    after = client.get("/stats")[1]
    for body, (status, answer) in zip(bodies, answers):
        assert status == 200, answer
        expected = as_json([translator.translate(body["text"], n_best=body.get("n_best", 1))])
        assert_same_translations([answer["translation"]], expected)
    assert after["requests"] - before["requests"] == len(bodies)
    assert after["sentences"] - before["sentences"] == len(bodies)
    assert after["batches"] - before["batches"] < len(bodies), (before, after)
    grew = {int(size) for size, n in after["batch_sizes"].items() if n > before["batch_sizes"].get(size, 0)}
    assert max(grew) > 1, (before, after)


def test_concurrent_requests_share_model_calls_and_each_gets_the_api_answer(server, translator):
    """Concurrent requests share model calls of up to max_batch texts, never mixing n_best, and each
    gets the API's answer."""
    bodies = [{"text": s} for s in TOY_SENTENCES] + [{"text": s, "n_best": 2} for s in TOY_SENTENCES[:2]]
    bodies.append({"texts": [*TOY_SENTENCES[:3], ""], "n_best": 3})
    before = Client(server.url).get("/stats")[1]
    answers = post_all_at_once(server.url, bodies)
    after = Client(server.url).get("/stats")[1]
    for body, (status, answer) in zip(bodies, answers):
        assert status == 200, answer
        texts = body.get("texts", [body.get("text")])
        expected = as_json(translator.translate(texts, n_best=body.get("n_best", 1)))
        assert_same_translations(answer.get("translations", [answer.get("translation")]), expected)
    batches = after["batches"] - before["batches"]
    assert after["requests"] - before["requests"] == len(bodies) and batches < len(bodies), (before, after)
    assert after["largest_batch"] > 1


def test_attention_equals_the_python_api(client, translator):
    status, body = client.post("/attention", {"text": TOY_SENTENCES[1]})
    assert status == 200
    expected = translator.attention(TOY_SENTENCES[1])
    assert body["translation"] == expected.translation == translator.translate(TOY_SENTENCES[1])
    assert body["source_words"] == expected.source_words and body["target_words"] == expected.target_words
    assert body["target_words"][-1] == "</s>" and len(body["layers"]) == len(expected.layers) == 2
    for got, want in zip([body["mean"], *body["layers"]], [expected.mean, *expected.layers]):
        assert torch.tensor(got) == pytest.approx(want, abs=1e-4)
    assert [sum(row) for row in body["mean"]] == pytest.approx([1.0] * len(body["target_words"]), abs=1e-3)


# ------------------------------------------------------------------------------------ bad input
TOO_LONG = json.dumps({"text": "a " * (MAX_CHARS // 2 + 1)}).encode()
BAD_INPUTS = {
    "not-json": ("/translate", b"A man rides a bike.", 400, "not JSON"),
    "not-utf8": ("/translate", '{"text": "Caf\u00e9 au lait."}'.encode("latin-1"), 400, "not UTF-8"),
    "empty-body": ("/translate", b"", 400, "body is empty"),
    "not-an-object": ("/translate", b'["A dog."]', 422, "JSON array"),
    "missing-field": ("/translate", b"{}", 422, 'either "text"'),
    "missing-field-attention": ("/attention", b"{}", 422, '"text" field is missing'),
    "unknown-field": ("/translate", b'{"text": "A dog.", "lang": "de"}', 422, "unknown field(s) 'lang'"),
    "wrong-type-text": ("/translate", b'{"text": 42}', 422, '"text" must be a string, not a JSON number'),
    "wrong-type-texts": ("/translate", b'{"texts": "A dog."}', 422, '"texts" must be a list'),
    "wrong-type-item": ("/translate", b'{"texts": ["A dog.", null]}', 422, '"texts"[1] must be a string'),
    "wrong-type-n-best": ("/translate", b'{"text": "A dog.", "n_best": "2"}', 422, "whole number"),
    "empty-list": ("/translate", b'{"texts": []}', 422, "empty list"),
    "text-too-long": ("/translate", TOO_LONG, 413, f"at most {MAX_CHARS} per text"),
    "attention-text-too-long": ("/attention", TOO_LONG, 413, f"at most {MAX_CHARS} per text"),
    "too-many-texts": ("/translate", json.dumps({"texts": ["A dog."] * (MAX_TEXTS + 1)}).encode(), 413,
                       f"at most {MAX_TEXTS} per request"),
    "n-best-over-beam": ("/translate", b'{"text": "A dog.", "n_best": 5}', 422, "beam_size=4"),
    "n-best-zero": ("/translate", b'{"text": "A dog.", "n_best": 0}', 422, "at least 1"),
    "body-too-large": ("/translate", b" " * 300_000, 413, "larger than this server takes"),
    "blank-attention": ("/attention", b'{"text": "   "}', 422, "blank"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_one_line_error_and_the_server_stays_up(case, client, translator):
    path, body, status, words = BAD_INPUTS[case]
    got, answer = client.request("POST", path, body)
    assert got == status, answer
    assert isinstance(answer, dict) and list(answer) == ["error"], answer
    assert "\n" not in answer["error"] and words in answer["error"], answer
    assert client.post("/translate", {"text": TOY_SENTENCES[2]}) == (
        200, {"translation": translator.translate(TOY_SENTENCES[2])})
    assert client.get("/health")[0] == 200


def test_unknown_paths_and_methods_get_one_line_errors(client):
    for method, path, status in (("GET", "/nowhere", 404), ("GET", "/translate", 405), ("POST", "/info", 405)):
        got, answer = client.request(method, path)
        assert got == status and list(answer) == ["error"] and "POST /translate" in answer["error"], answer
    status, page = client.get("/")
    assert status == 200 and 'id="heatmap"' in page and "://" not in page  # nothing loaded from elsewhere


def raw_answer(sock: socket.socket) -> tuple[int, dict]:
    """Read one HTTP/1.1 response with a Content-Length from ``sock``: (status, JSON body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = int(next(line.split(":", 1)[1] for line in lines if line.lower().startswith("content-length:")))
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), json.loads(body[:length])


def post_raw(sock: socket.socket, body: bytes, *, chunked: bool = False, chunk: int = 65536) -> None:
    head = b"POST /translate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
    if not chunked:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        return
    sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n")
    for start in range(0, len(body), chunk):
        piece = body[start:start + chunk]
        sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
    sock.sendall(b"0\r\n\r\n")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_5_mb_body_gets_413_json_and_the_connection_serves_on(chunked, server, translator):
    """A body far over the limit (5 MB; the server takes ~0.2 MB here) is answered 413 with the one-line
    JSON error, at once when its Content-Length says so and once the limit is passed when it is chunked;
    the rest is read and dropped, so the client gets the answer (no reset) and the same keep-alive
    connection then serves a translation."""
    host, port = server.url.split("//")[1].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        post_raw(sock, b" " * 5_000_000, chunked=chunked)
        status, answer = raw_answer(sock)
        assert status == 413 and list(answer) == ["error"] and "larger than this server takes" in answer["error"]
        post_raw(sock, json.dumps({"text": TOY_SENTENCES[0]}).encode())
        assert raw_answer(sock) == (200, {"translation": translator.translate(TOY_SENTENCES[0])})


def test_a_client_that_leaves_mid_body_is_one_log_line_and_the_next_request_is_served(server, client, translator):
    host, port = server.url.split("//")[1].rsplit(":", 1)
    logged = len(server.output)
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /translate HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n" + b'{"text": "A dog')
        time.sleep(0.5)  # the server is reading the body when the client goes
    assert client.post("/translate", {"text": TOY_SENTENCES[1]}) == (
        200, {"translation": translator.translate(TOY_SENTENCES[1])})
    deadline = time.time() + 10
    while "disconnected" not in server.output[logged:] and time.time() < deadline:
        time.sleep(0.1)
    log = server.output[logged:]
    assert "POST /translate: the client disconnected before sending its whole body" in log, log
    assert "Traceback" not in log and "ClientDisconnect" not in log, log


# ------------------------------------------------------------------------------- user errors
@pytest.mark.parametrize("case", ["no-checkpoint", "bad-checkpoint", "port-in-use"])
def test_user_errors_end_with_one_message(case, server, served_checkpoint, tmp_path):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    port = server.url.rsplit(":", 1)[1]
    args, words = {
        "no-checkpoint": (["port=0"], ["no checkpoint given", "ckpt_path="]),
        "bad-checkpoint": (["port=0", f"ckpt_path={garbage}"], ["garbage.ckpt", "not a readable checkpoint"]),
        "port-in-use": ([f"port={port}", f"ckpt_path={served_checkpoint}"], [f"port {port}", "in use"]),
    }[case]
    result = run_command("seq2seq.serve", ["device=cpu", *args], cwd=tmp_path, env=command_env(tmp_path, threads=1),
                         text=True, timeout=300)
    assert_one_line_error(result, *words)


# ----------------------------------------------------------------------------------- batcher
def fake_translate(calls: list):
    def translate(texts, **options):
        calls.append((list(texts), options))
        if "boom" in texts:
            raise ValueError("boom")
        return [f"{text}:{options.get('n_best', 1)}" for text in texts]
    return translate


def test_a_request_is_counted_before_its_answer_goes_out():
    """/stats after an answer counts that request: the batcher updates its counters before it sets a
    result (a callback on the future runs when the result is set, as the answer leaves)."""
    batcher, seen = Batcher(fake_translate([]), max_batch=4, max_wait_ms=0).start(), []
    try:
        future = batcher.submit([TOY_SENTENCES[0]], {})
        future.add_done_callback(lambda _: seen.append((batcher.stats()["requests"], batcher.stats()["sentences"])))
        future.result(60)
        call = batcher.call(lambda: "attention")
        call.add_done_callback(lambda _: seen.append(batcher.stats()["calls"]))
        call.result(60)
    finally:
        batcher.close()
    assert seen == [(1, 1), 1]


def test_batcher_merges_jobs_with_equal_options_only_and_answers_each():
    calls = []
    batcher = Batcher(fake_translate(calls), max_batch=4, max_wait_ms=0)
    jobs = [(["a"], {}), (["b"], {"n_best": 2}), (["c1", "c2"], {}), (["d1", "d2"], {}), (["boom"], {"n_best": 3}),
            (["e"], {"n_best": 2})]
    futures = [batcher.submit(texts, options) for texts, options in jobs]  # all queued before the worker starts
    batcher.start()
    results = [f.exception(10) or f.result() for f in futures]
    # a and c fill 3 of 4; d (2 more) starts the next batch of its options; b and e (n_best=2) go
    # together; the failing batch fails its job alone.
    assert calls == [(["a", "c1", "c2"], {}), (["b", "e"], {"n_best": 2}), (["d1", "d2"], {}),
                     (["boom"], {"n_best": 3})]
    assert results[:4] == [["a:1"], ["b:2"], ["c1:1", "c2:1"], ["d1:1", "d2:1"]] and results[5] == ["e:2"]
    assert isinstance(results[4], ValueError)
    stats = batcher.stats()
    assert stats["batches"] == 3 and stats["failed_batches"] == 1 and stats["largest_batch"] == 3
    assert stats["batch_sizes"] == {"2": 2, "3": 1} and stats["requests"] == 5 and stats["waiting"] == 0
    assert 0 <= stats["compute_s"] < 10
    assert batcher.call(lambda: "done").result(10) == "done"
    batcher.close()
    assert not batcher.alive
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(["late"]).result(10)


ARENAS = """
import ctypes, sys, threading
from seq2seq.serving.app import use_one_malloc_arena
if sys.argv[1] == "one":
    assert use_one_malloc_arena()
def work():  # what the batcher's worker does to malloc: many tensors freed and made again
    import torch
    for _ in range(50):
        torch.ones(256, 1024).sum()
thread = threading.Thread(target=work)
thread.start()
thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" block per arena, on stderr
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_the_worker_thread_allocates_from_the_main_arena_when_told():
    """A second thread gets an arena of its own (whose trimmed heaps made decoding 20-45 % slower on
    the worker thread); after use_one_malloc_arena there is only the main one."""
    def arenas(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stderr.count("Arena ")

    assert arenas("default") >= 2
    assert arenas("one") == 1


def test_batcher_waits_after_taking_the_first_job_when_idle_and_after_a_batch():
    """An idle worker waits max_wait_ms for more after a job arrives; a worker that finishes a
    batch waits again, so a job queued meanwhile is joined by one that comes after the batch."""
    calls, running = [], threading.Event()

    def translate(texts, **options):
        calls.append(list(texts))
        if texts[0] == "a":
            running.set()
            time.sleep(0.3)
        return list(texts)

    batcher = Batcher(translate, max_batch=8, max_wait_ms=400).start()
    a = batcher.submit(["a"])
    time.sleep(0.05)
    a2 = batcher.submit(["a2"])
    assert running.wait(10)
    b = batcher.submit(["b"])  # while the model runs
    assert a.result(10) == ["a"] and a2.result(10) == ["a2"]
    time.sleep(0.05)
    c = batcher.submit(["c"])  # after the batch
    assert b.result(10) == ["b"] and c.result(10) == ["c"]
    assert calls == [["a", "a2"], ["b", "c"]]
    batcher.close()


# ----------------------------------------------------------------------------------- browser
def _screenshot_module():
    spec = importlib.util.spec_from_file_location("serve_screenshot", REPO / "benchmarks" / "serve_screenshot.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _without(what: str) -> None:
    """Skip for want of ``what``; under CI=true, where it must be there, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI=true, where the browser test must run (.ci/run installs chromium and chromium-driver)")
    pytest.skip(f"{what}: the demo page's browser test needs Debian's chromium and chromium-driver "
                "(apt-get install chromium chromium-driver) and selenium (pip install -e '.[dev]')")


def test_demo_page_translates_and_draws_the_heatmap_in_chromium(server, client, translator, tmp_path):
    try:
        import selenium  # noqa: F401
    except ImportError:
        _without("selenium is not installed")
    shot = _screenshot_module()
    browser, chromedriver = shot.find_browser()
    if browser is None or chromedriver is None:
        _without(f"{'chromium' if browser is None else 'chromedriver'} is not on PATH")
    sentence = TOY_SENTENCES[3]
    driver = shot.chromium_driver(browser, chromedriver)
    try:
        page = shot.translate_on_page(driver, server.url, sentence)
        weight, hover = shot.hover_strongest(driver, row=0)
        driver.save_screenshot(str(tmp_path / "demo.png"))
    finally:
        driver.quit()
    attention = client.post("/attention", {"text": sentence})[1]
    assert page["translation"] == translator.translate(sentence)
    # One heatmap row per target word, one cell per source word.
    assert page["target_words"] == attention["target_words"] and len(page["target_words"]) > 2
    assert page["source_words"] == attention["source_words"]
    assert page["cells_per_row"] == [len(attention["source_words"])] * len(attention["target_words"])
    assert weight == pytest.approx(max(attention["mean"][0]), abs=1e-4) and f"{weight:.3f}" in hover
    assert "en → de" in page["model_line"] and "parameters" in page["model_line"] and "BLEU" in page["model_line"]
    png = (tmp_path / "demo.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5_000
