"""One-shot unstructured pruning that keeps accuracy: an OBC-style per-layer database of
reconstructed masks, per-layer sparsities from dynamic programming, BatchNorm reset.

The expensive part runs once per (weights, calibration images) and is cached on disk;
after that any global sparsity is a dynamic program over a small table plus a stitch of
stored tensors (well under a second), which is what makes an instant sparsity slider.

Method
------
1. Layer statistics on the calibration views (the images; with ``flips=True`` also their
   mirror images): the Hessian ``H = E[x x^T]`` of every conv / linear layer's inputs
   (pixels are rows for 1x1 convolutions, im2col columns for k x k ones, one small Hessian
   per channel for depthwise ones; the classifier after the global pool also gets the
   per-position features of the pool's input, so that it has more rows than images), and
   each layer's mean Fisher information of its outputs from a backward pass on a few
   images (cross-entropy with labels sampled from the model's own predictions).
2. A database per layer: for every sparsity level (0, 5, ..., 95 %) a mask chosen and the
   remaining weights updated by the Optimal Brain Surgeon column sweep of SparseGPT, with
   rows ranked on BatchNorm-folded weights (row weight ``gamma^2 / (var + eps)`` of the
   following BatchNorm); and that level's loss ``1/2 F_layer sum_i r_i dW_i H dW_i^T``.
3. Each pointwise / linear layer's loss curve is then scaled to the measured KL divergence
   of the network's outputs from the dense model's, with only that layer pruned, at 40 %
   and 80 % (geometric interpolation in between): the Fisher estimate alone got the
   relative price of the layers wrong by large factors (on EfficientNet-Lite0 it spared
   the classifier, which is nearly free at 75 %, and over-pruned the last blocks).
4. Per global sparsity: the per-layer levels minimising the summed loss under the budget
   (count of zeros over all conv + linear weights), by dynamic programming, no layer more
   than :data:`HEADROOM` above the average the free layers need (the losses come from the
   calibration images and under-price high levels on other photos); the last few zeros that
   the level granularity leaves over are the weights of smallest OBS saliency.
5. Optionally :func:`reset_batchnorm_` (OBC's BatchNorm reset). Measured on
   EfficientNet-Lite0 with 128 calibration images it hurts at 50 % and helps a little at
   70 %: use ``recover.recalibrate_bn_if_better_``, and not on every slider move (it is
   three passes over the calibration images).

References
----------
- Frantar & Alistarh, "Optimal Brain Compression: A Framework for Accurate Post-Training
  Quantization and Pruning", NeurIPS 2022 (OBC / ExactOBS; database + dynamic programming +
  BatchNorm reset; code IST-DASLab/OBC).
- Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot", ICML 2023 (the column sweep used to build each level).
- Hassibi & Stork, "Second order derivatives for network pruning: Optimal Brain Surgeon",
  NeurIPS 1992.
- Li et al., "BRECQ: Pushing the Limit of Post-Training Quantization by Block
  Reconstruction", ICLR 2021 (Fisher-weighted output error as the layer loss).
- Li et al., "EagleEye", ECCV 2020 (BatchNorm re-estimation after pruning).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .files import atomic_path
from .locks import running

DB_VERSION = 7
LEVELS = tuple(i / 20 for i in range(20))  # 0 %, 5 %, ..., 95 %
DP_UNITS = 20000  # budget resolution of the dynamic program (units over all weights)
# kept dense by default: depthwise and dense k x k convolutions (the stem). Measured on
# EfficientNet-Lite0: with them free the DP's loss estimate prunes the stem to 68 % and
# top-1 at 50 % falls from 0.80 to 0.38 (the estimate misses how sensitive they are).
DENSE_KINDS = ("depthwise", "conv")
# no layer is pruned more than this above the average its free layers need. The levels' losses are
# measured on the calibration images; on other photos a layer pruned far past the average cost
# 2.5-6.5x its estimate (the OBS update fits those images), so the DP over-trusted high levels.
# With the ceiling, 50 % on EfficientNet-Lite0 lost 5.5 points on average over nine splits,
# against 6.7 without it; a tenth split went the other way, 5.4 against 4.6 (docs/benchmarks.md,
# session 30). OWL (Yin et al., ICML 2024) bounds layer sparsities around the target in the same way.
HEADROOM = 0.10


def _layers(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    skip = set(exclude)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in skip}


def _kind(m: nn.Module) -> str:
    if isinstance(m, nn.Linear):
        return "linear"
    if m.groups == 1:
        return "pointwise" if m.kernel_size == (1, 1) and m.padding in ((0, 0), "valid") else "conv"
    if m.groups == m.in_channels and m.in_channels == m.out_channels:
        return "depthwise"
    return "grouped"


def fingerprint(model: nn.Module, calibration: Sequence[torch.Tensor], exclude: Sequence[str] = (),
                extra: str = "") -> str:
    """SHA-256 (hex, 24 characters) of the model's parameters and buffers, the calibration
    images, ``exclude`` and the database version: the cache key of :func:`prepare_steps`."""
    h = hashlib.sha256(f"prune_obc v{DB_VERSION} {sorted(exclude)} {extra}".encode())
    for name, t in model.state_dict().items():
        if not torch.is_tensor(t):
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for x in calibration:
        h.update(str(tuple(x.shape)).encode())
        h.update(x.detach().cpu().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


# ----------------------------------------------------------------------------- statistics

def _views(calibration: Sequence[torch.Tensor], flips: bool) -> list[torch.Tensor]:
    """The calibration images, and with ``flips`` their mirror images too."""
    out = [x for x in calibration]
    if flips:
        out += [torch.flip(x, dims=[3]) for x in calibration]
    return out


class _Stats:
    """Accumulates input Hessians and output Fisher weights of the layers via hooks."""

    def __init__(self, layers: dict[str, nn.Module]):
        self.layers = layers
        self.kind = {n: _kind(m) for n, m in layers.items()}
        self.H: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.Hspatial: dict[str, torch.Tensor] = {}  # linear layers after a global pool
        self.G: dict[str, torch.Tensor] = {}
        self.images: dict[str, int] = {}
        self.grad = False
        self.spatial = True  # depthwise Hessians (C small ones each) on the first views only

    def _add(self, store, name, value):
        store[name] = store[name] + value if name in store else value

    def forward_hook(self, name):
        m, kind = self.layers[name], self.kind[name]

        def fn(module, inputs, output):
            x = inputs[0].detach()
            with torch.no_grad():
                if kind == "linear":
                    cols = x.reshape(-1, x.shape[-1]).double()
                    self._add(self.H, name, cols.t() @ cols)
                    self.rows[name] = self.rows.get(name, 0) + cols.shape[0]
                elif kind == "pointwise":
                    cols = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1)
                    self._add(self.H, name, (cols @ cols.t()).double())
                    self.rows[name] = self.rows.get(name, 0) + cols.shape[1]
                elif kind == "depthwise":
                    if self.spatial:
                        self._depthwise(name, m, x)
                else:  # dense spatial conv (the stem) or grouped
                    self._conv(name, m, x)
            if self.grad and output.requires_grad:
                output.register_hook(self._grad_hook(name))
        return fn

    def _grad_hook(self, name):
        def on_grad(g):
            with torch.no_grad():
                g = g.detach()
                per = (g ** 2).sum(tuple(range(2, g.dim()))) if g.dim() > 2 else g ** 2
                self._add(self.G, name, per.sum(0).double())
                self.images[name] = self.images.get(name, 0) + g.shape[0]
        return on_grad

    def _depthwise(self, name, m, x):
        k = m.kernel_size[0] * m.kernel_size[1]
        u = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # n x C*k x P
        n, _, p = u.shape
        u = u.reshape(n, x.shape[1], k, p).permute(1, 2, 0, 3).reshape(x.shape[1], k, -1)
        self._add(self.H, name, torch.bmm(u, u.transpose(1, 2)).double())
        self.rows[name] = self.rows.get(name, 0) + u.shape[2]

    def _conv(self, name, m, x):
        u = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
        if m.groups > 1:  # one Hessian shared by the groups
            g = m.groups
            u = u.reshape(u.shape[0], g, -1, u.shape[2]).permute(0, 1, 3, 2).reshape(-1, u.shape[1] // g)
        else:
            u = u.permute(0, 2, 1).reshape(-1, u.shape[1])
        self._add(self.H, name, (u.t() @ u).double())
        self.rows[name] = self.rows.get(name, 0) + u.shape[0]

    def pool_hook(self, name):
        def fn(module, inputs, output):
            x = inputs[0].detach()
            if x.dim() == 4:
                cols = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1)
                self._add(self.Hspatial, name, (cols @ cols.t()).double() / (x.shape[2] * x.shape[3]))
        return fn


def _final_linear_pool(model: nn.Module, layers: dict[str, nn.Module]) -> tuple[str, nn.Module] | None:
    """(name of the classifier, the global-pool module in front of it), when the model ends
    with AdaptiveAvgPool2d -> ... -> Linear: its spatial inputs give the classifier more
    Hessian rows than there are images."""
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    linears = [n for n, m in layers.items() if isinstance(m, nn.Linear)]
    if len(pools) == 1 and len(linears) == 1:
        return linears[0], pools[0]
    return None


def _following_batchnorm(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """conv name -> the BatchNorm2d that follows it in module order with as many channels
    (Conv2d -> BatchNorm2d as in every ConvBNAct)."""
    out, prev = {}, None
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and prev is not None and prev[1].out_channels == m.num_features:
            out[prev[0]] = m
        if isinstance(m, nn.Conv2d):
            prev = (name, m)
        elif not isinstance(m, (nn.Sequential, nn.BatchNorm2d)) and len(list(m.children())) == 0:
            prev = None
    return out


# ----------------------------------------------------------------------------- OBS sweeps

def _inverse_upper(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the dampened inverse Hessian (batched over a leading dim
    when given one) and the mask of dead inputs."""
    H = H.clone()
    d = H.shape[-1]
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    dead = diag <= 0
    eye = torch.eye(d, dtype=H.dtype)
    H = H + dead.to(H.dtype).unsqueeze(-1) * eye  # dead inputs: unit Hessian
    diag = torch.diagonal(H, dim1=-2, dim2=-1)
    mean = diag.mean(-1, keepdim=True).clamp_min(1e-12)
    H = H + damp * mean.unsqueeze(-1) * eye
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead


