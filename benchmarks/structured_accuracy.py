"""Structured pruning of EfficientNet-Lite0's hidden channels: top-1 and speed.

    python benchmarks/structured_accuracy.py [--images DIR] [--targets 0.7 0.5] [--recover-seconds 0] [--seed 0]

Images: sorted, shuffled with random.Random(seed) (``--seed``, default 0); the first ``--calibration`` (128) are the
calibration images (never scored), the rest are scored. Prints one row per target and
variant (least-squares reconstruction or not), with the run time, and realized /
theoretical speedup (latency ratio over MAC ratio) at 1 and 2 threads.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.core.measure import count_macs, measure_latency  # noqa: E402
from workbench.core.models import load_model  # noqa: E402
from workbench.core.prune_channels import prune_hidden_channels  # noqa: E402
from workbench.core.sources import open_source  # noqa: E402

DEFAULT_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def top1(model, inputs: torch.Tensor, labels: torch.Tensor, batch: int = 32) -> float:
    with torch.no_grad():
        logits = torch.cat([model(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    return (logits.argmax(1) == labels).float().mean().item()


def speed(model, pruned, example, threads, runs) -> dict[int, tuple[float, float]]:
    """threads: (float ms, pruned ms); alternating runs so that load affects both alike."""
    out = {}
    saved = torch.get_num_threads()
    for t in threads:
        torch.set_num_threads(t)
        a = [measure_latency(model, example, runs=runs).median for _ in range(2)]
        b = [measure_latency(pruned, example, runs=runs).median for _ in range(2)]
        a.append(measure_latency(model, example, runs=runs).median)
        b.append(measure_latency(pruned, example, runs=runs).median)
        out[t] = (min(a), min(b))
    torch.set_num_threads(saved)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", default=str(DEFAULT_IMAGES))
    p.add_argument("--targets", type=float, nargs="+", default=[0.7])
    p.add_argument("--calibration", type=int, default=128)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--round-to", type=int, default=16, help="kept hidden channels are multiples of this (the product: 16)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--latency-runs", type=int, default=30)
    p.add_argument("--prune-threads", type=int, default=1, help="torch threads while pruning and scoring")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the calibration / scoring split")
    p.add_argument("--no-plain", action="store_true", help="skip the variant without least squares")
    p.add_argument("--recover-seconds", type=float, default=0.0,
                   help="then distil from the original on augmented calibration images for this long")
    args = p.parse_args(argv)
    torch.set_num_threads(args.prune_threads)

    loaded = load_model("efficientnet_lite0")
    frames = sorted(open_source(args.images), key=lambda f: f.origin)
    random.Random(args.seed).shuffle(frames)
    calibration = [loaded.preprocess(f.rgb) for f in frames[:args.calibration]]
    scored = frames[args.calibration:]
    inputs = torch.cat([loaded.preprocess(f.rgb) for f in scored])
    labels = torch.tensor([-1 if f.label is None else f.label for f in scored])
    example = calibration[0]
    base_top1 = top1(loaded.model, inputs, labels)
    base_macs = count_macs(loaded.model, example)

    print(f"CPU: {cpu_name()}; torch {torch.__version__}; EfficientNet-Lite0")
    print(f"calibration: {len(calibration)} images x {args.views} views; scored: {len(scored)} other images "
          f"(split seed {args.seed})")
    print(f"float top-1 {base_top1:.4f}, {base_macs / 1e6:.1f} M MACs")
    header = (f"{'target':>6} {'variant':<22} {'MACs kept':>9} {'top-1':>7} {'drop pts':>8} {'run s':>6} "
              + " ".join(f"{f'{t}T float/pruned ms':>20} {f'{t}T real/theo':>12}" for t in args.threads))
    print(header)
    for target in args.targets:
        start = time.monotonic()
        result = prune_hidden_channels(loaded.model, target, calibration, views=args.views,
                                       round_to=args.round_to)
        seconds = time.monotonic() - start
        rows = [("least squares", result, seconds)]
        if not args.no_plain:
            start = time.monotonic()
            plain = prune_hidden_channels(loaded.model, target, calibration, views=args.views,
                                          allocation=result["allocation"], reconstruct=False,
                                          round_to=args.round_to)
            rows.append(("sliced + BN re-est.", plain, time.monotonic() - start))
        for label, res, secs in rows:
            model = res["model"]
            acc = top1(model, inputs, labels)
            kept = res["macs"] / base_macs
            cells = []
            for _t, (a, b) in speed(loaded.model, model, example, args.threads, args.latency_runs).items():
                cells.append(f"{f'{a:.1f}/{b:.1f}':>20} {(a / b) * kept:>12.2f}")
            print(f"{target:>6.2f} {label:<22} {kept:>9.3f} {acc:>7.4f} {100 * (base_top1 - acc):>8.1f} "
                  f"{secs:>6.0f} " + " ".join(cells), flush=True)
        print("allocation (kept fraction of hidden channels):",
              ", ".join(f"{b} {f:.2f}" for b, f in result["allocation"].items()))
        if args.recover_seconds:
            from workbench.core.recover import distill_steps

            model = result["model"]
            for _ in distill_steps(model, loaded.model, calibration, seconds=args.recover_seconds):
                pass
            acc = top1(model, inputs, labels)
            print(f"{target:>6.2f} {'+ distillation':<22} {kept:>9.3f} {acc:>7.4f} "
                  f"{100 * (base_top1 - acc):>8.1f} {args.recover_seconds:>6.0f}", flush=True)


if __name__ == "__main__":
    main()
