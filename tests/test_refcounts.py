"""A long session must not leak references to None (PySide6 6.12.0 lost one per void call
under Python 3.11, and live mode died with 'none_dealloc' after a few minutes)."""

import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def test_pane_and_plot_updates_keep_none_alive(qtbot):
    from workbench.core.session import Prediction
    from workbench.ui.panes import ModelPane
    from workbench.ui.plots import Plots

    pane = ModelPane("Original", "original")
    qtbot.addWidget(pane)
    plots = Plots()
    rgb = np.zeros((48, 64, 3), np.uint8)
    pred = Prediction([(i, 0.2) for i in range(5)], None, 1.0)
    classes = [f"class {i}" for i in range(10)]

    def update():
        pane.set_image(rgb, "class 0", fast=True)
        pane.show_prediction(pred, classes, 1)
        plots.add_latency(1.0, 2.0)
        plots.redraw()

    update()
    before = sys.getrefcount(None)
    for _ in range(300):
        update()
    assert sys.getrefcount(None) >= before - 50
