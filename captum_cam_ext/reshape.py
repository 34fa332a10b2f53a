"""``reshape_transform`` functions for token layouts (vision transformers).

A CAM needs a layer value ``(N, K, *S)`` with channels ``K`` and a spatial grid ``S``. Transformer
blocks produce tokens ``(N, T, C)`` instead; these functions map them to ``(N, C, h, w)``.

Examples
--------
>>> from captum_cam_ext import LayerGradCam
>>> from captum_cam_ext.reshape import vit_reshape_transform
>>> vit = torchvision.models.vit_b_16(weights=None).eval()          # doctest: +SKIP
>>> cam = LayerGradCam(vit, vit.encoder.layers[-1].ln_1,             # doctest: +SKIP
...                    reshape_transform=vit_reshape_transform)
>>> maps = cam.attribute(images, target=3)                           # (N, 1, 14, 14)
"""

from __future__ import annotations

import math
from typing import Callable, Optional

from torch import Tensor

__all__ = ["swin_reshape_transform", "vit_reshape_transform", "vit_reshape"]


def vit_reshape_transform(
    tokens: Tensor, height: Optional[int] = None, width: Optional[int] = None, prefix_tokens: int = 1
) -> Tensor:
    """ViT tokens ``(N, prefix + h*w, C)`` to a grid ``(N, C, h, w)``, dropping the prefix tokens.

    Parameters
    ----------
    tokens : Tensor
        ``(N, T, C)``: ``prefix_tokens`` leading tokens (the class token; DeiT has 2) then the
        patches in row-major order.
    height, width : int, optional
        The patch grid; default a square grid ``sqrt(T - prefix_tokens)``.
    prefix_tokens : int
        Tokens before the patches (default 1, the class token).

    Returns
    -------
    Tensor
        ``(N, C, h, w)``.
    """
    if not isinstance(tokens, Tensor) or tokens.dim() != 3:
        shape = tuple(tokens.shape) if isinstance(tokens, Tensor) else type(tokens).__name__
        raise ValueError(f"vit_reshape_transform expects tokens (N, T, C), got {shape}")
    n, t, c = tokens.shape
    patches = t - prefix_tokens
    if patches <= 0:
        raise ValueError(f"{t} tokens leave no patch after {prefix_tokens} prefix token(s)")
    if height is None and width is None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(
                f"{patches} patch tokens do not form a square grid; pass height= and width= "
                "(e.g. functools.partial(vit_reshape_transform, height=14, width=20))"
            )
        height = width = side
    elif height is None or width is None:
        height = height or patches // int(width)  # type: ignore[arg-type]
        width = width or patches // int(height)
    if int(height) * int(width) != patches:
        raise ValueError(
            f"a {height} x {width} grid has {int(height) * int(width)} cells, the layer has {patches} patches"
        )
    grid = tokens[:, prefix_tokens:, :].reshape(n, int(height), int(width), c)
    return grid.permute(0, 3, 1, 2)


def vit_reshape(height: Optional[int] = None, width: Optional[int] = None, prefix_tokens: int = 1) -> Callable:
    """A ``reshape_transform`` with a fixed grid / prefix (for ``reshape_transform=vit_reshape(...)``)."""

    def transform(tokens: Tensor) -> Tensor:
        return vit_reshape_transform(tokens, height, width, prefix_tokens)

    return transform


def swin_reshape_transform(features: Tensor) -> Tensor:
    """Swin / ConvNeXt-style channels-last maps ``(N, h, w, C)`` to ``(N, C, h, w)``."""
    if not isinstance(features, Tensor) or features.dim() != 4:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"swin_reshape_transform expects (N, h, w, C), got {shape}")
    return features.permute(0, 3, 1, 2)
