"""What the window works on, without Qt: a model, a source, the frames read so far,
and the long jobs (optimize, evaluate) as generators the window runs off its thread."""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import OptimizationConfig
from .locks import running
from .measure import count_macs, count_params, measure_latency
from .models import LoadedModel
from .optimize import OptimizedModel, optimize_steps, relay
from .sources import Frame, VideoSource


@dataclass(frozen=True)
class Prediction:
    top5: list[tuple[int, float]]  # (class index, probability)
    probs: torch.Tensor
    latency_ms: float

    @property
    def top1(self) -> int:
        return self.top5[0][0]


def predict_one(model: torch.nn.Module, x: torch.Tensor) -> Prediction:
    with torch.inference_mode(), running():
        start = time.perf_counter()
        logits = model(x)
        ms = (time.perf_counter() - start) * 1000
    probs = torch.softmax(logits.float(), 1)[0]
    values, idx = probs.topk(5)
    return Prediction([(int(i), float(v)) for i, v in zip(idx, values)], probs, ms)


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % interval of a proportion (Wilson score), for the accuracy band."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Workspace:
    """A loaded model and source, with the frames preprocessed so far (shared by jobs)."""

    loaded: LoadedModel
    source: object
    frames: list[Frame] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    out_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="workbench-")))
    original_preds: dict[int, Prediction] = field(default_factory=dict)
    next_file: int = 0

    @property
    def is_stream(self) -> bool:
        return isinstance(self.source, VideoSource)

    @property
    def labelled(self) -> bool:
        return any(f.label is not None for f in self.frames)

    def read_frames(self, limit: int) -> Iterator[str]:
        """Read more frames of a folder source, up to ``limit`` in all; unreadable files
        are skipped (and listed in ``source.skipped``)."""
        total = min(limit, len(self.source))
        while self.next_file < len(self.source) and len(self.frames) < limit:
            frame = self.source.frame(self.next_file)
            self.next_file += 1
            if frame is not None:
                self.add(frame)
            if self.next_file % 10 == 0:
                yield f"reading images: {self.next_file}/{total}"

    def add(self, frame: Frame) -> int:
        self.frames.append(frame)
        self.inputs.append(self.loaded.preprocess(frame.rgb))
        return len(self.frames) - 1

    def calibration(self, n: int = 16) -> list[torch.Tensor]:
        return self.inputs[:n]


@dataclass
class Measured:
    """An optimized model with the figures the plots need."""

    optimized: OptimizedModel
    latency_ms: float
    size_bytes: int
    params: int
    nonzero_params: int
    macs: int | None


def measure_model(ws: Workspace, model, float_model, file_size: int, runs: int = 10):
    """(latency median ms, file bytes, params, non-zero params, MACs) of one model."""
    x = ws.inputs[0]
    latency = measure_latency(model, x, runs=runs, warmup=2).median
    params, nonzero = count_params(float_model)
    return latency, file_size, params, nonzero, count_macs(float_model, x) or None


def optimize_and_measure(ws: Workspace, config: OptimizationConfig) -> Iterator[str | Measured]:
    """Optimize the workspace's model for ``config`` and measure it (a generator)."""
    result = yield from relay(optimize_steps(ws.loaded.model, config, ws.calibration(), workdir=ws.out_dir))
    yield result  # the window shows its predictions while the figures are measured
    yield "measuring latency and file size"
    _, size, _ = result.write_file(ws.out_dir, f"optimized-{abs(hash(config))}")
    figures = measure_model(ws, result.model, result.float_model, size)
    yield Measured(result, *figures)


@dataclass
class EvalProgress:
    """Running figures of a background evaluation over the workspace's frames."""

    done: int
    total: int
    original_hits: int
    optimized_hits: int
    labelled: int
    agree: int

    def top1(self, which: str) -> float | None:
        hits = self.original_hits if which == "original" else self.optimized_hits
        return hits / self.labelled if self.labelled else None

    @property
    def agreement(self) -> float:
        return self.agree / self.done if self.done else 0.0


def evaluate_steps(ws: Workspace, optimized_model) -> Iterator[EvalProgress]:
    """Both models over every frame read so far; the original's results are cached."""
    orig_hits = opt_hits = labelled = agree = 0
    n = len(ws.inputs)
    for i in range(n):
        ref = ws.original_preds.get(i)
        if ref is None:
            ref = ws.original_preds[i] = predict_one(ws.loaded.model, ws.inputs[i])
        new = predict_one(optimized_model, ws.inputs[i])
        label = ws.frames[i].label
        if label is not None:
            labelled += 1
            orig_hits += ref.top1 == label
            opt_hits += new.top1 == label
        agree += ref.top1 == new.top1
        yield EvalProgress(i + 1, n, orig_hits, opt_hits, labelled, agree)


def sensitivity_job(ws: Workspace, config: OptimizationConfig) -> Iterator[str | dict]:
    """Per-layer sensitivity for the current config's kind of compression, on a copy of
    the model (the original keeps running elsewhere). Yields progress, then
    {"probe": text, "layers": {name: LayerSensitivity}}."""
    import copy

    from .sensitivity import sensitivity_steps

    if config.simulated and config.bits < 16:
        kind, value, probe = "bits", config.bits, f"rounded to {config.bits} bits"
    else:
        sparsity = config.sparsity or 0.5
        kind, value, probe = "prune", sparsity, f"pruned to {sparsity:.0%}"
    work = copy.deepcopy(ws.loaded.model).eval()
    key = id(ws.loaded.model) if kind == "prune" else (id(ws.loaded.model), 0.0, config.prune_method)
    for step in sensitivity_steps(work, ws.calibration(8), kind, value, config.exclude, key=key):
        if isinstance(step, str):
            yield step
        else:
            yield {"probe": probe, "layers": step}


def recover_job(ws: Workspace, measured: Measured, seconds: float = 60.0) -> Iterator[str | Measured]:
    """Distil a copy of the optimized model from the original on the workspace's frames,
    for at most ``seconds``; yields progress, then the re-measured model."""
    import copy

    from .recover import distill_steps

    opt = measured.optimized
    if opt.model is not opt.float_model:
        raise ValueError("recovery fine-tunes float torch models: use 32 bits, the torch runtime and the CPU")
    student = copy.deepcopy(opt.float_model)
    for step in distill_steps(student, ws.loaded.model, ws.inputs, seconds=seconds):
        if isinstance(step, str):
            yield step
    recovered = dataclasses.replace(opt, model=student, float_model=student,
                                    methods=opt.methods + [f"distillation ({seconds:.0f} s)"])
    yield "measuring the recovered model"
    _, size, _ = recovered.write_file(ws.out_dir, f"recovered-{abs(hash(opt.config))}")
    yield Measured(recovered, *measure_model(ws, student, student, size))
