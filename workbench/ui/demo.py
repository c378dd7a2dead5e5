"""For the projector: demo mode (full screen, large type, the panes, the trade-off plot and
the sliders), a snapshot of both panes side by side, and a recording of them."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QStandardPaths, QTimer
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QWidget


def capture_folder() -> Path:
    """Where snapshots and recordings go unless the window is told otherwise."""
    pictures = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation)
    return Path(pictures or Path.home()) / "Workbench"


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"


def to_rgb(image: QImage) -> np.ndarray:
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h = image.width(), image.height()
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(h, image.bytesPerLine())
    return rows[:, : 3 * w].reshape(h, w, 3).copy()


class DemoMode(QObject):
    """Enter: hides ``hide``, shows the window full screen with fonts ``scale`` times larger.
    Leave restores each widget's own visibility, the font and the window state."""

    def __init__(self, window: QWidget, hide: list[QWidget], scale: float = 1.6):
        super().__init__(window)
        self.window, self.hide, self.scale = window, hide, scale
        self.active = False
        self._saved: dict = {}

    def toggle(self) -> None:
        self.leave() if self.active else self.enter()

    def enter(self) -> None:
        if self.active:
            return
        w = self.window
        self._saved = {"hidden": {x: x.isHidden() for x in self.hide}, "font": w.font(), "state": w.windowState()}
        for x in self.hide:
            x.hide()
        font = w.font()
        font.setPointSizeF(font.pointSizeF() * self.scale)
        w.setFont(font)
        self.active = True
        w.showFullScreen()

    def leave(self) -> None:
        if not self.active:
            return
        w = self.window
        for x, hidden in self._saved["hidden"].items():
            x.setHidden(hidden)
        w.setFont(self._saved["font"])
        w.setWindowState(self._saved["state"])
        self.active = False


class Recorder(QObject):
    """Records a widget (the two panes) to an MJPG .avi at ``fps``: the GUI thread grabs,
    a writer thread encodes, so encoding never holds up the display."""

    def __init__(self, widget: QWidget, fps: float = 15.0, parent=None):
        super().__init__(parent)
        self.widget, self.fps = widget, fps
        self.path: Path | None = None
        self.frames = 0
        self.error: str | None = None
        self._size: tuple[int, int] | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=30)
        self._thread: threading.Thread | None = None
        self._timer = QTimer(self, interval=int(1000 / fps))
        self._timer.timeout.connect(self._grab)

    @property
    def recording(self) -> bool:
        return self._thread is not None

    def start(self, folder: Path) -> Path:
        import cv2

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"workbench-{_stamp()}.avi"
        size = self.widget.size()
        self._size = (size.width() // 2 * 2, size.height() // 2 * 2)
        writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, self._size)
        if not writer.isOpened():
            raise OSError(f"cannot write a video to {self.path}")
        self.frames, self.error = 0, None
        self._thread = threading.Thread(target=self._write, args=(writer,), name="workbench-recorder", daemon=True)
        self._thread.start()
        self._timer.start()
        return self.path

    def _grab(self) -> None:
        w, h = self._size
        image = self.widget.grab().toImage()
        if (image.width(), image.height()) != (w, h):
            image = image.scaled(w, h)
        try:
            self._queue.put_nowait(to_rgb(image))
        except queue.Full:  # the encoder is behind: skip a frame rather than stall the display
            pass

    def _write(self, writer) -> None:
        import cv2

        try:
            while (rgb := self._queue.get()) is not None:
                writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                self.frames += 1
        except Exception as exc:  # disk full, …: reported when recording stops
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            writer.release()

    def stop(self) -> Path | None:
        """Stop and close the file; returns its path."""
        if self._thread is None:
            return None
        self._timer.stop()
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:  # the writer died (its error is kept) and left the queue full
            pass
        self._thread.join(10)
        self._thread = None
        return self.path


def snapshot(widget: QWidget, folder: Path) -> Path:
    """A PNG of ``widget`` (both panes side by side) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"workbench-{_stamp()}.png"
    from ..core.files import atomic_path

    with atomic_path(path) as tmp:
        if not widget.grab().save(str(tmp), "PNG"):
            raise OSError(f"cannot write {path}")
    return path


class ShowControls(QWidget):
    """Snapshot, record and demo-mode buttons (F11 toggles demo mode, Esc leaves it).
    ``status(text, error)`` reports where files went, or what failed."""

    def __init__(self, window: QWidget, panes: QWidget, hide: list[QWidget], status, scale_panes, parent=None):
        from PySide6.QtGui import QAction, QKeySequence, QShortcut
        from PySide6.QtWidgets import QHBoxLayout, QPushButton

        super().__init__(parent)
        self.panes, self.status, self.folder = panes, status, capture_folder()
        self.demo = DemoMode(window, hide)
        self.recorder = Recorder(panes, parent=self)
        self._scale_panes = scale_panes
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.snapshot_button = QPushButton("Snapshot", objectName="snapshotButton",
                                           toolTip="Save both panes side by side as a PNG")
        self.record_button = QPushButton("● Record", objectName="recordButton", checkable=True,
                                         toolTip="Record both panes side by side to a video file")
        self.demo_button = QPushButton("Demo (F11)", objectName="demoButton", checkable=True,
                                       toolTip="Full screen, large type, panes and trade-off plot; Esc leaves")
        for b in (self.snapshot_button, self.record_button, self.demo_button):
            layout.addWidget(b)
        self.snapshot_button.clicked.connect(self.take_snapshot)
        self.record_button.toggled.connect(self._on_record)
        self.demo_button.toggled.connect(lambda on: self.set_demo(on))
        self.demo_action = QAction("&Demo mode", window, objectName="demoAction", shortcut=QKeySequence("F11"),
                                   toolTip="Full screen, large type, panes and trade-off plot; Esc leaves")
        self.demo_action.triggered.connect(lambda: self.set_demo(not self.demo.active))
        self.snapshot_action = QAction("Save &snapshot", window, objectName="snapshotAction",
                                       shortcut=QKeySequence("Ctrl+S"), toolTip=self.snapshot_button.toolTip())
        self.snapshot_action.triggered.connect(self.take_snapshot)
        window.addAction(self.demo_action)
        window.addAction(self.snapshot_action)
        self._esc = QShortcut(QKeySequence("Esc"), window, activated=lambda: self.set_demo(False), enabled=False)

    def set_demo(self, on: bool) -> None:
        (self.demo.enter if on else self.demo.leave)()
        self._esc.setEnabled(on)  # Esc is the dialogs' own otherwise
        self._scale_panes(self.demo.scale if on else 1.0)
        self.demo_button.blockSignals(True)
        self.demo_button.setChecked(on)
        self.demo_button.blockSignals(False)

    def take_snapshot(self) -> Path | None:
        try:
            path = snapshot(self.panes, self.folder)
        except OSError as exc:
            self.status(f"snapshot failed: {exc}", True)
            return None
        self.status(f"snapshot saved: {path}", False)
        return path

    def _on_record(self, on: bool) -> None:
        if on:
            try:
                path = self.recorder.start(self.folder)
            except OSError as exc:
                self.status(f"recording failed: {exc}", True)
                self.record_button.setChecked(False)
                return
            self.record_button.setText("■ Stop recording")
            self.status(f"recording to {path}", False)
        else:
            path = self.recorder.stop()
            self.record_button.setText("● Record")
            if path is not None:
                error = self.recorder.error
                self.status(f"recording failed: {error}" if error else
                            f"recorded {self.recorder.frames} frames: {path}", bool(error))

    def stop_recording(self) -> None:
        if self.recorder.recording:
            self.record_button.setChecked(False)
