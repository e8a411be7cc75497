"""The linear layers of a network loaded for CPU inference: float32 in oneDNN's layout, or int8.

Float32 (the default of ``seq2seq-translate``, ``seq2seq-eval``, ``seq2seq-serve`` and
``Translator.from_checkpoint`` on the CPU): :func:`pack_linear_layers` reorders every linear
layer's weight once into oneDNN's blocked layout (:class:`PackedLinear`). The weights and the
arithmetic stay float32; a decoding step then reads its weights in the order the kernel wants
instead of repacking them at every call, which otherwise dominates a small model's decoding steps.

int8 (``quantize="int8"``: ``seq2seq-translate quantize=int8``, ``Translator.from_checkpoint(...,
quantize="int8")``, ``seq2seq-serve quantize=int8``): :class:`Int8Linear` rounds the weights of every
linear layer — attention projections, feed-forward layers and the vocabulary projection — to int8,
one scale per output row, and each input row (token) to int8 with a scale of its own at run time,
as CTranslate2 does; the product runs in torch's int8 matrix multiply (``torch._int_mm``) with int32
sums. Nothing is calibrated, and a row's result does not depend on the other rows of its batch
(one scale per batch would coarsen every row by its largest). Embeddings, layer norms and the
softmax stay in float32.
``benchmarks/translate_e2e.py`` (system ``ours_int8``) measures its accuracy and speed against
float32 and CTranslate2 int8.
"""

from __future__ import annotations

import torch
from torch import nn

from seq2seq.errors import ConfigError
from seq2seq.models.transformer import VocabularyHead

QUANTIZATIONS = ("int8",)


class PackedLinear(nn.Module):
    """A float32 linear layer for CPU inference, its weight reordered once for oneDNN's kernels.

    ``x`` (..., in_features) -> (..., out_features), equal to ``linear`` up to float rounding; no
    gradients (inference only). ``weight`` and ``bias`` stay the layer's parameters (the state dict,
    parameter count and exports see the network as it was loaded); the packed copy beside them
    costs the weights' memory once more.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.packed_bias = None if linear.bias is None else linear.bias.detach()  # shares its storage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.packed_bias, "none", [], "")


class Int8Linear(nn.Module):
    """A linear layer in int8 for CPU inference: weights per output row, inputs per row (token).

    ``x`` (..., in_features) -> (..., out_features) float32: ``(xq @ wq.T) * x_scale * w_scale + bias``
    with ``xq``, ``wq`` symmetric int8 (-127..127) and the sums in int32. No gradients.
    """

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        self.register_buffer("weight_scale", (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12))
        quantized = (weight / self.weight_scale[:, None]).round().clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_t", quantized.t())  # (in, out): what torch._int_mm takes
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scale = (rows.abs().amax(dim=1, keepdim=True) / 127.0).clamp_min(1e-12)
        quantized = (rows / scale).round_().clamp_(-127, 127).to(torch.int8)
        out = torch._int_mm(quantized, self.weight_t).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            out += self.bias
        return out.view(*x.shape[:-1], self.out_features)


def can_pack(net: nn.Module, device: torch.device) -> bool:
    """Whether :func:`pack_linear_layers` changes ``net``: float32 weights on a CPU with oneDNN."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and all(p.dtype == torch.float32 for p in net.parameters()))


def pack_linear_layers(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` (eval mode, for inference only: it is changed in place) with every ``nn.Linear`` a
    :class:`PackedLinear` and each vocabulary head's projection packed beside its (possibly tied)
    weight; unchanged where :func:`can_pack` says no."""
    return replace_linear_layers(net, PackedLinear) if can_pack(net, device) else net


def for_inference(net: nn.Module, mode: str | None, device: torch.device) -> nn.Module:
    """The layers ``seq2seq`` decodes a loaded checkpoint with: int8 (``mode="int8"``, :func:`quantize`)
    or float32 packed for the CPU (``mode=None``, :func:`pack_linear_layers`; as it is on a GPU)."""
    return quantize(net, mode, device) if mode is not None else pack_linear_layers(net, device)


def quantize(net: nn.Module, mode: str | None, device: torch.device) -> nn.Module:
    """``net`` (in eval mode; changed in place) with its linear layers in ``mode`` (None: as it is); CPU only."""
    if mode is None:
        return net
    if mode not in QUANTIZATIONS:
        raise ConfigError(f"quantize={mode!r}: use int8, or null for float32")
    if device.type != "cpu":
        raise ConfigError(f"quantize={mode} runs on the CPU (device={device}): pass device=cpu, or quantize=null")
    return replace_linear_layers(net, Int8Linear)


def replace_linear_layers(net: nn.Module, layer: type[nn.Module]) -> nn.Module:
    """``net`` in eval mode, changed in place: every ``nn.Linear`` becomes ``layer(linear)``, and each
    vocabulary head gets ``layer(head)`` as its projection beside its weight, which may be the
    embedding matrix (the embeddings keep it as it is)."""
    net.eval()
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Linear:  # not the vocabulary head, which subclasses it
                setattr(module, name, layer(child))
    for head in (m for m in net.modules() if isinstance(m, VocabularyHead)):
        head.projection = layer(head)
    return net
