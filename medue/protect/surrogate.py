"""Surrogate networks trained here (nothing downloaded), built from torch building blocks.

``SmallResNet`` is a fully convolutional ResNet-style classifier (global average pooling), so one surrogate
fitted on 64x64 samples also takes 512x512 CT slices. Three layouts (``surrogate`` of the EM family; its default
``"auto"`` takes ``"strided"`` when the fit runs at :data:`STRIDED_FROM` px or more, else ``"small"``):

* ``"small"`` (default): a 3x3 stem at full resolution and stages of 16, 32 and 64 channels. Its first stage runs at
  the input's resolution, where a release's 1-px structure lives: the choice for images up to about 256 px;
* ``"strided"``: the same stages after a 3x3 stem of stride 2, so every layer runs at a quarter of the pixels. The
  choice for a dataset-level fit at full CT/MR resolution (512 px and more), where the stride-1 stem and first stage
  are most of the cost: ``benchmarks/fit_stream.py`` (its ``surrogate_cost``) measures a training step (forward, backward) and a noise step
  (gradient with respect to the input) of each layout; the input gradient stays full-resolution either way;
* ``"resnet18"``: the ResNet-18 layout with a CIFAR-style stem, for a surrogate as strong as common attackers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.short(x))


class SmallResNet(nn.Module):
    """ResNet-style surrogate: stem + ``len(widths)`` residual stages (stride 2 after the first) + GAP + linear.

    Args:
        num_classes: Output classes.
        widths: Channels per stage; ``(16, 32, 64)`` is the fast default, ``(64, 128, 256, 512)`` with
            ``blocks=2`` is the ResNet-18 layout.
        blocks: Residual blocks per stage.
        in_channels: Input channels (1 for grayscale medical images).
        stem_stride: Stride of the 3x3 stem (2: every later layer at a quarter of the pixels).
    """

    def __init__(self, num_classes: int, *, widths: tuple[int, ...] = (16, 32, 64), blocks: int = 1,
                 in_channels: int = 1, stem_stride: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers = []
        cin = widths[0]
        for i, w in enumerate(widths):
            for b in range(blocks):
                layers.append(_Block(cin, w, 2 if (i > 0 and b == 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def resnet18(num_classes: int, *, in_channels: int = 1, width: int = 64) -> SmallResNet:
    """ResNet-18 layout (4 stages x 2 basic blocks) with a CIFAR-style 3x3 stem; ``width`` scales all stages."""
    return SmallResNet(num_classes, widths=(width, 2 * width, 4 * width, 8 * width), blocks=2,
                       in_channels=in_channels)


#: Surrogate layouts :func:`make_surrogate` builds.
SURROGATES = ("small", "strided", "resnet18")

#: Fit resolution (the smaller side, px) from which ``surrogate: auto`` takes ``"strided"``.
STRIDED_FROM = 256


def surrogate_for(size: tuple[int, ...]) -> str:
    """The layout ``surrogate: auto`` takes for slices of ``size`` (height, width)."""
    return "strided" if min(size) >= STRIDED_FROM else "small"


def make_surrogate(arch: str, num_classes: int, *, seed: int, device: torch.device) -> nn.Module:
    """Build a surrogate with weights initialised from ``seed`` (independent of the global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch == "small":
            model = SmallResNet(num_classes)
        elif arch == "strided":
            model = SmallResNet(num_classes, stem_stride=2)
        elif arch == "resnet18":
            model = resnet18(num_classes)
        else:
            raise ValueError(f"unknown surrogate architecture {arch!r}; expected one of {SURROGATES}")
    return model.to(device)
