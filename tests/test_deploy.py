"""The deployment runtime (ONNX / ONNX Runtime) and the speed table."""

import pickle

import pytest
import torch

from workbench.core.config import OptimizationConfig
from workbench.core.deploy import OrtModel, export_onnx
from workbench.core.measure import inference_memory
from workbench.core.optimize import optimize


def test_exported_onnx_loads_runs_and_matches_torch(tiny, tiny_inputs, tmp_path):
    path = export_onnx(tiny, tiny_inputs[0], tmp_path / "tiny.onnx")
    ort_model = OrtModel(path, threads=1)
    with torch.no_grad():
        for x in tiny_inputs[:4]:
            assert torch.allclose(ort_model(x), tiny(x), atol=1e-4)
    again = pickle.loads(pickle.dumps(ort_model))  # as it travels to the process that times it
    assert again.threads == 1 and torch.equal(again(tiny_inputs[0]), ort_model(tiny_inputs[0]))


def test_onnxruntime_int8_runs_and_stays_close(tiny, tiny_inputs, tmp_path):
    result = optimize(tiny, OptimizationConfig(bits=8, runtime="onnxruntime"), tiny_inputs, workdir=tmp_path)
    assert result.kernels == "onnxruntime-int8" and not result.simulated
    assert result.file.suffix == ".onnx" and result.write_file(tmp_path)[1] == result.file.stat().st_size
    with torch.no_grad():
        ref = torch.cat([tiny(x) for x in tiny_inputs])
        out = torch.cat([result.model(x) for x in tiny_inputs])
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.75
    assert (ref - out).abs().mean() <= 0.05 * ref.abs().max()


@pytest.mark.parametrize("overflows", [False, True])
def test_onnxruntime_int8_weights_get_7_bits_where_the_cpu_would_overflow(tiny, tiny_inputs, tmp_path, monkeypatch,
                                                                           overflows):
    import onnx
    from onnx import numpy_helper

    from workbench.core import quantize

    monkeypatch.setattr(quantize, "int8_overflows", lambda: overflows)
    monkeypatch.setattr("workbench.core.optimize.int8_overflows", lambda: overflows)
    result = optimize(tiny, OptimizationConfig(bits=8, runtime="onnxruntime"), tiny_inputs, workdir=tmp_path)
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(result.file)).graph.initializer
               if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert weights
    largest = max(int(abs(w.astype(int)).max()) for w in weights)
    assert largest <= 64 if overflows else largest == 127
    assert any("7-bit" in m for m in result.methods) == overflows


@pytest.mark.parametrize("overflows", [False, True])
def test_live_int8_copy_says_when_its_weights_have_7_bits(tiny, tiny_inputs, tmp_path, monkeypatch, overflows):
    from workbench.core import quantize
    from workbench.core.live import live_runtime_steps

    monkeypatch.setattr(quantize, "int8_overflows", lambda: overflows)
    monkeypatch.setattr("workbench.core.optimize.int8_overflows", lambda: overflows)
    optimized = optimize(tiny, OptimizationConfig(bits=8), tiny_inputs)
    *_, (model, label) = live_runtime_steps(optimized, tiny_inputs, tmp_path)
    assert isinstance(model, OrtModel) and label.startswith("ONNX Runtime int8")
    assert ("7-bit" in label) == overflows
    assert model(tiny_inputs[0]).shape == (1, 10)


def test_pruned_model_runs_in_onnxruntime(tiny, tiny_inputs, tmp_path):
    result = optimize(tiny, OptimizationConfig(sparsity=0.5, prune_method="structured", runtime="onnxruntime"),
                      tiny_inputs[:2], workdir=tmp_path)
    assert result.kernels == "onnxruntime-fp32"
    assert result.model(tiny_inputs[0]).shape == (1, 10)


def test_onnx_files_without_a_workdir_go_with_their_model(tiny, tiny_inputs, tmp_path, monkeypatch):
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = optimize(tiny, OptimizationConfig(runtime="onnxruntime"), tiny_inputs[:1])
    folder = result.file.parent
    assert folder.parent == tmp_path and result.file.is_file()
    assert result.model(tiny_inputs[0]).shape == (1, 10)
    del result
    gc.collect()
    assert not folder.exists()


def test_inference_memory_counts_weights_and_activations(tiny, tiny_inputs, tmp_path):
    torch_mem = inference_memory(tiny, tiny_inputs[0])
    weights = sum(t.numel() * t.element_size() for t in tiny.state_dict().values())
    assert torch_mem["weights_bytes"] == weights
    assert torch_mem["activations_bytes"] >= 16 * 16 * 16 * 4  # at least the stem's output
    big = inference_memory(tiny, torch.randn(1, 3, 128, 128))
    assert big["activations_bytes"] > 4 * torch_mem["activations_bytes"]


def test_speed_table_has_every_row_and_key(tmp_path, monkeypatch):
    import gc
    import tempfile

    from workbench.core.bench import speed_rows

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    rows = list(speed_rows(["efficientnet_lite0"], threads=[1, 2], runs=2))
    gc.collect()
    assert not list(tmp_path.iterdir())  # the model files it timed are gone
    configs = {(r["configuration"], r["runtime"]) for r in rows}
    assert configs == {("float", "torch"), ("int8", "torch"), ("structured 25% fewer MACs", "torch"),
                       ("structured 50% fewer MACs", "torch"), ("structured 75% fewer MACs", "torch"),
                       ("unstructured 50%", "torch"), ("float", "onnxruntime"), ("int8", "onnxruntime")}
    assert len(rows) == 16 and {r["threads"] for r in rows} == {1, 2}
    for r in rows:
        assert {"median", "p90"} <= r["latency_ms"].keys()
        for key in ("macs", "size_bytes", "peak_memory_bytes", "speedup", "realized_over_theoretical"):
            assert r[key] is not None, key
    by = {(r["configuration"], r["threads"]): r for r in rows}
    base = by[("float", 1)]["macs"]
    for cut in (25, 50, 75):  # the search lands near its MAC target
        kept = by[(f"structured {cut}% fewer MACs", 1)]["macs"] / base
        assert abs(kept - (1 - cut / 100)) < 0.05
