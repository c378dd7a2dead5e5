"""Live mode on screen: polls the newest frame and predictions of the controller's
LiveSession well above the source's rate and shows them in the panes. Each frame is shown
with its top-1 captions; the top-5 bars and figures, whose relayout costs the GUI thread
far more, follow four times a second."""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, Qt, QTimer

from .panes import to_pixmap

TEXT_PERIOD_S = 0.25  # top-5 bars and figures; the video and its top-1 caption follow every frame
LIVE_AGREEMENT_POINTS = 600  # the agreement plot in live mode: a point a second, the newest ten minutes


class LiveAgreement:
    """How often the optimized model's top-1 equals the original's on the same live frame,
    counted per optimized model (``owner``)."""

    def __init__(self):
        self.owner, self.agree, self.total = None, 0, 0
        self._original: dict[int, int] = {}  # frame number -> original top-1
        self._counted = 0

    def add(self, ref, new, owner) -> None:
        if ref is not None:
            self._original[ref[0]] = ref[1].top1
            if len(self._original) > 300:
                for seq in sorted(self._original)[:150]:
                    del self._original[seq]
        if owner is not self.owner:
            self.owner, self.agree, self.total, self._counted = owner, 0, 0, 0
        if new is not None and owner is not None and new[0] != self._counted and new[0] in self._original:
            self._counted = new[0]
            self.total += 1
            self.agree += new[1].top1 == self._original[new[0]]

    @property
    def value(self) -> float | None:
        return self.agree / self.total if self.total else None


class LiveDisplay(QObject):
    def __init__(self, controller, original_pane, optimized_pane, frame_label, status, plots, parent=None):
        super().__init__(parent)
        self.plots = plots
        self.agreement = LiveAgreement()
        self.c, self.panes, self.frame_label, self.status = controller, (original_pane, optimized_pane), \
            frame_label, status
        self.stats = {"displayed": 0, "last_seq": 0}
        self._notice: str | None = None
        self._plotted = (None, 0.0)  # (optimized model, time) of the agreement plot's last point
        self.timer = QTimer(self, timerType=Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._on_tick)
        controller.live_changed.connect(self._on_live_changed)

    def _on_live_changed(self, on: bool) -> None:
        if on:
            self.agreement = LiveAgreement()
            for key in ("original", "optimized"):
                self.plots.reset_accuracy(key, labelled=False, counted="live frames compared")
            self._plotted = (None, 0.0)
            self.stats = {"displayed": 0, "last_seq": 0}
            # poll well above the source rate: a late tick still shows the newest frame
            self.timer.start(max(4, int(250 / self.c.live.grabber.fps)))
            self._last_tick = time.perf_counter()
            self._last_text = 0.0
        else:
            self.timer.stop()

    def _on_tick(self) -> None:
        started = time.perf_counter()
        self._tick()
        cost = self.stats.setdefault("tick_ms", [])
        cost.append((time.perf_counter() - started) * 1000)
        if len(cost) > 2000:
            del cost[:1000]

    def _show_text(self, live, ref, new, classes) -> None:
        original, optimized = self.panes
        if ref is not None and ref[0] != self.stats.get("ref_seq"):
            self.stats["ref_seq"] = ref[0]
            original.show_prediction(ref[1], classes, None)
        if new is not None and new[0] != self.stats.get("new_seq"):
            self.stats["new_seq"] = new[0]
            optimized.show_prediction(new[1], classes, None, differs=ref is not None and new[1].top1 != ref[1].top1)
        for pane, predictor, pred in ((original, live.original, ref), (optimized, live.optimized, new)):
            pane.latency.setText(f"{predictor.rate():.1f} predictions/s (limit {predictor.max_rate:.0f}/s: display "
                                 f"first) · {predictor.runtime} · this frame {pred[1].latency_ms:.0f} ms, while busy"
                                 if pred else predictor.runtime)
        self.frame_label.setText(f"live: frame {live.grabber.frames_read}")

    def _tick(self) -> None:
        live, ws = self.c.live, self.c.ws
        if live is None or ws is None:
            return
        classes = ws.loaded.classes
        original, optimized = self.panes
        ref, new = live.original.latest, live.optimized.latest
        stamped = live.grabber.latest
        now = time.perf_counter()
        lag_ms = max(0.0, (now - self._last_tick) * 1000 - self.timer.interval())
        self._last_tick = now
        read = shown = 0
        if stamped is not None and stamped.seq != self.stats["last_seq"]:
            read, shown = stamped.seq - self.stats["last_seq"], 1
            self.stats["last_seq"] = stamped.seq
            self.stats["displayed"] += 1
            pixmap = to_pixmap(stamped.frame.rgb)
            original.set_image(pixmap, classes[ref[1].top1] if ref else None, fast=True)
            optimized.set_image(pixmap, classes[new[1].top1] if new else None, fast=True)
        if new is not None and new[0] != self.stats.get("new_seq") and self.c.current is not None \
                and live.optimized.latest_owner is self.c.current:
            self.c.mark_shown()
        self.agreement.add(ref, new, live.optimized.latest_owner)
        # the display's health sets how often the models predict (core.live.RateGovernor)
        live.display_report(read, shown, lag_ms, now)
        if now - self._last_text >= TEXT_PERIOD_S:  # text and bars relayout: a few times a second is readable
            self._last_text = now
            self._show_text(live, ref, new, classes)
            owner, value = self.agreement.owner, self.agreement.value
            if owner is not None and value is not None:  # the trade-off's y: agreement on the live frames
                self.plots.update_point(owner.config, value)
                self.plots.update_point(type(owner.config)(), 1.0)
                self._plot_agreement(owner)
        error = live.grabber.error or live.original.error or live.optimized.error
        if live.grabber.error:
            self.c.live_failed(live.grabber.error)
        elif error:
            self.status(error, True)
        elif live.grabber.notice and live.grabber.notice != self._notice:
            self._notice = self.c.notice = live.grabber.notice
            self.status(live.grabber.notice, True)
        elif live.grabber.ended and not live.grabber.is_alive():
            self.status(f"{ws.source.name}: end of video", False)
            self.timer.stop()

    def _plot_agreement(self, owner) -> None:
        """The running agreement of the optimized model now live, a point a second (the newest
        ten minutes; a few points to redraw, the display first); a new model starts a new curve."""
        plotted, at = self._plotted
        now = time.monotonic()
        if owner is not plotted:
            self.plots.reset_accuracy("optimized", labelled=False, counted="live frames compared",
                                      points=LIVE_AGREEMENT_POINTS)
        elif now - at < 1.0:
            return
        self.plots.add_accuracy("optimized", self.agreement.total, self.agreement.agree, self.agreement.total)
        self._plotted = (owner, now)
