"""``optimize(model, config, calibration)``: pruning and quantization in one step.

The caller's model is never changed: everything works on a deep copy.  The long
version, :func:`optimize_steps`, is a generator that yields progress messages
and stops cleanly when the consumer stops iterating (that is how work is cancelled).
"""

from __future__ import annotations

import copy
import shutil
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import OptimizationConfig
from .files import temp_dir
from .measure import write_model_file
from .methods import PRUNE_METHODS
from .prune import prunable_layers, prune_per_layer_, prune_unstructured_
from .quantize import (
    float_layers,
    int8_engine,
    int8_overflows,
    quantize_int8,
    simulate_act8,
    simulate_activation_quant,
    simulate_weight_quant_,
)

SENSITIVITY_IMAGES = 8
# images behind the mixed-precision allocation of bit widths below 8. EfficientNet-Lite0, --bits 4,
# three splits of the shared photos (128 calibrate, 372 scored): with 8 images the allocation
# followed the images it saw, -2.2 / +0.3 / -3.2 points; with 64, -1.1 / -0.3 / -0.8 (--bits 4 in
# 41-46 s instead of 10 s on a 2-core Xeon). The last layer (the classifier) is not taken below the
# target width: its sensitivity, measured on calibration images, underrates what 2 bits cost on
# others (four splits: the classifier at 2-3 bits -3.8 / -1.1 / -0.3 / -0.8, at 4 bits
# -0.5 / -0.3 / -0.5 / -1.1; docs/benchmarks.md, session 23).
BITS_SENSITIVITY_IMAGES = 64
# GPTQ's dampening of the Hessian diagonal, as a fraction of its mean: the classifier's inputs
# (one pooled row per image) need more. Ten splits of the shared photos: KL to float 0.09-0.10
# with GPTQ at 0.1 / 1.0 against 0.13-0.14 with MSE clipping alone, at 4 bits and at W4A8;
# top-1 drop mean -0.5 against -0.7 (4 bits) and -0.9 against -1.0 (W4A8); dampening 0.01
# and 0.3 gave the same KL (docs/benchmarks.md, session 24).
GPTQ_DAMP = 0.1
GPTQ_LINEAR_DAMP = 1.0
NARROW_METHOD = "7-bit weight range"  # int8 on CPUs without VNNI (:func:`.quantize.int8_overflows`)


def relay(steps: Iterator) -> Iterator[str]:
    """Pass a step generator's progress strings on; return its last other value, so that
    ``value = yield from relay(steps)``."""
    value = None
    for step in steps:
        if isinstance(step, str):
            yield step
        else:
            value = step
    return value


class OptimizeError(Exception):
    """The model cannot be optimized this way; the message says why."""


