"""Heavy preparations run in a child process, so that this process's heap stays as it was.

Preparing an OBC pruning database, pruning channels with least squares, distilling and rounding
weights below 8 bits (layer sensitivities, GPTQ) allocate and free gigabytes of temporaries.
glibc's heap is left fragmented, and every model the process times afterwards reads 4-20 %
slower than in a process that did not run the job (docs/benchmarks.md, sessions 26 to 28): the
latencies the window and ``compare`` show must be what a user would get. :func:`isolated` runs
such a step generator in a fresh Python process and hands back its result; this process only
loads it.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from .files import temp_dir
from .locks import running

log = logging.getLogger(__name__)
_UNREADABLE_JOB = 3  # the child's exit status when it cannot unpickle the job


def _rebuilt_module(cls: type, state: tuple) -> nn.Module:
    module = cls.__new__(cls)
    nn.Module.__init__(module)
    module.__setstate__(state)
    return module


class _Pickler(pickle.Pickler):
    """A pickler that also stores torch's quantized layers (``ConvReLU2d``, ``Conv2d``...): their
    ``__getstate__`` returns only their own fields, so plain pickle rebuilds them without a
    module's inner dictionaries, and with torch 2.14 the int8 model cannot be loaded back
    ("'ConvReLU2d' object has no attribute '_modules'"). They are rebuilt as their own
    ``__deepcopy__`` rebuilds them."""

    def reducer_override(self, obj):
        if isinstance(obj, nn.Module) and type(obj).__getstate__ is not nn.Module.__getstate__:
            state = obj.__getstate__()
            if isinstance(state, tuple):
                return _rebuilt_module, (type(obj), state)
        return NotImplemented


_PICKLE = types.ModuleType("workbench_pickle")  # ``torch.save``'s ``pickle_module``
_PICKLE.Pickler = _Pickler


def isolated(steps: Callable[..., Iterator], *args, **kwargs) -> Iterator:
    """``steps(*args, **kwargs)`` (a module-level step generator: progress strings, then its
    value) run in a child process; yields the child's progress strings, then the value. Where
    the job cannot be pickled here or unpickled there (a TorchScript model, a class defined in
    a notebook), it runs here instead.

    The child runs only while this thread holds the app lock's shared side (it is stopped
    between progress lines), so no latency is timed beside it; closing the generator (cancel)
    kills it. It uses this process's torch threads and dies with this process."""
    import workbench

    from .process import timing_threads

    tmp = temp_dir("child")
    job, result = tmp / "job.pt", tmp / "result.pt"
    env = dict(os.environ)  # the child imports what this process can (the model's classes)
    paths = [str(Path(workbench.__file__).resolve().parents[1])] + [p for p in sys.path if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    pause = getattr(signal, "SIGSTOP", None)  # POSIX
    proc, unpicklable = None, None
    try:
        with running():  # the child imports torch while the job is written here: both under the lock
            with open(tmp / "stderr.txt", "wb") as err:
                proc = subprocess.Popen([sys.executable, "-c", "from workbench.core.isolate import _child; _child()"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                                        text=True, bufsize=1)
            try:
                torch.save({"steps": steps, "args": args, "kwargs": kwargs, "result": str(result),
                            "threads": timing_threads() or torch.get_num_threads()}, job, pickle_module=_PICKLE)
            except Exception as e:  # pickle cannot store it
                unpicklable = e
                proc.kill()
            try:
                if unpicklable is None:
                    proc.stdin.write(f"{job}\n")
                proc.stdin.close()
            except BrokenPipeError:  # the child died early: its status and message are read below
                pass
            if pause is not None and unpicklable is None:
                proc.send_signal(pause)
        if unpicklable is not None:
            yield from _here(steps, args, kwargs, unpicklable)
            return
        while True:
            with running():
                if pause is not None:
                    proc.send_signal(signal.SIGCONT)
                line = proc.stdout.readline()
                if pause is not None and line:
                    proc.send_signal(pause)
            if not line:
                break
            yield line.rstrip("\n")
        proc.wait()
        tail = (tmp / "stderr.txt").read_text(errors="replace").strip().splitlines()[-1:]
        if proc.returncode == _UNREADABLE_JOB:
            yield from _here(steps, args, kwargs, "the child could not load it: " + (tail[0] if tail else "?"))
            return
        if proc.returncode != 0:
            raise RuntimeError(f"{getattr(steps, '__name__', 'a preparation')} failed in its child process: "
                               + (tail[0] if tail else f"exit status {proc.returncode}"))
        with running():
            value = torch.load(result, weights_only=False)  # written by the child, in this private folder
        yield value
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()


def _here(steps: Callable[..., Iterator], args, kwargs, why) -> Iterator:
    log.warning("%s runs in this process (%s): latencies timed after it may read high",
                getattr(steps, "__name__", "a preparation"), why)
    yield from steps(*args, **kwargs)


def _child() -> None:
    """The child of :func:`isolated`; the job's path comes on stdin, once it is written."""
    if sys.platform.startswith("linux"):  # die with the parent, even while stopped (PR_SET_PDEATHSIG)
        import ctypes

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    from .process import setup_process

    path = sys.stdin.readline().strip()  # nothing: the parent could not write the job, or died
    if not path:
        return
    try:
        job = torch.load(path, weights_only=False)  # written by the parent, in its private folder
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)  # the parent's log says why
        sys.exit(_UNREADABLE_JOB)
    setup_process(job["threads"])
    value = None
    for step in job["steps"](*job["args"], **job["kwargs"]):
        if isinstance(step, str):
            print(step, flush=True)
        else:
            value = step
    torch.save(value, job["result"], pickle_module=_PICKLE)
