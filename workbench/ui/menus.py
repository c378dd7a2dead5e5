"""The menu bar: every command as a QAction with its shortcut, the plot exports, and Help
(What am I seeing?, Keyboard shortcuts, About, the log)."""

from __future__ import annotations

import html
import platform
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, QUrl
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import QAbstractSlider, QDialog, QFileDialog, QTextBrowser, QVBoxLayout

from .explore import last_session_path
from .plots import EXPORT_FORMATS, add_export_menu, export_plot


class _SliderKeepsArrows(QObject):
    """A focused slider keeps the arrow keys (elsewhere they step through the images)."""

    def eventFilter(self, obj, event):  # noqa: N802 - Qt override
        if event.type() == QEvent.Type.ShortcutOverride and event.key() in (Qt.Key.Key_Left, Qt.Key.Key_Right):
            event.accept()
            return True
        return False


def _action(window, name: str, text: str, slot, shortcut=None, tip: str = "") -> QAction:
    a = QAction(text, window, objectName=name, statusTip=tip, toolTip=tip)
    if shortcut:
        a.setShortcut(QKeySequence(shortcut))
    a.triggered.connect(lambda _=False: slot())
    window.addAction(a)  # shortcuts work in demo mode too, with the menu bar hidden
    return a


def build_menus(window) -> dict[str, QAction]:
    """Fill ``window``'s menu bar; returns the actions by object name."""
    c, bar = window.controller, window.menuBar()
    file = bar.addMenu("&File")
    acts = [
        _action(window, "openFolderAction", "Open image &folder…", lambda: window.choose_source("folder"),
                "Ctrl+O", "Run both models over the images of a folder (labelled when its names say the class)"),
        _action(window, "openVideoAction", "Open &video…", lambda: window.choose_source("video"), None,
                "Play a video through both models"),
        _action(window, "openImageAction", "Open &image…", lambda: window.choose_source("image"), None,
                "Run both models on one image"),
        _action(window, "openModelAction", "Open &model file…", window.choose_model, "Ctrl+Shift+O",
                "Load a TorchScript file or a state dict as the original model"),
    ]
    acts.append(_action(window, "copyCommandAction", "&Copy as command", window.copy_button.click, "Ctrl+Shift+C",
                        "Put the python -m workbench compare command that gives these numbers on the clipboard"))
    for a in acts:
        file.addAction(a)
    file.addSeparator()
    export = file.addMenu("&Export plot")
    for widget in window.plots.widgets() + window.layers.widgets():
        title = widget.getPlotItem().titleLabel.text or widget.objectName()
        sub = export.addMenu(title.split(":")[0].split("(")[0].strip())
        for suffix, what in EXPORT_FORMATS.items():
            sub.addAction(f"{what}…", lambda w=widget, s=suffix: save_plot(window, w, s))
        add_export_menu(widget, lambda w, s: save_plot(window, w, s))
    file.addAction(window.show_controls.snapshot_action)
    file.addSeparator()
    ex = window.explorer
    for a in (
        _action(window, "openSessionAction", "Open s&ession…", ex.open_session, None,
                "Load a saved session: its model, source, and every configuration tried with its figures"),
        _action(window, "saveSessionAction", "Save session…", ex.save_session, "Ctrl+Shift+S",
                "Save the model, the source and every configuration tried (with its report) to a JSON file"),
        _action(window, "restoreSessionAction", "Restore last session", lambda: ex.open_session(
            str(last_session_path())), None, "The session as it was when the window last closed"),
    ):
        file.addAction(a)
    file.addSeparator()
    reset = _action(window, "resetAction", "&Reset to defaults", window.memory.reset, None,
                    "Forget the remembered model, source, controls and window layout")
    quit_ = _action(window, "quitAction", "&Quit", window.close, "Ctrl+Q")
    file.addAction(reset)
    file.addAction(quit_)

    tools = bar.addMenu("&Tools")
    for a in (
        _action(window, "sweepAction", "&Sweep…", ex.sweep, None,
                "Measure every combination of 0/25/50 % sparsity and 32/8/4 bits like compare; writes "
                "results.csv, results.json and pareto.png, and draws them on the trade-off plot"),
        _action(window, "budgetLatencyAction", "Most accurate under a &latency…", lambda: ex.budget("ms"), None,
                "Search the methods, sparsities, bit widths and runtimes for the most accurate configuration "
                "whose median latency fits (a few measured evaluations)"),
        _action(window, "budgetSizeAction", "Most accurate under a file si&ze…", lambda: ex.budget("mb"), None,
                "The same search for a file-size budget"),
        _action(window, "exportAction", "&Export optimized model…", ex.export, "Ctrl+E",
                "Write the current configuration's model as ONNX and TorchScript, its packed file and an "
                "HTML report with the plots"),
    ):
        tools.addAction(a)

    view = bar.addMenu("&View")
    play = _action(window, "playAction", "&Play / pause", window.play_button.toggle, "Space",
                   "Step through the images (or pause the video or camera)")
    prev = _action(window, "previousAction", "P&revious image", lambda: c.show_frame(c.index - 1), "Left")
    nxt = _action(window, "nextAction", "&Next image", lambda: c.show_frame(c.index + 1), "Right")
    left = _action(window, "originalLeftAction", "&Original in the left pane", lambda: c.set_reference(None), None,
                   "Compare with the original again (shift+click a trade-off point to put another configuration "
                   "in the left pane)")
    for a in (play, prev, nxt, window.show_controls.demo_action, left):
        view.addAction(a)

    help_ = bar.addMenu("&Help")
    what = _action(window, "whatAction", "&What am I seeing?", lambda: show_text(window, "What am I seeing?",
                                                                                 what_am_i_seeing(window)), "F1")
    keys = _action(window, "shortcutsAction", "&Keyboard shortcuts",
                   lambda: show_text(window, "Keyboard shortcuts", shortcuts_page(window)))
    log = _action(window, "logAction", "Open the &log", window.open_log)
    about = _action(window, "aboutAction", "&About Workbench", lambda: show_text(window, "About Workbench",
                                                                               about_page(window)))
    for a in (what, keys, log, about):
        help_.addAction(a)

    keep = _SliderKeepsArrows(window)
    for slider in window.findChildren(QAbstractSlider):
        slider.installEventFilter(keep)
    return {a.objectName(): a for a in window.actions() if a.objectName()}


