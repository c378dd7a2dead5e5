"""Sweeps: many configurations measured on one model and one set of images, their Pareto
fronts, the files that record them, and a search for the most accurate configuration that
fits a latency or size budget.

Every configuration is measured the way ``python -m workbench compare`` measures it (the
functions of :mod:`.compare`); the model and the images are read once for all of them.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .compare import Batch, load_batch, optimize_batch_steps, original_figures, report_for
from .config import CALIBRATION_IMAGES, ConfigError, MeasureSettings, OptimizationConfig
from .files import atomic_path
from .models import LoadedModel
from .optimize import relay
from .pareto import accuracy_key, pareto_front

# the columns of results.csv; a row also carries its whole compare report under "report" (JSON only)
COLUMNS = ("label", "sparsity", "bits", "prune_method", "quant_scheme", "runtime", "top1", "top5", "agreement",
           "latency_ms", "original_latency_ms", "latency_ratio", "size_bytes", "macs", "kernels", "simulated")


class Configs(list):
    """The configurations of a sweep (a list), with the combinations that were not valid in
    ``skipped``: ``{"sparsity", "bits", "error"}`` (the :class:`ConfigError` message)."""

    def __init__(self, configs=(), skipped: list[dict] | None = None):
        super().__init__(configs)
        self.skipped = skipped or []


def sweep_configs(sparsities: Sequence[float], bits: Sequence[int], prune_method: str | None = None,
                  base: OptimizationConfig | None = None) -> Configs:
    """Every (sparsity, bits) combination on top of ``base`` (default: ``OptimizationConfig()``),
    in that order, duplicates once.

    The quantization scheme is each bit width's default (real int8 at 8 bits, weights below),
    as in ``compare`` when ``--quant-scheme`` is not given."""
    base = base or OptimizationConfig()
    configs, skipped = [], []
    for s, b in itertools.product(sparsities, bits):
        changes = {"sparsity": s, "bits": b, "quant_scheme": None}
        if prune_method is not None:
            changes["prune_method"] = prune_method
        try:
            config = base.with_(**changes)
        except ConfigError as exc:
            skipped.append({"sparsity": s, "bits": b, "error": str(exc)})
            continue
        if config not in configs:
            configs.append(config)
    return Configs(configs, skipped)


def prepare_steps(model_spec: str | LoadedModel, images, limit: int | None,
                  calibration: int = CALIBRATION_IMAGES) -> Iterator[str | tuple]:
    """Load the model (a name or file, or an already loaded model) and read the images (a
    spec for :func:`open_source`, with ``calibration`` images first, or a source) once;
    yields progress, then (loaded, source, batch).
    Raises ModelLoadError, SourceError, or ValueError when no image is readable."""
    from .models import load_model
    from .sources import open_source

    source = open_source(images, limit, calibration) if images is None or isinstance(images, (str, Path, int)) else images
    loaded = model_spec if isinstance(model_spec, LoadedModel) else load_model(str(model_spec))
    batch = yield from relay(load_batch(loaded, source, limit))
    if not batch.inputs:
        raise ValueError(f"no readable image in {source.name}")
    yield loaded, source, batch


def row_of(config: OptimizationConfig, report: dict) -> dict:
    """One flat row of a sweep, from a configuration and its compare report."""
    q = report["optimized"]
    return {"label": config.label(), "sparsity": config.sparsity, "bits": config.bits,
            "prune_method": config.prune_method if config.sparsity else None,
            "quant_scheme": config.quant_scheme if config.bits < 32 else None, "runtime": config.runtime,
            "top1": q["top1"], "top5": q["top5"], "agreement": q["agreement"],
            "latency_ms": q["latency_ms"]["median"], "original_latency_ms": report["original"]["latency_ms"]["median"],
            "latency_ratio": q["latency_ratio"], "size_bytes": q["size_bytes"], "macs": q["macs"],
            "kernels": q["kernels"], "simulated": q["simulated"], "report": report}


def _folder(out: Path, i: int, config: OptimizationConfig) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", config.label().lower()).strip("-")
    return out / "models" / f"{i:02d}-{slug}"


def evaluate_steps(loaded: LoadedModel, batch: Batch, config: OptimizationConfig, settings: MeasureSettings,
                   out: Path, source_name: str, original: dict | None = None) -> Iterator[str | dict]:
    """One configuration measured as ``compare`` measures it, on an already read batch; its
    model files go to ``out``. Yields progress, then the row (see :func:`row_of`)."""
    out.mkdir(parents=True, exist_ok=True)
    opt = yield from relay(optimize_batch_steps(loaded, batch, config, settings, out))
    yield f"evaluating {len(batch.inputs)} images"
    yield row_of(config, report_for(loaded, opt, batch, out, settings, source_name, original))


def fronts(rows: Sequence[dict]) -> dict:
    """The latency and size fronts (row indices) and the accuracy figure they use. The latency
    front is on each row's latency over the original's timed beside it, as the window's trade-off
    plot: a machine's speed can change between two rows' timings."""
    y = accuracy_key(rows)
    return {"accuracy": y, "front_latency": pareto_front(rows, "latency_ratio", y),
            "front_size": pareto_front(rows, "size_bytes", y)}


def _start(model_spec, images, limit, out: Path, settings: MeasureSettings):
    """Read the model and images once, measure and write the original once."""
    loaded, source, batch = yield from relay(prepare_steps(model_spec, images, limit, settings.calibration_images))
    (out / "models").mkdir(parents=True, exist_ok=True)
    yield "measuring the original"
    return loaded, source, batch, original_figures(loaded, batch.inputs[0], out / "models", settings)


def sweep_steps(model_spec: str | LoadedModel, images, configs: Sequence[OptimizationConfig],
                settings: MeasureSettings | None = None, limit: int | None = None,
                out_dir: Path | str = "sweep", *, use_ray: bool = False,
                ray_address: str | None = None) -> Iterator[str | dict]:
    """Measure every configuration; yields progress ("config i/n: label" first for each), then
    ``{"rows", "front_latency", "front_size", "accuracy", "skipped", "settings", ...}``.

    The model and images are read once; the original is measured and written once
    (``out_dir/models/original.pt``), each configuration's files go to ``out_dir/models/NN-label``.

    ``use_ray`` (or a ``ray_address``): each configuration is one Ray task instead, see
    :func:`ray_sweep_steps`; the same rows and files, progress "config i/n done: label"."""
    if use_ray or ray_address:
        return (yield from ray_sweep_steps(model_spec, images, configs, settings, limit, out_dir, ray_address))
    from .process import machine

    settings = settings or MeasureSettings()
    out = Path(out_dir)
    loaded, source, batch, original = yield from _start(model_spec, images, limit, out, settings)
    rows = []
    for i, config in enumerate(configs, 1):
        head = f"config {i}/{len(configs)}: {config.label()}"
        yield head
        steps = evaluate_steps(loaded, batch, config, settings, _folder(out, i, config), source.name, original)
        for step in steps:
            if isinstance(step, str):
                yield f"{head}: {step}"
            else:
                rows.append(step)
    yield {"rows": rows, **fronts(rows), "skipped": list(getattr(configs, "skipped", [])),
           "model": loaded.display_name, "source": source.name, "images": len(batch.inputs),
           "settings": settings.to_dict(), "machine": machine()}


# -- the same sweep as Ray tasks (the optional extra: pip install .[ray]) --------------------------

RAY_MISSING = "the --ray sweep needs Ray: pip install .[ray] (or pip install 'ray>=2.9')"


class RaySweepError(RuntimeError):
    """Ray is missing, its cluster cannot be reached, or a task died (not a measurement error)."""


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RaySweepError(RAY_MISSING) from exc
    return ray


def _swap(value, old: str, new: str):
    """``value`` (a report: dicts, lists, strings) with every ``old`` in its strings made ``new``."""
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_swap(v, old, new) for v in value)
    return value


def _on_node(home: str | None, out: Path, shown: str, work):
    """``work(folder)`` in a Ray task: in ``out`` (absolute) itself on the driver's node
    (``home``); on another node (or under Ray Client, home None) in a temporary folder, whose
    files come back as {relative path: bytes} for the driver to write to ``out``. Paths in the
    value read ``shown`` (the folder as the local path names it). Returns (value, files, machine)."""
    import tempfile

    import ray

    from .process import machine

    if home is not None and ray.get_runtime_context().get_node_id() == home:
        return _swap(work(out), str(out), shown), {}, machine()
    with tempfile.TemporaryDirectory(prefix="workbench-ray-") as tmp:
        value = work(Path(tmp))
        files = {p.relative_to(tmp).as_posix(): p.read_bytes() for p in sorted(Path(tmp).rglob("*")) if p.is_file()}
        return _swap(value, tmp, shown), files, machine()


def _driver_node(ray) -> str | None:
    """The node the driver runs on; None under Ray Client (no task runs beside the driver)."""
    from ray.util.client import ray as ray_client

    return None if ray_client.is_connected() else ray.get_runtime_context().get_node_id()


def _task_model(model, settings: MeasureSettings) -> LoadedModel:
    """In a task: one torch thread per CPU the task holds, and the model (put once, or its spec)."""
    from .process import setup_process

    setup_process(settings.threads or 1)
    if isinstance(model, LoadedModel):
        return model
    from .models import load_model

    return load_model(model)


def _ray_original(model, example, out: Path, shown: str, settings: MeasureSettings, home: str | None):
    """A Ray task: the original's figures, ``out/original.pt`` written (as :func:`_start` does)."""
    loaded = _task_model(model, settings)

    def work(folder: Path) -> dict:
        folder.mkdir(parents=True, exist_ok=True)
        return original_figures(loaded, example, folder, settings)

    return _on_node(home, out, shown, work)


