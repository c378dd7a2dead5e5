"""The accuracy-keeping methods, each on a tiny model: does it change what it should, and only that."""

import contextlib
import copy

import pytest
import torch
from torch import nn

from workbench.core.config import OptimizationConfig
from workbench.core.optimize import optimize, prune_per_layer_
from workbench.core.quantize import fake_quantize_weight
from workbench.core.recover import (
    bias_correct_,
    distill_steps,
    input_means,
    layer_hessians,
    mse_clip_scale,
    recalibrate_bn_,
    sparsegpt_,
)
from workbench.core.sensitivity import allocate_bits, allocate_sparsity, sensitivity_steps


def test_bn_recalibration_matches_the_new_statistics(tiny, tiny_inputs):
    model = copy.deepcopy(tiny)
    prune_per_layer_(model, {"body.0": 0.7})
    bn = model.body[1]
    convs = {}
    model.body[0].register_forward_hook(lambda m, i, o: convs.setdefault("out", []).append(o))
    assert recalibrate_bn_(model, tiny_inputs) == 4
    out = torch.cat(convs["out"])
    assert torch.allclose(bn.running_mean, out.mean((0, 2, 3)), atol=1e-4)
    # weights untouched, only statistics
    assert torch.equal(model.body[0].weight, model.body[0].weight * (model.body[0].weight != 0))
    assert not bn.training


def test_mse_clipping_never_worse_than_nearest():
    torch.manual_seed(0)
    w = torch.randn(16, 32) * torch.linspace(0.1, 2, 32)
    w[0, 0] = 12.0  # an outlier that wastes the max-abs grid
    for bits in (3, 4, 6):
        qmax = 2 ** (bits - 1) - 1
        scale = mse_clip_scale(w, bits)
        mse = ((torch.clamp(torch.round(w / scale), -qmax, qmax) * scale - w) ** 2).sum(1)
        codes, s0 = fake_quantize_weight(w, bits)
        nearest = ((codes * s0 - w) ** 2).sum(1)
        assert (mse <= nearest + 1e-9).all()
        if bits < 6:
            assert mse.sum() < nearest.sum()


def test_bias_correction_removes_the_mean_shift(tiny, tiny_inputs):
    model = copy.deepcopy(tiny)
    layers = {"body.0": model.body[0]}
    means = input_means(model, layers, tiny_inputs)
    w0 = {"body.0": model.body[0].weight.detach().clone()}
    with torch.no_grad():
        model.body[0].weight.add_(0.05)  # a systematic rounding error
    outs = {}
    h = model.body[0].register_forward_hook(lambda m, i, o: outs.__setitem__("o", o))

    def shift():
        with torch.no_grad():
            a = torch.cat([tiny.body[0](tiny.stem(x)) for x in tiny_inputs])
            b = torch.cat([(model(x), outs["o"])[1] for x in tiny_inputs])
        return (b - a).mean((0, 2, 3)).abs().max().item()

    before = shift()
    bias_correct_(model, w0, means)
    after = shift()
    h.remove()
    assert after < 0.05 * before


def test_sparsegpt_beats_magnitude_on_the_layer_output(tiny_inputs):
    torch.manual_seed(0)
    layer = nn.Linear(32, 16, bias=False)
    x = torch.randn(512, 8) @ torch.randn(8, 32) + 0.1 * torch.randn(512, 32)  # strongly correlated inputs
    hessian = (x.t() @ x).double() / len(x)
    obs, mag = copy.deepcopy(layer), copy.deepcopy(layer)
    sparsegpt_(obs.weight, hessian, 0.5)
    prune_per_layer_(mag, {"": 0.5})
    assert (obs.weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.02)
    with torch.no_grad():
        ref = layer(x)
        assert ((obs(x) - ref) ** 2).mean() < 0.7 * ((mag(x) - ref) ** 2).mean()


def test_layer_hessians_shape(tiny, tiny_inputs):
    hs = layer_hessians(tiny, {"body.0": tiny.body[0], "fc": tiny.fc}, tiny_inputs[:4])
    assert hs["body.0"].shape == (16, 16) and hs["fc"].shape == (16, 16)
    assert torch.allclose(hs["fc"], hs["fc"].t())


