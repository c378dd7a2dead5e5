"""The one value that says what the user asked for."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

PRUNE_METHODS = ("unstructured", "unstructured-global", "structured")
QUANT_SCHEMES = ("weights", "weights-activations")
BIT_STOPS = (2, 3, 4, 5, 6, 7, 8, 16, 32)
RUNTIMES = ("torch", "onnxruntime")
DEVICES = ("cpu", "cuda")
CONFIG_VERSION = 1


class ConfigError(ValueError):
    """An invalid setting; the message is for the user."""


@dataclass(frozen=True)
class OptimizationConfig:
    """Pruning and quantization settings. Frozen: build a new one to change it.

    sparsity: share of weights (unstructured) or channels (structured) removed, 0 to 0.95.
    prune_method: "unstructured" (per layer), "unstructured-global", "structured" (channels).
    bits: 32 (off), 16, or 8 down to 2.
    quant_scheme: "weights" or "weights-activations".
    per_channel: one scale per output channel (else per tensor).
    exclude: layer names that are neither pruned nor quantized.
    round_to: structured pruning keeps channel counts a multiple of this (1 = any).
    runtime: "torch" (eager / FX int8) or "onnxruntime" (exported to ONNX, as deployed).
    device: where the optimized model runs: "cpu", or "cuda" (float and 16-bit only).
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
