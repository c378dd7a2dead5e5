"""Sweeps, Pareto fronts, budget search and export (the real default model on a few generated images)."""

import csv
import json

import numpy as np
import pytest
import torch
from conftest import write_images

from workbench.cli import main as run_cli  # sweep and export as the command line runs them
from workbench.core.config import OptimizationConfig
from workbench.core.pareto import pareto_front
from workbench.core.sweep import COLUMNS, Candidate, budget_search, sweep_configs

NAMES = ["n01440764_a.png", "n01443537_b.png", "n01484850_c.png", "n01491361_d.png"]




@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    write_images(folder, NAMES, size=(64, 64))
    return folder


def test_pareto_front_hand_made_points():
    pts = [{"latency_ms": 10, "top1": 0.8}, {"latency_ms": 10, "top1": 0.8},  # a tie: both stay
           {"latency_ms": 12, "top1": 0.7},  # dominated by the first two
           {"latency_ms": 5, "top1": 0.6}, {"latency_ms": 20, "top1": 0.9},
           {"latency_ms": 20, "top1": 0.85},  # same x, lower y: dominated
           {"latency_ms": 3, "top1": None}]  # unmeasured: left out
    assert pareto_front(pts) == [0, 1, 3, 4]
    assert pareto_front(pts, lower_x_better=False) == [4]
    sizes = [{"size_bytes": 5e6, "agreement": 0.9}, {"size_bytes": 2e6, "agreement": 0.95},
             {"size_bytes": 1e6, "agreement": 0.5}]
    assert pareto_front(sizes, x="size_bytes", y="agreement") == [1, 2]
    assert pareto_front([]) == []


def test_sweep_configs_combinations_and_invalid_ones():
    configs = sweep_configs([0, 0.3, 0.3, 2], [32, 8, 4, 9], "unstructured-global")
    assert [(c.sparsity, c.bits) for c in configs] == [(0, 32), (0, 8), (0, 4), (0.3, 32), (0.3, 8), (0.3, 4)]
    assert {c.prune_method for c in configs} == {"unstructured-global"}
    assert configs[1].quant_scheme == "weights-activations" and configs[2].quant_scheme == "weights"
    assert len(configs.skipped) == 4 + 3  # every bits=9, and sparsity 2 with each valid width
    assert all("sparsity" in s["error"] or "bits" in s["error"] for s in configs.skipped)
    onnx = sweep_configs([0], [8], base=OptimizationConfig(runtime="onnxruntime"))
    assert onnx[0].runtime == "onnxruntime" and onnx[0].real_int8


