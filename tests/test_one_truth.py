"""The window and the command line measure the same way (issue: one truth)."""

import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import write_images

from workbench.core.config import BIT_STOPS, OptimizationConfig
from workbench.ui import build_window

LONG = 300_000
SAME = ("top1", "top5", "size_bytes", "params", "nonzero_params", "macs")


@pytest.fixture
def folder(tmp_path):
    names = ["n01440764_a.png", "n01443537_b.png", "n01484850_c.png", "n01491361_d.png", "n01494475_e.png",
             "n01496331_f.png"]
    write_images(tmp_path / "images", names, size=(72, 96))
    return tmp_path / "images"


def _open(qtbot, source=None):
    w = build_window(source=source)
    qtbot.addWidget(w)
    w.show()
    return w


def _run(command: str, *extra: str) -> dict:
    args = shlex.split(command)
    assert args[:4] == ["python", "-m", "workbench", "compare"]
    out = subprocess.run([sys.executable, *args[1:], *extra], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _assert_same(report: dict, cli: dict) -> None:
    assert set(report) == set(cli)
    for side in ("original", "optimized"):
        assert set(report[side]) == set(cli[side]), side
        for key in SAME:
            assert report[side][key] == cli[side][key], (side, key)
    assert report["optimized"]["agreement"] == cli["optimized"]["agreement"]
    assert report["config"] == cli["config"]
    assert report["images"] == cli["images"] and report["labelled"] == cli["labelled"]
    assert report["scored"] == cli["scored"]


@pytest.fixture
def gui_thread_torch():
    """The torch ops the GUI thread runs on more than one image's scores (1000 classes):
    whole-folder work there would start a second OpenMP team and slow every latency the
    window measures (ui.runner). The mode is per thread: the jobs' ops are not seen."""
    import torch
    from torch.overrides import TorchFunctionMode

    seen: list[str] = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            values = list(args) + list((kwargs or {}).values())
            name = getattr(func, "__name__", str(func))
            if name not in ("__len__", "__get__") and any(isinstance(a, torch.Tensor) and a.numel() > 1000
                                                          for a in values):
                seen.append(name)
            return func(*args, **(kwargs or {}))

    with Spy():
        yield seen


@pytest.mark.gui
def test_report_and_copied_command_give_the_same_numbers(qtbot, folder, tmp_path, gui_thread_torch):
    w = _open(qtbot, source=str(folder))
    target = OptimizationConfig(sparsity=0.3, bits=8)
    w.set_config(target)
    qtbot.waitUntil(lambda: w.report() is not None and w.report()["config"]["bits"] == 8, timeout=LONG)
    report = w.report()
    assert report["images"] == 6 and report["labelled"] == 6
    command = w.controller.command()
    assert "--bits 8" in command and "--sparsity 0.3" in command
    _assert_same(report, _run(command))
    # compare --config reads the config block of a report
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(report))
    _assert_same(report, _run(f"python -m workbench compare --images {shlex.quote(str(folder))} --json",
                              "--config", str(saved)))
    assert not gui_thread_torch, sorted(set(gui_thread_torch))
    w.close()


@pytest.mark.data
@pytest.mark.gui
def test_report_matches_compare_on_shared_photos(qtbot, imagenet_sample, tmp_path):
    subset = tmp_path / "fifty"
    subset.mkdir()
    for p in sorted(imagenet_sample.iterdir())[:50]:
        (subset / p.name).symlink_to(p)
    w = _open(qtbot, source=str(subset))
    w.set_config(OptimizationConfig(bits=4))
    qtbot.waitUntil(lambda: w.report() is not None and w.report()["config"]["bits"] == 4, timeout=LONG)
    _assert_same(w.report(), _run(w.controller.command()))
    w.close()


