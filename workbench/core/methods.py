"""Every method the workbench offers, registered in one place.

The CLI's choices and help, the window's combo boxes and tooltips, and the optimizer's
dispatch all read these tables, so adding a method means adding one entry here and its
handler (a ``module:function`` path, imported only when the method runs, so that
listing methods costs no torch import).

A pruning handler has the signature ``handler(work, original, config, calibration, result)``
and is a generator of progress strings that changes ``work`` in place.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    key: str  # the value in the config, the CLI and the JSON
    label: str  # what the window shows
    help: str  # one sentence: what it does and what it trades
    handler: str = ""  # "module:function" relative to workbench.core, for methods that run code
    structured: bool = False  # pruning: removes whole channels (smaller dense layers), no zeros left
    own_batchnorm: bool = False  # pruning: sets BatchNorm itself (no re-estimation afterwards)

    def run(self):
        module, _, name = self.handler.partition(":")
        return getattr(importlib.import_module(f"workbench.core.{module}"), name)


def _table(*methods: Method) -> dict[str, Method]:
    return {m.key: m for m in methods}


PRUNE_METHODS = _table(
    Method("unstructured-obc", "unstructured, OBC database + allocation",
           "per-layer sparsities from a dynamic program over each layer's measured loss, weights "
           "reconstructed (OBS); depthwise and stem dense; prepared once per model and source (about a "
           "minute), then instant", "optimize:prune_obc", own_batchnorm=True),
    Method("unstructured-global", "unstructured, global magnitude",
           "zeros the smallest weights over all layers with one threshold; zeros in dense kernels save no time",
           "optimize:prune_global"),
    Method("unstructured-obs", "unstructured, reconstructed (SparseGPT)",
           "prunes the 1x1 and linear layers with SparseGPT's weight reconstruction; depthwise layers kept",
           "optimize:prune_obs"),
    Method("unstructured-sensitivity", "unstructured, sensitivity allocation",
           "per-layer sparsity from each layer's measured sensitivity, then magnitude",
           "optimize:prune_sensitivity"),
    Method("unstructured", "unstructured, per layer",
           "the same sparsity in every layer, smallest magnitudes first", "optimize:prune_per_layer"),
    Method("structured-hidden", "structured: hidden channels + least squares",
           "removes expanded channels of inverted-residual blocks (never the residual stream), per-block "
           "ratios from measured loss, project convs re-solved by least squares; the slider is the share of "
           "MACs removed; physically smaller, really faster", "optimize:prune_hidden", structured=True,
           own_batchnorm=True),
    Method("structured", "structured channels (L2 magnitude)",
           "removes whole channels by L2 magnitude (torch-pruning), no reconstruction: physically smaller "
           "layers, really faster, but costs much accuracy", "optimize:prune_structured", structured=True),
)

QUANT_SCHEMES = _table(
    Method("weights", "weights only", "rounds the weights; activations stay float"),
    Method("weights-activations", "weights + activations",
           "rounds weights and activations: real int8 kernels at 8 bits, simulated below (costs accuracy)"),
)

ROUNDINGS = _table(
    Method("nearest", "round to nearest", "max-abs scale, nearest integer"),
    Method("mse", "MSE-optimal clipping", "per-channel clipping that minimises the rounding error"),
    Method("gptq", "GPTQ", "MSE clipping plus GPTQ's error feedback on 1x1 and linear layers"),
    Method("adaround", "AdaRound", "MSE clipping, then every weight rounded up or down as learned layer by "
           "layer on the calibration images (slow: minutes)"),
)

ALLOCATIONS = _table(
    Method("sensitivity", "mixed precision from sensitivity",
           "below 8 bits, sensitive layers get more bits and robust ones fewer, at the same mean"),
    Method("uniform", "one bit width", "every layer at the chosen bit width"),
)

RUNTIMES = _table(
    Method("torch", "runtime: torch", "PyTorch eager, or FX int8 kernels"),
    Method("onnxruntime", "runtime: ONNX Runtime (as deployed)",
           "exported to ONNX and run in ONNX Runtime: the latency after deployment"),
)

# accuracy-keeping steps that are switched on and off in the config (names as in the JSON `methods`)
RECOVERY = _table(
    Method("bn_recalibration", "BatchNorm re-estimation",
           "after pruning, re-estimates BatchNorm statistics when that brings outputs closer to the original"),
    Method("bias_correction", "bias correction", "removes the mean output shift that rounding weights causes"),
    Method("distillation", "recover accuracy (distillation)",
           "fine-tunes the optimized float model on the source's images towards the original's outputs"),
)


# the best measured pruning (docs/benchmarks.md: 50 % unstructured on EfficientNet-Lite0)
DEFAULT_PRUNE_METHOD = "unstructured-obc"
# the best measured rounding below 8 bits (docs/benchmarks.md: 4-bit weights, session 24)
DEFAULT_ROUNDING = "gptq"


def default_scheme(bits: int) -> str:
    """The one rule for the scheme when the user has not picked one: real int8 (weights and
    activations) at 8 bits; weights only below, where simulated low-bit activations break models."""
    return "weights-activations" if bits == 8 else "weights"
