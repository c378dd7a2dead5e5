"""Keeping accuracy after compression: BatchNorm re-estimation, bias correction,
MSE-optimal clipping of low-bit weights, and recovery by distillation.

References
----------
- BatchNorm re-estimation after pruning: Li et al., "EagleEye: Fast Sub-net Evaluation
  for Efficient Neural Network Pruning", ECCV 2020 (adaptive BN).
- Bias correction: Nagel et al., "Data-Free Quantization Through Weight Equalization
  and Bias Correction", ICCV 2019 (empirical variant, from calibration activations).
- MSE-optimal clipping: Banner et al., "Post training 4-bit quantization of convolutional
  networks for rapid-deployment", NeurIPS 2019 (here: a per-channel grid search).
- Distillation: Hinton et al., "Distilling the Knowledge in a Neural Network", 2015.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .locks import running


def _batches(inputs: Sequence[torch.Tensor], size: int = 16) -> Iterator[torch.Tensor]:
    for i in range(0, len(inputs), size):
        yield torch.cat(list(inputs[i:i + size]))


class _Stop(Exception):
    """Ends a forward pass once the wanted inputs are captured."""


def layer_inputs(model: nn.Module, layer: nn.Module, batches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The inputs of ``layer`` when ``model`` runs each batch (each pass stops there)."""
    out: list[torch.Tensor] = []

    def pre(_module, inputs):
        out.append(inputs[0])
        raise _Stop

    handle = layer.register_forward_pre_hook(pre)
    try:
        with torch.no_grad(), running():
            for b in batches:
                try:
                    model(b)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return out


def recalibrate_bn_(model: nn.Module, calibration: Sequence[torch.Tensor]) -> int:
    """Re-estimate every BatchNorm's running statistics on ``calibration`` (in place).
    Returns how many BatchNorm layers were updated."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or not calibration:
        return 0
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
        m.train()
    with torch.no_grad(), running():
        for batch in _batches(calibration):
            model(batch)
    for m, (momentum, training) in zip(bns, saved):
        m.momentum = momentum
        m.train(training)
    return len(bns)


def _kl_to(reference: nn.Module, model: nn.Module, calibration: Sequence[torch.Tensor]) -> float:
    total, n = 0.0, 0
    with torch.no_grad(), running():
        for batch in _batches(calibration):
            p = F.softmax(reference(batch), 1).clamp_min(1e-12)
            q = F.softmax(model(batch), 1).clamp_min(1e-12)
            total += (p * (p.log() - q.log())).sum().item()
            n += len(batch)
    return total / n


def recalibrate_bn_if_better_(model: nn.Module, reference: nn.Module, calibration: Sequence[torch.Tensor]) -> bool:
    """Re-estimate BatchNorm statistics (in place) only if that brings the model's outputs
    closer to ``reference``'s on the calibration images: from a handful of images the
    re-estimated statistics can be worse than the original ones when little was pruned."""
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k}
    before = _kl_to(reference, model, calibration)
    if not recalibrate_bn_(model, calibration):
        return False
    if _kl_to(reference, model, calibration) < before:
        return True
    model.load_state_dict(saved, strict=False)
    return False


def mse_clip_scale(w: torch.Tensor, bits: int, grid: int = 20) -> torch.Tensor:
    """Per output channel, the symmetric scale whose rounding error ||W - Q(W)||^2 is
    smallest, searched over clipping ratios 0.5 .. 1.0 of the channel's max |w|."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().reshape(w.shape[0], -1)
    absmax = flat.abs().amax(1).clamp(min=1e-12)
    best_err = torch.full_like(absmax, float("inf"))
    best = absmax / qmax
    for ratio in torch.linspace(0.5, 1.0, grid):
        scale = absmax * ratio / qmax
        q = torch.clamp(torch.round(flat / scale[:, None]), -qmax, qmax) * scale[:, None]
        err = (q - flat).pow(2).sum(1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, scale, best)
    return best.reshape(-1, *([1] * (w.dim() - 1)))


def input_means(model: nn.Module, layers: dict[str, nn.Module],
                calibration: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean input per channel of each conv/linear layer over the calibration images."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(module, inputs, _output):
            x = inputs[0]
            dims = [0, 2, 3] if x.dim() == 4 else [0]
            sums[name] = sums.get(name, 0) + x.sum(dims)
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad(), running():
            for batch in _batches(calibration):
                model(batch)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / counts[n] for n in sums}