@pytest.mark.data
def test_accuracy_counts_only_the_images_after_the_calibration_images(imagenet_sample, tmp_path):
    from workbench.core import session
    from workbench.core.compare import MIN_HELD_OUT, scored_from
    from workbench.core.config import MeasureSettings
    from workbench.core.measure import predict

    assert scored_from(8 + MIN_HELD_OUT, 8) == 8 and scored_from(7 + MIN_HELD_OUT, 8) == 0
    subset = tmp_path / "sixty"
    subset.mkdir()
    for p in sorted(imagenet_sample.iterdir())[:62]:
        (subset / p.name).symlink_to(p)
    cli = _run(f"python -m workbench compare --images {shlex.quote(str(subset))} --bits 8 --calibration 4 --json")
    assert cli["images"] == 62 and cli["scored"] == {"first": 4, "images": 58, "labelled": 58,
                                                     "calibration_included": False, "spread": True}
    # the same figure computed here on frames 5..62 only
    ws = None
    for step in session.load_workspace("efficientnet_lite0", str(subset), MeasureSettings(calibration_images=4),
                                       first=62):
        ws = step if not isinstance(step, str) else ws
    # the four that calibrate are spread over the folder (sorted by class), the others follow in name order
    names = sorted(p.name for p in subset.iterdir())
    assert [Path(f.origin).name for f in ws.frames] == [names[i] for i in (7, 23, 38, 54)] + [
        n for i, n in enumerate(names) if i not in (7, 23, 38, 54)]
    probs = predict(ws.loaded.model, ws.inputs[4:])
    assert cli["original"]["top1"] == probs.accuracy(ws.labels[4:])[0]
    # the window's running evaluation counts the same frames and still predicts all of them
    steps = list(session.evaluate_steps(ws, ws.loaded.model, 4))
    assert [s for s in steps if isinstance(s, str)] == [f"predicting the calibration images too: {k}/4" for k in (1, 2, 3)]
    steps = [s for s in steps if not isinstance(s, str)]
    assert [p.done for p in steps] == list(range(1, 59)) + [58]
    assert steps[-1].labelled == 58 and steps[-1].top1("original") == pytest.approx(cli["original"]["top1"])
    assert steps[-1].final[0].probs.shape[0] == 62 and all(p.final is None for p in steps[:-1])


@pytest.mark.gui
def test_no_busy_animation_while_a_latency_is_timed(qtbot, folder):
    """A step without a count (latency timing among them) hides the progress bar instead of
    starting Qt's busy animation: it repaints without end, under Xvfb it took 40 % of a core,
    and the window's latencies came out above the CLI's."""
    w = _open(qtbot, source=str(folder))
    seen = []  # connected after the window's own slot, so this sees the bar as it left it
    w.controller.progress.connect(lambda step: seen.append((step, w.progress.isHidden(), w.progress.maximum())))
    w.set_config(OptimizationConfig(bits=8))
    qtbot.waitUntil(lambda: w.report() is not None and w.report()["config"]["bits"] == 8, timeout=LONG)
    assert any(step.startswith("measuring latency") and hidden for step, hidden, _ in seen), seen
    assert all(hidden or maximum > 0 for _, hidden, maximum in seen), seen
    w._on_progress("reading 3/10")
    assert not w.progress.isHidden() and (w.progress.value(), w.progress.maximum()) == (3, 10)
    w._on_progress("measuring latency")
    assert w.progress.isHidden() and w.progress.maximum() > 0
    w.close()


@pytest.mark.gui
def test_bits_slider_to_4_gives_weights_only(qtbot):
    w = _open(qtbot)
    qtbot.waitUntil(lambda: w.ws is not None, timeout=LONG)
    w.panel.bits_slider.setValue(BIT_STOPS.index(4))
    qtbot.waitUntil(lambda: w.shown_config is not None and w.shown_config.bits == 4, timeout=LONG)
    assert w.shown_config.quant_scheme == "weights" == OptimizationConfig(bits=4).quant_scheme
    assert "weights only" in w.panel.quant_scheme.currentText()
    w.panel.bits_slider.setValue(BIT_STOPS.index(8))
    assert "weights + activations" in w.panel.quant_scheme.currentText()
    w.close()


