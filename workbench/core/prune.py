"""Magnitude pruning primitives (in place), shared by the optimizer and the sensitivity probe."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .quantize import QUANT_LAYERS


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    skip = set(exclude)
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS) and n not in skip}


def prune_unstructured_(model: nn.Module, sparsity: float, global_: bool, exclude: Sequence[str] = ()) -> None:
    """Zero the smallest-magnitude weights in place, per layer or over all layers together."""
    layers = prunable_layers(model, exclude)
    with torch.no_grad():
        if global_:
            scores = torch.cat([m.weight.abs().flatten() for m in layers.values()])
            k = int(sparsity * scores.numel())
            if k == 0:
                return
            threshold = scores.kthvalue(k).values
            for m in layers.values():
                m.weight.mul_(m.weight.abs() > threshold)
        else:
            prune_per_layer_(model, {n: sparsity for n in layers})


def prune_per_layer_(model: nn.Module, sparsity: dict[str, float]) -> None:
    """Zero the smallest-magnitude weights of each named layer at its own sparsity, in place."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in sparsity.items():
            w = modules[name].weight
            k = int(p * w.numel())
            if k:
                threshold = w.abs().flatten().kthvalue(k).values
                w.mul_(w.abs() > threshold)
