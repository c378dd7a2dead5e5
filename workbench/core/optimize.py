"""``optimize(model, config, calibration)``: pruning and quantization in one step.

The caller's model is never changed: everything works on a deep copy.  The long
version, :func:`optimize_steps`, is a generator that yields progress messages
and stops cleanly when the consumer stops iterating (that is how work is cancelled).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .config import OptimizationConfig
from .measure import write_model_file
from .quantize import (
    QUANT_LAYERS,
    float_layers,
    int8_engine,
    quantize_int8,
    simulate_activation_quant,
    simulate_weight_quant_,
)


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
    file: Path | None = None  # the deployable file, when the runtime needed one (ONNX)

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
        sparse = cfg.sparsity > 0 and cfg.prune_method != "structured"
        if cfg.simulated or sparse:
            path = Path(folder) / f"{name}.wbpack"
            size, fmt = write_model_file(path, self.float_model, quant_bits=self.quant_bits,
                                         per_channel=cfg.per_channel, sparse=sparse)
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
                parts.append(f"int8 kernels ({self.kernels})")
            elif not cfg.simulated:
                parts.append(f"{cfg.bits}-bit kernels")
            else:
                what = "weights" if cfg.quant_scheme == "weights" else "weights+activations"
                parts.append(f"{cfg.bits}-bit {what} simulated (float kernels)")
        if cfg.sparsity:
            if cfg.prune_method == "structured":
                parts.append(f"{cfg.sparsity:.0%} of channels removed: smaller dense layers")
            else:
                parts.append(f"{cfg.sparsity:.0%} zeros in dense kernels: no speedup expected")
        return "; ".join(parts) or "unchanged (fp32)"


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
            for m in layers.values():
                w = m.weight
                k = int(sparsity * w.numel())
                if k:
                    threshold = w.abs().flatten().kthvalue(k).values
                    w.mul_(w.abs() > threshold)


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
        yield f"pruning ({config.prune_method}, {config.sparsity:.0%})"
        if config.prune_method == "structured":
            if not calibration:
                raise OptimizeError("structured pruning needs one example image")
            yield from prune_structured_(work, config.sparsity, calibration[0], config.exclude, config.round_to)
        else:
            prune_unstructured_(work, config.sparsity, config.prune_method == "unstructured-global", config.exclude)
    if config.bits < 32:
        result.quant_bits = {n: config.bits for n in prunable_layers(work, config.exclude)}
        if config.real_int8 and config.runtime == "onnxruntime":
            pass  # quantized by ONNX Runtime below
        elif config.real_int8:
            if not calibration:
                raise OptimizeError("int8 needs calibration images")
            final = None
            for step in quantize_int8(work, calibration, config.per_channel, config.exclude):
                if isinstance(step, str):
                    yield step
                else:
                    final = step
            result.model = final
            result.kernels = f"int8-{int8_engine()}"
            result.float_fallback = float_layers(final)
            for name in result.float_fallback:
                result.quant_bits.pop(name, None)
            if result.float_fallback:
                result.notes.append("float fallback (no fast int8 kernel): " + ", ".join(result.float_fallback))
        else:
            simulate_weight_quant_(work, config.bits, config.per_channel, config.exclude)
            result.kernels = f"fp32 (simulated {config.bits}-bit)"
            if config.quant_scheme == "weights-activations" and config.bits < 8:
                if not calibration:
                    raise OptimizeError("activation quantization needs calibration images")
                final = None
                for step in simulate_activation_quant(work, config.bits, list(calibration), config.per_channel):
                    if isinstance(step, str):
                        yield step
                    else:
                        final = step
                result.model = final
            elif config.quant_scheme == "weights-activations":
                result.notes.append(f"{config.bits}-bit: weights rounded; activations stay float")
    if config.runtime == "onnxruntime":
        yield from _to_onnxruntime(result, calibration, Path(workdir or tempfile.mkdtemp(prefix="workbench-")))
    if config.device == "cuda":
        if not torch.cuda.is_available():
            raise OptimizeError("no CUDA GPU is available to this process; use device cpu")
        half = config.bits == 16
        result.model = CudaModel(result.model, half)
        result.kernels = f"cuda-{'fp16' if half else 'fp32'}"
    yield result


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
    result.model = OrtModel(path)
    result.file = path


def optimize(model: nn.Module, config: OptimizationConfig, calibration: Sequence[torch.Tensor] = (),
             workdir: Path | None = None) -> OptimizedModel:
    """Prune and/or quantize a copy of ``model``; see :func:`optimize_steps`."""
    *_, result = optimize_steps(model, config, calibration, workdir)
    return result
