"""The app between the core and the widgets: owns the workspace, the configuration, the
results and the job runner, and tells the views what changed through typed signals.

No widget lives here; a test can drive it without a window, and the window only lays out
and wires. Every figure comes from the core's one measurement path (``core.compare``), so
``report()`` has the schema and the numbers of ``python -m workbench compare --json``."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from ..core.config import DEFAULT_MODEL, MeasureSettings, OptimizationConfig

FOLDER_LIMIT = 500  # images of a folder the window evaluates (compare --limit)
RECOVER_SECONDS = 60.0
log = logging.getLogger(__name__)
LONG_JOBS = ("load", "optimize", "evaluate", "read", "sensitivity", "recover", "sweep", "budget", "export")


class Controller(QObject):
    status = Signal(str, bool)  # text, is an error
    progress = Signal(str)  # what the running job is doing ("n/m" for a bar)
    busy_changed = Signal(bool)  # a long job runs
    loaded = Signal(object)  # Workspace
    frame_changed = Signal(int)  # index of the frame the panes show
    predicted = Signal(int, object, object)  # index, original Prediction, optimized Prediction or None
    original_measured = Signal(dict)  # figures of the original
    model_ready = Signal(object)  # OptimizedModel, before its figures
    measured = Signal(object)  # Measured
    evaluation_started = Signal(bool)  # labelled
    evaluated = Signal(object)  # EvalProgress
    report_ready = Signal(dict)  # the compare --json report of the current configuration
    differences_ready = Signal(list, int)  # the frames whose top-1 changed (core.session.differences), of how many
    sensitivity_ready = Signal(dict)  # {"probe": str, "layers": {...}}
    shown = Signal(object)  # the OptimizationConfig whose result the optimized pane now shows
    live_changed = Signal(bool)  # live mode started / stopped
    reference_changed = Signal(object)  # the left pane's model: an OptimizedModel, or None for the original

    def __init__(self, settings: MeasureSettings | None = None, parent=None):
        from .runner import Runner

        super().__init__(parent)
        self.settings = settings or MeasureSettings()
        self.runner = Runner(self)
        self.runner.busy_changed.connect(lambda: self.busy_changed.emit(self.busy))
        self.model_spec: str | None = None
        self.source_spec = None
        self.ws = None
        self.config = OptimizationConfig()
        self.current = None  # OptimizedModel the optimized pane runs
        self.measured_result = None  # Measured of the current configuration
        self.original_figures: dict | None = None
        self.shown_config: OptimizationConfig | None = None
        self.index = 0
        self._report: dict | None = None
        self.tried: dict[OptimizationConfig, dict] = {}  # the compare report of every configuration evaluated
        self.reference = None  # OptimizedModel the left pane runs instead of the original (images only)
        self.live = None  # LiveSession while a camera or video plays
        self._evaluation = None
        self._reading = False
        self._replay = None  # (config, steps): a saved recovery to run again once config is shown
        self.notice = ""  # about the source, kept in the status line (e.g. unreadable files)
        self._debounce = QTimer(self, singleShot=True, interval=150)
        self._debounce.timeout.connect(self.apply)

    # what the views ask ------------------------------------------------------
    @property
    def busy(self) -> bool:
        return any(self.runner.busy(k) for k in LONG_JOBS)

    def report(self) -> dict | None:
        """The ``compare --json`` report of the current source and configuration, once its
        evaluation has finished; None before that (and for live sources)."""
        return self._report

    def command(self) -> str:
        """The ``python -m workbench compare`` command that gives the same numbers."""
        from ..core.compare import compare_command

        model = self.model_spec or DEFAULT_MODEL
        limit = FOLDER_LIMIT if self.ws and not self.ws.is_stream and self.source_spec is not None else None
        return compare_command(model, self.source_spec, limit, self.config, self.settings, self.recovered_steps)

    @property
    def recovered_steps(self) -> int | None:
        """The distillation steps in the optimized model shown (*Recover accuracy*), or None."""
        shown = self.measured_result.optimized if self.measured_result is not None else None
        return shown.recovered_steps if shown is not None and shown.config == self.config else None

    # loading ------------------------------------------------------------------
    def load(self, model_spec, source_spec) -> None:
        from ..core.session import load_workspace

        self.runner.cancel_all()
        self.stop_live()
        model_spec = model_spec or DEFAULT_MODEL
        if isinstance(model_spec, str):
            self.model_spec = model_spec
        self.source_spec = source_spec
        self.progress.emit(f"loading {self.model_spec}…")
        self.runner.submit("load", _first_load, load_workspace, model_spec, source_spec, self.settings,
                           FOLDER_LIMIT, on_result=self._on_loaded, on_progress=self._on_progress,
                           on_error=self._on_error)

    def open_model(self, spec: str) -> None:
        self.load(spec, self.source_spec)

    def open_source(self, spec) -> None:
        self.load(self.ws.loaded if self.ws else self.model_spec, spec)

    def _on_loaded(self, ws) -> None:
        _remove_work_folder(self.ws)
        self.ws, self.current, self.measured_result, self.original_figures = ws, None, None, None
        self.shown_config, self._report, self.index, self.notice = None, None, 0, ""
        self.tried, self.reference = {}, None
        self.reference_changed.emit(None)
        log.info("loaded %s (%s) on %s", ws.loaded.display_name, ws.loaded.weights, ws.source.name)
        self.loaded.emit(ws)
        self.status.emit(f"{ws.loaded.display_name} on {ws.source.name}", False)
        self.show_frame(0)
        if ws.is_stream:
            self.start_live()
        else:
            self._reading = True
            self.runner.submit("read", ws.read_frames, FOLDER_LIMIT, on_error=self._on_error,
                               on_result=lambda _: self._on_read_done())
        self.apply(force=True)

    def _on_read_done(self) -> None:
        from ..core.compare import skipped_of

        self._reading = False
        skipped = skipped_of(self.ws.source)
        root = getattr(self.ws.source, "root", None)
        if skipped and root is not None and not any(Path(f).exists() for f in self.ws.source.files):
            self.notice = (f"{root} was deleted or emptied while it was read: showing the {len(self.ws.frames)} "
                           "images read before")
            self.status.emit(self.notice, True)
        elif skipped:
            names = ", ".join(Path(s["path"]).name for s in skipped[:3]) + ("…" if len(skipped) > 3 else "")
            self.notice = f"skipped {len(skipped)} unreadable file(s): {names}"
            self.status.emit(self.notice, True)
        self.frame_changed.emit(self.index)
        self._start_evaluation()

    # frames and predictions -------------------------------------------------------
    def show_frame(self, index: int) -> None:
        if self.ws is None or not self.ws.frames:
            return
        n = len(self.ws.frames)
        self.index = n - 1 if self.ws.is_stream else index % n
        self.frame_changed.emit(self.index)
        self.infer()

    def infer(self) -> None:
        if self.ws is None or self.live is not None:
            return
        optimized = self.current.model if self.current else None
        reference = self.reference.model if self.reference else None
        self.runner.submit("infer", _infer_job, self.ws, self.index, optimized, reference,
                           on_result=self._on_inferred, on_error=self._on_error)

    def set_reference(self, config: OptimizationConfig | None) -> None:
        """Show ``config``'s model in the left pane instead of the original (None or the
        identity: the original again). Images only; the plots keep comparing with the original."""
        from ..core.session import optimize_job

        if self.ws is None or self.ws.is_stream:
            return
        if config is None or config.is_identity:
            self.runner.cancel("reference")
            self._on_reference(None)
            return
        self.runner.submit("reference", optimize_job, self.ws, config, self.settings, on_result=self._on_reference,
                           on_progress=lambda s: self.progress.emit(s) if isinstance(s, str) else None,
                           on_error=self._on_error)

    def _on_reference(self, opt) -> None:
        self.reference = opt
        self.reference_changed.emit(opt)
        self.infer()

    def _on_inferred(self, p) -> None:
        if self.ws is None or p.index != self.index:
            return
        self.predicted.emit(p.index, p.original, p.optimized)
        if p.optimized is not None:
            self.mark_shown()

    def mark_shown(self) -> None:
        """The optimized pane now shows the current model's output."""
        if self.current is not None and self.shown_config != self.current.config:
            self.shown_config = self.current.config
            self.shown.emit(self.shown_config)

    # live mode (camera, video) ------------------------------------------------------
    def start_live(self, loop: bool = True) -> None:
        """Run the stream through both models (see core.live); the window polls the newest frame."""
        from ..core.live import LiveSession

        ws = self.ws
        self.live = LiveSession(ws.source, ws.loaded.model, None, ws.loaded.preprocess, loop=loop)
        self.live.start()
        self.live_changed.emit(True)
        if self.current is not None:
            self._live_optimized(self.current)

    def _live_optimized(self, opt) -> None:
        """Run ``opt`` live: at once as it is, then on the fastest real runtime for its
        configuration once that is built (ONNX Runtime int8 for int8)."""
        from ..core.live import live_runtime_steps

        self.live.set_optimized(opt.model, f"torch ({opt.kernels})", owner=opt)

        def swap(result):
            model, runtime = result
            if self.live is not None and self.current is opt:
                changed = model is not opt.model
                self.live.set_optimized(model, runtime, owner=opt)
                if changed:  # the progress steps ("quantizing it…") must not stay as the last word
                    self._say(f"live: the optimized model now runs on {runtime}")

        self.runner.submit("live-runtime", live_runtime_steps, opt, self.ws.calibration(self.settings.calibration_images),
                           self.ws.out_dir / "live", on_result=swap, on_progress=self._on_progress,
                           on_error=self._on_error)

    def reopen(self) -> None:
        """Open the current source again (a camera that was unplugged or busy)."""
        if self.source_spec is not None:
            self.notice = ""
            self.load(self.ws.loaded if self.ws else self.model_spec, self.source_spec)

    def live_failed(self, message: str) -> None:
        """The stream broke (a camera unplugged): stop, and keep the message in view."""
        self.stop_live()
        self.notice = message
        self.status.emit(message, True)

    def stop_live(self) -> bool:
        """Stop the capture and predictor threads; the capture device or file is released."""
        live, self.live = self.live, None
        if live is None:
            return True
        self.live_changed.emit(False)
        return live.stop()

    # optimization --------------------------------------------------------------------
    def request(self, config: OptimizationConfig) -> None:
        """A new configuration from the controls: applied once they rest (150 ms)."""
        self.config = config
        if self._replay is not None and self._replay[0] != config:
            self._replay = None
        self._debounce.start()

    def apply(self, force: bool = False) -> None:
        from ..core.session import optimize_and_measure

        if self.ws is None or (not force and self.current is not None and self.current.config == self.config):
            return
        self.runner.cancel("evaluate")
        self._report = None
        self.runner.submit("optimize", optimize_and_measure, self.ws, self.config, self.settings,
                           None if self.live else self.index, on_result=self._on_measured,
                           on_progress=self._on_progress, on_error=self._on_error)

    def _on_original_measured(self, figures: dict) -> None:
        self.original_figures = figures
        self.original_measured.emit(figures)
        self._start_evaluation()

    def _on_model_ready(self, opt) -> None:
        """The optimized model exists; its job predicts the current frame next (before measuring)."""
        self.runner.cancel("infer")
        self.current = opt
        self.model_ready.emit(opt)
        if self.live is not None:
            self._live_optimized(opt)

    def _on_measured(self, measured) -> None:
        self.measured_result = measured
        log.info("measured %s: %.1f ms (original %.1f ms), %d bytes, %s", measured.optimized.config.label(),
                 measured.latency_ms, measured.original_latency["median"], measured.size_bytes,
                 measured.optimized.kernels)
        if self.current is not measured.optimized:
            self._on_model_ready(measured.optimized)
            self.infer()
        if self.original_figures is None and not self.runner.busy("measure-original"):
            from ..core.session import measure_original  # after the first result: nothing competes

            self.runner.submit("measure-original", measure_original, self.ws, self.settings,
                               on_result=self._on_original_measured, on_error=self._on_error)
        self.measured.emit(measured)
        opt = measured.optimized
        if self._replay is not None and self._replay[0] == opt.config == self.config and opt.recovered_steps is None:
            _, steps = self._replay
            self._replay = None
            self.recover(steps=steps)
            return
        self._say(f"ready: {opt.config.label()} ({opt.description})"
                  + (f"; methods: {', '.join(opt.methods)}" if opt.methods else ""))
        self._start_evaluation()

    def measure_sensitivity(self) -> None:
        from ..core.session import sensitivity_job

        if self.ws is not None:
            self.runner.submit("sensitivity", sensitivity_job, self.ws, self.config, on_progress=self._on_progress,
                               on_error=self._on_error, on_result=self.sensitivity_ready.emit)

    def recover(self, seconds: float | None = None, steps: int | None = None) -> None:
        """*Recover accuracy*: distil the model shown for ``seconds``, or exactly ``steps`` steps."""
        from ..core.session import recover_job

        if self.ws is None or self.measured_result is None:
            return
        self.runner.cancel("evaluate")
        self.runner.submit("recover", recover_job, self.ws, self.measured_result, self.settings,
                           seconds or RECOVER_SECONDS, steps, on_progress=self._on_progress, on_error=self._on_error,
                           on_result=self._on_measured)

    def replay_recovery(self, config: OptimizationConfig, steps: int) -> None:
        """Distil ``config``'s model ``steps`` steps once it is shown (a session that was saved
        after *Recover accuracy*); forgotten when the controls move to another configuration."""
        self._replay = (config, steps)

    # evaluation -------------------------------------------------------------------------
    def _start_evaluation(self) -> None:
        ws, measured = self.ws, self.measured_result
        if ws is None or measured is None or ws.is_stream or self._reading or self.original_figures is None \
                or measured.optimized.config != self.config:
            return
        self._evaluation = measured
        self.evaluation_started.emit(ws.labelled)
        self.runner.submit("evaluate", _evaluate_job, ws, measured, self.original_figures, self.settings,
                           on_progress=self._on_eval_progress, on_error=self._on_error)

    def _on_eval_progress(self, step) -> None:
        if isinstance(step, str):
            self.progress.emit(step)
            return
        p, report, changed = step
        self.evaluated.emit(p)
        if report is not None and self._evaluation is self.measured_result:
            self._report = report
            self.tried[self.measured_result.optimized.config] = report
            self.differences_ready.emit(changed, len(p.final[0].probs))
            self.report_ready.emit(report)
            from ..core.compare import scored_text

            self._say(f"evaluated {scored_text(self._report['scored'])}: agreement {p.agreement:.1%}"
                      + (f", top-1 {p.top1('original'):.1%} → {p.top1('optimized'):.1%}" if p.labelled else ""))

    # status -------------------------------------------------------------------------------
    def _on_progress(self, step) -> None:
        from ..core.optimize import OptimizedModel
        from ..core.session import FramePredictions

        if isinstance(step, OptimizedModel):
            self._on_model_ready(step)
        elif isinstance(step, FramePredictions):
            self._on_inferred(step)
        elif isinstance(step, str):
            self.progress.emit(step)

    def _say(self, text: str) -> None:
        """A status line that keeps the source's notice (unreadable files) in view."""
        self.status.emit(f"{text}  ·  {self.notice}" if self.notice else text, bool(self.notice))

    def _on_error(self, message: str) -> None:
        self.status.emit(message, True)

    def cancel(self) -> None:
        for kind in LONG_JOBS:
            self.runner.cancel(kind)
        self.status.emit("cancelled", False)

    def shutdown(self) -> bool:
        self._debounce.stop()
        stopped = self.stop_live()
        done = self.runner.shutdown() and stopped
        if done:
            _remove_work_folder(self.ws)
        return done


