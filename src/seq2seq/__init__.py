"""seq2seq: a Lightning + Hydra research template for encoder-decoder Transformers."""

__version__ = "0.1.0"
