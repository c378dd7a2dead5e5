"""Structured pruning of the hidden channels of inverted-residual blocks, with
least-squares reconstruction: a physically smaller network that still works.

What is pruned: in each inverted-residual block (1x1 expand conv -> BN -> act ->
depthwise conv -> BN -> act -> 1x1 project conv -> BN) the *hidden* (expanded)
channels: rows of the expand conv, channels of the depthwise conv, columns of the
project conv. The block's input and output channels (the residual stream) are never
touched, so residual additions and every layer outside the blocks keep their shapes.

How, per block:

- channel choice and new project weights: Optimal Brain Surgeon for whole input
  columns of the project conv (the error-aware greedy of ThiNet, Luo et al., ICCV 2017,
  and He et al., "Channel Pruning for Accelerating Very Deep Neural Networks", ICCV
  2017, solved exactly): start from the ridge least-squares solution of the project conv
  (BatchNorm folded in, with a bias), repeatedly drop the hidden channel whose removal
  raises the reconstruction error least and update the remaining columns, which leaves
  the least-squares solution on the kept channels;
- targets and inputs: the dense model's project output (compensated for the drift of the
  residual stream) from the *pruned* model's inputs to the block, block after block
  (AdaPrune / BRECQ-style: compressed inputs, dense targets);
- per-block keep ratios: each block is pruned alone at a few ratios, the KL divergence
  of the network's output from the original's is measured on calibration images, and a
  dynamic program over the measured (interpolated) losses picks the ratios whose summed
  loss is smallest under the MAC budget (as OBC's allocation, Frantar & Alistarh 2022).

The bias of the new project conv goes into its BatchNorm's running mean, so the module
types stay as they were (Conv2d without bias, BatchNorm2d).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .locks import running
from .recover import layer_inputs, random_crop_flip

# kept hidden channels are multiples of this. EfficientNet-Lite0 at 70 % of MACs, 2 threads, on an
# Intel Xeon with AVX-512 (16 floats a vector), three splits: realized / theoretical speedup
# 0.82 / 0.76 / 0.81 with multiples of 8, 0.86 / 0.86 / 0.83 with 16; top-1 -7.8 and -7.5 points.
HIDDEN_MULTIPLE = 16


@dataclass
class HiddenGroup:
    """One inverted-residual block: the names of its six layers, relative to the model."""

    block: str
    expand_conv: str
    expand_bn: str
    dw_conv: str
    dw_bn: str
    project_conv: str
    project_bn: str
    channels: int
    macs_per_channel: int = 0  # MACs of expand + depthwise + project per hidden channel
    residual: bool = False  # block output = block input + project output
    chained: bool = False  # its input is the previous group's output


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else (prefix or name)


def _match(leaves: list[tuple[str, nn.Module]]) -> bool:
    kinds = [nn.Conv2d, nn.BatchNorm2d] * 3
    if len(leaves) != 6 or any(not isinstance(m, k) for (_, m), k in zip(leaves, kinds)):
        return False
    (_, e), (_, ebn), (_, d), (_, dbn), (_, p), (_, pbn) = leaves
    mid = e.out_channels
    return (e.kernel_size == (1, 1) and e.groups == 1 and ebn.num_features == mid
            and d.in_channels == d.out_channels == d.groups == mid and dbn.num_features == mid
            and p.kernel_size == (1, 1) and p.groups == 1 and p.in_channels == mid
            and pbn.num_features == p.out_channels)


def find_hidden_groups(model: nn.Module, exclude: Sequence[str] = ()) -> list[HiddenGroup]:
    """The inverted-residual blocks of ``model`` whose hidden channels can be pruned:
    the outermost modules whose conv/BN layers are exactly expand, depthwise and
    project convs each followed by a BatchNorm. Blocks named in ``exclude``, or holding
    a layer named there, are left out."""
    skip = set(exclude)
    groups: list[HiddenGroup] = []
    taken: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(t + ".") for t in taken):
            continue
        leaves = [(_join(name, n), m) for n, m in module.named_modules()
                  if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        if not _match(leaves):
            continue
        taken.append(name)
        names = [n for n, _ in leaves]
        if name in skip or any(n in skip for n in names):
            continue
        groups.append(HiddenGroup(name, *names, channels=leaves[0][1].out_channels))
    return groups


def _modules(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _profile_(model: nn.Module, groups: list[HiddenGroup], example: torch.Tensor) -> None:
    """Fill in MACs per hidden channel, residual and chaining by running one example."""
    mods = _modules(model)
    seen: dict[str, dict] = {g.block: {} for g in groups}
    macs: dict[str, int] = {}
    handles = []

    def conv_hook(name):
        def fn(m, inputs, output):
            macs[name] = output.numel() // output.shape[0] * (m.in_channels // m.groups) * math.prod(m.kernel_size)
        return fn

    def block_hook(g):
        def fn(m, inputs, output):
            seen[g.block]["in"], seen[g.block]["out"] = inputs[0], output
        return fn

    def pbn_hook(g):
        def fn(m, inputs, output):
            seen[g.block]["proj"] = output
        return fn

    for g in groups:
        for n in (g.expand_conv, g.dw_conv, g.project_conv):
            handles.append(mods[n].register_forward_hook(conv_hook(n)))
        handles.append(mods[g.block].register_forward_hook(block_hook(g)))
        handles.append(mods[g.project_bn].register_forward_hook(pbn_hook(g)))
    try:
        with torch.no_grad(), running():
            model(example[:1])
    finally:
        for h in handles:
            h.remove()
    previous = None
    for g in groups:
        s = seen[g.block]
        g.macs_per_channel = sum(macs[n] for n in (g.expand_conv, g.dw_conv, g.project_conv)) // g.channels
        x, out, proj = s["in"], s["out"], s["proj"]
        g.residual = out.shape == x.shape and torch.allclose(out - proj, x, atol=1e-4, rtol=1e-4)
        g.chained = previous is not None and x is previous
        previous = out


def augmented_views(images: Sequence[torch.Tensor], views: int, seed: int = 0) -> list[torch.Tensor]:
    """``views`` views of each 1xCxHxW image: itself, its mirror image, then random crops
    (60-100 % of the side, resized back) mirrored at random."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for x in images:
        out.append(x)
        if views > 1:
            out.append(torch.flip(x, [3]))
        for _ in range(views - 2):
            out.append(random_crop_flip(x, gen))
    return out


