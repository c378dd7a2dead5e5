"""The live plots: latency, memory, accuracy and the trade-off of every configuration tried."""

from __future__ import annotations

import csv
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QPalette

from ..core.config import OptimizationConfig
from ..core.stats import latency_ratio, wilson_interval

ORIGINAL = (52, 101, 164)
OPTIMIZED = (230, 126, 34)
ACCURACY_POINTS = 10_000  # per curve (a folder's images)
pg.setConfigOptions(antialias=True, background="w", foreground="k")


def follow_palette(widgets: list[pg.PlotWidget], palette: QPalette) -> None:
    """Plots drawn in the palette's colours (light or dark), like the widgets around them."""
    background, text = palette.color(QPalette.ColorRole.Base), palette.color(QPalette.ColorRole.Text)
    pg.setConfigOptions(background=background, foreground=text)  # titles set later take it too
    for w in widgets:
        w.setBackground(background)
        item = w.getPlotItem()
        for name in ("left", "bottom"):
            axis = item.getAxis(name)
            axis.setPen(text)
            axis.setTextPen(text)
        item.setTitle(item.titleLabel.text, color=text)
        if item.legend is not None:
            item.legend.setLabelTextColor(text)
            for _, label in item.legend.items:
                label.setText(label.text, color=text)


class CountAxis(pg.AxisItem):
    """An axis of counts (configurations tried): whole-number ticks only, never 1.5."""

    def tickSpacing(self, minVal, maxVal, size):
        levels = [(spacing, offset) for spacing, offset in super().tickSpacing(minVal, maxVal, size) if spacing >= 1]
        return levels or [(1.0, 0.0)]


def _plot(name: str, title: str, left: str, bottom: str, counts: bool = False) -> pg.PlotWidget:
    w = pg.PlotWidget(title=title, axisItems={"bottom": CountAxis("bottom")} if counts else None)
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
    original_ms: float | None = None  # the original's median, timed in turns with this one (None: this is the original)

    def relative(self, original_ms: float) -> float:
        """Latency over the original's: the one timed beside it, else ``original_ms``."""
        return latency_ratio(self.latency_ms, self.original_ms or original_ms)