@pytest.mark.gui
def test_a_stale_result_never_replaces_a_newer_request(qtbot):
    w = _open(qtbot)
    qtbot.waitUntil(lambda: w.shown_config is not None, timeout=LONG)
    measured, progress = [], []
    w.controller.measured.connect(lambda m: measured.append(m.optimized.config))
    w.controller.progress.connect(progress.append)
    w.panel.sparsity_slider.setValue(30)
    qtbot.waitUntil(lambda: any("prun" in p for p in progress), timeout=LONG)  # the first job is under way
    w.panel.sparsity_slider.setValue(40)
    qtbot.waitUntil(lambda: w.shown_config is not None and w.shown_config.sparsity == 0.4, timeout=LONG)
    qtbot.waitUntil(lambda: bool(measured), timeout=LONG)
    qtbot.wait(1000)  # room for a stale result to arrive
    assert measured and all(c.sparsity == 0.4 for c in measured)
    assert w.current.config.sparsity == 0.4 and w.controller.measured_result.optimized.config.sparsity == 0.4
    w.close()


@pytest.mark.gui
def test_closing_with_jobs_in_flight_is_clean(qtbot, capfd):
    w = _open(qtbot)
    qtbot.waitUntil(lambda: w.shown_config is not None, timeout=LONG)
    progress = []
    w.controller.progress.connect(progress.append)
    w.set_config(OptimizationConfig(sparsity=0.5, prune_method="unstructured-obs", bits=8))
    qtbot.waitUntil(lambda: bool(progress), timeout=LONG)
    assert w.runner.busy()
    w.close()
    assert not w.runner.running()
    assert not [t for t in threading.enumerate() if t.name.startswith("workbench-")]
    qtbot.wait(200)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "RuntimeError" not in err, err


def test_jobs_take_turns_on_one_thread(qtbot):
    """Every job runs on the same worker thread (one OpenMP team: a second idle team doubles
    a model's latency on 2 cores), a step at a time, and the current image's predictions
    go before the steps of longer jobs."""
    from workbench.ui.runner import Runner

    ran: list[tuple[str, int]] = []
    started, release = threading.Event(), threading.Event()

    def job(name, steps):
        for _ in range(steps):
            ran.append((name, threading.get_ident()))
            yield f"{name} step"
        return name

    results = []
    runner = Runner()
    runner.submit("load", lambda: started.set() or release.wait(10))  # holds the worker while the others queue
    assert started.wait(10)
    runner.submit("optimize", job, "optimize", 4, on_result=results.append)
    runner.submit("evaluate", job, "evaluate", 4, on_result=results.append)
    runner.submit("infer", lambda: ran.append(("infer", threading.get_ident())) or "frame", on_result=results.append)
    release.set()
    qtbot.waitUntil(lambda: len(results) == 3, timeout=30_000)
    assert len({ident for _, ident in ran}) == 1 and threading.get_ident() not in {i for _, i in ran}
    names = [n for n, _ in ran]
    assert names == ["infer"] + ["optimize", "evaluate"] * 4, names  # first, then in turns
    assert runner.shutdown() and not runner.running()


def test_timing_holds_the_apps_other_jobs(qtbot, tiny, tiny_inputs):
    """While a latency is measured, no step of another job runs (they wait at their next step)."""
    import torch

    from workbench.core.measure import measure_latency
    from workbench.ui.runner import Runner

    steps: list[tuple[float, float]] = []
    timed: list[tuple[float, float]] = []
    stop = threading.Event()

    def burner():
        a = torch.randn(400, 400)
        while not stop.is_set():
            start = time.perf_counter()
            for _ in range(20):
                a = (a @ a).tanh_()
            steps.append((start, time.perf_counter()))
            yield "burning"

    def measure():
        timed.append(time.perf_counter())
        latency = measure_latency(tiny, tiny_inputs[0], runs=200, warmup=0)
        timed.append(time.perf_counter())
        return latency

    runner = Runner()
    runner.submit("burn", burner)
    qtbot.waitUntil(lambda: len(steps) > 3, timeout=30_000)
    done = []
    runner.submit("measure", measure, on_result=done.append)
    qtbot.waitUntil(lambda: bool(done), timeout=60_000)
    stop.set()
    runner.shutdown()
    # from before the first timed run to after the last (an estimate from the median once
    # reached back into the step before, on a loaded machine)
    window = (timed[0], timed[1])
    overlapping = [s for s in steps if s[0] < window[1] and s[1] > window[0]]
    assert len(steps) > 4 and not overlapping, (window, steps[-5:])


