"""Export an optimized model as files to deploy (ONNX, TorchScript, the packed file behind
its size figure), with its compare report as JSON and as a self-contained HTML page."""

from __future__ import annotations

import base64
import html
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from .compare import optimize_batch_steps, recover_steps, report_for
from .config import MeasureSettings, OptimizationConfig
from .files import atomic_path
from .measure import predict
from .models import LoadedModel
from .optimize import CudaModel, OptimizedModel, relay
from .pareto import accuracy_key
from .sweep import COLUMNS, plot_front, png_bytes, prepare_steps, row_of, write_text

CHECK_IMAGES = 8  # the exported files are checked against the optimized model on this many images


def write_onnx(opt: OptimizedModel, calibration: Sequence[torch.Tensor], path: Path) -> str:
    """``path``: the ONNX file of ``opt``; returns what the file holds, in one sentence.

    ONNX Runtime runtime: the file that was measured. Real int8 on torch: ONNX Runtime's own
    static int8 quantization of the optimized float network, on the same calibration images.
    Otherwise the float network; for simulated bit widths it holds the rounded weights as float32."""
    from .deploy import export_onnx, quantize_onnx_int8

    cfg = opt.config
    with atomic_path(path) as tmp:
        if opt.file is not None:
            shutil.copyfile(opt.file, tmp)
            return f"the file that was measured ({opt.kernels})"
        if cfg.real_int8:
            with tempfile.TemporaryDirectory(prefix="workbench-export-") as work:
                float_path = export_onnx(opt.float_model, calibration[0], Path(work) / "float.onnx")
                quantize_onnx_int8(float_path, tmp, calibration, cfg.per_channel)
            return ("int8 by ONNX Runtime's static quantization (QDQ) of the optimized float network, calibrated "
                    f"on the same {len(calibration)} images; the measured model ran torch's int8 kernels")
        export_onnx(opt.float_model, calibration[0], tmp)
    if cfg.simulated:
        what = "weights" if cfg.quant_scheme == "weights" or cfg.bits >= 8 else "weights (activations not rounded)"
        return f"the float network with its {cfg.bits}-bit {what} stored as float32: the bit width is simulated"
    return "the optimized float network"


def write_torchscript(opt: OptimizedModel, example: torch.Tensor, path: Path) -> str:
    """``path``: a TorchScript trace of the model that ran (of its float network when that
    was ONNX Runtime or a GPU copy); returns what it holds."""
    model, what = opt.model, "the model that was measured"
    if not isinstance(model, nn.Module) or isinstance(model, CudaModel):
        model, what = opt.float_model, f"the optimized float network (the measured model ran {opt.kernels})"
        if opt.config.real_int8:
            what += "; its int8 rounding is not in this file"
    from .locks import tracing  # torch's tracer keeps process-wide state

    with tracing(), torch.no_grad():
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return f"trace of {what}"


def export_check(opt: OptimizedModel, files: dict[str, Path], inputs: Sequence[torch.Tensor]) -> dict:
    """Run each exported file (ONNX in ONNX Runtime, TorchScript with ``torch.jit.load``) on
    ``inputs`` against the optimized model: the number of scores and the top-1 of each image."""
    from .deploy import OrtModel

    ref = predict(opt.model, inputs)
    check = {"images": len(inputs), "compared_with": "the optimized model (as measured)",
             "top1": ref.top1.tolist()}
    runners = {"onnx": lambda p: OrtModel(p), "torchscript": lambda p: torch.jit.load(str(p)).eval()}
    for name, path in files.items():
        got = predict(runners[name](path), inputs)
        check[name] = {"file": path.name, "classes": int(got.probs.shape[1]), "top1": got.top1.tolist(),
                       "same_top1": bool((got.top1 == ref.top1).all()),
                       "agreement": (got.top1 == ref.top1).float().mean().item(),
                       "max_prob_diff": (got.probs - ref.probs).abs().max().item()}
    return check


def export_steps(model_spec: str | LoadedModel, images, config: OptimizationConfig,
                 settings: MeasureSettings | None = None, limit: int | None = None,
                 out_dir: Path | str = "export", tried: Sequence[tuple[OptimizationConfig, dict]] = (),
                 recover: int | None = None) -> Iterator[str | dict]:
    """Optimize as ``compare`` does (calibrated on the first ``settings.calibration_images``
    images), then write to ``out_dir``: model.onnx, model.ts, the shipped file behind the size
    figure (``optimized.pt`` / ``.wbpack`` / ``.onnx``, beside ``original.pt`` as in
    ``compare --out``), report.json (the compare report, with ``export`` and ``export_check``)
    and report.html. ``tried``: (configuration, report) pairs measured before (the window's), listed
    in the report's table and plot. ``recover``: distil the optimized model that many steps first
    (``compare.recover_steps``, as the window's *Recover accuracy*). Yields progress, then the report."""
    settings = settings or MeasureSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded, source, batch = yield from relay(prepare_steps(model_spec, images, limit, settings.calibration_images))
    opt = yield from relay(optimize_batch_steps(loaded, batch, config, settings, out))
    if recover is not None:
        opt = yield from recover_steps(loaded, opt, batch.inputs[:settings.calibration_images], steps=recover)
    yield f"evaluating {len(batch.inputs)} images"
    report = report_for(loaded, opt, batch, out, settings, source.name)
    calibration = batch.inputs[:settings.calibration_images]  # the images the optimization calibrated on
    files = {"onnx": out / "model.onnx", "torchscript": out / "model.ts"}
    yield "exporting to ONNX"
    notes = {"onnx": write_onnx(opt, calibration, files["onnx"])}
    yield "exporting to TorchScript"
    notes["torchscript"] = write_torchscript(opt, batch.inputs[0], files["torchscript"])
    yield "checking the exported files"
    report["export_check"] = export_check(opt, files, batch.inputs[:CHECK_IMAGES])
    report["export"] = {"onnx": {"file": "model.onnx", "holds": notes["onnx"]},
                        "torchscript": {"file": "model.ts", "holds": notes["torchscript"]},
                        "shipped": {"file": Path(report["optimized"]["file"]).name,
                                    "format": report["optimized"]["file_format"],
                                    "size_bytes": report["optimized"]["size_bytes"]}}
    report["tried"] = [{k: v for k, v in row_of(c, r).items() if k in COLUMNS} for c, r in tried]
    write_text(out / "report.json", json.dumps(report, indent=1, default=str))
    write_text(out / "report.html", report_html(report))
    yield report


