import copy
import itertools

import pytest
import torch
from torch import nn

from workbench.core.efficientnet_lite import ConvBNAct, MBConv
from workbench.core.measure import count_macs
from workbench.core.prune_channels import (
    HiddenGroup,
    allocate_channels,
    augmented_views,
    find_hidden_groups,
    obs_column_order,
    prune_hidden_channels,
    prune_hidden_channels_steps,
)


class TinyInvertedResidual(nn.Module):
    """Stem, three inverted-residual blocks (two with a residual), a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = ConvBNAct(3, 16, 3, 2, 32)
        self.blocks = nn.Sequential(MBConv(16, 16, 3, 1, 6, 16), MBConv(16, 24, 3, 2, 6, 16),
                                    MBConv(24, 24, 5, 1, 6, 8))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = TinyInvertedResidual().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    return model


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(1, 3, 32, 32, generator=g) + torch.randn(1, 3, 1, 1, generator=g) for _ in range(24)]


FAST = {"views": 2, "sensitivity_images": 8, "batch_size": 8}


def test_finds_the_blocks_and_their_residuals(net, images):
    from workbench.core.prune_channels import _profile_

    groups = find_hidden_groups(net)
    assert [g.block for g in groups] == ["blocks.0", "blocks.1", "blocks.2"]
    assert groups[0].expand_conv == "blocks.0.expand.conv" and groups[0].project_bn == "blocks.0.project.bn"
    _profile_(net, groups, images[0])
    assert [g.residual for g in groups] == [True, False, True]
    assert [g.chained for g in groups] == [False, True, True]
    assert find_hidden_groups(net, exclude=["blocks.1.depthwise.conv"])[1].block == "blocks.2"


def test_pruned_model_is_smaller_keeps_its_interface_and_meets_the_target(net, images):
    original = copy.deepcopy(net.state_dict())
    example = images[0]
    result = prune_hidden_channels(net, 0.7, images, **FAST)
    model = result["model"]
    assert result["original_macs"] == count_macs(net, example)
    assert result["macs"] == count_macs(model, example) <= 0.7 * result["original_macs"]
    with torch.no_grad():
        assert model(example).shape == net(example).shape
    # the caller's model is untouched
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in original.items())
    # the residual stream keeps its channels, layers outside the blocks their weights
    for a, b in zip(net.blocks, model.blocks):
        assert a.expand.conv.in_channels == b.expand.conv.in_channels
        assert a.project.conv.out_channels == b.project.conv.out_channels
        hidden = b.expand.conv.out_channels
        assert b.depthwise.conv.groups == b.depthwise.conv.in_channels == hidden == b.project.conv.in_channels
        assert hidden % 16 == 0  # HIDDEN_MULTIPLE: AVX-512 holds 16 floats
    assert torch.equal(model.stem.conv.weight, net.stem.conv.weight)
    assert torch.equal(model.fc.weight, net.fc.weight)
    assert set(result["allocation"]) == {"blocks.0", "blocks.1", "blocks.2"}
    assert any(f < 1 for f in result["allocation"].values())


def test_least_squares_reconstruction_lowers_the_output_error(net, images):
    alloc = {"blocks.0": 0.5, "blocks.1": 0.5, "blocks.2": 0.5}
    with_ls = prune_hidden_channels(net, 0.7, images, allocation=alloc, **FAST)["model"]
    without = prune_hidden_channels(net, 0.7, images, allocation=alloc, reconstruct=False, **FAST)["model"]
    x = torch.cat(images)
    with torch.no_grad():
        ref = net(x)
        err_ls = (with_ls(x) - ref).pow(2).mean()
        err_plain = (without(x) - ref).pow(2).mean()
    assert err_ls < 0.5 * err_plain
    for a, b in zip(with_ls.blocks, without.blocks):
        assert a.expand.conv.out_channels == b.expand.conv.out_channels


def test_stopping_the_generator_cancels(net, images):
    before = copy.deepcopy(net.state_dict())
    steps = prune_hidden_channels_steps(net, 0.6, images, **FAST)
    first = list(itertools.islice(steps, 3))
    steps.close()
    assert all(isinstance(s, str) for s in first)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())


def test_obs_order_beats_magnitude_on_correlated_inputs():
    torch.manual_seed(0)
    n, mid, cout = 2000, 48, 12
    base = torch.randn(n, 6).double()
    h = base @ torch.randn(6, mid).double() + 0.05 * torch.randn(n, mid).double()
    h = torch.cat([h, torch.ones(n, 1, dtype=torch.float64)], 1)
    w0 = torch.randn(cout, mid + 1).double()
    y = h @ w0.t()
    G = h.t() @ h / n
    G[range(mid), range(mid)] += 1e-6
    order = obs_column_order(G, w0, mid, 16)
    assert len(order) == len(set(order)) == mid - 16

    def error(kept):
        idx = torch.cat([kept, torch.tensor([mid])])
        sol = torch.linalg.lstsq(h[:, idx], y).solution
        return (h[:, idx] @ sol - y).pow(2).mean().item()

    obs_kept = torch.tensor(sorted(set(range(mid)) - set(order)))
    magnitude_kept = w0[:, :mid].norm(dim=0).argsort(descending=True)[:16].sort().values
    assert error(obs_kept) < error(magnitude_kept)


def test_allocation_meets_the_budget_and_spends_it_where_loss_is_lowest():
    groups = [HiddenGroup("a", *"abcdef", channels=64, macs_per_channel=100),
              HiddenGroup("b", *"abcdef", channels=64, macs_per_channel=100)]
    losses = {"a": {48: 0.01, 32: 0.02, 16: 0.04}, "b": {48: 1.0, 32: 2.0, 16: 4.0}}
    budget = 0.75 * 128 * 100
    alloc = allocate_channels(groups, losses, budget, round_to=8)
    assert sum(alloc[g.block] * g.macs_per_channel for g in groups) <= budget
    assert alloc["a"] < alloc["b"] == 64
    assert alloc == allocate_channels(groups, losses, budget, round_to=8)
    with pytest.raises(ValueError):
        allocate_channels(groups, losses, 0.1 * 128 * 100, round_to=8)


def test_augmented_views():
    x = torch.randn(1, 3, 20, 20)
    views = augmented_views([x, x], 4)
    assert len(views) == 8 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[1], x.flip(3))


def test_pruning_in_a_child_process_gives_the_same_model(net, images):
    """The product prunes channels in a child process (optimize.prune_hidden, isolate.isolated)."""
    from workbench.core.isolate import isolated

    here = prune_hidden_channels(net, 0.7, images, **FAST)
    there = list(isolated(prune_hidden_channels_steps, net, 0.7, images, **FAST))[-1]
    assert there["allocation"] == here["allocation"] and there["macs"] == here["macs"]
    a, b = here["model"].state_dict(), there["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
