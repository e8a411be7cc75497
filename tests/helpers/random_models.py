"""Small random-weight models and random sources, for the decoding and ensemble tests."""

from __future__ import annotations

from dataclasses import replace

import torch

from seq2seq.models.transformer import Seq2SeqTransformer, TransformerConfig

VOCAB = 48
PAD, EOS = 0, 3
LENGTHS = [5, 9, 3, 12, 7, 1, 2]  # source lengths, EOS included; padded to 12 in a batch


def make_model(
    pre_norm: bool = True, seed: int = 0, eos_bias: float = 0.0, std: float = 0.2, **config
) -> Seq2SeqTransformer:
    """A random model whose outputs vary with the input.

    The default initialization makes a random decoder repeat one token forever; larger normal
    weights give varied, source-dependent outputs, which the tests need to mean something.
    ``eos_bias`` is added to the EOS logit (to make sequences end early); ``config`` overrides
    :class:`TransformerConfig` fields (sizes, ``copy_attention`` ...).
    """
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        src_vocab_size=VOCAB,
        tgt_vocab_size=VOCAB,
        d_model=32,
        num_heads=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        d_ff=64,
        dropout=0.1,
        max_positions=128,
        pre_norm=pre_norm,
        tie_output=False,
    )
    cfg = replace(cfg, **config)
    model = Seq2SeqTransformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
    if eos_bias:
        bias = torch.zeros(VOCAB)
        bias[EOS] = eos_bias
        model.decoder.output.register_forward_hook(lambda module, args, out: out + bias)
    return model


def make_sources(lengths=LENGTHS, seed: int = 0) -> torch.Tensor:
    """Random sources (B, max(lengths)), each ending with EOS, right-padded."""
    g = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths)), PAD, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, : n - 1] = torch.randint(4, VOCAB, (n - 1,), generator=g)
        src[i, n - 1] = EOS
    return src
