import os

import numpy as np
import pytest
import torch
from torch import nn

from workbench.core.config import OptimizationConfig
from workbench.core.measure import count_macs, count_params, packed_state, unpack_codes, write_model_file
from workbench.core.optimize import optimize


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


CONFIGS = [
    OptimizationConfig(sparsity=0.5),
    OptimizationConfig(sparsity=0.5, prune_method="unstructured-global"),
    OptimizationConfig(sparsity=0.5, prune_method="unstructured-obs"),
    OptimizationConfig(sparsity=0.5, prune_method="unstructured-sensitivity"),
    OptimizationConfig(sparsity=0.5, prune_method="structured"),
    OptimizationConfig(bits=8),
    OptimizationConfig(bits=4, quant_scheme="weights"),
    OptimizationConfig(bits=4, quant_scheme="weights-activations"),
    OptimizationConfig(bits=16),
    OptimizationConfig(sparsity=0.3, prune_method="structured", bits=8),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.label())
def test_original_is_never_changed(tiny, tiny_inputs, config):
    before = _snapshot(tiny)
    result = optimize(tiny, config, tiny_inputs[:4])
    after = tiny.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    with torch.no_grad():  # the optimized copy still runs
        assert result.model(tiny_inputs[0]).shape == (1, 10)


def _conv_weights(model):
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def test_unstructured_per_layer_reaches_the_sparsity_in_every_layer(tiny):
    result = optimize(tiny, OptimizationConfig(sparsity=0.5, prune_method="unstructured"))
    for w in _conv_weights(result.model):
        assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert "no speedup expected" in result.description


def test_global_pruning_spreads_unevenly_but_hits_the_total(tiny):
    result = optimize(tiny, OptimizationConfig(sparsity=0.6, prune_method="unstructured-global"))
    ws = _conv_weights(result.model)
    zeros = sum((w == 0).sum().item() for w in ws) / sum(w.numel() for w in ws)
    assert zeros == pytest.approx(0.6, abs=0.02)
    per_layer = [(w == 0).float().mean().item() for w in ws]
    assert max(per_layer) - min(per_layer) > 0.05


def test_structured_pruning_removes_channels_and_macs(tiny, tiny_inputs):
    result = optimize(tiny, OptimizationConfig(sparsity=0.5, prune_method="structured"), tiny_inputs[:2])
    p0, _ = count_params(tiny)
    p1, _ = count_params(result.model)
    assert p1 < 0.6 * p0
    assert count_macs(result.model, tiny_inputs[0]) < 0.6 * count_macs(tiny, tiny_inputs[0])
    assert result.model.fc.out_features == 10  # the classes are kept


def test_int8_runs_on_quantized_kernels_and_stays_close(tiny, tiny_inputs):
    result = optimize(tiny, OptimizationConfig(bits=8), tiny_inputs)
    assert result.kernels.startswith("int8") and not result.simulated
    kinds = {type(m).__module__ for m in result.model.modules()}
    assert any("quantized" in k for k in kinds)
    with torch.no_grad():
        ref = torch.cat([tiny(x) for x in tiny_inputs])
        out = torch.cat([result.model(x) for x in tiny_inputs])
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.75
    assert (ref - out).abs().mean() <= 0.05 * ref.abs().max()


def _int8_weight_ranges(model) -> list[int]:
    return [int(m.weight().int_repr().abs().max()) for m in model.modules()
            if callable(getattr(m, "weight", None)) and hasattr(m.weight(), "int_repr")]


