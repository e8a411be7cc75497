"""The encoder-decoder Transformer of Vaswani et al. (2017), written from scratch.

Shapes used in the docstrings:
    B  batch size            S  source length          T  target length
    D  d_model               H  attention heads        Dh head size (D / H)
    V  vocabulary size

Masks: at the public API (the article's ``TransformerEncoder`` / ``TransformerDecoder`` and
:class:`Seq2SeqTransformer`) a mask marks **blocked** positions with ``True`` or any non-zero value,
as PyTorch's ``key_padding_mask`` does, and broadcasts to ``(B, H, Lq, Lk)``: ``(Lq, Lk)``, or
``(B, Lq, Lk)`` (``(B, 1, Lk)`` for key padding). Internally they become the boolean *keep* masks of
``F.scaled_dot_product_attention`` (SDPA, so that PyTorch can pick a fused kernel). Incremental
decoding keeps a :class:`KVCache`: self-attention keys and values grow by one position per step;
cross-attention keys and values are computed once per source.

Two layouts, one definition per layer: :class:`Padded` (``(B, L, D)``, every position) or
:class:`Packed` (``(N, D)``, the ``N`` real tokens only). Everything but attention works on each
position alone; attention asks the layout to place queries, keys and values in the ``(B, H, L, Dh)``
form SDPA needs and to take its output back. Training runs packed (no FLOPs on padding, see
:meth:`Seq2SeqTransformer.target_states`), decoding and inspection run padded.

Output heads: :class:`VocabularyHead` (tied to the target embedding by default) or :class:`CopyHead`
(pointer-generator, See et al. 2017). Both have the same interface (``scores``, ``log_probs``,
``loss``), so neither the loss nor the searches know which one a model has.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seq2seq.errors import ConfigError
from seq2seq.models.loss import fused_linear_label_smoothed_ce, label_smoothed_nll

ACTIVATIONS = ("relu", "gelu", "swish")


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
    activation: str = "relu"  # "relu" (the paper), "gelu" or "swish" (x * sigmoid(x): Marian's, OPUS-MT's)
    max_positions: int = 1024
    pre_norm: bool = False  # the paper is post-LN; pre-LN trains more stably without warmup tuning
    share_embeddings: bool = True  # one embedding table for source and target (needs a joint vocabulary)
    tie_output: bool = True  # output projection shares the target embedding matrix
    output_bias: bool = False  # a learned bias on the output logits (Marian's; the paper has none)
    # Copy attention (pointer-generator, See et al. 2017): the output distribution mixes the
    # vocabulary softmax with the last decoder layer's cross-attention (heads averaged) scattered onto
    # the source token ids, weighted by a learned gate. For summarization, where outputs reuse
    # source words (names); needs a joint vocabulary (source ids are target ids).
    copy_attention: bool = False
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3

    def __post_init__(self) -> None:
        """Raise :class:`~seq2seq.errors.ConfigError`, naming the ``model.*`` keys and the values that
        would do, for settings no network can be built from."""
        for name in ("d_model", "num_heads", "num_encoder_layers", "num_decoder_layers", "d_ff", "max_positions"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"model.{name}={value!r}: use a whole number of at least 1")
        if self.d_model % self.num_heads:
            divisors = [n for n in range(1, self.d_model + 1) if self.d_model % n == 0 and n <= 64]
            step = self.num_heads * (1 + self.num_heads % 2)  # d_model must also be even
            raise ConfigError(
                f"model.num_heads={self.num_heads} does not divide model.d_model={self.d_model} (each head gets "
                f"d_model / num_heads dimensions): use num_heads in {divisors}, or a d_model that "
                f"{self.num_heads} divides (e.g. {step * max(1, round(self.d_model / step))})"
            )
        if self.d_model % 2:
            raise ConfigError(f"model.d_model={self.d_model} must be even (the sinusoidal position table "
                              f"pairs a sine and a cosine per frequency): use {self.d_model + 1} or {self.d_model - 1}")
        if self.max_positions < 2:
            raise ConfigError(f"model.max_positions={self.max_positions}: use at least 2 (a token and EOS)")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ConfigError(f"model.{name}={value!r}: use a probability in [0, 1), e.g. 0.1")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={self.activation!r}: use one of {', '.join(ACTIVATIONS)}")
        for name in ("share_embeddings", "copy_attention"):
            if getattr(self, name) and self.src_vocab_size != self.tgt_vocab_size:
                raise ConfigError(f"model.{name}=true needs one vocabulary for both sides (src_vocab_size == "
                                  f"tgt_vocab_size): set data.joint_vocab=true or model.{name}=false")

    def settings_outside(self, mapped: Mapping[str, tuple | None]) -> list[tuple[str, Any, tuple]]:
        """``(field, value, allowed values)`` of every setting a consumer (an export) cannot represent:
        ``mapped[field]`` lists the values it maps (None: any); a field it does not name must keep its
        default, so a model variant added later is refused until the consumer maps it."""
        defaults = TransformerConfig()
        outside = []
        for f in fields(self):
            value, allowed = getattr(self, f.name), mapped.get(f.name, (getattr(defaults, f.name),))
            if allowed is not None and value not in allowed:
                outside.append((f.name, value, allowed))
        return outside

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        """Check the ``model`` config group before any data is read: unknown keys and impossible shapes
        raise :class:`~seq2seq.errors.ConfigError`. The vocabulary sizes and special ids come from the
        tokenizer later, so they are left out here."""
        settings = dict(settings)
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"model.{unknown[0]} is not a model setting (the model group holds TransformerConfig "
                "fields only; compile, unpad and loss_chunk_tokens are speed.* settings)"
            )
        cls(**{**settings, "src_vocab_size": 1, "tgt_vocab_size": 1})


def blocked_to_keep(mask: Tensor | None) -> Tensor | None:
    """Turn a "non-zero = blocked" mask into SDPA's boolean keep-mask, broadcastable to (B, H, Lq, Lk)."""
    if mask is None:
        return None
    keep = mask == 0
    if keep.dim() == 3:  # (B, Lq, Lk) -> (B, 1, Lq, Lk)
        return keep.unsqueeze(1)
    if keep.dim() in (2, 4):  # (Lq, Lk) or (B, H, Lq, Lk)
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


