import json

import pytest
from conftest import write_images

from workbench.cli import main


def test_compare_json_on_sample_photos(capsys, tmp_path):
    code = main(["compare", "--images", "samples", "--limit", "3", "--bits", "8", "--runs", "3",
                 "--calibration", "3", "--out", str(tmp_path), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 3 and report["labelled"] == 0 and report["skipped"] == []
    o, q = report["original"], report["optimized"]
    assert o["top1"] is None and o["top5"] is None
    for key in ("latency_ms", "size_bytes", "params", "nonzero_params", "macs"):
        assert key in o and key in q
    assert q["latency_ratio"] == round(q["latency_ms"]["median"] / o["latency_ms"]["median"], 4)
    assert q["kernels"].startswith("int8") and q["simulated"] is False
    assert 0 <= q["agreement"] <= 1 and q["kl"] >= 0
    assert q["size_bytes"] == (tmp_path / "optimized.pt").stat().st_size
    assert q["size_bytes"] < 0.4 * o["size_bytes"]


def test_compare_table_with_a_broken_image(capsys, tmp_path, monkeypatch):
    import tempfile

    write_images(tmp_path, ["n01440764_a.png", "n01443537_b.png"], size=(64, 64))
    (tmp_path / "n01484850_c.jpg").write_bytes(b"garbage")
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    code = main(["compare", "--images", str(tmp_path), "--bits", "4", "--runs", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "simulated" in out and "skipped 1 unreadable" in out and "top-1" in out
    assert "latency over the original's" in out
    assert not list(temp.glob("workbench-*"))  # without --out the model files are measured, then removed


@pytest.mark.parametrize("args, message", [
    (["--sparsity", "2"], "sparsity"),
    (["--bits", "9"], "bits"),
    (["--images", "/no/such/folder"], "no such"),
    (["--model", "nonsense_net"], "unknown model"),
    (["--recover-steps", "-1"], "--recover-steps must be 0 or more"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, args, message):
    assert main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_saved_report_with_bad_recovered_steps_is_refused(capsys, tmp_path):
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps({"config": {"sparsity": 0.3}, "original": {}, "optimized": {"recovered_steps": "many"}}))
    assert main(["compare", "--config", str(saved)]) == 2
    assert "recovered_steps" in capsys.readouterr().err


def test_a_killed_compare_removes_its_temporary_files(tmp_path):
    """SIGTERM (`kill`, a job scheduler) ends `compare` as Ctrl+C does: its model files go."""
    import os
    import signal
    import subprocess
    import sys
    import time

    temp = tmp_path / "temp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp))
    cmd = [sys.executable, "-m", "workbench", "compare", "--images", "samples", "--runs", "2000"]
    with open(tmp_path / "stderr.txt", "w") as err:  # a file: a full pipe would stop the command
        run = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 600
        while not list(temp.glob("workbench-child-*/job.pt")):  # 2 x 2000 timed runs have begun in a child
            assert run.poll() is None, (tmp_path / "stderr.txt").read_text()[-2000:]
            assert time.monotonic() < deadline, "no timing after 600 s"
            time.sleep(0.2)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGTERM, (tmp_path / "stderr.txt").read_text()[-2000:]
    assert not list(temp.glob("workbench-*")), list(temp.iterdir())