def bias_correct_(model: nn.Module, original_weights: dict[str, torch.Tensor],
                  means: dict[str, torch.Tensor]) -> None:
    """Remove the mean output shift that rounding the weights caused:
    bias -= (W_q - W) . E[x], per output channel (padding at the borders ignored)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, w0 in original_weights.items():
            m, mean = modules[name], means.get(name)
            if mean is None:
                continue
            dw = m.weight - w0
            if isinstance(m, nn.Conv2d):
                g = m.groups
                dw = dw.sum((2, 3))  # out x in/groups
                mean_g = mean.reshape(g, -1)  # groups x in/groups
                shift = (dw.reshape(g, -1, dw.shape[1]) * mean_g[:, None, :]).sum(2).reshape(-1)
            else:
                shift = dw @ mean
            if m.bias is None:
                m.bias = nn.Parameter(torch.zeros(m.weight.shape[0]))
            m.bias.sub_(shift)


def random_crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random crop (60-100 % of the side, resized back) of each image, mirrored at random."""
    out = []
    h, w = x.shape[-2:]
    for img in x.split(1):
        scale = 0.6 + 0.4 * torch.rand(1, generator=gen).item()
        ch, cw = max(1, int(h * scale)), max(1, int(w * scale))
        top = int(torch.randint(0, h - ch + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - cw + 1, (1,), generator=gen))
        v = F.interpolate(img[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear", align_corners=False)
        out.append(torch.flip(v, [3]) if torch.rand(1, generator=gen).item() < 0.5 else v)
    return torch.cat(out)


def _kl_batches(teacher_logp: list[torch.Tensor], student: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad(), running():
        total = sum(float((t.exp() * (t - F.log_softmax(student(b), 1))).sum()) for t, b in zip(teacher_logp, batches))
    return total / max(1, sum(len(b) for b in batches))


def distilled_steps(student: nn.Module, teacher: nn.Module, images: Sequence[torch.Tensor],
                    **kwargs) -> Iterator[str | tuple[nn.Module, int]]:
    """:func:`distill_steps` on a copy of ``student``: its progress strings, then the copy and
    the number of training steps in the weights it ended with (a step generator for
    :func:`.isolate.isolated`, which gives the training a process of its own)."""
    student = copy.deepcopy(student)
    kept = 0
    for step in distill_steps(student, teacher, images, **kwargs):
        if isinstance(step, str):
            yield step
        elif "kept_steps" in step:
            kept = step["kept_steps"]
    yield student, kept


def distill_steps(student: nn.Module, teacher: nn.Module, images: Sequence[torch.Tensor], *,
                  seconds: float = 60.0, exact_steps: int | None = None, lr: float = 1e-5, batch_size: int = 16,
                  temperature: float = 1.0, held_out: float = 0.125, check_every: float = 30.0,
                  seed: int = 0) -> Iterator[str | dict]:
    """Fine-tune ``student`` in place towards ``teacher``'s outputs on ``images`` (no labels),
    within a time bound. Zeroed weights stay zero (pruning masks are re-applied).

    Every step draws a batch of the images in a shuffled order, each a fresh random crop and
    mirror (a fixed set of views is learned by heart within minutes); the teacher scores the
    same views. BatchNorm statistics stay as calibrated and dropout is off. ``held_out`` of
    the images (with 8 or more images) are never trained on: every
    ``check_every`` seconds and at the end the student's KL divergence from the teacher on
    them is measured, and the student ends with the weights that had the lowest (the
    starting weights if training never improved on them).

    ``exact_steps``: train exactly that many steps instead, with no time bound and no choice of
    weights (the same images held out, so the same batches): this replays a time-bounded run
    whose last dict said ``kept_steps`` = ``exact_steps``, e.g. the window's recovery in ``compare``.
    Yields progress strings and, after every step, a dict with the step's loss; at the end a
    dict with ``kept_steps``, the training steps in the weights the student ends with."""
    images = list(images)
    masks = {n: (p != 0) for n, p in student.named_parameters() if p.dim() > 1 and (p == 0).any()}
    n_check = max(1, int(len(images) * held_out)) if len(images) >= 8 and held_out > 0 else 0
    check = list(_batches(images[len(images) - n_check:], batch_size)) if n_check and exact_steps is None else []
    train = images[:len(images) - n_check]
    with torch.no_grad(), running():
        check_t = [F.log_softmax(teacher(b), 1) for b in check]
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    student.eval()  # BatchNorm statistics as calibrated, no dropout; gradients still flow
    best = _kl_batches(check_t, student, check) if check else None
    best_state = {k: v.clone() for k, v in student.state_dict().items()} if check else None
    start, step, order, last_check, best_step = time.monotonic(), 0, [], time.monotonic(), 0
    kept = None
    try:
        while (time.monotonic() - start < seconds) if exact_steps is None else step < exact_steps:
            if len(order) < batch_size:
                order += torch.randperm(len(train), generator=gen).tolist()
            idx, order = order[:batch_size], order[batch_size:]
            x = random_crop_flip(torch.cat([train[i] for i in idx]), gen)
            with torch.no_grad(), running():
                target = F.softmax(teacher(x) / temperature, 1)
            with running():
                logits = student(x)
            loss = F.kl_div(F.log_softmax(logits / temperature, 1), target, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                for n, p in student.named_parameters():
                    if n in masks:
                        p.mul_(masks[n])
            step += 1
            now = time.monotonic()
            if check and (now - last_check >= check_every or now - start >= seconds):
                kl = _kl_batches(check_t, student, check)
                if kl < best:
                    best, best_step = kl, step
                    best_state = {k: v.clone() for k, v in student.state_dict().items()}
                last_check = time.monotonic()
            elapsed = now - start
            of = f"/{exact_steps}" if exact_steps is not None else f", {elapsed:.0f}/{seconds:.0f} s"
            yield f"distilling: step {step}{of}, loss {loss.item():.4f}"
            yield {"step": step, "loss": loss.item(), "elapsed": elapsed, "held_out_kl": best}
        kept = step
    finally:
        if best_state is not None:
            if not _kl_batches(check_t, student, check) <= best:  # worse, or NaN
                student.load_state_dict(best_state)
                kept = best_step
        student.eval()
    yield {"step": step, "kept_steps": kept, "held_out_kl": best}


def layer_hessians(model: nn.Module, layers: dict[str, nn.Module],
                   calibration: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """H = X X^T / n of each 1x1-conv / linear layer's inputs over the calibration images
    (columns of X: pixels for a conv, samples for a linear layer)."""
    acc: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(module, inputs, _output):
            x = inputs[0]
            x = x.permute(1, 0, 2, 3).reshape(x.shape[1], -1) if x.dim() == 4 else x.t()
            x = x.double()
            acc[name] = acc.get(name, 0) + x @ x.t()
            counts[name] = counts.get(name, 0) + x.shape[1]
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    try:
        with torch.no_grad(), running():
            for batch in _batches(calibration, 8):
                model(batch)
    finally:
        for h in handles:
            h.remove()
    return {n: acc[n] / counts[n] for n in acc}


def _obs_sweep_(weight: torch.Tensor, hessian: torch.Tensor, compress, block: int = 128,
                damp: float = 0.01) -> None:
    """The column sweep shared by SparseGPT and GPTQ, in place on ``weight`` (out x in[, 1, 1]).

    ``compress(W1, Hinv1, i1)`` is called for each block of columns (the first is column
    ``i1``) and returns ``f(i, w)``, which gives column ``i``'s compressed values; each
    column's error is pushed onto the columns not yet compressed through the upper Cholesky
    factor of the dampened inverse Hessian (the Optimal Brain Surgeon update). Inputs that
    never fire get zero weights."""
    shape = weight.shape
    W = weight.detach().reshape(shape[0], -1).double().clone()
    H = hessian.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * torch.diag(H).mean() * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.shape[1]
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        column = compress(W1, Hinv1, i1)
        for i in range(i2 - i1):
            w = W1[:, i]
            q = column(i, w)
            Q1[:, i] = q
            err = (w - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    W = W.float()
    W[W.abs() < torch.finfo(torch.float32).tiny] = 0.0  # no subnormal weights
    with torch.no_grad():
        weight.copy_(W.reshape(shape))


def sparsegpt_(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, block: int = 128,
               damp: float = 0.01) -> None:
    """Prune ``weight`` (out x in, or out x in x 1 x 1) to ``sparsity`` in place and update the
    remaining weights to compensate, column by column, with the inverse Hessian of the layer's
    inputs: SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be
    Accurately Pruned in One-Shot", ICML 2023), itself the Optimal Brain Surgeon update of
    OBC (Frantar & Alistarh, NeurIPS 2022). The mask is chosen per block of columns."""

    def compress(W1, Hinv1, _i1):
        score = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
        k = int(score.numel() * sparsity)
        mask = torch.zeros_like(W1, dtype=torch.bool)
        if k:
            mask.view(-1)[score.flatten().topk(k, largest=False).indices] = True
        return lambda i, w: torch.where(mask[:, i], torch.zeros_like(w), w)

    _obs_sweep_(weight, hessian, compress, block, damp)


def gptq_(weight: torch.Tensor, hessian: torch.Tensor, bits: int, scale: torch.Tensor, block: int = 128,
          damp: float = 0.01) -> None:
    """Round ``weight`` (out x in[, 1, 1]) to ``bits`` with per-channel ``scale``, column by
    column, pushing each column's rounding error onto the columns not yet rounded through
    the inverse Hessian of the layer's inputs: GPTQ (Frantar et al., "GPTQ: Accurate
    Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023).
    Weights that are zero (pruned) stay zero: their share of the error goes to the others."""
    qmax = 2 ** (bits - 1) - 1
    s = scale.reshape(-1).double()
    zero = (weight.detach() == 0).reshape(weight.shape[0], -1)

    def compress(W1, Hinv1, i1):
        pruned = zero[:, i1:i1 + W1.shape[1]]
        return lambda i, w: torch.where(pruned[:, i], torch.zeros_like(w),
                                        torch.clamp(torch.round(w / s), -qmax, qmax) * s)

    _obs_sweep_(weight, hessian, compress, block, damp)