def _points(report: dict) -> list[dict]:
    o, q = report["original"], report["optimized"]
    label = OptimizationConfig.from_dict({k: v for k, v in report["config"].items() if k != "measure"}).label()
    return [{"label": "original", "latency_ms": o["latency_ms"]["median"], "size_bytes": o["size_bytes"],
             "top1": o["top1"], "agreement": 1.0},
            {"label": label, "latency_ms": q["latency_ms"]["median"], "size_bytes": q["size_bytes"],
             "top1": q["top1"], "agreement": q["agreement"]}]


def report_html(report: dict) -> str:
    """A self-contained page: the config, the figures of original and optimized, the plot
    (an embedded PNG drawn by :func:`sweep.plot_front`) and the export check."""
    o, q = report["original"], report["optimized"]

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    rows = [("top-1", pct(o["top1"]), pct(q["top1"])), ("top-5", pct(o["top5"]), pct(q["top5"])),
            ("agreement with original", "", pct(q["agreement"])), ("mean KL from original", "", f"{q['kl']:.4f}"),
            ("latency median / p90 (ms)", f"{o['latency_ms']['median']:.1f} / {o['latency_ms']['p90']:.1f}",
             f"{q['latency_ms']['median']:.1f} / {q['latency_ms']['p90']:.1f}"),
            ("file size (MB)", f"{o['size_bytes'] / 1e6:.2f}", f"{q['size_bytes'] / 1e6:.2f}"),
            ("parameters (non-zero)", f"{o['params']:,} ({o['nonzero_params']:,})",
             f"{q['params']:,} ({q['nonzero_params']:,})"),
            ("MACs", f"{o['macs'] or 0:,}", f"{q['macs'] or 0:,}"),
            ("kernels", "fp32", q["kernels"] + (" [simulated]" if q["simulated"] else ""))]
    tried = report.get("tried") or []
    points = _points(report)
    plot = plot_front(tried + points, "latency_ms", accuracy_key(points),
                      title="every configuration tried" if tried else "original and optimized", size=(720, 420))
    table = "".join(f"<tr><td>{html.escape(r['label'])}</td><td>{pct(r['top1'])}</td><td>{pct(r['agreement'])}</td>"
                    f"<td>{r['latency_ms']:.1f}</td><td>{r['size_bytes'] / 1e6:.2f}</td></tr>" for r in tried)
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(plot)).decode()
    e = html.escape
    config = "".join(f"<tr><th>{e(str(k))}</th><td>{e(json.dumps(v))}</td></tr>" for k, v in report["config"].items())
    figures = "".join(f"<tr><th>{e(a)}</th><td>{e(b)}</td><td>{e(c)}</td></tr>" for a, b, c in rows)
    exported = "".join(f"<li>{e(v['file'])}: {e(v.get('holds', v.get('format', '')))}</li>"
                       for v in report.get("export", {}).values())
    check = report.get("export_check", {})
    checks = "".join(f"<li>{e(name)}: {check[name]['classes']} scores, same top-1 on {check['images']} images: "
                     f"{'yes' if check[name]['same_top1'] else 'no'} (agreement {check[name]['agreement']:.0%})</li>"
                     for name in ("onnx", "torchscript") if name in check)
    notes = "".join(f"<li>{e(n)}</li>" for n in q.get("notes", []))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>workbench export: {e(report['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}</style></head><body>
<h1>{e(report['model'])}: {e(points[1]['label'])}</h1>
<p>{e(report['source'])}: {report['images']} images ({report['labelled']} labelled), {report['threads']} threads,
{e(str(report['machine'].get('cpu', '')))}. What ran: {e(q['description'])}.</p>
<h2>Figures</h2><table><tr><th></th><th>original</th><th>optimized</th></tr>{figures}</table>
<img alt="accuracy against latency" src="{uri}">
<h2>Configurations tried</h2><table><tr><th>configuration</th><th>top-1</th><th>agreement</th>
<th>latency (ms)</th><th>file (MB)</th></tr>{table}</table>
<h2>Files</h2><ul>{exported}</ul><h2>Export check</h2><ul>{checks}</ul>
<h2>Notes</h2><ul>{notes}</ul>
<h2>Configuration</h2><table>{config}</table>
</body></html>
"""