@dataclass
class OptimizedModel:
    """The result of :func:`optimize`.

    ``model`` is what runs; ``float_model`` is the same network before int8
    conversion (pruned, weights rounded), used to count parameters and MACs and to
    write the packed file.  ``quant_bits`` maps layer names to their bit width.
    """

    model: nn.Module
    float_model: nn.Module
    config: OptimizationConfig
    kernels: str = "fp32"
    quant_bits: dict[str, int] = field(default_factory=dict)
    float_fallback: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=list)  # the accuracy-keeping methods that ran
    allocation: dict[str, dict[str, float]] = field(default_factory=dict)  # per-layer sparsity / bits
    sensitivity: dict = field(default_factory=dict)  # {"probe": str, "layers": {name: LayerSensitivity}}
    scales: dict[str, torch.Tensor] = field(default_factory=dict)  # per-channel scales chosen by GPTQ
    file: Path | None = None  # the deployable file, when the runtime needed one (ONNX)
    recovered_steps: int | None = None  # distillation steps in the weights (compare --recover-steps)

    @property
    def simulated(self) -> bool:
        return self.config.simulated

    def write_file(self, folder: Path, name: str = "optimized") -> tuple[Path, int, str]:
        """The file a user would ship, written for real: (path, bytes, format).

        ONNX Runtime: the ONNX file itself; simulated bit widths and zeroed weights: the
        packed format; otherwise a ``torch.save`` state dict (int8 tensors for real int8)."""
        if self.file is not None:
            return self.file, self.file.stat().st_size, "onnx"
        cfg = self.config
        sparse = cfg.sparsity > 0 and not PRUNE_METHODS[cfg.prune_method].structured
        if cfg.simulated or sparse:
            path = Path(folder) / f"{name}.wbpack"
            size, fmt = write_model_file(path, self.float_model, quant_bits=self.quant_bits,
                                         per_channel=cfg.per_channel, sparse=sparse, scales=self.scales)
        else:
            path = Path(folder) / f"{name}.pt"
            size, fmt = write_model_file(path, self.model)
        return path, size, fmt

    @property
    def description(self) -> str:
        """What actually ran, in a few words, for the UI and the table."""
        cfg, parts = self.config, []
        if cfg.device == "cuda":
            parts.append(f"GPU ({self.kernels})")
        if cfg.runtime == "onnxruntime" and not cfg.real_int8:
            parts.append(f"ONNX Runtime float kernels ({self.kernels})")
        if cfg.bits < 32:
            if cfg.real_int8:
                narrow = any(m.startswith(NARROW_METHOD) for m in self.methods)
                parts.append(f"int8 kernels ({self.kernels}{', 7-bit weights: no VNNI' if narrow else ''})")
            elif not cfg.simulated:
                parts.append(f"{cfg.bits}-bit kernels")
            else:
                if cfg.activation_bits:
                    parts.append(f"{cfg.bits}-bit weights, {cfg.activation_bits}-bit activations simulated "
                                 "(float kernels with quantize steps: its latency is the simulation's)")
                else:
                    what = "weights" if cfg.quant_scheme == "weights" else "weights+activations"
                    parts.append(f"{cfg.bits}-bit {what} simulated (float kernels)")
        if cfg.sparsity:
            if cfg.prune_method == "structured-hidden":
                parts.append(f"{cfg.sparsity:.0%} of MACs removed (hidden channels): smaller dense layers")
            elif cfg.prune_method == "structured":
                parts.append(f"{cfg.sparsity:.0%} of channels removed: smaller dense layers")
            else:
                parts.append(f"{cfg.sparsity:.0%} zeros in dense kernels: no speedup expected")
        return "; ".join(parts) or "unchanged (fp32)"


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (m.groups == 1 and m.kernel_size == (1, 1))


def prune_obs_(model: nn.Module, sparsity: float, calibration, exclude: Sequence[str],
               result: OptimizedModel) -> Iterator[str]:
    """Prune the 1x1 convolutions and linear layers at one rate, chosen so that the zeros
    make up ``sparsity`` of all conv/linear weights, each with SparseGPT reconstruction.
    Depthwise and the other spatial convolutions (under 3 % of EfficientNet-Lite's weights,
    and the most sensitive per weight) are kept."""
    from .recover import layer_hessians, sparsegpt_

    every = prunable_layers(model, exclude)
    layers = {n: m for n, m in every.items() if _is_pointwise(m)}
    total = sum(m.weight.numel() for m in every.values())
    size = sum(m.weight.numel() for m in layers.values())
    rate = min(0.95, sparsity * total / max(size, 1))
    yield "collecting layer inputs for reconstruction"
    hessians = layer_hessians(model, layers, calibration)
    for i, (name, m) in enumerate(layers.items()):
        sparsegpt_(m.weight, hessians[name], rate)
        yield f"pruning with reconstruction: {i + 1}/{len(layers)} layers"
    result.allocation["sparsity"] = {n: round(rate, 4) if n in layers else 0.0 for n in every}
    result.methods.append("SparseGPT reconstruction")
    if rate < sparsity * total / max(size, 1):
        result.notes.append(f"reached {rate * size / total:.0%} zeros: the 1x1 and linear layers are at 95 %")