@pytest.mark.parametrize("overflows", [False, True])
def test_int8_weights_get_7_bits_where_the_cpu_would_overflow(tiny, tiny_inputs, monkeypatch, overflows):
    """Without VNNI, fbgemm adds pairs of uint8 x int8 products in 16 bits: weights in [-63, 63]
    cannot overflow them (2 x 255 x 63 < 32767), and the report says why."""
    from workbench.core import quantize

    monkeypatch.setattr(quantize, "int8_overflows", lambda: overflows)
    monkeypatch.setattr("workbench.core.optimize.int8_overflows", lambda: overflows)
    result = optimize(tiny, OptimizationConfig(bits=8), tiny_inputs)
    ranges = _int8_weight_ranges(result.model)
    assert len(ranges) >= 3
    if overflows:
        assert max(ranges) == 63 and any("7-bit" in m for m in result.methods)
    else:
        assert max(ranges) == 127 and not any("7-bit" in m for m in result.methods)
    assert ("7-bit weights" in result.description) == overflows  # the pane's line says it too
    with torch.no_grad():
        ref = torch.cat([tiny(x) for x in tiny_inputs])
        out = torch.cat([result.model(x) for x in tiny_inputs])
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.75


_SATURATION_CHILD = """
import json, torch
from torch import nn
from workbench.core import quantize

torch.manual_seed(0)
errors, product = {}, quantize.int8_overflows
for kind in ("conv", "linear"):  # convolutions run on oneDNN, linear layers on fbgemm
    layer = nn.Conv2d(64, 8, 1) if kind == "conv" else nn.Linear(64, 8)
    model = nn.Sequential(layer).eval()
    with torch.no_grad():  # large positive weights and inputs: pairs of products past 32767
        layer.weight.uniform_(0.75, 1.0)
        layer.bias.zero_()
    shape = (1, 64, 4, 4) if kind == "conv" else (1, 64)
    xs = [torch.rand(shape) * 6 + 3 for _ in range(8)]
    ref = torch.cat([model(x) for x in xs])
    for weights in ("product", "full range"):
        quantize.int8_overflows = product if weights == "product" else (lambda: False)
        *_, q = quantize.quantize_int8(model, xs)
        out = torch.cat([q(x) for x in xs])
        errors[f"{kind}, {weights}"] = float((out - ref).abs().mean() / ref.abs().mean())
print(json.dumps({"overflows": product(), "errors": errors}))
"""


