"""Server-side batching: concurrent requests share model calls (:class:`Batcher`).

One worker thread owns the model (the event loop stays free to accept and answer requests). It
takes the oldest job (a request's texts and decoding options), then more jobs with the *same*
options, until the batch holds ``max_batch`` texts or ``max_wait_ms`` have passed since it took the
first job, and runs them through one ``translate(texts, **options)`` call; each job's future gets
its own slice of the results.

The wait also starts after a batch ends, so the clients it just answered can join the next one:
otherwise requests that arrived while the model ran would leave at once as a batch of their own,
and clients that fell into two groups would stay split. Jobs with other options are held back, in
arrival order, and start the next batch. Other model work (:meth:`Batcher.call`, e.g. the attention
maps) runs on the same thread between batches, so the network is never used by two threads at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    future: Future
    texts: list[str] | None = None  # a translation job
    options: tuple = ()  # its decoding options as sorted (name, value) pairs: jobs batch only with equal ones
    call: Callable[[], Any] | None = None  # any other work, run alone


_STOP = _Job(Future())


def _shut_down(jobs: Iterable[_Job]) -> None:
    for job in jobs:
        if job is not _STOP and job.future.set_running_or_notify_cancel():
            job.future.set_exception(RuntimeError("the server is shutting down"))


class Batcher:
    """Queue translation jobs and run them in batches on one worker thread; see the module docstring.

    ``translate(texts, **options)`` returns one result per text (``Translator.translate``);
    ``setup`` runs first on the worker thread (e.g. ``torch.set_num_threads``).
    """

    def __init__(self, translate: Callable[..., Sequence[Any]], *, max_batch: int = 32, max_wait_ms: float = 10.0,
                 setup: Callable[[], None] | None = None):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms} must not be negative")
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._translate, self._setup = translate, setup
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._held: deque[_Job] = deque()  # taken from the queue, waiting for a batch with their options
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "sentences": 0, "batches": 0, "largest_batch": 0, "calls": 0, "failed_batches": 0,
                       "compute_s": 0.0}
        self._sizes: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._run, name="seq2seq-batcher", daemon=True)
        self._closed = False

    def start(self) -> Batcher:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, texts: Sequence[str], options: dict[str, Any] | None = None) -> Future:
        """Queue ``texts`` for translation with decoding ``options``; the future gets their results."""
        return self._put(_Job(Future(), texts=list(texts), options=tuple(sorted((options or {}).items()))))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn()`` on the worker thread, between batches; the future gets what it returns."""
        return self._put(_Job(Future(), call=fn))

    def _put(self, job: _Job) -> Future:
        if self._closed:
            _shut_down([job])
        else:
            self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the batch in progress, fail the jobs still queued, stop the worker."""
        self._closed = True
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)
        while True:
            try:
                _shut_down([self._queue.get_nowait()])
            except queue.Empty:
                break

    def stats(self) -> dict[str, Any]:
        """Counters since the start: requests, sentences, batches (and how many held each number of
        sentences), the largest batch, other calls, failed batches, seconds in ``translate``
        (``compute_s``), jobs waiting now."""
        with self._lock:
            stats = dict(self._stats)
            stats["batch_sizes"] = {str(size): n for size, n in sorted(self._sizes.items())}
        stats["waiting"] = self._queue.qsize() + len(self._held)
        return stats

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        while (job := self._held.popleft() if self._held else self._queue.get()) is not _STOP:
            if job.call is not None:
                self._run_call(job)
            else:
                self._run_batch(self._collect(job))
        _shut_down(self._held)

    def _run_call(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            result, error = job.call(), None
        except Exception as err:  # noqa: BLE001 - handed to the caller
            result, error = None, err
        with self._lock:  # counted before the answer goes out (see _run_batch)
            self._stats["calls"] += 1
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)

    def _collect(self, first: _Job) -> list[_Job]:
        """``first`` and the jobs that join it: held ones first, then arrivals until full or the deadline."""
        batch, size = [first], len(first.texts)
        for job in list(self._held):
            if size >= self.max_batch:
                return batch
            if job.options == first.options and job.call is None and job is not _STOP and size + len(job.texts) <= self.max_batch:
                self._held.remove(job)
                batch.append(job)
                size += len(job.texts)
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP or job.call is not None or job.options != first.options:
                self._held.append(job)  # served next, in arrival order
            elif size + len(job.texts) > self.max_batch:
                self._held.append(job)  # starts the next batch
                break
            else:
                batch.append(job)
                size += len(job.texts)
        return batch

    def _run_batch(self, batch: list[_Job]) -> None:
        # A job whose caller gave up (cancelled its future) is dropped before any work is done for it.
        batch = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        texts = [text for job in batch for text in job.texts]
        started = time.perf_counter()
        try:
            results = self._translate(texts, **dict(batch[0].options))
            if len(results) != len(texts):
                raise RuntimeError(f"translate returned {len(results)} results for {len(texts)} texts")
        except Exception as err:  # noqa: BLE001 - every waiting request gets the error; the worker goes on
            logger.exception("a batch of %d texts failed", len(texts))
            with self._lock:
                self._stats["failed_batches"] += 1
            for job in batch:
                job.future.set_exception(err)
            return
        with self._lock:  # counted before the answers go out: a client that has its answer sees it in /stats
            self._stats["requests"] += len(batch)
            self._stats["sentences"] += len(texts)
            self._stats["batches"] += 1
            self._stats["compute_s"] += time.perf_counter() - started
            self._stats["largest_batch"] = max(self._stats["largest_batch"], len(texts))
            self._sizes[len(texts)] += 1
        start = 0
        for job in batch:
            job.future.set_result(list(results[start:start + len(job.texts)]))
            start += len(job.texts)
