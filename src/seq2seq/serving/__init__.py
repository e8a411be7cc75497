"""Serving a trained model over HTTP (``seq2seq-serve``): the web app, the request batcher, the
request schemas, the model's description and the demo page.

* :mod:`~seq2seq.serving.batcher`: one worker thread owns the model; concurrent requests are queued
  and merged into one :meth:`seq2seq.api.Translator.translate` call (a max batch and a max wait), or
  (``continuous_batching=true``) join a running search between decoder steps.
* :mod:`~seq2seq.serving.schemas`: request bodies read and checked by hand, so that every bad
  input gets one line of JSON (``{"error": "..."}``); the JSON of the answers.
* :mod:`~seq2seq.serving.info`: what ``GET /info`` says about the model (from the checkpoint's run folder).
* :mod:`~seq2seq.serving.app`: the FastAPI application (``create_app``) and running it with uvicorn.
* :mod:`~seq2seq.serving.process`: a server in a subprocess, for tests and benchmarks.
* ``static/index.html``: the demo page (plain HTML and JavaScript, nothing loaded from elsewhere).

FastAPI and uvicorn come with the ``serve`` extra (``pip install 'seq2seq[serve]'``); only ``app``
imports them.
"""
