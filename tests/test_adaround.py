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
