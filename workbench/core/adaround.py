"""AdaRound: learned rounding of low-bit weights, layer by layer (Nagel et al., "Up or
Down? Adaptive Rounding for Post-Training Quantization", ICML 2020; as in AIMET).

Each conv / linear layer's weights are rounded up or down per weight (never further
than one step from round-to-nearest's floor), the choice learned by gradient descent so
that the layer's output on calibration data stays close to the float model's:
rectified-sigmoid soft rounding h(V), loss ||W~ x_q - W x||^2 + lambda sum(1 - |2h - 1|^beta),
beta annealed from 20 to 2 so that h ends at 0 or 1. Inputs x_q come from the model
quantized so far, targets from the float model (the "asymmetric" reconstruction), on
pixels sampled from the layer's unfolded inputs. Scales: per output channel, the MSE-optimal
clipping of :func:`recover.mse_clip_scale`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .locks import running
from .quantize import QUANT_LAYERS
from .recover import layer_inputs

ZETA, GAMMA = 1.1, -0.1


def _rows(layer: nn.Module, xs: Sequence[torch.Tensor], idx: list[torch.Tensor] | None):
    """Unfolded input rows: (rows, in) for a dense layer, (rows, C, k*k) for a depthwise
    conv; ``idx`` picks the same positions again (None: choose them)."""
    out, picked = [], []
    for i, x in enumerate(xs):
        if isinstance(layer, nn.Linear):
            r = x.reshape(-1, x.shape[-1])
        else:
            u = F.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # N, C*k*k, L
            r = u.permute(0, 2, 1).reshape(-1, u.shape[1])
        sel = idx[i] if idx is not None else None
        if sel is None:
            sel = torch.arange(r.shape[0])
        picked.append(sel)
        out.append(r[sel])
    rows = torch.cat(out)
    if isinstance(layer, nn.Conv2d) and layer.groups > 1:
        rows = rows.reshape(rows.shape[0], layer.groups, -1)
    return rows, picked


def _sample(layer, xs, max_rows: int, gen: torch.Generator) -> list[torch.Tensor]:
    idx = []
    total = 0
    counts = []
    for x in xs:
        if isinstance(layer, nn.Linear):
            n = x.reshape(-1, x.shape[-1]).shape[0]
        else:
            h, w = x.shape[-2:]
            oh = (h + 2 * layer.padding[0] - layer.dilation[0] * (layer.kernel_size[0] - 1) - 1) // layer.stride[0] + 1
            ow = (w + 2 * layer.padding[1] - layer.dilation[1] * (layer.kernel_size[1] - 1) - 1) // layer.stride[1] + 1
            n = x.shape[0] * oh * ow
        counts.append(n)
        total += n
    for n in counts:
        k = min(n, max(1, math.ceil(max_rows * n / total)))
        idx.append(torch.randperm(n, generator=gen)[:k])
    return idx


def _apply(layer: nn.Module, rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if rows.dim() == 3:  # depthwise: rows x C x k*k, weight C x 1 x kh x kw
        return torch.einsum("rck,ck->rc", rows, w.reshape(w.shape[0], -1))
    return rows @ w.reshape(w.shape[0], -1).t()


def adaround_layer_(layer: nn.Module, rows_q: torch.Tensor, target: torch.Tensor, bits: int, scale: torch.Tensor,
                    iters: int = 300, batch_rows: int = 1024, lam: float = 0.01, lr: float = 1e-2,
                    warmup: float = 0.2, seed: int = 0) -> None:
    """Learn the rounding of ``layer.weight`` (in place) so that its output on ``rows_q``
    matches ``target`` (the float layer's output on float inputs)."""
    qmax = 2 ** (bits - 1) - 1
    w = layer.weight.detach()
    s = scale.reshape(-1, *([1] * (w.dim() - 1)))
    floor = torch.floor(w / s)
    rest = (w / s - floor).clamp(0.01, 0.99)
    V = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).requires_grad_(True)
    opt = torch.optim.Adam([V], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    bias = layer.bias.detach() if layer.bias is not None else None
    n = rows_q.shape[0]
    for it in range(iters):
        sel = torch.randint(0, n, (min(batch_rows, n),), generator=gen)
        h = torch.clamp(torch.sigmoid(V) * (ZETA - GAMMA) + GAMMA, 0, 1)
        wq = torch.clamp(floor + h, -qmax, qmax) * s
        out = _apply(layer, rows_q[sel], wq)
        if bias is not None:
            out = out + bias
        rec = (out - target[sel]).pow(2).sum(1).mean()
        if it < warmup * iters:
            loss = rec
        else:
            t = (it - warmup * iters) / max(1.0, (1 - warmup) * iters)
            beta = 20 + (2 - 20) * t
            loss = rec + lam * (1 - (2 * h - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        codes = torch.clamp(floor + (V >= 0).float(), -qmax, qmax)
        layer.weight.copy_(codes * s)


def chain(model: nn.Module) -> list[nn.Module]:
    """The model's blocks in order: its top-level children, plain ``nn.Sequential`` opened."""
    out: list[nn.Module] = []

    def walk(m):
        for c in m.children():
            (walk if type(c) is nn.Sequential else out.append)(c)
    walk(model)
    return out


class _Cursor:
    """Inputs of a model's layers, asked for in forward order, computed block by block from
    cached block inputs (each block runs once per layer in it, not the whole prefix)."""

    def __init__(self, model: nn.Module, batches: list[torch.Tensor]):
        self.model, self.xs, self.i = model, batches, 0
        self.blocks = chain(model)
        self.owner = {m: bi for bi, b in enumerate(self.blocks) for m in b.modules()}
        with torch.no_grad(), running():
            x = batches[0][:1]
            y = x
            for b in self.blocks:
                y = b(y)
            self.ok = y.shape == model(x).shape and torch.allclose(y, model(x), atol=1e-4, rtol=1e-4)

    def inputs(self, layer: nn.Module) -> list[torch.Tensor]:
        if not self.ok:  # the forward is not a chain of the blocks: run the whole prefix
            return layer_inputs(self.model, layer, self.xs)
        bi = self.owner[layer]
        while self.i < bi:
            with torch.no_grad(), running():
                self.xs = [self.blocks[self.i](x) for x in self.xs]
            self.i += 1
        return layer_inputs(self.blocks[bi], layer, self.xs)


def adaround_steps(model: nn.Module, bits: int | dict[str, int], calibration: Sequence[torch.Tensor],
                   exclude: Sequence[str] = (), iters: int = 300, *, max_rows: int = 8192, batch_rows: int = 1024,
                   lam: float = 0.01, images: int = 32, flip: bool = True, batch_size: int = 16,
                   reference: nn.Module | None = None) -> Iterator[str | dict[str, torch.Tensor]]:
    """Round the weights of every conv / linear layer of ``model`` (not in ``exclude``) to
    ``bits`` (symmetric, per output channel) with AdaRound, in place on the model the
    caller passes (make a copy first). ``bits`` may be {layer name: bits} (mixed precision;
    only those layers are rounded). Yields progress strings, then {layer name: scale}.
    ``images`` calibration images (and their mirror images with ``flip``) are used;
    targets come from ``reference`` (default: a float copy of ``model`` as it is now)."""
    from .recover import mse_clip_scale

    skip = set(exclude)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QUANT_LAYERS) and n not in skip}
    if isinstance(bits, dict):
        layers = {n: m for n, m in layers.items() if n in bits}
    per_layer = bits if isinstance(bits, dict) else {n: bits for n in layers}
    if not calibration:
        raise ValueError("AdaRound needs calibration images")
    views = list(calibration[:images])
    if flip:
        views += [torch.flip(x, [3]) for x in views]
    batches = [torch.cat(views[i:i + batch_size]) for i in range(0, len(views), batch_size)]
    reference = (reference if reference is not None else copy.deepcopy(model)).eval()
    ref_layers = dict(reference.named_modules())
    model.eval()
    gen = torch.Generator().manual_seed(0)
    scales: dict[str, torch.Tensor] = {}
    quantized, floating = _Cursor(model, batches), _Cursor(reference, batches)
    for i, (name, layer) in enumerate(layers.items()):
        xq = quantized.inputs(layer)
        xf = floating.inputs(ref_layers[name])
        idx = _sample(layer, xq, max_rows, gen)
        rows_q, _ = _rows(layer, xq, idx)
        rows_f, _ = _rows(layer, xf, idx)
        del xq, xf
        with torch.no_grad():
            target = _apply(layer, rows_f, layer.weight.detach())
            if layer.bias is not None:
                target = target + layer.bias.detach()
        b = per_layer[name]
        scale = mse_clip_scale(layer.weight, b).reshape(-1)
        with torch.enable_grad():
            adaround_layer_(layer, rows_q, target, b, scale, iters, batch_rows, lam)
        scales[name] = scale
        yield f"AdaRound: {i + 1}/{len(layers)} layers ({name}, {b} bits)"
    yield scales
