"""Run core generators off the GUI thread; the newest request of each kind wins.

Every step of a job runs under the shared side of the app lock, so a latency measurement
(which takes the exclusive side) holds the app's other jobs at their next step and times
the model alone."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal

log = logging.getLogger(__name__)


class _Signals(QObject):
    progress = Signal(object)  # what the generator yielded (str or a value)
    result = Signal(object)
    error = Signal(str)
    finished = Signal()


class Job(QRunnable):
    """Runs ``fn(*args)``. A generator is iterated, and stops at the next yield once
    cancelled; strings it yields are progress, its last non-string value the result."""

    def __init__(self, kind: str, fn: Callable, *args):
        super().__init__()
        self.setAutoDelete(False)
        self.kind, self.fn, self.args = kind, fn, args
        self.cancelled = False
        self.signals = _Signals()

    def cancel(self) -> None:
        self.cancelled = True

    def _emit(self, signal, *value) -> None:
        try:
            signal.emit(*value)
        except RuntimeError:  # the window was closed and its objects deleted meanwhile
            self.cancelled = True

    def run(self) -> None:  # worker thread
        from ..core.locks import running

        try:
            if self.cancelled:
                return
            with running():
                from ..core.process import flush_denormals

                flush_denormals()
                out = self.fn(*self.args)
            if inspect.isgenerator(out):
                value = None
                while not self.cancelled:
                    with running():
                        step = next(out, StopIteration)
                    if step is StopIteration:
                        break
                    if not isinstance(step, str):
                        value = step
                    self._emit(self.signals.progress, step)
                out.close()
                out = value
            if not self.cancelled:
                self._emit(self.signals.result, out)
        except Exception as exc:  # shown to the user; the window carries on
            if not self.cancelled:
                log.exception("job %s failed", self.kind)
                self._emit(self.signals.error, f"{type(exc).__name__}: {exc}")
        finally:
            self._emit(self.signals.finished)


class Runner(QObject):
    """Keeps at most one live job per kind: submitting cancels the previous one of that
    kind, and signals from a stale job are never delivered."""

    busy_changed = Signal()

    def __init__(self, parent=None, threads: int = 3):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(threads)
        self.current: dict[str, Job] = {}
        self._alive: set[Job] = set()
        self._closed = False

    def submit(self, kind: str, fn: Callable, *args, on_result=None, on_progress=None, on_error=None) -> Job | None:
        if self._closed:
            return None
        self.cancel(kind)
        job = Job(kind, fn, *args)
        self.current[kind] = job
        self._alive.add(job)

        def live(callback):
            def call(value):
                if self.current.get(kind) is job and not job.cancelled and callback is not None:
                    callback(value)
            return call

        job.signals.result.connect(live(on_result))
        job.signals.progress.connect(live(on_progress))
        job.signals.error.connect(live(on_error))
        job.signals.finished.connect(lambda: self._finished(job))
        self.pool.start(job)
        self.busy_changed.emit()
        return job

    def _finished(self, job: Job) -> None:
        self._alive.discard(job)
        if self.current.get(job.kind) is job:
            del self.current[job.kind]
        self.busy_changed.emit()

    def cancel(self, kind: str) -> None:
        job = self.current.pop(kind, None)
        if job is not None:
            job.cancel()
            self.busy_changed.emit()

    def cancel_all(self) -> None:
        for kind in list(self.current):
            self.cancel(kind)

    def busy(self, kind: str | None = None) -> bool:
        return kind in self.current if kind else bool(self.current)

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel everything and wait for the workers (each stops at its next step)."""
        self._closed = True
        for job in list(self._alive):
            job.cancel()
        self.current.clear()
        for job in list(self._alive):  # no callback may reach a closing window
            s = job.signals
            for signal in (s.progress, s.result, s.error, s.finished):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass
        return self.pool.waitForDone(timeout_ms)
