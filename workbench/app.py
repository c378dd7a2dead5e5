"""Start the window: ``python main.py`` or the ``workbench`` script."""

from __future__ import annotations

import sys


def run(model: str | None = None, source: str | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from .ui import build_window

    app = QApplication.instance() or QApplication(sys.argv)
    app.setApplicationName("Workbench")
    window = build_window(model=model, source=source)
    window.show()
    return app.exec()


def main() -> int:
    from .cli import main as cli_main

    return cli_main(sys.argv[1:])
