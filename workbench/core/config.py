"""The one value that says what the user asked for."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

PRUNE_METHODS = ("unstructured-obs", "unstructured", "unstructured-global", "unstructured-sensitivity", "structured")
QUANT_SCHEMES = ("weights", "weights-activations")
BIT_STOPS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
RUNTIMES = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
ROUNDINGS = ("nearest", "mse", "gptq")
ALLOCATIONS = ("uniform", "sensitivity")
CONFIG_VERSION = 1


class ConfigError(ValueError):
    """An invalid setting; the message is for the user."""


@dataclass(frozen=True)
class OptimizationConfig:
    """Pruning and quantization settings. Frozen: build a new one to change it.

    sparsity: share of weights (unstructured) or channels (structured) removed, 0 to 0.95.
    prune_method: "unstructured-obs" (1x1 convolutions and linear layers pruned at one rate
        with SparseGPT's Optimal-Brain-Surgeon reconstruction; depthwise and first convolution
        kept), "unstructured" (magnitude, per layer), "unstructured-global" (magnitude, one
        threshold), "unstructured-sensitivity" (per-layer sparsity allocated from measured
        sensitivity, then magnitude), "structured" (channels).
    bits: 32 (off), 16, or 8 down to 2.
    quant_scheme: "weights" or "weights-activations".
    per_channel: one scale per output channel (else per tensor).
    exclude: layer names that are neither pruned nor quantized.
    round_to: structured pruning keeps channel counts a multiple of this (1 = any).
    runtime: "torch" (eager / FX int8) or "onnxruntime" (exported to ONNX, as deployed).
    device: where the optimized model runs: "cpu", or "cuda" (float and 16-bit only).
    bn_recalibration: re-estimate BatchNorm statistics after pruning.
    bias_correction: remove the mean output shift caused by rounding weights.
    rounding: "nearest" (max-abs scale), "mse" (per-channel clipping that minimises error), or
        "gptq" (MSE clipping, plus GPTQ's error feedback on 1x1 convolutions and linear layers).
    allocation: "sensitivity": a bit width below 8 is distributed over the layers by measured
        sensitivity (mixed precision, the same mean bits); "uniform": one bit width for all.
    layer_bits: per-layer bit widths that override everything else, as (name, bits) pairs.
    """

    sparsity: float = 0.0
    prune_method: str = "unstructured-global"
    bits: int = 32
    quant_scheme: str = "weights-activations"
    per_channel: bool = True
    exclude: tuple[str, ...] = field(default_factory=tuple)
    round_to: int = 1
    runtime: str = "torch"
    device: str = "cpu"
    bn_recalibration: bool = True
    bias_correction: bool = True
    rounding: str = "mse"
    allocation: str = "sensitivity"
    layer_bits: tuple[tuple[str, int], ...] = field(default_factory=tuple)

    def __post_init__(self):
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= self.sparsity <= 0.95:
            raise ConfigError(f"sparsity must be between 0 and 0.95, got {self.sparsity!r}")
        if self.prune_method not in PRUNE_METHODS:
            raise ConfigError(f"prune method must be one of {', '.join(PRUNE_METHODS)}, got {self.prune_method!r}")
        if self.bits not in BIT_STOPS:
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
