"""Progress of long data-preparation steps: a bar on a terminal, log lines elsewhere.

On a terminal (stderr is a TTY) a tqdm bar shows the count, the rate (lines/s) and the time left;
it appears only once a step has run for 2 seconds, so short steps (a small corpus) print
nothing. Elsewhere (a batch job's log, CI, a notebook's captured stderr) the step logs one INFO line
every ``log_every`` seconds with the same figures, and a last line with the total when it took that
long. ``SEQ2SEQ_PROGRESS=log`` or ``=bar`` forces one or the other, ``=none`` silences both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator

log = logging.getLogger("seq2seq.data")


@contextlib.contextmanager
def timed(times: dict[str, float], step: str) -> Iterator[None]:
    """Add the seconds the block takes to ``times[step]`` (a preparation step's time, for benchmarks)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        times[step] = times.get(step, 0.0) + time.perf_counter() - start


def _mode() -> str:
    forced = os.environ.get("SEQ2SEQ_PROGRESS", "").strip().lower()
    if forced in ("bar", "log", "none"):
        return forced
    try:
        return "bar" if sys.stderr is not None and sys.stderr.isatty() else "log"
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return "log"


class Progress:
    """Count ``unit`` s done of ``total`` (or of an unknown total) for the step ``what``.

    Use as a context manager; :meth:`update` adds to the count. Cheap enough to call per chunk.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "lines", log_every: float = 10.0):
        self.what, self.total, self.unit, self.log_every = what, total, unit, log_every
        self.count = 0
        self.start = time.monotonic()
        self._last_log = self.start
        self._logged = False
        self.mode = _mode()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=what, unit=unit[:-1] if unit.endswith("s") else unit, unit_scale=True,
                             unit_divisor=1024 if unit == "B" else 1000, delay=2.0, dynamic_ncols=True, leave=False,
                             file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._logged:  # only steps that logged progress log their end
            log.info("%s: done, %s", self.what, self._line(time.monotonic()).split(": ", 1)[1])

    def update(self, n: int) -> None:
        self.count += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log":
            now = time.monotonic()
            if now - self._last_log >= self.log_every:
                self._last_log = now
                self._logged = True
                log.info("%s", self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.count / elapsed
        scale, unit = (1e6, "MB") if self.unit == "B" else (1, self.unit)
        done = f"{self.count / scale:,.0f}" + (
            f" / {self.total / scale:,.0f} ({100 * self.count / max(self.total, 1):.0f}%)" if self.total else "")
        left = ""
        if self.total and rate > 0 and self.count < self.total:
            left = f", {(self.total - self.count) / rate:.0f} s left"
        return f"{self.what}: {done} {unit}, {rate / scale:,.0f} {unit}/s{left}"
