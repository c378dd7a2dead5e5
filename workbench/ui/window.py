"""The main window: original and optimized side by side, two sliders, live plots."""

from __future__ import annotations

import re
from pathlib import Path

import psutil
import torch
from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSlider,
    QSplitter,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.config import BIT_STOPS, OptimizationConfig
from ..core.live import LiveSession
from ..core.measure import write_model_file
from ..core.models import DEFAULT_MODEL, LoadedModel, available_models, load_model
from ..core.optimize import OptimizedModel
from ..core.session import (
    EvalProgress,
    Measured,
    Workspace,
    evaluate_steps,
    measure_model,
    optimize_and_measure,
    predict_one,
    recover_job,
    sensitivity_job,
)
from ..core.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, list_cameras, open_source
from .layers import LayersView
from .panes import ModelPane, to_pixmap
from .plots import Plots, TradeoffPoint
from .runner import Runner

MODEL_SUFFIXES = {".pt", ".pth", ".ts", ".ckpt", ".bin"}
OPEN_MODEL = "Open model file…"
# global first: per-layer magnitude pruning strips small layers (the stem, depthwise 3x3) bare;
# measured on the shared photos at 50 %, global + BatchNorm re-estimation keeps the most top-1
PRUNE_METHODS = [("unstructured, global magnitude", "unstructured-global"),
                 ("unstructured, reconstructed (SparseGPT)", "unstructured-obs"),
                 ("unstructured, sensitivity allocation", "unstructured-sensitivity"),
                 ("unstructured, per layer", "unstructured"), ("structured channels", "structured")]
SCHEMES = [("weights only", "weights"), ("weights + activations", "weights-activations")]
RUNTIMES = [("runtime: torch", "torch"), ("runtime: ONNX Runtime (as deployed)", "onnxruntime")]
FOLDER_LIMIT = 500
RECOVER_SECONDS = 60.0
LONG_JOBS = ("load", "optimize", "evaluate", "read", "sensitivity", "recover")


def load_workspace(model_spec: str | LoadedModel, source_spec, limit: int = FOLDER_LIMIT):
    """Job: load the model and the source and read the first frames; yields progress, then a Workspace."""
    if isinstance(model_spec, LoadedModel):
        loaded = model_spec
    else:
        yield f"loading {model_spec}"
        loaded = load_model(model_spec)
    yield "opening source"
    source = open_source(source_spec)
    ws = Workspace(loaded, source)
    if ws.is_stream:
        for _ in range(8):  # calibration frames; live mode takes over from here
            frame = source.read()
            if frame is None:
                break
            ws.add(frame)
        if not ws.frames:
            raise ValueError(f"{source.name} delivered no frame")
    else:
        # the first frame comes at once; the rest are read while the user looks at it
        yield from ws.read_frames(min(limit, 16))
    yield ws


