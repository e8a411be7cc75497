"""Run many ``python -m seq2seq.<command> ...`` invocations, each in its own process, for the price
of one start-up.

A command's process spends ~6 s importing torch and Lightning before it reads its arguments; a test
that runs twenty commands which each stop at a bad input would spend most of its time there. Run as
a script, this module imports the commands once and then forks one child per invocation: each child
has its own working folder, environment, stdin, stdout, stderr and exit status, and runs the module
as ``python -m`` does (``runpy``, ``__main__``), so everything after the imports is the real command.

    python tests/helpers/forked_commands.py REQUESTS.json RESULTS.json PARALLEL

REQUESTS.json is a list of ``{"module", "args", "cwd", "env", "stdin", "stdout", "stderr"}`` (the
last three are file paths); RESULTS.json gets each one's exit status, in order. :func:`run_forked`
is the caller's side.
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path


def run_forked(invocations: list[dict], env: dict, parallel: int = 2, timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Run ``invocations`` (``{"module", "args", "cwd", "stdin": bytes | None}`` each; ``env`` for all)
    and return one :class:`subprocess.CompletedProcess` per invocation, stdout and stderr as bytes."""
    with tempfile.TemporaryDirectory(prefix="forked-commands-") as tmp:
        folder = Path(tmp)
        requests = []
        for i, inv in enumerate(invocations):
            (folder / f"{i}.in").write_bytes(inv.get("stdin") or b"")
            requests.append({"module": inv["module"], "args": [str(a) for a in inv["args"]], "cwd": str(inv["cwd"]),
                             "env": env, "stdin": str(folder / f"{i}.in"), "stdout": str(folder / f"{i}.out"),
                             "stderr": str(folder / f"{i}.err")})
        (folder / "requests.json").write_text(json.dumps(requests))
        proc = subprocess.run([sys.executable, __file__, str(folder / "requests.json"), str(folder / "results.json"),
                               str(parallel)], env=env, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"forked_commands.py failed ({proc.returncode}): {proc.stderr.decode()[-3000:]}")
        statuses = json.loads((folder / "results.json").read_text())
        return [
            subprocess.CompletedProcess([sys.executable, "-m", r["module"], *r["args"]], status,
                                        Path(r["stdout"]).read_bytes(), Path(r["stderr"]).read_bytes())
            for r, status in zip(requests, statuses)
        ]


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
        sys.argv = [request["module"], *request["args"]]
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


def main(requests_file: str, results_file: str, parallel: str) -> None:
    requests = json.loads(Path(requests_file).read_text())
    for module in dict.fromkeys(r["module"] for r in requests):
        importlib.import_module(module)
    statuses: list[int | None] = [None] * len(requests)
    waiting, running = list(range(len(requests))), {}
    while waiting or running:
        while waiting and len(running) < max(1, int(parallel)):
            index = waiting.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(requests[index])
            running[pid] = index
        pid, wait_status = os.wait()
        statuses[running.pop(pid)] = os.waitstatus_to_exitcode(wait_status)
    Path(results_file).write_text(json.dumps(statuses))


if __name__ == "__main__":
    main(*sys.argv[1:4])
