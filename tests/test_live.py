"""Live mode on a short generated video: frames shown, both models predicting, clean shutdown."""

import threading

import pytest
from PySide6.QtWidgets import QLabel, QSlider

from workbench.core.config import BIT_STOPS
from workbench.core.live import LiveSession, make_test_video
from workbench.core.models import load_model
from workbench.core.sources import open_source
from workbench.ui import build_window

LONG = 120_000


@pytest.fixture
def video(tmp_path):
    return make_test_video(tmp_path / "clip.avi", seconds=2, fps=15, size=(320, 240))


def test_core_live_session_predicts_and_releases(video):
    lm = load_model("efficientnet_lite0")
    source = open_source(video)
    live = LiveSession(source, lm.model, lm.model, lm.preprocess, loop=False)
    live.start()
    live.grabber.join(10)
    assert live.grabber.ended and live.grabber.frames_read == 30
    assert live.stop()
    assert live.original.count > 0 and live.optimized.count > 0
    assert source.released


@pytest.mark.gui
def test_window_live_mode_swaps_model_and_shuts_down_cleanly(qtbot, video):
    before = set(threading.enumerate())
    w = build_window(source=str(video))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.live is not None and w.live_display.stats["displayed"] > 5, timeout=LONG)
    qtbot.waitUntil(lambda: w.live.original.count > 0 and w.live.optimized.count > 0, timeout=LONG)
    live = w.live
    w.findChild(QSlider, "bitsSlider").setValue(BIT_STOPS.index(8))
    qtbot.waitUntil(lambda: w.shown_config is not None and w.shown_config.bits == 8, timeout=LONG)
    assert w.live is live and live.grabber.is_alive()  # swapped without stopping the stream
    shown = w.live_display.stats["displayed"]
    qtbot.waitUntil(lambda: w.live_display.stats["displayed"] > shown, timeout=LONG)
    # the agreement plot draws the live agreement of the model now shown, over the frames compared
    qtbot.waitUntil(lambda: len(w.plots.acc_history["optimized"]) > 0, timeout=LONG)
    assert w.plots.accuracy.getAxis("bottom").labelText == "live frames compared"
    # once int8 runs on ONNX Runtime, the status says so (not "quantizing it…" for good)
    status = w.findChild(QLabel, "statusText")
    qtbot.waitUntil(lambda: "now runs on ONNX Runtime int8" in status.text(), timeout=LONG)
    source = w.ws.source
    w.close()
    assert not any(t.is_alive() for t in live.threads)
    assert source.released
    leftover = [t for t in threading.enumerate() if t not in before and t.name.startswith("workbench")]
    assert leftover == []
