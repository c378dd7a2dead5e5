"""A sweep's configurations as Ray tasks (the optional extra: pip install .[ray]), on a local Ray."""

import csv
import json

import pytest
from conftest import write_images

from workbench.cli import main as run_cli  # sweep and export as the command line runs them
from workbench.core import sweep
from workbench.core.config import MeasureSettings

ray = pytest.importorskip("ray")

NAMES = ["n01440764_a.png", "n01443537_b.png", "n01484850_c.png", "n01491361_d.png"]
SAME = ("label", "sparsity", "bits", "prune_method", "quant_scheme", "runtime", "top1", "top5", "agreement",
        "size_bytes", "macs", "kernels", "simulated")  # all of results.csv but the latency




def read_rows(folder) -> list[dict]:
    with open(folder / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def model_files(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in (folder / "models").rglob("*") if p.is_file())


def test_ray_sweep_writes_the_same_rows_as_the_local_one(tmp_path, monkeypatch):
    images = tmp_path / "images"
    write_images(images, NAMES, size=(64, 64))
    configs = sweep.sweep_configs([0, 0.3], [32, 8], "unstructured-global")
    settings = MeasureSettings(calibration_images=4, latency_runs=3, warmup=1)

    local = tmp_path / "local"
    *_, result = sweep.sweep_steps("efficientnet_lite0", str(images), configs, settings, 4, local)
    sweep.write_sweep(result, local)

    # as if every task ran on another node: their files come back, and the driver writes them
    monkeypatch.setattr(sweep, "_driver_node", lambda ray: None)
    remote = tmp_path / "ray"
    try:
        code = run_cli(["sweep", "--images", str(images), "--limit", "4", "--sparsity", "0,0.3", "--bits", "32,8",
                        "--prune-method", "unstructured-global", "--runs", "3", "--calibration", "4",
                        "--ray", "--out", str(remote)])
        assert code == 0
        assert not ray.is_initialized()  # the sweep started its own Ray, and shut it down
    finally:
        ray.shutdown()

    for folder in (local, remote):
        assert all((folder / name).stat().st_size > 0 for name in ("results.csv", "results.json", "pareto.png"))
    rows, ray_rows = read_rows(local), read_rows(remote)
    assert [r["label"] for r in rows] == [c.label() for c in configs]
    assert [{k: r[k] for k in SAME} for r in ray_rows] == [{k: r[k] for k in SAME} for r in rows]
    assert all(float(r["latency_ms"]) > 0 for r in ray_rows)
    assert model_files(remote) == model_files(local)
    ray_result = json.loads((remote / "results.json").read_text())
    for row in ray_result["rows"]:  # the driver's paths, not the task's temporary folder
        assert row["report"]["optimized"]["file"].startswith(str(remote / "models"))
        assert row["report"]["original"]["file"] == str(remote / "models" / "original.pt")
    assert ray_result["ray"]["address"] == "local" and ray_result["ray"]["machines"][0]["threads"] == 1


def test_ray_progress_as_tasks_finish(tmp_path):
    """The same-node path (files written in place), one configuration: progress and shutdown."""
    images = tmp_path / "images"
    write_images(images, NAMES[:2], size=(64, 64))
    configs = sweep.sweep_configs([0], [32])
    settings = MeasureSettings(calibration_images=2, latency_runs=2, warmup=0)
    try:
        steps = list(sweep.sweep_steps("efficientnet_lite0", str(images), configs, settings, 2, tmp_path / "out",
                                       use_ray=True))
    finally:
        ray.shutdown()
    assert "config 1/1 done: original" in steps and steps[-1]["rows"][0]["agreement"] == 1.0
    assert (tmp_path / "out" / "models" / "original.pt").is_file()


def test_ray_with_a_budget_exits_2(tmp_path, capsys):
    assert run_cli(["sweep", "--budget-ms", "5", "--ray", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("workbench: error:") and "--ray" in err and len(err.splitlines()) == 1