def test_models_compared_are_timed_in_turns(tiny_inputs):
    """Turns of a few runs, A B, then B A, ...: both medians see the same load (long back-to-back
    blocks drift on a shared machine); each turn starts with an untimed run."""
    import time as _time

    from workbench.core.measure import measure_latencies

    calls = []

    def model(name, seconds):
        def run(_x):
            calls.append(name)
            _time.sleep(seconds)
        return run

    a, b = measure_latencies([model("a", 0.002), model("b", 0.006)], tiny_inputs[0], runs=8, warmup=1, block=3)
    assert calls == ["a", "b"] + ["a"] * 4 + ["b"] * 4 + ["b"] * 4 + ["a"] * 4 + ["a"] * 3 + ["b"] * 3
    assert 1.5 < a.median < 5 and 5 < b.median < 12 and a.runs == b.runs == 8


class SlowInTheParent:
    """A model that runs in 2 ms in a child process and in 30 ms in the process that made it."""

    def __init__(self, keep=None):
        import os

        self.parent, self.keep = os.getpid(), keep

    def __call__(self, x):
        import os

        time.sleep(0.002 if os.getpid() != self.parent else 0.03)
        return x


def test_the_reported_latencies_are_timed_in_a_fresh_process(tiny_inputs):
    """``paired_latency`` (the window's and ``compare``'s) times in a child process, whatever this one
    ran before; a model that cannot be pickled is timed here."""
    from workbench.core.measure import measure_latencies_apart

    a, b = measure_latencies_apart([SlowInTheParent(), SlowInTheParent()], tiny_inputs[0], runs=6, warmup=1)
    assert a.median < 15 and b.median < 15 and a.runs == b.runs == 6, (a, b)
    here = measure_latencies_apart([SlowInTheParent(keep=lambda: None)], tiny_inputs[0], runs=4, warmup=1)[0]
    assert here.median > 25, here


def test_gui_chores_wait_while_a_latency_is_timed(qtbot):
    """Plot redraws (and memory samples) skip their turn while a model is timed alone, so the
    GUI thread takes no core from the measurement."""
    from workbench.core.locks import quiet, timing
    from workbench.ui.plots import Plots

    plots = Plots()
    plots.add_rss(100.0)
    assert not timing()
    with quiet():
        assert timing()
        plots.redraw()
        assert plots._dirty
    assert not timing()
    plots.redraw()
    assert not plots._dirty
    for w in plots.widgets():
        w.deleteLater()


def test_the_agreement_legend_names_only_the_lines_it_draws(qtbot):
    """Without labels only the optimized model has a line (its agreement with the original):
    no legend entry for a line that is never drawn."""
    from workbench.ui.plots import Plots

    plots = Plots()
    names = lambda: [label.text for _, label in plots.accuracy.getPlotItem().legend.items]  # noqa: E731
    for key in ("original", "optimized"):
        plots.reset_accuracy(key, labelled=False)
    assert names() == ["optimized, with the original"]
    for key in ("original", "optimized"):
        plots.reset_accuracy(key, labelled=True)
    assert names() == ["original", "optimized"]
    for w in plots.widgets():
        w.deleteLater()


