"""The window, driven as a person would (offscreen)."""

import pytest
from PySide6.QtWidgets import QComboBox, QLabel, QSlider

from workbench.core.config import BIT_STOPS, OptimizationConfig
from workbench.ui import build_window

pytestmark = pytest.mark.gui
LONG = 300_000  # ms; generous for a loaded 2-core CI machine (the first pruning prepares a database)


@pytest.fixture
def window(qtbot):
    w = build_window()
    qtbot.addWidget(w)
    w.show()
    yield w
    w.close()


def _top1(w, which):
    return w.findChild(QLabel, f"{which}Top1").text()


def _wait_for_predictions(qtbot, w):
    qtbot.waitUntil(lambda: _top1(w, "original") not in ("", "…") and _top1(w, "optimized") not in ("", "…"),
                    timeout=LONG)


def test_named_widgets_exist(window):
    from pyqtgraph import PlotWidget

    for name in ("modelPicker", "sourcePicker", "pruneMethodCombo", "quantSchemeCombo"):
        assert window.findChild(QComboBox, name) is not None, name
    for name in ("sparsitySlider", "bitsSlider"):
        assert window.findChild(QSlider, name) is not None, name
    for name in ("latencyPlot", "memoryPlot", "accuracyPlot", "tradeoffPlot"):
        assert isinstance(window.findChild(PlotWidget, name), PlotWidget), name
    assert window.findChild(QSlider, "bitsSlider").maximum() == len(BIT_STOPS) - 1
    assert window.findChild(QSlider, "sparsitySlider").maximum() == 95


def test_sliders_update_the_optimized_pane_and_plots(qtbot, window):
    _wait_for_predictions(qtbot, window)
    first = _top1(window, "original").split("  ")[0]
    assert first in window.ws.loaded.classes
    points_before = len(window.plots.points)
    bits = window.findChild(QSlider, "bitsSlider")
    sparsity = window.findChild(QSlider, "sparsitySlider")
    with qtbot.waitSignal(window.shown, timeout=LONG, check_params_cb=lambda c: c.bits == 8 and c.sparsity == 0.3):
        bits.setValue(BIT_STOPS.index(8))
        sparsity.setValue(30)
    assert window.current.kernels.startswith("int8")
    assert "int8" in window.findChild(QLabel, "optimizedWhatRan").text()
    assert "no speedup expected" in window.findChild(QLabel, "optimizedWhatRan").text()
    assert window.findChild(QLabel, "optimizedTop1").text().split("  ")[0] in window.ws.loaded.classes
    qtbot.waitUntil(lambda: len(window.plots.points) > points_before, timeout=LONG)
    qtbot.waitUntil(lambda: len(window.plots.lat["optimized"]) > 0 and bool(window.plots.acc_history["optimized"]),
                    timeout=LONG)
    heights = window.plots.bars.opts["height"]
    assert heights[0] > 0 and 0 < heights[1] < heights[0]
    qtbot.waitUntil(lambda: window.report() is not None, timeout=LONG)
    report = window.report()
    for side in ("original", "optimized"):  # each pane: its model's median and file, as the report has them
        what = window.findChild(QLabel, f"{side}WhatRan").text()
        assert f"median {report[side]['latency_ms']['median']:.1f} ms" in what, (side, what)
        assert f"{report[side]['size_bytes'] / 1e6:.2f} MB" in what, (side, what)
    ratio = report["optimized"]["latency_ratio"]
    assert f"{ratio:.2f}× the original's" in window.findChild(QLabel, "optimizedWhatRan").text()


def test_only_the_newest_configuration_is_shown(qtbot, window):
    _wait_for_predictions(qtbot, window)
    sparsity = window.findChild(QSlider, "sparsitySlider")
    shown = []
    window.shown.connect(shown.append)
    for v in range(10, 60, 5):  # ten quick moves
        sparsity.setValue(v)
    qtbot.waitUntil(lambda: window.shown_config is not None and window.shown_config.sparsity == 0.55, timeout=LONG)
    assert all(c.sparsity == 0.55 for c in shown)
    assert window.current.config.sparsity == 0.55


def test_clicking_a_tradeoff_point_restores_its_configuration(qtbot, window):
    _wait_for_predictions(qtbot, window)
    target = OptimizationConfig(sparsity=0.2, prune_method="structured", bits=4, quant_scheme="weights")
    window.plots.point_clicked.emit(target)
    qtbot.waitUntil(lambda: window.shown_config == target, timeout=LONG)
    assert window.findChild(QSlider, "sparsitySlider").value() == 20
    assert window.findChild(QComboBox, "pruneMethodCombo").currentData() == "structured"
    assert "simulated" in window.findChild(QLabel, "optimizedWhatRan").text()


