import copy

import torch
from torch import nn

from workbench.core.adaround import adaround_layer_, adaround_steps
from workbench.core.recover import mse_clip_scale


def _output_error(model, reference, inputs):
    with torch.no_grad():
        x = torch.cat(inputs)
        return (model(x) - reference(x)).pow(2).mean().item()


def test_adaround_weights_are_on_the_grid_and_beat_nearest(tiny, tiny_inputs):
    model = copy.deepcopy(tiny)
    steps = list(adaround_steps(model, 4, tiny_inputs, iters=150, images=16))
    scales = steps[-1]
    assert all(isinstance(s, str) for s in steps[:-1])
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(scales) == set(layers)
    originals = dict(tiny.named_modules())
    for name, m in layers.items():
        s = scales[name].reshape(-1, *([1] * (m.weight.dim() - 1)))
        codes = (m.weight / s).detach()
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.abs().max() <= 7 + 1e-4
        # inside the range, at most one grid step away from the floor of the float weight
        w0 = (originals[name].weight / s).detach()
        inside = w0.abs() < 7
        step = (codes - torch.floor(w0))[inside]
        assert (step >= -1e-4).all() and (step <= 1 + 1e-4).all()

    nearest = copy.deepcopy(tiny)
    with torch.no_grad():
        for name, m in nearest.named_modules():
            if name in scales:
                s = scales[name].reshape(-1, *([1] * (m.weight.dim() - 1)))
                m.weight.copy_(torch.clamp(torch.round(m.weight / s), -7, 7) * s)
    assert _output_error(model, tiny, tiny_inputs) < _output_error(nearest, tiny, tiny_inputs)


def test_adaround_layer_reduces_the_output_error():
    torch.manual_seed(0)
    layer = nn.Linear(32, 16)
    x = torch.randn(2048, 4) @ torch.randn(4, 32) + 0.1 * torch.randn(2048, 32)
    with torch.no_grad():
        target = layer(x)
    scale = mse_clip_scale(layer.weight, 3).reshape(-1)
    s = scale[:, None]
    nearest = torch.clamp(torch.round(layer.weight / s), -3, 3) * s
    err_nearest = (x @ nearest.t() + layer.bias - target).pow(2).mean()
    adaround_layer_(layer, x, target, 3, scale, iters=400)
    with torch.no_grad():
        err = (layer(x) - target).pow(2).mean()
    assert err < 0.7 * err_nearest


def test_optimize_with_adaround_rounds_every_layer_to_its_grid(tiny, tiny_inputs):
    from workbench.core.config import OptimizationConfig
    from workbench.core.optimize import optimize

    config = OptimizationConfig(bits=4, rounding="adaround", allocation="uniform")
    result = optimize(tiny, config, tiny_inputs)
    assert "AdaRound rounding" in result.methods and "bias correction" not in result.methods
    layers = {n: m for n, m in result.float_model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(result.scales) == set(layers) == set(result.quant_bits)
    for name, m in layers.items():
        codes = (m.weight / result.scales[name].reshape(-1, *([1] * (m.weight.dim() - 1)))).detach()
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 7 + 1e-4
    nearest = optimize(tiny, config.with_(rounding="nearest", bias_correction=False), tiny_inputs)
    assert _output_error(result.model, tiny, tiny_inputs) < _output_error(nearest.model, tiny, tiny_inputs)


def test_w4a8_quantizes_activations_at_8_bits_and_keeps_4_bit_weights(tiny, tiny_inputs):
    from workbench.core.config import ConfigError, OptimizationConfig
    from workbench.core.optimize import optimize

    config = OptimizationConfig(bits=4, act_bits=8, allocation="uniform")
    assert config.quant_scheme == "weights-activations" and config.activation_bits == 8
    assert "W4A8" in config.label()
    assert OptimizationConfig(bits=4, quant_scheme="weights-activations").activation_bits == 4
    assert OptimizationConfig(bits=4).activation_bits is None
    for bad in ({"bits": 8, "act_bits": 8}, {"bits": 32, "act_bits": 8}, {"bits": 4, "act_bits": 9}):
        try:
            OptimizationConfig(**bad)
        except ConfigError:
            continue
        raise AssertionError(f"{bad} accepted")
    w4a8 = optimize(tiny, config, tiny_inputs)
    w4a4 = optimize(tiny, config.with_(act_bits=None), tiny_inputs)
    w4 = optimize(tiny, config.with_(act_bits=None, quant_scheme="weights"), tiny_inputs)
    assert w4a8.kernels == "fp32 (simulated W4A8)" and w4a4.kernels == "fp32 (simulated W4A4)"
    # the fake-quantized weights are the 4-bit weights: W4A8 is W4 plus a small activation error
    err8, err4 = (_output_error(m.model, w4.model, tiny_inputs) for m in (w4a8, w4a4))
    assert 0 < err8 < err4


def test_the_panel_offers_w4a8_and_reads_it_back(qtbot):
    from workbench.core.config import OptimizationConfig
    from workbench.ui.config_panel import ConfigPanel

    panel = ConfigPanel()
    qtbot.addWidget(panel)
    for config in (OptimizationConfig(bits=4, act_bits=8), OptimizationConfig(bits=4),
                   OptimizationConfig(bits=3, quant_scheme="weights-activations"), OptimizationConfig(bits=8)):
        panel.set_config(config)
        assert panel.config() == config


def test_layer_inputs_block_by_block_match_whole_passes(tiny, tiny_inputs):
    from workbench.core.adaround import _Cursor
    from workbench.core.recover import layer_inputs

    class Residual(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return x + self.body(x)

    class Chain(nn.Module):  # TinyNet's layers as a chain of blocks (as EfficientNet-Lite is)
        def __init__(self):
            super().__init__()
            self.stem, self.res = copy.deepcopy(tiny.stem), Residual(copy.deepcopy(tiny.body))
            self.pool, self.flatten, self.fc = nn.AdaptiveAvgPool2d(1), nn.Flatten(1), copy.deepcopy(tiny.fc)

        def forward(self, x):
            return self.fc(self.flatten(self.pool(self.res(self.stem(x)))))

    batches = [torch.cat(tiny_inputs[:8]), torch.cat(tiny_inputs[8:])]
    for model, chained in ((Chain().eval(), True), (tiny, False)):  # TinyNet adds its residual in forward
        cursor = _Cursor(model, batches)
        assert cursor.ok == chained
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                for a, b in zip(cursor.inputs(m), layer_inputs(model, m, batches), strict=True):
                    assert torch.allclose(a, b, atol=1e-6)


def test_the_copied_command_reproduces_w4a8_and_adaround(monkeypatch):
    import shlex

    from workbench import cli
    from workbench.core.compare import compare_command
    from workbench.core.config import MeasureSettings, OptimizationConfig

    seen = []
    monkeypatch.setattr(cli, "run_compare", lambda args: seen.append(cli._settings_and_config(args)[0]) or 0)
    for config in (OptimizationConfig(bits=4, act_bits=8), OptimizationConfig(bits=4, rounding="adaround"),
                   OptimizationConfig(bits=3, act_bits=6, sparsity=0.5)):
        command = compare_command("efficientnet_lite0", None, None, config, MeasureSettings())
        assert cli.main(shlex.split(command)[3:]) == 0
        assert seen[-1] == config, command
