"""Compare an original model with its optimized copy on a source: the numbers behind
``python -m workbench compare``, the window's report and the benchmarks (one path)."""

from __future__ import annotations

import dataclasses
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import MeasureSettings, OptimizationConfig, config_block
from .files import temp_dir, temp_folder
from .measure import (
    Latency,
    Predictions,
    agreement,
    mean_kl,
    measure_latencies_apart,
    predict,
    static_figures,
    write_model_file,
)
from .models import LoadedModel
from .optimize import OptimizedModel, optimize_steps, relay
from .process import machine
from .stats import latency_ratio


@dataclass
class Batch:
    """Preprocessed frames of a source, with labels and what was skipped."""

    inputs: list[torch.Tensor] = field(default_factory=list)
    labels: list[int | None] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    spread: bool = False  # the calibration images were taken evenly over the folder (``ImageFolderSource.spread``)

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
    batch.skipped = skipped_of(source)
    batch.spread = getattr(source, "spread", False)
    yield batch


def skipped_of(source) -> list[dict]:
    return [{"path": s.path, "reason": s.reason} for s in getattr(source, "skipped", [])]


def original_figures(loaded: LoadedModel, example: torch.Tensor, out: Path, settings: MeasureSettings,
                     latency: Latency | None = None) -> dict:
    """:func:`static_figures` of the original model, its file written to ``out``."""
    path = Path(out) / "original.pt"
    return static_figures(loaded.model, loaded.model, example, (path, *write_model_file(path, loaded.model)),
                          settings, latency)


def optimized_figures(opt: OptimizedModel, example: torch.Tensor, out: Path, settings: MeasureSettings,
                      latency: Latency | None = None) -> dict:
    """:func:`static_figures` of an optimized model, its deployable file written to ``out``."""
    return static_figures(opt.model, opt.float_model, example, opt.write_file(out), settings, latency)


def paired_latency(loaded: LoadedModel, opt: OptimizedModel, example: torch.Tensor,
                   settings: MeasureSettings) -> tuple[Latency, Latency]:
    """The original's and the optimized model's latency, timed in turns (the same load for both),
    in a fresh child process: the window and ``compare`` time the same way, whatever their own
    process ran before."""
    original, optimized = measure_latencies_apart([loaded.model, opt.model], example, settings.latency_runs,
                                                  settings.warmup)
    return original, optimized


MIN_HELD_OUT = 50  # frames after the calibration images needed to score only those


def scored_from(frames: int, calibration_images: int) -> int:
    """Index of the first frame whose predictions count in the accuracy figures: the frames
    after the ones that calibrate (the first ``calibration_images``), when at least
    :data:`MIN_HELD_OUT` of them remain; otherwise 0, all frames, the calibration images included
    (the optimized model was fitted to those, so its figures on them are optimistic)."""
    return calibration_images if frames - calibration_images >= MIN_HELD_OUT else 0


def scored_text(scored: dict) -> str:
    """The frames the accuracy figures count (the report's ``scored``), in words."""
    if scored["calibration_included"]:
        return f"all {scored['images']} images, the calibration images included"
    if scored.get("spread"):
        return f"the {scored['images']} images besides the {scored['first']} that calibrate (spread over the folder)"
    return f"the {scored['images']} images after the {scored['first']} that calibrate"


def build_report(loaded: LoadedModel, opt: OptimizedModel, settings: MeasureSettings, *, source_name: str,
                 labels: Sequence[int | None], skipped: list[dict], original: dict, optimized: dict,
                 ref: Predictions, new: Predictions, spread: bool = False) -> dict:
    """The report of ``compare --json`` (and of the window's ``report()``), from the figures
    of :func:`original_figures` / :func:`optimized_figures` and both models' predictions (of
    every frame, in order). Top-1, top-5, agreement and KL are over the frames from
    :func:`scored_from` on (``scored``; ``spread``: the source took its calibration images
    evenly over a folder's name order and put them first)."""
    start = scored_from(len(labels), settings.calibration_images)
    all_labels = labels
    labels, ref, new = labels[start:], Predictions(ref.probs[start:]), Predictions(new.probs[start:])
    top1, top5 = ref.accuracy(labels)
    original = {"top1": top1, "top5": top5, **original}
    top1, top5 = new.accuracy(labels)
    optimized = {"top1": top1, "top5": top5, **optimized,  # the ratio: both timed in the same turns
                 "latency_ratio": latency_ratio(optimized["latency_ms"]["median"], original["latency_ms"]["median"]),
                 "agreement": agreement(ref, new), "kl": mean_kl(ref, new), "kernels": opt.kernels,
                 "simulated": opt.simulated, "description": opt.description,
                 "float_fallback": opt.float_fallback, "notes": opt.notes, "methods": opt.methods,
                 "allocation": opt.allocation, "recovered_steps": opt.recovered_steps}
    return {"model": loaded.display_name, "random_weights": loaded.random_weights,
            "source": source_name, "config": config_block(opt.config, settings), "images": len(all_labels),
            "labelled": sum(y is not None for y in all_labels),
            "scored": {"first": start, "images": len(labels), "labelled": sum(y is not None for y in labels),
                       "calibration_included": start == 0, "spread": spread and start > 0},
            "skipped": skipped,
            "threads": torch.get_num_threads(), "machine": machine(), "original": original, "optimized": optimized}


def recover_steps(loaded: LoadedModel, opt: OptimizedModel, images: Sequence[torch.Tensor], *,
                  seconds: float = math.inf, steps: int | None = None) -> Iterator[str | OptimizedModel]:
    """Distil a copy of ``opt``'s model from the original on ``images`` (``recover.distill_steps``:
    for ``seconds``, or exactly ``steps`` steps to replay such a run), in a child process
    (training in this one left the models timed afterwards about 10 % slow). Yields progress,
    then the recovered model; its ``recovered_steps`` is what ``compare --recover-steps`` replays."""
    from .isolate import isolated
    from .recover import distilled_steps

    if opt.model is not opt.float_model:
        raise ValueError("recovery fine-tunes float torch models: use 32 bits, the torch runtime and the CPU")
    if opt.recovered_steps is not None:  # a second run would not be one that compare can replay
        raise ValueError(f"this model is already distilled ({opt.recovered_steps} steps kept); "
                         "move a slider to start again from the optimized model")
    student, kept = yield from relay(isolated(distilled_steps, opt.float_model, loaded.model, images,
                                              seconds=seconds, exact_steps=steps))
    return dataclasses.replace(opt, model=student, float_model=student, recovered_steps=kept,
                               methods=opt.methods + [f"distillation ({kept} steps on the {len(images)} "
                                                      "calibration images)"])


def compare_steps(loaded: LoadedModel, source, config: OptimizationConfig, settings: MeasureSettings | None = None,
                  *, limit: int | None = None, out_dir: Path | None = None,
                  recover: int | None = None) -> Iterator[str | dict]:
    """The whole comparison as a generator: progress strings, then the report dict.
    ``recover``: distil the optimized model that many steps on the calibration images
    (:func:`recover_steps`), as the window's *Recover accuracy* did."""
    settings = settings or MeasureSettings()
    batch = yield from relay(load_batch(loaded, source, limit))
    if not batch.inputs:
        raise ValueError(f"no readable image in {source.name}")
    out = Path(out_dir) if out_dir else temp_dir("compare")  # without out_dir: measured, then removed
    out.mkdir(parents=True, exist_ok=True)
    try:
        opt = yield from relay(optimize_batch_steps(loaded, batch, config, settings, out))
        if recover is not None:
            opt = yield from recover_steps(loaded, opt, batch.inputs[:settings.calibration_images], steps=recover)
        yield f"evaluating {len(batch.inputs)} images"
        yield report_for(loaded, opt, batch, out, settings, source.name)
    finally:
        if not out_dir:
            shutil.rmtree(out, ignore_errors=True)


def optimize_batch_steps(loaded: LoadedModel, batch: Batch, config: OptimizationConfig, settings: MeasureSettings,
                         out: Path) -> Iterator[str | OptimizedModel]:
    """Optimize ``loaded.model`` as a comparison does, on frames already read: calibrated on the
    first ``settings.calibration_images`` frames of ``batch``, ONNX files written to ``out``.
    Yields progress, then the :class:`OptimizedModel` (sweeps and exports share the batch)."""
    calibration = batch.inputs[:settings.calibration_images]
    yield from optimize_steps(loaded.model, config, calibration, workdir=out)


def report_for(loaded: LoadedModel, opt: OptimizedModel, batch: Batch, out: Path,
               settings: MeasureSettings | None = None, source_name: str = "", original: dict | None = None) -> dict:
    """The comparison report of an optimized model against its original on ``batch``.
    ``original``: the original's :func:`original_figures`, when already measured (a sweep
    measures and writes the original once for all its configurations)."""
    settings = settings or MeasureSettings()
    ref = predict(loaded.model, batch.inputs)
    new = predict(opt.model, batch.inputs)
    example = batch.inputs[0]
    original_ms, optimized_ms = paired_latency(loaded, opt, example, settings)
    if original is None:
        original = original_figures(loaded, example, out, settings, original_ms)
    else:  # measured once for a sweep: this report's latencies come from one interleaved timing
        original = {**original, "latency_ms": original_ms.to_dict()}
    return build_report(loaded, opt, settings, source_name=source_name, labels=batch.labels,
                        skipped=batch.skipped, original=original,
                        optimized=optimized_figures(opt, example, out, settings, optimized_ms), ref=ref, new=new,
                        spread=batch.spread)


def compare_on_inputs(loaded: LoadedModel, opt: OptimizedModel, frames,
                      settings: MeasureSettings | None = None) -> dict:
    """:func:`report_for` on frames already read (e.g. a held-out part of a folder)."""
    batch = Batch([loaded.preprocess(f.rgb) for f in frames], [f.label for f in frames],
                  [f.origin for f in frames])
    with temp_folder("compare") as out:  # the model files whose size is reported
        return report_for(loaded, opt, batch, out, settings)


def compare(loaded: LoadedModel, source, config: OptimizationConfig, settings: MeasureSettings | None = None,
            **kwargs) -> dict:
    *_, report = compare_steps(loaded, source, config, settings, **kwargs)
    return report


def compare_command(model: str, images: str | None, limit: int | None, config: OptimizationConfig,
                    settings: MeasureSettings, recovered_steps: int | None = None) -> str:
    """The ``python -m workbench compare`` arguments that reproduce ``config`` on a source."""
    import shlex

    base = OptimizationConfig(bits=config.bits)  # the CLI's defaults for this bit width
    args = ["python", "-m", "workbench", "compare", "--model", model]
    if images is not None:
        args += ["--images", str(images)]
    if limit is not None:
        args += ["--limit", str(limit)]
    flags = {"sparsity": "--sparsity", "prune_method": "--prune-method", "bits": "--bits",
             "quant_scheme": "--quant-scheme", "runtime": "--runtime", "device": "--device",
             "act_bits": "--act-bits", "round_to": "--round-to", "rounding": "--rounding",
             "allocation": "--allocation"}
    for name, flag in flags.items():
        value = getattr(config, name)
        if name == "quant_scheme" and config.act_bits:
            continue  # --act-bits implies weights + activations
        if value != getattr(base, name) or name == "bits" and value != 32:
            args += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if not config.per_channel:
        args.append("--per-tensor")
    if not config.bn_recalibration:
        args.append("--no-bn-recalibration")
    if not config.bias_correction:
        args.append("--no-bias-correction")
    for name in config.exclude:
        args += ["--exclude", name]
    for name, bits in config.layer_bits:
        args += ["--layer-bits", f"{name}={bits}"]
    defaults = MeasureSettings()
    if settings.calibration_images != defaults.calibration_images:
        args += ["--calibration", str(settings.calibration_images)]
    if settings.latency_runs != defaults.latency_runs:
        args += ["--runs", str(settings.latency_runs)]
    if settings.threads is not None:
        args += ["--threads", str(settings.threads)]
    if recovered_steps is not None:
        args += ["--recover-steps", str(recovered_steps)]
    args.append("--json")
    return " ".join(shlex.quote(a) for a in args)