def save_plot(window, widget, suffix: str) -> Path | None:
    """Ask where, then write the plot; the status line says where it went (or why not)."""
    name = widget.objectName().removesuffix("Plot") or "plot"
    path, _ = QFileDialog.getSaveFileName(window, f"Export {name} plot", f"{name}{suffix}",
                                          f"{EXPORT_FORMATS[suffix]} (*{suffix})")
    if not path:
        return None
    if not path.lower().endswith(suffix):
        path += suffix
    try:
        out = export_plot(widget, path)
    except (OSError, ValueError) as exc:
        window.show_status(f"export failed: {exc}", True)
        return None
    window.show_status(f"plot saved: {out}")
    return out


def show_text(window, title: str, text: str) -> QDialog:
    """A non-modal page of rich text (links open in the system's browser or file manager)."""
    name = title.replace(" ", "").replace("?", "")
    old = window.findChild(QDialog, name)
    if old is not None:
        old.close()
        old.deleteLater()
    dialog = QDialog(window, objectName=name, windowTitle=title)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    browser = QTextBrowser(openExternalLinks=True)
    browser.setHtml(text)
    QVBoxLayout(dialog).addWidget(browser)
    dialog.resize(560, 480)
    dialog.show()
    return dialog


def shortcuts_page(window) -> str:
    rows = [(a.text().replace("&", ""), a.shortcut().toString(QKeySequence.SequenceFormat.NativeText))
            for a in window.actions() if not a.shortcut().isEmpty()]
    rows.append(("Leave demo mode", "Esc"))
    body = "".join(f"<tr><td>{html.escape(t)}</td><td><b>{html.escape(k)}</b></td></tr>" for t, k in rows)
    return (f"<h3>Keyboard shortcuts</h3><table cellpadding='4'>{body}</table>"
            "<p>The arrow keys move a slider while it has the focus (click it first), and step "
            "through the images otherwise.</p>")


def about_page(window) -> str:
    import PySide6
    import torch
    import torchvision
    from PySide6.QtCore import qVersion

    from .. import __version__

    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    ws = window.controller.ws
    weights = (f"{ws.loaded.display_name}: {ws.loaded.weights or 'unknown'}" if ws else "not loaded yet")
    rows = [("Workbench", __version__), ("PyTorch", torch.__version__), ("torchvision", torchvision.__version__),
            ("Qt", f"{qVersion()} (PySide6 {PySide6.__version__})"), ("ONNX Runtime", ort),
            ("Model weights", weights), ("Python", platform.python_version()),
            ("CPU", _cpu()), ("Log", str(window.log_path or "not written"))]
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return ("<h3>Workbench</h3><p>Prune and quantize a vision model and see the original and the "
            f"optimized model side by side, with measured numbers.</p><table cellpadding='3'>{body}</table>")