def test_a_failing_worker_does_not_kill_the_window(qtbot, window, monkeypatch):
    _wait_for_predictions(qtbot, window)
    import workbench.core.session as session

    def boom(*_):
        raise RuntimeError("kernel exploded")
        yield  # pragma: no cover

    monkeypatch.setattr(session, "optimize_and_measure", boom)
    window.findChild(QSlider, "bitsSlider").setValue(BIT_STOPS.index(4))
    qtbot.waitUntil(lambda: "kernel exploded" in window.status_text.text(), timeout=LONG)
    monkeypatch.undo()
    window.findChild(QSlider, "bitsSlider").setValue(BIT_STOPS.index(6))
    qtbot.waitUntil(lambda: window.shown_config is not None and window.shown_config.bits == 6, timeout=LONG)


def test_bad_model_file_is_refused_and_the_window_carries_on(qtbot, window, tmp_path):
    _wait_for_predictions(qtbot, window)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"nope")
    window.open_path(str(bad))
    qtbot.waitUntil(lambda: "broken.pt" in window.status_text.text(), timeout=LONG)
    assert window.ws is not None and window.ws.loaded.name == "efficientnet_lite0"


def test_folder_with_a_corrupt_image_reports_it(qtbot, window, tmp_path):
    from conftest import write_images

    write_images(tmp_path, ["n01440764_a.png", "n01443537_b.png"], size=(64, 64))
    (tmp_path / "n01484850_c.jpg").write_bytes(b"garbage")
    window.open_path(str(tmp_path))
    qtbot.waitUntil(lambda: "skipped 1 unreadable" in window.status_text.text(), timeout=LONG)
    assert len(window.ws.frames) == 2 and window.ws.labelled


def test_layers_view_sensitivity_overrides_and_recovery(qtbot, window, monkeypatch):
    import workbench.ui.controller as controller

    _wait_for_predictions(qtbot, window)
    layers = window.layers
    window.findChild(QSlider, "sparsitySlider").setValue(30)
    qtbot.waitUntil(lambda: window.shown_config is not None and window.shown_config.sparsity == 0.3, timeout=LONG)
    layers.measure_button.click()
    qtbot.waitUntil(lambda: len(layers._sens) >= 40, timeout=LONG)
    assert len(layers.sens_bars.opts["height"]) == len(layers.names)
    name = layers.names[5]
    layers.toggle_excluded(name)
    layers.set_layer_bits(layers.names[6], 6)
    qtbot.waitUntil(lambda: window.shown_config is not None and name in window.shown_config.exclude, timeout=LONG)
    assert dict(window.shown_config.layer_bits) == {layers.names[6]: 6}
    monkeypatch.setattr(controller, "RECOVER_SECONDS", 2.0)
    layers.recover_button.click()
    qtbot.waitUntil(lambda: any("distillation" in m for m in window.measured.optimized.methods), timeout=LONG)
    layers.clear_overrides()
    qtbot.waitUntil(lambda: window.shown_config is not None and not window.shown_config.exclude, timeout=LONG)


def test_both_panes_keep_one_width_and_draw_the_frame_at_one_size(qtbot):
    """A longer text under the optimized pane (a simulated bit width's, or "no speedup expected"
    wrapping) must neither widen that pane nor draw its frame smaller: the two are compared side by side."""
    import numpy as np
    from PySide6.QtWidgets import QWidget

    from workbench.ui.panes import side_by_side

    box = QWidget()
    original, optimized = side_by_side(box)
    qtbot.addWidget(box)
    box.resize(620, 520)
    box.show()
    frame = np.zeros((300, 300, 3), np.uint8)
    for pane in (original, optimized):
        pane.set_image(frame)
        pane.show_what_ran("the model as loaded", "fp32", 14.0, 18_870_000, 1.0)
    optimized.show_what_ran("4-bit weights, 8-bit activations simulated (float kernels with quantize steps: its "
                            "latency is the simulation's)", "fp32 (simulated W4A8)", 34.0, 2_970_000, 2.22)
    optimized.latency.setText("this frame: 78 ms (one run, while the app works)")
    optimized.setTitle("Optimized: 50% unstructured-obc, " + "and a title longer than half the width " * 2)
    qtbot.wait(200)
    assert abs(optimized.width() - original.width()) <= 2
    qtbot.waitUntil(lambda: optimized.image.height() < original.image.height(), timeout=5000)
    qtbot.wait(50)
    assert optimized.image.pixmap().size() == original.image.pixmap().size()
    assert original.image.pixmap().height() <= optimized.image.height()
