"""The encoder-decoder Transformer of Vaswani et al. (2017), written from scratch.

Shapes used in the docstrings:
    B  batch size            S  source length          T  target length
    D  d_model               H  attention heads        Dh head size (D / H)
    V  vocabulary size

Masks: at this module's public API (the article's ``TransformerEncoder`` / ``TransformerDecoder``
and :class:`Seq2SeqTransformer`) a mask marks **blocked** positions with ``True`` or any non-zero
value, as in the article the project grew from and in PyTorch's ``key_padding_mask``. A mask
broadcasts to ``(B, H, Lq, Lk)``: a 2-D mask is ``(Lq, Lk)`` for every sequence, a 3-D mask
``(B, Lq, Lk)`` (use ``(B, 1, Lk)`` for key padding). Internally masks are turned once into the
boolean *keep* masks that :func:`torch.nn.functional.scaled_dot_product_attention` expects.

Attention goes through ``F.scaled_dot_product_attention`` so that PyTorch can pick a fused kernel.
Incremental decoding keeps a :class:`KVCache`: decoder self-attention keys and values grow by one
position per step; cross-attention keys and values are computed once per source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TransformerConfig:
    """Hyper-parameters of :class:`Seq2SeqTransformer` (the ``model`` config group)."""

    src_vocab_size: int = 8000
    tgt_vocab_size: int = 8000
    d_model: int = 512
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"  # "relu" (the paper) or "gelu"
    max_positions: int = 1024
    pre_norm: bool = False  # the paper is post-LN; pre-LN trains more stably without warmup tuning
    share_embeddings: bool = True  # one embedding table for source and target (needs a joint vocabulary)
    tie_output: bool = True  # output projection shares the target embedding matrix
    # Copy attention (pointer-generator, See et al. 2017): the output distribution mixes the
    # vocabulary softmax with the last decoder layer's cross-attention (heads averaged) scattered onto
    # the source token ids, weighted by a learned gate. For summarization, where outputs reuse
    # source words (names); needs a joint vocabulary (source ids are target ids).
    copy_attention: bool = False
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("share_embeddings needs src_vocab_size == tgt_vocab_size (a joint vocabulary)")
        if self.copy_attention and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError("copy_attention needs src_vocab_size == tgt_vocab_size (a joint vocabulary)")


def blocked_to_keep(mask: Tensor | None) -> Tensor | None:
    """Turn a "non-zero = blocked" mask into SDPA's boolean keep-mask, broadcastable to (B, H, Lq, Lk)."""
    if mask is None:
        return None
    keep = mask == 0
    if keep.dim() == 2:  # (Lq, Lk)
        return keep
    if keep.dim() == 3:  # (B, Lq, Lk) -> (B, 1, Lq, Lk)
        return keep.unsqueeze(1)
    if keep.dim() == 4:
        return keep
    raise ValueError(f"attention mask must have 2, 3 or 4 dimensions, got shape {tuple(mask.shape)}")


