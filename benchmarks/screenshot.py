"""Render the window after a real optimization to a PNG (docs/screenshot.png).

    QT_QPA_PLATFORM=offscreen python benchmarks/screenshot.py docs/screenshot.png [--images DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def wait(app, predicate, timeout=600.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the window did not get there in time")
        app.processEvents()
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="docs/screenshot.png")
    parser.add_argument("--images", default=None)
    parser.add_argument("--sparsity", type=int, default=30)
    parser.add_argument("--bits", type=int, default=8)
    args = parser.parse_args()

    from PySide6.QtWidgets import QApplication

    from workbench.core.config import BIT_STOPS
    from workbench.ui import build_window

    app = QApplication.instance() or QApplication(sys.argv)
    start = time.monotonic()
    w = build_window(source=args.images)
    w.show()
    wait(app, lambda: w.findChild(type(w.status_text), "optimizedTop1").text() not in ("", "…"))
    first = time.monotonic() - start
    w.panel.bits_slider.setValue(BIT_STOPS.index(args.bits))
    w.panel.sparsity_slider.setValue(args.sparsity)
    released = time.monotonic()
    wait(app, lambda: w.shown_config is not None and w.shown_config.bits == args.bits
         and round(w.shown_config.sparsity * 100) == args.sparsity)
    ready = time.monotonic() - released
    wait(app, lambda: w.report() is not None)
    w.controller.show_frame(1)
    wait(app, lambda: not w.runner.busy("infer"))
    for _ in range(30):
        app.processEvents()
        time.sleep(0.02)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    w.grab().save(args.out)
    print(f"first predictions {first:.1f} s after start; slider release to updated pane {ready:.1f} s; "
          f"saved {args.out}")
    w.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
