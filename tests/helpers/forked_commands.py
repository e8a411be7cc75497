"""Run ``python -m seq2seq.<command> ...`` invocations, each in a process of its own, without paying
the start-up of each.

Every command's process spends ~6 s importing torch and Lightning before it reads its arguments,
and the suite runs dozens of commands, many of which stop at a bad input within a second. Here one
server process imports the commands once and forks a child per invocation: each child gets its own
working folder, environment, stdin, stdout, stderr and exit status, and runs the module as
``python -m`` does (``runpy``, as ``__main__``), so everything after the imports is the real
command. The server never runs a torch operation itself, so its children start as fresh processes
would (torch's thread count follows the child's ``OMP_NUM_THREADS``, as at a fresh start).

:func:`run_command` is the caller's side (a :class:`subprocess.CompletedProcess` back, like
``subprocess.run(..., capture_output=True)``); the server starts on first use and ends with the
test session. Tests that signal, kill or talk to a running command use real processes instead.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from concurrent.futures import Future
from pathlib import Path

# What the server imports before it forks: the commands' modules (their imports are the cost).
PRELOAD = ("seq2seq.train", "seq2seq.translate", "seq2seq.eval")


class CommandServer:
    """The caller's handle on one server process; thread-safe (requests may overlap)."""

    def __init__(self, env: dict):
        self._folder = Path(tempfile.mkdtemp(prefix="forked-commands-"))
        self._proc = subprocess.Popen([sys.executable, __file__, "--serve", *PRELOAD], env=env, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self._ids = itertools.count()
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="forked-commands", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            reply = json.loads(line)
            with self._lock:
                future = self._pending.pop(reply["id"], None)
            if future is not None:
                future.set_result(reply["status"])
        with self._lock:  # the server ended: nobody gets an answer any more
            pending, self._pending = self._pending, {}
        for future in pending.values():
            future.set_exception(RuntimeError("the command server ended"))

    def _send(self, message: dict) -> None:
        with self._lock:
            self._proc.stdin.write(json.dumps(message) + "\n")
            self._proc.stdin.flush()

    def run(self, module: str, args: list, cwd: Path | str, env: dict, input: bytes | str | None = None,
            timeout: float = 600, text: bool = False) -> subprocess.CompletedProcess:
        if self._proc.poll() is not None:
            raise RuntimeError(f"the command server ended with status {self._proc.returncode}")
        request_id = next(self._ids)
        files = {name: self._folder / f"{request_id}.{name}" for name in ("stdin", "stdout", "stderr")}
        data = input.encode() if isinstance(input, str) else (input or b"")
        files["stdin"].write_bytes(data)
        future: Future = Future()
        with self._lock:
            self._pending[request_id] = future
        command = [sys.executable, "-m", module, *[str(a) for a in args]]
        self._send({"id": request_id, "module": module, "args": command[3:], "cwd": str(cwd), "env": env,
                    **{name: str(path) for name, path in files.items()}})
        try:
            status = future.result(timeout=timeout)
        except TimeoutError:
            self._send({"kill": request_id})
            future.result(timeout=30)
            raise subprocess.TimeoutExpired(command, timeout) from None
        stdout, stderr = files["stdout"].read_bytes(), files["stderr"].read_bytes()
        for path in files.values():
            path.unlink(missing_ok=True)
        if text:
            stdout, stderr = stdout.decode(), stderr.decode()
        return subprocess.CompletedProcess(command, status, stdout, stderr)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        for path in self._folder.iterdir():
            path.unlink()
        self._folder.rmdir()


_server: CommandServer | None = None
_server_lock = threading.Lock()


def run_command(module: str, args: list, cwd: Path | str, env: dict | None = None, input: bytes | str | None = None,
                timeout: float = 600, text: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run([python, "-m", module, *args], cwd=cwd, env=env, input=input,
    capture_output=True, timeout=timeout, text=text)``, forked from the session's command server."""
    global _server
    with _server_lock:
        if _server is None:
            _server = CommandServer(dict(os.environ))
            atexit.register(_server.close)
    return _server.run(module, args, cwd, dict(os.environ) if env is None else env, input, timeout, text)


# ------------------------------------------------------------------------------------- server side


def _child(request: dict) -> None:
    """Become the command: never returns."""
    status = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in ((0, request["stdin"], os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            opened = os.open(path, flags, 0o644)
            os.dup2(opened, fd)
            os.close(opened)
        sys.stdout = sys.__stdout__  # the server pointed it at stderr; fd 1 is the output file now
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        threads = request["env"].get("OMP_NUM_THREADS")
        if threads:  # what torch reads at a fresh start, long past in this process
            import torch

            torch.set_num_threads(int(threads))
        sys.argv = [request["module"], *request["args"]]
        sys.path[0] = os.getcwd()  # python -m puts the working folder first (this script's folder is there now)
        # Its imports stay (that is the point); the module itself runs afresh as __main__, as with
        # ``python -m`` (runpy warns about a module that is already imported).
        sys.modules.pop(request["module"], None)
        try:
            runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            status = 0
        except SystemExit as exit_:  # what the interpreter does with it
            if exit_.code is None:
                status = 0
            elif isinstance(exit_.code, int):
                status = exit_.code
            else:
                print(exit_.code, file=sys.stderr)
                status = 1
        except BaseException:  # noqa: BLE001 - an uncaught exception: traceback and status 1, as python does
            traceback.print_exc()
            status = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def serve(modules: list[str]) -> None:
    """Read one JSON request per line on stdin, fork a child for each, write ``{"id", "status"}``
    per finished child on stdout. ``{"kill": id}`` kills a running child. Ends when stdin closes
    (killing the children still running)."""
    for module in modules:
        importlib.import_module(module)
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the reply channel
    running: dict[int, int] = {}  # pid -> request id
    open_input = True
    buffer = b""
    while open_input or running:
        if open_input:
            ready, _, _ = select.select([sys.stdin.fileno()], [], [], 0.02)
            if ready:
                chunk = os.read(sys.stdin.fileno(), 1 << 16)
                if not chunk:
                    open_input = False
                    for pid in running:
                        os.kill(pid, signal.SIGKILL)
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    request = json.loads(line)
                    if "kill" in request:
                        for pid, request_id in running.items():
                            if request_id == request["kill"]:
                                os.kill(pid, signal.SIGKILL)
                        continue
                    out.flush()
                    pid = os.fork()
                    if pid == 0:
                        _child(request)
                    running[pid] = request["id"]
        else:
            select.select([], [], [], 0.02)
        while running:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            request_id = running.pop(pid)
            out.write(json.dumps({"id": request_id, "status": os.waitstatus_to_exitcode(wait_status)}) + "\n")
            out.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(sys.argv[2:])
