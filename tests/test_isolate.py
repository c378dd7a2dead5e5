"""workbench.core.isolate: a step generator run in a child process."""

import os

import psutil
import pytest
import torch

from workbench.core.isolate import isolated


def counting_steps(n, fail=False, extra=None):
    for i in range(n):
        yield f"step {i + 1}/{n}"
    if fail:
        raise ValueError("no such layer: blocks.99")
    yield {"pid": os.getpid(), "n": n}


def test_a_step_generator_runs_in_a_child_and_its_progress_and_value_come_back():
    steps = list(isolated(counting_steps, 3))
    assert steps[:3] == ["step 1/3", "step 2/3", "step 3/3"]
    value = steps[-1]
    assert value["n"] == 3 and value["pid"] != os.getpid()
    assert not psutil.Process().children()


def test_an_error_in_the_child_is_raised_here_with_its_message():
    with pytest.raises(RuntimeError, match="counting_steps failed.*no such layer: blocks.99"):
        list(isolated(counting_steps, 2, fail=True))
    assert not psutil.Process().children()


def test_what_cannot_be_pickled_runs_here_and_says_so(caplog):
    # a lambda cannot be pickled (and is truthy): the generator's own ValueError, raised here,
    # not the RuntimeError that reports a child's failure
    with pytest.raises(ValueError, match="blocks.99"):
        list(isolated(counting_steps, 1, fail=lambda: None))
    assert list(isolated(counting_steps, 1, extra=lambda: None))[-1]["pid"] == os.getpid()
    assert "counting_steps runs in this process" in caplog.text


def _only_in(pid):
    if os.getpid() != pid:
        raise AttributeError("cannot be rebuilt in another process")


class RebuiltOnlyHere:
    """Pickles here, fails to unpickle in any other process (as the window's int8 model did)."""

    def __reduce__(self):
        return _only_in, (os.getpid(),)


def test_what_the_child_cannot_load_runs_here_and_the_log_says_why(caplog):
    assert list(isolated(counting_steps, 1, extra=RebuiltOnlyHere()))[-1]["pid"] == os.getpid()
    assert "the child could not load it: AttributeError: cannot be rebuilt in another process" in caplog.text


def running_model(model, x):
    yield "loaded"
    with torch.inference_mode():
        yield {"pid": os.getpid(), "out": model(x)}


def test_an_int8_model_goes_to_the_child(tiny, tiny_inputs, caplog):
    """torch's quantized layers pickle only their own fields: plain pickle rebuilt them without a
    module's inner dictionaries, so the int8 pair was timed in the window's own process."""
    from workbench.core.quantize import quantize_int8

    *_, q = quantize_int8(tiny, tiny_inputs)
    assert {"ConvReLU2d", "Conv2d", "Linear"} <= {type(m).__name__ for m in q.modules()
                                                 if "quantized" in type(m).__module__}
    value = list(isolated(running_model, q, tiny_inputs[0]))[-1]
    assert value["pid"] != os.getpid() and "runs in this process" not in caplog.text
    with torch.inference_mode():
        assert torch.equal(value["out"], q(tiny_inputs[0]))


def test_closing_kills_the_child():
    steps = isolated(counting_steps, 10**6)
    assert next(steps) == "step 1/1000000"
    children = psutil.Process().children()
    assert len(children) == 1
    steps.close()
    assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE


def test_temporary_folders_of_dead_processes_are_removed(tmp_path, monkeypatch):
    """A killed window, command or child leaves its folder; the next one to make a folder removes it."""
    import subprocess
    import sys
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [tmp_path / f"workbench-{kind}-{dead.pid}-abc" for kind in ("child", "window", "compare")]
    mine = tmp_path / f"workbench-window-{os.getpid()}-abc"
    other = tmp_path / "workbench-tests-12345678"  # not named after a process
    for folder in (*stale, mine, other):
        folder.mkdir()
        (folder / "job.pt").write_bytes(b"x")
    assert list(isolated(counting_steps, 1))[-1]["n"] == 1
    assert not any(folder.exists() for folder in stale)
    assert mine.exists() and other.exists()  # this process's own folders are its business
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, other.name])  # its job folder is gone
