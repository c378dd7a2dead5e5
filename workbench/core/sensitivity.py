"""Per-layer sensitivity, and per-layer sparsity / bit widths allocated from it.

Sensitivity of a layer: compress that layer alone (prune it, or round its weights) and
measure, on calibration images, the mean KL divergence of the model's output from the
original's, and the agreement of their top-1 classes. Each probe runs only the part of the
network from the probed layer on: the stages in front of it (the model's children, with
nn.Sequential opened up) return the outputs recorded in the reference pass (EfficientNet-Lite0,
16 images: 5.4 s instead of 17.8 s, the same figures).

Allocation assumes each layer's KL grows as s_l (p / p0)^2 with its sparsity p (a
second-order model of the loss, as in Optimal Brain Damage) and as s_l 4^(b0 - b) with its
bit width b (each bit halves the rounding error), and minimises the summed KL under the
global target: a closed form with a Lagrange multiplier for sparsity, a greedy descent
for bits.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .locks import running
from .prune import prune_per_layer_
from .quantize import QUANT_LAYERS, simulate_weight_quant_

MAX_SPARSITY = 0.95
_CACHE: dict[tuple, dict[str, LayerSensitivity]] = {}


@dataclass(frozen=True)
class LayerSensitivity:
    name: str
    params: int
    kl: float
    agreement: float


def compressible_layers(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    skip = set(exclude)
    return {n: m for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS) and n not in skip}


def first_and_last(model: nn.Module) -> tuple[str, str]:
    names = list(compressible_layers(model))
    return names[0], names[-1]


def _probe_(module: nn.Module, kind: str, value: float) -> None:
    with torch.no_grad():
        if kind == "prune":
            prune_per_layer_(module, {"": value})
        else:
            simulate_weight_quant_(module, {"": int(value)}, rounding="mse")


@dataclass
class _Stage:
    name: str
    parent: nn.Module
    attr: str
    module: nn.Module
    order: int = -1  # when its forward finished in the reference pass (-1: it did not run)
    output: torch.Tensor | None = None


class _Cached(nn.Module):
    """Stands in for a stage in front of the probed layer: returns a copy of its reference
    output (a copy: a later stage may add to its input in place)."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output.clone()


def _stages(model: nn.Module) -> list[_Stage]:
    """The model's children, with nn.Sequential containers opened up (blocks of a backbone)."""
    out = []

    def walk(parent: nn.Module, prefix: str) -> None:
        for attr, child in parent.named_children():
            if isinstance(child, nn.Sequential):
                walk(child, f"{prefix}{attr}.")
            else:
                out.append(_Stage(f"{prefix}{attr}", parent, attr, child))
    walk(model, "")
    return out


def _record(model: nn.Module, batch: torch.Tensor, stages: list[_Stage]) -> tuple[torch.Tensor, bool]:
    """The model's output on ``batch``, keeping each stage's output and the order in which
    the stages finished; and whether they can stand in for the stages (each stage that ran
    ran once and returned one tensor)."""
    calls: dict[int, int] = {}
    finished = []

    def hook(i):
        def fn(module, inputs, output):
            calls[i] = calls.get(i, 0) + 1
            stages[i].output = output.clone() if torch.is_tensor(output) else None
            finished.append(i)
        return fn

    handles = [st.module.register_forward_hook(hook(i)) for i, st in enumerate(stages)]
    try:
        result = model(batch)
    finally:
        for h in handles:
            h.remove()
    for order, i in enumerate(finished):
        stages[i].order = order
    usable = all(n == 1 and stages[i].output is not None for i, n in calls.items())
    return result, usable


@contextmanager
def _prefix_cached(stages: list[_Stage], layer: str, usable: bool):
    """While probing ``layer``, the stages that finished before the one holding it return
    their recorded outputs instead of running, so only the rest of the network is computed
    (the probed layer changes nothing in front of it)."""
    holder = next((st for st in stages if layer == st.name or layer.startswith(st.name + ".")), None)
    swap = []
    if usable and holder is not None and holder.order >= 0:
        swap = [st for st in stages if 0 <= st.order < holder.order]
    try:
        for st in swap:
            setattr(st.parent, st.attr, _Cached(st.output))
        yield
    finally:
        for st in swap:
            setattr(st.parent, st.attr, st.module)


def _cache_key(model, batch: torch.Tensor, kind: str, value: float, exclude, key) -> tuple:
    return (key if key is not None else id(model), kind, float(value), tuple(exclude), tuple(batch.shape),
            float(batch.sum()))


