"""Live demo: the display keeps the source's rate whatever the models cost, the prediction
rate adapts, demo mode, snapshot, record, and a camera that goes away."""

import time

import cv2
import numpy as np
import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from workbench.core.live import RateGovernor, make_test_video
from workbench.core.sources import SourceError, open_source
from workbench.ui import build_window

LONG = 120_000


@pytest.fixture
def video(tmp_path):
    return make_test_video(tmp_path / "clip.avi", seconds=4, fps=30, size=(320, 240))


def _open(qtbot, source=None):
    w = build_window(source=source)
    qtbot.addWidget(w)
    w.show()
    return w


class Slow:
    """A model that takes ``seconds`` per frame (not a torch module: live mode runs it as it is)."""

    def __init__(self, model, seconds: float):
        self.model, self.seconds = model, seconds

    def __call__(self, x):
        time.sleep(self.seconds)
        return self.model(x)

    def eval(self):
        return self


def test_governor_backs_off_when_the_display_starves_and_climbs_back():
    g = RateGovernor(ceiling=30, floor=2, start=12, period=1.0, keep=0.9, max_lag_ms=50, step=1.0)
    t = 0.0
    g.observe(0, 0, 0, t)
    for _ in range(20):  # the display shows a third of the frames
        t += 1.0
        g.observe(30, 10, 5.0, t)
    assert g.rate == 2
    for _ in range(40):  # every frame shown, no lag
        t += 1.0
        g.observe(30, 30, 5.0, t)
    assert g.rate == 30
    t += 1.0
    g.observe(30, 30, 120.0, t)  # one long GUI stall
    assert g.rate == pytest.approx(21)


@pytest.mark.gui
def test_a_slow_model_slows_predictions_not_the_display(qtbot, video):
    w = _open(qtbot, str(video))
    qtbot.waitUntil(lambda: w.live is not None and w.live.original.count > 0, timeout=LONG)
    qtbot.waitUntil(lambda: not w.runner.busy(), timeout=LONG)
    live = w.live
    live.original.model = Slow(w.ws.loaded.model, 0.4)
    live.set_optimized(Slow(w.ws.loaded.model, 0.4), "slow test model")
    qtbot.wait(1000)  # the models in flight finish
    read0, shown0, orig0 = live.grabber.frames_read, w.live_display.stats["displayed"], live.original.count
    t0 = time.monotonic()
    qtbot.wait(3000)
    elapsed = time.monotonic() - t0
    read, shown = live.grabber.frames_read - read0, w.live_display.stats["displayed"] - shown0
    assert read / elapsed > 0.8 * live.grabber.fps  # the source is read at its rate
    assert shown >= 0.9 * read  # and (nearly) every frame is shown
    assert (live.original.count - orig0) / elapsed < 1 / 0.4 + 0.5  # while predictions slow down
    assert "slow test model" in w.optimized_pane.latency.text()
    w.close()


@pytest.mark.gui
def test_demo_mode_hides_and_restores_the_panels(qtbot):
    w = _open(qtbot)
    hidden = {x: x.isHidden() for x in w.show_controls.demo.hide}
    assert not w.plots.latency.isHidden() and not w.pickers.isHidden()
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow)
    qtbot.keyClick(w, Qt.Key.Key_F11)
    assert w.show_controls.demo.active and w.isFullScreen()
    assert w.plots.latency.isHidden() and w.pickers.isHidden() and w.plots.accuracy.isHidden()
    for kept in (w.original_pane, w.optimized_pane, w.plots.tradeoff, w.panel.sparsity_slider, w.panel.bits_slider):
        assert kept.isVisibleTo(w), kept
    assert w.original_pane.scale > 1
    qtbot.keyClick(w, Qt.Key.Key_Escape)
    assert not w.show_controls.demo.active and not w.isFullScreen()
    assert {x: x.isHidden() for x in w.show_controls.demo.hide} == hidden
    assert w.original_pane.scale == 1
    w.close()