def test_latency_plot_starts_at_zero(qtbot):
    """Two nearly equal medians must not fill the plot's height (auto-range zooms into 0.2 ms)."""
    from workbench.ui.plots import Plots

    plots = Plots()
    plots.add_latency(23.3, 23.5)
    plots.redraw()
    low, high = plots.latency.getViewBox().viewRange()[1]
    assert low == 0 and 23.5 < high < 30
    for w in plots.widgets():
        w.deleteLater()


def test_latency_plot_counts_configurations_in_whole_numbers(qtbot):
    """Two or three configurations tried: the axis read 0, 0.5, 1, 1.5, 2."""
    from workbench.ui.plots import Plots

    plots = Plots()
    plots.latency.resize(400, 200)
    for _ in range(3):
        plots.add_latency(23.3, 23.5)
    plots.redraw()
    low, high = plots.latency.getViewBox().viewRange()[0]
    ticks = [v for _, values in plots.latency.getAxis("bottom").tickValues(low, high, 400) for v in values]
    assert ticks and all(float(v).is_integer() for v in ticks)
    assert list(plots.frame_no) == [1, 2, 3]  # the first configuration is number 1
    for w in plots.widgets():
        w.deleteLater()


def test_trade_off_plot_places_each_configuration_by_the_original_timed_beside_it(qtbot):
    """The original is re-timed beside every configuration, and on a machine whose speed changes
    its median moved 14.4 -> 23.0 ms between two of them (docs/benchmarks.md, session 36): points
    in milliseconds taken at different times showed 50 % zeros in dense kernels (no speedup) as
    1.6x faster than the original."""
    from workbench.core.config import OptimizationConfig
    from workbench.ui.plots import Plots, TradeoffPoint

    plots = Plots()
    zeros = OptimizationConfig(sparsity=0.5)
    plots.add_point(TradeoffPoint(zeros, 14.6, 10_147_900, 0.833, original_ms=14.4))  # a fast moment
    plots.add_point(TradeoffPoint(OptimizationConfig(bits=8), 10.6, 5_196_983, 0.875, original_ms=23.0))  # slow
    plots.add_point(TradeoffPoint(OptimizationConfig(), 23.0, 18_873_967, 0.875))
    plots.redraw()
    xs = dict(zip((p["data"] for p in plots.scatter.data), plots.scatter.data["x"]))
    assert xs[0] == pytest.approx(14.6 / 14.4, abs=1e-4) and xs[1] == pytest.approx(10.6 / 23.0, abs=1e-4)
    assert xs[2] == 1.0
    assert plots.front() == ([0.4609], [0.875])  # 50 % zeros: slower than int8 and less accurate
    tip = plots._tip(xs[1], 0.875, 1)
    assert "10.6 ms beside the original's 23.0 ms (0.46×)" in tip and "5.20 MB" in tip
    for w in plots.widgets():
        w.deleteLater()


def test_trade_off_plot_latency_starts_at_zero(qtbot):
    """Two nearly equal medians (no speedup: 50 % zeros in dense kernels) must not sit at the
    plot's two edges, as auto-range put them, which read as a speedup."""
    from workbench.core.config import OptimizationConfig
    from workbench.ui.plots import Plots, TradeoffPoint

    plots = Plots()
    plots.add_point(TradeoffPoint(OptimizationConfig(), 17.02, 18_873_967, 0.875))
    plots.add_point(TradeoffPoint(OptimizationConfig(sparsity=0.5), 16.87, 10_147_900, 0.833, 17.02))
    plots.redraw()
    low, high = plots.tradeoff.getViewBox().viewRange()[0]
    assert low == 0 and 1.0 < high < 1.25
    bottom, top = plots.tradeoff.getViewBox().viewRange()[1]  # the legend (top left) clears every point
    assert bottom < 0.833 and (top - 0.875) / (top - bottom) >= 0.2
    vb = plots.tradeoff.getViewBox()  # a user's zoom (here on the latency axis alone) stays
    vb.setXRange(0.98, 1.01, padding=0)
    vb.sigRangeChangedManually.emit([True, False])
    plots.add_rss(100.0)
    plots.redraw()
    assert vb.viewRange()[0] == [0.98, 1.01]
    for w in plots.widgets():
        w.deleteLater()
    plots = Plots()  # one point at agreement 1.0: the axis must not run to 1.4
    plots.add_point(TradeoffPoint(OptimizationConfig(), 16.0, 18_873_967, 1.0))
    plots.redraw()
    assert plots.tradeoff.getViewBox().viewRange()[1][1] <= 1.1
    for w in plots.widgets():
        w.deleteLater()


