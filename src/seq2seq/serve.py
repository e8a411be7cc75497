"""Serve a trained checkpoint over HTTP: a JSON API with server-side batching and a demo page.

    seq2seq-serve ckpt_path=RUN/checkpoints/best.ckpt [host=127.0.0.1] [port=8000] [decoding=greedy] [threads=2]

Configuration: ``conf/serve.yaml`` and the ``decoding`` group (beam search by default); the
endpoints are :mod:`seq2seq.serving.app`'s. Needs ``pip install 'seq2seq[serve]'``. Prints
``Serving http://HOST:PORT`` once the model is loaded (``port=0``: the port chosen); Ctrl-C or
SIGTERM stops it. User errors (a bad checkpoint, a port in use, a foreign address, a missing web
stack) end with one ``error: ...`` line and exit status 2. Nothing is written.
"""

from __future__ import annotations

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from seq2seq.api import Translator
from seq2seq.config import config_dir, user_errors_exit
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError


@user_errors_exit
def serve(cfg: DictConfig) -> None:
    """Run the command for a composed ``serve`` config (user errors: one message, exit 2)."""
    try:
        from seq2seq.serving.app import Batching, bind, create_app, serve_forever, use_one_malloc_arena
        from seq2seq.serving.info import model_info
        from seq2seq.serving.schemas import Limits
    except ImportError as err:
        raise ConfigError(f"seq2seq-serve needs FastAPI and uvicorn ({err.name} is missing): "
                          "pip install 'seq2seq[serve]'") from None
    use_one_malloc_arena()  # before any thread starts; see its docstring
    decoding = DecodingConfig.from_mapping(cfg.decoding).validate()
    limits = Limits(int(cfg.max_text_chars), int(cfg.max_texts), int(cfg.max_n_best))
    batching = Batching(int(cfg.max_batch), float(cfg.max_wait_ms))
    for name, value in [*vars(limits).items(), ("max_batch", batching.max_batch)]:
        if value < 1:
            raise ConfigError(f"{name}={value} must be at least 1")
    if batching.max_wait_ms < 0:
        raise ConfigError(f"max_wait_ms={batching.max_wait_ms} must not be negative")
    threads = cfg.get("threads")
    if threads is not None:
        if int(threads) < 1:
            raise ConfigError(f"threads={threads} must be at least 1 (or null: torch's default)")
        torch.set_num_threads(int(threads))
    port = cfg.get("port")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port={port!r} is not a port: use a number from 1 to 65535 (0: any free port)")
    sock = bind(str(cfg.host), port)  # a port in use fails before the model loads
    ckpt_path = cfg.get("ckpt_path")
    if OmegaConf.is_list(ckpt_path):
        ckpt_path = list(ckpt_path)
    translator = Translator.from_checkpoint(ckpt_path, cfg.get("device"), decoding=decoding,
                                            batch_size=batching.max_batch, max_src_len=cfg.get("max_src_len"),
                                            tgt_lang=cfg.get("tgt_lang"), quantize=cfg.get("quantize"))
    translator.source_tokenizer()  # a multilingual checkpoint serves one target language: tgt_lang, checked now
    app = create_app(translator, model_info(translator, ckpt_path), limits=limits, batching=batching,
                     threads=torch.get_num_threads())
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    print(f"Serving http://{host}:{port} (demo page: /, API: POST /translate, POST /attention, GET /info)",
          flush=True)
    serve_forever(app, sock, log_requests=bool(cfg.get("log_requests")))


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
def main(cfg: DictConfig) -> None:
    """Console script ``seq2seq-serve``."""
    serve(cfg)


if __name__ == "__main__":
    main()
