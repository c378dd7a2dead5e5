"""OBC-style pruning database (workbench.core.prune_obc): budget, what changes, cache, cancel."""

import copy
import os
import random

import numpy as np
import psutil
import pytest
import torch
from conftest import TinyNet
from torch import nn

from workbench.core import prune_obc
from workbench.core.prune_obc import PruneDatabase, fingerprint, prepare, prepare_steps


def _conv_linear(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _zeros(model):
    return sum(int((m.weight == 0).sum()) for m in _conv_linear(model).values())


def _total(model):
    return sum(m.weight.numel() for m in _conv_linear(model).values())


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def tiny_db():
    """The conftest ``tiny`` model and inputs, and their database, built once per module."""
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(16)]
    return model, inputs, prepare(model, inputs)


@pytest.fixture
def db(tiny_db):
    return tiny_db[2]


@pytest.fixture
def tiny(tiny_db):
    return copy.deepcopy(tiny_db[0])


@pytest.fixture
def tiny_inputs(tiny_db):
    return tiny_db[1]


@pytest.mark.parametrize("sparsity,kinds", [(0.0, None), (0.1, None), (0.33, None), (0.5, None), (0.6, None),
                                            (0.7, ()), (0.9, ())])
def test_the_budget_is_met_exactly(tiny, db, sparsity, kinds):
    """Zeros over all conv + linear weights == round(sparsity * total), whatever the DP picked."""
    model = copy.deepcopy(tiny)
    per_layer = db.apply_(model, sparsity) if kinds is None else db.apply_(model, sparsity, dense_kinds=kinds)
    assert db.total == _total(tiny)
    assert _zeros(model) == round(sparsity * db.total)
    for name, m in _conv_linear(model).items():  # the returned fractions are what ran
        assert per_layer[name] == pytest.approx(float((m.weight == 0).sum()) / m.weight.numel())


@pytest.mark.parametrize("sparsity", [0.3, 0.6])
def test_the_dp_stays_within_one_budget_unit_per_layer(db, sparsity):
    """The levels alone never exceed the target and miss it by less than one budget unit per
    free layer (plus one): the rest is the saliency top-up."""
    import math

    choice, target = db.solve(sparsity, dense_kinds=())
    zeros = db.base_zeros + sum(t.zeros[choice[n]] for n, t in db.tables.items())
    unit = max(1, math.ceil(db.total / prune_obc.DP_UNITS))
    assert zeros <= target
    assert target - zeros < unit * (len(db.tables) + 1)


def test_the_dp_beats_a_uniform_allocation(db):
    """On its own objective, the DP is at least as good as every layer at the same level."""
    for k in (4, 8, 12):
        uniform = sum(t.loss[k] for t in db.tables.values())
        zeros = sum(t.zeros[k] for t in db.tables.values())
        choice, _ = db.solve(zeros / db.total, dense_kinds=())
        assert sum(t.loss[choice[n]] for n, t in db.tables.items()) <= uniform * (1 + 1e-9)


@pytest.mark.parametrize("sparsity", [0.3, 0.5])
def test_no_layer_goes_past_the_ceiling(db, sparsity):
    """No free layer's level is more than HEADROOM above the average the free layers need, the
    budget holds as before, and without the ceiling the DP would have gone past it here."""
    free = [n for n, t in db.tables.items() if t.kind not in prune_obc.DENSE_KINDS]
    need = (round(sparsity * db.total) - db.base_zeros - sum(t.zeros[0] for t in db.tables.values())) / sum(
        db.tables[n].numel - db.tables[n].zeros[0] for n in free)
    ceiling = need + prune_obc.HEADROOM
    levels = db.levels_for(sparsity)
    assert max(levels[n] for n in free) <= ceiling + 1e-9
    assert max(db.levels_for(sparsity, headroom=None)[n] for n in free) > ceiling
    zeros = db.base_zeros + sum(t.zeros[db.levels.index(levels[n])] for n, t in db.tables.items())
    assert zeros <= round(sparsity * db.total)


def test_out_of_reach_sparsity_is_refused(tiny, db):
    assert db.max_sparsity() < db.max_sparsity(dense_kinds=()) == 1.0
    with pytest.raises(ValueError, match="out of reach"):
        db.apply_(copy.deepcopy(tiny), db.max_sparsity() + 0.01)


def test_only_conv_and_linear_weights_change_and_dense_layers_stay(tiny, db):
    model = copy.deepcopy(tiny)
    per_layer = db.apply_(model, 0.5, dense_kinds=("depthwise", "conv"))
    before, after = tiny.state_dict(), model.state_dict()
    layers = _conv_linear(tiny)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed <= {f"{n}.weight" for n in layers}
    assert "body.3.weight" not in changed  # depthwise: dense
    assert "stem.0.weight" not in changed  # the stem (a dense 3x3 conv): dense
    assert per_layer["body.3"] == 0.0 and per_layer["stem.0"] == 0.0
    assert _zeros(model) == round(0.5 * db.total)