def test_int8_kernels_held_to_avx2_saturate_unless_weights_have_7_bits():
    """fbgemm and oneDNN held to AVX2 (as on a CPU without VNNI, e.g. an AMD EPYC of these sessions):
    full-range int8 weights saturate their int16 sums; the product's weights (7 bits there) do not."""
    import json
    import subprocess
    import sys

    env = dict(os.environ, FBGEMM_ENABLE_INSTRUCTIONS="AVX2", ONEDNN_MAX_CPU_ISA="AVX2")
    run = subprocess.run([sys.executable, "-c", _SATURATION_CHILD], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["overflows"]
    errors = report["errors"]
    if max(errors["conv, full range"], errors["linear, full range"]) < 0.05:
        pytest.skip(f"this CPU's int8 kernels do not saturate even held to AVX2: {errors}")
    for kind in ("conv", "linear"):
        assert errors[f"{kind}, product"] < 0.01, errors
        assert errors[f"{kind}, full range"] > 0.05, errors  # the overflow the 7 bits avoid


def test_relu6_stays_relu6_in_int8():
    """ReLU6 is fused as ReLU with an output range clipped at 6: check large activations clip."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.BatchNorm2d(1), nn.ReLU6()).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    x = [torch.linspace(-2, 20, 64).reshape(1, 1, 8, 8)]
    result = optimize(model, OptimizationConfig(bits=8), x)
    out = result.model(x[0])
    assert out.max().item() == pytest.approx(6.0, abs=0.05)
    assert out.min().item() == pytest.approx(0.0, abs=0.05)


def test_simulated_low_bits_round_weights_per_channel(tiny):
    result = optimize(tiny, OptimizationConfig(bits=3, quant_scheme="weights"))
    assert result.simulated and "simulated" in result.description
    for w in _conv_weights(result.model):
        for row in w.reshape(w.shape[0], -1):
            assert len(torch.unique(row)) <= 2 ** 3


def test_prune_and_quantize_combine(tiny, tiny_inputs):
    result = optimize(tiny, OptimizationConfig(sparsity=0.5, prune_method="unstructured", bits=4,
                                               quant_scheme="weights"), tiny_inputs)
    for w in _conv_weights(result.model):
        assert (w == 0).float().mean().item() >= 0.45


def test_packed_files_shrink_with_bits_and_round_trip(tiny, tmp_path):
    sizes = {}
    for bits in (8, 4, 2):
        result = optimize(tiny, OptimizationConfig(bits=bits, quant_scheme="weights"))
        sizes[bits], fmt = write_model_file(tmp_path / f"m{bits}.wbpack", result.float_model,
                                            quant_bits=result.quant_bits)
        assert fmt == "workbench-packed-v1"
        assert sizes[bits] == (tmp_path / f"m{bits}.wbpack").stat().st_size
    dense, _ = write_model_file(tmp_path / "dense.pt", tiny)
    assert dense > sizes[8] > sizes[4] > sizes[2]
    # codes unpack to the rounded weights
    result = optimize(tiny, OptimizationConfig(bits=4, quant_scheme="weights"))
    arrays = packed_state(result.float_model, result.quant_bits)
    w = result.float_model.body[0].weight.detach()
    codes = unpack_codes(arrays["body.0.weight:q4"], 4, w.numel()).reshape(w.shape[0], -1)
    scale = arrays["body.0.weight:scale"][:, None]
    np.testing.assert_allclose(codes * scale, w.reshape(w.shape[0], -1).numpy(), rtol=1e-5, atol=1e-7)


def test_sparse_encoding_makes_pruned_files_smaller(tiny, tmp_path):
    result = optimize(tiny, OptimizationConfig(sparsity=0.8, prune_method="unstructured"))
    sparse, _ = write_model_file(tmp_path / "s.wbpack", result.float_model, sparse=True)
    dense, _ = write_model_file(tmp_path / "d.wbpack", tiny, sparse=True)
    assert sparse < 0.5 * dense


def test_packed_file_reads_back(tiny, tmp_path):
    from workbench.core.measure import load_packed

    result = optimize(tiny, OptimizationConfig(bits=4, quant_scheme="weights"))
    write_model_file(tmp_path / "m.wbpack", result.float_model, quant_bits=result.quant_bits)
    back = load_packed(tmp_path / "m.wbpack")
    ref = packed_state(result.float_model, result.quant_bits)
    assert back.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(back[k], ref[k])


def test_cuda_is_refused_clearly_without_a_gpu(tiny):
    from workbench.core.optimize import OptimizeError

    if torch.cuda.is_available():
        result = optimize(tiny, OptimizationConfig(bits=16, device="cuda"))
        assert result.kernels == "cuda-fp16" and not result.simulated
        assert result.model(torch.randn(1, 3, 32, 32)).device.type == "cpu"
    else:
        with pytest.raises(OptimizeError, match="no CUDA GPU"):
            optimize(tiny, OptimizationConfig(bits=16, device="cuda"))


@pytest.mark.parametrize("method", ["unstructured-obs", "unstructured-sensitivity"])
def test_data_driven_pruning_hits_the_global_sparsity(tiny, tiny_inputs, method):
    result = optimize(tiny, OptimizationConfig(sparsity=0.4, prune_method=method), tiny_inputs)
    ws = _conv_weights(result.model)
    zeros = sum((w == 0).sum().item() for w in ws) / sum(w.numel() for w in ws)
    assert zeros == pytest.approx(0.4, abs=0.03)
    assert result.allocation["sparsity"] and result.methods


def test_packed_file_reproduces_gptq_weights(tiny, tiny_inputs, tmp_path):
    result = optimize(tiny, OptimizationConfig(bits=3, quant_scheme="weights", rounding="gptq",
                                               allocation="uniform", bias_correction=False), tiny_inputs)
    assert "GPTQ rounding" in result.methods and result.scales
    arrays = packed_state(result.float_model, result.quant_bits, scales=result.scales)
    for name in result.scales:
        w = dict(result.float_model.named_modules())[name].weight.detach()
        key = f"{name}.weight"
        mask = np.ones(w.numel(), bool)
        if f"{key}:mask" in arrays:  # rounding left enough zeros for the sparse encoding
            mask = np.unpackbits(arrays[f"{key}:mask"])[: w.numel()].astype(bool)
        codes = np.zeros(w.numel())
        codes[mask] = unpack_codes(arrays[f"{key}:q3"], 3, int(mask.sum()))
        codes = codes.reshape(w.shape[0], -1)
        back = codes * arrays[f"{name}.weight:scale"][:, None]
        np.testing.assert_allclose(back, w.reshape(w.shape[0], -1).numpy(), rtol=1e-5, atol=1e-6)


def test_bit_allocation_measures_sensitivity_on_its_share_of_the_calibration_images(tiny, tiny_inputs, monkeypatch,
                                                                                    in_process):
    """Mixed precision below 8 bits probes each layer on BITS_SENSITIVITY_IMAGES images (8 made
    the allocation follow the images it saw), pruning sensitivity on SENSITIVITY_IMAGES."""
    from workbench.core import optimize as optimize_module
    from workbench.core import sensitivity

    seen = []
    real = sensitivity.sensitivity_steps

    def counting(model, calibration, *args, **kwargs):
        seen.append(len(calibration))
        yield from real(model, calibration, *args, **kwargs)

    monkeypatch.setattr(sensitivity, "sensitivity_steps", counting)
    images = [tiny_inputs[i % len(tiny_inputs)] + 0.01 * i for i in range(80)]
    optimize(tiny, OptimizationConfig(bits=4, quant_scheme="weights"), images)
    optimize(tiny, OptimizationConfig(sparsity=0.5, prune_method="unstructured-sensitivity"), images)
    assert seen == [optimize_module.BITS_SENSITIVITY_IMAGES, optimize_module.SENSITIVITY_IMAGES] == [64, 8]


@pytest.mark.parametrize("config", [OptimizationConfig(bits=4, quant_scheme="weights"),
                                    OptimizationConfig(bits=4, quant_scheme="weights", act_bits=8),
                                    OptimizationConfig(bits=4, quant_scheme="weights-activations")],
                         ids=lambda c: c.label())
def test_simulated_bits_in_a_child_give_the_model_they_give_here(tiny, tiny_inputs, config, monkeypatch, caplog):
    """Simulated bit widths run in a child process (isolate.isolated), so that the latencies
    timed here afterwards stay true; what comes back is what this process would make, and the
    layer sensitivities the child measured come back too."""
    from workbench.core import isolate, sensitivity

    jobs, real = [], isolate.isolated
    monkeypatch.setattr(isolate, "isolated", lambda steps, *a, **k: jobs.append(steps.__name__) or real(steps, *a, **k))
    monkeypatch.setattr(sensitivity, "_CACHE", {})
    there = optimize(tiny, config, tiny_inputs)
    assert jobs == ["_simulated_bits_steps"]
    assert "runs in this process" not in caplog.text
    found = dict(sensitivity._CACHE)
    monkeypatch.setattr(isolate, "isolated", lambda steps, *args, **kwargs: steps(*args, **kwargs))
    monkeypatch.setattr(sensitivity, "_CACHE", {})
    here = optimize(tiny, config, tiny_inputs)
    with torch.no_grad():
        for x in tiny_inputs[:4]:
            assert torch.equal(there.model(x), here.model(x))
    assert (there.quant_bits, there.methods, there.kernels) == (here.quant_bits, here.methods, here.kernels)
    assert found.keys() == sensitivity._CACHE.keys() and len(found) == 1
