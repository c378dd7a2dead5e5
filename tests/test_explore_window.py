"""Exploration from the window: sweeps, budgets, export and sessions land on the trade-off
plot, with its Pareto front; a saved session reloads to the same points."""

import csv
import json

import cv2
import numpy as np
import pytest

from workbench.core.config import ConfigError, OptimizationConfig
from workbench.core.sessions import load_session, save_session
from workbench.ui import build_window
from workbench.ui.plots import Plots, TradeoffPoint

LONG = 300_000
GLOBAL = "unstructured-global"  # fast: no pruning database to prepare


def test_the_trade_off_plot_draws_the_pareto_front(qtbot):
    plots = Plots()
    for ms, score in ((10, 0.80), (20, 0.90), (15, 0.70), (30, 0.85), (5, None)):
        plots.add_point(TradeoffPoint(OptimizationConfig(sparsity=ms / 100), ms, 1000, score, original_ms=40))
    assert plots.front() == ([0.25, 0.5, 0.5], [0.80, 0.80, 0.90])  # 15 ms and 30 ms are dominated, 5 ms unscored
    plots.redraw()
    xs, ys = plots.front_curve.getData()
    assert list(xs) == [0.25, 0.5, 0.5]


def test_a_session_file_is_checked_when_it_is_read(tmp_path):
    path = save_session(tmp_path / "s.json", "efficientnet_lite0", None, OptimizationConfig(bits=8), [])
    assert load_session(path)["current"] == OptimizationConfig(bits=8)
    assert load_session(path)["recovered_steps"] is None
    data = json.loads(path.read_text())
    data["recovered_steps"] = -3
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="recovered_steps"):
        load_session(path)
    data["recovered_steps"] = 12
    path.write_text(json.dumps(data))
    assert load_session(path)["recovered_steps"] == 12
    data["current"]["sparsity"] = 3.0
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="sparsity must be between 0 and 0.95"):
        load_session(path)
    path.write_text('{"model": "x"}')
    with pytest.raises(ConfigError, match="not a Workbench session"):
        load_session(path)


def _labelled(tmp_path, n=4):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, wnid in enumerate(("n01440764", "n01443537", "n01484850", "n01491361")[:n]):
        cv2.imwrite(str(folder / f"{wnid}_{i}.png"), rng.integers(0, 255, (80, 80, 3), dtype=np.uint8))
    return folder


@pytest.fixture
def window(qtbot, tmp_path):
    w = build_window(source=str(_labelled(tmp_path)))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.report() is not None, timeout=LONG)
    yield w
    w.close()


@pytest.mark.gui
def test_sweep_budget_and_export_from_the_window(qtbot, window, tmp_path, monkeypatch):
    from workbench.ui import explore

    w = window
    monkeypatch.setattr(explore, "SWEEP_SPARSITY", (0.0, 0.3))
    monkeypatch.setattr(explore, "SWEEP_BITS", (32, 8))
    w.set_config(OptimizationConfig(prune_method=GLOBAL))
    qtbot.waitUntil(lambda: w.controller.config.prune_method == GLOBAL, timeout=LONG)
    w.explorer.sweep(str(tmp_path / "sweep"))
    qtbot.waitUntil(lambda: "sweep of 4 configurations" in w.status_text.text(), timeout=LONG)
    with open(tmp_path / "sweep" / "results.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4
    configs = {p.config for p in w.plots.points if p.score is not None}
    assert OptimizationConfig(sparsity=0.3, bits=8, prune_method=GLOBAL) in configs
    assert len(w.plots.front()[0]) >= 1

    w.explorer.budget("mb", 10.0, str(tmp_path / "budget"))  # int8 (5.2 MB) fits, the original does not
    qtbot.waitUntil(lambda: "within <= 10 MB" in w.status_text.text(), timeout=LONG)
    assert w.panel.config().bits == 8
    assert (tmp_path / "budget" / "results.json").is_file()

    w.explorer.export(str(tmp_path / "export"))
    qtbot.waitUntil(lambda: "exported 8-bit" in w.status_text.text(), timeout=LONG)
    assert {"model.onnx", "model.ts", "report.html"} <= {p.name for p in (tmp_path / "export").iterdir()}
    page = (tmp_path / "export" / "report.html").read_text()
    assert "Configurations tried" in page and "30% unstructured-global, 8-bit W+A" in page  # from the sweep


@pytest.mark.gui
def test_a_saved_session_reloads_to_the_same_points(qtbot, window, tmp_path):
    w = window
    earlier, target = OptimizationConfig(bits=8), OptimizationConfig(sparsity=0.3, prune_method=GLOBAL)
    for config in (earlier, target):
        w.set_config(config)
        qtbot.waitUntil(lambda config=config: w.report() is not None
                        and (w.report()["config"]["sparsity"], w.report()["config"]["bits"])
                        == (config.sparsity, config.bits), timeout=LONG)
    path = w.explorer.save_session(str(tmp_path / "session.json"))
    # the reloaded window measures its current configuration (and the original) again: compare the other one
    saved = {(p.config, p.latency_ms, p.size_bytes, p.score) for p in w.plots.points if p.config == earlier}
    assert len(saved) == 1

    other = build_window()
    qtbot.addWidget(other)
    other.show()
    qtbot.waitUntil(lambda: other.controller.ws is not None, timeout=LONG)
    assert other.explorer.open_session(str(path))
    qtbot.waitUntil(lambda: other.panel.config() == target and other.controller.ws is not None
                    and str(other.controller.source_spec) == str(w.controller.source_spec), timeout=LONG)
    qtbot.waitUntil(lambda: saved <= {(p.config, p.latency_ms, p.size_bytes, p.score) for p in other.plots.points},
                    timeout=LONG)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert not other.explorer.open_session(str(bad)) and "not a Workbench session" in other.status_text.text()
    other.close()


def test_differences_list_the_changed_frames_most_confident_first():
    from types import SimpleNamespace

    import torch

    from workbench.core.measure import Predictions
    from workbench.core.session import differences
    from workbench.core.sources import Frame

    frames = [Frame(np.zeros((2, 2, 3), np.uint8), f"/x/img{i}.png", label=i % 3) for i in range(4)]
    ref = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    new = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6]])
    rows = differences(SimpleNamespace(frames=frames), (Predictions(ref), Predictions(new)))
    assert [r["index"] for r in rows] == [1, 2]  # frame 1 lost 0.6 of its class, frame 2 lost 0.2
    assert rows[0]["name"] == "img1.png" and rows[0]["original"] == 1 and rows[0]["optimized"] == 2
    assert rows[0]["shift"] == pytest.approx(-0.6) and rows[1]["shift"] == pytest.approx(-0.2)