def _batches(inputs: Sequence[torch.Tensor], size: int) -> list[torch.Tensor]:
    return [torch.cat(list(inputs[i:i + size])) for i in range(0, len(inputs), size)]


def _inputs_of(model: nn.Module, block: str, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs of module ``block`` when ``model`` runs each batch (stops there)."""
    return layer_inputs(model, _modules(model)[block], batches)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """BN(z) = a * z + c in eval mode."""
    a = bn.running_var.double().add(bn.eps).rsqrt()
    if bn.weight is not None:
        a = a * bn.weight.double()
    c = -bn.running_mean.double() * a
    if bn.bias is not None:
        c = c + bn.bias.double()
    return a, c


def _effective_project(mods, g: HiddenGroup) -> torch.Tensor:
    """The project conv with its BatchNorm folded in: cout x (mid + 1), last column the bias."""
    conv, bn = mods[g.project_conv], mods[g.project_bn]
    a, c = _bn_affine(bn)
    w = conv.weight.detach().double().reshape(conv.out_channels, -1) * a[:, None]
    bias = c + (a * conv.bias.detach().double() if conv.bias is not None else 0)
    return torch.cat([w, bias[:, None]], 1)


class _Stats:
    """Running sums for the least-squares problem of one project conv:
    G = [H 1]^T [H 1] and C = [H 1]^T Y over all pixels, H the hidden activations
    (inputs of the project conv), Y the target outputs of its BatchNorm."""

    def __init__(self):
        self.G = None
        self.C = None
        self.n = 0

    def add(self, hidden: torch.Tensor, target: torch.Tensor) -> None:
        h = hidden.permute(0, 2, 3, 1).reshape(-1, hidden.shape[1]).double()
        y = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1]).double()
        h = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], 1)
        G, C = h.t() @ h, h.t() @ y
        self.G = G if self.G is None else self.G + G
        self.C = C if self.C is None else self.C + C
        self.n += h.shape[0]

    def __add__(self, other: _Stats) -> _Stats:
        out = _Stats()
        out.G, out.C, out.n = self.G + other.G, self.C + other.C, self.n + other.n
        return out

    def problem(self, damp: float, prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, C) of the ridge problem min ||[H 1] W^T - Y||^2 / n + sum_i damp G_ii ||W_i - P_i||^2
        (columns i of the hidden channels; ``prior`` P: cout x (mid + 1), else zero),
        whose solution is W^T = G^-1 C."""
        G = self.G / self.n
        C = self.C / self.n
        mid = G.shape[0] - 1
        diag = torch.diagonal(G)[:mid]
        reg = damp * diag + 1e-8 * diag.mean().clamp_min(1e-12) + 1e-12
        G = G.clone()
        G[range(mid), range(mid)] += reg
        G[mid, mid] += 1e-10
        if prior is not None:
            C = C.clone()
            C[:mid] += reg[:, None] * prior[:, :mid].t()
        return G, C


def obs_column_order(G: torch.Tensor, W: torch.Tensor, removable: int, stop: int,
                     steps: int = 96) -> list[int]:
    """Greedy Optimal Brain Surgeon removal of whole input columns of ``W`` (out x in)
    under the input Gram matrix ``G`` (in x in, already damped): the order in which the
    first ``removable`` columns go, until ``stop`` of them remain. Each step drops the
    columns whose removal raises tr((W - W0) G (W - W0)^T) least (about ``steps``
    steps in all, one column at a time near the end) and moves the others to compensate."""
    Hinv = torch.cholesky_inverse(torch.linalg.cholesky(G))
    W = W.clone()
    alive = torch.ones(removable, dtype=torch.bool)
    order: list[int] = []
    total = removable - stop
    chunk = max(1, total // steps)
    while len(order) < total:
        n = min(chunk, total - len(order))
        d = torch.diagonal(Hinv)[:removable]
        score = (W[:, :removable] ** 2).sum(0) / d.clamp_min(1e-30)
        score[~alive] = float("inf")
        R = torch.topk(score, n, largest=False).indices
        HRR = Hinv[R][:, R]
        HRinv = torch.linalg.pinv(HRR, hermitian=True)
        rows = Hinv[R]  # n x in
        W -= W[:, R] @ HRinv @ rows
        Hinv -= rows.t() @ HRinv @ rows
        W[:, R] = 0
        Hinv[R, :] = 0
        Hinv[:, R] = 0
        Hinv[R, R] = 1.0  # keeps the diagonal positive; these columns are dead
        alive[R] = False
        order += [int(c) for c in R[score[R].argsort()]]
    return order


def _solve_kept(G: torch.Tensor, C: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Ridge least squares on the kept hidden channels (and the bias): cout x (k + 1)."""
    idx = torch.cat([kept, torch.tensor([G.shape[0] - 1])])
    sub = G[idx][:, idx]
    return torch.linalg.solve(sub, C[idx]).t()


def _write_project_(mods, g: HiddenGroup, kept: torch.Tensor, W: torch.Tensor, mask_only: bool) -> None:
    """Put folded weights ``W`` (cout x (k + 1)) on the kept columns of the project conv.
    ``mask_only``: keep the layer's shape and zero the other columns (for probes)."""
    conv, bn = mods[g.project_conv], mods[g.project_bn]
    a, _ = _bn_affine(bn)
    a = torch.where(a.abs() < 1e-12, torch.full_like(a, 1e-12), a)
    w = W[:, :-1] / a[:, None]
    bias = W[:, -1]
    with torch.no_grad():
        if mask_only:
            full = torch.zeros(conv.out_channels, conv.in_channels, dtype=torch.float64)
            full[:, kept] = w
            conv.weight.copy_(full.reshape(conv.weight.shape))
        else:
            conv.weight.data = w.float().reshape(conv.out_channels, len(kept), 1, 1).contiguous()
        if conv.bias is not None:
            conv.bias.zero_()
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(bias)
        bn.running_mean.copy_((beta - bias) / a)


def _shrink_conv(conv: nn.Conv2d, idx: torch.Tensor, out: bool, inp: bool, depthwise: bool) -> nn.Conv2d:
    w = conv.weight.detach()
    if out:
        w = w[idx]
    if inp and not depthwise:
        w = w[:, idx]
    cout = w.shape[0]
    cin = cout if depthwise else w.shape[1] * conv.groups
    new = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    cout if depthwise else conv.groups, conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[idx] if out else conv.bias.detach())
    new.train(conv.training)
    return new


def _shrink_bn(bn: nn.BatchNorm2d, idx: torch.Tensor) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight.detach()[idx])
            new.bias.copy_(bn.bias.detach()[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    new.train(bn.training)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(_modules(model)[parent] if parent else model, child, new)


def shrink_group_(model: nn.Module, g: HiddenGroup, kept: torch.Tensor) -> None:
    """Physically keep only the hidden channels ``kept`` (sorted indices) of group ``g``."""
    mods = _modules(model)
    _replace(model, g.expand_conv, _shrink_conv(mods[g.expand_conv], kept, True, False, False))
    _replace(model, g.expand_bn, _shrink_bn(mods[g.expand_bn], kept))
    _replace(model, g.dw_conv, _shrink_conv(mods[g.dw_conv], kept, True, True, True))
    _replace(model, g.dw_bn, _shrink_bn(mods[g.dw_bn], kept))
    _replace(model, g.project_conv, _shrink_conv(mods[g.project_conv], kept, False, True, False))


def _keep_levels(channels: int, round_to: int, fractions: Sequence[float]) -> list[int]:
    levels = set()
    for f in fractions:
        k = max(round_to, int(round(channels * f / round_to)) * round_to)
        if k < channels:
            levels.add(k)
    return sorted(levels, reverse=True)


def _kl(reference: torch.Tensor, logits: torch.Tensor) -> float:
    p = F.softmax(reference, 1)
    return (p * (F.log_softmax(reference, 1) - F.log_softmax(logits, 1))).sum(1).mean().item()


def allocate_channels(groups: list[HiddenGroup], losses: dict[str, dict[int, float]], budget: float,
                      round_to: int, units: int = 4000) -> dict[str, int]:
    """Kept hidden channels per group, multiples of ``round_to`` (or all), whose MACs
    (sum of kept * macs_per_channel) stay within ``budget`` and whose summed loss,
    linearly interpolated between the measured levels, is smallest: a dynamic program
    over the budget cut into ``units`` steps (costs rounded up, so the budget holds)."""
    full = sum(g.channels * g.macs_per_channel for g in groups)
    if budget >= full:
        return {g.block: g.channels for g in groups}
    unit = budget / units
    INF = float("inf")
    dp = torch.zeros(units + 1, dtype=torch.float64)
    choices = []
    for g in groups:
        measured = dict(losses.get(g.block, {}))
        measured[g.channels] = 0.0
        ks = sorted(measured)
        options = sorted({*range(round_to, g.channels, round_to), g.channels})
        options = [k for k in options if k >= ks[0]]  # no extrapolation below the last level measured
        opt_loss, opt_cost = [], []
        running_max = 0.0
        for k in sorted(options, reverse=True):  # loss never falls as channels go
            if k == ks[0]:
                loss = measured[k]
            else:
                hi = min(x for x in ks if x >= k)
                lo = max(x for x in ks if x <= k)
                t = 0.0 if hi == lo else (k - lo) / (hi - lo)
                loss = measured[lo] * (1 - t) + measured[hi] * t
            running_max = max(running_max, loss)
            opt_loss.append(running_max)
            opt_cost.append(math.ceil(k * g.macs_per_channel / unit - 1e-9))
        opt_k = sorted(options, reverse=True)
        new = torch.full_like(dp, INF)
        arg = torch.full((units + 1,), -1, dtype=torch.long)
        for i, (loss, cost) in enumerate(zip(opt_loss, opt_cost)):
            if cost > units:
                continue
            cand = torch.full_like(dp, INF)
            cand[cost:] = dp[:units + 1 - cost] + loss
            better = cand < new
            new = torch.where(better, cand, new)
            arg = torch.where(better, torch.full_like(arg, i), arg)
        dp = new
        choices.append((opt_k, opt_cost, arg))
    if not math.isfinite(dp[units].item()):
        raise ValueError("the MAC target is below what the smallest blocks allow")
    alloc, j = {}, units
    for g, (opt_k, opt_cost, arg) in zip(reversed(groups), reversed(choices)):
        i = int(arg[j])
        alloc[g.block] = opt_k[i]
        j -= opt_cost[i]
    return alloc


def prune_hidden_channels_steps(model: nn.Module, target_macs: float, calibration: Sequence[torch.Tensor],
                                round_to: int = HIDDEN_MULTIPLE, exclude: Sequence[str] = (), *, reconstruct: bool = True,
                                compensate: bool = True, views: int = 4, sensitivity_images: int = 32,
                                fractions: Sequence[float] = (0.75, 0.5, 0.25), damp: float = 0.05,
                                prior: bool = True, refit_unpruned: bool = False, batch_size: int = 16,
                                allocation: dict[str, float] | None = None
                                ) -> Iterator[str | dict]:
    """Prune the hidden channels of the inverted-residual blocks of a copy of ``model`` so
    that it keeps ``target_macs`` (a fraction) of the original's MACs; ``model`` is not
    changed. Yields progress strings, then ``{"model", "allocation" (block: kept
    fraction), "macs", "original_macs", "seconds"}``. Stop iterating to cancel.

    ``calibration``: 1xCxHxW tensors; each is used in ``views`` views (itself, mirrored,
    random crops: see :func:`augmented_views`). Block sensitivities are measured on the
    first ``sensitivity_images`` images, with reconstructions fitted on the others only
    (so that blocks whose least-squares fit does not generalise are not found cheap).
    ``reconstruct``: least-squares project weights (else: the same channels, the project
    weights just sliced, then BatchNorm statistics re-estimated: the usual recipe).
    ``compensate``: in residual blocks the target is the dense block output minus the
    pruned model's block input, so each block also corrects the drift of the ones before.
    ``damp``, ``prior``: ridge term damp * G_ii per hidden channel, pulling towards the
    original (BatchNorm-folded) weights when ``prior``, else towards zero.
    ``refit_unpruned``: also re-solve blocks that keep all their channels. Off by default:
    on EfficientNet-Lite0 re-solving the unpruned 7x7 blocks (1152 inputs, errors that are
    one per image rather than per pixel) fits the calibration images and costs 6 points of
    top-1 on other images.
    ``allocation`` (block: kept fraction) skips the sensitivity measurement."""
    from .measure import count_macs

    if not calibration:
        raise ValueError("structured pruning needs calibration images")
    start = time.monotonic()
    dense = copy.deepcopy(model).eval()
    work = copy.deepcopy(model).eval()
    example = calibration[0][:1]
    original_macs = count_macs(dense, example)
    groups = find_hidden_groups(work, exclude)
    if not groups:
        raise ValueError("no inverted-residual blocks (expand, depthwise, project) to prune")
    _profile_(dense, groups, example)
    fixed = original_macs - sum(g.channels * g.macs_per_channel for g in groups)
    budget = target_macs * original_macs - fixed
    calibration = list(calibration)
    n_probe = min(sensitivity_images, len(calibration) // 2) if allocation is None else 0
    probe_batches = _batches(augmented_views(calibration[:n_probe], views, 1), batch_size) if n_probe else []
    rest_batches = _batches(augmented_views(calibration[n_probe:], views, 2), batch_size)
    batches = probe_batches + rest_batches

    # 1. least-squares statistics of every project conv on the dense model, one pass
    yield f"collecting activations of {len(groups)} blocks on {len(calibration)} x {views} views"
    dmods = _modules(dense)
    stats = {g.block: _Stats() for g in groups}
    held_out = {g.block: _Stats() for g in groups}  # the views of all but the probe images
    hidden: dict[str, torch.Tensor] = {}
    handles = []
    for g in groups:
        def pre(m, inputs, g=g):
            hidden[g.block] = inputs[0]

        def post(m, inputs, output, g=g):
            stats[g.block].add(hidden.pop(g.block), output)
        handles += [dmods[g.project_conv].register_forward_pre_hook(pre),
                    dmods[g.project_bn].register_forward_hook(post)]
    try:
        with torch.no_grad(), running():
            for i, b in enumerate(batches):
                if i == len(probe_batches):
                    held_out = stats
                    stats = {g.block: _Stats() for g in groups}
                dense(b)
                yield f"collecting activations: {i + 1}/{len(batches)} batches"
        if probe_batches:
            stats, held_out = {b: held_out[b] + stats[b] for b in stats}, stats
        else:
            held_out = stats
    finally:
        for h in handles:
            h.remove()

    # 2. per-block loss at a few keep levels, each block pruned alone
    losses: dict[str, dict[int, float]] = {}
    if allocation is None:
        probe = torch.cat(calibration[:n_probe])
        with torch.no_grad(), running():
            reference = dense(probe)
        probe_model = copy.deepcopy(dense)
        pmods = _modules(probe_model)
        for gi, g in enumerate(groups):
            levels = _keep_levels(g.channels, round_to, fractions)
            if not levels or budget >= sum(x.channels * x.macs_per_channel for x in groups):
                continue
            inputs = _inputs_of(probe_model, g.block, [probe])[0]
            G, C = held_out[g.block].problem(damp, _effective_project(dmods, g) if prior else None)
            W = torch.linalg.solve(G, C).t()
            order = obs_column_order(G, W, g.channels, min(levels))
            saved = {k: v.clone() for k, v in pmods[g.block].state_dict().items()}
            block_mod = pmods[g.block]
            losses[g.block] = {}
            for k in levels:
                removed = set(order[:g.channels - k])
                kept = torch.tensor([c for c in range(g.channels) if c not in removed])
                _write_project_(pmods, g, kept, _solve_kept(G, C, kept), mask_only=True)
                with torch.no_grad(), running():
                    logits = _tail(probe_model, block_mod, block_mod(inputs), probe)
                losses[g.block][k] = max(_kl(reference, logits), 0.0)
                block_mod.load_state_dict(saved)
                yield f"measuring block sensitivity: {g.block} at {k}/{g.channels} channels ({gi + 1}/{len(groups)})"
        keep = allocate_channels(groups, losses, budget, round_to)
    else:
        keep = {g.block: max(round_to, min(g.channels, int(round(g.channels * allocation.get(g.block, 1.0)
                                                                  / round_to)) * round_to)) for g in groups}
        if allocation:
            keep.update({g.block: g.channels for g in groups if allocation.get(g.block, 1.0) >= 1.0})

    # 3. block by block on the pruned model's inputs, dense targets
    yield "pruning and reconstructing block by block"
    wmods = _modules(work)
    xp = xd = None
    for gi, g in enumerate(groups):
        k = keep[g.block]
        if not reconstruct and k == g.channels:
            continue
        if reconstruct and (xp is None or not g.chained):
            xp = _inputs_of(work, g.block, batches)
            xd = _inputs_of(dense, g.block, batches)
        st, dense_out = _Stats(), []
        wblock, dblock = wmods[g.block], dmods[g.block]
        if reconstruct and k == g.channels and not refit_unpruned:
            with torch.no_grad(), running():
                dense_out = [dblock(b) for b in xd]
            kept = torch.arange(g.channels)
        elif reconstruct:
            captured: dict[str, torch.Tensor] = {}
            hh = wmods[g.project_conv].register_forward_pre_hook(lambda m, i, c=captured: c.__setitem__("h", i[0]))
            hd = dmods[g.project_bn].register_forward_hook(lambda m, i, o, c=captured: c.__setitem__("y", o))
            try:
                with torch.no_grad(), running():
                    for bp, bd in zip(xp, xd):
                        dense_out.append(dblock(bd))
                        y = captured["y"]
                        if g.residual and compensate:
                            y = y + (bd - bp)
                        wblock(bp)
                        st.add(captured["h"], y)
            finally:
                hh.remove()
                hd.remove()
            G, C = st.problem(damp, _effective_project(dmods, g) if prior else None)
            if k < g.channels:
                W = torch.linalg.solve(G, C).t()
                order = obs_column_order(G, W, g.channels, k)
                kept = torch.tensor(sorted(set(range(g.channels)) - set(order)))
            else:
                kept = torch.arange(g.channels)
            _write_project_(wmods, g, kept, _solve_kept(G, C, kept), mask_only=True)
        else:
            G, C = stats[g.block].problem(damp)
            W = _effective_project(dmods, g)
            order = obs_column_order(G, W, g.channels, k)
            kept = torch.tensor(sorted(set(range(g.channels)) - set(order)))
        if k < g.channels:
            shrink_group_(work, g, kept)
            wmods = _modules(work)
        yield f"pruned {g.block}: {k}/{g.channels} hidden channels ({gi + 1}/{len(groups)})"
        if reconstruct and gi + 1 < len(groups) and groups[gi + 1].chained:
            with torch.no_grad(), running():
                xp = [wmods[g.block](b) for b in xp]
            xd = dense_out
    if not reconstruct:
        from .recover import recalibrate_bn_

        yield "re-estimating BatchNorm statistics"
        recalibrate_bn_(work, [b for b in batches])
    work.eval()
    macs = count_macs(work, example)
    yield {"model": work, "allocation": {g.block: keep[g.block] / g.channels for g in groups},
           "macs": macs, "original_macs": original_macs, "seconds": time.monotonic() - start,
           "losses": {b: {k: round(v, 6) for k, v in d.items()} for b, d in losses.items()}}


def _tail(model: nn.Module, block: nn.Module, output: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The model's logits when ``block`` outputs ``output`` (for ``images``). Runs the
    layers before ``block`` on a single image only, when the rest of the network allows."""
    def hook(m, inputs, out):
        return output

    h = block.register_forward_hook(hook)
    try:
        try:
            logits = model(images[:1])
            if logits.shape[0] == output.shape[0]:
                return logits
        except RuntimeError:
            pass
        return model(images)
    finally:
        h.remove()


def prune_hidden_channels(model: nn.Module, target_macs: float, calibration: Sequence[torch.Tensor],
                          **kwargs) -> dict:
    """:func:`prune_hidden_channels_steps` run to the end: its final dict."""
    result = None
    for step in prune_hidden_channels_steps(model, target_macs, calibration, **kwargs):
        if isinstance(step, dict):
            result = step
    return result
