"""Serving a trained model over HTTP (``seq2seq-serve``); docs/ARCHITECTURE.md says what each module owns."""
