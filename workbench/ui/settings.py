"""What the window remembers between runs (QSettings): the model, the source, the controls,
the window's geometry and splitter, and the tabs. *Reset to defaults* forgets all of it.

The file: ``$WORKBENCH_SETTINGS_DIR/workbench.ini`` when that is set (tests), else Qt's user
location for an INI file (``$XDG_CONFIG_HOME/Workbench/workbench.ini`` on Linux)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from PySide6.QtCore import QSettings

from ..core.config import DEFAULT_MODEL, ConfigError, OptimizationConfig

VERSION = 1
SPLIT = [560, 720]  # panes, plots
SIZE = (1280, 720)


def open_settings() -> QSettings:
    folder = os.environ.get("WORKBENCH_SETTINGS_DIR")
    if folder:
        return QSettings(str(Path(folder) / "workbench.ini"), QSettings.Format.IniFormat)
    return QSettings(QSettings.Format.IniFormat, QSettings.Scope.UserScope, "Workbench", "workbench")


def _missing(spec: str | None) -> bool:
    """A remembered file or folder that is gone (model names and cameras are not paths)."""
    if not spec or spec.startswith("camera:"):
        return False
    looks_like_path = os.sep in spec or "/" in spec or Path(spec).suffix != ""
    return looks_like_path and not Path(spec).exists()


class WindowMemory:
    """Saves and restores one MainWindow's state."""

    def __init__(self, window):
        self.window = window
        self.settings = open_settings()
        self.notice = ""  # what could not be restored, shown once the model has loaded

    def start(self, model: str | None, source: str | None) -> tuple[str | None, str | None]:
        """The model and source to open: those given, else the remembered ones that still exist."""
        s = self.settings
        if s.value("version", 0, int) != VERSION:
            return model, source
        gone = []
        if model is None:
            model = s.value("model", None) or None
            if _missing(model):
                gone.append(model)
                model = None
        if source is None:
            source = s.value("source", None) or None
            if _missing(source):
                gone.append(source)
                source = None
        if gone:
            self.notice = "not found, opened the default instead: " + ", ".join(gone)
        return model, source

    def restore(self, same_model: bool) -> None:
        """Controls, geometry, splitter and tabs as they were (layer choices only for the same model)."""
        s, w = self.settings, self.window
        if s.value("version", 0, int) != VERSION:
            return
        geometry = s.value("geometry")
        if geometry is not None:
            w.restoreGeometry(geometry)
        sizes = s.value("splitter")
        if isinstance(sizes, list) and len(sizes) == 2:
            w.splitter.setSizes([int(x) for x in sizes])
        w.right_tabs.setCurrentIndex(s.value("tabs/right", 0, int))
        w.memory_tabs.setCurrentIndex(s.value("tabs/memory", 0, int))
        w.camera_size.setCurrentIndex(max(0, w.camera_size.findData(s.value("camera_size", ""))))
        w.loop_check.setChecked(s.value("loop", True, bool))
        try:
            config = OptimizationConfig.from_dict(json.loads(s.value("config", "{}")))
        except (ConfigError, ValueError, TypeError) as exc:
            self.notice = f"remembered settings not used: {exc}"
            return
        if not same_model:
            config = config.with_(exclude=(), layer_bits=())
        w.set_config(config)

    def save(self) -> None:
        s, w, c = self.settings, self.window, self.window.controller
        s.setValue("version", VERSION)
        if isinstance(c.model_spec, str):
            s.setValue("model", c.model_spec)
        s.setValue("source", "" if c.source_spec is None else str(c.source_spec))
        s.setValue("config", json.dumps(w.panel.config().to_dict()))
        if not w.show_controls.demo.active:  # keep the normal window's geometry, not full screen
            s.setValue("geometry", w.saveGeometry())
        s.setValue("splitter", w.splitter.sizes())
        s.setValue("tabs/right", w.right_tabs.currentIndex())
        s.setValue("tabs/memory", w.memory_tabs.currentIndex())
        s.setValue("camera_size", w.camera_size.currentData())
        s.setValue("loop", w.loop_check.isChecked())
        s.sync()

    def reset(self) -> None:
        """Forget everything and put the window back as a first start shows it."""
        w, c = self.window, self.window.controller
        self.settings.clear()
        self.settings.sync()
        w.show_controls.set_demo(False)
        w.showNormal()
        w.resize(*SIZE)
        w.splitter.setSizes(SPLIT)
        w.right_tabs.setCurrentIndex(0)
        w.memory_tabs.setCurrentIndex(0)
        w.camera_size.setCurrentIndex(0)
        w.loop_check.setChecked(True)
        w.set_config(OptimizationConfig())
        if c.model_spec != DEFAULT_MODEL or c.source_spec is not None:
            c.load(DEFAULT_MODEL, None)