def _sweep_shared(W: torch.Tensor, U: torch.Tensor, rowweight: torch.Tensor, sparsity: float,
                  block: int = 128) -> torch.Tensor:
    """SparseGPT: prune ``W`` (rows x d) to ``sparsity`` with one shared inverse-Hessian factor
    ``U``; the mask of each block of columns is chosen by the OBS saliency
    ``F_row * w^2 / U_cc^2`` over the whole block, and the error of each pruned column is
    pushed onto the columns not yet visited."""
    W = W.clone()
    rows, cols = W.shape
    diag = torch.diagonal(U)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        score = rowweight[:, None] * W1 ** 2 / diag[i1:i2][None, :] ** 2
        k = int(round(score.numel() * sparsity))
        mask = torch.zeros_like(W1, dtype=torch.bool)
        if k:
            mask.view(-1)[score.flatten().topk(k, largest=False).indices] = True
        for i in range(i2 - i1):
            w = W1[:, i]
            q = torch.where(mask[:, i], torch.zeros_like(w), w)
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        if i2 < cols:
            W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W


def _sweep_batched(W: torch.Tensor, U: torch.Tensor, rowweight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The same for depthwise layers: one row per channel, each with its own small Hessian
    (``U``: C x d x d); the mask is chosen over the whole layer at once."""
    W = W.clone()
    C, d = W.shape
    diag = torch.diagonal(U, dim1=-2, dim2=-1)
    score = rowweight[:, None] * W ** 2 / diag ** 2
    k = int(round(score.numel() * sparsity))
    mask = torch.zeros_like(W, dtype=torch.bool)
    if k:
        mask.view(-1)[score.flatten().topk(k, largest=False).indices] = True
    for i in range(d):
        w = W[:, i]
        q = torch.where(mask[:, i], torch.zeros_like(w), w)
        err = (w - q) / U[:, i, i]
        W[:, i:] -= err[:, None] * U[:, i, i:]
        W[:, i] = q
    return W


# ----------------------------------------------------------------------------- database

@dataclass
class LayerTable:
    """One layer's part of the database. ``zeros[k]`` and ``loss[k]`` per level; level 0 is
    the original tensor; for the others ``masks[k]`` (bit-packed, 1 = kept) and
    ``values[k]`` (the kept, reconstructed weights, float16)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    zeros: list[int]
    loss: list[float]
    masks: list[np.ndarray | None]
    values: list[torch.Tensor | None]
    saliency_scale: torch.Tensor  # same shape as the weight: F_row / [H^-1]_cc^2, for the top-up
    energy: float = 1.0  # 1/2 sum_i F_i w_i H w_i^T of the dense layer (the loss's own scale)

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    def weight(self, level: int, original: torch.Tensor) -> torch.Tensor:
        if level == 0 or self.masks[level] is None:
            return original.detach().clone()
        keep = torch.from_numpy(np.unpackbits(self.masks[level], count=self.numel).astype(bool))
        w = torch.zeros(self.numel, dtype=original.dtype)
        w[keep] = self.values[level].to(original.dtype)
        return w.reshape(self.shape)


@dataclass
class PruneDatabase:
    """Per-layer masks and losses at every level of :data:`LEVELS`; :meth:`apply_` turns a
    global sparsity into per-layer levels and writes the weights."""

    key: str
    levels: tuple[float, ...]
    tables: dict[str, LayerTable]
    total: int  # all conv + linear weights of the model, excluded layers included
    base_zeros: int  # zeros in the excluded layers (they are never changed)
    info: dict = field(default_factory=dict)

    # -- the dynamic program
    def max_sparsity(self, dense: Sequence[str] = (), dense_kinds: Sequence[str] = DENSE_KINDS) -> float:
        """The most zeros :meth:`apply_` can reach with these layers dense, as a fraction."""
        fixed = self._fixed(dense, dense_kinds)
        n = self.base_zeros + sum(t.numel if name not in fixed else t.zeros[0] for name, t in self.tables.items())
        return n / self.total

    def _fixed(self, dense, dense_kinds) -> set[str]:
        return {n for n, t in self.tables.items() if n in set(dense) or t.kind in set(dense_kinds)}

    def solve(self, sparsity: float, dense: Sequence[str] = (),
              dense_kinds: Sequence[str] = DENSE_KINDS, headroom: float | None = HEADROOM) -> tuple[dict[str, int], int]:
        """Per-layer level indices minimising the summed loss with total zeros <= the target
        ``round(sparsity * total)``, as close to it as the level granularity allows (the
        budget is counted in units of ``total / DP_UNITS`` weights, each layer's count
        rounded up, so the solution never exceeds the target), and no level more than
        ``headroom`` above the fraction the free layers need on average (``None``: no
        ceiling). Returns (levels, target)."""
        target = int(round(sparsity * self.total))
        names = list(self.tables)
        fixed = self._fixed(dense, dense_kinds)
        base = self.base_zeros + sum(self.tables[n].zeros[0] for n in names)
        extra = target - base
        choice = {n: 0 for n in names}
        if extra <= 0:
            return choice, target
        unit = max(1, math.ceil(self.total / DP_UNITS))
        B = extra // unit
        free = [n for n in names if n not in fixed]
        prunable = sum(self.tables[n].numel - self.tables[n].zeros[0] for n in free)
        ceiling = extra / max(1, prunable) + headroom if headroom is not None else 1.0
        inf = float("inf")
        dp = np.full(B + 1, inf)
        dp[0] = 0.0
        picks = []
        for n in free:
            t = self.tables[n]
            new = np.full(B + 1, inf)
            arg = np.zeros(B + 1, dtype=np.int8)
            for k in range(len(self.levels)):
                if k and (t.masks[k] is None or self.levels[k] > ceiling + 1e-9):
                    continue
                c = math.ceil(max(t.zeros[k] - t.zeros[0], 0) / unit)
                if c > B:
                    continue
                cand = dp[: B + 1 - c] + t.loss[k]
                better = cand < new[c:]
                new[c:] = np.where(better, cand, new[c:])
                arg[c:] = np.where(better, k, arg[c:])
            dp = new
            picks.append(arg)
        reach = np.flatnonzero(np.isfinite(dp))
        b = int(reach.max())
        for n, arg in zip(reversed(free), reversed(picks)):
            k = int(arg[b])
            choice[n] = k
            t = self.tables[n]
            b -= math.ceil(max(t.zeros[k] - t.zeros[0], 0) / unit)
        return choice, target

    def apply_(self, model: nn.Module, sparsity: float, dense: Sequence[str] = (),
               dense_kinds: Sequence[str] = DENSE_KINDS, headroom: float | None = HEADROOM) -> dict[str, float]:
        """Prune ``model`` (a copy of the model the database was prepared on) in place so that
        exactly ``round(sparsity * total)`` of all its conv + linear weights are zero (or the
        zeros it already had, if more): the levels from :meth:`solve`, then the few remaining
        zeros on the weights of smallest OBS saliency among the layers the DP was free to
        prune. ``dense`` (names) and ``dense_kinds`` (e.g. ``("depthwise", "conv")``) keep
        layers dense; ``headroom`` is :meth:`solve`'s. BatchNorm statistics are not touched: call
        :func:`reset_batchnorm_`. Returns the per-layer fraction of zeros that ran."""
        if not 0.0 <= sparsity <= self.max_sparsity(dense, dense_kinds) + 1e-12:
            raise ValueError(f"sparsity {sparsity:.0%} is out of reach: at most "
                             f"{self.max_sparsity(dense, dense_kinds):.1%} with these layers dense")
        choice, target = self.solve(sparsity, dense, dense_kinds, headroom)
        modules = dict(model.named_modules())
        fixed = self._fixed(dense, dense_kinds)
        with torch.no_grad():
            for n, k in choice.items():
                m = modules[n]
                if k:
                    m.weight.copy_(self.tables[n].weight(k, m.weight))
            # top-up: the zeros that the level granularity left over
            zeros = self.base_zeros + sum(int((modules[n].weight == 0).sum()) for n in self.tables)
            rest = target - zeros
            free = [n for n in self.tables if n not in fixed]
            if rest > 0 and free:
                scores = []
                for n in free:
                    w = modules[n].weight
                    s = (w.detach() ** 2 * self.tables[n].saliency_scale.reshape(w.shape)).flatten()
                    s[w.flatten() == 0] = float("inf")
                    scores.append(s)
                allw = torch.cat(scores)
                rest = min(rest, int(torch.isfinite(allw).sum()))
                idx = allw.topk(rest, largest=False).indices
                flat_mask = torch.zeros(allw.numel(), dtype=torch.bool)
                flat_mask[idx] = True
                off = 0
                for n in free:
                    w = modules[n].weight
                    part = flat_mask[off: off + w.numel()].reshape(w.shape)
                    w.masked_fill_(part, 0.0)
                    off += w.numel()
        return {n: float((modules[n].weight == 0).sum()) / modules[n].weight.numel() for n in self.tables}

    def levels_for(self, sparsity: float, **kw) -> dict[str, float]:
        choice, _ = self.solve(sparsity, **kw)
        return {n: self.levels[k] for n, k in choice.items()}

    # -- persistence
    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save({"version": DB_VERSION, "key": self.key, "levels": self.levels, "total": self.total,
                        "base_zeros": self.base_zeros, "info": self.info,
                        "tables": {n: t.__dict__ for n, t in self.tables.items()}}, tmp)

    @classmethod
    def load(cls, path: Path) -> PruneDatabase | None:
        try:
            d = torch.load(path, weights_only=False)
        except Exception:  # a partial or foreign file: prepare again
            return None
        if not isinstance(d, dict) or d.get("version") != DB_VERSION:
            return None
        tables = {n: LayerTable(**t) for n, t in d["tables"].items()}
        return cls(d["key"], tuple(d["levels"]), tables, d["total"], d["base_zeros"], d.get("info", {}))


def reset_batchnorm_(model: nn.Module, images: Sequence[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's statistics on ``images`` (OBC's "BatchNorm reset")."""
    from .recover import recalibrate_bn_

    return recalibrate_bn_(model, images)


def _layer_loss(dW: torch.Tensor, H: torch.Tensor, G: torch.Tensor, kind: str) -> float:
    """1/2 sum_i G_i dW_i H dW_i^T (batched over channels for depthwise)."""
    dW, H = dW.float(), H.float()
    if kind == "depthwise":
        q = torch.einsum("cd,cde,ce->c", dW, H, dW)
    else:
        q = ((dW @ H) * dW).sum(1)
    return 0.5 * float((G * q.double()).sum())


def prepare_steps(model: nn.Module, calibration: Sequence[torch.Tensor], exclude: Sequence[str] = (),
                  cache_dir: Path | None = None, *, flips: bool = True, fisher_images: int | None = 16,
                  depthwise_images: int = 16,
                  damp: float = 0.1, linear_damp: float = 1.0, batch_size: int = 8, row_fisher: bool = False,
                  probe_images: int = 4, probe_levels: Sequence[int] = (8, 16),
                  probe_kinds: Sequence[str] = ("pointwise", "linear"),
                  isolate: bool = False) -> Iterator[str | PruneDatabase]:
    """Build (or load from ``cache_dir``) the :class:`PruneDatabase` of ``model`` for these
    calibration images (1 x 3 x H x W tensors, preprocessed). Yields progress strings, then
    the database. ``model`` is not changed. Stops cleanly, writing nothing, when the
    consumer stops iterating. ``exclude``: layer names that stay dense.

    ``flips``: add mirror images as views (twice the Hessian rows; on EfficientNet-Lite0 at 50 %
    top-1 -3.5 points instead of -6.2 with 128 images, -15.7 instead of -18.7 with 32);
    ``fisher_images``: how many of the views also get a backward pass for the Fisher
    weights (None: all); ``probe_images`` / ``probe_levels``: images and level indices of
    the measured points that scale each layer's loss curve (0 images: no probes); ``depthwise_images``: how many give the depthwise layers' Hessians
    (each is only k*k wide). ``damp`` / ``linear_damp``: the dampening added to the Hessian's
    diagonal, as a fraction of its mean, for conv and for linear layers. The OBS updates
    learn the calibration images: on three splits of the shared photos (128 calibrate, 372
    scored) the old 0.01 everywhere gave -3.5 / -11.6 / -7.3 points at 50 %, 0.1 with 1.0
    for the classifier (its pooled inputs have fewer rows than it has inputs) -5.4 / -6.7 /
    -5.1, and -38.0 instead of -42.2 on average at 70 %.

    ``isolate``: prepare in a child process (:func:`.isolate.isolated`; it writes the cache too).
    The CLI and the window prepare this way: a process that prepared a database itself timed
    every model 1.1-1.2x slower afterwards (a fragmented heap; sessions 26 and 27)."""
    key = fingerprint(model, calibration, exclude, f"flips={flips} fisher={fisher_images} damp={damp},{linear_damp} rowf={row_fisher} dw={depthwise_images} "
                                                  f"probe={probe_images},{sorted(probe_levels)},{sorted(probe_kinds)}")
    path = Path(cache_dir) / f"prune-obc-{key}.pt" if cache_dir is not None else None
    if path is not None and path.is_file():
        yield "loading the pruning database from the cache"
        db = PruneDatabase.load(path)
        if db is not None and db.key == key:
            yield db
            return
    if not calibration:
        raise ValueError("the pruning database needs calibration images")
    if isolate:
        from .isolate import isolated

        yield from isolated(prepare_steps, model, calibration, exclude, cache_dir, flips=flips,
                            fisher_images=fisher_images, depthwise_images=depthwise_images, damp=damp,
                            linear_damp=linear_damp, batch_size=batch_size, row_fisher=row_fisher,
                            probe_images=probe_images, probe_levels=tuple(probe_levels),
                            probe_kinds=tuple(probe_kinds))
        return
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(False)
    every = _layers(work)
    bns = _following_batchnorm(work)
    layers = _layers(work, exclude)
    total = sum(m.weight.numel() for m in every.values())
    base_zeros = sum(int((m.weight == 0).sum()) for n, m in every.items() if n not in layers)

    # 1. statistics
    stats = _Stats(layers)
    handles = [m.register_forward_hook(stats.forward_hook(n)) for n, m in layers.items()]
    cls_pool = _final_linear_pool(work, layers)
    if cls_pool is not None:
        handles.append(cls_pool[1].register_forward_hook(stats.pool_hook(cls_pool[0])))
    views = _views(calibration, flips)
    nf = len(views) if fisher_images is None else min(fisher_images, len(views))
    # the Fisher pass on an even mix of the images and their mirror images
    order = list(range(len(views)))
    if flips and nf < len(views):
        half = len(calibration)
        first = [i for j in range(half) for i in (j, j + half)][:nf]
        order = first + [i for i in order if i not in set(first)]
    probs_sum = None
    try:
        done = 0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            x = torch.cat([views[j] for j in idx])
            grad = i < nf
            stats.grad = grad
            stats.spatial = i < depthwise_images
            with running():
                if grad:
                    x = x.clone().requires_grad_(True)
                    with torch.enable_grad():
                        logits = work(x)
                        p = F.softmax(logits.detach().double(), 1)
                        y = torch.multinomial(p.float(), 1, generator=torch.Generator().manual_seed(i)).squeeze(1)
                        F.cross_entropy(logits, y, reduction="sum").backward()
                    probs_sum = (p * (1 - p)).sum(0) + (probs_sum if probs_sum is not None else 0)
                else:
                    with torch.no_grad():
                        work(x)
            done += len(idx)
            yield f"preparing pruning database: layer statistics {done}/{len(views)} views"
    finally:
        for h in handles:
            h.remove()

    # 2. database
    tables: dict[str, LayerTable] = {}
    names = list(layers)
    for li, name in enumerate(names):
        m = layers[name]
        kind = stats.kind[name]
        W0 = m.weight.detach().float()
        H = stats.H[name] / stats.rows[name]
        if name in stats.Hspatial:  # the classifier: pooled rows plus a share of spatial rows
            Hs = stats.Hspatial[name] / stats.rows[name]
            H = H + 0.1 * Hs
        G = stats.G.get(name)
        scale = float(G.mean() / stats.images[name]) if G is not None else 1.0
        bn = bns.get(name)
        if bn is not None:  # rows ranked on BatchNorm-folded weights
            r = (bn.weight.detach().double() ** 2 / (bn.running_var.double() + bn.eps))
        else:
            r = torch.ones(W0.shape[0], dtype=torch.float64)
        if row_fisher and G is not None:
            r = G / stats.images[name]
        r = r / r.mean()
        r = r.clamp_min(1e-3)
        G = scale * r  # per output channel: the layer's mean Fisher times the row weight
        if kind == "depthwise":
            Wm = W0.reshape(W0.shape[0], -1)
        elif kind == "grouped":
            Wm = W0.reshape(W0.shape[0], -1)
        else:
            Wm = W0.reshape(W0.shape[0], -1)
        U, dead = _inverse_upper(H, linear_damp if kind == "linear" else damp)
        Uf = U.float()
        Gf = r.float()
        zeros, losses, masks, values = [int((W0 == 0).sum())], [0.0], [None], [None]
        Hd = H.double()
        for k, s in enumerate(LEVELS):
            if k == 0:
                continue
            Wd = Wm.clone()
            if kind == "depthwise":
                Wd[dead] = 0
                Wk = _sweep_batched(Wd, Uf, Gf, s)
            else:
                Wd[:, dead] = 0
                Wk = _sweep_shared(Wd, Uf, Gf, s)
            w16 = Wk.half()
            keep = w16 != 0
            zeros.append(int((~keep).sum()))
            losses.append(_layer_loss(w16.float() - Wm, Hd, G, kind))
            masks.append(np.packbits(keep.flatten().numpy()))
            values.append(w16.flatten()[keep.flatten()].clone())
        diag = torch.diagonal(U, dim1=-2, dim2=-1).float()
        sal = (Gf[:, None] / diag ** 2) if kind == "depthwise" else (Gf[:, None] / diag[None, :] ** 2)
        tables[name] = LayerTable(name, kind, tuple(W0.shape), zeros, losses, masks, values,
                                  sal.reshape(W0.shape).contiguous(), _layer_loss(Wm, Hd, G, kind))
        yield f"preparing pruning database: {li + 1}/{len(names)} layers"

    # 3. calibrate each layer's loss curve by measured points: the network's KL divergence
    #    from the dense model with only this layer pruned, at the probe levels
    probed: dict[str, list[float]] = {}
    levels = sorted(set(probe_levels))
    if probe_images and levels:
        px = torch.cat(list(calibration[:probe_images]))
        with torch.no_grad(), running():
            ref = F.log_softmax(work(px).double(), 1)
        yield "preparing pruning database: reference outputs"
        todo = [n for n in names if tables[n].kind in set(probe_kinds)
                and all(tables[n].loss[k] > 0 for k in levels)]
        for i, name in enumerate(todo):
            m, t = layers[name], tables[name]
            original = m.weight.detach().clone()
            scales = []
            try:
                for k in levels:
                    with torch.no_grad(), running():
                        m.weight.copy_(t.weight(k, original))
                        q = F.log_softmax(work(px).double(), 1)
                    kl = float((ref.exp() * (ref - q)).sum(1).mean())
                    scales.append(max(kl, 1e-12) / t.loss[k])
            finally:
                with torch.no_grad():
                    m.weight.copy_(original)
            probed[name] = scales
            yield f"preparing pruning database: measuring {i + 1}/{len(todo)} layers"
        if probed:
            median = [float(np.median([v[j] for v in probed.values()])) for j in range(len(levels))]
            for name, t in tables.items():
                c = probed.get(name, median)
                t.loss = [v * _interpolate(k, levels, c) for k, v in enumerate(t.loss)]
                t.energy *= c[0]
    db = PruneDatabase(key, LEVELS, tables, total, base_zeros,
                       {"views": len(views), "fisher_views": nf, "probe_scale": probed, "pid": os.getpid()})
    if path is not None:
        db.save(path)
    yield db


def _interpolate(k: int, levels: Sequence[int], values: Sequence[float]) -> float:
    """Geometric interpolation of ``values`` (given at level indices ``levels``) at ``k``,
    constant outside."""
    if k <= levels[0]:
        return values[0]
    for (k1, v1), (k2, v2) in zip(zip(levels, values), zip(levels[1:], values[1:])):
        if k <= k2:
            t = (k - k1) / (k2 - k1)
            return math.exp((1 - t) * math.log(v1) + t * math.log(v2))
    return values[-1]


def prepare(model: nn.Module, calibration: Sequence[torch.Tensor], exclude: Sequence[str] = (),
            cache_dir: Path | None = None, **kw) -> PruneDatabase:
    """:func:`prepare_steps` run to the end."""
    *_, db = prepare_steps(model, calibration, exclude, cache_dir, **kw)
    return db