class Padded:
    """Layout of every position of ``(B, L)`` token rows: activations are (B, L, D)."""

    def __init__(self, batch: int, length: int):
        self.batch, self.length = batch, length

    def tokens(self, ids: Tensor) -> Tensor:
        return ids

    def positions(self, table: Tensor, offset: int) -> Tensor:
        """Position vectors (L, D) from ``offset`` on."""
        return table[offset : offset + self.length]

    def heads(self, x: Tensor, parts: int, num_heads: int) -> tuple[Tensor, ...]:
        """Projections (B, L, parts * D) -> ``parts`` tensors (B, H, L, Dh)."""
        b, n, _ = x.shape
        return tuple(t.transpose(1, 2) for t in x.view(b, n, parts, num_heads, -1).unbind(2))

    def merge(self, out: Tensor) -> Tensor:
        """Attention output (B, H, L, Dh) -> (B, L, D)."""
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)

    def rows(self, t: Tensor) -> Tensor:
        """A per-position tensor (B, L, ...) as this layout's rows."""
        return t


class Packed(Padded):
    """Layout of the real tokens of ``(B, L)`` rows only: activations are (N, D), row ``i`` being flat
    position ``index[i]`` of the rows. Padding must be on the right of each row (as ``collate`` pads)."""

    def __init__(self, index: Tensor, batch: int, length: int):
        super().__init__(batch, length)
        self.index = index

    def tokens(self, ids: Tensor) -> Tensor:
        return ids.reshape(-1).index_select(0, self.index)

    def positions(self, table: Tensor, offset: int) -> Tensor:
        return table.index_select(0, self.index % self.length)

    def heads(self, x: Tensor, parts: int, num_heads: int) -> tuple[Tensor, ...]:
        """Projections (N, parts * D), scattered into zeros at their positions -> (B, H, L, Dh) each."""
        full = x.new_zeros(self.batch * self.length, x.size(-1)).index_copy(0, self.index, x)
        return super().heads(full.view(self.batch, self.length, -1), parts, num_heads)

    def merge(self, out: Tensor) -> Tensor:
        return super().merge(out).reshape(self.batch * self.length, -1).index_select(0, self.index)

    def rows(self, t: Tensor) -> Tensor:
        return t.reshape(self.batch * self.length, *t.shape[2:]).index_select(0, self.index)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPUs; elsewhere (and under ``torch.compile``) ``F.dropout``.

    CPU random numbers come from one serial Mersenne Twister, one 32-bit draw per float that
    ``bernoulli_`` or ``rand_like`` fills. Here every 64-bit draw gives four 16-bit integers, and an
    element is dropped when its integer is among the lowest ``round(p * 65536)``: the drop rate is
    ``p`` rounded to a multiple of 1/65536 (0.1 -> 0.100006), and kept elements are scaled by the
    inverse of the exact keep rate, so the expectation is unchanged.
    """

    LEVELS = 1 << 16

    def forward(self, x: Tensor) -> Tensor:
        p = self.p
        if not self.training or p == 0.0:
            return x
        dropped = round(p * self.LEVELS)
        if x.device.type != "cpu" or not 0 < dropped < self.LEVELS or torch.compiler.is_compiling():
            return F.dropout(x, p, training=True)
        n = x.numel()
        bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
        keep = bits.view(torch.int16)[:n].view(x.shape) >= dropped - self.LEVELS // 2
        return x.mul(keep).mul_(self.LEVELS / (self.LEVELS - dropped))


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
        self.dropout = Dropout(dropout)

    def forward(self, tokens: Tensor, offset: int = 0, layout: Padded | None = None) -> Tensor:
        """tokens (B, L) -> (B, L, D), or (N, D) in a :class:`Packed` layout; ``offset`` is the
        position of the first token (incremental decoding)."""
        length = tokens.size(1)
        if offset + length > self.positions.size(0):
            raise ValueError(
                f"sequence of length {offset + length} exceeds max_positions={self.positions.size(0)}"
            )
        layout = layout or Padded(tokens.size(0), length)
        x = self.tokens(layout.tokens(tokens)) * self.scale + layout.positions(self.positions, offset)
        return self.dropout(x)


class KVCache:
    """Keys and values kept between decoding steps, one entry per decoder layer. Self-attention
    buffers grow by doubling, so that a step writes one position instead of concatenating."""

    def __init__(self, num_layers: int):
        self.self_k: list[Tensor | None] = [None] * num_layers
        self.self_v: list[Tensor | None] = [None] * num_layers
        self.cross_k: list[Tensor | None] = [None] * num_layers
        self.cross_v: list[Tensor | None] = [None] * num_layers
        self.length = 0  # positions already written to the self-attention buffers

    def select(self, index: Tensor, self_only: bool = False) -> None:
        """Keep batch rows ``index`` (B') in that order (beam reordering, dropping finished rows);
        ``self_only``: the self-attention buffers only, when every row keeps its source."""
        for store in (self.self_k, self.self_v):
            for i, t in enumerate(store):
                if t is not None:
                    # Only the filled positions are copied (beam search reorders at every step);
                    # the new buffer keeps the old one's capacity for the steps to come.
                    kept = t.new_empty(index.numel(), *t.shape[1:])
                    torch.index_select(t[:, :, : self.length], 0, index, out=kept[:, :, : self.length])
                    store[i] = kept
        if self_only:
            return
        for store in (self.cross_k, self.cross_v):
            for i, t in enumerate(store):
                if t is not None:
                    store[i] = t.index_select(0, index)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (B, H, L, Dh) at the cache's current length; return the filled prefix."""
        start, end = self.length, self.length + k.size(2)
        buf_k, buf_v = self.self_k[layer], self.self_v[layer]
        if buf_k is None or buf_k.size(2) < end or buf_k.size(0) != k.size(0):
            capacity = max(end, 2 * (buf_k.size(2) if buf_k is not None else 16))
            new_k = k.new_empty(k.size(0), k.size(1), capacity, k.size(3))
            new_v = torch.empty_like(new_k)
            if buf_k is not None and start > 0:
                new_k[:, :, :start] = buf_k[:, :, :start]
                new_v[:, :, :start] = buf_v[:, :, :start]
            buf_k, buf_v = new_k, new_v
            self.self_k[layer], self.self_v[layer] = buf_k, buf_v
        buf_k[:, :, start:end] = k
        buf_v[:, :, start:end] = v
        return buf_k[:, :, :end], buf_v[:, :, :end]


class MultiHeadAttention(nn.Module):
    """Multi-head attention over SDPA; self-attention uses one fused QKV projection."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, cross: bool):
        super().__init__()
        self.num_heads = num_heads
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: Tensor, layout: Padded, memory: Tensor | None = None, memory_layout: Padded | None = None,
                keep_mask: Tensor | None = None, is_causal: bool = False, cache: KVCache | None = None,
                layer: int = 0, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attend from ``x`` (rows of ``layout``) to itself or to ``memory`` (rows of ``memory_layout``).

        ``keep_mask`` is a boolean keep-mask broadcastable to (B, H, Lq, Lk). With a ``cache``,
        self-attention appends this step's keys/values at ``cache.length`` and attends to all
        positions so far; cross-attention projects ``memory`` once and reuses it.
        Returns the output (rows of ``layout``) and, if ``need_weights``, the weights (B, H, Lq, Lk).
        """
        if self.cross:
            (q,) = layout.heads(self.q_proj(x), 1, self.num_heads)
            if cache is not None and cache.cross_k[layer] is not None:
                k, v = cache.cross_k[layer], cache.cross_v[layer]
            else:  # memory (B, S, D) -> keys and values (B, H, S, Dh)
                memory_layout = memory_layout or Padded(memory.size(0), memory.size(1))
                k, v = memory_layout.heads(self.kv_proj(memory), 2, self.num_heads)
                if cache is not None:
                    cache.cross_k[layer], cache.cross_v[layer] = k, v
        else:
            q, k, v = layout.heads(self.qkv_proj(x), 3, self.num_heads)
            if cache is not None:
                k, v = cache.append(layer, k, v)
                # A cached step's query sits at the end, so it may see every cached position.
                is_causal = is_causal and q.size(2) > 1
        weights = None
        if need_weights:
            out, weights = _attention_with_weights(q, k, v, keep_mask, is_causal)
        else:
            dropout = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep_mask, dropout_p=dropout, is_causal=is_causal)
        return self.out_proj(layout.merge(out)), weights


