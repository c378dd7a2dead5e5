"""How far apart two identical models read when timed in turns (``measure.measure_latencies``).

The ratio of their medians should be 1; on a shared 2-core machine it is not always. Each setting
(timed runs, runs per turn) times the default model against a deep copy of itself ``--trials``
times, the settings taking turns, and prints the spread of the ratios.

    .venv/bin/python benchmarks/timing_noise.py [--trials 30] [--settings 30x5 60x2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--settings", nargs="+", default=["30x5", "60x2"], help="RUNSxBLOCK")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from workbench.core.process import fix_allocator, machine, setup_process

    fix_allocator()
    setup_process(args.threads)
    import torch

    from workbench.core.measure import measure_latencies
    from workbench.core.models import load_model

    model = load_model("efficientnet_lite0").model.eval()
    twin = copy.deepcopy(model)
    example = torch.randn(1, 3, 224, 224)
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings]
    ratios: dict[tuple, list[float]] = {s: [] for s in settings}
    for _ in range(args.trials):
        for runs, block in settings:
            a, b = measure_latencies([model, twin], example, runs=runs, warmup=5, block=block)
            ratios[(runs, block)].append(b.median / a.median)
    rows = []
    for (runs, block), r in ratios.items():
        off = [abs(1 - x) for x in r]
        rows.append({"runs": runs, "block": block, "trials": len(r), "min": round(min(r), 3),
                     "median": round(statistics.median(r), 3), "max": round(max(r), 3),
                     "off_3pct": sum(o > 0.03 for o in off), "off_5pct": sum(o > 0.05 for o in off)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"machine": machine(), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
