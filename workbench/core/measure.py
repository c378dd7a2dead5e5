"""Honest numbers: latency, file size, parameters, MACs, memory, accuracy."""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import MeasureSettings
from .files import atomic_path
from .locks import quiet, running
from .process import flush_denormals, timing_threads
from .quantize import QUANT_LAYERS, fake_quantize_weight

PACKED_FORMAT = "workbench-packed-v1"


@dataclass(frozen=True)
class Latency:
    median: float
    p90: float
    runs: int
    threads: int
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {"median": round(self.median, 3), "p90": round(self.p90, 3), "runs": self.runs,
                "threads": self.threads, "device": self.device}


def measure_latency(model: nn.Module, example: torch.Tensor, runs: int = MeasureSettings.latency_runs,
                    warmup: int = MeasureSettings.warmup) -> Latency:
    """Batch-1 latency in ms: ``warmup`` untimed runs, then the median and p90 of ``runs``.

    Isolated: no other job of the app runs meanwhile (every job step and every inference
    holds the shared side of the app lock; this holds the exclusive side)."""
    return measure_latencies([model], example, runs, warmup)[0]


# timed runs of one model in a row. A model against its own copy on a 2-core AMD EPYC, two runs of 30
# trials: 30 runs in turns of five read 15 of 60 ratios more than 5 % from 1 (0.68 to 1.10); 60 runs
# in turns of two, 4 of 60 (0.94 to 1.05). benchmarks/timing_noise.py; docs/benchmarks.md, session 35
BLOCK = 2


def measure_latencies(models: Sequence, example: torch.Tensor, runs: int = MeasureSettings.latency_runs,
                      warmup: int = MeasureSettings.warmup, block: int = BLOCK) -> list[Latency]:
    """:func:`measure_latency` of several models timed in turns of ``block`` runs (A B, B A, A B,
    ...): on a shared machine two long blocks of runs taken one after the other differ by up to
    a third, so models compared with each other take turns and see the same load. Each turn
    starts with one untimed run: a runtime's threads spin a while after its own runs (ONNX
    Runtime's), and run by run turns had the original torch model read 2.1x its own latency
    beside an ONNX Runtime model (docs/benchmarks.md, session 32)."""
    times: list[list[float]] = [[] for _ in models]
    flush_denormals()
    with torch.inference_mode(), quiet():
        before = torch.get_num_threads()
        threads = timing_threads() or before  # live mode's predictors run with one each meanwhile
        if threads != before:  # this also sets the default of threads that start later
            torch.set_num_threads(threads)
        try:
            for model in models:
                for _ in range(warmup):
                    model(example)
            for r in range(math.ceil(runs / block)):
                n = min(block, runs - r * block)
                for k in (range(len(models)) if r % 2 == 0 else reversed(range(len(models)))):
                    models[k](example)
                    for _ in range(n):
                        start = time.perf_counter()
                        models[k](example)
                        times[k].append((time.perf_counter() - start) * 1000)
        finally:
            if threads != before:
                torch.set_num_threads(before)
    out = []
    for model, t in zip(models, times):
        t.sort()
        p90 = t[min(len(t) - 1, int(round(0.9 * (len(t) - 1))))]
        out.append(Latency(statistics.median(t), p90, runs, threads, getattr(model, "device_name", "cpu")))
    return out


def _timing_steps(models: Sequence, example: torch.Tensor, runs: int, warmup: int):
    yield "models loaded for timing"
    yield measure_latencies(models, example, runs, warmup)


def measure_latencies_apart(models: Sequence, example: torch.Tensor, runs: int = MeasureSettings.latency_runs,
                            warmup: int = MeasureSettings.warmup) -> list[Latency]:
    """:func:`measure_latencies` in a fresh child process (:func:`.isolate.isolated`), while this
    process holds the exclusive side of the app lock: what a user's own process would time.
    Timed in the process that ran the app's jobs (a window after an hour of use, reopened
    sessions, recoveries), the same models read up to 1.42x the CLI's figures on the same machine
    (docs/benchmarks.md, sessions 31-32). Models that cannot be pickled (a TorchScript model) are
    timed here."""
    from .isolate import isolated

    steps = isolated(_timing_steps, list(models), example, runs, warmup)
    try:
        next(steps)  # the child has loaded the models (outside the lock: the app goes on meanwhile)
        with quiet():
            return next(steps)
    finally:
        steps.close()