def test_sensitivity_restores_the_model_and_allocations_meet_targets(tiny, tiny_inputs):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    *_, sens = sensitivity_steps(tiny, tiny_inputs[:8], "prune", 0.5)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert set(sens) == {"stem.0", "body.0", "body.3", "body.6", "fc"}
    sparsity = allocate_sparsity(sens, 0.5, 0.5, fixed={"stem.0": 0.0})
    total = sum(s.params for s in sens.values())
    assert sum(sparsity[n] * sens[n].params for n in sens) == pytest.approx(0.5 * total, rel=1e-3)
    assert sparsity["stem.0"] == 0.0 and max(sparsity.values()) <= 0.95
    *_, sens_b = sensitivity_steps(tiny, tiny_inputs[:8], "bits", 4)
    bits = allocate_bits(sens_b, 4, 4, fixed={"stem.0": 8})
    mean = sum(bits[n] * sens_b[n].params for n in sens_b) / total
    assert mean <= 4 + 1e-9 and bits["stem.0"] == 8 and len(set(bits.values())) > 1


def test_the_windows_sensitivity_is_measured_in_a_child_once_and_cached_here(tiny, tiny_inputs, monkeypatch):
    """The Layers tab's sensitivity (session.sensitivity_job) runs in a child process
    (isolate.isolated): the same figures as here; a second request is answered from the cache
    here, without a child."""
    from workbench.core import isolate, sensitivity
    from workbench.core.sensitivity import isolated_sensitivity_steps

    monkeypatch.setattr(sensitivity, "_CACHE", {})
    jobs, real = [], isolate.isolated
    monkeypatch.setattr(isolate, "isolated", lambda steps, *a, **k: jobs.append(steps.__name__) or real(steps, *a, **k))
    *_, there = isolated_sensitivity_steps(tiny, tiny_inputs[:8], "bits", 4, key="tiny")
    *_, again = isolated_sensitivity_steps(tiny, tiny_inputs[:8], "bits", 4, key="tiny")
    assert jobs == ["sensitivity_steps"] and again == there
    monkeypatch.setattr(sensitivity, "_CACHE", {})
    *_, here = sensitivity_steps(tiny, tiny_inputs[:8], "bits", 4, key="tiny")
    assert there == here


def test_bit_allocation_keeps_a_floor_and_the_budget():
    from workbench.core.sensitivity import LayerSensitivity, allocate_bits

    sens = {"stem": LayerSensitivity("stem", 100, 1.0, 0.9), "mid": LayerSensitivity("mid", 1000, 0.01, 0.99),
            "fc": LayerSensitivity("fc", 1000, 1e-4, 1.0)}  # the classifier: large and cheap on the probe
    free = allocate_bits(sens, 4, 4, fixed={"stem": 8})
    kept = allocate_bits(sens, 4, 4, fixed={"stem": 8}, floor={"fc": 4})
    assert free["fc"] == 2 and kept["fc"] == 4 and kept["stem"] == 8
    for bits in (free, kept):
        assert sum(bits[n] * s.params for n, s in sens.items()) <= 4 * 2100
    assert kept["mid"] < free["mid"]  # the budget the floor keeps comes from the other layers

def test_sensitivity_skips_the_unchanged_prefix_and_gets_the_same_figures(tiny, tiny_inputs, monkeypatch):
    """Stages in front of the probed layer return their recorded outputs (the model-level
    residual of the tiny net included); the figures equal full forward passes, only the rest
    of the network runs, and every module is back in place afterwards."""
    from workbench.core import sensitivity

    modules = dict(tiny.named_modules())
    ran = []
    handles = [m.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, m in modules.items()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    *_, fast = sensitivity.sensitivity_steps(tiny, tiny_inputs[:8], "bits", 3, key="prefix")
    probe_runs = ran[5:]  # after the reference pass over the five layers
    for h in handles:
        h.remove()
    assert dict(tiny.named_modules()) == modules
    # a probe runs the probed layer and what follows it: body.0 runs for stem.0's probe and its own
    assert probe_runs.count("stem.0") == 1 and probe_runs.count("body.0") == 2 and probe_runs.count("fc") == 5
    monkeypatch.setattr(sensitivity, "_prefix_cached", lambda *a: contextlib.nullcontext())
    *_, full = sensitivity.sensitivity_steps(tiny, tiny_inputs[:8], "bits", 3, key="full")
    assert fast.keys() == full.keys()
    for n in full:
        assert fast[n].kl == pytest.approx(full[n].kl, rel=1e-4, abs=1e-9)
        assert fast[n].agreement == full[n].agreement


class _AddsInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        return x.add_(self.b(self.a(x)))  # changes its input: a recorded output, when probed


def test_sensitivity_survives_stages_that_change_their_input_in_place(monkeypatch):
    from workbench.core import sensitivity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), _AddsInPlace(), _AddsInPlace(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 5)).eval()
    images = [torch.randn(1, 3, 12, 12) for _ in range(6)]
    *_, fast = sensitivity.sensitivity_steps(model, images, "bits", 2, key="inplace-fast")
    monkeypatch.setattr(sensitivity, "_prefix_cached", lambda *a: contextlib.nullcontext())
    *_, full = sensitivity.sensitivity_steps(model, images, "bits", 2, key="inplace-full")
    for n in full:
        assert fast[n].kl == pytest.approx(full[n].kl, rel=1e-4, abs=1e-9)


