"""Live mode on screen: polls the newest frame and predictions of the controller's
LiveSession well above the source's rate and shows them in the panes."""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, QTimer

from .panes import to_pixmap


class LiveDisplay(QObject):
    def __init__(self, controller, original_pane, optimized_pane, frame_label, status, parent=None):
        super().__init__(parent)
        self.c, self.panes, self.frame_label, self.status = controller, (original_pane, optimized_pane), \
            frame_label, status
        self.stats = {"displayed": 0, "last_seq": 0}
        self.timer = QTimer(self, timerType=Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._on_tick)
        controller.live_changed.connect(self._on_live_changed)

    def _on_live_changed(self, on: bool) -> None:
        if on:
            self.stats = {"displayed": 0, "last_seq": 0}
            # poll well above the source rate: a late tick still shows the newest frame
            self.timer.start(max(4, int(250 / self.c.live.grabber.fps)))
        else:
            self.timer.stop()

    def _on_tick(self) -> None:
        live, ws = self.c.live, self.c.ws
        if live is None or ws is None:
            return
        classes = ws.loaded.classes
        original, optimized = self.panes
        ref, new = live.original.latest, live.optimized.latest
        stamped = live.grabber.latest
        if stamped is not None and stamped.seq != self.stats["last_seq"]:
            self.stats["last_seq"] = stamped.seq
            self.stats["displayed"] += 1
            pixmap = to_pixmap(stamped.frame.rgb)
            original.set_image(pixmap, classes[ref[1].top1] if ref else None, fast=True)
            optimized.set_image(pixmap, classes[new[1].top1] if new else None, fast=True)
        if ref is not None and ref[0] != self.stats.get("ref_seq"):
            self.stats["ref_seq"] = ref[0]
            original.show_prediction(ref[1], classes, None)
        if new is not None and new[0] != self.stats.get("new_seq"):
            self.stats["new_seq"] = new[0]
            optimized.show_prediction(new[1], classes, None, differs=ref is not None and new[1].top1 != ref[1].top1)
            if self.c.current and live.optimized.model is self.c.current.model:
                self.c.mark_shown()
        for pane, pred, rate in ((original, ref, live.original.rate()), (optimized, new, live.optimized.rate())):
            pane.latency.setText(f"{rate:.1f} predictions/s · this frame {pred[1].latency_ms:.0f} ms, while busy"
                                 if pred else "")
        self.frame_label.setText(f"live: frame {live.grabber.frames_read}")
        error = live.grabber.error or live.original.error or live.optimized.error
        if error:
            self.status(error, True)
            if live.grabber.error:
                self.c.stop_live()
        elif live.grabber.ended and not live.grabber.is_alive():
            self.status(f"{ws.source.name}: end of video", False)
            self.timer.stop()
