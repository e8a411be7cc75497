"""Autoregressive decoding over the cached decoder.

Every search starts from BOS, encodes the source once, and feeds one new token per step through
the decoder's :class:`~seq2seq.models.transformer.KVCache`. Finished sequences are dropped from
the active batch so that they stop costing work.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seq2seq.models.transformer import Seq2SeqTransformer


@dataclass
class DecodingConfig:
    """Options shared by the searches (the ``decoding`` config group)."""

    strategy: str = "greedy"
    max_len_a: float = 1.2  # output length limit: a * source_length + b
    max_len_b: int = 10
    min_len: int = 0


def max_output_lengths(src: Tensor, pad_id: int, a: float, b: int, limit: int) -> Tensor:
    """Per-sentence output limit ``a * source_length + b``, capped by the model's positions."""
    src_len = (src != pad_id).sum(dim=1)
    return (src_len.float() * a + b).long().clamp(min=1, max=limit - 1)


@torch.no_grad()
def greedy_search(model: Seq2SeqTransformer, src: Tensor, cfg: DecodingConfig | None = None) -> list[list[int]]:
    """Greedy decoding of a batch of sources (B, S); returns B token-id lists without BOS/EOS."""
    cfg = cfg or DecodingConfig()
    mc = model.config
    batch = src.size(0)
    memory, memory_mask = model.encode(src)
    limits = max_output_lengths(src, mc.pad_id, cfg.max_len_a, cfg.max_len_b, mc.max_positions)
    cache = model.decoder.new_cache()
    active = torch.arange(batch, device=src.device)  # original row of each active sequence
    tokens = torch.full((batch, 1), mc.bos_id, dtype=torch.long, device=src.device)
    outputs: list[list[int]] = [[] for _ in range(batch)]
    step = 0
    while active.numel() > 0:
        logits = model.decode(tokens, memory if step == 0 else None, memory_mask, cache=cache)[:, -1]
        if step < cfg.min_len:
            logits[:, mc.eos_id] = float("-inf")
        next_tokens = logits.argmax(dim=-1)
        step += 1
        finished = (next_tokens == mc.eos_id) | (limits[active] <= step)
        for row, tok, done in zip(active.tolist(), next_tokens.tolist(), finished.tolist()):
            if tok != mc.eos_id:
                outputs[row].append(tok)
        if finished.any():
            keep = (~finished).nonzero().squeeze(1)
            active, next_tokens = active[keep], next_tokens[keep]
            memory_mask = memory_mask.index_select(0, keep)
            cache.select(keep)
        tokens = next_tokens.unsqueeze(1)
    return outputs
