"""Small models shared by the tests."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv-relu-conv-relu (the CAM layer: ``features``) -> GAP -> linear."""

    def __init__(self, in_ch: int = 3, width: int = 8, n_classes: int = 5, inplace: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(width, width * 2, 3, padding=1)
        self.features = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class FlattenHeadCNN(nn.Module):
    """A CNN whose head reads every position (not a GAP), so positions get different gradients."""

    def __init__(self, in_ch: int = 3, width: int = 6, size: int = 8, n_classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, width, 3, padding=1)
        self.act = nn.ReLU()
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(width * size * size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.relu(self.mid(self.act(self.conv(x)))), 1))
