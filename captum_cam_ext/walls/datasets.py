"""Stacked Fashion-MNIST: two 28x28 images one above the other (56x28), label = top image class.

* ``"different"`` (D1): the bottom image is of another class (the control; training data).
* ``"same"`` (D2): the bottom image is another image of the same class (the paper's STACK setting:
  a map that lights up the bottom half looks plausible to a reader).

Built from :func:`captum_cam_ext.data.load_fashion_mnist`; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["StackedPairs", "stack_pairs", "StackedFashionMNIST", "stacked_fashion_mnist"]

_MODES = ("different", "same")


@dataclass
class StackedPairs:
    """Stacked images and their bookkeeping.

    Attributes
    ----------
    images : Tensor
        ``(n, 1, 2h, w)`` float32 (normalized when requested).
    labels : Tensor
        ``(n,)`` int64, the class of the top image (the target).
    bottom_labels : Tensor
        ``(n,)`` int64, the class of the bottom image.
    top_index, bottom_index : Tensor
        ``(n,)`` int64 indices into the source split.
    mode : str
        ``"different"`` or ``"same"``.
    """

    images: Tensor
    labels: Tensor
    bottom_labels: Tensor
    top_index: Tensor
    bottom_index: Tensor
    mode: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def stack_pairs(
    images: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    mode: str = "different",
    n: Optional[int] = None,
    seed: int = 0,
    normalize: Optional[Tuple[float, float]] = None,
) -> StackedPairs:
    """Pair every chosen top image with a bottom image and stack them vertically.

    Parameters
    ----------
    images : array or Tensor
        ``(m, h, w)`` uint8 (scaled to ``[0, 1]``) or float.
    labels : array or Tensor
        ``(m,)`` class indices.
    mode : {"different", "same"}
        Bottom image of another class (D1) or another image of the same class (D2).
    n : int, optional
        Number of stacked images (default ``m``); the top images are a seeded permutation.
    seed : int
        Seed of the permutation and of the pairing.
    normalize : (mean, std), optional
        Applied after scaling to ``[0, 1]``.

    Returns
    -------
    StackedPairs
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    imgs = torch.as_tensor(np.asarray(images) if not isinstance(images, Tensor) else images)
    labs = torch.as_tensor(np.asarray(labels) if not isinstance(labels, Tensor) else labels).long()
    if imgs.dim() != 3 or labs.dim() != 1 or imgs.shape[0] != labs.shape[0]:
        raise ValueError(
            f"images must be (m, h, w) and labels (m,), got {tuple(imgs.shape)} and "
            f"{tuple(labs.shape)}"
        )
    m = imgs.shape[0]
    n = m if n is None else int(n)
    if not 0 < n <= m:
        raise ValueError(f"n must be in [1, {m}] (the split has {m} images), got {n}")
    rng = np.random.default_rng(seed)
    top = torch.from_numpy(rng.permutation(m)[:n])
    lab_np = labs.numpy()
    by_class = {int(c): np.flatnonzero(lab_np == c) for c in np.unique(lab_np)}
    if mode == "different" and len(by_class) < 2:
        raise ValueError("mode='different' needs at least two classes")
    bottom = np.empty(n, dtype=np.int64)
    for i, t in enumerate(top.tolist()):
        c = int(lab_np[t])
        if mode == "same":
            pool = by_class[c]
            if pool.size < 2:
                raise ValueError(f"class {c} has a single image: cannot pair it with another")
            j = t
            while j == t:
                j = int(pool[rng.integers(pool.size)])
        else:
            j = int(rng.integers(m))
            while int(lab_np[j]) == c:
                j = int(rng.integers(m))
        bottom[i] = j
    bot = torch.from_numpy(bottom)
    x = imgs.float()
    if imgs.dtype == torch.uint8:
        x = x / 255.0
    if normalize is not None:
        x = (x - normalize[0]) / normalize[1]
    stacked = torch.cat([x[top], x[bot]], dim=1).unsqueeze(1).contiguous()
    return StackedPairs(stacked, labs[top].clone(), labs[bot].clone(), top, bot, mode)


def stacked_fashion_mnist(
    split: str = "test",
    mode: str = "different",
    n: Optional[int] = None,
    seed: int = 0,
    normalize: bool = True,
) -> StackedPairs:
    """Stacked Fashion-MNIST (``56 x 28``) from the local IDX files.

    Parameters
    ----------
    split : {"train", "test"}
        Source split (top and bottom images both come from it).
    mode : {"different", "same"}
        D1 or D2.
    n : int, optional
        Number of stacked images (default: the whole split).
    seed : int
        Pairing seed.
    normalize : bool
        Standardize with the Fashion-MNIST mean and std.

    Raises
    ------
    FileNotFoundError
        When Fashion-MNIST is not installed (see :func:`captum_cam_ext.data.load_fashion_mnist`).
    """
    from captum_cam_ext.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

    images, labels = load_fashion_mnist(split)
    norm = (FASHION_MNIST_MEAN, FASHION_MNIST_STD) if normalize else None
    return stack_pairs(images, labels, mode=mode, n=n, seed=seed, normalize=norm)


class StackedFashionMNIST(Dataset):
    """``torch.utils.data.Dataset`` of ``(image (1, 56, 28), top label)``.

    Parameters are those of :func:`stacked_fashion_mnist`; ``.pairs`` holds the bookkeeping.
    """

    def __init__(
        self,
        split: str = "test",
        mode: str = "different",
        n: Optional[int] = None,
        seed: int = 0,
        normalize: bool = True,
    ) -> None:
        self.pairs = stacked_fashion_mnist(split, mode, n, seed, normalize)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        return self.pairs.images[i], self.pairs.labels[i]
