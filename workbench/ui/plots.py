"""The live plots: latency, memory, accuracy and the trade-off of every configuration tried."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QTimer, Signal

from ..core.config import OptimizationConfig
from ..core.stats import wilson_interval

ORIGINAL = (52, 101, 164)
OPTIMIZED = (230, 126, 34)
pg.setConfigOptions(antialias=True, background="w", foreground="k")


def _plot(name: str, title: str, left: str, bottom: str) -> pg.PlotWidget:
    w = pg.PlotWidget(title=title)
    w.setObjectName(name)
    w.setAccessibleName(title)
    w.setLabel("left", left)
    w.setLabel("bottom", bottom)
    w.showGrid(x=True, y=True, alpha=0.3)
    for axis in ("left", "bottom"):  # top-1 0.5 must not read "500 (x0.001)"
        w.getAxis(axis).enableAutoSIPrefix(False)
    w.setMinimumHeight(150)
    w.setMinimumWidth(180)
    w.addLegend(offset=(-5, 5))
    return w


@dataclass
class TradeoffPoint:
    config: OptimizationConfig
    latency_ms: float
    size_bytes: int
    score: float | None = None  # top-1 (labelled) or agreement


class Plots(QObject):
    """Owns the PlotWidgets; data arrive in ring buffers and are drawn at 10 Hz."""

    point_clicked = Signal(object)  # OptimizationConfig

    def __init__(self, parent=None, window: int = 200):
        super().__init__(parent)
        self.latency = _plot("latencyPlot", "Latency, measured alone", "ms", "configuration tried")
        self.memory = _plot("memoryPlot", "Model file size", "MB", "")
        self.rss = _plot("rssPlot", "Process memory", "MB", "s")
        self.accuracy = _plot("accuracyPlot", "Accuracy", "top-1", "images evaluated")
        self.tradeoff = _plot("tradeoffPlot", "Trade-off (click a point)", "top-1", "latency (ms)")
        self.lat = {k: deque(maxlen=window) for k in ("original", "optimized")}
        self.frame_no = deque(maxlen=window)
        self.rss_t: deque[float] = deque(maxlen=600)
        self.rss_mb: deque[float] = deque(maxlen=600)
        self._t0 = time.monotonic()
        self.lat_curves = {
            "original": self.latency.plot(pen=pg.mkPen(ORIGINAL, width=2), symbol="o", symbolSize=6,
                                          symbolBrush=ORIGINAL, name="original"),
            "optimized": self.latency.plot(pen=pg.mkPen(OPTIMIZED, width=2), symbol="o", symbolSize=6,
                                           symbolBrush=OPTIMIZED, name="optimized")}
        for c in self.lat_curves.values():
            c.setDownsampling(auto=True, method="peak")
            c.setClipToView(True)
        self.rss_curve = self.rss.plot(pen=pg.mkPen((90, 90, 90), width=2), name="resident memory")
        self.bars = pg.BarGraphItem(x=[0, 1], height=[0, 0], width=0.6, brushes=[ORIGINAL, OPTIMIZED])
        self.memory.addItem(self.bars)
        self.memory.getAxis("bottom").setTicks([[(0, "original"), (1, "optimized")]])
        self.bar_text = [pg.TextItem(anchor=(0.5, 1), color="k") for _ in range(2)]
        for t in self.bar_text:
            self.memory.addItem(t)
        self.acc_curves, self.acc_bands = {}, {}
        for key, colour in (("original", ORIGINAL), ("optimized", OPTIMIZED)):
            self.acc_curves[key] = self.accuracy.plot(pen=pg.mkPen(colour, width=2), name=key)
            lo, hi = pg.PlotDataItem(), pg.PlotDataItem()
            band = pg.FillBetweenItem(lo, hi, brush=pg.mkBrush(*colour, 50))
            self.accuracy.addItem(band)
            self.acc_bands[key] = (lo, hi, band)
        self.accuracy.setYRange(0, 1)
        self.acc_history: dict[str, list[tuple[int, float, float, float]]] = {"original": [], "optimized": []}
        self.points: list[TradeoffPoint] = []
        self.current: OptimizationConfig | None = None
        self.scatter = pg.ScatterPlotItem(hoverable=True)
        self.scatter.sigClicked.connect(self._on_points_clicked)
        self.tradeoff.addItem(self.scatter)
        self.timer = QTimer(self)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()
        self._dirty = True

    # data in (GUI thread) -------------------------------------------------
    def add_latency(self, original_ms: float | None, optimized_ms: float | None) -> None:
        self.frame_no.append(self.frame_no[-1] + 1 if self.frame_no else 0)
        self.lat["original"].append(np.nan if original_ms is None else original_ms)
        self.lat["optimized"].append(np.nan if optimized_ms is None else optimized_ms)
        self._dirty = True

    def add_rss(self, mb: float) -> None:
        self.rss_t.append(time.monotonic() - self._t0)
        self.rss_mb.append(mb)
        self._dirty = True

    def set_sizes(self, original: int | None, optimized: int | None) -> None:
        heights = [(original or 0) / 1e6, (optimized or 0) / 1e6]
        self.bars.setOpts(height=heights)
        for t, x, h in zip(self.bar_text, (0, 1), heights):
            t.setText(f"{h:.2f} MB" if h else "")
            t.setPos(x, h)
        self.memory.setYRange(0, max(heights + [0.1]) * 1.2)

    def reset_accuracy(self, which: str, labelled: bool) -> None:
        self.acc_history[which] = []
        self.accuracy.setLabel("left", "top-1" if labelled else "agreement with original")
        self.tradeoff.setLabel("left", "top-1" if labelled else "agreement with original")
        self._dirty = True

    def add_accuracy(self, which: str, done: int, hits: int, n: int) -> None:
        lo, hi = wilson_interval(hits, n)
        self.acc_history[which].append((done, hits / n if n else 0.0, lo, hi))
        self._dirty = True

    def add_point(self, point: TradeoffPoint) -> None:
        self.points = [p for p in self.points if p.config != point.config] + [point]
        self._dirty = True

    def update_point(self, config: OptimizationConfig, score: float | None) -> None:
        for p in self.points:
            if p.config == config:
                p.score = score
        self._dirty = True

    def set_current(self, config: OptimizationConfig) -> None:
        self.current = config
        self._dirty = True

    def clear_points(self) -> None:
        self.points = []
        self._dirty = True

    # drawing (10 Hz) -------------------------------------------------------
    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        x = np.array(self.frame_no, dtype=float)
        if len(x) < 2:  # one point: give the axis a sensible span instead of +-0.5
            self.latency.setXRange(0, 10)
        else:
            self.latency.enableAutoRange(x=True)
        for key, curve in self.lat_curves.items():
            curve.setData(x, np.array(self.lat[key], dtype=float), connect="finite")
        self.rss_curve.setData(np.array(self.rss_t), np.array(self.rss_mb))
        for key, hist in self.acc_history.items():
            if hist:
                a = np.array(hist)
                self.acc_curves[key].setData(a[:, 0], a[:, 1])
                lo, hi, _ = self.acc_bands[key]
                lo.setData(a[:, 0], a[:, 2])
                hi.setData(a[:, 0], a[:, 3])
            else:
                self.acc_curves[key].setData([], [])
        spots = []
        biggest = max([p.size_bytes for p in self.points] + [1])
        for i, p in enumerate(self.points):
            if p.score is None:  # not evaluated yet: no accuracy to place it at
                continue
            original = p.config.is_identity
            current = p.config == self.current
            colour = ORIGINAL if original else OPTIMIZED
            spots.append({
                "pos": (p.latency_ms, p.score),
                "size": 8 + 22 * (p.size_bytes / biggest),
                "brush": pg.mkBrush(*colour, 220 if current else 110),
                "pen": pg.mkPen("k", width=3 if current else 0.5),
                "symbol": "s" if original else "o",
                "data": i,
            })
        self.scatter.setData(spots)

    def _on_points_clicked(self, _item, points, *_):
        if len(points):
            i = points[0].data()
            if 0 <= i < len(self.points):
                self.point_clicked.emit(self.points[i].config)
