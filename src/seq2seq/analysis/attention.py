"""Look at what a trained model attends to: attention maps of one sentence, word-level heatmaps.

The command is ``python -m seq2seq.attention ckpt_path=PATH text="A man rides a bike." output=heatmap.png``.
Python::

    from seq2seq.analysis.attention import attention_maps, plot_cross_attention, strongest_sources
    from seq2seq.inference.checkpoint import load_model

    net, tokenizer = load_model("outputs/.../checkpoints/best.ckpt")
    maps = attention_maps(net, tokenizer, "A man rides a bike.")
    fig = plot_cross_attention(maps)           # one panel per decoder layer, mean over heads
    strongest_sources(maps)                    # [(target word, source word it attends to most, weight)]

The translation is decoded first (greedy unless ``decoding`` says otherwise), then run again with
teacher forcing through :meth:`Seq2SeqTransformer.attention`, which returns every layer's and head's
weights (the fast SDPA path is not involved). Subwords are merged into words: a target word's row is
the mean of its pieces' rows, a source word's column the sum of its pieces' columns (the attention
mass it receives), so rows still sum to 1. Figures are built without pyplot, so they work under any
backend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.decoding.search import DecodingConfig
from seq2seq.errors import ConfigError
from seq2seq.inference.predictor import Predictor
from seq2seq.models.transformer import Seq2SeqTransformer

EOS_PIECE = "</s>"
BOS_PIECE = "<s>"


@dataclass
class AttentionMaps:
    """The attention weights of one sentence pair (batch dimension removed).

    ``cross`` (L, H, T, S): decoder layer, head, target position (each generated token and the final
    EOS, predicted from the position before it) and source position (its pieces and EOS).
    ``encoder`` (L, H, S, S) and ``decoder`` (L, H, T, T) are the self-attention maps.
    """

    source: str
    translation: str
    src_pieces: list[str]
    tgt_pieces: list[str]
    cross: Tensor
    encoder: Tensor
    decoder: Tensor

    @property
    def num_layers(self) -> int:
        return self.cross.size(0)

    @property
    def num_heads(self) -> int:
        return self.cross.size(1)

    def cross_map(self, layer: int | str = -1, head: int | None = None, words: bool = True):
        """One (T, S) cross-attention map: a layer (or ``"mean"`` over layers), one head or the mean
        over heads; with ``words``, merged to words. Returns ``(target labels, source labels, map)``."""
        if layer == "mean":
            weights = self.cross.mean(0)
        elif isinstance(layer, int) and -self.num_layers <= layer < self.num_layers:
            weights = self.cross[layer]
        else:
            raise ConfigError(f"layer={layer!r}: this model has layers 0..{self.num_layers - 1} (or 'mean')")
        if head is None:
            weights = weights.mean(0)
        elif -self.num_heads <= head < self.num_heads:
            weights = weights[head]
        else:
            raise ConfigError(f"head={head}: this model has heads 0..{self.num_heads - 1} (or null for the mean)")
        if not words:
            return list(self.tgt_pieces), list(self.src_pieces), weights
        tgt_words, tgt_groups = word_groups(self.tgt_pieces)
        src_words, src_groups = word_groups(self.src_pieces)
        rows = torch.stack([weights[idx].mean(0) for idx in tgt_groups])  # (Tw, S)
        merged = torch.stack([rows[:, idx].sum(1) for idx in src_groups], dim=1)  # (Tw, Sw)
        return tgt_words, src_words, merged


def word_groups(pieces: Sequence[str]) -> tuple[list[str], list[list[int]]]:
    """Merge sentencepiece pieces into words: ``(["A", "man", "</s>"], [[0], [1, 2], [3]])``.

    A piece starting with ``▁`` starts a word, a bare ``▁`` belongs to the next piece, special
    tokens (``</s>``) are words of their own.
    """
    words: list[str] = []
    groups: list[list[int]] = []
    pending: list[int] = []  # bare "▁" pieces waiting for the word they start
    for i, piece in enumerate(pieces):
        special = piece in (EOS_PIECE, BOS_PIECE)
        if piece == "\u2581":
            pending.append(i)
            continue
        starts = special or piece.startswith("\u2581") or not words or pending or words[-1] in (EOS_PIECE, BOS_PIECE)
        text = piece if special else piece.lstrip("\u2581")
        if starts:
            words.append(text)
            groups.append([*pending, i])
        else:
            words[-1] += text
            groups[-1].append(i)
        pending = []
    if pending:  # trailing bare "▁"
        if groups:
            groups[-1].extend(pending)
        else:
            words.append("\u2581")
            groups.append(pending)
    return words, groups


@torch.no_grad()
def attention_maps(
    net: Seq2SeqTransformer,
    tokenizer: Tokenizer,
    text: str,
    *,
    target: str | None = None,
    decoding: DecodingConfig | None = None,
) -> AttentionMaps:
    """Translate ``text`` (or force ``target``, e.g. a reference) and return every attention map.

    The source is cut to the model's ``max_positions`` (keeping EOS). ``decoding`` defaults to
    greedy search with the usual length limits.
    """
    if not text.strip():
        raise ConfigError("text is empty: give a sentence to translate")
    device = next(net.parameters()).device
    limit = net.config.max_positions
    src_ids = tokenizer.encode_source([text])[0]
    if len(src_ids) > limit:
        src_ids = src_ids[: limit - 1] + [tokenizer.eos_id]
    src = torch.tensor([src_ids], dtype=torch.long, device=device)
    was_training = net.training
    net.eval()
    try:
        if target is None:
            hyp = Predictor(net, tokenizer, decoding or DecodingConfig(strategy="greedy")).generate(src)[0][0].tokens
        else:
            hyp = tokenizer.encode_target([target])[0][: limit - 1]
        tgt_in = torch.tensor([[tokenizer.bos_id, *hyp]], dtype=torch.long, device=device)
        out = net.attention(src, tgt_in)
    finally:
        net.train(was_training)

    def stack(maps: list[Tensor]) -> Tensor:
        return torch.stack([m[0] for m in maps]).float().cpu()  # (L, H, Lq, Lk)

    # Row t of the teacher-forced pass predicts the t-th output token (the last row predicts EOS).
    return AttentionMaps(
        source=text,
        translation=tokenizer.decode_target([hyp])[0],
        src_pieces=[tokenizer.src.id_to_piece(i) for i in src_ids[:-1]] + [EOS_PIECE],
        tgt_pieces=[tokenizer.tgt.id_to_piece(i) for i in hyp] + [EOS_PIECE],
        cross=stack(out["cross"]),
        encoder=stack(out["encoder"]),
        decoder=stack(out["decoder"]),
    )


def strongest_sources(
    maps: AttentionMaps, layer: int | str = -1, head: int | None = None, words: bool = True
) -> list[tuple[str, str, float]]:
    """For each target word (or piece), the source word it attends to most: ``(target, source, weight)``."""
    tgt, src, weights = maps.cross_map(layer, head, words)
    best = weights.argmax(dim=1)
    return [(t, src[int(j)], float(weights[i, j])) for i, (t, j) in enumerate(zip(tgt, best))]


def plot_cross_attention(
    maps: AttentionMaps,
    layers: Sequence[int | str] | None = None,
    head: int | None = None,
    words: bool = True,
) -> Figure:
    """Cross-attention heatmaps: one panel per layer (default: every layer, then their mean), each
    the mean over heads (or ``head``); source on the x axis, generated tokens on the y axis."""
    layers = list(range(maps.num_layers)) + (["mean"] if maps.num_layers > 1 else []) if layers is None else list(layers)
    if not layers:
        raise ConfigError("layers is empty: name at least one layer (or 'mean')")
    panels = [maps.cross_map(layer, head, words) for layer in layers]
    rows, cols = len(panels[0][0]), len(panels[0][1])
    width = max(3.0, 0.35 * cols + 1.5)
    fig = Figure(figsize=(width * len(panels) + 0.8, max(2.5, 0.3 * rows + 1.8)), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    image = None
    for ax, layer, (tgt, src, weights) in zip(axes, layers, panels):
        which = "mean of layers" if layer == "mean" else f"layer {layer}"
        image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(len(src)), src, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(tgt)), tgt, fontsize=8)
        ax.set_xlabel("source")
        ax.set_title(f"{which}, {'mean of heads' if head is None else f'head {head}'}", fontsize=10)
    axes[0].set_ylabel("generated")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attention")
    fig.suptitle(f"{maps.source}\n→ {maps.translation}", fontsize=10)
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for files, TensorBoard and wandb)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
