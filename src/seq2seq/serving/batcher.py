"""Server-side batching: concurrent requests share model calls.

Two batchers with one client API (``submit``, ``call``, ``stats``, ``close``): :class:`Batcher`
(any ``translate`` function; the server's default) and :class:`ContinuousBatcher` (one network
decoding greedily or with beam search; ``continuous_batching=true``).

**Continuous** (iteration-level) batching: the worker keeps one search running
(:class:`~seq2seq.decoding.continuous.ContinuousSearch`); requests join it between decoder steps
and each sentence leaves as soon as it is finished, so every step runs with up to ``max_batch``
sentences in flight and no request waits for a batch to end. When the worker is idle, the first
request waits up to ``max_wait_ms`` for others to start with it; while the search runs, waiting
sentences join in groups (``JOIN_FRACTION``), or once the first has waited a few steps.
Requests with different ``n_best`` share the search (it only changes how many hypotheses come back).

**Batch at a time** (:class:`Batcher`):

One worker thread owns the model (the event loop stays free to accept and answer requests). Each
request is a job: its texts and its decoding options. The worker takes the oldest job, then more
jobs with the *same* options, until the batch holds ``max_batch`` texts or ``max_wait_ms`` have
passed since it took the first job, and runs them all through one ``translate(texts, **options)``
call (:meth:`seq2seq.api.Translator.translate`, which sorts them by length into model batches).
Each job's future gets its own slice of the results, in its order.

The wait starts when the worker takes the first job: when that job arrives if the worker was idle,
else when the previous batch ends. Waiting after a batch too lets the clients it just answered
join the next one; without it, requests that arrived while the model ran would leave at once as a
batch of their own, and clients that fell into two groups (16 clients, two batches of 8) would
stay split. A batch that is full (``max_batch``) leaves at once.

Jobs whose options differ (say ``n_best=3`` among ``n_best=1`` ones) are held back, in arrival
order, and start the next batch, so options are never mixed and no job waits behind more than one
batch of others. A job with more texts than ``max_batch`` forms a batch alone.

Other model work (the attention maps of one sentence) goes through :meth:`Batcher.call`: it runs on
the same thread, between batches, so the network is never used by two threads at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from seq2seq.decoding.continuous import ContinuousSearch

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    future: Future
    texts: list[str] | None = None  # a translation job
    options: tuple = ()  # its decoding options as sorted (name, value) pairs: jobs batch only with equal ones
    call: Callable[[], Any] | None = None  # any other work, run alone
    results: list = field(default_factory=list)  # continuous batching: one per text, filled as sentences finish
    left: int = 0  # continuous batching: sentences not finished yet
    taken: int = 0  # continuous batching: the worker's decoder steps when it took the job


_STOP = _Job(Future())


class _Worker:
    """What both batchers share: the job queue, the one worker thread that owns the model, other work
    between batches (:meth:`call`), counters and closing. A batcher writes the worker loop (``_run``).

    ``setup`` runs first on the worker thread (e.g. ``torch.set_num_threads``).
    """

    def __init__(self, *, max_batch: int, max_wait_ms: float, setup: Callable[[], None] | None):
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch} must be at least 1")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms={max_wait_ms} must not be negative")
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1000
        self._setup = setup
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stats = {"requests": 0, "sentences": 0, "batches": 0, "largest_batch": 0, "calls": 0, "failed_batches": 0,
                       "compute_s": 0.0}
        self._sizes: Counter[int] = Counter()
        self._thread = threading.Thread(target=self._run, name="seq2seq-batcher", daemon=True)
        self._closed = False

    def _run(self) -> None:
        raise NotImplementedError

    def _taken(self) -> int:
        """Texts or jobs the worker has taken from the queue but not started."""
        return 0

    # ---------------------------------------------------------------------------------- clients
    def start(self) -> _Worker:
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
            job.future.set_exception(RuntimeError("the server is shutting down"))
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
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    def stats(self) -> dict[str, Any]:
        """Counters since the start: requests, sentences, batches (and how many held each number of
        sentences), the largest batch, other calls, failed batches, seconds spent in the model's
        ``translate`` calls (``compute_s``), jobs waiting now."""
        with self._lock:
            stats = dict(self._stats)
            stats["batch_sizes"] = {str(size): n for size, n in sorted(self._sizes.items())}
        stats["waiting"] = self._queue.qsize() + self._taken()
        return stats

    def _run_call(self, job: _Job) -> None:
        if not job.future.set_running_or_notify_cancel():
            return
        try:
            result = job.call()
        except Exception as err:  # noqa: BLE001 - handed to the caller
            error = err
        else:
            error = None
        with self._lock:  # counted before the answer goes out (see Batcher._run_batch)
            self._stats["calls"] += 1
        if error is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(error)


class Batcher(_Worker):
    """Queue translation jobs and run them in batches on one worker thread; see the module docstring.

    ``translate(texts, **options)`` returns one result per text (``Translator.translate``).
    """

    def __init__(self, translate: Callable[..., Sequence[Any]], *, max_batch: int = 32, max_wait_ms: float = 10.0,
                 setup: Callable[[], None] | None = None):
        super().__init__(max_batch=max_batch, max_wait_ms=max_wait_ms, setup=setup)
        self._translate = translate
        self._held: deque[_Job] = deque()  # taken from the queue, waiting for a batch with their options

    def _taken(self) -> int:
        return len(self._held)

    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            job = self._held.popleft() if self._held else self._queue.get()
            if job is _STOP:
                break
            if job.call is not None:
                self._run_call(job)
            else:
                self._run_batch(self._collect(job))
        for job in self._held:
            if job is not _STOP and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("the server is shutting down"))

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
        deadline = time.monotonic() + self.max_wait  # see the module docstring
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


# Sentences join a running search in groups of at least 1/JOIN_FRACTION of the sentences in flight
# (or once the first has waited JOIN_WAIT_STEPS decoder steps): each join is an encoder call and a
# copy of the cache, which cost as much for one sentence as for several (docs/results/serve_load_cpu_continuous).
JOIN_FRACTION = 4
JOIN_WAIT_STEPS = 4


class ContinuousBatcher(_Worker):
    """Continuous batching over one network's :class:`~seq2seq.decoding.continuous.ContinuousSearch`;
    see the module docstring. ``predictor`` encodes texts and decodes hypotheses (its network,
    decoding settings and default ``n_best``); ``max_batch``: sentences in flight at most;
    ``max_src_len`` and ``warn`` as in :meth:`~seq2seq.inference.predictor.Predictor.translate`.

    ``stats()`` adds ``steps`` (decoder steps) and ``step_sentences`` (sentences in flight, summed
    over steps: their mean is ``step_sentences / steps``); ``batches`` counts groups of sentences
    that joined the search together (one encoder call each), ``largest_batch`` the most sentences
    in one step.
    """

    def __init__(self, predictor, *, max_batch: int = 32, max_wait_ms: float = 10.0,
                 setup: Callable[[], None] | None = None, max_src_len: int | None = None,
                 warn: Callable[[str], None] | None = None):
        super().__init__(max_batch=max_batch, max_wait_ms=max_wait_ms, setup=setup)
        self._predictor, self._max_src_len, self._warn = predictor, max_src_len, warn
        self._waiting: deque[tuple[_Job, int, list[int]]] = deque()  # sentences not admitted yet
        self._stats.update(steps=0, step_sentences=0)
        self._stopping = False

    def _taken(self) -> int:
        return len(self._waiting)

    # ----------------------------------------------------------------------------------- worker
    def _run(self) -> None:
        if self._setup is not None:
            self._setup()
        predictor = self._predictor
        predictor.net.eval()
        search = ContinuousSearch(predictor.net, predictor.decoding, predictor.device)
        admitted: set[_Job] = set()
        while not self._stopping:
            if search.size == 0 and not self._waiting:
                self._take(self._queue.get())
                deadline = time.monotonic() + self.max_wait  # others may start with it
                while not self._stopping and len(self._waiting) < self.max_batch:
                    left = deadline - time.monotonic()
                    try:
                        self._take(self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait())
                    except queue.Empty:
                        break
            else:
                while not self._stopping:
                    try:
                        self._take(self._queue.get_nowait())
                    except queue.Empty:
                        break
            if self._stopping:
                break
            joining = min(self.max_batch - search.size, len(self._waiting))
            if joining and joining < min(search.size // JOIN_FRACTION, self.max_batch - search.size) and \
                    self._stats["steps"] - self._waiting[0][0].taken < JOIN_WAIT_STEPS:
                joining = 0  # too few to be worth a join yet; see JOIN_FRACTION
            if not search.size and not joining:
                continue
            started = time.perf_counter()
            try:
                if joining:
                    group = [self._waiting.popleft() for _ in range(joining)]
                    admitted.update(job for job, _, _ in group)  # before add: a failing add fails them too
                    search.add([ids for _, _, ids in group], [(job, i) for job, i, _ in group],
                               [self._n_best(job) for job, _, _ in group])
                in_flight = search.size
                finished = search.step()
                for (job, i), hypotheses in finished:
                    n_best = self._n_best(job)
                    pairs = predictor.n_best_pairs(hypotheses, n_best)
                    job.results[i] = pairs[0][0] if n_best == 1 else pairs
                    job.left -= 1
            except Exception as err:  # noqa: BLE001 - every request in flight gets the error; the worker goes on
                logger.exception("a decoding step failed")
                self._waiting = deque(item for item in self._waiting if item[0] not in admitted)
                for job in admitted:
                    job.future.set_exception(err)
                admitted.clear()
                search = ContinuousSearch(predictor.net, predictor.decoding, predictor.device)
                with self._lock:
                    self._stats["failed_batches"] += 1
                continue
            with self._lock:  # counted before the answers go out (see Batcher._run_batch)
                stats = self._stats
                stats["steps"] += 1
                stats["step_sentences"] += in_flight
                stats["sentences"] += len(finished)
                stats["compute_s"] += time.perf_counter() - started
                stats["largest_batch"] = max(stats["largest_batch"], in_flight)
                if joining:
                    stats["batches"] += 1
                    self._sizes[joining] += 1
            for job in {job for (job, _), _ in finished if job.left == 0}:
                admitted.discard(job)
                self._finish(job)
        # Jobs still queued are failed by close(); these were taken (their futures are running).
        for job in {*admitted, *(job for job, _, _ in self._waiting)}:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    def _n_best(self, job: _Job) -> int:
        return dict(job.options).get("n_best", self._predictor.decoding.n_best)

    def _take(self, job: _Job) -> None:
        """A job from the queue: stop, run a call now, or queue a translation's sentences."""
        if job is _STOP:
            self._stopping = True
            return
        if job.call is not None:
            self._run_call(job)
            return
        if not job.future.set_running_or_notify_cancel():
            return  # its caller gave up
        n_best = self._n_best(job)
        try:
            unknown = sorted(set(dict(job.options)) - {"n_best"})
            if unknown:
                raise ValueError(f"continuous batching takes n_best per request, not {', '.join(unknown)}")
            if not 1 <= n_best <= self._predictor.decoding.beam_size or (
                    n_best > 1 and self._predictor.decoding.strategy != "beam"):
                raise ValueError(f"n_best={n_best} is not available with these decoding settings")
            todo = [i for i, text in enumerate(job.texts) if text.strip()]
            sources = self._predictor.source_ids([job.texts[i] for i in todo], max_src_len=self._max_src_len,
                                                 warn=self._warn)
        except Exception as err:  # noqa: BLE001 - handed to the caller
            job.future.set_exception(err)
            return
        job.taken = self._stats["steps"]
        job.results = ["" if n_best == 1 else [("", 0.0)] * n_best for _ in job.texts]
        job.left = len(todo)
        if not todo:
            self._finish(job)
        self._waiting.extend((job, i, ids) for i, ids in zip(todo, sources))

    def _finish(self, job: _Job) -> None:
        with self._lock:  # counted before the answer goes out (see Batcher._run_batch)
            self._stats["requests"] += 1
        job.future.set_result(job.results)
