"""Start the window: ``python main.py``, ``make run`` or the ``workbench`` launcher."""

from __future__ import annotations

import sys


def run(model: str | None = None, source: str | None = None) -> int:
    """Open the window. It paints before torch is imported: the model loads in its first job."""
    from PySide6.QtWidgets import QApplication

    from .core.process import fix_allocator
    from .ui import build_window
    from .ui.icon import app_icon

    fix_allocator()  # before Qt's threads and the job thread start: one malloc arena for all
    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Workbench")
    app.setOrganizationName("Workbench")
    app.setDesktopFileName("workbench")  # the launcher that `make install-desktop` writes
    app.setWindowIcon(app_icon())
    _close_on_signals(app)
    window = build_window(model=model, source=source)
    window.show()
    return app.exec()


def _close_on_signals(app) -> None:
    """SIGTERM (``kill``, a desktop session ending) and SIGINT (Ctrl+C in the terminal that ran
    ``make run``) close the window as its close button does: the session is saved and the work
    folder removed. Python runs a signal's handler only between bytecodes; Qt's event loop is C++,
    so the signal also wakes a socket that Qt watches."""
    import signal
    import socket

    from PySide6.QtCore import QSocketNotifier

    read, write = socket.socketpair()
    read.setblocking(False)
    write.setblocking(False)
    signal.set_wakeup_fd(write.fileno())
    notifier = QSocketNotifier(read.fileno(), QSocketNotifier.Type.Read, app)
    notifier.activated.connect(lambda *_: _drain(read))  # the handler runs as this slot returns
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: app.closeAllWindows())
    app._signal_wakeup = (read, write, notifier)  # kept alive as long as the app


def _drain(sock) -> None:
    try:
        sock.recv(64)
    except OSError:
        pass
