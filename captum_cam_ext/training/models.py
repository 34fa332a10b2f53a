"""Small ResNet-18-style and MobileNet-V2-style classifiers for 28x28 / 32x32 images.

They are built from torchvision's own blocks (``BasicBlock`` with ``ReLU(inplace=True)`` reused
twice per block; ``InvertedResidual`` with ``ReLU6(inplace=True)``), so they exercise the same
module layouts as torchvision ``resnet18`` / ``mobilenet_v2``, at a width that trains on one CPU
thread in minutes. Used by the tests and ``benchmarks/guided_bench.py``.
"""

from __future__ import annotations

from typing import List, Sequence

from torch import Tensor, nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock
from torchvision.ops.misc import Conv2dNormActivation

__all__ = ["SmallResNet18", "SmallMobileNetV2"]


def _check_widths(widths: Sequence[int], n: int) -> List[int]:
    w = [int(v) for v in widths]
    if len(w) != n or any(v < 1 for v in w):
        raise ValueError(f"widths must be {n} positive integers, got {list(widths)}")
    return w


class SmallResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 ``BasicBlock`` stages) with a 3x3 stem and no max-pool.

    Parameters
    ----------
    num_classes : int
    in_channels : int
    widths : sequence of 4 int
        Channels of the four stages (torchvision: 64, 128, 256, 512).

    Notes
    -----
    Input ``(N, in_channels, H, W)``; ``layer4`` output is ``(N, widths[3], H/8, W/8)``.
    """

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, widths: Sequence[int] = (16, 32, 64, 128)
    ) -> None:
        super().__init__()
        w = _check_widths(widths, 4)
        self.conv1 = nn.Conv2d(in_channels, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0])
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = w[0]
        self.layer1 = self._make_layer(w[0], 1)
        self.layer2 = self._make_layer(w[1], 2)
        self.layer3 = self._make_layer(w[2], 2)
        self.layer4 = self._make_layer(w[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )
        blocks = [BasicBlock(self.inplanes, planes, stride, down), BasicBlock(planes, planes)]
        self.inplanes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class SmallMobileNetV2(nn.Module):
    """MobileNet-V2 layout (``InvertedResidual`` blocks, ReLU6) for small images.

    Parameters
    ----------
    num_classes : int
    in_channels : int
    widths : sequence of 5 int
        Stem, three stage widths, and the last 1x1 conv (torchvision: 32, ..., 1280).
    expand : int
        Expansion ratio of the inverted residuals (torchvision: 6).
    stem_stride : int
        Stride of the first 3x3 conv (torchvision: 2; default 1).

    Notes
    -----
    Stages at strides 1, 2, 2 after the stem (then a 1x1 conv), so ``features[-1]`` is
    ``(N, widths[4], H/(4 s), W/(4 s))`` for stem stride ``s`` (rounded up).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 16, 24, 32, 128),
        expand: int = 4,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        w = _check_widths(widths, 5)
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        layers: List[nn.Module] = [
            Conv2dNormActivation(in_channels, w[0], stride=stem_stride, activation_layer=nn.ReLU6)
        ]
        cin = w[0]
        # (expansion, out channels, repeats, first stride)
        for t, c, n, s in ((1, w[1], 1, 1), (expand, w[2], 2, 2), (expand, w[3], 2, 2)):
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(Conv2dNormActivation(cin, w[4], kernel_size=1, activation_layer=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(w[4], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))