def static_figures(model, float_model: nn.Module, example: torch.Tensor, file: tuple[Path, int, str],
                   settings: MeasureSettings, latency: Latency | None = None) -> dict:
    """The figures of one model that do not depend on the images: latency (isolated; or
    ``latency`` when it was timed interleaved with another model's), the size of its real
    ``file`` (path, bytes, format), parameters, MACs and memory. The CLI, the window and the
    benchmarks all take a model's figures from here."""
    latency = latency or measure_latency(model, example, runs=settings.latency_runs, warmup=settings.warmup)
    file_path, size, fmt = file
    params, nonzero = count_params(float_model)
    return {"latency_ms": latency.to_dict(), "size_bytes": size, "file": str(file_path), "file_format": fmt,
            "params": params, "nonzero_params": nonzero, "macs": count_macs(float_model, example) or None,
            "peak_process_memory_bytes": peak_rss_bytes(), "inference_memory": inference_memory(model, example)}


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters)."""
    total = nonzero = 0
    for p in model.parameters():
        total += p.numel()
        nonzero += int(torch.count_nonzero(p).item())
    return total, nonzero


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass through the conv and linear layers
    (dense: zeroed weights are still multiplied)."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, QUANT_LAYERS)]
    try:
        with torch.inference_mode(), running():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return total


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _tensor_bytes(obj) -> int:
    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_tensor_bytes(o) for o in obj)
    return 0


_ORT_PEAK_SCRIPT = """
import sys, resource, numpy as np, onnxruntime as ort
ort.set_default_logger_severity(3)
o = ort.SessionOptions(); o.intra_op_num_threads = 1
o.enable_cpu_mem_arena = False; o.enable_mem_pattern = False
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"])
x = {s.get_inputs()[0].name: np.zeros([int(v) for v in sys.argv[2:]], np.float32)}
s.run(None, x)
page = resource.getpagesize()
before = int(open("/proc/self/statm").read().split()[1]) * page
open("/proc/self/clear_refs", "w").write("5")
s.run(None, x)
hwm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(max(0, hwm - before))
"""


def _ort_activation_peak(path: Path, shape) -> int | None:
    """Linux: run the ONNX file in a fresh process where glibc maps every allocation over
    64 KiB on its own (so freed memory leaves RSS), and read the rise of the resident
    high-water mark during one run."""
    import subprocess

    if not sys.platform.startswith("linux"):
        return None
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", _ORT_PEAK_SCRIPT, str(path), *map(str, shape)],
                         capture_output=True, text=True, env=env, timeout=120)
    return int(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip().isdigit() else None


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C++ logging on file descriptor 2 (the profiler announces each start and stop)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def inference_memory(model, example: torch.Tensor) -> dict:
    """Peak memory of one batch-1 inference: weights plus the activations' peak.

    torch models: every allocation is followed with the profiler (its peak of live bytes).
    ONNX Runtime: a session without memory arena, and the rise of the process's
    resident high-water mark during one run, in a separate process (Linux)."""
    if hasattr(model, "path"):  # OrtModel
        activations = _ort_activation_peak(model.path, example.shape)
        weights = model.path.stat().st_size
        method = "rss-high-water"
    elif str(getattr(model, "device_name", "cpu")).startswith("cuda"):
        with torch.inference_mode():
            model(example)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            model(example)
            activations = torch.cuda.max_memory_allocated() - base
        weights = sum(_tensor_bytes(v) for v in model.state_dict().values())
        method = "cuda-allocator"
    else:
        from torch.profiler import ProfilerActivity, profile

        with torch.inference_mode(), running(), _quiet_stderr():
            model(example)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                model(example)
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        live = activations = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            live += e.nbytes()
            activations = max(activations, live)
        weights = sum(_tensor_bytes(v) for v in model.state_dict().values())
        method = "torch-profiler"
    total = None if activations is None else weights + activations
    return {"weights_bytes": weights, "activations_bytes": activations, "total_bytes": total, "method": method}


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Signed integer codes -> a byte array holding ``bits`` bits per code."""
    unsigned = (codes.astype(np.int64) + (1 << (bits - 1))).astype(np.uint16)
    planes = ((unsigned[:, None] >> np.arange(bits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1))


def unpack_codes(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(packed)[: count * bits].reshape(count, bits).astype(np.int64)
    return (planes << np.arange(bits)).sum(1) - (1 << (bits - 1))


def packed_state(model: nn.Module, quant_bits: dict[str, int], per_channel: bool = True,
                 scales: dict[str, torch.Tensor] | None = None) -> dict[str, np.ndarray]:
    """Arrays of the packed file: quantized weights as ``bits``-bit codes plus scales,
    weights with many zeros as a bit mask plus their non-zero values; the rest float32.
    ``scales`` gives a layer's per-channel scale where the rounding chose it (GPTQ);
    otherwise it is each channel's largest weight over the largest code."""
    arrays: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())
    for key, tensor in model.state_dict().items():
        if not torch.is_tensor(tensor) or not tensor.is_floating_point():
            continue
        layer, _, kind = key.rpartition(".")
        bits = quant_bits.get(layer, 32) if kind == "weight" and isinstance(modules.get(layer), QUANT_LAYERS) else 32
        flat = tensor.detach().float().reshape(-1)
        mask = flat != 0
        sparse = kind == "weight" and mask.float().mean().item() < 0.9
        arrays[f"{key}:shape"] = np.array(tensor.shape, dtype=np.int32)
        if sparse:
            arrays[f"{key}:mask"] = np.packbits(mask.numpy())
        if bits <= 8:
            if scales and layer in scales:
                scale = scales[layer].reshape(-1, *([1] * (tensor.dim() - 1)))
                codes = torch.round(tensor.detach().float() / scale)
            else:
                codes, scale = fake_quantize_weight(tensor.detach().float(), bits, per_channel)
            codes = codes.reshape(-1)
            values = codes[mask] if sparse else codes
            arrays[f"{key}:q{bits}"] = _pack_codes(values.numpy().astype(np.int64), bits)
            arrays[f"{key}:scale"] = scale.reshape(-1).numpy().astype(np.float32)
        else:
            values = flat[mask] if sparse else flat
            dtype = np.float16 if bits == 16 else np.float32
            arrays[f"{key}:f{bits}"] = values.numpy().astype(dtype)
    return arrays


def save_packed(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """The packed container: a magic line, a JSON index (name, dtype, shape, offset), raw bytes."""
    index, offset = {}, 0
    for name, a in arrays.items():
        index[name] = [a.dtype.str, list(a.shape), offset]
        offset += a.nbytes
    header = json.dumps(index, separators=(",", ":")).encode()
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(b"WBPACK1\n" + len(header).to_bytes(4, "little") + header)
        for a in arrays.values():
            f.write(np.ascontiguousarray(a).tobytes())


def load_packed(path: Path) -> dict[str, np.ndarray]:
    data = Path(path).read_bytes()
    if not data.startswith(b"WBPACK1\n"):
        raise ValueError(f"{path}: not a workbench packed file")
    n = int.from_bytes(data[8:12], "little")
    index = json.loads(data[12:12 + n])
    base = 12 + n
    out = {}
    for name, (dtype, shape, offset) in index.items():
        dt = np.dtype(dtype)
        count = int(np.prod(shape)) if shape else 1
        out[name] = np.frombuffer(data, dt, count, base + offset).reshape(shape)
    return out


def write_model_file(path: Path, model: nn.Module, *, quant_bits: dict[str, int] | None = None,
                     per_channel: bool = True, sparse: bool = False,
                     scales: dict[str, torch.Tensor] | None = None) -> tuple[int, str]:
    """Write ``model`` to ``path`` the way it would be shipped; returns (bytes, format).

    A dense float or real-int8 model is a ``torch.save`` state dict; simulated low bit
    widths and pruned weights go to the packed format (see :func:`save_packed`)."""
    path = Path(path)
    if quant_bits or sparse:
        save_packed(path, packed_state(model, quant_bits or {}, per_channel, scales))
        fmt = PACKED_FORMAT
    elif isinstance(model, torch.jit.ScriptModule):
        with atomic_path(path) as tmp:
            model.save(str(tmp))
        fmt = "torchscript"
    else:
        # a file object: the archive's inner name does not follow the file's
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(model.state_dict(), f)
        fmt = "torch-state-dict"
    return path.stat().st_size, fmt


def ranked(probs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest values along the last dimension and their indices, equal values in index
    order, as ``argmax`` breaks them. int8 models tie often (their logits are quantized), and
    ``topk`` orders ties differently from call to call: the pane's top-1 then disagreed with the
    report's on the same prediction."""
    values, idx = probs.sort(dim=-1, descending=True, stable=True)
    return values[..., :k], idx[..., :k]


@dataclass
class Predictions:
    """Output distributions of one model over a set of frames."""

    probs: torch.Tensor  # N x classes

    @property
    def top1(self) -> torch.Tensor:
        return self.probs.argmax(1)

    def accuracy(self, labels: Sequence[int | None]) -> tuple[float | None, float | None]:
        """(top-1, top-5) over the labelled frames; (None, None) when there are none."""
        idx = [i for i, y in enumerate(labels) if y is not None]
        if not idx:
            return None, None
        y = torch.tensor([labels[i] for i in idx])
        top5 = ranked(self.probs[idx], 5)[1]
        return (top5[:, 0] == y).float().mean().item(), (top5 == y[:, None]).any(1).float().mean().item()


def agreement(a: Predictions, b: Predictions) -> float:
    return (a.top1 == b.top1).float().mean().item()


def mean_kl(reference: Predictions, other: Predictions) -> float:
    """Mean KL(reference || other) over frames, in nats."""
    p = reference.probs.clamp_min(1e-12)
    q = other.probs.clamp_min(1e-12)
    return (p * (p.log() - q.log())).sum(1).mean().item()


def predict(model: nn.Module, inputs: Sequence[torch.Tensor]) -> Predictions:
    with torch.inference_mode(), running():
        return Predictions(torch.cat([torch.softmax(model(x).float(), 1) for x in inputs]))
