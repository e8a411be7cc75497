"""Models: the from-scratch Transformer and its LightningModule wrapper."""

from seq2seq.models.transformer import (
    KVCache,
    Seq2SeqTransformer,
    TransformerConfig,
    TransformerDecoder,
    TransformerEncoder,
)

__all__ = ["KVCache", "Seq2SeqTransformer", "TransformerConfig", "TransformerDecoder", "TransformerEncoder"]