class Plots(QObject):
    """Owns the PlotWidgets; data arrive in ring buffers and are drawn at 10 Hz."""

    point_clicked = Signal(object)  # OptimizationConfig
    point_shift_clicked = Signal(object)  # OptimizationConfig to show in the left pane

    def __init__(self, parent=None, window: int = 200):
        super().__init__(parent)
        self.latency = _plot("latencyPlot", "Latency, measured alone", "ms", "configuration tried", counts=True)
        self.latency.getPlotItem().legend.setOffset((5, -5))  # bottom left: the axis starts at zero, lines run high
        self.memory = _plot("memoryPlot", "Model file size", "MB", "")
        self.rss = _plot("rssPlot", "Process memory", "MB", "s")
        self.accuracy = _plot("accuracyPlot", "Accuracy", "top-1", "images evaluated")
        self.accuracy.getPlotItem().legend.setOffset((-5, -5))  # bottom right: the curves run high
        self.tradeoff = _plot("tradeoffPlot", "Trade-off (click a point)", "top-1", "latency, × the original's")
        self.tradeoff.setToolTip("Each configuration tried at its accuracy and its latency over the original's, the "
                                 "two timed in turns (a machine whose speed changes between timings moves both); the "
                                 "point's size is its file size. Dashed line: the most accurate for its latency "
                                 "(Pareto front); green ring: the most accurate for its file size. Click a point to "
                                 "show it; shift+click to show it in the left pane")
        # latency from zero leaves the left empty; top right is where the original (slowest, most accurate) sits
        item = self.tradeoff.getPlotItem()
        item.legend.setOffset((5, 5))
        item.vb.setLimits(yMin=0, yMax=1.1)  # top-1 and agreement: no 1.4, room for a marker at 1.0
        self.tradeoff_zoomed = False  # the user zoomed or panned it: leave its range alone until "A"
        item.vb.sigRangeChangedManually.connect(lambda *_: setattr(self, "tradeoff_zoomed", True))
        item.autoBtn.clicked.connect(lambda *_: setattr(self, "tradeoff_zoomed", False))
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
        self.acc_history: dict[str, deque[tuple[int, float, float, float]]] = {
            k: deque(maxlen=ACCURACY_POINTS) for k in ("original", "optimized")}
        self.points: list[TradeoffPoint] = []
        self.current: OptimizationConfig | None = None
        self.scatter = pg.ScatterPlotItem(hoverable=True, tip=self._tip)
        self.scatter.sigClicked.connect(self._on_points_clicked)
        self.tradeoff.addItem(self.scatter)
        self.front_curve = self.tradeoff.plot(pen=pg.mkPen(OPTIMIZED, width=1.5, style=Qt.PenStyle.DashLine),
                                              name="Pareto front")  # most accurate for its latency
        self.timer = QTimer(self)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()
        self._dirty = True
        self.palette: QPalette | None = None  # the window's, once it says (plots follow light or dark)

    def widgets(self) -> list[pg.PlotWidget]:
        return [self.latency, self.memory, self.rss, self.accuracy, self.tradeoff]

    def set_palette(self, palette: QPalette) -> None:
        self.palette = palette
        self.follow_palette()

    def follow_palette(self) -> None:
        if self.palette is not None:
            follow_palette(self.widgets(), self.palette)
            for t in self.bar_text:
                t.setColor(self.palette.color(QPalette.ColorRole.Text))

    # data in (GUI thread) -------------------------------------------------
    def add_latency(self, original_ms: float | None, optimized_ms: float | None) -> None:
        self.frame_no.append(self.frame_no[-1] + 1 if self.frame_no else 1)
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

    def reset_accuracy(self, which: str, labelled: bool, counted: str = "images evaluated",
                       points: int = ACCURACY_POINTS) -> None:
        """Start ``which``'s accuracy curve again: top-1 when ``labelled``, else its agreement with
        the original, over ``counted`` (the x axis: images evaluated, or live frames compared),
        keeping its newest ``points``."""
        self.acc_history[which] = deque(maxlen=points)
        self.accuracy.setLabel("bottom", counted)
        self.accuracy.setTitle("Accuracy" if labelled else "Agreement (no labels)")
        # without labels only the optimized model has a line (its top-1 against the original's)
        legend = self.accuracy.getPlotItem().legend
        legend.clear()
        for key in ("original", "optimized") if labelled else ("optimized",):
            legend.addItem(self.acc_curves[key], key if labelled else "optimized, with the original")
        self.accuracy.setLabel("left", "top-1" if labelled else "agreement")
        self.tradeoff.setLabel("left", "top-1" if labelled else "agreement")
        self.follow_palette()
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
        from ..core.locks import timing

        if not self._dirty or timing():
            return
        self._dirty = False
        x = np.array(self.frame_no, dtype=float)
        if len(x) < 2:  # one point: give the axis a sensible span instead of +-0.5
            self.latency.setXRange(0, 10)
        else:
            self.latency.enableAutoRange(x=True)
        for key, curve in self.lat_curves.items():
            curve.setData(x, np.array(self.lat[key], dtype=float), connect="finite")
        highest = max((v for values in self.lat.values() for v in values if np.isfinite(v)), default=None)
        if highest:  # from zero: 23.3 against 23.5 ms must not look like a doubling
            self.latency.setYRange(0, highest * 1.1, padding=0)
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
        from ..core.pareto import pareto_front

        spots = []
        reference = self._original_ms()
        biggest = max([p.size_bytes for p in self.points] + [1])
        scored = [p for p in self.points if p.score is not None]
        smallest_for_accuracy = {id(scored[i]) for i in pareto_front(
            [{"size_bytes": p.size_bytes, "score": p.score} for p in scored], "size_bytes", "score")}
        for i, p in enumerate(self.points):
            if p.score is None:  # not evaluated yet: no accuracy to place it at
                continue
            original = p.config.is_identity
            current = p.config == self.current
            colour = ORIGINAL if original else OPTIMIZED
            spots.append({
                "pos": (p.relative(reference), p.score),
                "size": 8 + 22 * (p.size_bytes / biggest),
                "brush": pg.mkBrush(*colour, 220 if current else 110),
                "pen": pg.mkPen((39, 174, 96), width=3) if id(p) in smallest_for_accuracy and not current
                else pg.mkPen("k", width=3 if current else 0.5),
                "symbol": "s" if original else "o",
                "data": i,
            })
        self.scatter.setData(spots)
        self.front_curve.setData(*self.front())
        if not self.tradeoff_zoomed:  # keep every point in view
            slowest = max((p.relative(reference) for p in scored), default=None)
            if slowest:  # latency from zero: 0.99x must not look like a speedup
                self.tradeoff.setXRange(0, slowest * 1.2, padding=0)  # room for the slowest marker
                low, high = min(p.score for p in scored), max(p.score for p in scored)
                span = max(high - low, 0.01)  # the top quarter stays free for the legend (top left)
                self.tradeoff.setYRange(low - 0.1 * span, high + 0.4 * span, padding=0)

    def front(self) -> tuple[list[float], list[float]]:
        """The Pareto front of the scored points (best accuracy for a given latency) as a step line."""
        from ..core.pareto import pareto_front

        reference = self._original_ms()
        scored = [{"latency_ms": p.relative(reference), "score": p.score} for p in self.points if p.score is not None]
        on = sorted((scored[i]["latency_ms"], scored[i]["score"]) for i in pareto_front(scored, "latency_ms", "score"))
        xs, ys = [], []
        for k, (x, y) in enumerate(on):  # flat until the next (slower, more accurate) point
            xs += [x, on[k + 1][0]] if k + 1 < len(on) else [x]
            ys += [y, y] if k + 1 < len(on) else [y]
        return xs, ys

    def _original_ms(self) -> float:
        """The original's latest median: the reference of points not timed beside the original."""
        return next((p.latency_ms for p in self.points if p.config.is_identity), 1.0)

    def _tip(self, x, y, data) -> str:
        p = self.points[data] if 0 <= data < len(self.points) else None
        if p is None:
            return ""
        name = "original" if p.config.is_identity else p.config.label()
        beside = f" beside the original's {p.original_ms:.1f} ms" if p.original_ms else ""
        score = "" if p.score is None else f", {self.tradeoff.getAxis('left').labelText} {p.score:.3f}"
        return f"{name}: {p.latency_ms:.1f} ms{beside} ({x:.2f}×){score}, {p.size_bytes / 1e6:.2f} MB"

    def _on_points_clicked(self, _item, points, event=None):
        if len(points):
            i = points[0].data()
            if 0 <= i < len(self.points):
                shift = event is not None and bool(event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
                (self.point_shift_clicked if shift else self.point_clicked).emit(self.points[i].config)


EXPORT_FORMATS = {".png": "PNG image", ".svg": "SVG drawing", ".csv": "CSV table"}


def export_plot(widget: pg.PlotWidget, path: str | Path) -> Path:
    """Write ``widget`` as PNG, SVG or CSV (by the suffix) with pyqtgraph's exporters, whole or
    not at all. CSV holds every curve and point set (pyqtgraph's CSVExporter) and, for bar
    charts, the bars."""
    from ..core.files import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"cannot export a plot as {suffix or 'a file without a suffix'}: "
                         f"use {', '.join(EXPORT_FORMATS)}")
    with atomic_path(path) as tmp:
        _export(widget, tmp, suffix)
    return path


