"""A server in a subprocess, and a small JSON client: for tests, benchmarks and scripts (stdlib only).

    with ServerProcess([f"ckpt_path={ckpt}", "decoding=greedy"]) as server:   # port=0: a free port
        status, body = Client(server.url).post("/translate", {"text": "A man rides a bike."})
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

URL_LINE = re.compile(r"^Serving (http://\S+)")


class Client:
    """JSON requests over one keep-alive HTTP connection (reopened when the server closed it).
    Not thread-safe: one per thread."""

    def __init__(self, url: str, timeout: float = 120.0):
        parts = urlsplit(url)
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: Any = None, headers: dict | None = None) -> tuple[int, Any]:
        """``(status, decoded JSON or text)``; ``body``: bytes as they are, anything else as JSON."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
                response = self._conn.getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.CannotSendRequest):  # RemoteDisconnected is a ConnectionError
                self.close()
                if attempt == 2:
                    raise
        text = raw.decode("utf-8", errors="replace")
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(text)
        return response.status, text

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return self.request("POST", path, body)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class ServerProcess:
    """``python -m seq2seq.serve port=0 *overrides`` in a subprocess; a context manager that returns
    once the server answers ``/health`` and stops it (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, overrides: Sequence[str], *, python: str = sys.executable, env: dict | None = None,
                 cwd: str | os.PathLike | None = None, timeout: float = 180.0):
        self.command = [python, "-m", "seq2seq.serve", "port=0", *overrides]
        self.env, self.cwd, self.timeout = env, cwd, timeout
        self.url: str | None = None
        self._lines: deque[str] = deque(maxlen=2000)
        self._found = threading.Event()
        self.proc: subprocess.Popen | None = None

    @property
    def output(self) -> str:
        """What the server printed so far (the last 2000 lines, stdout and stderr together)."""
        return "\n".join(self._lines)

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self._lines.append(line)
            found = URL_LINE.match(line)
            if found and self.url is None:
                self.url = found.group(1)
                self._found.set()
        self._found.set()  # the process ended

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     encoding="utf-8", errors="replace", env=self.env, cwd=self.cwd)
        threading.Thread(target=self._read, name="seq2seq-serve-output", daemon=True).start()
        deadline = time.monotonic() + self.timeout
        if not self._found.wait(self.timeout) or self.url is None:
            self.stop()
            raise RuntimeError(f"the server did not start (exit status {self.proc.returncode}):\n{self.output[-4000:]}")
        client = Client(self.url, timeout=10)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if client.get("/health")[0] == 200:
                    client.close()
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server at {self.url} did not become healthy:\n{self.output[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """Stop the server (SIGTERM, SIGKILL after ``timeout`` s); its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
