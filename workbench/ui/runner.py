"""Run core generators off the GUI thread; the newest request of each kind wins.

Every job runs on one worker thread, a step (one ``next()`` of its generator) at a time,
the jobs taking turns; the current image's predictions go first. One thread, because
PyTorch's OpenMP runtime (libgomp) lets each thread that runs a model keep its own team of
threads: with more teams than cores it stops its threads from waiting actively, and a
model of many small layers then runs about twice as slow (EfficientNet-Lite0 on 2 cores:
42 instead of 20 ms), in the latencies the window measures as well. Every step holds the
shared side of the app lock, so a latency measurement (the exclusive side) also keeps live
mode's predictors waiting and times the model alone."""

from __future__ import annotations

import inspect
import logging
import threading
from collections import deque
from collections.abc import Callable

from PySide6.QtCore import QObject, Signal

log = logging.getLogger(__name__)
FIRST = ("infer",)  # kinds whose steps run before the others' (what the eye waits for)


class _Signals(QObject):
    progress = Signal(object)  # what the generator yielded (str or a value)
    result = Signal(object)
    error = Signal(str)
    finished = Signal()


class Job:
    """Runs ``fn(*args)``. A generator is iterated, and stops at the next yield once
    cancelled; strings it yields are progress, its last non-string value the result."""

    def __init__(self, kind: str, fn: Callable, *args):
        self.kind, self.fn, self.args = kind, fn, args
        self.cancelled = False
        self.signals = _Signals()
        self._steps = None  # the generator, after the first step
        self._value = None

    def cancel(self) -> None:
        self.cancelled = True

    def _emit(self, signal, *value) -> None:
        try:
            signal.emit(*value)
        except RuntimeError:  # the window was closed and its objects deleted meanwhile
            self.cancelled = True

    def step(self) -> bool:
        """Run the next step (worker thread); True when the job is over."""
        from ..core.locks import running

        try:
            with running():
                if self.cancelled:
                    if self._steps is not None:
                        self._steps.close()
                    return self._finish()
                if self._steps is None:
                    out = self.fn(*self.args)
                    if not inspect.isgenerator(out):
                        self._emit(self.signals.result, out)
                        return self._finish()
                    self._steps = out
                    return False
                step = next(self._steps, StopIteration)
            if step is StopIteration:
                if not self.cancelled:
                    self._emit(self.signals.result, self._value)
                return self._finish()
            if not isinstance(step, str):
                self._value = step
            self._emit(self.signals.progress, step)
            return False
        except Exception as exc:  # shown to the user; the window carries on
            if not self.cancelled:
                log.exception("job %s failed", self.kind)
                self._emit(self.signals.error, f"{type(exc).__name__}: {exc}")
            return self._finish()

    def _finish(self) -> bool:
        self._emit(self.signals.finished)
        return True


class Runner(QObject):
    """Keeps at most one live job per kind: submitting cancels the previous one of that
    kind, and signals from a stale job are never delivered."""

    busy_changed = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.current: dict[str, Job] = {}
        self._turns: deque[Job] = deque()  # jobs with steps left, in the order they run
        self._alive: set[Job] = set()  # submitted and not over (the one stepping included)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def submit(self, kind: str, fn: Callable, *args, on_result=None, on_progress=None, on_error=None) -> Job | None:
        if self._closed:
            return None
        self.cancel(kind)
        job = Job(kind, fn, *args)
        self.current[kind] = job

        def live(callback):
            def call(value):
                if self.current.get(kind) is job and not job.cancelled and callback is not None:
                    callback(value)
            return call

        job.signals.result.connect(live(on_result))
        job.signals.progress.connect(live(on_progress))
        job.signals.error.connect(live(on_error))
        job.signals.finished.connect(lambda: self._finished(job))
        with self._cond:
            self._turns.append(job)
            self._alive.add(job)
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="workbench-jobs", daemon=True)
            self._thread.start()
        self.busy_changed.emit()
        return job

    def _work(self) -> None:  # the worker thread
        from ..core.process import flush_denormals

        flush_denormals()
        while True:
            with self._cond:
                while not self._turns and not self._closed:
                    self._cond.wait()
                if not self._turns:
                    return
                job = next((j for j in self._turns if j.kind in FIRST), self._turns[0])
                self._turns.remove(job)
            over = job.step()
            with self._cond:
                if over:
                    self._alive.discard(job)
                else:
                    self._turns.append(job)

    def _finished(self, job: Job) -> None:
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

    def running(self) -> bool:
        """The worker thread is alive (it ends once shut down and every job has stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def shutdown(self, timeout_ms: int = 30000) -> bool:
        """Cancel everything and wait for the worker (each job stops at its next step)."""
        with self._cond:
            self._closed = True
            jobs = list(self._alive)
            for job in jobs:
                job.cancel()
            self._cond.notify()
        self.current.clear()
        for job in jobs:  # no callback may reach a closing window
            s = job.signals
            for signal in (s.progress, s.result, s.error, s.finished):
                try:
                    signal.disconnect()
                except (RuntimeError, TypeError):
                    pass
        if self._thread is not None:
            self._thread.join(timeout_ms / 1000)
        return not self.running()