def _ray_config(model, batch: Batch, config: OptimizationConfig, settings: MeasureSettings, out: Path,
                shown: str, source_name: str, original: dict, home: str | None):
    """A Ray task: one configuration's row (:func:`evaluate_steps`), its files in ``out``."""
    loaded = _task_model(model, settings)

    def work(folder: Path) -> dict:
        row = None
        for step in evaluate_steps(loaded, batch, config, settings, folder, source_name, original):
            if not isinstance(step, str):
                row = step
        return row

    return _on_node(home, out, shown, work)


def _write_back(out: Path, files: dict[str, bytes]) -> None:
    """The files a task on another node made, written where the local path writes them."""
    for rel, data in files.items():
        path = out / rel
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            continue  # a shared file system: already there
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)


def _ray_get(ray, ref):
    """ray.get, with a task's own exception (ConfigError, OptimizeError, ...) raised as itself."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise RaySweepError(f"a Ray task failed: {str(exc).splitlines()[0]}") from exc
    except ray.exceptions.RayError as exc:
        raise RaySweepError(f"a Ray task failed: {str(exc).splitlines()[0]}") from exc


def ray_sweep_steps(model_spec: str | LoadedModel, images, configs: Sequence[OptimizationConfig],
                    settings: MeasureSettings | None = None, limit: int | None = None,
                    out_dir: Path | str = "sweep", address: str | None = None) -> Iterator[str | dict]:
    """:func:`sweep_steps` with every configuration one Ray task; the same result and files.

    ``address``: None starts a local Ray on this machine (all its cores; Ray's own
    ``RAY_ADDRESS`` still applies); "auto" or "ray://host:port" connects to a cluster, whose
    nodes need the workbench installed. An already initialised Ray is used as it is; one
    started here is shut down at the end.

    The driver reads the model and images once and puts them in Ray's object store once. The
    original is measured once, in a task like the configurations' (the same torch threads:
    ``settings.threads``, default 1, one CPU per thread), so that their speedups compare like
    with like. Each configuration is one task that runs :func:`evaluate_steps` and returns its
    row; a task on another node sends its files back and the driver writes them under
    ``out_dir`` as the local path would. Progress: "config i/n done: label" as tasks finish;
    rows in configuration order. Latencies are measured by tasks that run side by side (and,
    on a cluster, on whichever node Ray picks: ``result["ray"]["machines"]``)."""
    import os

    from .process import machine

    ray = _import_ray()
    settings = settings or MeasureSettings()
    out = Path(out_dir)
    started = False
    pending: dict = {}
    try:
        if not ray.is_initialized():
            yield f"connecting to Ray at {address}" if address else "starting a local Ray"
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(include_dashboard=False, log_to_driver=False, num_cpus=os.cpu_count())
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RaySweepError(f"cannot start or reach Ray{f' at {address}' if address else ''}: "
                                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
            started = True
        home = _driver_node(ray)
        loaded, source, batch = yield from relay(prepare_steps(model_spec, images, limit, settings.calibration_images))
        (out / "models").mkdir(parents=True, exist_ok=True)
        try:
            model = ray.put(loaded)
        except Exception as exc:  # a module that does not pickle: each task loads it itself
            if isinstance(model_spec, LoadedModel):
                raise RaySweepError(f"the model does not pickle for Ray ({exc}); pass its name or file") from exc
            model = str(model_spec)
        batch_ref = ray.put(batch)
        threads = settings.threads or 1
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = {"num_cpus": min(threads, cpus), "max_retries": 0}
        yield f"measuring the original (Ray: {cpus} CPUs, {task['num_cpus']} per task)"
        # three returns: the configurations wait for the figures only, not for the file's bytes
        original_refs = ray.remote(_ray_original).options(num_returns=3, **task).remote(
            model, batch.inputs[0], (out / "models").resolve(), str(out / "models"), settings, home)
        evaluate = ray.remote(_ray_config).options(**task)
        for i, config in enumerate(configs, 1):
            folder = _folder(out, i, config)
            ref = evaluate.remote(model, batch_ref, config, settings, folder.resolve(), str(folder), source.name,
                                  original_refs[0], home)
            pending[ref] = i
        files, where = _ray_get(ray, original_refs[1]), _ray_get(ray, original_refs[2])
        _write_back(out / "models", files)
        machines = [where]
        rows: list = [None] * len(configs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                row, files, where = _ray_get(ray, ref)
                config = configs[i - 1]
                _write_back(_folder(out, i, config), files)
                rows[i - 1] = row
                if where not in machines:
                    machines.append(where)
                yield f"config {i}/{len(configs)} done: {config.label()}"
        yield {"rows": rows, **fronts(rows), "skipped": list(getattr(configs, "skipped", [])),
               "model": loaded.display_name, "source": source.name, "images": len(batch.inputs),
               "settings": settings.to_dict(), "machine": machine(),
               "ray": {"address": address or ("local" if started else "already running"), "cpus": cpus, "machines": machines}}
    finally:
        for ref in pending:  # closed early, or a task failed: the rest are not wanted
            try:
                ray.cancel(ref, force=True)
            except Exception:  # already finished, or gone with its worker
                pass
        if started:
            ray.shutdown()


# -- the plot (PIL only: no plotting library to import) --------------------------------------------

X_AXES = {"latency_ms": ("median latency (ms)", 1.0), "size_bytes": ("file size (MB)", 1e-6),
          "latency_ratio": ("latency, x the original's (timed in turns)", 1.0)}
Y_AXES = {"top1": "top-1", "agreement": "top-1 agreement with the original"}


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    import math

    step = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(step))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= step)
    first = math.ceil(low / step) * step
    return [first + k * step for k in range(int((high - first) / step + 1e-9) + 1)]


def plot_front(rows: Sequence[dict], x: str = "latency_ms", y: str | None = None, front: Sequence[int] | None = None,
               title: str = "", budget: float | None = None, size: tuple[int, int] = (900, 560)):
    """Accuracy (``y``: top-1, or agreement when unlabelled) against ``x`` as a PIL image: every
    row a labelled point, the front filled and joined by a step line (the best accuracy
    reachable at each ``x``), an optional budget as a vertical line. Rows need "label", x and y."""
    from PIL import Image, ImageDraw, ImageFont

    y = y or accuracy_key(rows)
    front = pareto_front(rows, x, y) if front is None else list(front)
    x_name, scale = X_AXES.get(x, (x, 1.0))
    points = [(i, r[x] * scale, r[y]) for i, r in enumerate(rows) if r.get(x) is not None and r.get(y) is not None]
    w, h = size
    left, right, top, bottom = 80, 40, 50, 70
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=12)
    draw.text((left, 8), title or f"{Y_AXES.get(y, y)} against {x_name}", fill="black", font=font)
    xs = [p[1] for p in points] + ([budget * scale] if budget is not None else [])
    ys = [p[2] for p in points]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    x_pad, y_pad = max((x_hi - x_lo) * 0.08, abs(x_hi) * 0.05, 1e-3), max((y_hi - y_lo) * 0.1, 0.02)
    x_lo, x_hi = max(0.0, x_lo - x_pad), x_hi + x_pad
    y_lo, y_hi = max(0.0, y_lo - y_pad), y_hi + y_pad

    def px(vx: float, vy: float) -> tuple[float, float]:
        return (left + (vx - x_lo) / (x_hi - x_lo) * (w - left - right),
                h - bottom - (vy - y_lo) / (y_hi - y_lo) * (h - top - bottom))

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _ticks(x_lo, x_hi):
        cx, _ = px(t, y_lo)
        draw.line([cx, h - bottom, cx, h - bottom + 5], fill="black")
        draw.text((cx, h - bottom + 8), f"{t:g}", fill="black", font=small, anchor="mt")
    for t in _ticks(y_lo, y_hi):
        _, cy = px(x_lo, t)
        draw.line([left - 5, cy, left, cy], fill="black")
        draw.line([left, cy, w - right, cy], fill=(235, 235, 235))
        draw.text((left - 8, cy), f"{t:.3g}", fill="black", font=small, anchor="rm")
    draw.text(((left + w - right) / 2, h - 25), x_name, fill="black", font=font, anchor="mm")
    draw.text((10, top - 16), Y_AXES.get(y, y), fill="black", font=small)
    if budget is not None:
        bx, _ = px(budget * scale, y_lo)
        for y0 in range(top, h - bottom, 12):
            draw.line([bx, y0, bx, min(y0 + 6, h - bottom)], fill=(200, 40, 40), width=2)
        draw.text((bx + 4, top + 4), f"budget {budget * scale:g}", fill=(200, 40, 40), font=small)
    on_front = sorted((p for p in points if p[0] in front), key=lambda p: (p[1], p[2]))
    step = []
    for k, (_, vx, vy) in enumerate(on_front):  # post-step: flat until the next front point, then up
        step.append(px(vx, vy))
        if k + 1 < len(on_front):
            step.append(px(on_front[k + 1][1], vy))
    if on_front:
        step.append(px(x_hi, on_front[-1][2]))
        draw.line(step, fill=(230, 120, 20), width=2)
    placed: list[tuple[float, float, float, float]] = []  # label boxes drawn so far
    for i, vx, vy in points:
        cx, cy = px(vx, vy)
        fill = (30, 90, 200) if i in front else "white"
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=fill, outline=(30, 90, 200), width=2)
        right_side = cx > left + 0.6 * (w - left - right)  # labels of the right-hand points go to their left
        text, anchor = str(rows[i].get("label", i)), "rs" if right_side else "ls"
        spots = [(cx - 8 if right_side else cx + 8, cy + dy) for dy in (-8, 20, -22, 34, -36)]
        boxes = [draw.textbbox(spot, text, font=small, anchor=anchor) for spot in spots]
        free = [k for k, b in enumerate(boxes)  # the first place that overlaps no other label
                if not any(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in placed)]
        k = free[0] if free else 0
        placed.append(boxes[k])
        draw.text(spots[k], text, fill=(60, 60, 60), font=small, anchor=anchor)
    return img


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_sweep(result: dict, out_dir: Path | str, budget_ms: float | None = None) -> dict[str, Path]:
    """results.csv (one row per configuration, :data:`COLUMNS`), results.json (the whole
    result: rows with their reports, fronts, machine) and pareto.png (accuracy against
    latency, the front as a step line), each written whole or not at all. Takes a sweep's
    result, or a budget search's (its ``tried`` rows). Returns the paths by name."""
    from .process import machine

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = result.get("rows", result.get("tried", []))
    result = {**fronts(rows), **result, "rows": rows, "machine": result.get("machine") or machine()}
    result.pop("tried", None)
    paths = {"csv": out / "results.csv", "json": out / "results.json", "png": out / "pareto.png"}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(paths["csv"], buf.getvalue())
    write_text(paths["json"], json.dumps(result, indent=1, default=str))
    # the front as results.json has it; against a budget in milliseconds, the rows' own medians
    x, front = ("latency_ratio", result["front_latency"]) if budget_ms is None else ("latency_ms", None)
    image = plot_front(rows, x, result["accuracy"], front, budget=budget_ms,
                       title=f"{Y_AXES[result['accuracy']]} against latency: {len(rows)} configurations")
    with atomic_path(paths["png"]) as tmp:
        image.save(tmp, format="PNG")
    return paths


