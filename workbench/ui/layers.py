"""Per-layer view: measured sensitivity, the allocation that ran, and per-layer overrides."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPoint, Signal
from PySide6.QtGui import QCursor
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMenu, QPushButton, QVBoxLayout, QWidget

from .plots import OPTIMIZED, _plot

if TYPE_CHECKING:
    from ..core.sensitivity import LayerSensitivity

EXCLUDED = (150, 150, 150)
OVERRIDE_BITS = (8, 6, 5, 4, 3, 2)


class LayersView(QWidget):
    """Bars of per-layer sensitivity (KL when that layer alone is compressed) and of the
    per-layer sparsity or bit width that ran. Clicking a layer opens a menu: exclude it
    from compression, or give it its own bit width."""

    overrides_changed = Signal()
    measure_requested = Signal()
    recover_requested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.excluded: set[str] = set()
        self.layer_bits: dict[str, int] = {}
        self.names: list[str] = []
        self.sensitivity = _plot("sensitivityPlot", "Layer sensitivity (click a layer)", "log10 KL", "layer")
        self.allocation = _plot("allocationPlot", "Allocation that ran", "", "layer")
        self.sensitivity.setMinimumHeight(120)
        self.allocation.setMinimumHeight(100)
        self.allocation.setXLink(self.sensitivity)
        self.sens_bars = pg.BarGraphItem(x=[], height=[], width=0.8)
        self.alloc_bars = pg.BarGraphItem(x=[], height=[], width=0.8, brush=OPTIMIZED)
        self.sensitivity.addItem(self.sens_bars)
        self.allocation.addItem(self.alloc_bars)
        self.sensitivity.scene().sigMouseClicked.connect(self._on_clicked)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.measure_button = QPushButton("Measure sensitivity", objectName="measureSensitivityButton",
                                          toolTip="Prune or quantize one layer at a time and measure how far the "
                                                  "outputs move: a few seconds per layer, shows which to leave alone")
        self.measure_button.clicked.connect(self.measure_requested)
        self.recover_button = QPushButton("Recover accuracy (distil 60 s)", objectName="recoverButton",
                                          toolTip="Train the optimized model for 60 s to match the original on the "
                                                  "source's images: buys back accuracy, costs a minute")
        self.recover_button.clicked.connect(self.recover_requested)
        self.clear_button = QPushButton("Clear overrides", objectName="clearOverridesButton",
                                        toolTip="Give every excluded layer and every layer's own bit width back to "
                                                "the sliders")
        self.clear_button.clicked.connect(self.clear_overrides)
        buttons = QHBoxLayout()
        for b in (self.measure_button, self.recover_button, self.clear_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.sensitivity, 3)
        layout.addWidget(self.allocation, 2)
        layout.addWidget(self.info)
        layout.addLayout(buttons)
        self._sens: dict[str, LayerSensitivity] = {}

    def widgets(self) -> list:
        return [self.sensitivity, self.allocation]

    def show_sensitivity(self, sens: dict[str, LayerSensitivity], what: str) -> None:
        self._sens = sens
        self.names = list(sens)
        self.sensitivity.setTitle(f"Layer sensitivity: KL when only that layer is {what} (click a layer)")
        self._redraw()

    def show_allocation(self, allocation: dict[str, dict[str, float]], names: list[str]) -> None:
        if not self.names:
            self.names = names
        kind, values = next(iter(allocation.items()), ("", {}))
        if kind == "sparsity":
            heights = [100 * values.get(n, 0.0) for n in self.names]
            self.allocation.setLabel("left", "sparsity %")
        elif kind == "bits":
            heights = [values.get(n, 32) for n in self.names]
            self.allocation.setLabel("left", "bits")
        elif kind == "kept_channels":  # per block: each of its layers shows the share of hidden channels removed
            block = {n: b for n in self.names for b in values if n.startswith(b + ".")}
            heights = [100 * (1 - values[block[n]]) if n in block else 0.0 for n in self.names]
            self.allocation.setLabel("left", "channels removed %")
            kind = "hidden channels removed per block"
        else:
            heights = []
        self.alloc_bars.setOpts(x=np.arange(len(heights)), height=heights)
        self.allocation.setTitle(f"Allocation that ran: {kind or 'uniform'}")
        self._fit_layers()

    def _fit_layers(self) -> None:
        """Both plots (x-linked) span every layer: before sensitivity is measured, the empty
        sensitivity plot's own range (0 to 1) showed two layers of the allocation."""
        self.sensitivity.setXRange(-0.6, max(len(self.names), 1) - 0.4, padding=0)

    def _redraw(self) -> None:
        # a layer not measured is a faint full-height outline (something to click), never a bar that
        # reads as a measurement; the title says when nothing is measured yet
        measured = {n: math.log10(self._sens[n].kl) for n in self.names if n in self._sens}
        low, top = min([*measured.values(), 0.0]) - 0.5, max([*measured.values(), 0.0])
        heights = [measured.get(n, top) for n in self.names]
        brushes = [pg.mkBrush(*EXCLUDED) if n in self.excluded else
                   pg.mkBrush(52, 101, 164) if n in self._sens else pg.mkBrush(160, 160, 160, 40)
                   for n in self.names]
        if not measured:
            self.sensitivity.setTitle("Layer sensitivity: not measured yet (Measure sensitivity; click a layer)")
        self.sens_bars.setOpts(x=np.arange(len(heights)), y0=low, height=[h - low for h in heights],
                               brushes=brushes)
        self._fit_layers()
        parts = []
        if self.excluded:
            parts.append("excluded: " + ", ".join(sorted(self.excluded)))
        if self.layer_bits:
            parts.append("own bits: " + ", ".join(f"{n}={b}" for n, b in sorted(self.layer_bits.items())))
        self.info.setText("; ".join(parts) or "click a layer to exclude it or give it its own bit width")

    def layer_at(self, x: float) -> str | None:
        i = int(round(x))
        return self.names[i] if 0 <= i < len(self.names) else None

    def _on_clicked(self, event) -> None:
        pos = self.sensitivity.plotItem.vb.mapSceneToView(event.scenePos())
        name = self.layer_at(pos.x())
        if name is not None:
            self.open_menu(name, QCursor.pos())

    def open_menu(self, name: str, at: QPoint) -> None:
        menu = QMenu(self)
        menu.addAction(("Include " if name in self.excluded else "Exclude ") + name,
                       lambda: self.toggle_excluded(name))
        for bits in OVERRIDE_BITS:
            menu.addAction(f"{bits} bits for {name}", lambda b=bits: self.set_layer_bits(name, b))
        menu.addAction("default bits", lambda: self.set_layer_bits(name, None))
        menu.popup(at)

    def toggle_excluded(self, name: str) -> None:
        self.excluded ^= {name}
        self._redraw()
        self.overrides_changed.emit()

    def set_layer_bits(self, name: str, bits: int | None) -> None:
        if bits is None:
            self.layer_bits.pop(name, None)
        else:
            self.layer_bits[name] = bits
        self._redraw()
        self.overrides_changed.emit()

    def clear_overrides(self) -> None:
        self.excluded.clear()
        self.layer_bits.clear()
        self._redraw()
        self.overrides_changed.emit()