def sinusoidal_positions(max_positions: int, d_model: int) -> Tensor:
    """The paper's fixed sinusoidal position table, shape (max_positions, D)."""
    position = torch.arange(max_positions, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_positions, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(D), plus sinusoidal positions, then dropout."""

    def __init__(self, vocab_size: int, d_model: int, max_positions: int, dropout: float, pad_id: int = 0):
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        nn.init.normal_(self.tokens.weight, mean=0.0, std=d_model**-0.5)
        with torch.no_grad():
            self.tokens.weight[pad_id].zero_()
        self.register_buffer("positions", sinusoidal_positions(max_positions, d_model), persistent=False)
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        """tokens (B, L) -> (B, L, D); ``offset`` is the position of the first token (incremental decoding)."""
        length = tokens.size(1)
        if offset + length > self.positions.size(0):
            raise ValueError(
                f"sequence of length {offset + length} exceeds max_positions={self.positions.size(0)}"
            )
        x = self.tokens(tokens) * self.scale + self.positions[offset : offset + length]
        return self.dropout(x)


class KVCache:
    """Keys and values kept between decoding steps, one entry per decoder layer.

    Self-attention buffers are preallocated to ``max_length`` so that a step writes one position
    instead of concatenating. :meth:`select` keeps or reorders batch rows (beam search reordering,
    dropping finished sequences).
    """

    def __init__(self, num_layers: int):
        self.self_k: list[Tensor | None] = [None] * num_layers
        self.self_v: list[Tensor | None] = [None] * num_layers
        self.cross_k: list[Tensor | None] = [None] * num_layers
        self.cross_v: list[Tensor | None] = [None] * num_layers
        self.length = 0  # positions already written to the self-attention buffers

    def select(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (B') in that order, for every layer's buffers."""
        for store in (self.self_k, self.self_v, self.cross_k, self.cross_v):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t.index_select(0, index)


class MultiHeadAttention(nn.Module):
    """Multi-head attention over SDPA; self-attention uses one fused QKV projection."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, cross: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def _heads(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, H, L, Dh)."""
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output: (B, S, D) -> 2 x (B, H, S, Dh)."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        keep_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attend from ``x`` (B, Lq, D) to itself or to ``memory`` (B, S, D).

        ``keep_mask`` is a boolean keep-mask broadcastable to (B, H, Lq, Lk). With a ``cache``,
        self-attention appends this step's keys/values at ``cache.length`` and attends to all
        positions so far; cross-attention projects ``memory`` once and reuses it.
        Returns the output (B, Lq, D) and, if ``need_weights``, the weights (B, H, Lq, Lk).
        """
        if self.cross:
            q = self._heads(self.q_proj(x))
            if cache is not None and cache.cross_k[layer] is not None:
                k, v = cache.cross_k[layer], cache.cross_v[layer]
            else:
                k, v = self.project_memory(memory)
                if cache is not None:
                    cache.cross_k[layer], cache.cross_v[layer] = k, v
        else:
            q, k, v = (self._heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if cache is not None:
                k, v = self._append(cache, layer, k, v)
                # A cached step's query sits at the end, so it may see every cached position.
                is_causal = is_causal and q.size(2) > 1
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            out, weights = _attention_with_weights(q, k, v, keep_mask, is_causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep_mask, dropout_p=dropout, is_causal=is_causal)
        b, _, n, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1)), weights

    @staticmethod
    def _append(cache: KVCache, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, L, Dh) at the cache's current length; return the filled prefix."""
        start, end = cache.length, cache.length + k.size(2)
        buf_k, buf_v = cache.self_k[layer], cache.self_v[layer]
        if buf_k is None or buf_k.size(2) < end or buf_k.size(0) != k.size(0):
            capacity = max(end, 2 * (buf_k.size(2) if buf_k is not None else 16))
            new_k = k.new_empty(k.size(0), k.size(1), capacity, k.size(3))
            new_v = torch.empty_like(new_k)
            if buf_k is not None and start > 0:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            buf_k, buf_v = new_k, new_v
            cache.self_k[layer], cache.self_v[layer] = buf_k, buf_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        return buf_k[:, :, :end], buf_v[:, :, :end]


def _attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, keep_mask: Tensor | None, is_causal: bool
) -> tuple[Tensor, Tensor]:
    """Explicit softmax attention that also returns the weights (for inspection, not training)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if is_causal:
        lq, lk = scores.shape[-2:]
        causal = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(diagonal=lk - lq)
        scores = scores.masked_fill(~causal, float("-inf"))
    if keep_mask is not None:
        scores = scores.masked_fill(~keep_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear(D, d_ff) -> activation -> dropout -> Linear(d_ff, D)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float, activation: str = "relu"):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)
        self.act = {"relu": F.relu, "gelu": F.gelu}[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class Sublayer(nn.Module):
    """Residual wrapper: pre-LN ``x + f(LN(x))`` or post-LN ``LN(x + f(x))``."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, fn) -> tuple[Tensor, Tensor | None]:
        if self.pre_norm:
            out, weights = fn(self.norm(x))
            return x + self.dropout(out), weights
        out, weights = fn(x)
        return self.norm(x + self.dropout(out)), weights


