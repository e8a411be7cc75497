"""Small random-weight models and random sources, for the decoding and ensemble tests, and random-weight
checkpoints (with a real tokenizer) for the export tests."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path

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


@functools.cache
def toy_pairs() -> list[tuple[str, str]]:
    """400 pairs of the toy grammar (seed 7): what the export tests' tokenizers are trained on."""
    from seq2seq.data import toy

    return toy.generate(seed=7, sizes={"train": 400})["train"]


@functools.cache
def toy_tokenizers() -> dict:
    """Tokenizers of :func:`toy_pairs`: ``joint`` (150 pieces) and ``separate`` (120 per side)."""
    from seq2seq.data.tokenizer import Tokenizer

    en, de = [p[0] for p in toy_pairs()], [p[1] for p in toy_pairs()]
    return {"joint": Tokenizer.train(en, de, 150), "separate": Tokenizer.train(en, de, 120, joint=False)}


def random_checkpoint(path: Path, tokenizer, **model) -> Path:
    """A checkpoint of a random network whose every weight (norms and biases too) is perturbed."""
    cfg = TransformerConfig(src_vocab_size=tokenizer.src_vocab_size, tgt_vocab_size=tokenizer.tgt_vocab_size,
                            d_model=32, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, d_ff=64,
                            dropout=0.0, max_positions=96, **model)
    torch.manual_seed(0)
    net = Seq2SeqTransformer(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "model_config": dict(cfg.__dict__), "tokenizer": tokenizer.state_dict()}, path)
    return path
