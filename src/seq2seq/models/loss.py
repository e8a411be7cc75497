"""Label-smoothed cross-entropy that computes logits only for real (non-pad) target tokens.

The usual loss keeps the ``(B, T, V)`` logits of every position, padding included, their fp32 copy
and the log-softmax alive until the backward pass. Here the decoder's final states are gathered at
the ``N`` non-pad target positions, then

* :func:`fused_linear_label_smoothed_ce` (training, eager) projects ``chunk`` tokens at a time and,
  in the same pass, folds the logits' gradient (``softmax - (1 - eps) onehot - eps / V``) into the
  gradients of the states and the output matrix: no ``(N, V)`` tensor outlives its chunk;
* :func:`label_smoothed_nll` (evaluation, and under ``torch.compile``, which fuses it itself)
  computes the same loss from logits through ``logsumexp``.

Both equal ``F.cross_entropy(logits, target, ignore_index=pad, label_smoothing=eps,
reduction="sum")`` over the full padded batch (the smoothed loss) and the same without smoothing
(the NLL, returned detached for logging): with ``lse = logsumexp(z)``, a token's smoothed loss is
``(1 - eps) (lse - z[target]) + eps (lse - mean(z))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Logit elements (fp32) computed at once by the fused loss: chunk tokens = budget // vocabulary.
# Small on CPUs, where a chunk that stays in cache beats one large matrix; larger on GPUs, where
# fewer, bigger kernels win.
CHUNK_ELEMENTS = {"cpu": 2**22, "cuda": 2**25}


def target_index(tokens: Tensor, pad_id: int) -> Tensor:
    """Flat positions (N,) of the non-pad tokens of ``tokens`` (B, L): ``tgt_out``'s, or (as
    ``source_index``) ``src``'s. ``nonzero`` needs the count on the host: on a GPU call this on the
    CPU batch before it is moved (as ``collate`` does) so the step does not wait.
    """
    return (tokens.reshape(-1) != pad_id).nonzero().squeeze(1)


source_index = target_index


def label_smoothed_nll(
    logits: Tensor, target: Tensor, epsilon: float = 0.0, reduction: str = "sum"
) -> tuple[Tensor, Tensor]:
    """(smoothed, nll) in fp32 from ``logits`` (N, V) and ``target`` (N,) with no padding.

    ``reduction``: ``"sum"`` (two scalars) or ``"none"`` (two (N,) vectors). The NLL is detached.
    """
    z = logits.to(_loss_dtype(logits.dtype))
    lse = torch.logsumexp(z, dim=-1)
    nll = lse - z.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    smoothed = (1.0 - epsilon) * nll + epsilon * (lse - z.mean(dim=-1)) if epsilon else nll
    nll = nll.detach()
    if reduction == "sum":
        return smoothed.sum(), nll.sum()
    if reduction == "none":
        return smoothed, nll
    raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs: the softmax is never computed in half precision."""
    return torch.promote_types(dtype, torch.float32)


def _compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype autocast would give a matmul on ``t``'s device (``t.dtype`` without autocast)."""
    device = t.device.type
    try:
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    except TypeError:  # torch < 2.4: no per-device query
        if device == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return t.dtype


