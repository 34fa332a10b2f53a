"""Stacked datasets: two images one above the other, the lower one reaching behind the wall.

Stacked Fashion-MNIST: two 28x28 images one above the other (56x28), label = top image class.

* ``"different"`` (D1): the bottom image is of another class (the control; training data).
* ``"same"`` (D2): the bottom image is another image of the same class (the paper's STACK setting:
  a map that lights up the bottom half looks plausible to a reader).

Built from :func:`captum_cam_ext.data.load_fashion_mnist`; nothing is downloaded.

Stacked photos (:func:`stacked_photos`): the bundled real photos (or random crops of them) as
224x112 tiles, two per 224x224 image, the STACK-MIX setting of the paper for an ImageNet model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["StackedPairs", "stack_pairs", "StackedFashionMNIST", "stacked_fashion_mnist",
           "photo_tiles", "stacked_photos"]

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


def _resize_chw(img: Tensor, size: Tuple[int, int]) -> Tensor:
    import torch.nn.functional as F

    return F.interpolate(img[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def photo_tiles(
    photos: Optional[Dict[str, np.ndarray]] = None,
    crops_per_photo: int = 0,
    tile: Tuple[int, int] = (112, 224),
    seed: int = 0,
    min_scale: float = 0.4,
) -> Tuple[Tensor, Tensor, List[str]]:
    """Tiles of real photos to stack: the whole photo, or random crops of it.

    Parameters
    ----------
    photos : dict, optional
        ``{name: (H, W, 3) uint8}``; default :func:`captum_cam_ext.data.bundled_photos`.
    crops_per_photo : int
        0: one tile per photo (its largest centred region of the tile's aspect ratio); otherwise
        this many random crops of that aspect ratio, each covering ``min_scale``-1 of the largest
        such region's width, at a random position.
    tile : (h, w)
        Tile size (default half of a 224x224 image).
    seed : int
        Seed of the crops.

    Returns
    -------
    (tiles, photo_index, names)
        ``(n, 3, h, w)`` float in ``[0, 1]``, ``(n,)`` int64 index into ``names``, the photo names.
    """
    if photos is None:
        from captum_cam_ext.data.photos import bundled_photos

        photos = bundled_photos()
    if not photos:
        raise ValueError("no photos given")
    if not isinstance(crops_per_photo, int) or crops_per_photo < 0:
        raise ValueError(f"crops_per_photo must be an int >= 0, got {crops_per_photo!r}")
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale!r}")
    th, tw = int(tile[0]), int(tile[1])
    rng = np.random.default_rng(seed)
    tiles: List[Tensor] = []
    index: List[int] = []
    names = list(photos)
    for i, name in enumerate(names):
        arr = np.asarray(photos[name])
        if arr.ndim != 3 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"photo {name!r} must be (H, W, 3) uint8, got {arr.shape} {arr.dtype}")
        img = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255.0
        h, w = img.shape[-2:]
        full_w = min(w, int(h * tw / th))  # largest region with the tile's aspect ratio
        full_h = int(round(full_w * th / tw))
        boxes = []
        if crops_per_photo == 0:
            boxes.append(((h - full_h) // 2, (w - full_w) // 2, full_h, full_w))
        for _ in range(crops_per_photo):
            cw = int(round(full_w * rng.uniform(min_scale, 1.0)))
            ch = max(1, int(round(cw * th / tw)))
            top = int(rng.integers(0, h - ch + 1))
            left = int(rng.integers(0, w - cw + 1))
            boxes.append((top, left, ch, cw))
        for top, left, ch, cw in boxes:
            tiles.append(_resize_chw(img[:, top : top + ch, left : left + cw], (th, tw)).clamp(0, 1))
            index.append(i)
    return torch.stack(tiles), torch.tensor(index, dtype=torch.long), names


def stacked_photos(
    mode: str = "same",
    crops_per_photo: int = 0,
    n: Optional[int] = None,
    seed: int = 0,
    photos: Optional[Dict[str, np.ndarray]] = None,
    size: int = 224,
) -> StackedPairs:
    """Real photos stacked two per image, as the paper's STACK-MIX (two objects one above the other).

    The lower tile fills rows ``size/2 .. size-1``, so it straddles the paper's hidden band (the
    bottom 54 of 224 rows).  Pixels are normalised as
    :func:`captum_cam_ext.data.preprocess_efficientnet` does (``(x - 0.5) / 0.5``).

    Parameters
    ----------
    mode : {"same", "different"}
        Bottom tile from the same photo (another crop of it; with ``crops_per_photo=0`` the photo
        itself) or from another photo.
    crops_per_photo : int
        0: whole photos; otherwise that many random crops per photo (see :func:`photo_tiles`).
    n : int, optional
        Number of stacked images: default every ordered pair of whole photos for
        ``crops_per_photo=0`` (``P`` same-photo images or ``P (P - 1)`` different ones), otherwise
        one per tile (each tile on top once, with a random partner).
    seed : int
        Seed of the crops and of the pairing.
    photos : dict, optional
        ``{name: (H, W, 3) uint8}``; default the bundled photos.
    size : int
        Output side (even).

    Returns
    -------
    StackedPairs
        ``images`` ``(n, 3, size, size)``; ``labels`` / ``bottom_labels`` are photo indices.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not isinstance(size, int) or size < 2 or size % 2:
        raise ValueError(f"size must be an even int >= 2, got {size!r}")
    tiles, owner, _ = photo_tiles(photos, crops_per_photo, (size // 2, size), seed)
    rng = np.random.default_rng(seed + 1)
    own = owner.numpy()
    pairs: List[Tuple[int, int]] = []
    if crops_per_photo == 0:
        m = tiles.shape[0]
        if mode == "same":
            pairs = [(i, i) for i in range(m)]
        else:
            pairs = [(i, j) for i in range(m) for j in range(m) if i != j]
    else:
        for i in range(tiles.shape[0]):
            pool = np.flatnonzero((own == own[i]) if mode == "same" else (own != own[i]))
            pool = pool[pool != i]
            if pool.size == 0:
                raise ValueError(f"no partner tile for tile {i} in mode {mode!r}")
            pairs.append((i, int(pool[rng.integers(pool.size)])))
    if n is not None:
        if not isinstance(n, int) or not 0 < n <= len(pairs):
            raise ValueError(f"n must be in [1, {len(pairs)}], got {n!r}")
        pairs = [pairs[k] for k in sorted(rng.permutation(len(pairs))[:n].tolist())]
    top = torch.tensor([p[0] for p in pairs], dtype=torch.long)
    bot = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    images = (torch.cat([tiles[top], tiles[bot]], dim=2) - 0.5) / 0.5
    return StackedPairs(images.contiguous(), owner[top].clone(), owner[bot].clone(), top, bot, mode)