def _cpu() -> str:
    from ..core.process import machine

    m = machine()
    return f"{m['cpu']}, {m['cores']} cores"


def what_am_i_seeing(window) -> str:
    """Which numbers are measured and which simulated, and how each is measured."""
    c = window.controller
    s = c.settings
    opt = c.current
    if opt is None:
        now = "<p>No optimized model yet.</p>"
    else:
        cfg = opt.config
        if cfg.is_identity:
            what = "The optimized pane runs an unchanged copy of the original."
        elif cfg.simulated:
            what = (f"<b>Simulated:</b> {cfg.bits}-bit weights are rounded to {cfg.bits}-bit values but run "
                    "on float kernels (this CPU has no kernels for them). Accuracy and file size are real "
                    "(the file stores the packed codes); the latency is that of float kernels, so no speedup "
                    "is expected from the bit width.")
            if cfg.activation_bits:
                what += (f" Activations are rounded to {cfg.activation_bits} bits by quantize steps between "
                         "the float kernels: those steps make the simulation slower than the original, which "
                         "real low-bit kernels would not be.")
        else:
            what = f"<b>Real kernels:</b> {html.escape(opt.kernels)}."
            if any(m.startswith("7-bit weight range") for m in opt.methods):
                what += (" This CPU has no VNNI: its int8 kernels add pairs of products in 16 bits, which "
                         "full 8-bit weights would overflow, so the weights use 7 bits (about a point of "
                         "top-1 less than 8-bit weights on a CPU with VNNI).")
        if cfg.sparsity and not cfg.prune_method.startswith("structured"):
            what += (" Unstructured zeros are stored in dense tensors: the packed file shrinks, the "
                     "latency does not (no sparse kernels run).")
        elif cfg.sparsity:
            what += " Structured pruning removes whole channels: the model is really smaller and faster."
        now = f"<p><b>Now:</b> {html.escape(cfg.label())}. {what}</p>"
    from ..core.compare import MIN_HELD_OUT
    from ..core.measure import BLOCK
    from ..core.process import timing_threads

    threads = s.threads or timing_threads() or "all"
    return f"""<h3>What am I seeing?</h3>{now}
<ul>
<li><b>Latency, measured alone</b> (measured): the median of {s.latency_runs} runs of one image after
{s.warmup} warm-up runs, {threads} threads, with the app's other work held back while it is timed.
The original and the optimized model are timed in turns of {BLOCK} runs, in a fresh child process
(as <code>compare</code> times them: what the app ran before cannot slow them). The
'this frame' figure in each pane is one run while the app works, so it is noisier. Pruning databases,
structured pruning, recovery, bit widths below 8 and layer sensitivities run in a child process, so
they do not slow the timings here (they left later latencies 4-20 % high). int8 calibration runs
here: it changed nothing measurable. On a 2-core machine the same model, re-timed a few seconds
later, varies by about 10 %, on some by up to 1.8x: repeat before trusting one figure. Their ratio
holds: the optimized pane gives it ("0.53× the original's"), and the trade-off plot places each
configuration by it.</li>
<li><b>Model file size</b> (measured): the size of the file a user would ship, written for real
(.pt, ONNX, or a packed file for simulated bit widths and zeroed weights).</li>
<li><b>Process memory</b> (measured): resident memory of the whole app, once a second (with a
preparation's child process while one runs).</li>
<li><b>Accuracy</b> (measured): top-1 on the images whose folder or file names give the class, with
a 95 % Wilson interval; on unlabelled images, how often the optimized model agrees with the
original. Live: the running agreement on the frames both models saw, over the frames compared,
started again for each configuration.</li>
<li><b>Trade-off</b>: each configuration tried, at its accuracy and its latency over the original's
(the two timed in turns, so a machine whose speed changes between timings moves both and not the
ratio; hover a point for both medians); the size of a point is its file size. Click one to go back
to it.</li>
<li><b>Calibration</b>: quantization, pruning and BatchNorm re-estimation use the first
{s.calibration_images} images of the source. A larger folder shows {s.calibration_images} images spread
evenly over its name order first (a folder sorted by class would otherwise calibrate on its
first classes only), then the rest in name order. When at least {MIN_HELD_OUT} more images follow,
accuracy and agreement count only those (the optimized model was fitted to the first ones); with
fewer, all images count and the status line says the calibration images are included.</li>
</ul>
<p>The command line gives the same numbers: File → Copy as command puts the command on the
clipboard. Help → About lists the versions.</p>"""


def open_folder(path: Path | None) -> bool:
    return bool(path) and QDesktopServices.openUrl(QUrl.fromLocalFile(str(path)))

