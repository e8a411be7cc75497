"""Dashboards for real: TensorBoard serves what training logged; wandb receives the samples and heatmap."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import TINY_OVERRIDES, compose_train
from seq2seq.callbacks.samples import ValidationSamples

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - 127.0.0.1 only
        return response.read()


def _get_json(base: str, path: str, **params) -> object:
    return json.loads(_get(f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"))


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory) -> Path:
    """A short training that logs to TensorBoard (two validations)."""
    from seq2seq.train import train

    tmp = tmp_path_factory.mktemp("tb_run")
    overrides = [o for o in TINY_OVERRIDES if not o.startswith("logger=")] + [
        "logger=tensorboard", "trainer.max_epochs=2", "test=false",
        "trainer.max_time=null",
    ]
    train(compose_train(tmp, overrides))
    return tmp / "run" / "tensorboard"


def test_tensorboard_serves_scalars_samples_and_heatmap(tensorboard_run):
    port = _free_port()
    tensorboard = Path(sys.executable).with_name("tensorboard")
    command = [str(tensorboard)] if tensorboard.exists() else [sys.executable, "-m", "tensorboard.main"]
    proc = subprocess.Popen(
        [*command, "--logdir", str(tensorboard_run), "--host", "127.0.0.1", "--port", str(port),
         "--reload_interval", "1", "--load_fast", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        tags: dict = {}
        while time.time() < deadline:
            try:
                tags = _get_json(base, "/data/plugin/scalars/tags")
                if tags and "val/bleu" in next(iter(tags.values())):
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"tensorboard exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.5)
        assert tags, "tensorboard did not answer within 90 s"
        run = next(iter(tags))
        assert {"val/bleu", "val/loss", "train/loss"} <= set(tags[run])

        bleu = _get_json(base, "/data/plugin/scalars/scalars", run=run, tag="val/bleu")
        steps = [step for _, step, _ in bleu]  # [wall_time, step, value] per validation (one per epoch)
        assert len(steps) == 2 and 0 < steps[0] < steps[1]
        assert all(0.0 <= value <= 100.0 for _, _, value in bleu)

        text_tags = _get_json(base, "/data/plugin/text/tags")
        assert "val/samples/text_summary" in text_tags[run]  # add_text's tag + TensorBoard's suffix
        samples = _get_json(base, "/data/plugin/text/text", run=run, tag="val/samples/text_summary")
        assert [entry["step"] for entry in samples] == steps
        text = samples[-1]["text"]  # HTML: TensorBoard wraps the markdown table in a table of its own
        assert "<th>hypothesis</th>" in text and text.count("<tr>") == 1 + 1 + 5  # wrapper, header, 5 samples

        image_tags = _get_json(base, "/data/plugin/images/tags")
        assert "val/cross_attention" in image_tags[run]
        images = _get_json(base, "/data/plugin/images/images", run=run, tag="val/cross_attention", sample=0)
        assert [entry["step"] for entry in images] == steps
        png = _get(f"{base}/data/plugin/images/individualImage?{images[-1]['query']}")
        assert png.startswith(PNG_MAGIC)
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width > 200 and height > 150
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_wandb_receives_samples_table_and_heatmap(tmp_path, monkeypatch):
    """The callback's wandb branch: an offline run holds the table and the image."""
    import numpy as np
    import wandb
    from matplotlib.figure import Figure

    from seq2seq.analysis.attention import figure_png
    from seq2seq.utils.loggers import wandb_logger

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = wandb_logger(save_dir=str(tmp_path), tags=["test"], job_type="train")
    rows = [("a dog .", "ein Hund .", "ein Hund ."), ("two cats", "zwei Katzen", "zwei Hunde")]
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    image[:, :15] = 255
    fig = Figure(figsize=(3, 2))
    fig.subplots().imshow(image)
    try:
        ValidationSamples._log(logger, rows, figure_png(fig), step=7)
    finally:
        wandb.finish()
    files = next((tmp_path / "wandb").glob("offline-run-*")) / "files"
    tables = list(files.rglob("samples*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["source", "reference", "hypothesis"] and table["data"] == [list(r) for r in rows]
    pngs = list(files.rglob("cross_attention*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes().startswith(PNG_MAGIC)
