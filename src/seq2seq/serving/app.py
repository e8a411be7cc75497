"""The web application: FastAPI endpoints over a :class:`~seq2seq.api.Translator`, run by uvicorn.

``GET /`` the demo page, ``POST /translate`` and ``POST /attention`` (:mod:`.schemas`), ``GET /health``
(503 once the translation worker stopped), ``GET /info`` (:mod:`.info`, limits, batching, threads)
and ``GET /stats`` (the batcher's counters). Every model call runs on the batcher's one worker
thread (:mod:`.batcher`); the event loop only reads, checks and answers. Every error is
``{"error": "one line"}`` with a 4xx status (a 500 for a failure of the server itself, which keeps serving).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import functools
import logging
import socket
import sys
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from seq2seq.api import Translator
from seq2seq.errors import ConfigError, Seq2SeqError, one_line
from seq2seq.serving.batcher import Batcher
from seq2seq.serving.schemas import (
    BadRequest,
    Limits,
    attention_json,
    parse_attention,
    parse_json,
    parse_translate,
    translate_response,
)

logger = logging.getLogger(__name__)
ENDPOINTS = "GET /, POST /translate, POST /attention, GET /health, GET /info, GET /stats"


@dataclass(frozen=True)
class Batching:
    """Server-side batching (:mod:`.batcher`): at most ``max_batch`` texts per model call, collected
    for at most ``max_wait_ms`` after the worker takes the first."""

    max_batch: int = 32
    max_wait_ms: float = 10.0


def use_one_malloc_arena() -> bool:
    """Make every thread allocate from glibc's main arena (``mallopt(M_ARENA_MAX, 1)``) before the
    worker thread starts; True where it took effect (glibc only). A new thread's own arena is trimmed
    back to the system as tensors are freed, so every decoding step's buffers would come back as
    fresh pages, faulted in and zeroed again (docs/export-and-serve.md has the measurement).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, 1))  # -8: M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False


def demo_page() -> str:
    """The demo page's HTML (package data, so it ships in the wheel)."""
    return resources.files("seq2seq.serving").joinpath("static", "index.html").read_text(encoding="utf-8")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object (:func:`.schemas.parse_json`), refused (413) as soon as it passes
    ``limit`` bytes: at once when its Content-Length says so, else once the bytes read pass it.
    uvicorn drops the rest of a refused body, so the client gets the 413 and the connection stays open."""
    declared = request.headers.get("content-length", "")
    too_large = BadRequest(413, f"the body is larger than this server takes ({limit} bytes); send fewer or shorter texts")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return parse_json(bytes(body))


def create_app(translator: Translator, info: dict[str, Any], *, limits: Limits | None = None,
               batching: Batching | None = None, threads: int | None = None) -> FastAPI:
    """The application serving ``translator``; ``info`` is what ``/info`` says about the model
    (:func:`seq2seq.serving.info.model_info`). ``limits`` and ``batching`` default to their
    classes' defaults; ``threads``: torch threads of the worker (default: as set)."""
    limits, batching = limits or Limits(), batching or Batching()
    decoding = translator.decoding
    batcher = Batcher(functools.partial(translator.translate, warn=logger.warning), max_batch=batching.max_batch,
                      max_wait_ms=batching.max_wait_ms,
                      setup=(lambda: torch.set_num_threads(threads)) if threads else None)
    page = demo_page()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.close)

    app = FastAPI(title="seq2seq", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"error": err.message}, status_code=err.status)

    @app.exception_handler(Seq2SeqError)
    async def user_error(request: Request, err: Seq2SeqError) -> JSONResponse:
        return JSONResponse({"error": str(err).replace("\n", " ")}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": f"{err.detail}: {request.method} {request.url.path}; this server has {ENDPOINTS}"},
                            status_code=err.status_code, headers=getattr(err, "headers", None))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, err: ClientDisconnect) -> Response:
        # Nobody is left to answer: one log line instead of the ASGI traceback, and the server goes on.
        logger.warning("%s %s: the client disconnected before sending its whole body", request.method,
                       request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        logger.error("%s %s failed: %s", request.method, request.url.path, one_line(err))
        return JSONResponse({"error": f"internal error: {one_line(err)}"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.post("/translate")
    async def translate_endpoint(request: Request) -> JSONResponse:
        query = parse_translate(await read_json(request, limits.max_body_bytes), limits, decoding)
        results = await asyncio.wrap_future(batcher.submit(query.texts, query.options))
        return JSONResponse(translate_response(query, results))

    @app.post("/attention")
    async def attention_endpoint(request: Request) -> JSONResponse:
        text = parse_attention(await read_json(request, limits.max_body_bytes), limits)  # an ensemble: 422 from the worker
        attention = await asyncio.wrap_future(batcher.call(lambda: translator.attention(text)))
        return JSONResponse(attention_json(attention))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not batcher.alive:
            return JSONResponse({"error": "the translation worker has stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/info")
    async def model_info() -> JSONResponse:
        return JSONResponse({**info, "limits": asdict(limits), "batching": asdict(batching),
                             "threads": threads or torch.get_num_threads()})

    @app.get("/stats")
    async def stats() -> JSONResponse:
        return JSONResponse(batcher.stats())

    return app


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (``port=0``: any free port), not yet listening; a port in
    use or an address that is not this machine's is a :class:`ConfigError`."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as err:
        raise ConfigError(f"host={host!r} is not an address to listen on ({err.strerror}); "
                          "use e.g. host=127.0.0.1 (this machine only) or host=0.0.0.0 (every interface)") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port} on {host} is in use (another server?); stop it, or pick another "
                              "port=N (port=0 takes any free port)") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    return sock


def serve_forever(app: FastAPI, sock: socket.socket, *, log_requests: bool = False) -> None:
    """Run ``app`` with uvicorn on the bound ``sock`` until interrupted (Ctrl-C, SIGTERM)."""
    config = uvicorn.Config(app, log_level="info", access_log=log_requests, timeout_keep_alive=30)
    uvicorn.Server(config).run(sockets=[sock])
