"""Compare an original model with its optimized copy on a source: the numbers behind
``python -m workbench compare`` and the window's figures."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import OptimizationConfig
from .measure import (
    Predictions,
    agreement,
    count_macs,
    count_params,
    inference_memory,
    mean_kl,
    measure_latency,
    peak_rss_bytes,
    predict,
    write_model_file,
)
from .models import LoadedModel
from .optimize import OptimizedModel, optimize_steps, relay


@dataclass
class Batch:
    """Preprocessed frames of a source, with labels and what was skipped."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    @property
    def labelled(self) -> int:
        return sum(y is not None for y in self.labels)


def load_batch(loaded: LoadedModel, source, limit: int | None = None) -> Iterator[str | Batch]:
    """Read and preprocess frames; yields progress, then the :class:`Batch`."""
    batch = Batch()
    total = len(source) if hasattr(source, "__len__") else None
    if limit:
        total = min(total, limit) if total else limit
    for frame in source:
        batch.inputs.append(loaded.preprocess(frame.rgb))
        batch.labels.append(frame.label)
        batch.origins.append(frame.origin)
        if len(batch.inputs) % 10 == 0:
            yield f"reading images: {len(batch.inputs)}/{total or '?'}"
        if limit and len(batch.inputs) >= limit:
            break
    batch.skipped = [{"path": s.path, "reason": s.reason} for s in getattr(source, "skipped", [])]
    yield batch


def model_report(model, float_model, batch: Batch, preds: Predictions, file: tuple[Path, int, str],
                 latency_runs=30) -> dict:
    """The figures of one model: accuracy, latency, size of its real ``file``, params, MACs."""
    top1, top5 = preds.accuracy(batch.labels)
    latency = measure_latency(model, batch.inputs[0], runs=latency_runs)
    file_path, size, fmt = file
    params, nonzero = count_params(float_model)
    macs = count_macs(float_model, batch.inputs[0]) or None
    return {"top1": top1, "top5": top5, "latency_ms": latency.to_dict(), "size_bytes": size,
            "file": str(file_path), "file_format": fmt, "params": params, "nonzero_params": nonzero,
            "macs": macs, "peak_process_memory_bytes": peak_rss_bytes(),
            "inference_memory": inference_memory(model, batch.inputs[0])}


def compare_steps(loaded: LoadedModel, source, config: OptimizationConfig, *, limit: int | None = None,
                  calibration_images: int = 32, latency_runs: int = 30,
                  out_dir: Path | None = None) -> Iterator[str | dict]:
    """The whole comparison as a generator: progress strings, then the report dict."""
    batch = yield from relay(load_batch(loaded, source, limit))
    if not batch.inputs:
        raise ValueError(f"no readable image in {source.name}")
    out = Path(out_dir or tempfile.mkdtemp(prefix="workbench-"))
    out.mkdir(parents=True, exist_ok=True)
    opt = yield from relay(optimize_steps(loaded.model, config, batch.inputs[:calibration_images], workdir=out))
    yield f"evaluating {len(batch.inputs)} images"
    yield report_for(loaded, opt, batch, out, latency_runs, source.name)


def report_for(loaded: LoadedModel, opt: OptimizedModel, batch: Batch, out: Path, latency_runs: int = 30,
               source_name: str = "") -> dict:
    """The comparison report of an optimized model against its original on ``batch``."""
    config = opt.config
    ref = predict(loaded.model, batch.inputs)
    new = predict(opt.model, batch.inputs)
    original_file = out / "original.pt"
    original = model_report(loaded.model, loaded.model, batch, ref,
                            (original_file, *write_model_file(original_file, loaded.model)), latency_runs)
    optimized = model_report(opt.model, opt.float_model, batch, new, opt.write_file(out), latency_runs)
    optimized.update({"agreement": agreement(ref, new), "kl": mean_kl(ref, new), "kernels": opt.kernels,
                      "simulated": opt.simulated, "description": opt.description,
                      "float_fallback": opt.float_fallback, "notes": opt.notes, "methods": opt.methods,
                      "allocation": opt.allocation})
    return {"model": loaded.display_name, "random_weights": loaded.random_weights,
            "source": source_name, "config": config.to_dict(), "images": len(batch.inputs),
            "labelled": batch.labelled, "skipped": batch.skipped, "threads": torch.get_num_threads(),
            "original": original, "optimized": optimized}


def compare_on_inputs(loaded: LoadedModel, opt: OptimizedModel, frames, latency_runs: int = 30) -> dict:
    """:func:`report_for` on frames already read (e.g. a held-out part of a folder)."""
    batch = Batch([loaded.preprocess(f.rgb) for f in frames], [f.label for f in frames],
                  [f.origin for f in frames])
    return report_for(loaded, opt, batch, Path(tempfile.mkdtemp(prefix="workbench-")), latency_runs)


def compare(loaded: LoadedModel, source, config: OptimizationConfig, **kwargs) -> dict:
    *_, report = compare_steps(loaded, source, config, **kwargs)
    return report
