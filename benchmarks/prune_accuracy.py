"""Top-1 of EfficientNet-Lite0 after one-shot unstructured pruning: global magnitude +
BatchNorm re-estimation (today's default) against the OBC-style database + DP of
``workbench.core.prune_obc``, at 50 % and 70 % of all conv + linear weights zeroed.

Split of the shared ImageNet sample (500 photos): files sorted, shuffled with
``random.Random(seed)`` (``--seed``, default 0; docs report seeds 0, 1, 2); the first 128
calibrate (never scored), the other 372 are scored (``--calibration N``, ``--scored-after M``).

    python benchmarks/prune_accuracy.py [--data DIR] [--threads 1] [--cache DIR] [--seed 0] [--headroom none]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workbench.core import prune_obc  # noqa: E402
from workbench.core.models import load_model  # noqa: E402
from workbench.core.optimize import prune_unstructured_  # noqa: E402
from workbench.core.recover import recalibrate_bn_if_better_  # noqa: E402
from workbench.core.sources import open_source  # noqa: E402


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def split(folder: Path, loaded, seed: int = 0, calibration: int = 128, scored_after: int | None = None):
    src = open_source(folder, calibration=0)
    order = list(range(len(src.files)))  # in name order (calibration=0), then shuffled
    random.Random(seed).shuffle(order)
    calib, xs, ys = [], [], []
    for j, i in enumerate(order):
        frame = src.frame(i)
        if frame is None:
            continue
        x = loaded.preprocess(frame.rgb)
        if j < calibration:
            calib.append(x)
        elif j >= (scored_after or calibration):
            xs.append(x)
            ys.append(frame.label)
    return calib, torch.cat(xs), torch.tensor(ys)


def top1(model, x, y, batch: int = 50) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch))
    return hits / len(x)


def zeros_fraction(model) -> float:
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    return sum(int((m.weight == 0).sum()) for m in layers) / sum(m.weight.numel() for m in layers)


def main() -> None:
    default_data = os.environ.get("WORKBENCH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(default_data) / "imagenet-sample"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default=None, help="database cache folder (default: a fresh temporary one)")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed of the calibration / scoring split")
    ap.add_argument("--calibration", type=int, default=128, help="the first N of the shuffled photos calibrate")
    ap.add_argument("--scored-after", type=int, default=None,
                    help="score the photos after the first M (default: after the calibration images), so that "
                         "runs with different --calibration can score the same photos")
    ap.add_argument("--headroom", default=str(prune_obc.HEADROOM),
                    help="no layer more than this above the average sparsity ('none': no ceiling, sessions 18-29)")
    args = ap.parse_args()
    headroom = None if args.headroom == "none" else float(args.headroom)
    torch.set_num_threads(args.threads)

    loaded = load_model("efficientnet_lite0")
    model = loaded.model.eval()
    calib, x, y = split(Path(args.data), loaded, args.seed, args.calibration, args.scored_after)
    print(f"CPU: {cpu_name()}; torch threads: {torch.get_num_threads()}; "
          f"calibration {len(calib)} images, scored {len(x)} images (split seed {args.seed})")
    acc_float = top1(model, x, y)
    print(f"float top-1: {acc_float:.4f}")

    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="prune-obc-"))
    t = time.perf_counter()
    db = None
    for step in prune_obc.prepare_steps(model, calib, cache_dir=cache):
        if not isinstance(step, str):
            db = step
    prep = time.perf_counter() - t
    t = time.perf_counter()
    prune_obc.prepare(model, calib, cache_dir=cache)
    reload = time.perf_counter() - t
    print(f"preparation: {prep:.1f} s (load from the cache afterwards: {reload:.2f} s)")

    rows = []
    for s in args.sparsity:
        mag = copy.deepcopy(model)
        prune_unstructured_(mag, s, True)
        recalibrate_bn_if_better_(mag, model, calib)
        acc_mag = top1(mag, x, y)

        obc = copy.deepcopy(model)
        t = time.perf_counter()
        per_layer = db.apply_(obc, s, headroom=headroom)
        apply_s = time.perf_counter() - t
        acc_obc = top1(obc, x, y)
        z = zeros_fraction(obc)
        t = time.perf_counter()
        used_bn = recalibrate_bn_if_better_(obc, model, calib)
        bn_s = time.perf_counter() - t
        acc_obc_bn = top1(obc, x, y) if used_bn else acc_obc
        rows.append((s, acc_mag, acc_obc, acc_obc_bn, used_bn, apply_s, bn_s, z))
        dense = sorted(n for n, v in per_layer.items() if v == 0)
        print(f"{s:.0%}: magnitude+BN {acc_mag:.4f}; OBC {acc_obc:.4f}; OBC + BN reset if better {acc_obc_bn:.4f} "
              f"(reset {'kept' if used_bn else 'rejected'}, {bn_s:.1f} s); slider move {apply_s:.3f} s; "
              f"zeros {z:.4f}; dense layers: {len(dense)}")
        print("   per-layer zeros: " + ", ".join(f"{n.replace('blocks.', 'b').replace('.conv', '')}={v:.2f}"
                                                 for n, v in per_layer.items() if v > 0.0))

    print()
    print("| sparsity | float | magnitude + BN | OBC (slider) | OBC + BN-if-better | slider move s |")
    print("|---|---|---|---|---|---|")
    for s, acc_mag, acc_obc, acc_obc_bn, _, apply_s, _, _ in rows:
        print(f"| {s:.0%} | {acc_float:.4f} | {acc_mag:.4f} ({acc_mag - acc_float:+.3f}) | "
              f"{acc_obc:.4f} ({acc_obc - acc_float:+.3f}) | {acc_obc_bn:.4f} ({acc_obc_bn - acc_float:+.3f}) | "
              f"{apply_s:.3f} |")
    print(f"preparation {prep:.1f} s, {torch.get_num_threads()} thread(s), CPU {cpu_name()}")


if __name__ == "__main__":
    main()
