"""The one map normaliser and the one upsampler, shared by the engine, the metrics and the plots."""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from captum.attr._utils.attribution import LayerAttribution
from torch import Tensor

__all__ = ["INTERPOLATE_MODES", "check_interpolate_mode", "normalize_maps", "upsample_maps"]

#: Interpolation modes accepted wherever maps are resized.
INTERPOLATE_MODES: Tuple[str, ...] = ("nearest", "bilinear", "bicubic", "area", "nearest-exact", "linear", "trilinear")
_SMOOTH = ("linear", "bilinear", "bicubic", "trilinear")


def check_interpolate_mode(mode: str) -> str:
    """Return ``mode`` if it is one of :data:`INTERPOLATE_MODES`, else raise a ``ValueError``."""
    if mode not in INTERPOLATE_MODES:
        raise ValueError(f"interpolate_mode must be one of {INTERPOLATE_MODES}, got {mode!r}")
    return mode


def normalize_maps(maps: Tensor, eps: float = 1e-7) -> Tensor:
    """Min-max normalise each example of ``maps`` to ``[0, 1]``.

    Parameters
    ----------
    maps : Tensor
        ``(N, ...)``; the minimum and maximum are taken over every dimension but the first.
    eps : float
        Added to the range (the pytorch-grad-cam convention, so the maximum maps to just under
        1). ``eps=0`` gives the exact min-max: the maximum maps to exactly 1. Either way a constant
        map becomes all zeros.

    Returns
    -------
    Tensor
        Same shape and dtype as ``maps``.
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"maps must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() < 2:
        raise ValueError(f"maps must have a batch dimension and at least one more, got {tuple(maps.shape)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    rng = flat.max(dim=1, keepdim=True).values - lo
    scale = rng + eps
    out = torch.where(scale > 0, (flat - lo) / torch.where(scale > 0, scale, torch.ones_like(scale)), 0.0)
    return out.to(maps.dtype).reshape(maps.shape)


def upsample_maps(maps: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """Resize maps ``(N, C, *spatial)`` (1, 2 or 3 spatial dimensions) to ``size``.

    Smooth modes (``linear``/``bilinear``/``bicubic``/``trilinear``) use ``align_corners=False``
    (pixel centres, as OpenCV's ``resize``); the 2-D names work for any dimension (``bilinear``
    means linear, bilinear or trilinear by the number of spatial dimensions). Other modes go
    through :meth:`captum.attr.LayerAttribution.interpolate`. Maps already at ``size`` are
    returned as they are.
    """
    check_interpolate_mode(mode)
    size = tuple(int(s) for s in size)
    spatial = maps.dim() - 2
    if spatial < 1 or spatial > 3 or len(size) != spatial:
        raise ValueError(f"cannot resize maps of shape {tuple(maps.shape)} to {size}: need (N, C, *size)")
    if tuple(maps.shape[2:]) == size:
        return maps
    if mode in _SMOOTH:
        if mode == "bicubic" and spatial != 2:
            raise ValueError(f"bicubic interpolation needs 2-D maps, got {spatial}-D")
        smooth = mode if mode == "bicubic" else ("linear", "bilinear", "trilinear")[spatial - 1]
        return F.interpolate(maps, size=size, mode=smooth, align_corners=False)
    return LayerAttribution.interpolate(maps, size, interpolate_mode=mode)
