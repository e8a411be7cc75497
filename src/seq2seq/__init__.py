"""seq2seq: a Lightning + Hydra research template for encoder-decoder Transformers.

``from seq2seq import Translator`` is the Python API (:mod:`seq2seq.api`); it is imported on first
use, so ``import seq2seq`` alone stays light (no torch).
"""

__version__ = "0.1.0"
__all__ = ["Translator", "__version__"]


def __getattr__(name: str):
    if name == "Translator":
        from seq2seq.api import Translator

        return Translator
    raise AttributeError(f"module 'seq2seq' has no attribute {name!r}")