@pytest.mark.gui
def test_snapshot_and_recording_write_files_that_open(qtbot, tmp_path):
    w = _open(qtbot)
    qtbot.waitUntil(lambda: w.shown_config is not None, timeout=LONG)
    sc = w.show_controls
    sc.folder = tmp_path / "captures"
    png = sc.take_snapshot()
    image = QImage(str(png))
    assert not image.isNull() and image.width() == w.panes_box.width()
    width = w.panes_box.width()
    sc.record_button.setChecked(True)
    qtbot.wait(1500)
    sc.record_button.setChecked(False)
    assert "recorded" in w.status_text.text()
    cap = cv2.VideoCapture(str(sc.recorder.path))
    ok, frame = cap.read()
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert ok and frame.shape[1] == width // 2 * 2 and frames >= 10
    assert frame.std() > 5  # the panes, not a blank image
    w.close()


class FakeCamera:
    """Stands in for cv2.VideoCapture on a camera index: ``frames`` frames, then nothing
    (unplugged). A new capture delivers again (plugged back in)."""

    frames = 40
    opened: list = []

    def __init__(self, target, *args):
        self.target, self.left, self.open = target, self.frames, True
        self.size: dict = {}
        FakeCamera.opened.append(self)

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return self.open

    def read(self):
        if self.left <= 0:
            return False, None
        self.left -= 1
        time.sleep(1 / 30)
        frame = np.full((240, 320, 3), 40 + self.left * 4 % 200, np.uint8)
        return True, frame

    def get(self, prop):
        return {cv2.CAP_PROP_FPS: 30.0}.get(prop, 0.0)

    def set(self, prop, value):
        self.size[prop] = value
        return True

    def release(self):
        self.open = False


@pytest.fixture
def fake_camera(monkeypatch):
    real = cv2.VideoCapture
    FakeCamera.opened, FakeCamera.frames = [], 40
    monkeypatch.setattr(cv2, "VideoCapture", lambda target, *a: FakeCamera(target) if isinstance(target, int)
                        else real(target, *a))
    return FakeCamera


def test_camera_spec_asks_for_a_resolution(fake_camera):
    source = open_source("camera:1@1280x720")
    assert source.target == 1 and fake_camera.opened[-1].size == {cv2.CAP_PROP_FRAME_WIDTH: 1280,
                                                                   cv2.CAP_PROP_FRAME_HEIGHT: 720}
    source.release()
    with pytest.raises(SourceError, match="camera:N@WIDTHxHEIGHT"):
        open_source("camera:1@big")


@pytest.mark.gui
def test_a_camera_that_goes_away_is_reported_and_can_be_reopened(qtbot, fake_camera):
    w = _open(qtbot, "camera:0")
    qtbot.waitUntil(lambda: w.live is not None and w.live_display.stats["displayed"] > 3, timeout=LONG)
    qtbot.waitUntil(lambda: w.live is None, timeout=LONG)  # the camera stopped delivering
    assert "stopped delivering" in w.status_text.text()
    assert w.reopen_button.isVisible()
    assert w.isVisible()  # the window keeps going
    fake_camera.frames = 100_000  # plugged back in
    qtbot.mouseClick(w.reopen_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.live is not None and w.live_display.stats["displayed"] > 3, timeout=LONG)
    assert len(fake_camera.opened) >= 2 and not w.reopen_button.isVisible()
    w.close()


def test_live_agreement_counts_frames_both_models_saw_and_restarts_per_model():
    from types import SimpleNamespace as P

    from workbench.ui.live_view import LiveAgreement

    a, first, second = LiveAgreement(), object(), object()
    a.add((1, P(top1=5)), None, first)
    a.add((1, P(top1=5)), (1, P(top1=5)), first)  # same frame, same class
    a.add((1, P(top1=5)), (1, P(top1=5)), first)  # the same prediction again: not counted twice
    a.add((3, P(top1=7)), (2, P(top1=9)), first)  # the original never saw frame 2: not counted
    a.add((3, P(top1=7)), (3, P(top1=8)), first)  # disagrees
    assert (a.agree, a.total, a.value) == (1, 2, 0.5)
    a.add((4, P(top1=7)), (4, P(top1=7)), second)  # another optimized model: counted afresh
    assert (a.owner, a.agree, a.total) == (second, 1, 1)
