"""The optimizer: AdamW without weight decay on biases and norms, fused where the device has the kernel."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


def build_optimizer(named_parameters: Iterable[tuple[str, torch.nn.Parameter]], opt: Mapping[str, Any]) -> torch.optim.AdamW:
    """AdamW with ``opt`` (the optim config: ``lr``, ``betas``, ``eps``, ``weight_decay``), fused when
    every parameter is on CUDA or on the CPU where this torch has the fused CPU kernel, else foreach."""
    decay, no_decay = [], []
    for name, p in named_parameters:
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "norm" in name else decay).append(p)
    params = decay + no_decay
    groups = [{"params": decay, "weight_decay": opt.get("weight_decay", 0.0)}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = {"lr": opt["lr"], "betas": tuple(opt.get("betas", (0.9, 0.98))), "eps": opt.get("eps", 1e-9)}
    devices = {p.device.type for p in params}
    if params and len(devices) == 1 and devices <= {"cuda", "cpu"} and all(p.is_floating_point() for p in params):
        try:
            optimizer = torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # no fused kernel for this device in this torch
            pass
        else:
            # A fused AdamW tells GradScaler it unscales inside step(); Lightning then refuses gradient
            # clipping under every mixed precision, bf16 included. Let the scaler unscale as for any
            # optimizer (what clipping needs anyway); the update itself stays fused. A private flag:
            # neither torch.optim nor Lightning has a public switch for who unscales.
            optimizer._step_supports_amp_scaling = False
            return optimizer
    return torch.optim.AdamW(groups, **kwargs)
