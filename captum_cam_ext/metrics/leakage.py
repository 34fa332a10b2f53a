"""Leakage metrics: how much saliency a map puts where the model provably cannot see.

captum.metrics-style: each function takes attributions ``(N, 1, h, w)`` (or ``(N, h, w)``) and a
description of the unseen region and returns one value per example, shape ``(N,)``.

The unseen region ``unseen`` is either an ``int`` (rows ``>= unseen`` are unseen, in the
coordinates of the attributions, or of ``input_size`` when the maps are upsampled first) or a
boolean tensor broadcastable to ``(N, 1, h, w)``.

* :func:`wall_ratio` -- the paper's metric (Taimeskhanov et al., 2024, Table 1):
  ``||S[band]||_2 / ||S||_2`` on the min-max normalized, upsampled map ``S``.
* :func:`unseen_positive_mass` -- share of the positive mass in the unseen part.
* :func:`unseen_any_positive` -- 1 if any unseen value is positive (average it for the share of
  images).
* :func:`unseen_seen_mean_ratio` -- mean of the map on the unseen part / mean on the seen part.

A faithful map scores 0 on the first three.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_cam_ext._maps import normalize_maps, upsample_maps

__all__ = [
    "band_mask",
    "wall_ratio",
    "unseen_positive_mass",
    "unseen_any_positive",
    "unseen_seen_mean_ratio",
    "leakage_metrics",
]

Unseen = Union[int, Tensor]


def band_mask(size: Tuple[int, int], first_row: int, stop_row: Optional[int] = None) -> Tensor:
    """Boolean ``(1, 1, h, w)`` mask, True on rows ``first_row .. stop_row - 1`` (default: to the
    bottom)."""
    h, w = int(size[0]), int(size[1])
    stop = h if stop_row is None else int(stop_row)
    if not 0 <= first_row <= stop <= h:
        raise ValueError(
            f"band rows must satisfy 0 <= first_row <= stop_row <= {h}, got {first_row}, {stop}"
        )
    m = torch.zeros(1, 1, h, w, dtype=torch.bool)
    m[:, :, first_row:stop] = True
    return m


def _as_maps(attributions: Tensor) -> Tensor:
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    if attributions.dim() == 3:
        attributions = attributions.unsqueeze(1)
    if attributions.dim() != 4 or attributions.shape[1] != 1:
        raise ValueError(
            "attributions must be CAM maps of shape (N, 1, h, w) or (N, h, w), got "
            f"{tuple(attributions.shape)}"
        )
    return attributions.detach().to(torch.float64)


def _as_mask(unseen: Unseen, maps: Tensor) -> Tensor:
    h, w = maps.shape[-2:]
    if isinstance(unseen, bool):
        raise TypeError("unseen must be an int (first unseen row) or a boolean mask, got a bool")
    if isinstance(unseen, int):
        return band_mask((h, w), unseen).to(maps.device)
    if isinstance(unseen, Tensor):
        if unseen.dtype != torch.bool:
            raise TypeError(f"an unseen mask must be a bool tensor, got {unseen.dtype}")
        try:
            return torch.broadcast_to(unseen.to(maps.device), maps.shape)
        except RuntimeError:
            raise ValueError(
                f"unseen mask of shape {tuple(unseen.shape)} does not broadcast to the maps "
                f"{tuple(maps.shape)}; upsample the maps (input_size=...) or give a mask at the "
                "maps' resolution"
            ) from None
    raise TypeError(f"unseen must be an int or a bool Tensor, got {type(unseen).__name__}")


def _prepare(
    attributions: Tensor,
    unseen: Unseen,
    input_size: Optional[Tuple[int, int]],
    normalize: bool,
    mode: str,
) -> Tuple[Tensor, Tensor]:
    maps = _as_maps(attributions)
    if input_size is not None:
        maps = upsample_maps(maps, (int(input_size[0]), int(input_size[1])), mode)
    if normalize:
        maps = normalize_maps(maps)
    return maps, _as_mask(unseen, maps)


def wall_ratio(
    attributions: Tensor,
    unseen: Unseen,
    input_size: Optional[Tuple[int, int]] = None,
    normalize: bool = True,
    interpolate_mode: str = "bilinear",
) -> Tensor:
    """The paper's leakage ratio ``||S[band]||_2 / ||S||_2``, per example.

    Parameters
    ----------
    attributions : Tensor
        CAM maps ``(N, 1, h, w)``.
    unseen : int or bool Tensor
        The band (rows ``>= unseen`` at the resolution after upsampling, or a mask).
    input_size : (H, W), optional
        Upsample to this size first (``interpolate_mode``; bilinear uses pixel centres, as
        OpenCV's resize used by the paper's code).
    normalize : bool
        Per-example min-max normalization (after upsampling), as in the paper.

    Returns
    -------
    Tensor
        ``(N,)`` float64 in ``[0, 1]``; 0 for an all-zero map.  A constant map gives
        ``sqrt(band rows / all rows)`` when not normalized.
    """
    maps, mask = _prepare(attributions, unseen, input_size, normalize, interpolate_mode)
    num = (maps * mask).flatten(1).norm(dim=1)
    den = maps.flatten(1).norm(dim=1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den))


def unseen_positive_mass(
    attributions: Tensor,
    unseen: Unseen,
    input_size: Optional[Tuple[int, int]] = None,
    interpolate_mode: str = "bilinear",
) -> Tensor:
    """Share of the positive saliency mass lying in the unseen part, per example.

    Returns
    -------
    Tensor
        ``(N,)`` in ``[0, 1]``: ``sum_unseen ReLU(S) / sum ReLU(S)`` (0 when there is no positive
        mass).
    """
    maps, mask = _prepare(attributions, unseen, input_size, False, interpolate_mode)
    pos = maps.clamp_min(0)
    num = (pos * mask).flatten(1).sum(1)
    den = pos.flatten(1).sum(1)
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den))


def unseen_any_positive(
    attributions: Tensor,
    unseen: Unseen,
    threshold: float = 0.0,
    input_size: Optional[Tuple[int, int]] = None,
    interpolate_mode: str = "bilinear",
) -> Tensor:
    """1.0 where some unseen value exceeds ``threshold`` (default: strictly positive), else 0.0.

    Its mean over a dataset is the share of images with positive saliency behind the wall.

    Returns
    -------
    Tensor
        ``(N,)`` float64 of 0/1.
    """
    maps, mask = _prepare(attributions, unseen, input_size, False, interpolate_mode)
    hit = ((maps > threshold) & mask).flatten(1).any(1)
    return hit.to(torch.float64)


def unseen_seen_mean_ratio(
    attributions: Tensor,
    unseen: Unseen,
    input_size: Optional[Tuple[int, int]] = None,
    interpolate_mode: str = "bilinear",
) -> Tensor:
    """Mean saliency on the unseen part divided by the mean on the seen part, per example.

    Returns
    -------
    Tensor
        ``(N,)``; 0 when both means are 0, ``inf`` when only the seen mean is 0 (then the whole
        map is behind the wall), ``nan`` only if the maps contain nan.
    """
    maps, mask = _prepare(attributions, unseen, input_size, False, interpolate_mode)
    m = mask.to(maps.dtype)
    n_un = m.flatten(1).sum(1)
    n_seen = (1 - m).flatten(1).sum(1)
    if bool((n_un == 0).any()) or bool((n_seen == 0).any()):
        raise ValueError("the unseen region must be neither empty nor the whole map")
    mean_un = (maps * m).flatten(1).sum(1) / n_un
    mean_seen = (maps * (1 - m)).flatten(1).sum(1) / n_seen
    ratio = mean_un / mean_seen.where(mean_seen != 0, torch.ones_like(mean_seen))
    zero_seen = mean_seen == 0
    ratio = torch.where(zero_seen & (mean_un == 0), torch.zeros_like(ratio), ratio)
    inf = torch.full_like(ratio, float("inf"))
    return torch.where(zero_seen & (mean_un != 0), inf * torch.sign(mean_un), ratio)


def leakage_metrics(
    attributions: Tensor,
    unseen_layer: Unseen,
    unseen_input: Optional[int] = None,
    input_size: Optional[Tuple[int, int]] = None,
) -> Dict[str, Tensor]:
    """All leakage metrics at once, per example.

    Parameters
    ----------
    attributions : Tensor
        Maps ``(N, 1, h, w)`` at the layer's resolution (after ReLU, if the method has one).
    unseen_layer : int or bool Tensor
        The unseen part at the layer's resolution (our three metrics are computed there, where it
        is exact for a split-trunk model).
    unseen_input, input_size : optional
        First unseen input row and the input size, for the paper's ratio on the upsampled map
        (without them the ratio is computed at the layer's resolution).

    Returns
    -------
    dict
        ``wall_ratio``, ``positive_mass``, ``any_positive``, ``mean_ratio`` -> ``(N,)`` tensors.
    """
    if (unseen_input is None) != (input_size is None):
        raise ValueError("give both unseen_input and input_size, or neither")
    if unseen_input is not None:
        ratio = wall_ratio(attributions, unseen_input, input_size=input_size)
    else:
        ratio = wall_ratio(attributions, unseen_layer)
    return {
        "wall_ratio": ratio,
        "positive_mass": unseen_positive_mass(attributions, unseen_layer),
        "any_positive": unseen_any_positive(attributions, unseen_layer),
        "mean_ratio": unseen_seen_mean_ratio(attributions, unseen_layer),
    }
