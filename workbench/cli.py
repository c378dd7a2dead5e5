"""``python -m workbench``: the headless twin of the window."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path


def _choices(table) -> tuple[list[str], str]:
    return list(table), "; ".join(f"{m.key}: {m.help}" for m in table.values())


def _optimization_options(p) -> None:
    """The options that build an OptimizationConfig (compare, bench live): from the registry."""
    from .core import methods

    prune, prune_help = _choices(methods.PRUNE_METHODS)
    p.add_argument("--sparsity", type=float, default=0.0, help="0 to 0.95")
    p.add_argument("--prune-method", default=methods.DEFAULT_PRUNE_METHOD, choices=prune,
                   help=f"default: {methods.DEFAULT_PRUNE_METHOD}; " + prune_help)
    p.add_argument("--bits", type=int, default=32, help="32 (off), 16, 8 .. 2")
    schemes, scheme_help = _choices(methods.QUANT_SCHEMES)
    p.add_argument("--quant-scheme", choices=schemes, default=None,
                   help="default: weights-activations at 8 bits (real int8), weights below; " + scheme_help)
    p.add_argument("--act-bits", type=int, default=None, metavar="N",
                   help="with --bits below 8: activations at N bits (2-8, simulated), e.g. --bits 4 --act-bits 8 "
                        "(W4A8)")


def _compare_parser(sub) -> None:
    from .core import methods

    p = sub.add_parser("compare", help="measure a model and its optimized copy on images")
    p.add_argument("--config", default=None,
                   help="a JSON file: the config block of a report (or a whole compare --json report); "
                        "options given on the command line override it")
    p.add_argument("--model", default="efficientnet_lite0", help="model name or file (default: %(default)s)")
    p.add_argument("--weights", choices=["default", "none"], default="default",
                   help="'none': random weights (marked as such)")
    p.add_argument("--arch", help="architecture of a state-dict file")
    p.add_argument("--trust", action="store_true", help="allow loading a pickled model file (runs its code)")
    p.add_argument("--images", default=None, help="folder, image, video or camera index (default: sample photos)")
    p.add_argument("--limit", type=int, default=None, help="use at most N images")
    _optimization_options(p)
    roundings, rounding_help = _choices(methods.ROUNDINGS)
    p.add_argument("--rounding", choices=roundings, default=methods.DEFAULT_ROUNDING,
                   help=rounding_help + " (default: %(default)s)")
    allocations, allocation_help = _choices(methods.ALLOCATIONS)
    p.add_argument("--allocation", choices=allocations, default="sensitivity", help=allocation_help)
    p.add_argument("--naive", action="store_true",
                   help="none of the accuracy-keeping methods (BatchNorm re-estimation, bias correction, "
                        "MSE clipping, sensitivity allocation, reconstruction)")
    p.add_argument("--no-bn-recalibration", action="store_true", help=methods.RECOVERY["bn_recalibration"].help)
    p.add_argument("--no-bias-correction", action="store_true", help=methods.RECOVERY["bias_correction"].help)
    p.add_argument("--per-tensor", action="store_true", help="one scale per tensor instead of per channel")
    runtimes, runtime_help = _choices(methods.RUNTIMES)
    p.add_argument("--runtime", choices=runtimes, default="torch", help=runtime_help)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="run the optimized model on the GPU (float and 16-bit; default: %(default)s)")
    p.add_argument("--target-macs", type=float, default=None, metavar="F",
                   help="keep this fraction of the original MACs: structured-hidden pruning with sparsity 1 - F")
    p.add_argument("--round-to", type=int, default=1,
                   help="structured pruning keeps channel counts a multiple of this (e.g. 8)")
    p.add_argument("--exclude", action="append", default=[], help="layer name to leave alone (repeatable)")
    p.add_argument("--layer-bits", action="append", default=[], metavar="LAYER=BITS",
                   help="a layer's own bit width (repeatable)")
    p.add_argument("--calibration", type=int, default=None, help="calibration images (default: 128)")
    p.add_argument("--runs", type=int, default=None, help="timed runs for latency (default: 30)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--recover-steps", type=int, default=None, metavar="N",
                   help="then distil the optimized model N steps from the original on the calibration images "
                        "(the window's Recover accuracy: its copied command gives the steps it kept)")
    p.add_argument("--out", default=None, help="folder for the model files whose size is reported (default: a "
                                               "temporary folder, removed when the command ends)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _settings_and_config(args):
    """(OptimizationConfig, MeasureSettings) from ``--config FILE`` overridden by the options
    given on the command line. Raises ConfigError."""
    from .core.config import ConfigError, MeasureSettings, OptimizationConfig, load_config_file

    base, settings = load_config_file(args.config) if getattr(args, "config", None) else (None, MeasureSettings())
    given = {a.split("=")[0] for a in args.argv if a.startswith("--")} if base is not None else None

    def pick(option: str, value, from_base):
        return from_base if given is not None and option not in given else value

    def layer_bits(items):
        try:
            return tuple((n, int(b)) for n, b in (i.rsplit("=", 1) for i in items))
        except ValueError:
            raise ConfigError("--layer-bits takes LAYER=BITS, e.g. blocks.3.0.conv=6") from None

    b = base or OptimizationConfig()
    if args.target_macs is not None:
        if not 0.05 <= args.target_macs <= 1.0:
            raise ConfigError(f"--target-macs must be between 0.05 and 1, got {args.target_macs}")
        args.sparsity = round(1.0 - args.target_macs, 4)
        if "--prune-method" not in args.argv:
            args.prune_method = "structured-hidden"
        given = None if given is None else given | {"--sparsity", "--prune-method"}
    bits = pick("--bits", args.bits, b.bits)
    scheme = pick("--quant-scheme", args.quant_scheme, b.quant_scheme)
    if given is not None and "--bits" in given and "--quant-scheme" not in given:
        scheme = None  # a new bit width takes its default scheme
    config = OptimizationConfig(
        sparsity=pick("--sparsity", args.sparsity, b.sparsity), prune_method=pick("--prune-method", args.prune_method,
                                                                                  b.prune_method),
        bits=bits, quant_scheme=scheme, act_bits=pick("--act-bits", args.act_bits, b.act_bits), per_channel=pick("--per-tensor", not args.per_tensor, b.per_channel),
        exclude=tuple(args.exclude) or b.exclude, runtime=pick("--runtime", args.runtime, b.runtime),
        round_to=pick("--round-to", args.round_to, b.round_to), rounding=pick("--rounding", args.rounding, b.rounding),
        allocation=pick("--allocation", args.allocation, b.allocation), device=pick("--device", args.device, b.device),
        bn_recalibration=pick("--no-bn-recalibration", not args.no_bn_recalibration, b.bn_recalibration),
        bias_correction=pick("--no-bias-correction", not args.no_bias_correction, b.bias_correction),
        layer_bits=layer_bits(args.layer_bits) or b.layer_bits)
    if args.naive:
        config = config.naive()
    changes = {k: v for k, v in (("calibration_images", args.calibration), ("latency_runs", args.runs),
                                 ("threads", args.threads)) if v is not None}
    return config, MeasureSettings(**{**settings.to_dict(), **changes})


def _fail(message: str) -> int:
    logging.getLogger(__name__).error("%s", message)
    print(f"workbench: error: {message}", file=sys.stderr)
    return 2


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _table(report: dict) -> str:
    from .core.compare import scored_text

    o, q = report["original"], report["optimized"]

    def pct(v):
        return "-" if v is None else f"{v:.1%}"

    rows = [
        ("top-1", pct(o["top1"]), pct(q["top1"])),
        ("top-5", pct(o["top5"]), pct(q["top5"])),
        ("agreement with original", "", pct(q["agreement"])),
        ("mean KL from original", "", f"{q['kl']:.4f}"),
        ("latency median / p90 (ms)", f"{o['latency_ms']['median']:.1f} / {o['latency_ms']['p90']:.1f}",
         f"{q['latency_ms']['median']:.1f} / {q['latency_ms']['p90']:.1f}"),
        ("latency over the original's", "1.00x", f"{q['latency_ratio']:.2f}x (timed in turns)"),
        ("file size", _fmt_bytes(o["size_bytes"]), _fmt_bytes(q["size_bytes"])),
        ("parameters (non-zero)", f"{o['params']:,} ({o['nonzero_params']:,})",
         f"{q['params']:,} ({q['nonzero_params']:,})"),
        ("MACs", f"{o['macs'] or 0:,}", f"{q['macs'] or 0:,}"),
        ("kernels", "fp32", q["kernels"] + (" [simulated]" if q["simulated"] else "")),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{report['model']} on {report['source']}: {report['images']} images "
             f"({report['labelled']} labelled), {report['threads']} threads, {report['machine']['cpu']}",
             f"{'':{width}}  {'original':>24}  {'optimized':>24}"]
    lines += [f"{a:{width}}  {b:>24}  {c:>24}" for a, b, c in rows]
    lines.append(f"accuracy over {scored_text(report['scored'])}")
    lines.append(f"what ran: {q['description']}")
    if q.get("methods"):
        lines.append("accuracy methods: " + ", ".join(q["methods"]))
    lines += [f"note: {n}" for n in q["notes"]]
    if report["skipped"]:
        lines.append(f"skipped {len(report['skipped'])} unreadable file(s):")
        lines += [f"  {s['path']}: {s['reason']}" for s in report["skipped"]]
    return "\n".join(lines)


def run_compare(args) -> int:
    from .core.compare import compare_steps
    from .core.config import ConfigError, recovered_steps_in
    from .core.models import ModelLoadError, load_model
    from .core.optimize import OptimizeError
    from .core.process import setup_process
    from .core.sources import SourceError, open_source

    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    if args.recover_steps is not None and args.recover_steps < 0:
        return _fail(f"--recover-steps must be 0 or more, got {args.recover_steps}")
    try:
        config, settings = _settings_and_config(args)
        recover = args.recover_steps
        if recover is None and args.config:  # a saved report of a recovered model replays its steps
            recover = recovered_steps_in(args.config)
        setup_process(settings.threads)
        source = open_source(args.images, args.limit, settings.calibration_images)
        loaded = load_model(args.model, weights=args.weights, trust=args.trust, arch=args.arch)
    except (ConfigError, SourceError, ModelLoadError) as exc:
        return _fail(str(exc))
    report = None
    try:
        for step in compare_steps(loaded, source, config, settings, limit=args.limit, out_dir=args.out,
                                  recover=recover):
            if isinstance(step, str):
                if sys.stderr.isatty():
                    print(f"\r{step:60}", end="", file=sys.stderr, flush=True)
            else:
                report = step
    except (OptimizeError, ValueError) as exc:
        return _fail(str(exc))
    if sys.stderr.isatty():
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    print(json.dumps(report, indent=1) if args.json else _table(report))
    return 0


def _bench_parser(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    live = bench.add_parser("live", help="live mode through the real window (offscreen)")
    live.add_argument("--video", default=None,
                      help="video standing in for a camera (default: a generated 640x480 30 FPS clip)")
    live.add_argument("--seconds", type=float, default=20.0)
    _optimization_options(live)
    live.set_defaults(bits=8)
    live.add_argument("--json", action="store_true")
    soak = bench.add_parser("soak", help="long run: the live window on a video, then a folder pass; memory, "
                                         "threads and open files over time")
    soak.add_argument("--video", default=None, help="default: a generated 640x480 30 FPS clip")
    soak.add_argument("--seconds", type=float, default=600.0, help="live part (default: %(default)s)")
    soak.add_argument("--images", default=None, help="folder read over and over (default: sample photos)")
    soak.add_argument("--frames", type=int, default=10_000, help="folder pass (default: %(default)s)")
    soak.add_argument("--json", action="store_true")
    acc = bench.add_parser("accuracy", help="top-1 of each configuration without and with the accuracy methods")
    acc.add_argument("--images", required=True, help="a labelled image folder (e.g. the shared ImageNet sample)")
    acc.add_argument("--limit", type=int, default=None)
    acc.add_argument("--recover-seconds", type=float, default=0.0,
                     help="also distil the structured model for this long (on half the images, tested on the rest)")
    acc.add_argument("--json", action="store_true")
    speed = bench.add_parser("speed", help="latency table: float, int8, structured, unstructured, ONNX Runtime")
    speed.add_argument("--models", default=",".join(("efficientnet_lite0", "resnet18", "mobilenet_v3_large")),
                       help="comma-separated model names (torchvision ones use random weights)")
    speed.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    speed.add_argument("--runs", type=int, default=30)
    speed.add_argument("--json", action="store_true", help="one JSON object with the rows")


def run_speed(args) -> int:
    from .core.bench import speed_rows
    from .core.models import ModelLoadError

    rows = []
    try:
        for row in speed_rows(args.models.split(","), [int(t) for t in args.threads.split(",")], args.runs):
            rows.append(row)
            if not args.json:
                print(f"{row['model']:34} {row['configuration']:28} {row['runtime']:12} {row['threads']}t "
                      f"{row['latency_ms']['median']:8.2f} ms  x{row['speedup']:.2f}  "
                      f"MACs {row['macs'] / 1e6:7.1f} M  {row['size_bytes'] / 1e6:6.2f} MB  "
                      f"realized/theoretical {row['realized_over_theoretical']:.2f}", flush=True)
    except (ModelLoadError, ValueError) as exc:
        return _fail(str(exc))
    if args.json:
        from .core.process import machine

        print(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


def run_accuracy(args) -> int:
    from .core.bench import accuracy_rows
    from .core.sources import SourceError

    rows = []
    try:
        for row in accuracy_rows(args.images, args.limit, args.recover_seconds):
            rows.append(row)
            if not args.json:
                top1 = "-" if row["top1"] is None else f"{row['top1']:.3f}"
                print(f"{row['configuration']:46} {row['variant']:20} top-1 {top1}  agreement {row['agreement']:.3f}  "
                      f"{row['size_bytes'] / 1e6:6.2f} MB  {row['latency_ms']:6.1f} ms  {', '.join(row['methods'])}",
                      flush=True)
    except SourceError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"rows": rows}, indent=1))
    return 0


def run_bench(args) -> int:
    from .core.config import ConfigError, OptimizationConfig
    from .core.process import setup_process

    setup_process()
    if args.bench == "speed":
        return run_speed(args)
    if args.bench == "soak":
        return run_soak(args)
    if args.bench == "accuracy":
        if args.limit is not None and args.limit < 1:
            return _fail(f"--limit must be at least 1, got {args.limit}")
        if not 0 <= args.recover_seconds <= 86_400:
            return _fail(f"--recover-seconds must be between 0 and 86400, got {args.recover_seconds:g}")
        return run_accuracy(args)

    if not 1 <= args.seconds <= 86_400:
        return _fail(f"--seconds must be between 1 and 86400, got {args.seconds:g}")
    try:
        config = OptimizationConfig(sparsity=args.sparsity, prune_method=args.prune_method, bits=args.bits,
                                    quant_scheme=args.quant_scheme, act_bits=args.act_bits)
    except ConfigError as exc:
        return _fail(str(exc))
    if args.video is not None and not Path(args.video).is_file():
        return _fail(f"no such video: {args.video}")
    from .core.files import temp_folder
    from .core.live import make_test_video
    from .ui.live_bench import bench_live

    with temp_folder("video") as tmp:  # the generated clip goes with it
        video = args.video or str(make_test_video(tmp / "live.avi", seconds=10, fps=30))
        result = bench_live(video, args.seconds, config)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def run_soak(args) -> int:
    """bench soak: the live pipeline, then the folder pass; growth is measured after warm-up."""
    from .core.bench import folder_soak
    from .core.config import OptimizationConfig
    from .core.files import temp_folder
    from .core.live import make_test_video
    from .ui.live_bench import bench_live

    if not 1 <= args.seconds <= 86_400 or not 1 <= args.frames <= 10_000_000:
        return _fail(f"--seconds must be 1 to 86400 and --frames 1 to 10000000, got {args.seconds:g}, {args.frames}")
    config = OptimizationConfig(bits=8)
    with temp_folder("video") as tmp:  # the generated clip goes with it
        video = args.video or str(make_test_video(tmp / "soak.avi", seconds=10, fps=30))
        result = {"live": bench_live(video, args.seconds, config)}
    samples = result["live"]["resources"]
    warm = next((s for s in samples if s["seconds"] >= 30), samples[0])
    result["live"]["growth_after_warmup"] = {k: round(samples[-1][k] - warm[k], 1)
                                             for k in ("rss_mb", "threads", "open_files")}
    for step in folder_soak(args.images, args.frames, config, sample_every=max(1, min(500, args.frames // 10))):
        if isinstance(step, str):
            print(step, file=sys.stderr)
        else:
            result["folder"] = step
    print(json.dumps(result, indent=1) if args.json else result)
    return 0


def run_gui(args) -> int:
    from .app import run

    return run(model=args.model, source=args.images)


_SIGNALLED: list[int] = []


def _exit_on_signal(signum, frame):
    _SIGNALLED.append(signum)
    raise SystemExit(128 + signum)


def gui_main() -> int:
    """The ``workbench`` launcher: the window (or a subcommand, when one is given)."""
    return main(sys.argv[1:])


class _SubParsers:
    """Every subcommand (and its own subcommands) takes the common options."""

    def __init__(self, action, common):
        self.action, self.common = action, common

    def add_parser(self, name, **kwargs):
        return self.action.add_parser(name, parents=[self.common], **kwargs)


def main(argv: list[str] | None = None) -> int:
    from .core.process import fix_allocator

    fix_allocator()  # before any thread starts (the window's job thread included)
    from . import explore_cli
    from .core.logs import setup_logging

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log details to stderr too (the log file is always written)")
    parser = argparse.ArgumentParser(prog="workbench", description=__doc__, parents=[common])
    sub = _SubParsers(parser.add_subparsers(dest="command"), common)
    _compare_parser(sub)
    _bench_parser(sub)
    explore_cli.add_parsers(sub)
    g = sub.add_parser("gui", help="open the window (the default)")
    g.add_argument("--model", default=None)
    g.add_argument("--images", default=None)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    log = setup_logging(getattr(args, "verbose", False))
    logging.getLogger(__name__).info("workbench %s: %s (log: %s)", args.command or "gui", " ".join(args.argv), log)
    if args.command is None:
        args = parser.parse_args(["gui", *(argv or [])])
    if args.command == "gui":
        return run_gui(args)  # the window closes itself on SIGTERM
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)  # `kill` ends a command as Ctrl+C does:
    try:                                                        # its temporary files go
        if args.command == "compare":
            return run_compare(args)
        if args.command == "bench":
            return run_bench(args)
        return explore_cli.run(args)  # sweep, export
    except Exception:
        if _SIGNALLED:  # the exit met a half-written file (torch.save raises as it unwinds): still the signal's
            return 128 + _SIGNALLED[0]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
