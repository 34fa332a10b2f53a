"""A pretrained ImageNet network made provably blind to the bottom of its input, without training.

EfficientNet-Lite0's receptive field covers the whole 224x224 image from every cell of its 7x7 head
map (checked with autograd: the gradient of each head row reaches input rows 0..223), so masking
head cells cannot hide a band.  :class:`TopRowsClassifier` instead runs the unchanged trunk
*separately* on the top rows and on the bottom rows (the same weights; no information crosses the
wall), concatenates the two feature maps along the height (``.features``, the CAM layer, which
covers the whole image) and lets the unchanged classifier head average-pool only the top part.  The
logits are those of the pretrained network applied to the top crop, an honest ImageNet classifier
of the visible part; changing the bottom rows changes no bit of them.

:func:`blind_efficientnet_lite0` splits at row 160 (a multiple of the network's stride 32, so the
concatenated 7-row map stays aligned with the image: feature row ``i`` covers input rows
``32 i .. 32 i + 31``).  The model is therefore blind to rows 160..223, which contain the paper's
band, the bottom 54 rows (170..223).
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["TopRowsClassifier", "blind_efficientnet_lite0", "EFFICIENTNET_SPLIT_ROW"]

#: Where :func:`blind_efficientnet_lite0` splits a 224-row input (a multiple of the stride 32).
EFFICIENTNET_SPLIT_ROW = 160


class TopRowsClassifier(nn.Module):
    """A trunk + pooled-head classifier that reads only input rows ``0 .. split_row - 1``.

    Parameters
    ----------
    trunk : nn.Module
        ``(N, C, h, W) -> (N, K, h', w')`` feature extractor (any height ``h``).
    head : nn.Module
        ``(N, K, h', w') -> logits``; it must pool over the spatial grid it is given (global
        average pooling then a linear layer, as ImageNet CNNs).
    split_row : int
        First input row the output cannot depend on.
    height : int, optional
        Expected input height (checked when given).

    Attributes
    ----------
    features : nn.Identity
        The CAM layer: the top and bottom feature maps concatenated along the height.
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, split_row: int,
                 height: Optional[int] = None) -> None:
        super().__init__()
        if not isinstance(split_row, int) or split_row < 1:
            raise ValueError(f"split_row must be a positive int, got {split_row!r}")
        if height is not None and not split_row < height:
            raise ValueError(f"split_row must be below the input height {height}, got {split_row}")
        self.trunk, self.head, self.split_row, self.height = trunk, head, split_row, height
        self.features = nn.Identity()

    @property
    def hidden_rows(self) -> slice:
        """The input rows the output cannot depend on, ``slice(split_row, height)``."""
        return slice(self.split_row, self.height)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[2] <= self.split_row or (
                self.height is not None and x.shape[2] != self.height):
            want = self.height if self.height is not None else f"> {self.split_row}"
            raise ValueError(
                f"{type(self).__name__} expects (N, C, H, W) inputs with H = {want}, got "
                f"{tuple(x.shape)}"
            )
        top = self.trunk(x[:, :, : self.split_row])
        bottom = self.trunk(x[:, :, self.split_row :])
        feats = self.features(torch.cat([top, bottom], dim=2))
        return self.head(feats[:, :, : top.shape[2]])


class _EfficientNetTrunk(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net.extract_features(x)


class _EfficientNetHead(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net: Any = net

    def forward(self, feats: Tensor) -> Tensor:
        pooled = self.net._avg_pooling(feats)
        return self.net._fc(self.net._dropout(torch.flatten(pooled, 1)))


def blind_efficientnet_lite0(
    split_row: int = EFFICIENTNET_SPLIT_ROW,
    device: Union[str, torch.device] = "cpu",
    base: Optional[nn.Module] = None,
) -> TopRowsClassifier:
    """The bundled pretrained EfficientNet-Lite0, blind to input rows ``split_row .. 223``.

    Parameters
    ----------
    split_row : int
        First hidden row (default 160, see the module documentation; any row in ``[32, 223]``
        works, but a multiple of 32 keeps the CAM grid aligned with the image).
    device : str or torch.device
        Where to put the model.
    base : nn.Module, optional
        An already loaded :func:`captum_cam_ext.data.load_efficientnet_lite0` model to wrap
        (shared, not copied).

    Returns
    -------
    TopRowsClassifier
        In eval mode; inputs ``(N, 3, 224, 224)`` from
        :func:`captum_cam_ext.data.preprocess_efficientnet`; CAM layer ``model.features``
        (``(N, 1280, 7, 7)`` with the default split).
    """
    if base is None:
        from captum_cam_ext.data.efficientnet import load_efficientnet_lite0

        base = load_efficientnet_lite0(device)
    if not hasattr(base, "extract_features") or not hasattr(base, "_fc"):
        raise TypeError(f"base must be an EfficientNet(-Lite) model, got {type(base).__name__}")
    model = TopRowsClassifier(_EfficientNetTrunk(base), _EfficientNetHead(base), split_row, 224)
    return model.eval().to(device)