class MainWindow(QMainWindow):
    shown = Signal(object)  # OptimizationConfig whose result the optimized pane now shows

    def __init__(self, model: str | None = None, source: str | None = None):
        super().__init__()
        self.setWindowTitle("Workbench: pruning and quantization, side by side")
        self.setAcceptDrops(True)
        self.runner = Runner(self)
        self.runner.busy_changed.connect(self._update_busy)
        self.plots = Plots(self)
        self.plots.point_clicked.connect(self._on_point_clicked)
        self.ws: Workspace | None = None
        self.measured: Measured | None = None
        self.current: OptimizedModel | None = None  # the optimized model the pane runs
        self.shown_config: OptimizationConfig | None = None
        self.original_figures: tuple | None = None
        self.index = 0
        self.live: LiveSession | None = None
        self.live_stats = {"displayed": 0, "last_seq": 0}
        self.model_spec = model or DEFAULT_MODEL
        self.source_spec = source
        self._build()
        self._debounce = QTimer(self, singleShot=True, interval=150)
        self._debounce.timeout.connect(self._apply_config)
        self._display = QTimer(self, timerType=Qt.TimerType.PreciseTimer)
        self._display.timeout.connect(self._on_display_tick)
        self._play = QTimer(self, interval=1200)
        self._play.timeout.connect(self._on_play_tick)
        self._rss = QTimer(self, interval=1000)
        self._rss.timeout.connect(lambda: self.plots.add_rss(psutil.Process().memory_info().rss / 1e6))
        self._rss.start()
        self._load(self.model_spec, self.source_spec)

    # layout ----------------------------------------------------------------
    def _build(self) -> None:
        central = QWidget()
        outer = QVBoxLayout(central)
        controls = QHBoxLayout()
        self.model_picker = QComboBox(objectName="modelPicker")
        self.model_picker.setAccessibleName("Model")
        self.model_picker.addItems(available_models())
        self.model_picker.addItem(OPEN_MODEL)
        self.model_picker.setCurrentText(self.model_spec)
        self.model_picker.activated.connect(self._on_model_picked)
        self.source_picker = QComboBox(objectName="sourcePicker")
        self.source_picker.setAccessibleName("Source")
        self._fill_sources()
        self.source_picker.activated.connect(self._on_source_picked)
        pick = QFormLayout()
        pick.addRow("Model", self.model_picker)
        pick.addRow("Source", self.source_picker)
        controls.addLayout(pick)

        prune = QGroupBox("Pruning")
        pl = QGridLayout(prune)
        self.sparsity_slider = QSlider(Qt.Orientation.Horizontal, objectName="sparsitySlider")
        self.sparsity_slider.setAccessibleName("Sparsity in percent")
        self.sparsity_slider.setRange(0, 95)
        self.sparsity_label = QLabel("0 %")
        self.prune_method = QComboBox(objectName="pruneMethodCombo")
        self.prune_method.setAccessibleName("Pruning method")
        for text, value in PRUNE_METHODS:
            self.prune_method.addItem(text, value)
        pl.addWidget(QLabel("sparsity"), 0, 0)
        pl.addWidget(self.sparsity_slider, 0, 1)
        pl.addWidget(self.sparsity_label, 0, 2)
        pl.addWidget(self.prune_method, 1, 0, 1, 3)
        quant = QGroupBox("Quantization")
        ql = QGridLayout(quant)
        self.bits_slider = QSlider(Qt.Orientation.Horizontal, objectName="bitsSlider")
        self.bits_slider.setAccessibleName("Bit width")
        self.bits_slider.setRange(0, len(BIT_STOPS) - 1)
        self.bits_slider.setValue(len(BIT_STOPS) - 1)
        self.bits_slider.setPageStep(1)
        self.bits_label = QLabel("32 bits (off)")
        self.quant_scheme = QComboBox(objectName="quantSchemeCombo")
        self.quant_scheme.setAccessibleName("Quantization scheme")
        for text, value in SCHEMES:
            self.quant_scheme.addItem(text, value)
        self.quant_scheme.setCurrentIndex(1)
        ql.addWidget(QLabel("bits"), 0, 0)
        ql.addWidget(self.bits_slider, 0, 1)
        ql.addWidget(self.bits_label, 0, 2)
        self.runtime = QComboBox(objectName="runtimeCombo")
        self.runtime.setAccessibleName("Runtime of the optimized model")
        for text, value in RUNTIMES:
            self.runtime.addItem(text, value)
        self.device = QComboBox(objectName="deviceCombo")
        self.device.setAccessibleName("Device of the optimized model")
        self.device.addItem("CPU", "cpu")
        if torch.cuda.is_available():  # float and 16-bit models can run on the GPU
            self.device.addItem(f"GPU: {torch.cuda.get_device_name()}", "cuda")
        self.device.setVisible(self.device.count() > 1)
        ql.addWidget(self.quant_scheme, 1, 0, 1, 2)
        ql.addWidget(self.runtime, 1, 2)
        ql.addWidget(self.device, 2, 0, 1, 3)
        for w in (prune, quant):
            w.setMinimumWidth(260)
        controls.addWidget(prune, 1)
        controls.addWidget(quant, 1)
        for s in (self.sparsity_slider, self.bits_slider):
            s.valueChanged.connect(self._on_control_changed)
        for c in (self.prune_method, self.quant_scheme, self.runtime, self.device):
            c.currentIndexChanged.connect(self._on_control_changed)
        outer.addLayout(controls)

        panes = QWidget()
        pl2 = QHBoxLayout(panes)
        pl2.setContentsMargins(0, 0, 0, 0)
        self.original_pane = ModelPane("Original", "original")
        self.optimized_pane = ModelPane("Optimized", "optimized")
        pl2.addWidget(self.original_pane)
        pl2.addWidget(self.optimized_pane)
        nav = QHBoxLayout()
        self.prev_button = QPushButton("◀ previous", objectName="previousButton")
        self.play_button = QPushButton("▶ play", objectName="playButton", checkable=True)
        self.next_button = QPushButton("next ▶", objectName="nextButton")
        self.frame_label = QLabel("")
        self.prev_button.clicked.connect(lambda: self.show_frame(self.index - 1))
        self.next_button.clicked.connect(lambda: self.show_frame(self.index + 1))
        self.play_button.toggled.connect(self._on_play_toggled)
        self.loop_check = QCheckBox("loop video", objectName="loopCheck", checked=True)
        self.loop_check.toggled.connect(lambda on: setattr(self.live.grabber, "loop", on) if self.live else None)
        for w in (self.prev_button, self.play_button, self.next_button, self.loop_check, self.frame_label):
            nav.addWidget(w)
        nav.addStretch(1)
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(panes, 1)
        ll.addLayout(nav)

        right = QWidget()
        grid = QGridLayout(right)
        grid.setContentsMargins(0, 0, 0, 0)
        memory = QTabWidget()
        memory.addTab(self.plots.memory, "file size")
        memory.addTab(self.plots.rss, "process memory")
        grid.addWidget(self.plots.latency, 0, 0)
        grid.addWidget(memory, 0, 1)
        grid.addWidget(self.plots.accuracy, 1, 0)
        grid.addWidget(self.plots.tradeoff, 1, 1)
        self.layers = LayersView()
        self.layers.overrides_changed.connect(self._on_control_changed)
        self.layers.measure_requested.connect(self._on_measure_sensitivity)
        self.layers.recover_requested.connect(self._on_recover)
        self.right_tabs = QTabWidget(objectName="rightTabs")
        self.right_tabs.addTab(right, "Plots")
        self.right_tabs.addTab(self.layers, "Layers")
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(self.right_tabs)
        split.setSizes([620, 660])
        outer.addWidget(split, 1)
        self.setCentralWidget(central)

        self.status_text = QLabel("starting…", objectName="statusText")
        self.progress = QProgressBar(maximumWidth=200, visible=False)
        self.cancel_button = QPushButton("Cancel", visible=False, objectName="cancelButton")
        self.cancel_button.clicked.connect(self._on_cancel)
        self.statusBar().addWidget(self.status_text, 1)
        self.statusBar().addPermanentWidget(self.progress)
        self.statusBar().addPermanentWidget(self.cancel_button)
        self.resize(1320, 820)

    def _fill_sources(self) -> None:
        p = self.source_picker
        p.clear()
        p.addItem("Sample photos", None)
        p.addItem("Open image folder…", "dialog:folder")
        p.addItem("Open video…", "dialog:video")
        p.addItem("Open image…", "dialog:image")
        cameras = list_cameras()
        for i in cameras:
            p.addItem(f"Camera {i}", f"camera:{i}")
        if not cameras:
            p.addItem("No camera found", "none")
            p.model().item(p.count() - 1).setEnabled(False)

    # the current configuration ----------------------------------------------
    @property
    def bits(self) -> int:
        return BIT_STOPS[self.bits_slider.value()]

    def config(self) -> OptimizationConfig:
        return OptimizationConfig(sparsity=self.sparsity_slider.value() / 100,
                                  prune_method=self.prune_method.currentData(),
                                  bits=self.bits, quant_scheme=self.quant_scheme.currentData(),
                                  runtime=self.runtime.currentData(), device=self.device.currentData(),
                                  exclude=tuple(sorted(self.layers.excluded)),
                                  layer_bits=tuple(sorted(self.layers.layer_bits.items())))

    def _on_control_changed(self, *_):
        self.sparsity_label.setText(f"{self.sparsity_slider.value()} %")
        bits = self.bits
        self.bits_label.setText("32 bits (off)" if bits == 32 else f"{bits} bits")
        self._debounce.start()

    def set_config(self, config: OptimizationConfig) -> None:
        """Move the controls to ``config`` (as a click on the trade-off plot does)."""
        self.sparsity_slider.setValue(round(config.sparsity * 100))
        self.prune_method.setCurrentIndex([v for _, v in PRUNE_METHODS].index(config.prune_method))
        self.bits_slider.setValue(BIT_STOPS.index(config.bits))
        self.quant_scheme.setCurrentIndex([v for _, v in SCHEMES].index(config.quant_scheme))
        self.runtime.setCurrentIndex([v for _, v in RUNTIMES].index(config.runtime))
        self.device.setCurrentIndex(max(0, self.device.findData(config.device)))
        self.layers.excluded = set(config.exclude)
        self.layers.layer_bits = dict(config.layer_bits)
        self.layers._redraw()
        self._debounce.start()

    def _on_point_clicked(self, config: OptimizationConfig) -> None:
        self.set_config(config)

    # loading --------------------------------------------------------------------
    def _load(self, model_spec, source_spec) -> None:
        self.runner.cancel_all()
        self._play_stop()
        self.stop_live()
        self.runner.submit("load", load_workspace, model_spec, source_spec,
                           on_result=self._on_loaded, on_progress=self._on_progress, on_error=self._on_error)

    def open_model(self, spec: str) -> None:
        self.model_spec = spec
        self._load(spec, self.source_spec)

    def open_source(self, spec) -> None:
        self.source_spec = spec
        loaded = self.ws.loaded if self.ws else self.model_spec
        self._load(loaded, spec)

    def _on_model_picked(self, index: int) -> None:
        text = self.model_picker.itemText(index)
        if text == OPEN_MODEL:
            path, _ = QFileDialog.getOpenFileName(self, "Open model file", "",
                                                  "PyTorch models (*.pt *.pth *.ts *.ckpt *.bin);;All files (*)")
            self.model_picker.setCurrentText(self.model_spec if Path(str(self.model_spec)).suffix == ""
                                             else self.model_picker.itemText(0))
            if path:
                self.open_model(path)
        elif text != self.model_spec:
            self.open_model(text)

    def _on_source_picked(self, index: int) -> None:
        data = self.source_picker.itemData(index)
        if data == "none":
            self._show_status("No camera found: connect one, or open a video file instead.", error=True)
            return
        if isinstance(data, str) and data.startswith("dialog:"):
            kind = data.split(":")[1]
            if kind == "folder":
                path = QFileDialog.getExistingDirectory(self, "Open image folder")
            else:
                pattern = " ".join(f"*{s}" for s in sorted(VIDEO_SUFFIXES if kind == "video" else IMAGE_SUFFIXES))
                path, _ = QFileDialog.getOpenFileName(self, f"Open {kind}", "", f"{kind.title()} ({pattern})")
            if path:
                self.open_source(path)
            return
        self.open_source(data)

    def _on_loaded(self, ws: Workspace) -> None:
        self.stop_live()
        self.ws = ws
        self.measured = None
        self.current = None
        self.original_figures = None
        self.shown_config = None
        self.plots.clear_points()
        self.setWindowTitle(f"Workbench: {ws.loaded.display_name} on {ws.source.name}")
        self.model_picker.setToolTip(ws.loaded.display_name)
        self._show_status(f"{ws.loaded.display_name} on {ws.source.name}")
        self.show_frame(0)
        if ws.is_stream:
            self.start_live()
        self.runner.submit("measure-original", self._measure_original, ws, on_result=self._on_original_measured,
                           on_error=self._on_error)
        if not ws.is_stream:
            self.runner.submit("read", ws.read_frames, FOLDER_LIMIT, on_error=self._on_error,
                               on_result=lambda _: self._on_read_done())
        self._apply_config(force=True)

    def _on_read_done(self) -> None:
        skipped = getattr(self.ws.source, "skipped", [])
        if skipped:
            names = ", ".join(Path(s.path).name for s in skipped[:3]) + ("…" if len(skipped) > 3 else "")
            self._show_status(f"skipped {len(skipped)} unreadable file(s): {names}", error=True)
        self.frame_label.setText(f"{self.index + 1}/{len(self.ws.frames)}")
        self._start_evaluation()

    @staticmethod
    def _measure_original(ws: Workspace):
        size, _ = write_model_file(ws.out_dir / "original.pt", ws.loaded.model)
        return measure_model(ws, ws.loaded.model, ws.loaded.model, size)

    def _on_original_measured(self, figures) -> None:
        self.original_figures = figures
        self.plots.add_point(TradeoffPoint(OptimizationConfig(), figures[0], figures[1]))
        self._update_sizes()

    def _update_sizes(self) -> None:
        self.plots.set_sizes(self.original_figures[1] if self.original_figures else None,
                             self.measured.size_bytes if self.measured else None)

    # frames and inference -----------------------------------------------------
    def show_frame(self, index: int) -> None:
        if self.ws is None:
            return
        if self.ws.is_stream:
            index = len(self.ws.frames) - 1
        else:
            index %= max(1, len(self.ws.frames))
        self.index = index
        frame = self.ws.frames[index]
        self.original_pane.set_image(frame.rgb)
        self.optimized_pane.set_image(frame.rgb)
        count = "live" if self.ws.is_stream else f"{index + 1}/{len(self.ws.frames)}"
        self.frame_label.setText(f"{count}  {Path(frame.origin).name}")
        self._infer()

    def _infer(self) -> None:
        if self.ws is None or self.live is not None:
            return
        optimized = self.current.model if self.current else None
        self.runner.submit("infer", self._infer_job, self.ws, self.index, optimized,
                           on_result=self._on_inferred, on_error=self._on_error)

    @staticmethod
    def _infer_job(ws: Workspace, index: int, optimized):
        x = ws.inputs[index]
        ref = ws.original_preds.get(index)
        if ref is None:
            ref = ws.original_preds[index] = predict_one(ws.loaded.model, x)
        new = predict_one(optimized, x) if optimized is not None else None
        return index, ref, new

    def _on_inferred(self, result) -> None:
        index, ref, new = result
        if index != self.index or self.ws is None:
            return
        classes, truth = self.ws.loaded.classes, self.ws.frames[index].label
        self.original_pane.show_prediction(ref, classes, truth)
        if new is not None:
            self.optimized_pane.show_prediction(new, classes, truth, differs=new.top1 != ref.top1)
            if self.shown_config != self.current.config:
                self.shown_config = self.current.config
                self.shown.emit(self.shown_config)
        self.plots.add_latency(ref.latency_ms, new.latency_ms if new else None)

    # live mode (camera, video) ----------------------------------------------
    def start_live(self) -> None:
        """Run the stream through both models at display rate (see core.live)."""
        ws = self.ws
        optimized = self.current.model if self.current else None
        self.live = LiveSession(ws.source, ws.loaded.model, optimized, ws.loaded.preprocess,
                                loop=self.loop_check.isChecked())
        self.live_stats = {"displayed": 0, "last_seq": 0}
        self.live.start()
        # poll well above the source rate: a late tick still shows the newest frame, and a
        # tick without a new frame costs nothing
        self._display.start(max(4, int(250 / self.live.grabber.fps)))
        self.play_button.blockSignals(True)
        self.play_button.setChecked(True)
        self.play_button.setText("⏸ pause")
        self.play_button.blockSignals(False)

    def stop_live(self) -> bool:
        """Stop the capture and predictor threads; the capture device or file is released."""
        self._display.stop()
        live, self.live = self.live, None
        return live.stop() if live is not None else True

    def _on_display_tick(self) -> None:
        live = self.live
        if live is None:
            return
        stamped = live.grabber.latest
        if stamped is not None and stamped.seq != self.live_stats["last_seq"]:
            self.live_stats["last_seq"] = stamped.seq
            self.live_stats["displayed"] += 1
            classes = self.ws.loaded.classes
            ref, new = live.original.latest, live.optimized.latest
            pixmap = to_pixmap(stamped.frame.rgb)
            self.original_pane.set_image(pixmap, classes[ref[1].top1] if ref else None, fast=True)
            self.optimized_pane.set_image(pixmap, classes[new[1].top1] if new else None, fast=True)
        classes = self.ws.loaded.classes
        ref = live.original.latest
        new = live.optimized.latest
        if ref is not None and ref[0] != self.live_stats.get("ref_seq"):
            self.live_stats["ref_seq"] = ref[0]
            self.original_pane.show_prediction(ref[1], classes, None)
            self.plots.add_latency(ref[1].latency_ms, new[1].latency_ms if new else None)
        if new is not None and new[0] != self.live_stats.get("new_seq"):
            self.live_stats["new_seq"] = new[0]
            self.optimized_pane.show_prediction(new[1], classes, None,
                                                differs=ref is not None and new[1].top1 != ref[1].top1)
            if self.current and live.optimized.model is self.current.model \
                    and self.shown_config != self.current.config:
                self.shown_config = self.current.config
                self.shown.emit(self.shown_config)
        self.original_pane.latency.setText(f"{live.original.rate():.1f} predictions/s · "
                                           f"{ref[1].latency_ms:.0f} ms" if ref else "")
        self.optimized_pane.latency.setText(f"{live.optimized.rate():.1f} predictions/s · "
                                            f"{new[1].latency_ms:.0f} ms" if new else "")
        self.frame_label.setText(f"live: frame {live.grabber.frames_read}")
        if live.grabber.error or live.original.error or live.optimized.error:
            self._show_status(live.grabber.error or live.original.error or live.optimized.error, error=True)
            if live.grabber.error:
                self.stop_live()
        elif live.grabber.ended and not live.grabber.is_alive():
            self._show_status(f"{self.ws.source.name}: end of video")
            self._display.stop()

    def _on_play_toggled(self, on: bool) -> None:
        self.play_button.setText("⏸ pause" if on else "▶ play")
        if self.live is not None:
            self.live.pause(not on)
        elif on:
            self._play.start()
        else:
            self._play.stop()

    def _on_play_tick(self) -> None:
        if self.ws and not self.ws.is_stream:
            self.show_frame(self.index + 1)

    def _play_stop(self) -> None:
        self._play.stop()
        self.play_button.blockSignals(True)
        self.play_button.setChecked(False)
        self.play_button.setText("▶ play")
        self.play_button.blockSignals(False)

    # optimization -------------------------------------------------------------
    def _apply_config(self, force: bool = False) -> None:
        if self.ws is None:
            return
        try:
            config = self.config()
        except ValueError as exc:  # e.g. 4-bit activations asked of ONNX Runtime
            self._show_status(str(exc), error=True)
            return
        if not force and self.current and self.current.config == config:
            return
        self.runner.cancel("evaluate")
        self.runner.submit("optimize", optimize_and_measure, self.ws, config, on_result=self._on_optimized,
                           on_progress=self._on_progress, on_error=self._on_error)

    def _on_model_ready(self, opt: OptimizedModel) -> None:
        """The optimized model exists: show its predictions now; figures follow."""
        self.current = opt
        self.optimized_pane.setTitle(f"Optimized: {opt.config.label()}")
        self.optimized_pane.what.setText(f"{opt.description}\nkernels: {opt.kernels}  ·  measuring…")
        if self.live is not None:
            self.live.set_optimized(opt.model)
        self._infer()

    def _on_optimized(self, measured: Measured) -> None:
        self.measured = measured
        opt = measured.optimized
        if self.current is not opt:
            self._on_model_ready(opt)
        self.optimized_pane.setTitle(f"Optimized: {opt.config.label()}")
        self.optimized_pane.what.setText(f"{opt.description}\nkernels: {opt.kernels}  ·  "
                                         f"median {measured.latency_ms:.1f} ms  ·  {measured.size_bytes / 1e6:.2f} MB")
        self._update_sizes()
        self.plots.add_point(TradeoffPoint(opt.config, measured.latency_ms, measured.size_bytes))
        self.plots.set_current(opt.config)
        self._show_status(f"ready: {opt.config.label()} ({opt.description})"
                          + (f"; methods: {', '.join(opt.methods)}" if opt.methods else ""))
        if opt.sensitivity:
            self.layers.show_sensitivity(opt.sensitivity["layers"], opt.sensitivity["probe"])
        names = [n for n, m in opt.float_model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        self.layers.show_allocation(opt.allocation, names)
        if not self.runner.busy("read"):
            self._start_evaluation()

    def _on_measure_sensitivity(self) -> None:
        if self.ws is None:
            return
        self.runner.submit("sensitivity", sensitivity_job, self.ws, self.config(), on_progress=self._on_progress,
                           on_error=self._on_error,
                           on_result=lambda r: (self.layers.show_sensitivity(r["layers"], r["probe"]),
                                                self._show_status(f"sensitivity measured ({r['probe']})")))

    def _on_recover(self) -> None:
        if self.ws is None or self.measured is None:
            return
        self.runner.cancel("evaluate")
        self.runner.submit("recover", recover_job, self.ws, self.measured, RECOVER_SECONDS,
                           on_progress=self._on_progress, on_error=self._on_error, on_result=self._on_optimized)

    def _start_evaluation(self) -> None:
        if self.ws is None or self.measured is None or self.ws.is_stream:
            return
        labelled = self.ws.labelled
        for which in ("original", "optimized"):
            self.plots.reset_accuracy(which, labelled)
        self.runner.submit("evaluate", evaluate_steps, self.ws, self.measured.optimized.model,
                           on_progress=self._on_eval_progress, on_error=self._on_error,
                           on_result=self._on_eval_done)
        self._eval_config = self.measured.optimized.config

    def _on_eval_progress(self, p: EvalProgress) -> None:
        if p.labelled:
            self.plots.add_accuracy("original", p.done, p.original_hits, p.labelled)
            self.plots.add_accuracy("optimized", p.done, p.optimized_hits, p.labelled)
        else:
            self.plots.add_accuracy("optimized", p.done, p.agree, p.done)
        score = p.top1("optimized") if p.labelled else p.agreement
        self.plots.update_point(self._eval_config, score)
        if p.labelled:
            self.plots.update_point(OptimizationConfig(), p.top1("original"))
        else:
            self.plots.update_point(OptimizationConfig(), 1.0)
        if p.done % 5 == 0 or p.done == p.total:
            self.status_text.setText(f"evaluating: {p.done}/{p.total} images")
            self.progress.setRange(0, p.total)
            self.progress.setValue(p.done)

    def _on_eval_done(self, p: EvalProgress | None) -> None:
        if p is not None:
            self._show_status(f"evaluated {p.done} images: agreement {p.agreement:.1%}"
                              + (f", top-1 {p.top1('original'):.1%} → {p.top1('optimized'):.1%}" if p.labelled else ""))

    # status ------------------------------------------------------------------
    def _on_progress(self, step) -> None:
        if isinstance(step, OptimizedModel):
            self._on_model_ready(step)
        elif isinstance(step, str):
            self.status_text.setText(step)
            m = re.search(r"(\d+)/(\d+)", step)
            if m:
                self.progress.setRange(0, int(m.group(2)))
                self.progress.setValue(int(m.group(1)))
            else:
                self.progress.setRange(0, 0)

    def _on_error(self, message: str) -> None:
        self._show_status(message, error=True)

    def _show_status(self, text: str, error: bool = False) -> None:
        self.status_text.setText(text)
        self.status_text.setStyleSheet("color: #c0392b;" if error else "")

    def _update_busy(self) -> None:
        busy = any(self.runner.busy(k) for k in LONG_JOBS)
        self.progress.setVisible(busy)
        self.cancel_button.setVisible(busy)

    def _on_cancel(self) -> None:
        for kind in LONG_JOBS:
            self.runner.cancel(kind)
        self._show_status("cancelled")

    # drag and drop, closing ----------------------------------------------------
    def dragEnterEvent(self, event):  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event):  # noqa: N802
        urls = event.mimeData().urls()
        if urls:
            self.open_path(urls[0].toLocalFile())

    def open_path(self, path: str) -> None:
        """A dropped file or folder: a model file is loaded as the model, anything else as the source."""
        p = Path(path)
        if p.suffix.lower() in MODEL_SUFFIXES:
            self.open_model(str(p))
        else:
            self.open_source(str(p))

    def closeEvent(self, event):  # noqa: N802
        self._play.stop()
        self._rss.stop()
        self.stop_live()
        self.runner.shutdown()
        super().closeEvent(event)
