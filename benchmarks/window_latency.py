"""The window's latency figures against ``compare`` alone, for float, int8, 50 % zeros and 4 bits.

The window measures while its own jobs (reading, evaluating, predicting) are pending; the
figures must still be the model's. Prints one JSON object with the medians and ratios.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/window_latency.py --images DIR [--limit 50]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {"float": {}, "int8": {"bits": 8}, "50% zeros": {"sparsity": 0.5}, "4-bit": {"bits": 4}}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default=None)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="which of: " + ", ".join(CONFIGS))
    args = parser.parse_args()
    from PySide6.QtWidgets import QApplication

    from workbench.core.config import OptimizationConfig
    from workbench.core.process import fix_allocator, machine
    from workbench.ui import build_window

    fix_allocator()  # as workbench.app.run does, before any thread starts

    images = args.images
    if images:  # the first --limit images, as their own folder
        folder = Path(tempfile.mkdtemp(prefix="workbench-bench-"))
        for p in sorted(Path(images).iterdir())[: args.limit]:
            (folder / p.name).symlink_to(p.resolve())
        images = str(folder)
    app = QApplication.instance() or QApplication(sys.argv)
    w = build_window(source=images)
    w.show()
    rows = []
    for name in args.configs.split(","):
        config = OptimizationConfig(**CONFIGS[name])
        w.set_config(config)
        end = time.monotonic() + 900
        while not (w.report() and w.controller.measured_result.optimized.config == config):
            app.processEvents()
            time.sleep(0.01)
            if time.monotonic() > end:
                raise TimeoutError(name)
        report = w.report()
        command = shlex.split(w.controller.command())
        cli = json.loads(subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True,
                                        check=True).stdout)
        row = {"configuration": name}
        for side in ("original", "optimized"):
            win, alone = report[side]["latency_ms"]["median"], cli[side]["latency_ms"]["median"]
            row[side] = {"window_ms": win, "compare_ms": alone, "ratio": round(win / alone, 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    w.close()
    if images:
        shutil.rmtree(images, ignore_errors=True)
    print(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
