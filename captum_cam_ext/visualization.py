"""Pictures of CAM maps: overlays, method x image grids, and the bridge to Captum's visualizer.

The helpers follow :mod:`captum.attr.visualization`: images are ``(H, W, 3)`` numpy arrays
(channels last), and :func:`to_captum_attr` turns our ``(N, 1, h, w)`` maps into the ``(H, W, C)``
arrays that :func:`captum.attr.visualization.visualize_image_attr` expects.

Examples
--------
>>> maps = LayerGradCam(model, layer).attribute(x, target=t, relu_attributions=True)
>>> img = overlay(photo, maps[0])                    # uint8 (H, W, 3)
>>> fig = cam_grid([photo], {"Grad-CAM": maps})      # matplotlib Figure
>>> save_figure(fig, "out/gradcam.png")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "to_image",
    "cam_to_numpy",
    "resize_cam",
    "to_captum_attr",
    "overlay",
    "cam_grid",
    "save_figure",
]

ArrayLike = Union[np.ndarray, Tensor]


def to_image(image: ArrayLike) -> np.ndarray:
    """Convert an image to uint8 ``(H, W, 3)``.

    Parameters
    ----------
    image : ndarray or Tensor
        ``(H, W)``, ``(H, W, 1|3|4)`` or channels-first ``(1|3, H, W)`` (a tensor is assumed
        channels-first when its first dimension is 1 or 3 and its last is not). uint8, or float in
        [0, 1]; floats outside [0, 1] are min-max rescaled (e.g. a normalised input tensor).

    Returns
    -------
    ndarray (H, W, 3) uint8
    """
    if isinstance(image, Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
            arr = np.transpose(arr, (1, 2, 0))
    elif isinstance(image, np.ndarray):
        arr = image
    else:
        raise TypeError(f"image must be a numpy array or a torch.Tensor, got {type(image).__name__}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"image must have shape (H, W), (H, W, 1|3|4) or (1|3, H, W); got {arr.shape}"
        )
    arr = arr[..., :3]
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"unsupported image dtype {arr.dtype}; use uint8 or float")
    f = arr.astype(np.float64)
    if not np.isfinite(f).all():
        raise ValueError("image contains NaN or Inf values")
    if np.issubdtype(arr.dtype, np.integer):
        f = f / 255.0
    elif f.min() < 0.0 or f.max() > 1.0:
        lo, hi = f.min(), f.max()
        f = (f - lo) / (hi - lo) if hi > lo else np.zeros_like(f)
    return np.ascontiguousarray(np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8))


def cam_to_numpy(cam: ArrayLike) -> np.ndarray:
    """One map as a float ``(h, w)`` array.

    Parameters
    ----------
    cam : ndarray or Tensor
        ``(h, w)``, ``(1, h, w)`` or ``(1, 1, h, w)`` (one example of the engine's ``(N, 1, h, w)``
        output).

    Returns
    -------
    ndarray (h, w) float32
    """
    if isinstance(cam, Tensor):
        arr = cam.detach().float().cpu().numpy()
    elif isinstance(cam, np.ndarray):
        arr = cam.astype(np.float32, copy=False)
    else:
        raise TypeError(f"cam must be a numpy array or a torch.Tensor, got {type(cam).__name__}")
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(
            f"cam must be one map (h, w), (1, h, w) or (1, 1, h, w); got shape {arr.shape}. "
            "Index one example of a batch first (maps[i])."
        )
    if not np.isfinite(arr).all():
        raise ValueError("cam contains NaN or Inf values")
    return arr


def resize_cam(cam: ArrayLike, size: Tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Upsample one map to ``size = (H, W)`` (``F.interpolate``, ``align_corners=False``).

    Returns
    -------
    ndarray (H, W) float32
    """
    arr = cam_to_numpy(cam)
    if tuple(arr.shape) == tuple(size):
        return arr.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    kwargs: Dict[str, Any] = {}
    if mode in ("bilinear", "bicubic"):
        kwargs["align_corners"] = False
    return F.interpolate(t, size=tuple(size), mode=mode, **kwargs)[0, 0].numpy()


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    # interpolation round-off must not turn a constant map into amplified noise
    if hi - lo <= 1e-6 * max(1.0, abs(hi), abs(lo)):
        return np.zeros_like(arr, dtype=np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def to_captum_attr(
    maps: ArrayLike, size: Optional[Tuple[int, int]] = None, channels: int = 1
) -> np.ndarray:
    """Maps in the layout of :func:`captum.attr.visualization.visualize_image_attr`.

    Parameters
    ----------
    maps : Tensor or ndarray
        One map ``(h, w)``/``(1, h, w)``/``(1, 1, h, w)``, or a batch ``(N, 1, h, w)``.
    size : (H, W), optional
        Upsample to this size first (bilinear). Captum's visualizer needs the map and the image to
        have the same height and width.
    channels : int
        Repeat the map over this many channels (1, or 3 to match an RGB image for
        ``method="blended_heat_map"`` with ``sign="all"``).

    Returns
    -------
    ndarray
        ``(H, W, channels)`` for one map, ``(N, H, W, channels)`` for a batch; float32.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if isinstance(maps, Tensor):
        maps = maps.detach().float().cpu().numpy()
    if not isinstance(maps, np.ndarray):
        raise TypeError(f"maps must be a numpy array or a torch.Tensor, got {type(maps).__name__}")
    if maps.ndim == 4 and maps.shape[0] > 1:
        return np.stack([to_captum_attr(m, size, channels) for m in maps])
    arr = cam_to_numpy(maps)
    if size is not None:
        arr = resize_cam(arr, size)
    return np.ascontiguousarray(np.repeat(arr[..., None], channels, axis=-1))


def _colormap(name: str) -> Any:
    import matplotlib

    try:
        return matplotlib.colormaps[name]
    except KeyError as exc:
        raise ValueError(
            f"unknown colormap {name!r}; use a matplotlib name such as 'jet', 'viridis', 'inferno'"
        ) from exc


def overlay(
    image: ArrayLike,
    cam: ArrayLike,
    colormap: str = "jet",
    alpha: float = 0.5,
    normalize: bool = True,
) -> np.ndarray:
    """Blend a heat map of ``cam`` over ``image``.

    Parameters
    ----------
    image : ndarray or Tensor
        The picture, ``(H, W, 3)`` uint8 or float in [0, 1] (see :func:`to_image`).
    cam : ndarray or Tensor
        One map ``(h, w)`` (or ``(1, h, w)``, ``(1, 1, h, w)``) at any resolution; it is upsampled
        bilinearly to ``(H, W)``.
    colormap : str
        A matplotlib colormap name.
    alpha : float in [0, 1]
        Weight of the heat map (0: the image, 1: the heat map only).
    normalize : bool
        Min-max normalise the map to [0, 1] first (a constant map becomes 0). If False the map
        must already lie in [0, 1].

    Returns
    -------
    ndarray (H, W, 3) uint8
    """
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    img = to_image(image)
    h, w = img.shape[:2]
    m = resize_cam(cam, (h, w))
    if normalize:
        m = _minmax(m)
    elif m.min() < -1e-6 or m.max() > 1 + 1e-6:
        raise ValueError("with normalize=False the map must lie in [0, 1]")
    heat = _colormap(colormap)(np.clip(m, 0.0, 1.0))[..., :3]
    out = (1.0 - alpha) * img.astype(np.float64) / 255.0 + alpha * heat
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def cam_grid(
    images: Sequence[ArrayLike],
    maps_by_method: Mapping[str, Union[ArrayLike, Sequence[ArrayLike]]],
    titles: Optional[Sequence[str]] = None,
    row_titles: bool = True,
    show_images: bool = True,
    colormap: str = "jet",
    alpha: float = 0.5,
    cell_size: float = 2.4,
    suptitle: Optional[str] = None,
    colorbar: bool = True,
) -> Any:
    """A grid of overlays: one row per method, one column per image.

    Parameters
    ----------
    images : sequence of ndarray/Tensor
        ``n`` pictures (see :func:`to_image`).
    maps_by_method : mapping name -> maps
        For every method the ``n`` maps: a ``(n, 1, h, w)`` tensor/array or a sequence of ``n``
        single maps.
    titles : sequence of str, optional
        Column titles (``n`` strings, e.g. class names and probabilities), or ``n * len(methods)``
        strings for one title per cell (row-major: method by method).
    row_titles : bool
        Write the method names on the left of each row.
    show_images : bool
        Add a first row with the plain images.
    colormap, alpha :
        As in :func:`overlay`.
    cell_size : float
        Inches per cell.
    suptitle : str, optional
        Figure title.
    colorbar : bool
        Add a colour bar for the normalised map value.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    imgs = [to_image(im) for im in images]
    n = len(imgs)
    if n == 0:
        raise ValueError("images is empty")
    if not maps_by_method:
        raise ValueError("maps_by_method is empty; pass {method name: maps}")
    methods = list(maps_by_method)
    per_method: Dict[str, list] = {}
    for name in methods:
        maps = maps_by_method[name]
        seq = list(maps) if not isinstance(maps, (Tensor, np.ndarray)) else [maps[i] for i in range(len(maps))]
        if len(seq) != n:
            raise ValueError(f"method {name!r} has {len(seq)} maps for {n} images")
        per_method[name] = seq
    if titles is not None:
        titles = list(titles)
        if len(titles) not in (n, n * len(methods)):
            raise ValueError(
                f"titles must have {n} (one per image) or {n * len(methods)} (one per cell) "
                f"entries, got {len(titles)}"
            )
    rows = len(methods) + (1 if show_images else 0)
    fig = Figure(figsize=(cell_size * n + (0.6 if colorbar else 0.0), cell_size * rows + 0.3))
    axes = fig.subplots(rows, n, squeeze=False)
    r0 = 0
    if show_images:
        for j, im in enumerate(imgs):
            ax = axes[0, j]
            ax.imshow(im)
            if titles is not None and len(titles) == n:
                ax.set_title(titles[j], fontsize=9)
        if row_titles:
            axes[0, 0].set_ylabel("input", fontsize=10)
        r0 = 1
    for i, name in enumerate(methods):
        for j, im in enumerate(imgs):
            ax = axes[r0 + i, j]
            ax.imshow(overlay(im, per_method[name][j], colormap=colormap, alpha=alpha))
            if titles is not None and len(titles) == n * len(methods):
                ax.set_title(titles[i * n + j], fontsize=9)
            elif titles is not None and not show_images and i == 0:
                ax.set_title(titles[j], fontsize=9)
        if row_titles:
            axes[r0 + i, 0].set_ylabel(name, fontsize=10)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        fig.subplots_adjust(right=1.0 - 0.5 / fig.get_figwidth())
        cax = fig.add_axes((1.0 - 0.4 / fig.get_figwidth(), 0.15, 0.12 / fig.get_figwidth(), 0.6))
        sm = ScalarMappable(norm=Normalize(0, 1), cmap=_colormap(colormap))
        fig.colorbar(sm, cax=cax).ax.tick_params(labelsize=7)
    return fig


def save_figure(fig: Any, path: Union[str, os.PathLike], dpi: int = 100) -> Path:
    """Save a matplotlib figure (PNG/PDF/SVG by extension), creating parent folders.

    Returns
    -------
    Path
        The written file.
    """
    if not hasattr(fig, "savefig"):
        raise TypeError(f"fig must be a matplotlib Figure, got {type(fig).__name__}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=dpi, bbox_inches="tight")
    return p
