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
    window = build_window(model=model, source=source)
    window.show()
    return app.exec()