def prune_structured_(model: nn.Module, sparsity: float, example: torch.Tensor,
                      exclude: Sequence[str] = (), round_to: int = 1) -> Iterator[str]:
    """Remove whole channels (L2 magnitude) with torch-pruning, in place; yields progress."""
    import torch_pruning as tp

    names = dict(model.named_modules())
    ignored = [names[n] for n in exclude if n in names]
    ignored += [m for m in model.modules() if isinstance(m, nn.Linear)]  # keep the classes
    pruner = tp.pruner.MagnitudePruner(
        model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=sparsity,
        ignored_layers=ignored, round_to=round_to if round_to > 1 else None)
    groups = list(pruner.step(interactive=True))
    for i, group in enumerate(groups):
        group.prune()
        yield f"pruning channels: {i + 1}/{len(groups)} groups"


def optimize_steps(model: nn.Module, config: OptimizationConfig, calibration: Sequence[torch.Tensor],
                   workdir: Path | None = None) -> Iterator[str | OptimizedModel]:
    """Yields progress strings, then the :class:`OptimizedModel`. ``model`` is not changed.
    ``workdir`` receives the ONNX files of the onnxruntime runtime."""
    if isinstance(model, torch.jit.ScriptModule) and not config.is_identity:
        raise OptimizeError("TorchScript models can be measured but not optimized; load a state dict instead")
    work = copy.deepcopy(model).eval()
    result = OptimizedModel(work, work, config)
    if config.sparsity:
        yield from _prune(work, model, config, calibration, result)
        work = result.float_model  # a structured method may have built a new, smaller network
    if config.bits < 32:
        if config.real_int8 and config.runtime == "onnxruntime":
            result.quant_bits = {n: 8 for n in prunable_layers(work, config.exclude)}
        elif config.real_int8:
            yield from _int8(work, config, calibration, result)
        else:
            yield from _simulated_bits_here(result, (id(model), config.sparsity, config.prune_method), calibration)
    if config.runtime == "onnxruntime":
        if workdir is None:  # a folder of its own, removed with the model that needs its file
            workdir = temp_dir("onnx")
            yield from _to_onnxruntime(result, calibration, workdir)
            weakref.finalize(result.model, shutil.rmtree, workdir, True)
        else:
            yield from _to_onnxruntime(result, calibration, Path(workdir))
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise OptimizeError("no CUDA GPU is available to this process; use device cpu")
        half = config.bits == 16
        result.model = CudaModel(result.model, half)
        result.kernels = f"cuda-{'fp16' if half else 'fp32'}"
    yield result


def _sensitivity(model, calibration, kind, value, exclude, key) -> Iterator[str | dict]:
    from .sensitivity import sensitivity_steps

    n = BITS_SENSITIVITY_IMAGES if kind == "bits" else SENSITIVITY_IMAGES
    yield from sensitivity_steps(model, calibration[:n], kind, value, exclude, key=key)


def _prune(work, original, config: OptimizationConfig, calibration, result: OptimizedModel) -> Iterator[str]:
    yield f"pruning ({config.prune_method}, {config.sparsity:.0%})"
    yield from PRUNE_METHODS[config.prune_method].run()(work, original, config, calibration, result)
    if config.bn_recalibration and calibration and not PRUNE_METHODS[config.prune_method].own_batchnorm:
        from .recover import recalibrate_bn_if_better_

        yield "re-estimating BatchNorm statistics"
        if recalibrate_bn_if_better_(work, original, calibration):
            result.methods.append("BatchNorm re-estimation")
        else:
            result.notes.append("BatchNorm re-estimation skipped: on the calibration images it moved the "
                                "output further from the original's")


# pruning handlers, registered in methods.PRUNE_METHODS: (work, original, config, calibration, result)
def prune_global(work, original, config, calibration, result) -> Iterator[str]:
    prune_unstructured_(work, config.sparsity, True, config.exclude)
    yield "pruned"


def prune_per_layer(work, original, config, calibration, result) -> Iterator[str]:
    prune_unstructured_(work, config.sparsity, False, config.exclude)
    yield "pruned"


def prune_structured(work, original, config, calibration, result) -> Iterator[str]:
    if not calibration:
        raise OptimizeError("structured pruning needs one example image")
    yield from prune_structured_(work, config.sparsity, calibration[0], config.exclude, config.round_to)


