"""Process-wide state, set once by an entry point (the CLI, the app), never by a job."""

from __future__ import annotations

import logging
from pathlib import Path

_done = False
_timing_threads: int | None = None


class _DropOrtAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs advice to pre-process the model on every call."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "preprocess" not in record.getMessage()


def setup_process(threads: int | None = None) -> None:
    """torch threads, subnormal flushing and quiet third-party logging, for the whole process."""
    global _done, _timing_threads
    import torch

    if threads:
        torch.set_num_threads(threads)
    if threads or _timing_threads is None:
        _timing_threads = torch.get_num_threads()
    flush_denormals()
    if not _done:
        fix_allocator()
        logging.getLogger().addFilter(_DropOrtAdvice())
        try:
            import onnxruntime

            onnxruntime.set_default_logger_severity(3)
        except ImportError:  # pragma: no cover - a dependency, but keep the CLI usable without it
            pass
        _done = True


_ALLOCATOR = {"mmap_threshold": 32 << 20, "trim_threshold": 256 << 20, "arena_max": 1}
_allocator: dict | None = None


def fix_allocator() -> None:
    """Linux (glibc): fixed malloc thresholds for the whole process, so that a latency does not
    depend on what the process allocated and freed before it.

    glibc raises its mmap threshold to the size of the largest block freed so far: a forward pass
    then re-uses heap memory in one process and maps fresh (zeroed, faulting) pages in another.
    The same model timed 40-45 ms in a window at start-up and 23-26 ms after a pruning job had
    run (AMD EPYC, 2 threads); with these thresholds fixed the start-up read 22.7-28 ms and
    ``compare`` 20.6-20.9 ms (docs/benchmarks.md, session 25). On the Xeon the window's start-up
    figure was 1.31-1.54x ``compare``'s, and 1.00-1.07x with them fixed (session 26). The CLI and
    the window both call this, so their figures come from the same allocator settings;
    ``machine()`` reports them.

    One arena for every thread (``M_ARENA_MAX`` 1, as ``MALLOC_ARENA_MAX=1``): glibc gives each
    new thread an arena of its own, and a model timed in the window's job thread after reading
    and scoring 200 photos there read 1.3-1.5x slow in six processes of eleven (20.4-24.1 ms,
    against 14.2-16.3 in the main thread; with one arena 14.0-16.6 in eight of eight, session
    28). It takes effect for the threads that start after it, so the CLI and the window call
    this first thing.

    Not cured by this: a process that has run a heavy job times slower afterwards (a fragmented
    heap): 1.1-1.2x after a pruning database or a distillation, 4-8 % after 4-bit rounding,
    which is why those run in a child (:mod:`.isolate`); int8 calibration left no measurable
    difference (sessions 26 to 28)."""
    global _allocator
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(-3, _ALLOCATOR["mmap_threshold"]) and libc.mallopt(-1, _ALLOCATOR["trim_threshold"])
              and libc.mallopt(-8, _ALLOCATOR["arena_max"]))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    if ok:  # M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1, M_ARENA_MAX = -8
        _allocator = dict(_ALLOCATOR)


def timing_threads() -> int | None:
    """The torch threads latencies are timed with (the process's setting, whatever live
    mode's predictors use meanwhile); None before :func:`setup_process`."""
    return _timing_threads


def flush_denormals() -> None:
    """Treat subnormal floats as zero in this thread (and the intra-op threads it starts).

    Subnormals (left by weight updates such as SparseGPT's, or by tiny activations of random
    or heavily pruned weights) make CPU kernels up to 100x slower on some CPUs. The CPU's
    flag is per thread, so every thread that runs a model calls this first."""
    import torch

    torch.set_flush_denormal(True)


def machine() -> dict:
    """The machine a figure was measured on: CPU model, cores, torch and its threads."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "malloc": _allocator or "default"}


def cache_dir() -> Path:
    """Where prepared data (pruning databases) are kept between runs: ``$WORKBENCH_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/workbench``, else ``~/.cache/workbench``."""
    import os

    root = os.environ.get("WORKBENCH_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "workbench"