def _remove_work_folder(ws) -> None:
    """A workspace's files (one folder per configuration tried, the newest few kept) go with it."""
    import shutil

    if ws is not None:
        shutil.rmtree(ws.out_dir, ignore_errors=True)


def _first_load(load_workspace, *args):
    """The first job: torch is imported here, off the GUI thread, so the window paints first."""
    from ..core.models import available_models
    from ..core.process import setup_process

    setup_process()
    available_models()  # cached: the model picker fills from it without importing torchvision itself
    yield from load_workspace(*args)


def _evaluate_job(ws, measured, original: dict, settings: MeasureSettings):
    """Both models over the frames (``core.session.evaluate_steps``), then the report and the
    frames whose top-1 changed. These are computed here, not in the GUI thread: a torch op
    over all frames there would give that thread an OpenMP team of its own (ui.runner)."""
    from ..core.session import differences, evaluate_steps, workspace_report

    for p in evaluate_steps(ws, measured.optimized.model, settings.calibration_images):
        if isinstance(p, str):
            yield p
        elif p.final is None:
            yield p, None, None
        else:
            yield p, workspace_report(ws, original, measured, p, settings), differences(ws, p.final)


def _infer_job(ws, index: int, optimized, reference=None):
    from ..core.session import predict_frame

    return predict_frame(ws, index, optimized, reference)