_OBC_DATABASES: dict = {}  # (model, calibration, exclude) -> PruneDatabase: slider moves skip the disk


def prune_obc(work, original, config, calibration, result) -> Iterator[str]:
    """OBC-style: the per-layer database is prepared once (cached in memory and on disk), then
    a sparsity is a dynamic program over the per-layer losses plus a stitch of stored weights."""
    from .process import cache_dir
    from .prune_obc import HEADROOM, prepare_steps

    if not calibration:
        raise OptimizeError("the OBC pruning database needs calibration images")
    key = (id(original), tuple(id(x) for x in calibration), tuple(config.exclude))
    db = _OBC_DATABASES.get(key, (None,))[-1]  # the entry holds the objects: their ids stay theirs
    if db is None:
        db = yield from relay(prepare_steps(original, calibration, config.exclude, cache_dir=cache_dir(),
                                            isolate=True))  # in a child process: the timings here stay true
        _OBC_DATABASES.clear()  # one at a time: a database of Lite0 holds about 120 MB
        _OBC_DATABASES[key] = (original, list(calibration), db)
    reach = db.max_sparsity()
    if config.sparsity > reach:
        result.notes.append(f"reached {reach:.1%} zeros: the most with depthwise and stem layers dense")
    per_layer = db.apply_(work, min(config.sparsity, reach))
    result.allocation["sparsity"] = {n: round(p, 4) for n, p in per_layer.items()}
    result.methods += ["OBS reconstruction (per-layer mask database)",
                       f"sparsity allocation by dynamic programming (ceiling: average + {100 * HEADROOM:.0f} points)"]
    result.notes.append("depthwise and stem layers kept dense (too sensitive for their size)")
    yield "pruned"


