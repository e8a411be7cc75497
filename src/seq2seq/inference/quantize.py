"""int8 inference on the CPU: dynamic quantization of a trained network's linear layers.

``quantize="int8"`` (``seq2seq-translate quantize=int8``, ``Translator.from_checkpoint(...,
quantize="int8")``, ``seq2seq-serve quantize=int8``) rounds the weights of every linear layer —
attention projections, feed-forward layers and the vocabulary projection — to int8, one scale per
output row, with torch's dynamic quantization (``torch.ao.quantization``, the fbgemm/x86 kernels):
activations are quantized per batch at run time, so nothing is calibrated. Embeddings, layer norms
and the softmax stay in float32. ``benchmarks/translate_e2e.py`` (system ``ours_int8``) measures its
accuracy and speed against float32 and CTranslate2 int8.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from seq2seq.errors import ConfigError
from seq2seq.models.transformer import VocabularyHead

QUANTIZATIONS = ("int8",)


def quantize(net: nn.Module, mode: str | None, device: torch.device) -> nn.Module:
    """``net`` (in eval mode) with its linear layers in ``mode`` (None: as it is); CPU only."""
    if mode is None:
        return net
    if mode not in QUANTIZATIONS:
        raise ConfigError(f"quantize={mode!r}: use int8, or null for float32")
    if device.type != "cpu":
        raise ConfigError(f"quantize={mode} runs on the CPU (device={device}): pass device=cpu, or quantize=null")
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():
        # torch deprecates its quantized tensor types for torchao; the CPU kernels are still torch's.
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        quantize_dynamic(net.eval(), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
        for head in (m for m in net.modules() if isinstance(m, VocabularyHead)):
            # The vocabulary head subclasses nn.Linear (its weight may be the embedding matrix), which
            # quantize_dynamic leaves alone: its int8 copy goes beside it.
            plain = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
            plain.weight, plain.bias = head.weight, head.bias
            plain.qconfig = per_channel_dynamic_qconfig
            head.projection = DynamicLinear.from_float(plain)
    return net