def test_allocation_plot_spans_every_layer_before_sensitivity(qtbot):
    """The allocation plot shares its layer axis with the sensitivity plot; while that one was
    empty, its range (0 to 1) showed two bars of a 64-layer allocation."""
    from workbench.ui.layers import LayersView

    view = LayersView()
    qtbot.addWidget(view)
    names = [f"layer{i}" for i in range(64)]
    view.show_allocation({"sparsity": {n: 0.5 for n in names}}, names)
    low, high = view.allocation.getViewBox().viewRange()[0]
    assert low <= 0 and high >= 63


def test_layers_not_measured_do_not_look_measured(qtbot):
    """Before Measure sensitivity, an allocation gives the view its layer names: the sensitivity
    plot must not then draw one solid bar per layer (read as "all equally sensitive")."""
    from workbench.core.sensitivity import LayerSensitivity
    from workbench.ui.layers import LayersView

    view = LayersView()
    qtbot.addWidget(view)
    names = [f"layer{i}" for i in range(4)]
    view.show_allocation({"sparsity": {n: 0.5 for n in names}}, names)
    view._redraw()
    solid = lambda: [b.color().alpha() == 255 for b in view.sens_bars.opts["brushes"]]  # noqa: E731
    assert solid() == [False] * 4
    assert "not measured" in view.sensitivity.getPlotItem().titleLabel.text
    view.show_sensitivity({n: LayerSensitivity(n, 10, 0.01 * (i + 1), 0.9) for i, n in enumerate(names)},
                          "rounded to 4 bits")
    assert solid() == [True] * 4
    assert "not measured" not in view.sensitivity.getPlotItem().titleLabel.text


def test_a_structured_allocation_is_drawn_per_layer_of_its_blocks(qtbot):
    """Structured pruning's allocation is per block (kept share of hidden channels): each layer of
    a block shows the share removed; the stem and the head, outside any block, show none."""
    from workbench.ui.layers import LayersView

    view = LayersView()
    qtbot.addWidget(view)
    names = ["stem.conv", "blocks.1.0.conv_pw", "blocks.1.0.conv_dw", "blocks.1.0.conv_pwl",
             "blocks.10.0.conv_pw", "head.conv", "classifier"]
    view.show_allocation({"kept_channels": {"blocks.1.0": 0.75, "blocks.10.0": 0.5}}, names)
    heights = list(view.alloc_bars.opts["height"])
    assert heights == pytest.approx([0, 25, 25, 25, 50, 0, 0])
    assert "channels removed" in view.allocation.getAxis("left").labelText
    assert "kept_channels" not in view.allocation.getPlotItem().titleLabel.text


