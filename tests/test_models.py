import os
import pickle

import pytest
import torch

from workbench.core.efficientnet_lite import build_lite
from workbench.core.models import ModelLoadError, load_model


def test_default_model_loads_with_its_preprocessing():
    lm = load_model("efficientnet_lite0")
    assert not lm.random_weights and len(lm.classes) == 1000
    assert lm.preprocess.crop == 224 and lm.preprocess.mean == (0.5, 0.5, 0.5)
    assert lm.preprocess.interpolation == "bicubic"
    # the package's tensors landed where they belong (not left at init values)
    assert lm.model.classifier.bias.abs().sum() > 0


def test_lite_traces_with_fx_and_export():
    model = build_lite("efficientnet_lite0").eval()
    x = torch.randn(1, 3, 224, 224)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), model(x))
    exported = torch.export.export(model, (x,))
    assert exported is not None
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Conv2d", "BatchNorm2d", "ReLU6"} <= kinds


def test_random_weights_are_marked():
    lm = load_model("resnet18", weights="none")
    assert lm.random_weights and "random" in lm.display_name


def test_unknown_model_is_explained():
    with pytest.raises(ModelLoadError, match="unknown model"):
        load_model("no_such_net")


def test_state_dict_file_with_architecture(tmp_path):
    ref = load_model("efficientnet_lite0")
    path = tmp_path / "weights.pth"
    torch.save(ref.model.state_dict(), path)
    with pytest.raises(ModelLoadError, match="architecture"):
        load_model(str(path))
    lm = load_model(str(path), arch="efficientnet_lite0")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(lm.model(x), ref.model(x))


def _imagenet_tiny():
    """TinyNet with 1000 classes: a file model must score the ImageNet classes to be loaded."""
    from conftest import TinyNet

    torch.manual_seed(0)
    return TinyNet(classes=1000).eval()


def test_torchscript_file(tmp_path):
    tiny = _imagenet_tiny()
    path = tmp_path / "tiny.pt"
    torch.jit.script(tiny).save(str(path))
    lm = load_model(str(path))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), tiny(x))


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['WB_MARKER']}",))


def test_pickle_with_code_is_refused_and_does_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("WB_MARKER", str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(str(path))
    assert not marker.exists()


def test_full_pickled_module_needs_trust(tmp_path):
    tiny = _imagenet_tiny()
    path = tmp_path / "full.pt"
    torch.save(tiny, path)
    with pytest.raises(ModelLoadError, match="trust"):
        load_model(str(path))
    assert load_model(str(path), trust=True).model is not None


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError):
        load_model(str(path))
