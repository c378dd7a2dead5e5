"""One lock keeps the app's own work out of two places where it must not be:

- FX symbolic tracing patches ``torch.nn.Module.__call__`` for the whole process while it
  traces, so a model running in another thread at that moment breaks;
- a latency measurement must not share the CPU with the app's other jobs, or the window
  shows the app's load instead of the model's latency.

Inference and every step of a background job hold the shared side (:func:`running`);
tracing and timing hold the exclusive side (:func:`tracing`, :func:`quiet`). The shared
side is re-entrant per thread, and a thread that holds it may take the exclusive side:
it lets go of its shared holds while it waits, so two such threads cannot deadlock.
"""

from __future__ import annotations

import contextlib
import threading


class _SharedExclusiveLock:
    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer: int | None = None  # thread id holding the exclusive side
        self._depth = 0  # re-entrant exclusive holds of that thread
        self._writers_waiting = 0
        self._local = threading.local()

    def _mine(self) -> int:
        return getattr(self._local, "shared", 0)

    @contextlib.contextmanager
    def shared(self):
        me = threading.get_ident()
        with self._cond:
            if self._mine() == 0 and self._writer != me:
                while self._writer is not None or self._writers_waiting:
                    self._cond.wait()
                self._readers += 1
            self._local.shared = self._mine() + 1
        try:
            yield
        finally:
            with self._cond:
                self._local.shared = self._mine() - 1
                if self._mine() == 0 and self._writer != me:
                    self._readers -= 1
                self._cond.notify_all()

    def exclusive_held(self) -> bool:
        return self._writer is not None

    @contextlib.contextmanager
    def exclusive(self):
        me = threading.get_ident()
        with self._cond:
            if self._writer == me:
                self._depth += 1
            else:
                held = self._mine()
                if held:  # let go while waiting, or two upgrading threads wait on each other
                    self._readers -= 1
                    self._cond.notify_all()
                self._writers_waiting += 1
                while self._writer is not None or self._readers:
                    self._cond.wait()
                self._writers_waiting -= 1
                self._writer, self._depth, self._held = me, 1, held
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._writer = None
                    if self._held:
                        self._readers += 1  # back to the shared hold it had
                self._cond.notify_all()


APP_LOCK = _SharedExclusiveLock()
running = APP_LOCK.shared
tracing = APP_LOCK.exclusive
quiet = APP_LOCK.exclusive


def timing() -> bool:
    """A latency is being timed (or a model traced) now: the GUI's periodic chores (memory
    samples, plot redraws) skip their turn, so the GUI thread takes no core from the timing."""
    return APP_LOCK.exclusive_held()