def test_sweep_2x2_writes_csv_json_and_plot(images, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "sweep"
    code = run_cli(["sweep", "--images", str(images), "--limit", "4", "--sparsity", "0,0.3", "--bits", "32,8",
                    "--prune-method", "unstructured-global", "--runs", "3", "--calibration", "4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    with open(out / "results.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert tuple(lines[0]) == COLUMNS and len(lines) == 5
    result = json.loads((out / "results.json").read_text())
    rows = result["rows"]
    assert [(r["sparsity"], r["bits"]) for r in rows] == [(0, 32), (0, 8), (0.3, 32), (0.3, 8)]
    assert result["accuracy"] == "top1" and all(r["top1"] is not None for r in rows)
    assert rows[0]["agreement"] == 1.0 and rows[1]["kernels"].startswith("int8")
    assert rows[2]["prune_method"] == "unstructured-global" and rows[0]["prune_method"] is None
    for r in rows:  # each row carries its compare report, and the figures come from it
        q = r["report"]["optimized"]
        assert r["latency_ms"] == q["latency_ms"]["median"] and r["size_bytes"] == q["size_bytes"]
        assert r["report"]["images"] == 4 and r["report"]["config"]["measure"]["latency_runs"] == 3
    assert result["front_latency"] == pareto_front(rows, "latency_ratio", "top1")
    for r in rows:  # the latency front: each row against the original timed beside it
        assert r["latency_ratio"] == round(r["latency_ms"] / r["report"]["original"]["latency_ms"]["median"], 4)
    assert result["front_size"] == pareto_front(rows, "size_bytes", "top1")
    assert result["front_latency"] and result["machine"]["cores"]
    assert rows[1]["size_bytes"] < 0.4 * rows[0]["size_bytes"]
    with Image.open(out / "pareto.png") as img:
        assert img.format == "PNG" and img.size == (900, 560)
        assert len(img.convert("RGB").getcolors(1 << 20)) > 2  # something was drawn
    assert "original" in printed and "results.csv" in printed


@pytest.mark.parametrize("argv, message", [
    (["--bits", "7x"], "--bits takes comma-separated integers"),
    (["--sparsity", "0,a"], "--sparsity takes comma-separated numbers"),
    (["--sparsity", "2", "--bits", "32"], "sparsity must be between"),
    (["--limit", "0"], "--limit"),
    (["--images", "/no/such/folder"], "no such"),
    (["--model", "nonsense_net", "--bits", "32", "--sparsity", "0"], "unknown model"),
    (["--budget-ms", "5", "--bits", "8"], "pick their own candidates"),
    (["--budget-ms", "-1"], "budget must be positive"),
    (["--runs", "0"], "latency_runs"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, tmp_path, argv, message):
    assert run_cli(["sweep", "--out", str(tmp_path / "out"), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error:") and message in err and len(err.splitlines()) == 1


def test_export_files_load_and_agree(images, tmp_path, capsys):
    import onnxruntime as ort

    from workbench.core.models import load_model
    from workbench.core.sources import open_source

    out = tmp_path / "export"
    code = run_cli(["export", "--images", str(images), "--limit", "4", "--sparsity", "0.3", "--prune-method",
                    "unstructured-global", "--runs", "3", "--calibration", "4", "--out", str(out), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((out / "report.json").read_text())
    check = report["export_check"]
    assert check["images"] == 4
    for name in ("onnx", "torchscript"):
        assert check[name]["classes"] == 1000 and check[name]["same_top1"], check
    shipped = out / report["export"]["shipped"]["file"]
    assert shipped.stat().st_size == report["optimized"]["size_bytes"]
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "top-1" in page

    # load the files independently of the workbench and run them on the same inputs
    loaded = load_model("efficientnet_lite0")
    inputs = [loaded.preprocess(f.rgb) for f in open_source(str(images), 4)]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(out / "model.ts"))
    name = session.get_inputs()[0].name
    onnx_out = np.concatenate([session.run(None, {name: x.numpy()})[0] for x in inputs])
    with torch.no_grad():
        ts_out = torch.cat([scripted(x) for x in inputs])
    assert onnx_out.shape == (4, 1000) and ts_out.shape == (4, 1000)
    assert onnx_out.argmax(1).tolist() == check["top1"] == ts_out.argmax(1).tolist()


def test_export_of_real_int8(images, tmp_path):
    from workbench.core.export import export_steps

    *_, report = export_steps("efficientnet_lite0", str(images), OptimizationConfig(bits=8), limit=4,
                              out_dir=tmp_path, settings=_settings())
    check = report["export_check"]
    assert check["torchscript"]["same_top1"] and check["torchscript"]["classes"] == 1000
    assert check["onnx"]["classes"] == 1000 and 0 <= check["onnx"]["agreement"] <= 1  # ONNX Runtime's own int8
    assert "ONNX Runtime" in report["export"]["onnx"]["holds"]
    assert report["export"]["shipped"]["file"] == "optimized.pt"


def _settings():
    from workbench.core.config import MeasureSettings

    return MeasureSettings(calibration_images=4, latency_runs=3, warmup=1)


def test_budget_search_within_budget_or_none_with_reason(images, tmp_path):
    *_, found = budget_search("efficientnet_lite0", str(images), budget_ms=1e6, settings=_settings(), limit=4,
                              out_dir=tmp_path / "a")
    best = found["best"]
    assert best is not None and best["latency_ms"] <= 1e6 and best["label"] == "original"
    assert len(found["tried"]) == 1  # the original fits: nothing less accurate is measured

    four_bit = Candidate(OptimizationConfig(bits=4), 1, "original")  # float kernels: no faster than the original
    *_, none = budget_search("efficientnet_lite0", str(images), budget_ms=1e-3, settings=_settings(), limit=4,
                             out_dir=tmp_path / "b", candidates=(Candidate(OptimizationConfig(), 0, "original"),
                                                                 four_bit))
    assert none["best"] is None and "no configuration within <= 0.001 ms" in none["reason"]
    assert len(none["tried"]) == 1 and none["skipped"][0]["label"] == "4-bit W"
    assert none["budget"] == {"latency_ms": 1e-3, "size_mb": None, "max_evals": 8, "evaluations": 1}


def test_budget_search_through_the_cli(images, tmp_path, capsys):
    out = tmp_path / "budget"
    code = run_cli(["sweep", "--images", str(images), "--limit", "4", "--budget-mb", "1000", "--runs", "3",
                    "--calibration", "4", "--out", str(out)])
    assert code == 0
    assert "best: original" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert result["best"]["size_bytes"] <= 1000e6 and len(result["rows"]) == 1
    assert (out / "pareto.png").stat().st_size > 0 and len((out / "results.csv").read_text().splitlines()) == 2


def test_export_of_a_recovered_model_is_the_one_compare_replays(images, tmp_path, capsys):
    options = ["--images", str(images), "--limit", "4", "--sparsity", "0.3", "--prune-method", "unstructured-global",
               "--runs", "3", "--calibration", "4", "--recover-steps", "2", "--json"]
    assert run_cli(["export", *options, "--out", str(tmp_path / "export")]) == 0
    exported = json.loads(capsys.readouterr().out)
    assert run_cli(["compare", *options]) == 0
    compared = json.loads(capsys.readouterr().out)
    q = exported["optimized"]
    assert q["recovered_steps"] == 2 and q["methods"][-1] == "distillation (2 steps on the 4 calibration images)"
    assert q["methods"] == compared["optimized"]["methods"] and q["kl"] == compared["optimized"]["kl"]
    assert exported["export_check"]["torchscript"]["same_top1"]
