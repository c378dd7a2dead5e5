"""``python -m workbench bench live``: the real window (offscreen) on a video standing in
for a camera, measured while it runs."""

from __future__ import annotations

import os
import statistics
import sys
import time

import psutil

from ..core.config import OptimizationConfig

SETTLE_S = 5.0


def _wait(app, predicate, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the window did not reach the state in time")
        app.processEvents()
        time.sleep(0.005)


def _p50_p99(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None}
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 2), "p99": round(ordered[int(0.99 * (len(ordered) - 1))], 2)}


def bench_live(video: str, seconds: float, config: OptimizationConfig, sample_s: float = 30.0) -> dict:
    """The window on ``video`` for ``seconds``: display and prediction rates, UI lag, and every
    ``sample_s`` the process's memory, threads and open files (a soak's figures)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QElapsedTimer, QTimer
    from PySide6.QtWidgets import QApplication

    from . import build_window

    app = QApplication.instance() or QApplication(sys.argv)
    proc = psutil.Process()
    w = build_window(source=video)
    w.show()
    _wait(app, lambda: w.live is not None and w.live.original.count > 0, 120)
    w.set_config(config)
    _wait(app, lambda: w.shown_config == config, 300)
    _wait(app, lambda: w.runner.busy() is False, 120)
    settle = time.monotonic() + SETTLE_S  # the prediction rate finds its level after the app's own jobs
    _wait(app, lambda: time.monotonic() > settle, SETTLE_S + 5)

    live = w.live
    lags: list[float] = []
    clock = QElapsedTimer()
    last = [0]

    def tick():
        now = clock.elapsed()
        lags.append(max(0.0, now - last[0] - 10))
        last[0] = now

    probe = QTimer()
    probe.setInterval(10)
    probe.timeout.connect(tick)
    start = {"read": live.grabber.frames_read, "shown": w.live_display.stats["displayed"],
             "orig": live.original.count, "opt": live.optimized.count}
    w.live_display.stats["tick_ms"] = []
    rss_start = proc.memory_info().rss / 1e6
    proc.cpu_percent(None)
    clock.start()
    probe.start()
    from ..core.bench import process_resources

    t0 = time.monotonic()
    samples, next_sample = [{"seconds": 0.0, **process_resources()}], sample_s
    while time.monotonic() - t0 < seconds:
        app.processEvents()
        time.sleep(0.001)
        if time.monotonic() - t0 >= next_sample:
            samples.append({"seconds": round(time.monotonic() - t0, 1), **process_resources()})
            next_sample += sample_s
    elapsed = time.monotonic() - t0
    probe.stop()
    read = live.grabber.frames_read - start["read"]
    shown = w.live_display.stats["displayed"] - start["shown"]
    result = {
        "video": video, "seconds": round(elapsed, 2), "config": config.to_dict(),
        "kernels": w.current.kernels if w.current else None,
        "source_fps": round(live.grabber.fps, 2),
        "read_fps": round(read / elapsed, 2),
        "display_fps": round(shown / elapsed, 2),
        "original_pred_fps": round((live.original.count - start["orig"]) / elapsed, 2),
        "optimized_pred_fps": round((live.optimized.count - start["opt"]) / elapsed, 2),
        "ui_lag_ms": {**_p50_p99(lags[1:]), "samples": max(0, len(lags) - 1)},
        "dropped_frames": max(0, read - shown),
        "display_tick_ms": _p50_p99(w.live_display.stats["tick_ms"]),  # GUI-thread time per display tick
        "rss_mb": {"start": round(rss_start, 1), "end": round(proc.memory_info().rss / 1e6, 1)},
        "cpu_percent": round(proc.cpu_percent(None), 1),  # of one core: 200 is both cores of two
        "cpu_count": os.cpu_count(),
        "runtime": {"original": live.original.runtime, "optimized": live.optimized.runtime},
        "prediction_rate_limit": round(live.governor.rate, 2),
        "resources": samples + [{"seconds": round(elapsed, 1), **process_resources()}],
    }
    w.close()
    return result
