"""The app's icon."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QIcon

ICONS = Path(__file__).resolve().parents[2] / "resources" / "icons"


def app_icon() -> QIcon:
    """The icon at every size rendered from resources/icons/workbench.svg."""
    icon = QIcon()
    for png in sorted(ICONS.glob("hicolor/*/apps/workbench.png")):
        icon.addFile(str(png))
    return icon