def _plain(module):
    """Adapt a module returning a tensor to the (output, weights) shape Sublayer expects."""
    return lambda x: (module(x), None)


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual sublayer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout, cross=False)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        self.attn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, keep_mask: Tensor | None, need_weights: bool = False):
        """x (B, S, D) -> (B, S, D), self-attention weights (B, H, S, S) or None."""
        x, weights = self.attn_block(x, lambda h: self.self_attn(h, keep_mask=keep_mask, need_weights=need_weights))
        x, _ = self.ffn_block(x, _plain(self.ffn))
        return x, weights


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention over the encoder output, feed-forward."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout, cross=False)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout, cross=True)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        self.self_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.cross_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None,
        self_keep: Tensor | None,
        memory_keep: Tensor | None,
        is_causal: bool,
        cache: KVCache | None = None,
        layer: int = 0,
        need_weights: bool = False,
    ):
        """x (B, T, D), memory (B, S, D) -> (B, T, D), (self weights, cross weights) or Nones."""
        x, self_w = self.self_block(
            x,
            lambda h: self.self_attn(
                h, keep_mask=self_keep, is_causal=is_causal, cache=cache, layer=layer, need_weights=need_weights
            ),
        )
        x, cross_w = self.cross_block(
            x,
            lambda h: self.cross_attn(
                h, memory, keep_mask=memory_keep, cache=cache, layer=layer, need_weights=need_weights
            ),
        )
        x, _ = self.ffn_block(x, _plain(self.ffn))
        return x, (self_w, cross_w)


def _config_from_args(vocab_size, d_model, num_layers, num_heads, d_ff, dropout, max_sequence_length, **kw):
    return TransformerConfig(
        src_vocab_size=vocab_size,
        tgt_vocab_size=vocab_size,
        d_model=d_model,
        num_heads=num_heads,
        num_encoder_layers=num_layers,
        num_decoder_layers=num_layers,
        d_ff=d_ff,
        dropout=dropout,
        max_positions=max_sequence_length,
        **kw,
    )