def _export(widget: pg.PlotWidget, path: Path, suffix: str) -> None:
    from pyqtgraph import exporters

    item = widget.getPlotItem()
    if suffix == ".png":
        exporter = exporters.ImageExporter(item)
        exporter.parameters()["width"] = max(800, int(widget.width()))
        exporter.export(str(path))
    elif suffix == ".svg":
        try:
            exporters.SVGExporter(item).export(str(path))
        except ValueError:  # pyqtgraph 0.14 cannot parse the path syntax of Qt 6.11's SVG generator
            _qt_svg(widget, path)
    else:
        bars = [i for i in item.items if isinstance(i, pg.BarGraphItem)]
        if not bars:  # CSVExporter knows curves and points only
            exporters.CSVExporter(item).export(str(path))
            return
        with open(path, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["x", "label", "height"])
            levels = item.getAxis("bottom")._tickLevels
            ticks = dict(levels[0]) if levels else {}
            for bar in bars:
                for x, h in zip(bar.opts.get("x") or [], bar.opts.get("height") or []):
                    out.writerow([x, ticks.get(x, ""), h])


def _qt_svg(widget: pg.PlotWidget, path: Path) -> None:
    """The plot drawn into Qt's own SVG generator (vector, as on screen)."""
    from PySide6.QtCore import QRectF
    from PySide6.QtGui import QPainter
    from PySide6.QtSvg import QSvgGenerator

    gen = QSvgGenerator()
    gen.setFileName(str(path))
    gen.setSize(widget.size())
    gen.setViewBox(QRectF(0, 0, widget.width(), widget.height()))
    gen.setTitle(widget.getPlotItem().titleLabel.text)
    painter = QPainter(gen)
    widget.render(painter)
    painter.end()


def add_export_menu(widget: pg.PlotWidget, choose) -> None:
    """'Save as PNG / SVG / CSV…' in the plot's own context menu; ``choose(widget, suffix)``
    asks where and writes."""
    menu = widget.getPlotItem().vb.menu
    menu.addSeparator()
    for suffix, what in EXPORT_FORMATS.items():
        menu.addAction(f"Save as {what}…", lambda s=suffix: choose(widget, s))