# -- budget search ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """A configuration the budget search may measure.

    tier: rank of expected accuracy (0 best); the search finishes a tier, and stops after the
        first tier where something fits: later tiers are expected to be less accurate.
    speed: what its latency is expected to equal: "own" (it may be faster than what came
        before), "original" (simulated bits run float kernels), "int8" (zeros in int8 kernels).
        A candidate whose expected latency was measured over the budget is not measured.
    fastest_int8: run on whichever int8 runtime (torch or ONNX Runtime) measured faster.
    """

    config: OptimizationConfig
    tier: int
    speed: str
    fastest_int8: bool = False


# In order of expected accuracy, from docs/benchmarks.md (EfficientNet-Lite0, top-1 drop):
# int8 -0.4 points (torch and ONNX Runtime both, whichever is faster here); 4-bit weights with
# mixed precision -3.8 (about 6x smaller, not faster); 30 % of MACs removed (structured-hidden)
# plus int8 about -6.6 (faster and smaller); 50 % OBC zeros plus int8 about -6 to -14 (smaller,
# as fast as int8); 50 % of MACs removed plus int8: the largest drop, the fastest.
CANDIDATES = (
    Candidate(OptimizationConfig(), 0, "original"),
    Candidate(OptimizationConfig(bits=8), 1, "own"),
    Candidate(OptimizationConfig(bits=8, runtime="onnxruntime"), 1, "own"),
    Candidate(OptimizationConfig(bits=4), 2, "original"),
    Candidate(OptimizationConfig(sparsity=0.3, prune_method="structured-hidden", bits=8), 3, "own", True),
    Candidate(OptimizationConfig(sparsity=0.5, prune_method="unstructured-obc", bits=8), 4, "int8"),
    Candidate(OptimizationConfig(sparsity=0.5, prune_method="structured-hidden", bits=8), 5, "own", True),
)


def _fits(row: dict, budget_ms: float | None, budget_mb: float | None) -> bool:
    return ((budget_ms is None or row["latency_ms"] <= budget_ms)
            and (budget_mb is None or row["size_bytes"] <= budget_mb * 1e6))


def budget_search(model_spec: str | LoadedModel, images, budget_ms: float | None = None,
                  budget_mb: float | None = None, settings: MeasureSettings | None = None,
                  limit: int | None = None, out_dir: Path | str = "budget", max_evals: int = 8,
                  candidates: Sequence[Candidate] = CANDIDATES) -> Iterator[str | dict]:
    """The most accurate configuration whose measured median latency is at most ``budget_ms``
    and/or whose file is at most ``budget_mb`` MB (10^6 bytes), in few measurements.

    :data:`CANDIDATES` are measured in order of expected accuracy, tier by tier; the search
    stops after the first tier in which a candidate fits (or after ``max_evals`` measurements)
    and returns the most accurate fitting row measured (top-1, or agreement when unlabelled;
    ties: the faster). Candidates that cannot be faster than a latency already measured over
    the budget (simulated bits, zeros) are skipped, not measured. Yields progress, then
    ``{"best": row or None, "tried": rows, "skipped": [...], "budget": {...}, "reason": str}``."""
    if budget_ms is None and budget_mb is None:
        raise ConfigError("give a latency budget (ms) or a size budget (MB)")
    for name, value in (("latency", budget_ms), ("size", budget_mb)):
        if value is not None and not value > 0:
            raise ConfigError(f"the {name} budget must be positive, got {value!r}")
    if max_evals < 1:
        raise ConfigError(f"max_evals must be at least 1, got {max_evals}")
    settings = settings or MeasureSettings()
    out = Path(out_dir)
    loaded, source, batch, original = yield from _start(model_spec, images, limit, out, settings)
    tried, skipped, latency = [], [], {}  # latency: the measured "original" and fastest "int8"
    for tier, group in itertools.groupby(candidates, key=lambda c: c.tier):
        if any(_fits(r, budget_ms, budget_mb) for r in tried) or len(tried) >= max_evals:
            break
        for cand in group:
            if len(tried) >= max_evals:
                break
            config = cand.config
            if cand.fastest_int8 and "int8_runtime" in latency:
                config = config.with_(runtime=latency["int8_runtime"])
            expected = latency.get(cand.speed)
            if budget_ms is not None and expected is not None and expected > budget_ms:
                skipped.append({"label": config.label(), "reason": f"expected about as fast as {cand.speed} "
                                                                   f"({expected:.1f} ms), over the budget"})
                continue
            yield f"candidate {len(tried) + 1}/{max_evals} (tier {tier}): {config.label()}"
            row = yield from relay(evaluate_steps(loaded, batch, config, settings,
                                                  _folder(out, len(tried) + 1, config), source.name, original))
            tried.append(row)
            if config.is_identity:
                latency["original"] = row["latency_ms"]
            elif config.real_int8 and not config.sparsity and row["latency_ms"] < latency.get("int8", float("inf")):
                latency["int8"], latency["int8_runtime"] = row["latency_ms"], config.runtime
    y = accuracy_key(tried)
    fitting = [r for r in tried if _fits(r, budget_ms, budget_mb)]
    best = max(fitting, key=lambda r: (r[y], -r["latency_ms"]), default=None)
    wanted = " and ".join(s for s in (budget_ms is not None and f"<= {budget_ms:g} ms",
                                      budget_mb is not None and f"<= {budget_mb:g} MB") if s)
    if best is not None:
        reason = (f"{best['label']}: {best['latency_ms']:.1f} ms, {best['size_bytes'] / 1e6:.2f} MB, "
                  f"{y} {best[y]:.3f}; the most accurate of {len(tried)} measured within {wanted}")
    elif tried:
        fastest = min(tried, key=lambda r: r["latency_ms"])
        smallest = min(tried, key=lambda r: r["size_bytes"])
        reason = (f"no configuration within {wanted} in {len(tried)} measurements (max {max_evals}); fastest: "
                  f"{fastest['label']} {fastest['latency_ms']:.1f} ms, smallest: {smallest['label']} "
                  f"{smallest['size_bytes'] / 1e6:.2f} MB")
    else:
        reason = f"no candidate measured for {wanted}"
    yield {"best": best, "tried": tried, "skipped": skipped, "reason": reason, "accuracy": y,
           "budget": {"latency_ms": budget_ms, "size_mb": budget_mb, "max_evals": max_evals,
                      "evaluations": len(tried)},
           "model": loaded.display_name, "source": source.name, "images": len(batch.inputs),
           "settings": settings.to_dict()}