class TransformerEncoder(nn.Module):
    """The encoder stack: embeddings, ``num_layers`` encoder layers, (pre-LN) a final LayerNorm.

    Built either like the article, ``TransformerEncoder(vocab_size, d_model, num_layers, num_heads,
    d_ff, dropout, max_sequence_length=...)``, or from a config: ``TransformerEncoder.from_config(cfg)``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        dropout: float,
        max_sequence_length: int = 1024,
        *,
        config: TransformerConfig | None = None,
        embedding: Embedding | None = None,
    ):
        super().__init__()
        cfg = config or _config_from_args(
            vocab_size, d_model, num_layers, num_heads, d_ff, dropout, max_sequence_length
        )
        self.config = cfg
        self.embed = embedding or Embedding(cfg.src_vocab_size, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()

    @classmethod
    def from_config(cls, cfg: TransformerConfig, embedding: Embedding | None = None) -> TransformerEncoder:
        return cls(0, 0, 0, 0, 0, 0.0, config=cfg, embedding=embedding)

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None, need_weights: bool = False):
        """Encode ``tokens`` (B, S) into hidden states (B, S, D).

        ``padding_mask``: non-zero = blocked, broadcastable to (B, H, S, S) (see the module docstring;
        ``(B, 1, S)`` blocks padded keys). With ``need_weights`` returns ``(states, [weights per layer])``.
        """
        keep = blocked_to_keep(padding_mask)
        x = self.embed(tokens)
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, keep, need_weights)
            all_weights.append(weights)
        x = self.final_norm(x)
        return (x, all_weights) if need_weights else x


class TransformerDecoder(nn.Module):
    """The decoder stack with its output projection to vocabulary logits.

    ``forward(tokens, self_attn_mask, memory, memory_mask)`` follows the article's call order.
    ``self_attn_mask=None`` means the usual causal mask (computed by SDPA, never materialized).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        dropout: float,
        max_sequence_length: int = 1024,
        *,
        config: TransformerConfig | None = None,
        embedding: Embedding | None = None,
    ):
        super().__init__()
        cfg = config or _config_from_args(
            vocab_size, d_model, num_layers, num_heads, d_ff, dropout, max_sequence_length
        )
        self.config = cfg
        self.embed = embedding or Embedding(cfg.tgt_vocab_size, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()
        self.output = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        if cfg.tie_output:
            self.output.weight = self.embed.tokens.weight
        else:
            nn.init.normal_(self.output.weight, std=cfg.d_model**-0.5)

    @classmethod
    def from_config(cls, cfg: TransformerConfig, embedding: Embedding | None = None) -> TransformerDecoder:
        return cls(0, 0, 0, 0, 0, 0.0, config=cfg, embedding=embedding)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    def project(self, hidden: Tensor) -> Tensor:
        """Decoder states (..., D) -> logits (..., V)."""
        return self.output(hidden)

    def forward(
        self,
        tokens: Tensor,
        self_attn_mask: Tensor | None,
        memory: Tensor | None,
        memory_mask: Tensor | None = None,
        *,
        cache: KVCache | None = None,
        return_hidden: bool = False,
        need_weights: bool | str = False,
    ):
        """Decode ``tokens`` (B, T) attending to ``memory`` (B, S, D); returns logits (B, T, V).

        Masks are non-zero = blocked: ``self_attn_mask`` broadcastable to (B, H, T, T) (``None`` =
        causal), ``memory_mask`` to (B, H, T, S) (``(B, 1, S)`` blocks padded source positions).
        With a ``cache``, ``tokens`` are the new positions only (usually T = 1) and the cache is
        advanced; ``memory`` may then be ``None`` after the first step. ``return_hidden`` returns
        the final states (B, T, D) instead of logits (for a chunked loss); ``need_weights`` also
        returns ``{"self": [...], "cross": [...]}`` attention weights per layer (``"last"``: the
        last layer's only, ``None`` elsewhere).
        """
        offset = cache.length if cache is not None else 0
        is_causal = self_attn_mask is None
        self_keep = blocked_to_keep(self_attn_mask)
        memory_keep = blocked_to_keep(memory_mask)
        x = self.embed(tokens, offset)
        weights = {"self": [], "cross": []}
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # need_weights="last": explicit attention in the last layer only (copy attention needs it).
            want = need_weights is True or (need_weights == "last" and i == last)
            x, (self_w, cross_w) = layer(x, memory, self_keep, memory_keep, is_causal, cache, i, want)
            weights["self"].append(self_w)
            weights["cross"].append(cross_w)
        if cache is not None:
            cache.length += tokens.size(1)
        x = self.final_norm(x)
        out = x if return_hidden else self.project(x)
        return (out, weights) if need_weights else out


class Seq2SeqTransformer(nn.Module):
    """Encoder + decoder, as trained and decoded by the rest of the project.

    Source padding (``src == pad_id``) blocks encoder self-attention keys and decoder
    cross-attention keys; decoder self-attention is causal. Training uses teacher forcing:
    ``forward(src, tgt_in)`` with ``tgt_in`` = BOS + target (without its EOS).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        src_embed = Embedding(cfg.src_vocab_size, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        tgt_embed = (
            src_embed
            if cfg.share_embeddings
            else Embedding(cfg.tgt_vocab_size, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        )
        self.encoder = TransformerEncoder.from_config(cfg, src_embed)
        self.decoder = TransformerDecoder.from_config(cfg, tgt_embed)
        # P(generate from the vocabulary) per target position, from the decoder's final state.
        self.copy_gate = nn.Linear(cfg.d_model, 1) if cfg.copy_attention else None
        self._init_linear()

    def _init_linear(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name and "output" not in name:
                nn.init.xavier_uniform_(p)

    def source_padding_mask(self, src: Tensor) -> Tensor:
        """(B, S) tokens -> (B, 1, S) mask, True at padded positions (blocked)."""
        return (src == self.config.pad_id).unsqueeze(1)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> encoder states (B, S, D) and the source padding mask (B, 1, S)."""
        mask = self.source_padding_mask(src)
        return self.encoder(src, mask), mask

    def decode(
        self,
        tgt_in: Tensor,
        memory: Tensor | None,
        memory_mask: Tensor,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> Tensor:
        """tgt_in (B, T) -> logits (B, T, V) (or hidden states (B, T, D)); see TransformerDecoder."""
        return self.decoder(tgt_in, None, memory, memory_mask, cache=cache, return_hidden=return_hidden)

    def forward(self, src: Tensor, tgt_in: Tensor, return_hidden: bool = False) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) -> logits (B, T, V).

        With ``copy_attention`` the returned scores are log-probabilities of the mixed output
        distribution (see :meth:`output_log_probs`): ``log_softmax`` leaves them unchanged, so
        losses and searches that normalize logits work on them as they are.
        """
        memory, mask = self.encode(src)
        if self.copy_gate is not None and not return_hidden:
            hidden, weights = self.decoder(tgt_in, None, memory, mask, return_hidden=True, need_weights="last")
            return self.output_log_probs(hidden, weights["cross"][-1], src)
        return self.decode(tgt_in, memory, mask, return_hidden=return_hidden)

    def output_log_probs(self, hidden: Tensor, cross: Tensor | None, src: Tensor) -> Tensor:
        """Final states (B, T, D) -> log-probabilities (B, T, V) in float32.

        Without copy attention: ``log_softmax`` of the logits. With it (pointer-generator):
        ``p = g * softmax(logits) + (1 - g) * copy``, where ``g = sigmoid(copy_gate(hidden))`` and
        ``copy`` puts the last layer's cross-attention ``cross`` (B, H, T, S), averaged over heads,
        on the vocabulary ids of the source tokens ``src`` (B, S) (a word appearing twice gets both
        weights; padded positions get none).
        """
        logits = self.decoder.project(hidden).float()
        if self.copy_gate is None:
            return logits.log_softmax(dim=-1)
        gate = torch.sigmoid(self.copy_gate(hidden).float())  # (B, T, 1)
        attn = cross.float().mean(dim=1)  # (B, T, S)
        copy = torch.zeros_like(logits).scatter_add_(2, src.unsqueeze(1).expand(-1, attn.size(1), -1), attn)
        probs = gate * logits.softmax(dim=-1) + (1.0 - gate) * copy
        # The vocabulary softmax never reaches exactly 0 in float32 but can underflow; keep log finite.
        return probs.clamp_min(1e-30).log()

    @torch.no_grad()
    def attention(self, src: Tensor, tgt_in: Tensor) -> dict[str, Any]:
        """Teacher-forced pass that also returns every attention map, for inspection.

        src (B, S), tgt_in (B, T) -> ``{"logits": (B, T, V), "encoder": [...], "decoder": [...],
        "cross": [...]}``, one weight tensor per layer: encoder self-attention (B, H, S, S),
        decoder self-attention (B, H, T, T), cross-attention (B, H, T, S); rows sum to 1 over the
        keys a query may see (padded source keys and future target keys get 0). The weights come
        from an explicit softmax; ``forward`` keeps the fused SDPA kernels and computes none of this.
        """
        mask = self.source_padding_mask(src)
        memory, encoder_weights = self.encoder(src, mask, need_weights=True)
        logits, weights = self.decoder(tgt_in, None, memory, mask, need_weights=True)
        return {"logits": logits, "encoder": encoder_weights, "decoder": weights["self"], "cross": weights["cross"]}

    def num_parameters(self) -> int:
        """Distinct trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