def prune_hidden(work, original, config, calibration, result) -> Iterator[str]:
    """Hidden channels of inverted-residual blocks, least-squares project convs (prune_channels),
    in a child process (:func:`.isolate.isolated`: the latencies timed here stay true)."""
    from .isolate import isolated
    from .prune_channels import HIDDEN_MULTIPLE, prune_hidden_channels_steps

    if len(calibration) < 2:
        raise OptimizeError("structured pruning with reconstruction needs calibration images (32 or more)")
    out = yield from relay(isolated(prune_hidden_channels_steps, work, 1.0 - config.sparsity, list(calibration),
                                    round_to=max(config.round_to, HIDDEN_MULTIPLE), exclude=config.exclude,
                                    sensitivity_images=max(1, min(32, len(calibration) // 2))))
    result.model = result.float_model = out["model"]
    result.allocation["kept_channels"] = {n: round(f, 4) for n, f in out["allocation"].items()}
    result.methods += ["per-block ratios from measured loss", "least-squares reconstruction (OBS channel choice)"]
    result.notes.append(f"MACs kept: {out['macs'] / out['original_macs']:.1%}")


def prune_obs(work, original, config, calibration, result) -> Iterator[str]:
    if not calibration:
        raise OptimizeError("reconstruction (OBS) needs calibration images")
    yield from prune_obs_(work, config.sparsity, calibration, config.exclude, result)


def prune_sensitivity(work, original, config, calibration, result) -> Iterator[str]:
    if not calibration:
        raise OptimizeError("sensitivity allocation needs calibration images")
    from .sensitivity import allocate_sparsity, first_and_last

    sens = yield from relay(_sensitivity(work, calibration, "prune", config.sparsity, config.exclude, id(original)))
    result.sensitivity = {"probe": f"pruned to {config.sparsity:.0%}", "layers": sens}
    first, _ = first_and_last(work)
    per_layer = allocate_sparsity(sens, config.sparsity, config.sparsity, fixed={first: 0.0})
    prune_per_layer_(work, per_layer)
    result.allocation["sparsity"] = {n: round(p, 4) for n, p in per_layer.items()}
    result.methods.append("sensitivity allocation (sparsity)")


def _int8(work, config: OptimizationConfig, calibration, result: OptimizedModel) -> Iterator[str]:
    """Here, not in a child process: with int8 calibrated in a child, ``compare`` read the same
    (15.7-16.4 ms against 16.1-16.4, three runs) and the job took 3 s more (docs, session 28)."""
    if not calibration:
        raise OptimizeError("int8 needs calibration images")
    result.quant_bits = {n: 8 for n in prunable_layers(work, config.exclude)}
    final = yield from relay(quantize_int8(work, calibration, config.per_channel, config.exclude))
    result.model = final
    result.kernels = f"int8-{int8_engine()}"
    result.float_fallback = float_layers(final)
    for name in result.float_fallback:
        result.quant_bits.pop(name, None)
    if result.float_fallback:
        result.notes.append("float fallback (no fast int8 kernel): " + ", ".join(result.float_fallback))
    _say_if_narrow(result)


def _say_if_narrow(result: OptimizedModel) -> None:
    if int8_overflows():
        result.methods.append(f"{NARROW_METHOD} (this CPU has no VNNI)")
        result.notes.append("int8 weights in [-63, 63]: without VNNI the int8 kernels add pairs of products in "
                            "16 bits, which full-range weights overflow")


def _simulated_bits_here(result: OptimizedModel, key, calibration) -> Iterator[str]:
    """:func:`_simulated_bits` in a child process (:func:`.isolate.isolated`: the latencies timed
    here stay true); the layer sensitivities this process has cached go with it and come back."""
    from . import sensitivity
    from .isolate import isolated

    known = dict(sensitivity._CACHE)
    out, found = yield from relay(isolated(_simulated_bits_steps, result, key, list(calibration), known))
    result.__dict__.update(out.__dict__)
    sensitivity._CACHE.update(found)


def _simulated_bits_steps(result: OptimizedModel, key, calibration, known: dict) -> Iterator:
    """Yields progress, then (``result`` with its bits simulated, the layer sensitivities it measured)."""
    from . import sensitivity

    sensitivity._CACHE.update(known)
    yield from _simulated_bits(result.float_model, key, result.config, calibration, result)
    yield result, {k: v for k, v in sensitivity._CACHE.items() if k not in known}


def _simulated_bits(work, key, config: OptimizationConfig, calibration, result: OptimizedModel) -> Iterator[str]:
    layers = prunable_layers(work, config.exclude)
    bits = {n: config.bits for n in layers}
    overrides = {n: b for n, b in config.layer_bits if n in layers}
    if config.allocation == "sensitivity" and config.bits < 8 and calibration:
        from .sensitivity import allocate_bits, first_and_last

        sens = yield from relay(_sensitivity(work, calibration, "bits", config.bits, config.exclude, key))
        result.sensitivity = {"probe": f"rounded to {config.bits} bits", "layers": sens}
        first, last = first_and_last(work)
        bits = allocate_bits(sens, config.bits, config.bits, fixed={first: 8, **overrides},
                             floor={last: config.bits})
        result.allocation["bits"] = dict(bits)
        result.methods.append("mixed precision from sensitivity")
    bits.update(overrides)
    bits = {n: b for n, b in bits.items() if b < 32}
    originals = {n: layers[n].weight.detach().clone() for n in bits}
    adaround = config.rounding == "adaround" and config.per_channel and bool(calibration)
    means = None
    if config.bias_correction and calibration and config.bits < 16 and not adaround:
        from .recover import input_means

        yield "measuring layer inputs for bias correction"
        means = input_means(work, {n: layers[n] for n in bits}, calibration)
    rounded: set[str] = set()  # layers whose weights are already on their grid
    if adaround:  # AdaRound fits each layer's output, offsets included: no bias correction after it
        from .adaround import adaround_steps

        reference = copy.deepcopy(work)  # targets: this float (maybe pruned) model
        high = {n: b for n, b in bits.items() if b >= 8}
        simulate_weight_quant_(work, high, True, "mse")
        learned = {n: b for n, b in bits.items() if b < 8}
        scales = yield from relay(adaround_steps(work, learned, calibration, config.exclude, reference=reference))
        result.scales.update(scales)
        rounded = set(bits)
        result.methods.append("AdaRound rounding")
    gptq_layers = {}
    if config.rounding == "gptq" and config.per_channel and calibration:
        gptq_layers = {n: layers[n] for n, b in bits.items() if b < 8 and _is_pointwise(layers[n])}
    if gptq_layers:
        from .recover import gptq_, layer_hessians, mse_clip_scale

        yield "collecting layer inputs for GPTQ"
        hessians = layer_hessians(work, gptq_layers, calibration)
        for i, (name, m) in enumerate(gptq_layers.items()):
            result.scales[name] = mse_clip_scale(m.weight, bits[name]).reshape(-1)
            gptq_(m.weight, hessians[name], bits[name], result.scales[name],
                  damp=GPTQ_LINEAR_DAMP if isinstance(m, nn.Linear) else GPTQ_DAMP)
            yield f"GPTQ rounding: {i + 1}/{len(gptq_layers)} layers"
        result.methods.append("GPTQ rounding")
        rounded = set(gptq_layers)
    rest = {n: b for n, b in bits.items() if n not in rounded}
    simulate_weight_quant_(work, rest, config.per_channel, "nearest" if config.rounding == "nearest" else "mse")
    if config.rounding not in ("nearest", "adaround") and config.bits < 8:
        result.methods.append("MSE-optimal clipping")
    if means is not None:
        from .recover import bias_correct_

        bias_correct_(work, originals, means)
        result.methods.append("bias correction")
    result.quant_bits = bits
    result.kernels = f"fp32 (simulated {config.bits}-bit)"
    if config.activation_bits:
        if not calibration:
            raise OptimizeError("activation quantization needs calibration images")
        if config.activation_bits == 8:
            result.model = yield from relay(simulate_act8(work, bits, calibration, config.per_channel, config.exclude))
        else:
            result.model = yield from relay(simulate_activation_quant(work, config.activation_bits, list(calibration),
                                                                      config.per_channel, weight_bits=bits,
                                                                      exclude=config.exclude))
        result.kernels = f"fp32 (simulated W{config.bits}A{config.activation_bits})"
    elif config.quant_scheme == "weights-activations":
        result.notes.append(f"{config.bits}-bit: weights rounded; activations stay float")


class CudaModel(nn.Module):
    """A copy of the model on the GPU (float32, or real float16): takes and returns CPU tensors,
    so latency includes the transfers a user's pipeline would have."""

    device_name = "cuda"

    def __init__(self, model: nn.Module, half: bool = False):
        super().__init__()
        self.dtype = torch.float16 if half else torch.float32
        self.inner = copy.deepcopy(model).to("cuda", self.dtype).eval()
        self.device_name = f"cuda ({torch.cuda.get_device_name()})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.to("cuda", self.dtype, non_blocking=True)).float().cpu()


def _to_onnxruntime(result: OptimizedModel, calibration: Sequence[torch.Tensor], workdir: Path) -> Iterator[str]:
    from .deploy import OrtModel, export_onnx, quantize_onnx_int8

    if not calibration:
        raise OptimizeError("exporting to ONNX needs one example image")
    config = result.config
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"optimized-{abs(hash(config))}"
    yield "exporting to ONNX"
    path = export_onnx(result.float_model, calibration[0], workdir / f"{stem}.onnx")
    result.kernels = "onnxruntime-fp32"
    if config.real_int8:
        yield f"quantizing with ONNX Runtime ({len(calibration)} calibration images)"
        path = quantize_onnx_int8(path, workdir / f"{stem}-int8.onnx", calibration, config.per_channel)
        result.kernels = "onnxruntime-int8"
        _say_if_narrow(result)
    result.model = OrtModel(path)
    result.file = path


def optimize(model: nn.Module, config: OptimizationConfig, calibration: Sequence[torch.Tensor] = (),
             workdir: Path | None = None) -> OptimizedModel:
    """Prune and/or quantize a copy of ``model``; see :func:`optimize_steps`."""
    *_, result = optimize_steps(model, config, calibration, workdir)
    return result
