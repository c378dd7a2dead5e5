import atexit
import gc
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from workbench.core.files import temp_dir

# nothing a test starts (subprocesses included) may read or write the user's own settings or logs
_home = str(temp_dir("tests"))  # removed at exit, or by a later run if this one is killed
atexit.register(shutil.rmtree, _home, True)
# offscreen Qt with a 1920x1080 screen (its default, 800x800, clamps a restored 1280x720 window)
SCREEN = os.path.join(_home, "screen.json")
with open(SCREEN, "w") as _f:
    json.dump({"screens": [{"name": "offscreen", "x": 0, "y": 0, "width": 1920, "height": 1080,
                            "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}]}, _f)
if os.environ.get("QT_QPA_PLATFORM", "offscreen") == "offscreen":
    os.environ["QT_QPA_PLATFORM"] = f"offscreen:configfile={SCREEN}"
for _var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
    os.environ[_var] = os.path.join(_home, _var.lower())
os.environ["RAY_TMPDIR"] = os.path.join(_home, "ray")  # a local Ray's session folders (its default: /tmp/ray)
torch.manual_seed(0)


def data_dir() -> Path:
    root = os.environ.get("WORKBENCH_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
    return Path(root)


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """The shared ImageNet sample; skips (or fails in CI) when it is absent."""
    folder = data_dir() / "imagenet-sample"
    if not folder.is_dir():
        if os.environ.get("WORKBENCH_REQUIRE_DATA"):
            pytest.fail(f"WORKBENCH_REQUIRE_DATA is set but {folder} is missing")
        pytest.skip(f"shared ImageNet sample not found at {folder}; set WORKBENCH_DATA to the folder holding it")
    return folder


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path, monkeypatch, _session_cache):
    """Keep tests away from the user's real settings, logs and caches (prepared pruning
    databases are shared by the tests of one session); each test starts with no settings."""
    monkeypatch.setenv("WORKBENCH_SETTINGS_DIR", str(tmp_path / "settings"))
    monkeypatch.setenv("WORKBENCH_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("WORKBENCH_CACHE_DIR", str(_session_cache))
    yield
    if not gc.isenabled():  # a window moved collection to the GUI thread: collect there now
        gc.collect()


@pytest.fixture
def in_process(monkeypatch):
    """The product's heavy jobs run here instead of in a child process (isolate.isolated), so
    that a test can spy on what they call."""
    from workbench.core import isolate

    monkeypatch.setattr(isolate, "isolated", lambda steps, *args, **kwargs: steps(*args, **kwargs))


class TinyNet(nn.Module):
    """Conv-BN-ReLU6 blocks, a residual and a classifier: enough to exercise every path."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                                  nn.Conv2d(32, 32, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6(),
                                  nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.body(x)
        return self.fc(self.flatten(self.pool(x)))


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture
def tiny_inputs():
    g = torch.Generator().manual_seed(1)
    # a colour shift per image: pooled noise alone is nearly the same for every image, and
    # the tiny net's classes would then hinge on rounding
    return [torch.randn(1, 3, 32, 32, generator=g) + 2 * torch.randn(1, 3, 1, 1, generator=g) for _ in range(16)]


def write_images(folder: Path, names: list[str], size=(40, 50)) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths
