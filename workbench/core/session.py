"""What the window works on, without Qt: a model, a source, the frames read so far,
and the long jobs (optimize, evaluate) as generators the window runs off its thread."""

from __future__ import annotations

import math
import shutil
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .compare import build_report, optimized_figures, original_figures, paired_latency, recover_steps, skipped_of
from .config import MeasureSettings, OptimizationConfig
from .files import temp_dir
from .locks import running
from .measure import Predictions, ranked
from .models import LoadedModel
from .optimize import OptimizedModel, optimize_steps, relay
from .sources import Frame, VideoSource
from .stats import wilson_interval  # noqa: F401 (re-exported)


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
    values, idx = ranked(probs, 5)
    return Prediction([(int(i), float(v)) for i, v in zip(idx, values)], probs, ms)


@dataclass
class Workspace:
    """A loaded model and source, with the frames preprocessed so far (shared by jobs)."""

    loaded: LoadedModel
    source: object
    frames: list[Frame] = field(default_factory=list)
    inputs: list[torch.Tensor] = field(default_factory=list)
    out_dir: Path = field(default_factory=lambda: temp_dir("window"))
    original_preds: dict[int, Prediction] = field(default_factory=dict)
    extra_calibration: list[torch.Tensor] = field(default_factory=list)
    next_file: int = 0
    next_dir: int = 0

    def __post_init__(self) -> None:
        # the folder goes with the workspace, also where no window removes it: a load that a newer
        # request superseded, a window closed before its load ended (tests left such folders)
        weakref.finalize(self, shutil.rmtree, str(self.out_dir), True)

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

    def calibration(self, n: int) -> list[torch.Tensor]:
        """The first ``n`` images; a stream's first frames are followed by the sample photos
        (a few consecutive frames of one scene make poor int8 ranges)."""
        return (self.inputs + self.extra_calibration)[:n]

    @property
    def labels(self) -> list[int | None]:
        return [f.label for f in self.frames]

    def config_dir(self, keep: int = 6) -> Path:
        """A fresh folder for one configuration's files; only the newest ``keep`` are kept."""
        self.next_dir += 1
        folder = self.out_dir / f"config-{self.next_dir}"
        folder.mkdir(parents=True, exist_ok=True)
        old = self.out_dir / f"config-{self.next_dir - keep}"
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        return folder


def load_workspace(model_spec: str | LoadedModel, source_spec, settings: MeasureSettings,
                   limit: int | None = None, first: int = 16) -> Iterator[str | Workspace]:
    """Job: load the model and the source and read the first frames (at least the
    calibration images); yields progress, then a Workspace. The rest of a folder is read
    later, while the user looks at the first image. ``limit``: files of a folder taken, as
    ``compare --limit`` takes them."""
    from .models import load_model
    from .sources import SAMPLES, ImageFolderSource, open_source

    if isinstance(model_spec, LoadedModel):
        loaded = model_spec
    else:
        yield f"loading {model_spec}"
        loaded = load_model(model_spec)
    yield "opening source"
    source = open_source(source_spec, calibration=settings.calibration_images)
    if limit and isinstance(source, ImageFolderSource) and len(source) > limit:  # a video's limit would cut frames
        source = ImageFolderSource(source.root, limit, settings.calibration_images)
    ws = Workspace(loaded, source)
    if ws.is_stream:
        for _ in range(8):  # calibration frames; live mode takes over from here
            frame = ws.source.read()
            if frame is None:
                break
            ws.add(frame)
        if not ws.frames:
            raise ValueError(f"{ws.source.name} delivered no frame")
        samples = ImageFolderSource(SAMPLES)
        ws.extra_calibration = [loaded.preprocess(samples.frame(i).rgb) for i in range(len(samples))]
    else:
        yield from ws.read_frames(max(first, settings.calibration_images))
        if not ws.frames:
            raise ValueError(f"no readable image in {ws.source.name}")
    yield ws


@dataclass
class Measured:
    """An optimized model with its figures (:func:`compare.optimized_figures`)."""

    optimized: OptimizedModel
    figures: dict
    original_latency: dict  # the original's latency, timed just before the optimized one (same conditions)

    @property
    def latency_ms(self) -> float:
        return self.figures["latency_ms"]["median"]

    @property
    def size_bytes(self) -> int:
        return self.figures["size_bytes"]


def measure_original(ws: Workspace, settings: MeasureSettings) -> dict:
    """Job: the original model's figures (latency timed while no other job runs)."""
    return original_figures(ws.loaded, ws.inputs[0], ws.out_dir, settings)


@dataclass(frozen=True)
class FramePredictions:
    """Both models' predictions for one frame."""

    index: int
    original: Prediction
    optimized: Prediction | None


def predict_frame(ws: Workspace, index: int, optimized, reference=None) -> FramePredictions:
    """Frame ``index`` through the left model (the original, cached, or ``reference``: another
    configuration's model) and the optimized one."""
    if reference is not None:
        ref = predict_one(reference, ws.inputs[index])
    else:
        ref = ws.original_preds.get(index)
    if ref is None:
        ref = ws.original_preds[index] = predict_one(ws.loaded.model, ws.inputs[index])
    return FramePredictions(index, ref, predict_one(optimized, ws.inputs[index]) if optimized is not None else None)


def optimize_job(ws: Workspace, config: OptimizationConfig, settings: MeasureSettings) -> Iterator[str | OptimizedModel]:
    """Job: only the optimized model of ``config`` (calibrated as everywhere), not measured."""
    yield from optimize_steps(ws.loaded.model, config, ws.calibration(settings.calibration_images))


def optimize_and_measure(ws: Workspace, config: OptimizationConfig, settings: MeasureSettings,
                         index: int | None = None) -> Iterator[str | OptimizedModel | FramePredictions | Measured]:
    """Optimize the workspace's model for ``config`` and measure it (a generator): yields
    progress, the optimized model and its predictions for frame ``index`` (so they show before
    the figures), then :class:`Measured`."""
    folder = ws.config_dir()
    calibration = ws.calibration(settings.calibration_images)
    result = yield from relay(optimize_steps(ws.loaded.model, config, calibration, workdir=folder))
    yield result
    if index is not None and index < len(ws.inputs):
        yield predict_frame(ws, index, result.model)
    yield "measuring latency (the app's other jobs wait) and file size"
    yield _measured(ws, result, folder, settings)


def _measured(ws: Workspace, opt: OptimizedModel, folder: Path, settings: MeasureSettings) -> Measured:
    """Both models timed in turns (as ``compare`` times them), so their ratio is measured under one load."""
    original, optimized = paired_latency(ws.loaded, opt, ws.inputs[0], settings)
    return Measured(opt, optimized_figures(opt, ws.inputs[0], folder, settings, optimized), original.to_dict())


@dataclass
class EvalProgress:
    """Running figures of a background evaluation over the workspace's frames; the last one
    carries both models' predictions (``final``), from which the report is built."""

    done: int
    total: int
    original_hits: int
    optimized_hits: int
    labelled: int
    agree: int
    final: tuple[Predictions, Predictions] | None = None

    def top1(self, which: str) -> float | None:
        hits = self.original_hits if which == "original" else self.optimized_hits
        return hits / self.labelled if self.labelled else None

    @property
    def agreement(self) -> float:
        return self.agree / self.done if self.done else 0.0


EVAL_SEED = 0


def evaluate_steps(ws: Workspace, optimized_model, calibration_images: int) -> Iterator[str | EvalProgress]:
    """Both models over every frame read so far; the original's results are cached, so after
    a change only the optimized model runs. The frames that count (``compare.scored_from``:
    those after the first ``calibration_images`` when enough remain) go first, in one fixed
    shuffled order (seed EVAL_SEED), so the running estimate is not biased by the folder's
    order (folders sorted by class); the calibration frames follow, with a progress string
    each (one step per frame: a job never holds the app's worker thread for long). The
    final predictions are of every frame, in frame order."""
    import random

    from .compare import scored_from

    orig_hits = opt_hits = labelled = agree = 0
    n = len(ws.inputs)
    start = scored_from(n, calibration_images)
    order = list(range(start, n))
    random.Random(EVAL_SEED).shuffle(order)
    order += list(range(start))
    ref_probs, new_probs = [None] * n, [None] * n
    for k, i in enumerate(order):
        ref = ws.original_preds.get(i)
        if ref is None:
            ref = ws.original_preds[i] = predict_one(ws.loaded.model, ws.inputs[i])
        new = predict_one(optimized_model, ws.inputs[i])
        ref_probs[i], new_probs[i] = ref.probs, new.probs
        if i < start:
            if k < n - 1:
                yield f"predicting the calibration images too: {k + 1 - (n - start)}/{start}"
                continue
        else:
            label = ws.frames[i].label
            if label is not None:
                labelled += 1
                orig_hits += ref.top1 == label
                opt_hits += new.top1 == label
            agree += ref.top1 == new.top1
        final = (Predictions(torch.stack(ref_probs)), Predictions(torch.stack(new_probs))) if k == n - 1 else None
        yield EvalProgress(min(k + 1, n - start), n - start, orig_hits, opt_hits, labelled, agree, final)


def differences(ws: Workspace, final: tuple[Predictions, Predictions]) -> list[dict]:
    """The frames whose top-1 changed, most confident change first: index, name, each model's
    top-1 and confidence, the true label, and how much confidence the optimized model gives
    the original's class less (the shift)."""
    ref, new = final
    rows = []
    for i in (ref.top1 != new.top1).nonzero().flatten().tolist():
        a, b = int(ref.top1[i]), int(new.top1[i])
        rows.append({"index": i, "name": Path(ws.frames[i].origin).name, "label": ws.frames[i].label,
                     "original": a, "original_p": float(ref.probs[i, a]), "optimized": b,
                     "optimized_p": float(new.probs[i, b]),
                     "shift": float(new.probs[i, a] - ref.probs[i, a])})
    return sorted(rows, key=lambda r: r["shift"])


def workspace_report(ws: Workspace, original: dict, measured: Measured, evaluation: EvalProgress,
                     settings: MeasureSettings) -> dict:
    """The report of ``compare --json`` for what the window evaluated (same function)."""
    ref, new = evaluation.final
    return build_report(ws.loaded, measured.optimized, settings, source_name=ws.source.name, labels=ws.labels,
                        skipped=skipped_of(ws.source), original={**original, "latency_ms": measured.original_latency},
                        optimized=measured.figures,
                        ref=ref, new=new, spread=getattr(ws.source, "spread", False))


def sensitivity_job(ws: Workspace, config: OptimizationConfig) -> Iterator[str | dict]:
    """Per-layer sensitivity for the current config's kind of compression, on a copy of
    the model (the original keeps running elsewhere). Yields progress, then
    {"probe": text, "layers": {name: LayerSensitivity}}."""
    import copy

    from .optimize import BITS_SENSITIVITY_IMAGES, SENSITIVITY_IMAGES
    from .sensitivity import isolated_sensitivity_steps

    if config.simulated and config.bits < 16:
        kind, value, probe = "bits", config.bits, f"rounded to {config.bits} bits"
    else:
        sparsity = config.sparsity or 0.5
        kind, value, probe = "prune", sparsity, f"pruned to {sparsity:.0%}"
    work = copy.deepcopy(ws.loaded.model).eval()
    key = id(ws.loaded.model) if kind == "prune" else (id(ws.loaded.model), 0.0, config.prune_method)
    images = ws.calibration(BITS_SENSITIVITY_IMAGES if kind == "bits" else SENSITIVITY_IMAGES)
    for step in isolated_sensitivity_steps(work, images, kind, value, config.exclude, key=key):
        if isinstance(step, str):
            yield step
        else:
            yield {"probe": probe, "layers": step}


def recover_job(ws: Workspace, measured: Measured, settings: MeasureSettings,
                seconds: float = 60.0, steps: int | None = None) -> Iterator[str | Measured]:
    """Distil a copy of the optimized model from the original on the images that calibrate
    (never on the ones that are scored: the report's accuracy must stay on images the model
    has not learned from), for at most ``seconds``, or exactly ``steps`` steps to replay a
    saved recovery; yields progress, then the re-measured model."""
    teach = ws.calibration(settings.calibration_images)
    recovered = yield from recover_steps(ws.loaded, measured.optimized, teach,
                                         seconds=seconds if steps is None else math.inf, steps=steps)
    yield "measuring the recovered model"
    yield _measured(ws, recovered, ws.config_dir(), settings)
