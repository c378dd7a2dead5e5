"""FX symbolic tracing patches ``torch.nn.Module.__call__`` for the whole process while
it traces, so a model running in another thread at that moment breaks. Inference holds
the shared side of this lock, tracing the exclusive side."""

from __future__ import annotations

import contextlib
import threading


class _SharedExclusiveLock:
    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


TRACE_LOCK = _SharedExclusiveLock()
running = TRACE_LOCK.shared
tracing = TRACE_LOCK.exclusive