def test_dense_names_and_excluded_layers_are_kept(tiny, tiny_inputs):
    db = prepare(tiny, tiny_inputs, exclude=("fc",))
    assert "fc" not in db.tables
    model = copy.deepcopy(tiny)
    db.apply_(model, 0.2, dense=("body.0",))
    assert torch.equal(model.fc.weight, tiny.fc.weight)
    assert torch.equal(model.body[0].weight, tiny.body[0].weight)
    assert _zeros(model) == round(0.2 * db.total)  # the budget still counts every layer


def test_prepare_does_not_change_the_model(tiny, tiny_inputs):
    state = copy.deepcopy(tiny.state_dict())
    prepare(tiny, tiny_inputs)
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in state.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.modules())
    assert all(p.grad is None for p in tiny.parameters())


def test_linear_dampening_changes_only_the_linear_layers(tiny, tiny_inputs, db):
    """``linear_damp`` regularizes the classifier's OBS updates and leaves the conv tables as
    they were; a larger dampening moves the kept weights less from their original values."""
    other = prepare(tiny, tiny_inputs, linear_damp=0.01)
    linear = {n for n, t in db.tables.items() if t.kind == "linear"}
    assert linear and db.key != other.key
    for name, table in db.tables.items():
        k = 10  # the 50 % level
        a, b = table.values[k].float(), other.tables[name].values[k].float()
        if name in linear:
            original = _conv_linear(tiny)[name].weight.detach().flatten()
            keep_a = torch.from_numpy(np.unpackbits(table.masks[k], count=table.numel).astype(bool))
            keep_b = torch.from_numpy(np.unpackbits(other.tables[name].masks[k], count=table.numel).astype(bool))
            assert (a - original[keep_a]).abs().mean() < (b - original[keep_b]).abs().mean()
        else:
            assert torch.equal(a, b)


def test_pruned_model_stays_close_at_moderate_sparsity(tiny, tiny_inputs, db):
    """Reconstruction: at 30 % the outputs move much less than with plain magnitude pruning."""
    from workbench.core.optimize import prune_unstructured_

    x = torch.cat(tiny_inputs)
    with torch.no_grad():
        ref = tiny(x)
        obc = copy.deepcopy(tiny)
        db.apply_(obc, 0.3)
        mag = copy.deepcopy(tiny)
        prune_unstructured_(mag, 0.3, True)
        assert (obc(x) - ref).pow(2).mean() < (mag(x) - ref).pow(2).mean()


def test_cache_is_reused_and_invalidated(tiny, tiny_inputs, tmp_path):
    steps = list(prepare_steps(tiny, tiny_inputs, cache_dir=tmp_path))
    assert not any("cache" in s for s in steps if isinstance(s, str))
    first = steps[-1]
    assert len(list(tmp_path.glob("*.pt"))) == 1

    again = list(prepare_steps(tiny, tiny_inputs, cache_dir=tmp_path))
    assert any("cache" in s for s in again if isinstance(s, str))
    assert not any("layers" in s for s in again if isinstance(s, str))  # nothing recomputed
    loaded = again[-1]
    assert isinstance(loaded, PruneDatabase) and loaded.key == first.key
    a, b = copy.deepcopy(tiny), copy.deepcopy(tiny)
    assert first.apply_(a, 0.5) == loaded.apply_(b, 0.5)
    assert _same_weights(a, b)

    changed = copy.deepcopy(tiny)
    with torch.no_grad():
        changed.body[0].weight[0, 0] += 0.01
    assert fingerprint(changed, tiny_inputs) != fingerprint(tiny, tiny_inputs)
    steps = list(prepare_steps(changed, tiny_inputs, cache_dir=tmp_path))
    assert not any("cache" in s for s in steps if isinstance(s, str))

    images = [x.clone() for x in tiny_inputs]
    images[3][0, 0, 0, 0] += 0.5
    assert fingerprint(tiny, images) != fingerprint(tiny, tiny_inputs)
    steps = list(prepare_steps(tiny, images, cache_dir=tmp_path))
    assert not any("cache" in s for s in steps if isinstance(s, str))
    assert len(list(tmp_path.glob("*.pt"))) == 3


def test_a_broken_cache_file_is_prepared_again(tiny, tiny_inputs, tmp_path):
    key = fingerprint(tiny, tiny_inputs)
    db = prepare(tiny, tiny_inputs, cache_dir=tmp_path)
    path = next(tmp_path.glob("*.pt"))
    path.write_bytes(b"not a database")
    again = prepare(tiny, tiny_inputs, cache_dir=tmp_path)
    assert again.key == db.key and key  # rebuilt, and the file rewritten
    assert PruneDatabase.load(path) is not None


