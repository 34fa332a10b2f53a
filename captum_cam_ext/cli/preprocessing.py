"""How an image becomes a model input: channels, size, normalisation (and back, for display).

One :class:`Preprocessing` describes the whole conversion, so the command line can state it in its
output (``describe``) and apply the same rule to photos (RGB, any size) and to dataset images
(Fashion-MNIST: 28x28 grayscale).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NORMALIZATIONS",
    "Preprocessing",
    "make_preprocessing",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The ``--preprocessing`` choices besides ``auto`` (``efficientnet`` is the bundled model's own).
NORMALIZATIONS: Tuple[str, ...] = ("imagenet", "fashion-mnist", "efficientnet")

NORMALIZATION_TEXT = {
    "imagenet": "ImageNet mean/std",
    "imagenet-gray": "(x - 0.5) / 0.5",
    "fashion-mnist": "Fashion-MNIST mean/std",
    "efficientnet": "(x - 0.5) / 0.5 (EfficientNet-Lite)",
}


@dataclass(frozen=True)
class Preprocessing:
    """uint8 image ``(H, W, 3)`` or ``(H, W)`` -> float input ``(1, channels, size, size)``.

    Attributes
    ----------
    name : str
        The normalisation: ``"imagenet"``, ``"fashion-mnist"`` or ``"efficientnet"``.
    channels : int
        1 (grayscale: the channel mean) or 3 (a grayscale image is replicated).
    size : int
        Side of the square model input.
    mean, std : tuple of float
        Per-channel normalisation of pixel values in [0, 1] (length ``channels``).
    crop : bool
        True: the shorter side is resized to ``round(size * 256 / 224)`` and the centre
        ``size x size`` cropped (ImageNet evaluation). False: resized to ``size x size``.
    """

    name: str
    channels: int
    size: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop: bool = True

    def __call__(self, image: Any) -> Tensor:
        """The model input ``(1, channels, size, size)`` of one uint8 image."""
        t = torch.as_tensor(np.asarray(image)).float().div(255.0)
        if t.ndim == 2:
            t = t[..., None]
        if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
            raise ValueError(f"expected an image (H, W), (H, W, 3) or (H, W, 4), got shape {tuple(t.shape)}")
        t = t[..., :3].permute(2, 0, 1)[None]
        if self.channels == 1 and t.shape[1] == 3:
            t = t.mean(1, keepdim=True)
        t = self._resize(t).clamp(0.0, 1.0)
        if self.channels == 3 and t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((t - mean) / std).contiguous()

    def _resize(self, t: Tensor) -> Tensor:
        h, w = t.shape[-2:]
        size = self.size
        if not self.crop:
            if (h, w) == (size, size):
                return t
            return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        resize = max(size, round(size * 256 / 224))
        s = resize / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        return t[..., top : top + size, left : left + size]

    def display(self, x: Tensor) -> np.ndarray:
        """The model's view of input ``x`` ``(1, C, S, S)`` as uint8 ``(S, S, 3)``."""
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        img = (x[0].detach().cpu().float() * std + mean).clamp(0, 1)
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        return (img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)

    def with_crop(self, crop: bool) -> Preprocessing:
        """The same preprocessing with another ``crop`` rule."""
        return replace(self, crop=crop)

    def normalization_text(self) -> str:
        key = "imagenet-gray" if self.name == "imagenet" and self.channels == 1 else self.name
        return NORMALIZATION_TEXT[key]

    def describe(self) -> str:
        """E.g. ``3x224x224, shorter side resized to 256 and centre-cropped, ImageNet mean/std``."""
        if self.crop:
            geometry = f"shorter side resized to {max(self.size, round(self.size * 256 / 224))} and centre-cropped"
        else:
            geometry = f"resized to {self.size}x{self.size}"
        colour = "grayscale" if self.channels == 1 else "RGB"
        return f"{self.channels}x{self.size}x{self.size} {colour}, {geometry}, {self.normalization_text()}"

    def describe_conversion(self, source: str, height: int, width: int, channels: int) -> str:
        """How ``channels x height x width`` images of ``source`` become model inputs, in words."""
        steps = []
        if channels == 1 and self.channels == 3:
            steps.append("grayscale replicated to 3 channels")
        elif channels == 3 and self.channels == 1:
            steps.append("RGB averaged to 1 channel")
        if self.crop:
            steps.append(f"bilinear resize (shorter side {max(self.size, round(self.size * 256 / 224))}) "
                         f"and centre crop {self.size}x{self.size}")
        elif (height, width) != (self.size, self.size):
            steps.append(f"bilinear resize {height}x{width} -> {self.size}x{self.size}")
        steps.append(self.normalization_text())
        kind = "grayscale" if channels == 1 else "RGB"
        return (f"{source} {height}x{width} {kind} -> model input {self.channels}x{self.size}x{self.size}: "
                + ", ".join(steps))


def make_preprocessing(name: str, channels: int, size: int, crop: bool = True) -> Preprocessing:
    """The :class:`Preprocessing` of a normalisation name for a model's channels and input size.

    Raises
    ------
    ValueError
        Unknown name, channels not 1 or 3, or a size below 1.
    """
    if name not in NORMALIZATIONS:
        raise ValueError(f"unknown preprocessing {name!r}; use auto, {', '.join(NORMALIZATIONS)}")
    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels}-channel inputs; the command line supports 1 or 3")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"the input size must be a positive int, got {size!r}")
    if name == "fashion-mnist":
        from captum_cam_ext.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD

        return Preprocessing(name, channels, size, (FASHION_MNIST_MEAN,) * channels,
                             (FASHION_MNIST_STD,) * channels, crop=False)
    if name == "imagenet" and channels == 3:
        return Preprocessing(name, 3, size, IMAGENET_MEAN, IMAGENET_STD, crop=crop)
    return Preprocessing(name, channels, size, (0.5,) * channels, (0.5,) * channels, crop=crop)
