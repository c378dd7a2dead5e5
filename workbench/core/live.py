"""Live mode without Qt: a capture thread that keeps only the newest frame, and one
predictor thread per model that always works on the newest frame.

The display (the window's timer) runs at the source's rate, independent of inference.
What the eye sees comes first: a :class:`RateGovernor` lowers the predictors' rate
whenever the display misses frames or the GUI thread lags, and raises it again while the
display keeps up. (A lower OS priority for the predictor threads was tried and measured
worse: a descheduled predictor holding the GIL stalls the GUI thread.) Each predictor runs
torch with one intra-op thread, so the two models share the cores instead of
over-subscribing them.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .locks import running
from .process import flush_denormals
from .session import Prediction, predict_one
from .sources import Frame, VideoSource


@dataclass(frozen=True)
class Stamped:
    seq: int
    frame: Frame


class Grabber(threading.Thread):
    """Reads a :class:`VideoSource` at its own rate; ``latest`` is the newest frame.

    A video file is paced at its FPS (a camera paces itself). At the end a video loops
    or stops (``loop``); a camera that stops delivering sets ``error``."""

    def __init__(self, source: VideoSource, loop: bool = True):
        super().__init__(name="workbench-grabber", daemon=True)
        self.source = source
        self.loop = loop
        self.fps = float(source.fps or 30.0)
        self.latest: Stamped | None = None
        self.frames_read = 0
        self.error: str | None = None
        self.notice: str | None = None  # e.g. a video that ends before the frame count its header gives
        self.ended = False
        self._halt = threading.Event()
        self._paused = threading.Event()
        self.new_frame = threading.Condition()

    def run(self) -> None:
        camera = isinstance(self.source.target, int)
        period = 1.0 / self.fps
        next_t = time.perf_counter()
        since_rewind = self.source.position  # frames already read from this pass (the calibration frames)
        try:
            while not self._halt.is_set():
                if self._paused.is_set():
                    time.sleep(0.02)
                    next_t = time.perf_counter()
                    continue
                frame = self.source.read()
                if frame is None:
                    if camera:
                        self.error = f"{self.source.name} stopped delivering frames (unplugged?)"
                        break
                    if since_rewind == 0:  # not even one frame from the start: nothing to loop over
                        self.error = f"{self.source.name}: no frame can be read (truncated or damaged file?)"
                        break
                    expected = self.source.frame_count
                    if expected and since_rewind < expected - 1:
                        self.notice = (f"{self.source.name} ended after {since_rewind} of its {expected} frames "
                                       "(truncated file?)")
                    if self.loop:
                        self.source.rewind()
                        since_rewind = 0
                        continue
                    self.ended = True
                    break
                since_rewind += 1
                self.frames_read += 1
                with self.new_frame:
                    self.latest = Stamped(self.frames_read, frame)
                    self.new_frame.notify_all()
                if not camera:
                    next_t += period
                    delay = next_t - time.perf_counter()
                    if delay > 0:
                        self._halt.wait(delay)
                    else:
                        next_t = time.perf_counter()
        except Exception as exc:  # a broken stream must not take the window with it
            self.error = f"{self.source.name}: {type(exc).__name__}: {exc}"
        finally:
            self.source.release()
            with self.new_frame:
                self.new_frame.notify_all()

    def pause(self, paused: bool) -> None:
        (self._paused.set if paused else self._paused.clear)()

    def stop(self) -> None:
        self._halt.set()


class Predictor(threading.Thread):
    """Runs one model on the newest frame, again and again. ``model`` may be swapped
    at any time (the next prediction uses the new one)."""

    def __init__(self, name: str, grabber: Grabber, model, preprocess, max_rate: float = 12.0):
        super().__init__(name=f"workbench-predict-{name}", daemon=True)
        self.max_rate = max_rate  # predictions per second, set by the RateGovernor
        self.runtime = ""  # what runs the model, for the pane (set with the model)
        self.owner = None  # what the model stands for (set with it); latest_owner: of the latest prediction
        self.latest_owner = None
        self.grabber = grabber
        self.model = model
        self.preprocess = preprocess
        self.latest: tuple[int, Prediction] | None = None
        self.count = 0
        self.times: list[float] = []  # completion times, for predictions per second
        self.error: str | None = None
        self._halt = threading.Event()
        self._source_model = self._compiled = None

    def run(self) -> None:
        flush_denormals()
        done_seq = 0
        while not self._halt.is_set():
            with self.grabber.new_frame:
                while (not self._halt.is_set() and self.grabber.is_alive()
                       and (self.grabber.latest is None or self.grabber.latest.seq == done_seq)):
                    self.grabber.new_frame.wait(0.1)
                stamped = self.grabber.latest
            if self._halt.is_set() or stamped is None or stamped.seq == done_seq:
                if not self.grabber.is_alive():
                    return
                continue
            model, owner = self.model, self.owner
            if model is None:
                time.sleep(0.01)
                continue
            started = time.perf_counter()
            try:
                with running():  # held off while the app times a model alone (core.locks)
                    x = self.preprocess(stamped.frame.rgb)
                    if model is not self._source_model:
                        self._source_model, self._compiled = model, compile_for_live(model, x)
                    pred = predict_one(self._compiled, x)
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)
                continue
            done_seq = stamped.seq
            self.latest_owner = owner
            self.latest = (stamped.seq, pred)
            self.count += 1
            now = time.perf_counter()
            self.times.append(now)
            if len(self.times) > 200:
                del self.times[:100]
            if self.max_rate:
                self._halt.wait(max(0.0, started + 1.0 / self.max_rate - now))

    def rate(self, window_s: float = 2.0) -> float:
        """Predictions per second over the last ``window_s`` seconds."""
        now = time.perf_counter()
        recent = [t for t in self.times if now - t <= window_s]
        return len(recent) / window_s if recent else 0.0

    def stop(self) -> None:
        self._halt.set()


def compile_for_live(model, example):
    """A TorchScript trace of ``model``: its forward then runs in C++ without holding the
    GIL, so two predictor threads and the GUI thread stop queueing for it. Models that
    cannot be traced (or are no torch modules: ONNX Runtime) run as they are."""
    import torch

    from .locks import tracing

    if not isinstance(model, torch.nn.Module) or isinstance(model, torch.jit.ScriptModule):
        return model
    try:
        with tracing(), torch.inference_mode(False), torch.no_grad():
            return torch.jit.freeze(torch.jit.trace(model.eval(), example, check_trace=False))
    except Exception:
        return model


class RateGovernor:
    """Predictions per second from the display's health, measured rather than fixed:
    every ``period`` seconds, if the display showed fewer than ``keep`` of the frames the
    source delivered, or the GUI thread's worst lag exceeded ``max_lag_ms``, the rate is
    multiplied by ``backoff`` (down to ``floor``); while the display keeps up it climbs by
    ``step`` (up to ``ceiling``, the source's frame rate). Additive increase,
    multiplicative decrease, as TCP shares a link."""

    def __init__(self, ceiling: float, floor: float = 2.0, start: float = 12.0, period: float = 2.0,
                 keep: float = 0.95, max_lag_ms: float = 100.0, backoff: float = 0.7, step: float = 3.0):
        self.ceiling, self.floor = ceiling, min(floor, ceiling)
        self.rate = min(max(start, self.floor), ceiling)
        self.period, self.keep, self.max_lag_ms, self.backoff, self.step = period, keep, max_lag_ms, backoff, step
        self._read = self._shown = 0
        self._lag = 0.0
        self._since: float | None = None

    def observe(self, read: int, shown: int, lag_ms: float, now: float) -> float:
        """Count frames the source delivered and the display showed since the last call,
        and the GUI thread's lag; returns the rate to use from now on."""
        self._read += read
        self._shown += shown
        self._lag = max(self._lag, lag_ms)
        if self._since is None:
            self._since = now
        elif now - self._since >= self.period:
            starved = self._read > 0 and self._shown < self.keep * self._read
            if starved or self._lag > self.max_lag_ms:
                self.rate = max(self.floor, self.rate * self.backoff)
            else:
                self.rate = min(self.ceiling, self.rate + self.step)
            self._read = self._shown = 0
            self._lag = 0.0
            self._since = now
        return self.rate


class LiveSession:
    """A grabber, two predictors and the governor of their rate: start, swap the optimized
    model, pause, stop."""

    def __init__(self, source: VideoSource, original, optimized, preprocess, loop: bool = True,
                 max_rate: float = 12.0):
        self.grabber = Grabber(source, loop)
        self.governor = RateGovernor(ceiling=self.grabber.fps, start=max_rate)
        self.original = Predictor("original", self.grabber, original, preprocess, self.governor.rate)
        self.optimized = Predictor("optimized", self.grabber, optimized, preprocess, self.governor.rate)
        self.original.runtime = self.optimized.runtime = "torch"

    def display_report(self, read: int, shown: int, lag_ms: float, now: float) -> None:
        """The display's tick: frames delivered and shown since the last tick, the GUI lag."""
        rate = self.governor.observe(read, shown, lag_ms, now)
        self.original.max_rate = self.optimized.max_rate = rate

    def start(self) -> None:
        import cv2
        import torch

        # one torch thread per predictor: the two models split the cores between them
        self._threads_before = torch.get_num_threads()
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        # hand the GIL over sooner, so the GUI thread's timers fire on time
        self._switch_before = sys.getswitchinterval()
        sys.setswitchinterval(0.001)
        # a full garbage collection walks every object of torch and Qt (over 200 ms here):
        # move what exists now out of its reach for the stream's duration
        gc.collect()
        gc.freeze()
        self.grabber.start()
        self.original.start()
        self.optimized.start()

    def set_optimized(self, model, runtime: str = "torch", owner=None) -> None:
        """Run ``model`` from the next prediction on; ``owner`` (the optimization result it
        comes from) is reported with each prediction it makes."""
        self.optimized.model, self.optimized.runtime, self.optimized.owner = model, runtime, owner

    def pause(self, paused: bool) -> None:
        self.grabber.pause(paused)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop all threads and release the capture; True when every thread ended."""
        for t in (self.original, self.optimized, self.grabber):
            t.stop()
        for t in (self.grabber, self.original, self.optimized):
            if t.is_alive():
                t.join(timeout)
        if hasattr(self, "_threads_before"):
            import torch

            torch.set_num_threads(self._threads_before)
            sys.setswitchinterval(self._switch_before)
            gc.unfreeze()
        return not any(t.is_alive() for t in (self.grabber, self.original, self.optimized))

    @property
    def threads(self) -> list[threading.Thread]:
        return [self.grabber, self.original, self.optimized]


def live_runtime_steps(optimized, calibration, workdir: Path):
    """The fastest real runtime for an optimized model in live mode: a model that runs as
    torch int8 is exported and quantized with ONNX Runtime (static int8, the same
    calibration images), which runs it several times faster on x86 CPUs. Yields progress,
    then ``(model, runtime label)``; other configurations stay as they are."""
    from .deploy import OrtModel, export_onnx, quantize_onnx_int8
    from .quantize import int8_overflows

    config = optimized.config
    if not config.real_int8 or config.runtime != "torch" or not calibration:
        yield optimized.model, optimized.kernels or "torch"
        return
    workdir.mkdir(parents=True, exist_ok=True)
    stem = f"live-{abs(hash(config))}"
    yield "live: exporting the optimized model to ONNX"
    path = export_onnx(optimized.float_model, calibration[0], workdir / f"{stem}.onnx")
    yield "live: quantizing it with ONNX Runtime"
    path = quantize_onnx_int8(path, workdir / f"{stem}-int8.onnx", calibration, config.per_channel)
    label = "ONNX Runtime int8, 7-bit weights (no VNNI)" if int8_overflows() else "ONNX Runtime int8"
    yield OrtModel(path, threads=1), label


def make_test_video(path: Path, seconds: float = 3.0, fps: int = 30, size: tuple[int, int] = (640, 480)) -> Path:
    """A video of the sample photos panning across the frame (for tests and benchmarks)."""
    import cv2

    from .sources import SAMPLES, read_image

    w, h = size
    photos = [cv2.resize(read_image(p), (w + 160, h)) for p in sorted(SAMPLES.glob("*.jpg"))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    n = int(seconds * fps)
    for i in range(n):
        photo = photos[(i * len(photos)) // n]
        x = int(80 + 80 * np.sin(i / fps * 2))
        writer.write(cv2.cvtColor(np.ascontiguousarray(photo[:, x:x + w]), cv2.COLOR_RGB2BGR))
    writer.release()
    return Path(path)
