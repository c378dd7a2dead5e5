"""A deployment runtime: the optimized model exported to ONNX and run in ONNX Runtime
(float, or int8 through ONNX Runtime's static quantization)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Export with a fixed batch-1 input (TorchScript-based exporter: no extra packages).

    torch's exporter keeps process-wide state (``GLOBALS.in_onnx_export``): an export beside
    another export or a trace in another job fails, so it holds the tracing lock."""
    from .locks import tracing

    with tracing():
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
    return Path(path)


class OrtModel:
    """An ONNX Runtime session that takes and returns torch tensors, so the workbench
    measures it like any model."""

    def __init__(self, path: Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path, self.threads = Path(path), threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __reduce__(self):  # a session cannot be pickled: the file and threads make it again (a timing child)
        return OrtModel, (self.path, self.threads)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)

    def eval(self):
        return self


def quantize_onnx_int8(float_path: Path, out_path: Path, calibration: Sequence[torch.Tensor],
                       per_channel: bool = True) -> Path:
    """Static int8 (QDQ, per-channel weights) with ONNX Runtime's quantization tools; on CPUs
    without VNNI the weights get 7 bits (its ``reduce_range``; :func:`.quantize.int8_overflows`)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from .quantize import int8_overflows

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": x.numpy().astype(np.float32)} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    # its advice to pre-process, logged on every call, is filtered by process.setup_process
    quantize_static(str(float_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=per_channel, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                    reduce_range=int8_overflows())
    return Path(out_path)
