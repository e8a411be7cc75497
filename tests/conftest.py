"""Shared fixtures: a tiny trained run and checkpoint, the real corpora (helpers live in tests/helpers)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import SHORT_TRAINING_OVERRIDES, compose_train, shared_corpus


def _inductor_cache_per_cpu_capability() -> None:
    """Compiled-graph cache of this torch and this ATen CPU capability only.

    torch.compile's cache in /tmp is keyed without ``ATEN_CPU_CAPABILITY``: a graph compiled under
    ``ATEN_CPU_CAPABILITY=avx2`` (how the suite emulates an AVX2-only CPU) and loaded by a run at
    the CPU's own capability writes out of bounds (``malloc(): unaligned tcache chunk``, an abort
    in tests/test_speed_paths.py). A user's TORCHINDUCTOR_CACHE_DIR is kept."""
    if "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        return
    import tempfile

    import torch

    capability = os.environ.get("ATEN_CPU_CAPABILITY", "default")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(
        Path(tempfile.gettempdir()) / f"seq2seq-tests-inductor-{torch.__version__}-{capability}")


_inductor_cache_per_cpu_capability()


def _one_thread_per_xdist_worker() -> None:
    """Under pytest-xdist (``make test`` runs two workers) each worker, and the commands its tests
    start, use one torch thread unless a test asks for more: two workers of two threads each on two
    cores spin against each other in OpenMP's barriers and run several times slower than one thread."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    import torch

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_one_thread_per_xdist_worker()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> dict:
    """A tiny model trained briefly through the real train() path; returns its metrics.json content."""
    from seq2seq.train import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    cfg = compose_train(tmp, SHORT_TRAINING_OVERRIDES)
    metrics = train(cfg)
    metrics["run_dir"] = str(tmp / "run")
    metrics["data_dir"] = str(tmp / "data" / "toy")
    return metrics


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run) -> Path:
    """Path of the tiny run's best checkpoint (weights, model config and tokenizer)."""
    return Path(tiny_run["run_dir"]) / "checkpoints" / "best.ckpt"


@pytest.fixture
def one_thread():
    """One torch thread while a test runs (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models run faster, and steadier on a shared CPU."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``: skips without it, fails under CI=true."""
    return shared_corpus("multi30k").parent


@pytest.fixture
def single_thread():
    """One torch thread for tiny tensors: faster, and steadier on a shared CPU
    (``pytestmark = pytest.mark.usefixtures("single_thread")``)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


os.environ.setdefault("WANDB_MODE", "offline")