@pytest.mark.gui
def test_where_they_differ_keeps_both_predictions_in_view(qtbot):
    """Long file names must not push the original's and the optimized model's classes out of
    the visible width; a shortened cell keeps its whole text in its tooltip."""
    from workbench.ui.differences import DifferencesView

    view = DifferencesView()
    qtbot.addWidget(view)
    view.resize(620, 400)
    view.show()
    classes = ["American Staffordshire terrier", "Staffordshire bull terrier"]
    row = {"index": 3, "name": "n02093428_American_Staffordshire_terrier_and_a_long_name.JPEG", "label": 0,
           "original": 0, "original_p": 0.55, "optimized": 1, "optimized_p": 0.41, "shift": -0.3}
    view.show_rows([row], 200, classes)
    qtbot.wait(50)
    header = view.table.horizontalHeader()
    assert sum(header.sectionSize(c) for c in range(header.count())) <= view.table.viewport().width()
    assert not view.table.horizontalScrollBar().isVisible()
    assert view.table.item(0, 3).toolTip() == "Staffordshire bull terrier 41%"
    assert view.table.item(0, 0).toolTip() == row["name"]
    # the images that calibrate (before the report's scored.first) say so: their figures are optimistic
    later = {**row, "index": 150, "name": "n01440764_tench.JPEG", "shift": -0.1}
    view.show_rows([row, later], 200, classes, scored_from=128)
    assert "1 among the 128 that calibrate" in view.summary.text()
    assert view.table.item(0, 0).text().startswith("calibrates: ")
    assert view.table.item(1, 0).text() == "n01440764_tench.JPEG"


@pytest.mark.gui
def test_where_they_differ_shows_a_changed_image_in_both_panes(qtbot, window):
    w = window
    w.set_config(OptimizationConfig(bits=3))  # 3-bit weights change some of four random images
    qtbot.waitUntil(lambda: w.report() is not None and w.report()["config"]["bits"] == 3, timeout=LONG)
    qtbot.waitUntil(lambda: "of 4 images" in w.differences.summary.text(), timeout=LONG)
    report = w.report()["optimized"]
    assert len(w.differences.rows) == round((1 - report["agreement"]) * 4)
    if w.differences.rows:
        target = w.differences.rows[0]["index"]
        w.differences.table.cellClicked.emit(0, 0)
        qtbot.waitUntil(lambda: w.controller.index == target)


def test_the_running_interval_contains_the_final_top1(imagenet_sample, monkeypatch):
    """The accuracy plot's 95 % band around the running top-1 holds the final top-1 at (nearly)
    every checkpoint, over several shuffles: a calibration check, so a few misses are allowed."""
    from workbench.core import session
    from workbench.core.config import MeasureSettings
    from workbench.core.stats import wilson_interval

    ws = None
    for step in session.load_workspace("efficientnet_lite0", str(imagenet_sample), MeasureSettings(), limit=120,
                                       first=120):
        ws = step if not isinstance(step, str) else ws
    checks, misses = 0, []
    for seed in range(4):
        monkeypatch.setattr(session, "EVAL_SEED", seed)
        steps = [s for s in session.evaluate_steps(ws, ws.loaded.model, MeasureSettings().calibration_images)
                 if not isinstance(s, str)]
        final = steps[-1].top1("original")
        for p in steps[19:100:20]:  # after 20, 40, ... 100 images
            lo, hi = wilson_interval(p.original_hits, p.labelled)
            checks += 1
            if not lo <= final <= hi:
                misses.append((seed, p.done, round(lo, 3), round(hi, 3), round(final, 3)))
    assert checks == 20 and len(misses) <= 3, misses


@pytest.mark.gui
def test_a_cancelled_evaluation_stops_within_one_image(qtbot, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(40):
        cv2.imwrite(str(folder / f"n01440764_{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    w = build_window(source=str(folder))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.report() is not None, timeout=LONG)
    seen = []
    w.controller.evaluated.connect(lambda p: seen.append(p.done))
    w.set_config(OptimizationConfig(bits=8))
    qtbot.waitUntil(lambda: len(seen) >= 1, timeout=LONG)
    w.controller.cancel()
    at_cancel = seen[-1]
    qtbot.wait(3000)
    assert seen[-1] <= at_cancel + 1 and seen[-1] < 40 and w.report() is None
    w.close()