def test_distillation_lowers_the_loss_and_keeps_zeros(tiny, tiny_inputs):
    result = optimize(tiny, OptimizationConfig(sparsity=0.6, prune_method="unstructured"), tiny_inputs)
    zeros = {n: (p == 0) for n, p in result.model.named_parameters() if p.dim() > 1}
    losses = [s["loss"] for s in distill_steps(result.model, tiny, tiny_inputs, seconds=3, lr=1e-3)
              if isinstance(s, dict) and "loss" in s]
    assert len(losses) > 5 and min(losses[-3:]) < losses[0]
    for n, p in result.model.named_parameters():
        if n in zeros:
            assert (p[zeros[n]] == 0).all()


def test_json_says_which_methods_ran(tiny, tiny_inputs):
    best = optimize(tiny, OptimizationConfig(bits=4, quant_scheme="weights"), tiny_inputs)
    assert {"MSE-optimal clipping", "bias correction", "mixed precision from sensitivity"} <= set(best.methods)
    naive = optimize(tiny, OptimizationConfig(bits=4, quant_scheme="weights").naive(), tiny_inputs)
    assert naive.methods == []


def test_gptq_rounding_lands_on_the_grid_and_beats_nearest_on_outputs():
    from workbench.core.recover import gptq_

    torch.manual_seed(0)
    layer = nn.Linear(32, 16, bias=False)
    x = torch.randn(512, 8) @ torch.randn(8, 32) + 0.1 * torch.randn(512, 32)
    hessian = (x.t() @ x).double() / len(x)
    scale = mse_clip_scale(layer.weight, 3).reshape(-1)
    g, n = copy.deepcopy(layer), copy.deepcopy(layer)
    gptq_(g.weight, hessian, 3, scale)
    with torch.no_grad():
        n.weight.copy_(torch.clamp(torch.round(n.weight / scale[:, None]), -3, 3) * scale[:, None])
        codes = g.weight / scale[:, None]
        assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.abs().max() <= 3 + 1e-4
        ref = layer(x)
        assert ((g(x) - ref) ** 2).mean() < 0.7 * ((n(x) - ref) ** 2).mean()


def test_gptq_keeps_pruned_weights_at_zero_and_still_beats_nearest():
    from workbench.core.recover import gptq_

    torch.manual_seed(1)
    layer = nn.Linear(64, 16, bias=False)
    with torch.no_grad():
        layer.weight.mul_(torch.rand_like(layer.weight) > 0.5)  # half pruned
    pruned = layer.weight == 0
    x = torch.randn(512, 8) @ torch.randn(8, 64) + 0.1 * torch.randn(512, 64)
    hessian = (x.t() @ x).double() / len(x)
    scale = mse_clip_scale(layer.weight, 4).reshape(-1)
    g, n = copy.deepcopy(layer), copy.deepcopy(layer)
    gptq_(g.weight, hessian, 4, scale, damp=0.1)
    with torch.no_grad():
        n.weight.copy_(torch.clamp(torch.round(n.weight / scale[:, None]), -7, 7) * scale[:, None])
        assert (g.weight[pruned] == 0).all() and (g.weight[~pruned] != 0).float().mean() > 0.8
        ref = layer(x)
        assert ((g(x) - ref) ** 2).mean() < 0.7 * ((n(x) - ref) ** 2).mean()


