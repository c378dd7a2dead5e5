"""``python -m workbench sweep`` and ``python -m workbench export``: many configurations
measured as ``compare`` measures one, and an optimized model written out as files to deploy.

cli.py wires them in: ``explore_cli.add_parsers(sub)``, then ``explore_cli.run(args)`` for
the commands "sweep" and "export". This module does not import cli.py (cli.py imports it; the
layering test forbids the cycle), so its few shared habits are repeated here: errors are one
line, ``workbench: error: ...`` on stderr, exit status 2."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

DEFAULT_SPARSITIES = "0,0.25,0.5"
DEFAULT_BITS = "32,8,4"


def add_parsers(sub) -> None:
    """Add the ``sweep`` and ``export`` subcommands (``sub.add_parser(name, help=...)`` only)."""
    from .core import methods
    from .core.config import DEFAULT_MODEL

    def source_options(p) -> None:
        p.add_argument("--model", default=DEFAULT_MODEL, help="model name or file (default: %(default)s)")
        p.add_argument("--images", default=None, help="folder, image, video or camera index (default: sample photos)")
        p.add_argument("--limit", type=int, default=None, help="use at most N images")

    def measure_options(p) -> None:
        p.add_argument("--calibration", type=int, default=None, help="calibration images (default: 128)")
        p.add_argument("--runs", type=int, default=None, help="timed runs for latency (default: 30)")

    s = sub.add_parser("sweep", help="measure every sparsity x bits combination (or search a budget); "
                                     "writes results.csv, results.json and pareto.png")
    source_options(s)
    s.add_argument("--sparsity", default=None, help=f"comma-separated sparsities (default: {DEFAULT_SPARSITIES})")
    s.add_argument("--bits", default=None, help=f"comma-separated bit widths (default: {DEFAULT_BITS})")
    s.add_argument("--prune-method", choices=list(methods.PRUNE_METHODS), default=None,
                   help=f"pruning method of the sweep (default: {methods.DEFAULT_PRUNE_METHOD})")
    s.add_argument("--budget-ms", type=float, default=None, metavar="MS",
                   help="instead of the grid: the most accurate configuration whose median latency is at most MS")
    s.add_argument("--budget-mb", type=float, default=None, metavar="MB",
                   help="instead of the grid: the most accurate configuration whose file is at most MB (10^6 bytes)")
    s.add_argument("--max-evals", type=int, default=8, help="budget search: at most N measured configurations "
                                                            "(default: %(default)s)")
    measure_options(s)
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores; with --ray: 1 "
                                                             "per task, each task holding as many CPUs)")
    s.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run each configuration as a Ray task (pip install .[ray]): alone, a local Ray on this "
                        "machine; with an address, a cluster (\"auto\", or ray://host:port; its nodes need the "
                        "workbench installed). Same files as without")
    s.add_argument("--out", required=True, help="folder for the results and the model files behind them")
    s.add_argument("--json", action="store_true", help="print results.json")

    e = sub.add_parser("export", help="optimize, then write model.onnx, model.ts, the shipped file, "
                                      "report.json and report.html")
    source_options(e)
    e.add_argument("--sparsity", type=float, default=0.0, help="0 to 0.95")
    e.add_argument("--prune-method", choices=list(methods.PRUNE_METHODS), default=methods.DEFAULT_PRUNE_METHOD,
                   help="; ".join(f"{m.key}: {m.help}" for m in methods.PRUNE_METHODS.values()))
    e.add_argument("--bits", type=int, default=32, help="32 (off), 16, 8 .. 2")
    e.add_argument("--quant-scheme", choices=list(methods.QUANT_SCHEMES), default=None,
                   help="default: weights-activations at 8 bits (real int8), weights below")
    e.add_argument("--act-bits", type=int, default=None, metavar="N",
                   help="with --bits below 8: activations at N bits (simulated), e.g. --bits 4 --act-bits 8")
    runtimes = list(methods.RUNTIMES)
    e.add_argument("--runtime", choices=runtimes, default="torch",
                   help="; ".join(f"{m.key}: {m.help}" for m in methods.RUNTIMES.values()))
    measure_options(e)
    e.add_argument("--recover-steps", type=int, default=None, metavar="N",
                   help="distil the optimized model N steps on the calibration images first (the window's "
                        "Recover accuracy; compare --recover-steps)")
    e.add_argument("--out", required=True, help="folder for the exported files")
    e.add_argument("--json", action="store_true", help="print report.json")


def parse_list(text: str, kind: type, option: str) -> list:
    """"0,0.25,0.5" -> [0.0, 0.25, 0.5]; ConfigError naming ``option`` when a value is not a number."""
    from .core.config import ConfigError

    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise ConfigError(f"{option} takes comma-separated {what}, e.g. {DEFAULT_BITS if kind is int else '0,0.5'}; "
                          f"got {text!r}") from None
    if not values:
        raise ConfigError(f"{option} is empty")
    return values


def _fail(message: str) -> int:
    logging.getLogger(__name__).error("%s", message)
    print(f"workbench: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    """Run ``sweep`` or ``export``; 0 on success, 2 (one line on stderr) on a user error."""
    from .core.config import ConfigError, MeasureSettings
    from .core.models import ModelLoadError
    from .core.optimize import OptimizeError
    from .core.process import setup_process
    from .core.sources import SourceError
    from .core.sweep import RaySweepError

    if args.limit is not None and args.limit < 1:
        return _fail(f"--limit must be at least 1, got {args.limit}")
    try:
        changes = {k: v for k, v in (("calibration_images", args.calibration), ("latency_runs", args.runs),
                                     ("threads", getattr(args, "threads", None))) if v is not None}
        settings = MeasureSettings(**changes)
        setup_process(settings.threads)
        if args.command == "export":
            return _export(args, settings)
        if args.budget_ms is not None or args.budget_mb is not None:
            if getattr(args, "ray", None) is not None:
                raise ConfigError("--ray runs a grid sweep; the budget search (--budget-ms / --budget-mb) "
                                  "measures one candidate after another and does not take it")
            return _budget(args, settings)
        return _sweep(args, settings)
    except (ConfigError, SourceError, ModelLoadError, OptimizeError, RaySweepError, ValueError) as exc:
        return _fail(str(exc))


def _drain(steps):
    """The generator's last value; its progress on one overwritten line when stderr is a terminal."""
    result = None
    for step in steps:
        if isinstance(step, str):
            if sys.stderr.isatty():
                print(f"\r{step[:79]:80}", end="", file=sys.stderr, flush=True)
        else:
            result = step
    if sys.stderr.isatty():
        print("\r" + " " * 80 + "\r", end="", file=sys.stderr)
    return result


