"""Teacher-forced forward pass over real tokens only: no compute spent on padding.

Everything in a Transformer except attention works on each position alone: embeddings, the
Q/K/V and output projections, feed-forward layers, residuals, LayerNorm and dropout. Here those
run on the ``N`` real (non-pad) tokens of the batch packed into an ``(N, D)`` matrix; only the
attention scatters its projected queries, keys and values into the padded ``(B, H, L, Dh)`` layout
that ``scaled_dot_product_attention`` needs, and gathers its output back. With the lengths of
a typical batch this skips a quarter or more of the matmul FLOPs that padded positions would
cost (see benchmarks/train_throughput.py).

It reuses the modules of :class:`Seq2SeqTransformer` (their parameters, dropout rates, norms) and
follows their forward passes (pre/post-LN sublayers, feed-forward), giving the same states at real
positions as ``net(src, tgt_in, return_hidden=True)`` (tests/test_speed_paths.py checks it).
Dropout masks come from uniform floats compared with ``p`` on CPUs (twice as fast there as
``bernoulli_``, which ``nn.Dropout`` uses; same distribution), from ``F.dropout`` elsewhere. Padding must be on
the right of each target row (as :func:`seq2seq.data.datamodule.collate` pads): decoder
positions before a real one must be real. Source padding may be anywhere (it is masked).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.models.transformer import (
    Embedding,
    FeedForward,
    MultiHeadAttention,
    Seq2SeqTransformer,
    Sublayer,
    blocked_to_keep,
)


def right_padded(tokens: Tensor, pad_id: int) -> bool:
    """Whether every row of ``tokens`` (B, L) is real tokens then padding only (host check)."""
    real = tokens != pad_id
    return bool((real[:, 1:] <= real[:, :-1]).all()) if tokens.size(1) > 1 else True


def _dropout(x: Tensor, module: nn.Dropout) -> Tensor:
    """``module(x)``, with a faster mask on CPUs (uniform floats >= p; ``nn.Dropout`` draws Bernoulli)."""
    p = module.p
    if not module.training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0 or torch.compiler.is_compiling():
        return F.dropout(x, p, training=True)
    keep = torch.rand_like(x) >= p
    return x.mul(keep).mul_(1.0 / (1.0 - p))


def _sublayer(block: Sublayer, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Sublayer.forward: pre-LN ``x + f(LN(x))`` or post-LN ``LN(x + f(x))``, dropout on f."""
    if block.pre_norm:
        return x + _dropout(fn(block.norm(x)), block.dropout)
    return block.norm(x + _dropout(fn(x), block.dropout))


def _ffn(ffn: FeedForward, x: Tensor) -> Tensor:
    """FeedForward.forward."""
    return ffn.fc2(_dropout(ffn.act(ffn.fc1(x)), ffn.dropout))


def _embed(embed: Embedding, tokens: Tensor, index: Tensor) -> Tensor:
    """Embedding.forward at flat positions ``index`` of ``tokens`` (B, L): (N, D)."""
    length = tokens.size(1)
    if length > embed.positions.size(0):
        raise ValueError(f"sequence of length {length} exceeds max_positions={embed.positions.size(0)}")
    x = embed.tokens(tokens.reshape(-1).index_select(0, index)) * embed.scale
    return _dropout(x + embed.positions.index_select(0, index % length), embed.dropout)


def _padded(x: Tensor, index: Tensor, rows: int) -> Tensor:
    """(N, C) rows placed at ``index`` of a zero (rows, C) matrix."""
    return x.new_zeros(rows, x.size(-1)).index_copy(0, index, x)


def _attention(
    mha: MultiHeadAttention,
    x: Tensor,
    index: Tensor,
    shape: tuple[int, int],
    keep: Tensor | None,
    is_causal: bool,
    memory: Tensor | None = None,
    memory_index: Tensor | None = None,
    memory_length: int = 0,
) -> Tensor:
    """MultiHeadAttention.forward for packed queries ``x`` (N, D) (and packed ``memory``)."""
    (batch, length), heads, dh = shape, mha.num_heads, mha.head_dim
    if mha.cross:
        q = _padded(mha.q_proj(x), index, batch * length).view(batch, length, heads, dh)
        kv = _padded(mha.kv_proj(memory), memory_index, batch * memory_length)
        k, v = kv.view(batch, memory_length, 2, heads, dh).unbind(2)
    else:
        qkv = _padded(mha.qkv_proj(x), index, batch * length)
        q, k, v = qkv.view(batch, length, 3, heads, dh).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    dropout = mha.dropout if mha.training else 0.0
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=dropout, is_causal=is_causal)
    out = out.transpose(1, 2).reshape(batch * length, heads * dh).index_select(0, index)
    return mha.out_proj(out)


def unpadded_target_states(
    net: Seq2SeqTransformer, src: Tensor, tgt_in: Tensor, src_index: Tensor, tgt_index: Tensor
) -> Tensor:
    """Final decoder states (N_t, D) at the flat positions ``tgt_index`` of ``tgt_in`` (B, T).

    ``src_index``: flat positions of the real source tokens of ``src`` (B, S); ``tgt_index``: those
    of the real targets (``target_index(tgt_out)``; a prefix of every row).
    """
    (batch, src_len), tgt_len = src.shape, tgt_in.size(1)
    keep = blocked_to_keep(net.source_padding_mask(src))
    x = _embed(net.encoder.embed, src, src_index)
    for layer in net.encoder.layers:
        x = _sublayer(
            layer.attn_block, x, lambda h, layer=layer: _attention(layer.self_attn, h, src_index, (batch, src_len), keep, False)
        )
        x = _sublayer(layer.ffn_block, x, lambda h, layer=layer: _ffn(layer.ffn, h))
    memory = net.encoder.final_norm(x)

    y = _embed(net.decoder.embed, tgt_in, tgt_index)
    for layer in net.decoder.layers:
        y = _sublayer(
            layer.self_block, y, lambda h, layer=layer: _attention(layer.self_attn, h, tgt_index, (batch, tgt_len), None, True)
        )
        y = _sublayer(
            layer.cross_block,
            y,
            lambda h, layer=layer: _attention(
                layer.cross_attn, h, tgt_index, (batch, tgt_len), keep, False, memory, src_index, src_len
            ),
        )
        y = _sublayer(layer.ffn_block, y, lambda h, layer=layer: _ffn(layer.ffn, h))
    return net.decoder.final_norm(y)


def source_index(src: Tensor, pad_id: int) -> Tensor:
    """Flat positions (N_s,) of the real tokens of ``src`` (B, S); on the host before a GPU copy."""
    return (src.reshape(-1) != pad_id).nonzero().squeeze(1)

