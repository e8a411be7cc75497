"""The linear layers of a network loaded for CPU inference: float32 in oneDNN's layout, or int8.

Float32 (the default on the CPU): :func:`pack_linear_layers` reorders every linear layer's weight
once into oneDNN's blocked layout (:class:`PackedLinear`); the weights and arithmetic stay float32,
but a decoding step no longer repacks them at every call, which otherwise dominates a small model's
steps.

int8 (``quantize="int8"`` of ``seq2seq-translate``, ``seq2seq-serve`` and ``Translator``):
:class:`Int8Linear` rounds the weights of every linear layer (the vocabulary projection included) to
int8 with one scale per output row, and each input row (token) with a scale of its own at run time,
as CTranslate2 does; ``torch._int_mm`` sums in int32. Nothing is calibrated, and a row's result does
not depend on the rest of its batch. Embeddings, layer norms and the softmax stay float32.
``benchmarks/translate_e2e.py`` (``ours_int8``) measures it.
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


def pack_linear_layers(net: nn.Module, device: torch.device) -> nn.Module:
    """``net`` with its linear layers :class:`PackedLinear` (:func:`replace_linear_layers`) where that
    can run: float32 weights on a CPU with oneDNN; else unchanged."""
    can_pack = (device.type == "cpu" and torch.backends.mkldnn.is_available()
                and hasattr(torch.ops.mkldnn, "_linear_pointwise")
                and all(p.dtype == torch.float32 for p in net.parameters()))
    return replace_linear_layers(net, PackedLinear) if can_pack else net


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