def test_the_generator_can_be_cancelled(tiny, tiny_inputs, tmp_path):
    state = copy.deepcopy(tiny.state_dict())
    steps = prepare_steps(tiny, tiny_inputs, cache_dir=tmp_path)
    seen = []
    for step in steps:
        seen.append(step)
        if isinstance(step, str) and "layers" in step:  # in the middle of the database
            break
    steps.close()
    assert all(isinstance(s, str) for s in seen)
    assert not list(tmp_path.iterdir())  # nothing half-written in the cache
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.modules())
    assert all(torch.equal(v, tiny.state_dict()[k]) for k, v in state.items())
    # cancelled while collecting statistics
    steps = prepare_steps(tiny, tiny_inputs, cache_dir=tmp_path, batch_size=2)
    assert "views" in next(steps)
    steps.close()
    assert not list(tmp_path.iterdir())


def test_an_isolated_preparation_runs_in_a_child_and_gives_the_same_database(tiny, tiny_inputs, db, tmp_path):
    steps = list(prepare_steps(tiny, tiny_inputs, cache_dir=tmp_path, isolate=True))
    child = steps[-1]
    assert isinstance(child, PruneDatabase) and child.key == db.key
    assert child.info["pid"] != os.getpid() and db.info["pid"] == os.getpid()
    assert any("layers" in s for s in steps if isinstance(s, str))  # the child's progress came through
    a, b = copy.deepcopy(tiny), copy.deepcopy(tiny)
    assert child.apply_(a, 0.5) == db.apply_(b, 0.5) and _same_weights(a, b)
    # the next preparation loads the cache here, starting no child
    again = prepare(tiny, tiny_inputs, cache_dir=tmp_path, isolate=True)
    assert again.info["pid"] == child.info["pid"] and not psutil.Process().children()


def test_cancelling_an_isolated_preparation_kills_the_child(tiny, tiny_inputs, tmp_path):
    steps = prepare_steps(tiny, tiny_inputs, cache_dir=tmp_path, isolate=True, batch_size=2)
    assert "views" in next(steps)
    children = psutil.Process().children()
    assert len(children) == 1
    steps.close()
    assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE
    assert not list(tmp_path.iterdir())


class _Unpicklable(TinyNet):
    def __init__(self):
        super().__init__()
        self.hook = lambda x: x  # pickle cannot store a lambda


def test_a_model_that_cannot_go_to_a_child_is_prepared_here(tiny, tiny_inputs, db, tmp_path):
    model = _Unpicklable()
    model.load_state_dict(tiny.state_dict())
    here = prepare(model.eval(), tiny_inputs, cache_dir=tmp_path, isolate=True)
    assert here.info["pid"] == os.getpid() and not psutil.Process().children()
    a, b = copy.deepcopy(tiny), copy.deepcopy(tiny)
    assert here.apply_(a, 0.5) == db.apply_(b, 0.5) and _same_weights(a, b)


@pytest.mark.data
def test_beats_global_magnitude_at_half_sparsity(imagenet_sample):
    """On the shared photos, calibrated on images that are not scored (the benchmark's split:
    128 calibrate, 120 of the other 372 scored, to stay near two minutes): the database + DP
    keeps more top-1 at 50 % than global magnitude pruning with BatchNorm re-estimation.
    Measured on an AMD EPYC, 1 thread: float 0.875, OBC 0.767, magnitude + BN 0.725 on these
    120 (on all 372: 0.884 / 0.823 / 0.726, see benchmarks/prune_accuracy.py)."""

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # oversubscribed threads on a small shared machine are far slower
    try:
        _beats_magnitude(imagenet_sample)
    finally:
        torch.set_num_threads(threads)


def _beats_magnitude(imagenet_sample):
    from workbench.core.models import load_model
    from workbench.core.optimize import prune_unstructured_
    from workbench.core.recover import recalibrate_bn_
    from workbench.core.sources import open_source

    loaded = load_model("efficientnet_lite0")
    model = loaded.model.eval()
    src = open_source(imagenet_sample)
    order = list(range(len(src.files)))  # files are sorted
    random.Random(0).shuffle(order)
    frames = [src.frame(i) for i in order[:128] + order[128:248]]
    calib = [loaded.preprocess(f.rgb) for f in frames[:128]]
    x = torch.cat([loaded.preprocess(f.rgb) for f in frames[128:]])
    y = torch.tensor([f.label for f in frames[128:]])

    def top1(m):
        with torch.no_grad():
            return sum((m(x[i:i + 50]).argmax(1) == y[i:i + 50]).sum().item() for i in range(0, len(x), 50)) / len(x)

    db = prepare(model, calib)
    obc = copy.deepcopy(model)
    db.apply_(obc, 0.5)
    mag = copy.deepcopy(model)
    prune_unstructured_(mag, 0.5, True)
    recalibrate_bn_(mag, calib)  # at 50 % re-estimation helps magnitude pruning
    assert _zeros(obc) == round(0.5 * _total(model))
    acc_float, acc_obc, acc_mag = top1(model), top1(obc), top1(mag)
    assert acc_obc >= acc_mag + 0.03, (acc_float, acc_obc, acc_mag)
    assert acc_obc >= acc_float - 0.15, (acc_float, acc_obc, acc_mag)
