"""Time from process start to the window on screen, and to the first predictions in both panes.

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/startup.py [--images DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import psutil


def since_start() -> float:
    return time.time() - psutil.Process().create_time()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", default=None)
    args = parser.parse_args()
    from PySide6.QtWidgets import QApplication

    from workbench.ui import build_window

    app = QApplication.instance() or QApplication(sys.argv)
    w = build_window(source=args.images)
    w.show()
    app.processEvents()
    painted = since_start()

    def top1(which):
        return w.findChild(type(w.status_text), f"{which}Top1").text()

    while top1("optimized") in ("", "…") or top1("original") in ("", "…", "loading model…"):
        app.processEvents()
        time.sleep(0.005)
    predicted = since_start()
    print(json.dumps({"painted_s": round(painted, 2), "first_predictions_s": round(predicted, 2)}))
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