def isolated_sensitivity_steps(model: nn.Module, calibration: Sequence[torch.Tensor], kind: str, value: float,
                               exclude: Sequence[str] = (), key=None) -> Iterator[str | dict[str, LayerSensitivity]]:
    """:func:`sensitivity_steps` in a child process (:func:`.isolate.isolated`: the latencies
    timed here stay true), unless its result is cached here; what it measures is cached here."""
    from .isolate import isolated

    full = _cache_key(model, torch.cat(list(calibration)), kind, value, exclude, key)
    if full in _CACHE:
        yield _CACHE[full]
        return
    for step in isolated(sensitivity_steps, model, list(calibration), kind, value, exclude, key=key):
        if not isinstance(step, str):
            _CACHE[full] = step
        yield step


def sensitivity_steps(model: nn.Module, calibration: Sequence[torch.Tensor], kind: str, value: float,
                      exclude: Sequence[str] = (), key=None) -> Iterator[str | dict[str, LayerSensitivity]]:
    """Yields progress, then {layer name: LayerSensitivity}. ``kind`` is "prune" (``value``
    = sparsity) or "bits" (``value`` = bit width). ``model`` is changed during each probe
    and restored after it: pass a copy when others may run it meanwhile, and ``key`` (e.g.
    the id of the model it copies) so results are cached per model, probe and images."""
    batch = torch.cat(list(calibration))
    key = _cache_key(model, batch, kind, value, exclude, key)
    if key in _CACHE:
        yield _CACHE[key]
        return
    stages = _stages(model)
    with torch.no_grad(), running():
        logits, usable = _record(model, batch, stages)
        reference = F.softmax(logits, 1)
    yield f"sensitivity ({kind} {value:g}): reference outputs"
    layers = compressible_layers(model, exclude)
    out: dict[str, LayerSensitivity] = {}
    for i, (name, module) in enumerate(layers.items()):
        saved = module.weight.detach().clone()
        try:
            _probe_(module, kind, value)
            with torch.no_grad(), running(), _prefix_cached(stages, name, usable):
                probs = F.softmax(model(batch), 1)
        finally:
            with torch.no_grad():
                module.weight.copy_(saved)
        kl = (reference * (reference.clamp_min(1e-12).log() - probs.clamp_min(1e-12).log())).sum(1).mean()
        agree = (reference.argmax(1) == probs.argmax(1)).float().mean()
        out[name] = LayerSensitivity(name, module.weight.numel(), max(kl.item(), 1e-9), agree.item())
        yield f"sensitivity ({kind} {value:g}): {i + 1}/{len(layers)} layers"
    _CACHE[key] = out
    yield out


def allocate_sparsity(sens: dict[str, LayerSensitivity], target: float, probe: float,
                      fixed: dict[str, float] | None = None) -> dict[str, float]:
    """Per-layer sparsity with the same number of zeros as ``target`` over all layers:
    minimises sum s_l (p_l / probe)^2 subject to sum n_l p_l = target sum n_l, so
    p_l is proportional to n_l / s_l, clipped to [0, 0.95] (water-filling)."""
    fixed = fixed or {}
    free = {n: s for n, s in sens.items() if n not in fixed}
    total = sum(s.params for s in sens.values())
    budget = target * total - sum(fixed[n] * sens[n].params for n in fixed if n in sens)
    if not free or budget <= 0:
        return {**{n: 0.0 for n in free}, **fixed}
    weight = {n: s.params / s.kl for n, s in free.items()}

    def zeros(lam):
        return sum(min(MAX_SPARSITY, lam * weight[n]) * free[n].params for n in free)

    lo, hi = 0.0, 1.0
    while zeros(hi) < budget and hi < 1e30:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if zeros(mid) < budget else (lo, mid)
    alloc = {n: min(MAX_SPARSITY, hi * weight[n]) for n in free}
    return {**alloc, **fixed}


def allocate_bits(sens: dict[str, LayerSensitivity], target_bits: float, probe_bits: int,
                  fixed: dict[str, int] | None = None, choices: Sequence[int] = (2, 3, 4, 5, 6, 7, 8),
                  floor: dict[str, int] | None = None) -> dict[str, int]:
    """Per-layer bit widths whose parameter-weighted mean is at most ``target_bits``:
    start every free layer at the highest width, then repeatedly take one bit from the
    layer where it costs the least predicted KL per bit saved, never below ``floor`` (per
    layer; ``min(choices)`` for the others)."""
    fixed, floor = fixed or {}, floor or {}
    bits = {n: max(choices) for n in sens if n not in fixed}
    total = sum(s.params for s in sens.values())

    def mean_bits():
        return (sum(bits[n] * sens[n].params for n in bits)
                + sum(fixed[n] * sens[n].params for n in fixed if n in sens)) / total

    def cost(n, b):
        return sens[n].kl * 4.0 ** (probe_bits - b)

    while mean_bits() > target_bits + 1e-9:
        options = [(n, b) for n, b in bits.items() if b > max(min(choices), floor.get(n, 0))]
        if not options:
            break
        n, b = min(options, key=lambda nb: (cost(nb[0], nb[1] - 1) - cost(*nb)) / sens[nb[0]].params)
        bits[n] = b - 1
    return {**bits, **fixed}
