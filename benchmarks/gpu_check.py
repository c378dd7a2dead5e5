"""On a machine with a CUDA GPU: the optimized model on the GPU (fp32 and real fp16)
against the CPU original, on the sample photos. Prints one JSON object."""

from __future__ import annotations

import json
import sys

import torch

from workbench.core.compare import compare
from workbench.core.config import OptimizationConfig
from workbench.core.models import load_model
from workbench.core.sources import open_source


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU here", file=sys.stderr)
        return 2
    torch.set_num_threads(2)
    lm = load_model("efficientnet_lite0")
    rows = []
    for config in (OptimizationConfig(device="cuda"), OptimizationConfig(bits=16, device="cuda"),
                   OptimizationConfig(sparsity=0.3, prune_method="structured", bits=16, device="cuda")):
        r = compare(lm, open_source(None), config, latency_runs=50)
        o, q = r["original"], r["optimized"]
        rows.append({"config": config.label(), "kernels": q["kernels"], "simulated": q["simulated"],
                     "original_latency": o["latency_ms"], "optimized_latency": q["latency_ms"],
                     "agreement": q["agreement"], "kl": q["kl"], "inference_memory": q["inference_memory"]})
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
