import pytest

from workbench.core.config import ConfigError, OptimizationConfig


@pytest.mark.parametrize("kwargs", [
    {"sparsity": -0.1}, {"sparsity": 0.96}, {"bits": 9}, {"bits": 1}, {"bits": 12},
    {"prune_method": "random"}, {"quant_scheme": "activations"}, {"round_to": 0},
])
def test_invalid_values_are_refused(kwargs):
    with pytest.raises(ConfigError):
        OptimizationConfig(**kwargs)


def test_frozen_and_round_trip():
    cfg = OptimizationConfig(sparsity=0.3, prune_method="structured", bits=4, quant_scheme="weights",
                             exclude=("fc",))
    with pytest.raises(AttributeError):
        cfg.bits = 8
    assert OptimizationConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["version"] == 1
    with pytest.raises(ConfigError):
        OptimizationConfig.from_dict({**cfg.to_dict(), "colour": "red"})


def test_which_bit_widths_run_real_kernels():
    assert OptimizationConfig(bits=8).real_int8 and not OptimizationConfig(bits=8).simulated
    assert OptimizationConfig(bits=8, quant_scheme="weights").simulated
    assert OptimizationConfig(bits=4).simulated
    assert not OptimizationConfig().simulated and OptimizationConfig().is_identity


def test_device_rules():
    assert not OptimizationConfig(bits=16, device="cuda").simulated  # real fp16 on a GPU
    assert OptimizationConfig(bits=16).simulated
    with pytest.raises(ConfigError, match="CPU"):
        OptimizationConfig(bits=8, device="cuda")
    with pytest.raises(ConfigError, match="device"):
        OptimizationConfig(device="tpu")