def _row_line(row: dict, mark: str) -> str:
    def pct(v):
        return "    -" if v is None else f"{v:5.1%}"

    return (f"{mark} {row['label']:34} top-1 {pct(row['top1'])}  agreement {pct(row['agreement'])}  "
            f"{row['latency_ms']:7.1f} ms ({row['latency_ratio']:.2f}x)  {row['size_bytes'] / 1e6:6.2f} MB  {row['kernels']}"
            + (" [simulated]" if row["simulated"] else ""))


def _print_rows(rows: list[dict], front: list[int], paths: dict[str, Path]) -> None:
    for i, row in enumerate(rows):
        print(_row_line(row, "*" if i in front else " "))
    print("* on the latency front (no other configuration is both faster, against the original timed beside it, "
          "and more accurate)")
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _sweep(args, settings) -> int:
    from .core.config import ConfigError
    from .core.sweep import sweep_configs, sweep_steps, write_sweep

    sparsities = parse_list(args.sparsity or DEFAULT_SPARSITIES, float, "--sparsity")
    bits = parse_list(args.bits or DEFAULT_BITS, int, "--bits")
    configs = sweep_configs(sparsities, bits, args.prune_method)
    if not configs:
        raise ConfigError(configs.skipped[0]["error"])
    for s in configs.skipped:
        print(f"workbench: skipped sparsity {s['sparsity']:g}, bits {s['bits']}: {s['error']}", file=sys.stderr)
    ray = getattr(args, "ray", None)
    result = _drain(sweep_steps(args.model, args.images, configs, settings, args.limit, Path(args.out),
                                use_ray=ray is not None, ray_address=None if ray in (None, "local") else ray))
    if result is None:
        return _fail("the sweep gave no result")
    paths = write_sweep(result, args.out)
    if args.json:
        print(paths["json"].read_text(encoding="utf-8"))
    else:
        _print_rows(result["rows"], result["front_latency"], paths)
    return 0


def _budget(args, settings) -> int:
    from .core.config import ConfigError
    from .core.sweep import budget_search, write_sweep

    if args.sparsity is not None or args.bits is not None or args.prune_method is not None:
        raise ConfigError("--budget-ms / --budget-mb pick their own candidates; leave out --sparsity, --bits "
                          "and --prune-method")
    result = _drain(budget_search(args.model, args.images, args.budget_ms, args.budget_mb, settings, args.limit,
                                  Path(args.out), args.max_evals))
    paths = write_sweep(result, args.out, budget_ms=args.budget_ms)
    if args.json:
        print(paths["json"].read_text(encoding="utf-8"))
    else:
        best = result["best"]
        _print_rows(result["tried"], [i for i, r in enumerate(result["tried"]) if r is best], paths)
        for s in result["skipped"]:
            print(f"not measured: {s['label']}: {s['reason']}")
        print(("best: " if best else "") + result["reason"])
    return 0


def _export(args, settings) -> int:
    from .core.config import OptimizationConfig
    from .core.export import export_steps

    config = OptimizationConfig(sparsity=args.sparsity, prune_method=args.prune_method, bits=args.bits,
                                quant_scheme=args.quant_scheme, act_bits=args.act_bits, runtime=args.runtime)
    if args.recover_steps is not None and args.recover_steps < 0:
        return _fail(f"--recover-steps must be 0 or more, got {args.recover_steps}")
    report = _drain(export_steps(args.model, args.images, config, settings, args.limit, Path(args.out),
                                 recover=args.recover_steps))
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    check, q = report["export_check"], report["optimized"]
    print(f"{report['model']}: {config.label()} ({q['description']})")
    for item in report["export"].values():
        print(f"  {item['file']}: {item.get('holds') or item.get('format')}")
    for name in ("onnx", "torchscript"):
        c = check[name]
        print(f"  check {c['file']}: {c['classes']} scores, same top-1 as the optimized model on {check['images']} "
              f"images: {'yes' if c['same_top1'] else 'no'} (agreement {c['agreement']:.0%})")
    print(f"wrote {args.out}: report.json, report.html")
    return 0
