"""One model's view of a frame: the image, the top-5 classes, latency."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)


def to_pixmap(rgb: np.ndarray) -> QPixmap:
    rgb = np.ascontiguousarray(rgb)
    h, w, _ = rgb.shape
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


def side_by_side(box: QWidget) -> tuple[ModelPane, ModelPane]:
    """The original's and the optimized model's panes in ``box``: always of one width, their
    frames drawn at one size, whatever the text under either (e.g. a simulated bit width's)."""
    row = QHBoxLayout(box)
    row.setContentsMargins(0, 0, 0, 0)
    original, optimized = ModelPane("Original", "original"), ModelPane("Optimized", "optimized")
    original._partner, optimized._partner = optimized, original
    for pane in (original, optimized):
        # equal stretch: the width is shared by halves, not by the text's length; an explicit minimum
        # so that a long title (demo mode's larger type) is cut at the pane's edge, not widening it
        pane.setMinimumWidth(160)
        row.addWidget(pane, 1)
    return original, optimized


class ModelPane(QGroupBox):
    """Image, top-1 line, top-5 bars, true label and latency of one model."""

    def __init__(self, title: str, key: str, parent=None):
        super().__init__(title, parent)
        self.setObjectName(f"{key}Pane")
        self.setAccessibleName(f"{title} model")
        layout = QVBoxLayout(self)
        # at the top: the two panes' images stay side by side whatever the text below them
        self.image = QLabel(alignment=Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop)
        self.image.setMinimumSize(160, 120)
        self.image.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.image.installEventFilter(self)  # rescaled when the text below it grows or shrinks, too
        self.top1 = QLabel("…")
        self.top1.setObjectName(f"{key}Top1")
        self.top1.setAccessibleName(f"{title} top-1 class")
        self.scale = 1.0  # demo mode: larger type
        self._differs = False  # top-1 differs from the original's (shown in red)
        self.top1.setStyleSheet("font-size: 15px; font-weight: bold;")
        self.top1.setWordWrap(True)
        self.truth = QLabel("")
        self.latency = QLabel("", wordWrap=True)
        self.what = QLabel("")
        self.what.setWordWrap(True)
        self.what.setObjectName(f"{key}WhatRan")
        self.what.setForegroundRole(QPalette.ColorRole.PlaceholderText)  # quieter, light or dark
        grid = QGridLayout()
        self.bars: list[tuple[QLabel, QProgressBar]] = []
        for i in range(5):
            name, bar = QLabel(""), QProgressBar()
            bar.setRange(0, 1000)
            bar.setTextVisible(True)
            bar.setMaximumHeight(16)
            grid.addWidget(name, i, 0)
            grid.addWidget(bar, i, 1)
            grid.setColumnStretch(1, 1)
            self.bars.append((name, bar))
        layout.addWidget(self.image, 1)
        layout.addWidget(self.top1)
        layout.addLayout(grid)
        layout.addWidget(self.truth)
        layout.addWidget(self.latency)
        layout.addWidget(self.what)
        self._pixmap: QPixmap | None = None
        self._caption: str | None = None
        self._partner: ModelPane | None = None  # the other pane of :func:`side_by_side`

    def show_what_ran(self, description: str, kernels: str, median_ms: float | None = None,
                      size_bytes: int | None = None, ratio: float | None = None) -> None:
        """What ran, its kernels and, once timed, its median and file (None: still measuring);
        ``ratio``: its median over the original's (:func:`.stats.latency_ratio`)."""
        figures = ("measuring…" if median_ms is None else
                   f"median {median_ms:.1f} ms (isolated)  ·  {size_bytes / 1e6:.2f} MB")
        if median_ms is not None and ratio is not None:
            figures += f"  ·  {ratio:.2f}× the original's"
        self.what.setText(f"{description}\nkernels: {kernels}  ·  {figures}")

    def set_image(self, image: np.ndarray | QPixmap, caption: str | None = None, fast: bool = False) -> None:
        """Show a frame; ``caption`` (live mode: the top-1 class) is drawn over it.
        ``fast`` scales without smoothing (live video at the camera's rate)."""
        self._pixmap = image if isinstance(image, QPixmap) else to_pixmap(image)
        self._caption = caption
        self._rescale(fast)

    def eventFilter(self, watched, event):  # noqa: N802 - Qt override
        if watched is self.image and event.type() == QEvent.Type.Resize:
            self._rescale()
            if self._partner is not None:
                self._partner._rescale()
        return super().eventFilter(watched, event)

    def _rescale(self, fast: bool = False) -> None:
        if self._pixmap is None:
            return
        mode = Qt.TransformationMode.FastTransformation if fast else Qt.TransformationMode.SmoothTransformation
        area = self.image.size()  # the smaller of the two panes' areas: one size side by side
        if self._partner is not None and self._partner.isVisible():
            area = area.boundedTo(self._partner.image.size())
        scaled = self._pixmap.scaled(area, Qt.AspectRatioMode.KeepAspectRatio, mode)
        if self._caption:
            painter = QPainter(scaled)
            band = round(26 * self.scale)
            painter.fillRect(0, 0, scaled.width(), band, QColor(0, 0, 0, 150))
            painter.setPen(QColor("white"))
            font = painter.font()
            font.setPointSize(round(12 * self.scale))
            font.setBold(True)
            painter.setFont(font)
            painter.drawText(8, round(19 * self.scale), self._caption)
            painter.end()
        self.image.setPixmap(scaled)

    def set_scale(self, scale: float) -> None:
        """Larger type (demo mode); the top-5 bars and details give the video their room."""
        self.scale = scale
        for widget in [w for pair in self.bars for w in pair] + [self.what, self.truth]:
            widget.setHidden(scale > 1)
        self._style_top1()
        self._rescale()

    def _style_top1(self) -> None:
        color = " color: #c0392b;" if self._differs else ""
        self.top1.setStyleSheet(f"font-size: {round(15 * self.scale)}px; font-weight: bold;{color}")

    def show_prediction(self, pred, classes: list[str], truth: int | None,
                        differs: bool = False) -> None:
        name = classes[pred.top1] if pred.top1 < len(classes) else str(pred.top1)
        mark = "  ≠ original" if differs else ""
        self.top1.setText(f"{name}  {pred.top5[0][1]:.0%}{mark}")
        self._differs = differs
        self._style_top1()
        for (label, bar), (idx, p) in zip(self.bars, pred.top5):
            label.setText(classes[idx] if idx < len(classes) else str(idx))
            bar.setValue(int(p * 1000))
            bar.setFormat(f"{p:.1%}")
        if truth is None:
            self.truth.setText("")
        else:
            ok = "✓" if truth == pred.top1 else "✗"
            self.truth.setText(f"true label: {classes[truth]} {ok}")
        self.latency.setText(f"this frame: {pred.latency_ms:.0f} ms (one run, while the app works)")