def _attention_with_weights(
    q: Tensor, k: Tensor, v: Tensor, keep_mask: Tensor | None, is_causal: bool
) -> tuple[Tensor, Tensor]:
    """Explicit softmax attention that also returns the weights (inspection and the copy head)."""
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
        self.act = {"relu": F.relu, "gelu": F.gelu, "swish": F.silu}[activation]
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        return self.fc2(self.dropout(self.act(self.fc1(x)))), None


class Sublayer(nn.Module):
    """Residual wrapper: pre-LN ``x + f(LN(x))`` or post-LN ``LN(x + f(x))``; ``f`` returns (out, weights)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, fn) -> tuple[Tensor, Tensor | None]:
        if self.pre_norm:
            out, weights = fn(self.norm(x))
            return x + self.dropout(out), weights
        out, weights = fn(x)
        return self.norm(x + self.dropout(out)), weights


class EncoderLayer(nn.Module):
    """Self-attention then feed-forward, each in a residual sublayer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout, cross=False)
        self.ffn = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout, cfg.activation)
        self.attn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)
        self.ffn_block = Sublayer(cfg.d_model, cfg.dropout, cfg.pre_norm)

    def forward(self, x: Tensor, keep_mask: Tensor | None, layout: Padded, need_weights: bool = False):
        """x (rows of ``layout``) -> the same shape, self-attention weights (B, H, S, S) or None."""
        x, weights = self.attn_block(x, lambda h: self.self_attn(h, layout, keep_mask=keep_mask, need_weights=need_weights))
        x, _ = self.ffn_block(x, self.ffn)
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

    def forward(self, x, memory, self_keep, memory_keep, is_causal, layout, memory_layout, cache, layer, need_weights):
        """x (rows of ``layout``), memory (rows of ``memory_layout``) -> x, (self weights, cross weights)."""
        x, self_w = self.self_block(x, lambda h: self.self_attn(
            h, layout, keep_mask=self_keep, is_causal=is_causal, cache=cache, layer=layer, need_weights=need_weights))
        x, cross_w = self.cross_block(x, lambda h: self.cross_attn(
            h, layout, memory, memory_layout, memory_keep, cache=cache, layer=layer, need_weights=need_weights))
        x, _ = self.ffn_block(x, self.ffn)
        return x, (self_w, cross_w)


