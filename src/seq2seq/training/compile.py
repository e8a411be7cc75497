"""Compiling the training loss (``speed.compile``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def resolve_compile(option: Any, device: torch.device) -> bool:
    """``speed.compile``: ``auto`` compiles on CUDA only (on CPUs compiling costs minutes for little
    gain, see benchmarks/train_throughput.py); ``true``/``false`` force it."""
    if isinstance(option, str):
        option = option.strip().lower()
        if option == "auto":
            return device.type == "cuda"
        if option in ("true", "false"):
            return option == "true"
        raise ValueError(f"speed.compile must be auto, true or false, got {option!r}")
    return bool(option)


def compile_dynamic(fn: Callable) -> Callable:
    """``torch.compile(fn, dynamic=True)`` that compiles once for every batch shape.

    Without "duck sizing" (a private torch.fx setting, patched around the calls only): by default two
    sizes equal at the first call (32 sentences of 32 tokens) become one symbol, and the first batch
    where they differ compiles again.
    """
    compiled = torch.compile(fn, dynamic=True)
    try:
        from torch.fx.experimental import _config as fx_config

        fx_config.patch(use_duck_shape=False)
    except (ImportError, AttributeError, TypeError):  # an older torch: duck sizing stays on
        return compiled

    def call(*args, **kwargs):
        with fx_config.patch(use_duck_shape=False):
            return compiled(*args, **kwargs)

    return call
