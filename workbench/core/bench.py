"""``python -m workbench bench speed``: one row per (model, configuration, runtime, threads)."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from .config import MeasureSettings, OptimizationConfig
from .files import temp_folder
from .measure import count_macs, static_figures, write_model_file
from .models import load_model
from .optimize import OptimizedModel, optimize
from .sources import open_source

SPEED_MODELS = ("efficientnet_lite0", "resnet18", "mobilenet_v3_large")
MAC_CUTS = (0.25, 0.50, 0.75)


def structured_for_mac_cut(model, cut: float, calibration, round_to: int = 8,
                           steps: int = 4, **config) -> tuple[OptimizedModel, float]:
    """Structured pruning whose MACs are about ``cut`` below the original's.

    MACs fall roughly as (1 - ratio)^2 when channels go from both sides of a layer, so
    each step corrects the ratio by that law from the MACs it actually got.
    Returns the closest result and its fraction of MACs kept."""
    x = calibration[0]
    base = count_macs(model, x)
    target = 1 - cut
    ratio, tried = 1 - target ** 0.5, []
    for _ in range(steps):
        cfg = OptimizationConfig(sparsity=round(ratio, 4), prune_method="structured", round_to=round_to, **config)
        result = optimize(model, cfg, calibration)
        kept = count_macs(result.model, x) / base
        tried.append((abs(kept - target), kept, result))
        if abs(kept - target) < 0.01:
            break
        ratio = min(0.95, max(0.0, 1 - (1 - ratio) * (target / kept) ** 0.5))
    _, kept, result = min(tried, key=lambda t: t[0])
    return result, kept


def _configurations(loaded, calibration) -> Iterator[tuple[str, OptimizedModel | None]]:
    model = loaded.model
    yield "float", None
    yield "int8", optimize(model, OptimizationConfig(bits=8), calibration)
    for cut in MAC_CUTS:
        result, _ = structured_for_mac_cut(model, cut, calibration[:1])
        yield f"structured {cut:.0%} fewer MACs", result
    yield "unstructured 50%", optimize(model, OptimizationConfig(sparsity=0.5), calibration)
    yield "float", optimize(model, OptimizationConfig(runtime="onnxruntime"), calibration)
    yield "int8", optimize(model, OptimizationConfig(bits=8, runtime="onnxruntime"), calibration)


def speed_rows(models: Sequence[str] = SPEED_MODELS, threads: Sequence[int] = (1, 2), runs: int = 30,
               calibration_images: int = 8) -> Iterator[dict]:
    """Rows of the speed table (a generator: one row at a time)."""
    with temp_folder("speed") as out:  # removed when the rows end
        yield from _speed_rows(out, models, threads, runs, calibration_images)


def _speed_rows(out: Path, models, threads, runs: int, calibration_images: int) -> Iterator[dict]:
    from .deploy import OrtModel

    frames = list(open_source(None))
    for name in models:
        loaded = load_model(name, weights="default" if name.startswith("efficientnet_lite") else "none")
        calibration = [loaded.preprocess(f.rgb) for f in frames][:calibration_images]
        x = calibration[0]
        float_macs = count_macs(loaded.model, x)
        original_file = out / f"{name}.pt"
        original_file = (original_file, *write_model_file(original_file, loaded.model))
        float_latency: dict[int, float] = {}
        for label, result in _configurations(loaded, calibration):
            runtime = result.config.runtime if result else "torch"
            model = result.model if result else loaded.model
            file = result.write_file(out, f"{name}-{abs(hash(result.config))}") if result else original_file
            for t in threads:
                torch.set_num_threads(t)  # the bench is an entry point: it owns the process's threads
                timed = OrtModel(model.path, threads=t) if runtime == "onnxruntime" else model
                figures = static_figures(timed, result.float_model if result else loaded.model, x, file,
                                         MeasureSettings(latency_runs=runs, threads=t))
                latency, macs = figures["latency_ms"], figures["macs"]
                if result is None:
                    float_latency[t] = latency["median"]
                speedup = float_latency[t] / latency["median"]
                yield {
                    "model": loaded.display_name, "configuration": label, "runtime": runtime,
                    "kernels": result.kernels if result else "fp32", "threads": t,
                    "latency_ms": {"median": latency["median"], "p90": latency["p90"]},
                    "macs": macs, "size_bytes": figures["size_bytes"],
                    "peak_memory_bytes": figures["inference_memory"]["total_bytes"],
                    "speedup": round(speedup, 3),
                    "realized_over_theoretical": round(speedup / (float_macs / macs), 3),
                    "float_fallback": result.float_fallback if result else [],
                }


def accuracy_rows(images: str, limit: int | None = None, recover_seconds: float = 0.0,
                  latency_runs: int = 20) -> Iterator[dict]:
    """The accuracy table of the default model: each configuration without and with the
    accuracy-keeping methods (a generator: one row at a time)."""
    from .compare import compare

    loaded = load_model("efficientnet_lite0")
    source = open_source(images, limit)
    frames = list(source)
    calibration = [loaded.preprocess(f.rgb) for f in frames[:MeasureSettings().calibration_images]]
    structured, _ = structured_for_mac_cut(loaded.model, 0.30, calibration, round_to=1)
    targets = [
        ("float", OptimizationConfig()),
        ("int8 weights+activations (real int8)", OptimizationConfig(bits=8)),
        ("4-bit weights", OptimizationConfig(bits=4, quant_scheme="weights")),
        ("50% unstructured", OptimizationConfig(sparsity=0.5)),
        ("structured, 30% fewer MACs", structured.config),
    ]
    for label, config in targets:
        variants = [("best", config)]
        if config.naive() != config and not config.is_identity:
            variants.insert(0, ("naive", config.naive()))
        for methods, cfg in variants:
            report = compare(loaded, open_source(images, limit), cfg, MeasureSettings(latency_runs=latency_runs))
            yield _accuracy_row(label, methods, report)
    if recover_seconds:
        yield from _recovery_rows(loaded, frames, structured.config, recover_seconds, latency_runs)


def _accuracy_row(label: str, methods: str, report: dict, recovered: float = 0.0) -> dict:
    o, q = report["original"], report["optimized"]
    return {"configuration": label, "variant": methods, "methods": q.get("methods", []),
            "recovery_seconds": recovered, "images": report["images"], "float_top1": o["top1"],
            "top1": q["top1"], "top1_drop_points": None if q["top1"] is None else round(100 * (o["top1"] - q["top1"]), 2),
            "agreement": q["agreement"], "size_bytes": q["size_bytes"], "macs": q["macs"],
            "latency_ms": q["latency_ms"]["median"], "kernels": q["kernels"], "simulated": q["simulated"],
            "config": report["config"]}


def _recovery_rows(loaded, frames, config: OptimizationConfig, seconds: float, latency_runs: int) -> Iterator[dict]:
    """Distil the pruned model on the first half of the images, evaluate on the second half
    (no image is both taught and tested)."""
    from .compare import compare_on_inputs
    from .isolate import isolated
    from .recover import distilled_steps

    half = len(frames) // 2
    teach = [loaded.preprocess(f.rgb) for f in frames[:half]]
    test = frames[half:]
    result = optimize(loaded.model, config, teach[:32])
    settings = MeasureSettings(latency_runs=latency_runs)
    before = compare_on_inputs(loaded, result, test, settings)
    yield _accuracy_row("structured, 30% fewer MACs (held-out half)", "best", before)
    *_, (student, _) = isolated(distilled_steps, result.model, loaded.model, teach, seconds=seconds)  # as the window
    after = compare_on_inputs(loaded, dataclasses.replace(result, model=student, float_model=student), test, settings)
    yield _accuracy_row("structured, 30% fewer MACs (held-out half)", "best + distillation", after, seconds)


def process_resources() -> dict:
    """Resident memory (MB), threads and open file descriptors of this process, now."""
    import psutil

    p = psutil.Process()
    return {"rss_mb": round(p.memory_info().rss / 1e6, 1), "threads": p.num_threads(), "open_files": p.num_fds()}


def folder_soak(images: str | None, frames: int, config: OptimizationConfig,
                sample_every: int = 500) -> Iterator[str | dict]:
    """Job: read the folder over and over (each image read from its file each time), run both
    models on every frame, ``frames`` in all; samples memory, threads and open files. The
    baseline is taken after the first ``sample_every`` frames (warm caches, allocator pools)."""
    import time

    from .session import predict_one

    loaded = load_model("efficientnet_lite0")
    source = open_source(images)
    calibration = [loaded.preprocess(f.rgb) for f in itertools.islice(source, 32)]  # not the whole folder
    opt = optimize(loaded.model, config, calibration)
    samples, done, t0 = [], 0, time.monotonic()
    while done < frames:
        for i in range(len(source)):
            frame = source.frame(i)
            if frame is None:
                continue
            x = loaded.preprocess(frame.rgb)
            predict_one(loaded.model, x)
            predict_one(opt.model, x)
            done += 1
            if done % sample_every == 0 or done == frames:
                samples.append({"frames": done, "seconds": round(time.monotonic() - t0, 1), **process_resources()})
                yield f"folder pass: {done}/{frames} frames"
            if done >= frames:
                break
    base, end = samples[0], samples[-1]
    yield {"images": source.name, "files": len(source), "frames": done, "config": config.to_dict(),
           "kernels": opt.kernels, "seconds": end["seconds"], "samples": samples,
           "growth_after_warmup": {k: round(end[k] - base[k], 1) for k in ("rss_mb", "threads", "open_files")}}
