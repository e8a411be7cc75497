"""Serving a trained model over HTTP (``seq2seq-serve``): the batchers (``batcher``), the request
schemas (``schemas``), ``GET /info`` (``info``), the FastAPI app (``app``, the only importer of the
web stack: the ``serve`` extra), a server in a subprocess for tests and benchmarks (``process``) and
the demo page (``static/index.html``); docs/ARCHITECTURE.md says what each owns."""