def test_default_four_bits_use_gptq_and_keep_the_pruned_zeros(tiny, tiny_inputs):
    result = optimize(tiny, OptimizationConfig(sparsity=0.5, prune_method="unstructured", bits=4), tiny_inputs)
    assert "GPTQ rounding" in result.methods
    ws = [m.weight for m in result.float_model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    pruned_only = optimize(tiny, OptimizationConfig(sparsity=0.5, prune_method="unstructured"), tiny_inputs)
    ws0 = [m.weight for m in pruned_only.float_model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for w, w0 in zip(ws, ws0):
        assert bool((w[w0 == 0] == 0).all())


def test_distillation_never_ends_worse_on_its_held_out_images(tiny, tiny_inputs):
    from workbench.core.recover import _kl_batches

    result = optimize(tiny, OptimizationConfig(sparsity=0.6, prune_method="unstructured"), tiny_inputs)
    held = [torch.cat(tiny_inputs[-2:])]  # distill_steps holds out the last 1/8 of 16 images
    with torch.no_grad():
        teacher = [torch.log_softmax(tiny(held[0]), 1)]
    before = _kl_batches(teacher, result.model, held)
    # a learning rate far too high: training makes things worse, the best weights are kept
    steps = [s for s in distill_steps(result.model, tiny, tiny_inputs, seconds=2, lr=1.0, check_every=0.2)
             if isinstance(s, dict)]
    assert steps and _kl_batches(teacher, result.model, held) <= before + 1e-9


def test_recovery_teaches_only_the_calibration_images(tiny, tiny_inputs, monkeypatch):
    """The window's "Recover accuracy" must not learn from the images its report scores."""
    from types import SimpleNamespace

    from workbench.core import isolate, recover, session
    from workbench.core.config import MeasureSettings

    seen = []

    def spy(fn, *args, **kw):  # runs here, so that the images can be compared
        if fn is recover.distilled_steps:
            seen.extend(args[2])
        yield from fn(*args, **kw)

    monkeypatch.setattr(isolate, "isolated", spy)
    monkeypatch.setattr(session, "_measured", lambda ws, opt, folder, settings: opt)  # figures: elsewhere
    ws = session.Workspace(loaded=SimpleNamespace(model=tiny), source=None, inputs=list(tiny_inputs))
    opt = optimize(tiny, OptimizationConfig(sparsity=0.5), tiny_inputs[:4])
    steps = list(session.recover_job(ws, SimpleNamespace(optimized=opt), MeasureSettings(calibration_images=4),
                                     seconds=0.5))
    assert [id(x) for x in seen] == [id(x) for x in tiny_inputs[:4]]
    kept = steps[-1].recovered_steps
    assert kept >= 1 and steps[-1].methods[-1] == f"distillation ({kept} steps on the 4 calibration images)"
    with pytest.raises(ValueError, match="already distilled"):  # a second run: not one compare can replay
        list(session.recover_job(ws, SimpleNamespace(optimized=steps[-1]), MeasureSettings(calibration_images=4),
                                 seconds=0.5))


def test_a_timed_distillation_is_replayed_by_its_kept_steps(tiny, tiny_inputs):
    """compare --recover-steps N gives the weights the window's time-bounded run kept."""
    result = optimize(tiny, OptimizationConfig(sparsity=0.6, prune_method="unstructured"), tiny_inputs)
    timed, replay = copy.deepcopy(result.model), copy.deepcopy(result.model)
    # a high learning rate: the held-out check keeps earlier weights than the last ones
    log = [s for s in distill_steps(timed, tiny, tiny_inputs, seconds=1.5, lr=0.05, check_every=0.1)
           if isinstance(s, dict)]
    kept = log[-1]["kept_steps"]
    assert 0 < kept and log[-1]["step"] == log[-2]["step"]
    replayed = [s for s in distill_steps(replay, tiny, tiny_inputs, exact_steps=kept, lr=0.05) if isinstance(s, dict)]
    assert replayed[-1] == {"step": kept, "kept_steps": kept, "held_out_kl": None}
    for (name, a), b in zip(timed.state_dict().items(), replay.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(timed.state_dict().values(), result.model.state_dict().values()))


def test_recovery_trains_a_copy_in_a_child_process(tiny, tiny_inputs):
    from workbench.core.isolate import isolated
    from workbench.core.recover import distilled_steps

    result = optimize(tiny, OptimizationConfig(sparsity=0.6, prune_method="unstructured"), tiny_inputs)
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    steps = list(isolated(distilled_steps, result.model, tiny, tiny_inputs, seconds=1, lr=1e-3, check_every=0.2))
    student, kept = steps[-1]
    assert kept >= 1
    assert isinstance(student, torch.nn.Module) and student is not result.model
    assert all(torch.equal(v, result.model.state_dict()[k]) for k, v in before.items())  # the original copy stays
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # the copy was trained
