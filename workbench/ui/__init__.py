"""The Qt layer: shows the core and turns gestures into core calls."""

from __future__ import annotations


def build_window(model: str | None = None, source: str | None = None):
    """The main window for a model name or file and a source path (None: the defaults).

    Opens no dialog and does not show the window; loading starts in the background."""
    from .window import MainWindow

    return MainWindow(model=model, source=source)


__all__ = ["build_window"]
