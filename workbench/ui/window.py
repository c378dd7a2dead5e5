"""The main window: lays out the panes, controls and plots, and wires them to the Controller."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pyqtgraph.util.garbage_collector import GarbageCollector
from PySide6.QtCore import QEvent, Qt, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.config import DEFAULT_MODEL, OptimizationConfig
from ..core.stats import latency_ratio
from .config_panel import ConfigPanel
from .controller import Controller
from .demo import ShowControls
from .differences import DifferencesView
from .explore import Explorer, last_session_path
from .icon import app_icon
from .layers import LayersView
from .live_view import LiveDisplay
from .menus import build_menus, open_folder
from .panes import side_by_side
from .plots import Plots, TradeoffPoint, follow_palette
from .settings import SIZE, SPLIT, WindowMemory

MODEL_SUFFIXES = {".pt", ".pth", ".ts", ".ckpt", ".bin"}
OPEN_MODEL = "Open model file…"
SOURCES = [("Sample photos", None), ("Open image folder…", "dialog:folder"), ("Open video…", "dialog:video"),
           ("Open image…", "dialog:image"), ("Camera 0", "camera:0"), ("Camera 1", "camera:1")]
CAMERA_SIZES = [("default size", ""), ("640×480", "640x480"), ("1280×720", "1280x720"), ("1920×1080", "1920x1080")]


_GC: GarbageCollector | None = None
log = logging.getLogger(__name__)


def collect_in_gui_thread() -> None:
    """Python's collector runs in whichever thread allocates: in a worker it can free a Qt
    object there and deadlock against the GUI thread (seen: a worker's deepcopy collected a
    closed window's QMenu). Collect on a GUI-thread timer instead (pyqtgraph's recipe)."""
    global _GC
    if _GC is None:
        _GC = GarbageCollector(interval=0.5)


class MainWindow(QMainWindow):
    shown = Signal(object)  # OptimizationConfig whose result the optimized pane now shows

    def __init__(self, model: str | None = None, source: str | None = None):
        from ..core.logs import current_log

        super().__init__()
        collect_in_gui_thread()
        self.setWindowTitle("Workbench: pruning and quantization, side by side")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.log_path = current_log()
        self.memory = WindowMemory(self)
        model, source = self.memory.start(model, source)
        self.controller = c = Controller(parent=self)
        self.plots = Plots(self)
        self._build(model or DEFAULT_MODEL)
        self.live_display = LiveDisplay(c, self.original_pane, self.optimized_pane, self.frame_label,
                                        self._show_status, self.plots, self)
        self._play = QTimer(self, interval=1200)
        self._play.timeout.connect(lambda: c.show_frame(c.index + 1))
        self._rss = QTimer(self, interval=1000)
        self._rss.timeout.connect(self._on_rss_tick)
        self._rss.start()
        self._wire()
        self.explorer = Explorer(self)
        self.actions_by_name = build_menus(self)
        self.memory.restore(same_model=(model or DEFAULT_MODEL) == self.memory.settings.value("model", DEFAULT_MODEL))
        self.follow_palette()
        self.original_pane.top1.setText("loading model…")
        self.panes_box.setFocus()  # the arrow keys and Space go to the images, not to a picker
        # let the window paint before torch loads (in the first job, which competes for the GIL)
        QTimer.singleShot(150, lambda: c.load(model, source) if c.model_spec is None else None)

    # layout ----------------------------------------------------------------------
    def _build(self, model: str) -> None:
        central = QWidget()
        outer = QVBoxLayout(central)
        controls = QHBoxLayout()
        self.model_picker = QComboBox(objectName="modelPicker", toolTip="The original model; the optimized pane runs "
                                      "a pruned or quantized copy of it")
        self.model_picker.setAccessibleName("Model")
        self.model_picker.addItems([model, OPEN_MODEL])
        self.source_picker = QComboBox(objectName="sourcePicker", toolTip="What both models see: a labelled folder "
                                       "gives top-1 accuracy, a video or camera runs live")
        self.source_picker.setAccessibleName("Source")
        for text, data in SOURCES:
            self.source_picker.addItem(text, data)
        self.camera_size = QComboBox(objectName="cameraSize", toolTip="Resolution asked of the camera: larger "
                                     "frames look better and cost more time to decode and show")
        self.camera_size.setAccessibleName("Camera resolution")
        for text, data in CAMERA_SIZES:
            self.camera_size.addItem(text, data)
        self.pickers = QWidget()
        pick = QFormLayout(self.pickers)
        pick.setContentsMargins(0, 0, 0, 0)
        pick.addRow("Model", self.model_picker)
        pick.addRow("Source", self.source_picker)
        pick.addRow("Camera", self.camera_size)
        self.copy_button = QPushButton("Copy as command", objectName="copyCommandButton")
        self.copy_button.setToolTip("Put the python -m workbench compare command that gives these numbers "
                                    "on the clipboard")
        pick.addRow(self.copy_button)
        controls.addWidget(self.pickers)
        self.panel = ConfigPanel()
        controls.addWidget(self.panel, 2)
        outer.addLayout(controls)

        self.panes_box = QWidget(objectName="panesBox", focusPolicy=Qt.FocusPolicy.StrongFocus)
        self.original_pane, self.optimized_pane = side_by_side(self.panes_box)
        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ prev", objectName="previousButton", toolTip="Previous image (Left)")
        self.play_button = QPushButton("▶ play", objectName="playButton", checkable=True,
                                       toolTip="Step through the images, or pause the video (Space)")
        self.next_button = QPushButton("next ▶", objectName="nextButton", toolTip="Next image (Right)")
        self.loop_check = QCheckBox("loop video", objectName="loopCheck", checked=True,
                                    toolTip="Start a video again at its end")
        self.frame_label = QLabel("", objectName="frameLabel")  # in the status bar: a long name must not widen the panes
        for w in (self.prev_button, self.play_button, self.next_button, self.loop_check):
            nav.addWidget(w)
        nav.addStretch(1)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.panes_box, 1)
        ll.addLayout(nav)

        plots = QWidget()
        grid = QGridLayout(plots)
        grid.setContentsMargins(0, 0, 0, 0)
        memory = QTabWidget()
        memory.addTab(self.plots.memory, "file size")
        memory.addTab(self.plots.rss, "process memory")
        self.memory_tabs = memory
        grid.addWidget(self.plots.latency, 0, 0)
        grid.addWidget(memory, 0, 1)
        grid.addWidget(self.plots.accuracy, 1, 0)
        grid.addWidget(self.plots.tradeoff, 1, 1)
        self.layers = LayersView()
        self.right_tabs = QTabWidget(objectName="rightTabs")
        self.right_tabs.addTab(plots, "Plots")
        self.right_tabs.addTab(self.layers, "Layers")
        self.differences = DifferencesView()
        self.right_tabs.addTab(self.differences, "Where they differ")
        self.splitter = split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.right_tabs)
        outer.addWidget(split, 1)
        self.setCentralWidget(central)

        self.status_text = QLabel("starting…", objectName="statusText")
        self.progress = QProgressBar(maximumWidth=200, visible=False)
        self.cancel_button = QPushButton("Cancel", visible=False, objectName="cancelButton",
                                         toolTip="Stop the running job; what is shown stays")
        self.log_link = QLabel(visible=False, objectName="logLink", toolTip="Open the log file")
        self.log_link.linkActivated.connect(lambda _: self.open_log())
        self.statusBar().addWidget(self.status_text, 1)
        self.statusBar().addWidget(self.log_link)
        self.reopen_button = QPushButton("Reopen camera", visible=False, objectName="reopenButton",
                                         toolTip="Open the camera again (after it was unplugged or busy)")
        self.statusBar().addPermanentWidget(self.frame_label)
        self.statusBar().addPermanentWidget(self.reopen_button)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.cancel_button)
        self.resize(*SIZE)
        split.setSizes(SPLIT)
        self.show_controls = ShowControls(
            self, self.panes_box, [self.menuBar(), self.pickers, self.copy_button, self.plots.latency, self.memory_tabs,
                                   self.plots.accuracy, self.right_tabs.tabBar(), self.prev_button, self.next_button],
            self._show_status, lambda s: [p.set_scale(s) for p in (self.original_pane, self.optimized_pane)])
        nav.addWidget(self.show_controls)

    # wiring -------------------------------------------------------------------------
    def _wire(self) -> None:
        c = self.controller
        self.model_picker.activated.connect(self._on_model_picked)
        self.source_picker.activated.connect(self._on_source_picked)
        self.copy_button.clicked.connect(lambda: QGuiApplication.clipboard().setText(c.command()))
        self.panel.changed.connect(c.request)
        self.panel.invalid.connect(lambda why: self._show_status(why, True))
        self.prev_button.clicked.connect(lambda: c.show_frame(c.index - 1))
        self.next_button.clicked.connect(lambda: c.show_frame(c.index + 1))
        self.play_button.toggled.connect(self._on_play_toggled)
        self.loop_check.toggled.connect(lambda on: setattr(c.live.grabber, "loop", on) if c.live else None)
        self.layers.overrides_changed.connect(
            lambda: self.panel.set_layer_overrides(self.layers.excluded, self.layers.layer_bits))
        self.layers.measure_requested.connect(c.measure_sensitivity)
        self.layers.recover_requested.connect(c.recover)
        self.plots.point_clicked.connect(self.set_config)
        self.plots.point_shift_clicked.connect(c.set_reference)
        c.reference_changed.connect(lambda opt: self.original_pane.setTitle(
            "Original" if opt is None else f"Left: {opt.config.label()}  (shift+click the original to go back)"))
        self.cancel_button.clicked.connect(c.cancel)
        self.camera_size.activated.connect(lambda _: self._on_source_picked(self.source_picker.currentIndex()))
        self.reopen_button.clicked.connect(lambda: (self.reopen_button.hide(), c.reopen()))
        c.status.connect(self._show_status)
        c.progress.connect(self._on_progress)
        c.busy_changed.connect(lambda busy: (self.progress.setVisible(busy and not self.progress.isHidden()),
                                             self.cancel_button.setVisible(busy)))
        c.loaded.connect(self._on_loaded)
        c.frame_changed.connect(self._on_frame_changed)
        c.predicted.connect(self._on_predicted)
        c.original_measured.connect(self._on_original_measured)
        c.model_ready.connect(self._on_model_ready)
        c.measured.connect(self._on_measured)
        c.evaluation_started.connect(lambda labelled: [self.plots.reset_accuracy(k, labelled)
                                                       for k in ("original", "optimized")])
        c.evaluated.connect(self._on_evaluated)
        c.differences_ready.connect(lambda rows, n: self.differences.show_rows(
            rows, n, c.ws.loaded.classes, c.report()["scored"]["first"]))  # the report comes first
        self.differences.frame_clicked.connect(c.show_frame)
        c.sensitivity_ready.connect(lambda r: self.layers.show_sensitivity(r["layers"], r["probe"]))
        c.live_changed.connect(self._on_live_changed)
        c.shown.connect(self.shown)

    # what tests and other front ends read -----------------------------------------------
    ws = property(lambda self: self.controller.ws)
    current = property(lambda self: self.controller.current)
    measured = property(lambda self: self.controller.measured_result)
    shown_config = property(lambda self: self.controller.shown_config)
    runner = property(lambda self: self.controller.runner)
    live = property(lambda self: self.controller.live)

    def report(self) -> dict | None:
        """The ``compare --json`` report of the current source and configuration (None until evaluated)."""
        return self.controller.report()

    def set_config(self, config: OptimizationConfig) -> None:
        """Move the controls to ``config`` (as a click on the trade-off plot does)."""
        self.layers.excluded, self.layers.layer_bits = set(config.exclude), dict(config.layer_bits)
        self.layers._redraw()
        self.panel.set_config(config)

    def open_path(self, path: str) -> None:
        """A dropped file or folder: a model file is loaded as the model, anything else as the source."""
        p = Path(path)
        if p.suffix.lower() in MODEL_SUFFIXES:
            self.controller.open_model(str(p))
        else:
            self.controller.open_source(str(p))

    # handlers ----------------------------------------------------------------------------
    def _on_model_picked(self, index: int) -> None:
        text, c = self.model_picker.itemText(index), self.controller
        if text == OPEN_MODEL:
            self.model_picker.setCurrentText(c.model_spec)
            self.choose_model()
        elif text != c.model_spec:
            c.open_model(text)

    def choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open model file", "",
                                              "PyTorch models (*.pt *.pth *.ts *.ckpt *.bin);;All files (*)")
        if path:
            self.controller.open_model(path)

    def choose_source(self, kind: str) -> None:
        """Ask for a folder, video or image and open it."""
        if self.controller.ws is not None:
            self._name_source()  # the picker keeps naming what is open until another opens
        if kind == "folder":
            path = QFileDialog.getExistingDirectory(self, "Open image folder")
        else:
            from ..core.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES

            pattern = " ".join(f"*{s}" for s in sorted(VIDEO_SUFFIXES if kind == "video" else IMAGE_SUFFIXES))
            path, _ = QFileDialog.getOpenFileName(self, f"Open {kind}", "", f"{kind.title()} ({pattern})")
        if path:
            self.controller.open_source(path)

    def _on_source_picked(self, index: int) -> None:
        data = self.source_picker.itemData(index)
        if isinstance(data, str) and data.startswith("dialog:"):
            self.choose_source(data.split(":")[1])
        else:
            if isinstance(data, str) and data.startswith("camera:") and self.camera_size.currentData():
                data = f"{data}@{self.camera_size.currentData()}"
            if data != self.controller.source_spec:
                self.controller.open_source(data)

    def _name_source(self) -> None:
        """The source picker names what is open (a folder, video or image by its name)."""
        spec, p = self.controller.source_spec, self.source_picker
        index = p.findData(spec.split("@")[0] if str(spec).startswith("camera:") else spec)
        if index < 0:
            name = Path(str(spec)).name or str(spec)
            p.insertItem(0, f"{name}", spec)
            p.setItemData(0, str(spec), Qt.ItemDataRole.ToolTipRole)
            index = 0
        p.setCurrentIndex(index)

    def _on_loaded(self, ws) -> None:
        import torch

        from ..core.models import available_models

        if torch.cuda.is_available():
            self.panel.add_gpu(torch.cuda.get_device_name())
        self.model_picker.blockSignals(True)
        self.model_picker.clear()
        self.model_picker.addItems(available_models() + [OPEN_MODEL])
        if self.model_picker.findText(self.controller.model_spec) < 0:
            self.model_picker.insertItem(0, self.controller.model_spec)
        self.model_picker.setCurrentText(self.controller.model_spec)
        self.model_picker.blockSignals(False)
        self._name_source()
        self.plots.clear_points()
        self.plots.set_sizes(None, None)
        self.setWindowTitle(f"Workbench: {ws.loaded.display_name} on {ws.source.name}")
        self._play.stop()
        if self.memory.notice:  # after the controller's own "loaded" line
            notice, self.memory.notice = self.memory.notice, ""
            QTimer.singleShot(0, lambda: self.show_status(notice, True))

    def _on_frame_changed(self, index: int) -> None:
        ws = self.controller.ws
        frame = ws.frames[index]
        self.original_pane.set_image(frame.rgb)
        self.optimized_pane.set_image(frame.rgb)
        count = "live" if ws.is_stream else f"{index + 1}/{len(ws.frames)}"
        self.frame_label.setText(f"{count}  {Path(frame.origin).name}")

    def _on_predicted(self, index: int, ref, new) -> None:
        ws = self.controller.ws
        classes, truth = ws.loaded.classes, ws.frames[index].label
        self.original_pane.show_prediction(ref, classes, truth)
        if new is not None:
            self.optimized_pane.show_prediction(new, classes, truth, differs=new.top1 != ref.top1)

    def _on_original_measured(self, figures: dict) -> None:
        self.plots.add_point(TradeoffPoint(OptimizationConfig(), figures["latency_ms"]["median"],
                                           figures["size_bytes"]))
        self._update_figures(new_latency=self.controller.measured_result is not None)

    def _on_model_ready(self, opt) -> None:
        distilled = " + distilled" if opt.recovered_steps is not None else ""  # the steps: in the copied command
        self.optimized_pane.setTitle(f"Optimized: {opt.config.label()}{distilled}")
        self.optimized_pane.show_what_ran(opt.description, opt.kernels)

    def _on_measured(self, measured) -> None:
        opt = measured.optimized
        self._on_model_ready(opt)
        self.optimized_pane.show_what_ran(opt.description, opt.kernels, measured.latency_ms, measured.size_bytes,
                                          latency_ratio(measured.latency_ms, measured.original_latency["median"]))
        self.plots.add_point(TradeoffPoint(opt.config, measured.latency_ms, measured.size_bytes,
                                           original_ms=measured.original_latency["median"]))
        self.plots.set_current(opt.config)
        self._update_figures(new_latency=True)
        if opt.sensitivity:
            self.layers.show_sensitivity(opt.sensitivity["layers"], opt.sensitivity["probe"])
        import torch  # loaded by now (the first job imported it)

        layers = (torch.nn.Conv2d, torch.nn.Linear)
        self.layers.show_allocation(opt.allocation, [n for n, m in opt.float_model.named_modules()
                                                     if isinstance(m, layers)])

    def _update_figures(self, new_latency: bool) -> None:
        c = self.controller
        original, measured = c.original_figures, c.measured_result
        self.plots.set_sizes(original["size_bytes"] if original else None,
                             measured.size_bytes if measured else None)
        if original:  # the same figures as the optimized pane's, for the model as loaded
            latency = measured.original_latency if measured else original["latency_ms"]
            self.original_pane.show_what_ran("the model as loaded", "fp32", latency["median"], original["size_bytes"])
        if new_latency and original and measured:  # both timed back to back, in one job
            self.plots.add_latency(measured.original_latency["median"], measured.latency_ms)
            self.plots.add_point(TradeoffPoint(OptimizationConfig(), measured.original_latency["median"],
                                               original["size_bytes"]))

    def _on_evaluated(self, p) -> None:
        if p.labelled:
            self.plots.add_accuracy("original", p.done, p.original_hits, p.labelled)
            self.plots.add_accuracy("optimized", p.done, p.optimized_hits, p.labelled)
        else:
            self.plots.add_accuracy("optimized", p.done, p.agree, p.done)
        if self.controller.measured_result:
            self.plots.update_point(self.controller.measured_result.optimized.config,
                                    p.top1("optimized") if p.labelled else p.agreement)
        self.plots.update_point(OptimizationConfig(), p.top1("original") if p.labelled else 1.0)
        if p.done % 5 == 0 or p.done == p.total:
            self._on_progress(f"evaluating: {p.done}/{p.total} images")

    def _on_live_changed(self, on: bool) -> None:
        self.play_button.blockSignals(True)
        self.play_button.setChecked(on)
        self.play_button.setText("⏸ pause" if on else "▶ play")
        self.play_button.blockSignals(False)

    def _on_play_toggled(self, on: bool) -> None:
        self.play_button.setText("⏸ pause" if on else "▶ play")
        if self.controller.live is not None:
            self.controller.live.pause(not on)
        elif on:
            self._play.start()
        else:
            self._play.stop()

    def _on_rss_tick(self) -> None:
        import psutil

        from ..core.locks import timing

        if timing():
            return
        me = psutil.Process()
        rss = me.memory_info().rss
        for child in me.children():  # a preparation running in a child process (core.isolate)
            try:
                rss += child.memory_info().rss
            except psutil.Error:  # it ended meanwhile
                pass
        self.plots.add_rss(rss / 1e6)

    def _on_progress(self, step: str) -> None:
        notice = self.controller.notice  # a source's problem stays in view while jobs report progress
        self._show_status(f"{step}  ·  {notice}" if notice else step, bool(notice))
        # a step without a count shows no bar: Qt's busy animation repaints without end (under
        # Xvfb a 200-pixel one took 40 % of a core), and the latencies timed meanwhile came out
        # 1.1-1.2x the CLI's on 2 cores; the status text and the Cancel button say it is busy
        m = re.search(r"(\d+)/(\d+)", step)
        self.progress.setVisible(bool(m))
        if m:
            self.progress.setRange(0, int(m.group(2)))
            self.progress.setValue(int(m.group(1)))

    def show_status(self, text: str, error: bool = False) -> None:
        camera = str(self.controller.source_spec).startswith("camera:")
        self.reopen_button.setVisible(camera and (error or self.reopen_button.isVisible()))
        self.status_text.setText(text)
        self.status_text.setStyleSheet("color: #c0392b;" if error else "")
        if error:
            log.warning("%s", text)
        self.log_link.setText("<a href='log'>log</a>")
        self.log_link.setVisible(error and self.log_path is not None)

    _show_status = show_status

    def open_log(self) -> None:
        """The log file in the system's viewer (its folder when no viewer opens it)."""
        if self.log_path is not None and not open_folder(self.log_path):
            open_folder(self.log_path.parent)

    def follow_palette(self) -> None:
        follow_palette(self.layers.widgets(), self.palette())
        self.plots.set_palette(self.palette())

    def changeEvent(self, event):  # noqa: N802 - the system switched between light and dark
        if event.type() == QEvent.Type.PaletteChange:
            self.follow_palette()
        super().changeEvent(event)

    # drag and drop, closing -----------------------------------------------------------------
    def dragEnterEvent(self, event):  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802
        urls = event.mimeData().urls()
        if urls:
            self.open_path(urls[0].toLocalFile())

    def closeEvent(self, event):  # noqa: N802
        self.memory.save()
        if self.controller.tried:
            self.explorer.save_session(str(last_session_path()))
        self.show_controls.stop_recording()
        self._play.stop()
        self._rss.stop()
        self.plots.timer.stop()
        self.live_display.timer.stop()
        self.controller.shutdown()
        super().closeEvent(event)