class _FusedLinearLabelSmoothedCE(torch.autograd.Function):
    """Forward computes the loss and the input gradients chunk by chunk; backward scales them."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float, chunk: int,
                bias: Tensor | None = None):
        n, vocab = hidden.size(0), weight.size(0)
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        acc = _loss_dtype(dtype)
        b = bias.to(acc) if bias is not None else None
        grad_b = torch.zeros(vocab, dtype=acc, device=hidden.device) if ctx.needs_input_grad[5] else None
        smoothed = torch.zeros((), dtype=acc, device=hidden.device)
        nll = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = None
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, chunk):
                h = hidden[start : start + chunk].to(dtype)
                t = target[start : start + chunk].unsqueeze(1)
                z = (h @ w.t()).to(acc)  # (c, V), the only chunk-sized buffer
                if b is not None:
                    z += b
                lse = torch.logsumexp(z, dim=-1, keepdim=True)
                nll_tok = lse - z.gather(1, t)
                nll += nll_tok.sum()
                if epsilon:
                    # sum(lse - mean(z)) = c lse_sum - sum(z) / V, without another (c, V) pass
                    smoothed += (1.0 - epsilon) * nll_tok.sum() + epsilon * (lse.sum() - z.sum() / vocab)
                else:
                    smoothed += nll_tok.sum()
                # d loss / d z = softmax(z) - (1 - eps) onehot(t) - eps / V, written over z.
                g = z.sub_(lse).exp_()
                if epsilon:
                    g.sub_(epsilon / vocab)
                g.scatter_add_(1, t, torch.full(t.shape, epsilon - 1.0, dtype=g.dtype, device=g.device))
                if grad_b is not None:
                    grad_b += g.sum(dim=0)
                g = g.to(dtype)
                if grad_h is not None:
                    grad_h[start : start + chunk] = g @ w
                if ctx.needs_input_grad[1]:
                    part = g.t() @ h
                    if grad_w is None:
                        grad_w = part.to(weight.dtype) if n <= chunk else part.to(_loss_dtype(weight.dtype))
                    else:
                        grad_w += part
        if grad_w is not None:
            grad_w = grad_w.to(weight.dtype)
        if grad_b is not None:
            grad_b = grad_b.to(bias.dtype)
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.mark_non_differentiable(nll)
        return smoothed, nll

    @staticmethod
    def backward(ctx, grad_smoothed: Tensor, grad_nll: Tensor):
        if ctx.grads is None:
            raise RuntimeError("the fused loss's gradients were already used: it supports one backward pass")
        grads = ctx.grads
        ctx.grads = None
        grad_h, grad_w, grad_b = (g.mul_(grad_smoothed.to(g.dtype)) if g is not None else None for g in grads)
        return grad_h, grad_w, None, None, None, grad_b


def fused_linear_label_smoothed_ce(
    hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float = 0.0, chunk: int | None = None,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed (smoothed, nll) of the logits ``hidden @ weight.T (+ bias)`` without keeping them.

    ``hidden`` (N, D) states of real target tokens, ``weight`` (V, D) the output matrix, ``bias`` (V,)
    its bias if it has one, ``target`` (N,). ``chunk``: tokens projected at once (default from :data:`CHUNK_ELEMENTS`).
    The gradients are computed in the forward pass, so call it only when a backward pass follows
    (training); it supports one backward pass.
    """
    if chunk is None:
        budget = CHUNK_ELEMENTS.get(hidden.device.type, CHUNK_ELEMENTS["cuda"])
        chunk = max(1, budget // weight.size(0))
    return _FusedLinearLabelSmoothedCE.apply(hidden, weight, target, float(epsilon), max(1, int(chunk)), bias)


def right_padded(tokens: Tensor, pad_id: int) -> bool:
    """Whether every row of ``tokens`` (B, L) is real tokens then padding only (host check)."""
    real = tokens != pad_id
    return bool((real[:, 1:] <= real[:, :-1]).all()) if tokens.size(1) > 1 else True


def sequence_loss(net: nn.Module, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, label_smoothing: float = 0.0,
                  index: Tensor | None = None, fused: bool | None = None, chunk: int | None = None,
                  src_index: Tensor | None = None, unpad: bool = False) -> tuple[Tensor, Tensor]:
    """Teacher-forced (smoothed, nll) sums of a :class:`Seq2SeqTransformer` over non-pad targets.

    ``index``: :func:`target_index` of ``tgt_out`` (computed here when None). ``unpad``: run the
    whole network on real tokens only (:meth:`Seq2SeqTransformer.target_states`; targets must be
    right-padded), with ``src_index`` the real source positions (computed here when None). The
    model's output head scores the states (``fused``/``chunk``: see :meth:`VocabularyHead.loss`).
    """
    pad = net.config.pad_id
    index = target_index(tgt_out, pad) if index is None else index
    if unpad and src_index is None:
        src_index = source_index(src, pad)
    hidden, attention, source = net.target_states(src, tgt_in, index, src_index if unpad else None)
    target = tgt_out.reshape(-1).index_select(0, index)
    return net.head.loss(hidden, target, label_smoothing, attention, source, fused=fused, chunk=chunk)


def plain_sequence_loss(
    net: nn.Module, src: Tensor, tgt_in: Tensor, tgt_out: Tensor, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """The reference: full padded logits through ``F.cross_entropy`` (what the peers compute)."""
    logits = net(src, tgt_in)
    flat_logits, flat_target = logits.reshape(-1, logits.size(-1)).float(), tgt_out.reshape(-1)
    pad = net.config.pad_id
    smoothed = F.cross_entropy(
        flat_logits, flat_target, ignore_index=pad, reduction="sum", label_smoothing=label_smoothing
    )
    nll = F.cross_entropy(flat_logits.detach(), flat_target, ignore_index=pad, reduction="sum")
    return smoothed, nll