_MALLOC_PROBE = """
import ctypes, json, threading
from workbench.core.process import fix_allocator, machine, setup_process

fix_allocator()  # first thing, as the CLI and the window do

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
setup_process()
before = libc.mallinfo2().hblkhd
block = libc.malloc(8 << 20)  # below the fixed 32 MiB threshold: from the heap, not a mapping of its own
mapped = libc.mallinfo2().hblkhd - before
libc.free(ctypes.c_void_p(block))
worker = threading.Thread(target=lambda: libc.free(ctypes.c_void_p(libc.malloc(1 << 20))))  # as the job thread
worker.start()
worker.join()
libc.malloc_stats()  # to stderr: "Arena N:" for each arena
print(json.dumps({"malloc": machine()["malloc"], "mapped": mapped}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds: Linux only")
def test_the_allocator_is_fixed_for_every_process_that_times():
    """Latencies must not follow the process's history: glibc's adaptive mmap threshold made the
    window's start-up latency 1.4x compare's, and a thread's own arena made the window's job
    thread time 1.5x slow. fix_allocator fixes the thresholds and keeps one arena, and says so."""
    out = subprocess.run([sys.executable, "-c", _MALLOC_PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout)
    assert probe["malloc"] == {"mmap_threshold": 32 << 20, "trim_threshold": 256 << 20, "arena_max": 1}
    assert probe["mapped"] == 0
    assert out.stderr.count("Arena ") == 1, out.stderr  # the worker thread allocated from the main arena


@pytest.mark.gui
def test_recovered_report_and_copied_command_give_the_same_numbers(qtbot, folder, tmp_path, monkeypatch):
    """After *Recover accuracy* the copied command replays the distillation steps the window kept."""
    import workbench.ui.controller as controller

    monkeypatch.setattr(controller, "RECOVER_SECONDS", 3.0)
    w = _open(qtbot, source=str(folder))
    w.set_config(OptimizationConfig(sparsity=0.3))
    qtbot.waitUntil(lambda: w.report() is not None and w.report()["config"]["sparsity"] == 0.3, timeout=LONG)
    assert "--recover-steps" not in w.controller.command()
    w.controller.recover()
    qtbot.waitUntil(lambda: w.report() is not None and w.report()["optimized"]["recovered_steps"] is not None,
                    timeout=LONG)
    report = w.report()
    kept = report["optimized"]["recovered_steps"]
    assert kept >= 1 and f"--recover-steps {kept}" in w.controller.command()
    assert w.optimized_pane.title().endswith(" + distilled")
    cli = _run(w.controller.command())
    _assert_same(report, cli)
    assert cli["optimized"]["methods"] == report["optimized"]["methods"]
    assert cli["optimized"]["kl"] == pytest.approx(report["optimized"]["kl"], rel=1e-3, abs=1e-7)
    saved = tmp_path / "report.json"  # a saved report replays its steps too
    saved.write_text(json.dumps(report))
    again = _run(f"python -m workbench compare --images {shlex.quote(str(folder))} --json", "--config", str(saved))
    _assert_same(report, again)
    assert again["optimized"]["methods"] == report["optimized"]["methods"]
    session = w.explorer.save_session(str(tmp_path / "session.json"))  # and so does a saved session
    w.close()
    other = _open(qtbot, source=str(folder))
    qtbot.waitUntil(lambda: other.controller.ws is not None, timeout=LONG)
    assert other.explorer.open_session(str(session))
    qtbot.waitUntil(lambda: other.report() is not None and other.report()["optimized"]["recovered_steps"] == kept,
                    timeout=LONG)
    reopened = other.report()
    _assert_same(report, reopened)
    assert reopened["optimized"]["methods"] == report["optimized"]["methods"]
    assert reopened["optimized"]["kl"] == pytest.approx(report["optimized"]["kl"], rel=1e-3, abs=1e-7)
    assert other.optimized_pane.title().endswith(" + distilled")
    other.close()


def test_tied_scores_give_one_top1_in_the_pane_and_the_report():
    """int8 logits are quantized and tie often: the pane's top-1 and the report's agree on ties."""
    import torch
    from torch import nn

    from workbench.core.measure import Predictions
    from workbench.core.session import predict_one

    class Tied(nn.Module):
        def forward(self, x):
            return torch.zeros(1, 1000).index_fill(1, torch.arange(0, 1000, 7), 3.0)  # 143 classes tie

    p = predict_one(Tied(), torch.zeros(1, 3, 8, 8))
    assert p.top1 == 0 == int(Predictions(p.probs[None]).top1[0])
    assert [i for i, _ in p.top5] == [0, 7, 14, 21, 28]
    assert Predictions(p.probs[None]).accuracy([0]) == (1.0, 1.0)