class VocabularyHead(nn.Linear):
    """Final decoder states (..., D) -> the target vocabulary (..., V), with a bias only when
    ``output_bias`` (initialized to 0); its weight is the target embedding matrix when ``tie_output``.
    ``attention``/``source`` are unused (see :class:`CopyHead`)."""

    needs_attention = False

    def __init__(self, cfg: TransformerConfig, embedding: Embedding):
        super().__init__(cfg.d_model, cfg.tgt_vocab_size, bias=cfg.output_bias)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if cfg.tie_output:
            self.weight = embedding.tokens.weight
        else:
            nn.init.normal_(self.weight, std=cfg.d_model**-0.5)
        self.projection: nn.Module | None = None  # an int8 or packed copy for inference (inference.quantize)

    def scores(self, hidden: Tensor, attention: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        """Unnormalized scores whose softmax is the output distribution: here the logits (..., V),
        through the inference copy when there is one."""
        return self(hidden) if self.projection is None else self.projection(hidden)

    def log_probs(self, hidden: Tensor, attention: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        """Log-probabilities in float32."""
        return self.scores(hidden, attention, source).float().log_softmax(dim=-1)

    def loss(self, hidden, target, label_smoothing=0.0, attention=None, source=None, fused=None, chunk=None):
        """Summed (smoothed, nll) over the rows of ``hidden`` (N, D) against ``target`` (N,).

        ``fused`` (default: when gradients are needed) projects chunk by chunk and never keeps the
        (N, V) logits (:func:`~seq2seq.models.loss.fused_linear_label_smoothed_ce`).
        """
        if fused is None:
            fused = torch.is_grad_enabled() and hidden.requires_grad
        if fused:
            return fused_linear_label_smoothed_ce(hidden, self.weight, target, label_smoothing, chunk, bias=self.bias)
        return label_smoothed_nll(self(hidden), target, label_smoothing)


class CopyHead(VocabularyHead):
    """Pointer-generator output: ``p = g * softmax(logits) + (1 - g) * copy`` with ``g =
    sigmoid(gate(hidden))`` and ``copy`` the last layer's cross-attention (heads averaged), ``attention``
    (..., S), put on the vocabulary ids ``source`` (..., S) of the source tokens (a word appearing twice
    gets both weights; padded positions get none). Needs a joint vocabulary."""

    needs_attention = True

    def __init__(self, cfg: TransformerConfig, embedding: Embedding):
        super().__init__(cfg, embedding)
        self.gate = nn.Linear(cfg.d_model, 1)  # P(generate from the vocabulary)

    def scores(self, hidden: Tensor, attention: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        """Log-probabilities (float32) of the mixed distribution: their softmax is the distribution itself."""
        logits = super().scores(hidden).float()
        gate = torch.sigmoid(self.gate(hidden).float())
        attention = attention.float()
        copy = torch.zeros_like(logits).scatter_add_(-1, source.expand_as(attention), attention)
        probs = gate * logits.softmax(dim=-1) + (1.0 - gate) * copy
        # The vocabulary softmax never reaches exactly 0 in float32 but can underflow; keep log finite.
        return probs.clamp_min(1e-30).log()

    log_probs = scores

    def loss(self, hidden, target, label_smoothing=0.0, attention=None, source=None, fused=None, chunk=None):
        # Normalized already: logsumexp is 0, so this is -log p and the smoothing term -mean(log p).
        return label_smoothed_nll(self.scores(hidden, attention, source), target, label_smoothing)


class _Stack(nn.Module):
    """What the encoder and decoder stacks share: built either like the article,
    ``Stack(vocab_size, d_model, num_layers, num_heads, d_ff, dropout, max_sequence_length=...)``,
    or from a config, ``Stack(config=cfg)``; embeddings, ``num_layers`` layers, (pre-LN) a final
    LayerNorm. ``states`` returns what the rest of the project needs; ``forward`` is the article's."""

    def __init__(self, vocab_size: int | None = None, d_model: int = 512, num_layers: int = 6, num_heads: int = 8,
                 d_ff: int = 2048, dropout: float = 0.1, max_sequence_length: int = 1024, *,
                 config: TransformerConfig | None = None, embedding: Embedding | None = None):
        super().__init__()
        if config is None:
            if vocab_size is None:
                raise TypeError("a stack needs vocab_size (the article's constructor) or config=")
            config = TransformerConfig(
                src_vocab_size=vocab_size, tgt_vocab_size=vocab_size, d_model=d_model, num_heads=num_heads,
                num_encoder_layers=num_layers, num_decoder_layers=num_layers, d_ff=d_ff, dropout=dropout,
                max_positions=max_sequence_length,
            )
        cfg = self.config = config
        encoder = isinstance(self, TransformerEncoder)
        vocab = cfg.src_vocab_size if encoder else cfg.tgt_vocab_size
        self.embed = embedding or Embedding(vocab, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        layer, count = (EncoderLayer, cfg.num_encoder_layers) if encoder else (DecoderLayer, cfg.num_decoder_layers)
        self.layers = nn.ModuleList(layer(cfg) for _ in range(count))
        self.final_norm = nn.LayerNorm(cfg.d_model) if cfg.pre_norm else nn.Identity()


class TransformerEncoder(_Stack):
    """The encoder stack (see :class:`_Stack` for the constructors)."""

    def states(self, tokens: Tensor, padding_mask: Tensor | None = None, layout: Padded | None = None,
               need_weights: bool = False) -> tuple[Tensor, list[Tensor | None]]:
        """Encode ``tokens`` (B, S): ``(hidden states (B, S, D) or rows of ``layout``, the self-attention
        weights (B, H, S, S) of every layer when ``need_weights``, else Nones)``.

        ``padding_mask``: non-zero = blocked, broadcastable to (B, H, S, S) (see the module docstring;
        ``(B, 1, S)`` blocks padded keys).
        """
        keep = blocked_to_keep(padding_mask)
        layout = layout or Padded(*tokens.shape)
        x = self.embed(tokens, layout=layout)
        all_weights = []
        for layer in self.layers:
            x, weights = layer(x, keep, layout, need_weights)
            all_weights.append(weights)
        return self.final_norm(x), all_weights

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None, layout: Padded | None = None) -> Tensor:
        """Hidden states (B, S, D) of ``tokens`` (B, S) (see :meth:`states`)."""
        return self.states(tokens, padding_mask, layout)[0]


class TransformerDecoder(_Stack):
    """The decoder stack and its output head (``self.output``: :class:`VocabularyHead`, or
    :class:`CopyHead` with ``copy_attention``).

    ``forward(tokens, self_attn_mask, memory, memory_mask)`` follows the article's call order and
    returns logits. ``self_attn_mask=None`` means the usual causal mask (computed by SDPA, never materialized).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        head = CopyHead if self.config.copy_attention else VocabularyHead
        self.output = head(self.config, self.embed)

    def new_cache(self) -> KVCache:
        return KVCache(len(self.layers))

    def project(self, hidden: Tensor) -> Tensor:
        """Decoder states (..., D) -> vocabulary logits (..., V) (before any copy mixing)."""
        return self.output(hidden)

    def states(self, tokens: Tensor, memory: Tensor | None, memory_mask: Tensor | None, *,
               self_attn_mask: Tensor | None = None, layout: Padded | None = None, memory_layout: Padded | None = None,
               cache: KVCache | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None, dict[str, list]]:
        """Run the stack: ``(hidden, attention, weights)``.

        ``hidden``: final states, rows of ``layout`` ((B, T, D) by default). ``attention``: the last
        layer's cross-attention averaged over heads, rows of ``layout`` with S columns, when the
        head needs it (else None). ``weights``: ``{"self": [...], "cross": [...]}`` per layer when
        ``need_weights`` (Nones otherwise). With a ``cache``, ``tokens`` are the new positions only
        and the cache advances; ``memory`` may then be None after the first step.
        """
        offset = cache.length if cache is not None else 0
        is_causal = self_attn_mask is None
        self_keep, memory_keep = blocked_to_keep(self_attn_mask), blocked_to_keep(memory_mask)
        layout = layout or Padded(*tokens.shape)
        if memory_layout is None and memory is not None:
            memory_layout = Padded(memory.size(0), memory.size(1))
        x = self.embed(tokens, offset, layout)
        weights = {"self": [], "cross": []}
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            want = need_weights or (self.output.needs_attention and i == last)
            x, (self_w, cross_w) = layer(x, memory, self_keep, memory_keep, is_causal, layout, memory_layout, cache, i, want)
            weights["self"].append(self_w)
            weights["cross"].append(cross_w)
        if cache is not None:
            cache.length += tokens.size(1)
        attention = layout.rows(weights["cross"][-1].mean(dim=1)) if self.output.needs_attention else None
        return self.final_norm(x), attention, weights

    def forward(self, tokens: Tensor, self_attn_mask: Tensor | None, memory: Tensor | None,
                memory_mask: Tensor | None = None, *, source: Tensor | None = None) -> Tensor:
        """Decode ``tokens`` (B, T) attending to ``memory`` (B, S, D); returns scores (B, T, V).

        Masks are non-zero = blocked: ``self_attn_mask`` broadcastable to (B, H, T, T) (``None`` =
        causal), ``memory_mask`` to (B, H, T, S) (``(B, 1, S)`` blocks padded source positions).
        ``source`` (B, S): the source ids, which a :class:`CopyHead` copies from. The states and
        attention weights themselves: :meth:`states`.
        """
        hidden, attention, _ = self.states(tokens, memory, memory_mask, self_attn_mask=self_attn_mask)
        return self.output.scores(hidden, attention, source.unsqueeze(1) if source is not None else None)


class Seq2SeqTransformer(nn.Module):
    """Encoder + decoder, as trained and decoded by the rest of the project.

    Source padding (``src == pad_id``) blocks encoder self-attention keys and decoder
    cross-attention keys; decoder self-attention is causal. Training uses teacher forcing:
    ``forward(src, tgt_in)`` with ``tgt_in`` = BOS + target (without its EOS).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        src_embed = tgt_embed = Embedding(cfg.src_vocab_size, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        if not cfg.share_embeddings:
            tgt_embed = Embedding(cfg.tgt_vocab_size, cfg.d_model, cfg.max_positions, cfg.dropout, cfg.pad_id)
        self.encoder = TransformerEncoder(config=cfg, embedding=src_embed)
        self.decoder = TransformerDecoder(config=cfg, embedding=tgt_embed)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "embed" not in name and p is not self.decoder.output.weight:
                nn.init.xavier_uniform_(p)

    @property
    def head(self) -> VocabularyHead:
        return self.decoder.output

    def source_padding_mask(self, src: Tensor) -> Tensor:
        """(B, S) tokens -> (B, 1, S) mask, True at padded positions (blocked)."""
        return (src == self.config.pad_id).unsqueeze(1)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> encoder states (B, S, D) and the source padding mask (B, 1, S)."""
        mask = self.source_padding_mask(src)
        return self.encoder(src, mask), mask

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: src (B, S), tgt_in (B, T) -> scores (B, T, V) whose softmax is the output
        distribution (the logits, or with a :class:`CopyHead` the mixture's log-probabilities)."""
        memory, mask = self.encode(src)
        return self.decoder(tgt_in, None, memory, mask, source=src)

    def target_states(
        self, src: Tensor, tgt_in: Tensor, tgt_index: Tensor, src_index: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Teacher-forced final states at the flat target positions ``tgt_index`` (N,) of ``tgt_in``
        (B, T): ``(hidden (N, D), attention (N, S) or None, source ids (N, S) or None)``, what the
        head's ``loss`` takes.

        With ``src_index`` (flat positions of the real source tokens) every layer runs on real tokens
        only (:class:`Packed` layouts): no compute is spent on padding, and the states equal the
        padded pass's at real positions. Targets must then be right-padded, ``tgt_index`` a prefix
        of every row. Without it the pass runs padded and the rows are picked afterwards.
        """
        (batch, src_len), tgt_len = src.shape, tgt_in.size(1)
        mask = self.source_padding_mask(src)
        if src_index is None:
            layout = Packed(tgt_index, batch, tgt_len)  # only its rows() is used: picks real positions
            memory = self.encoder(src, mask)
            hidden, attention, _ = self.decoder.states(tgt_in, memory, mask)
            hidden = layout.rows(hidden)
            attention = layout.rows(attention) if attention is not None else None
        else:
            src_layout, layout = Packed(src_index, batch, src_len), Packed(tgt_index, batch, tgt_len)
            memory = self.encoder(src, mask, layout=src_layout)
            hidden, attention, _ = self.decoder.states(tgt_in, memory, mask, layout=layout, memory_layout=src_layout)
        source = layout.rows(src.unsqueeze(1).expand(batch, tgt_len, src_len)) if attention is not None else None
        return hidden, attention, source

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
        memory, encoder_weights = self.encoder.states(src, mask, need_weights=True)
        hidden, attention, weights = self.decoder.states(tgt_in, memory, mask, need_weights=True)
        logits = self.head.scores(hidden, attention, src.unsqueeze(1))
        return {"logits": logits, "encoder": encoder_weights, "decoder": weights["self"], "cross": weights["cross"]}

    def num_parameters(self) -> int:
        """Distinct trainable parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
