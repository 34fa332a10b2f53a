"""Offline Fashion-MNIST reader (gzipped IDX files, e.g. from Debian's ``dataset-fashion-mnist``).

Nothing is ever downloaded. The default location is ``/usr/share/datasets/fashion-mnist`` (Debian
package ``dataset-fashion-mnist``); set ``root=`` or the environment variable
``FASHION_MNIST_ROOT`` to use another folder holding the four standard files.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "read_idx",
    "load_fashion_mnist",
    "fashion_mnist_tensors",
    "fashion_mnist_available",
]

DEFAULT_FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"

#: Class names, index-aligned with the labels.
FASHION_MNIST_CLASSES: Tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

#: Mean and standard deviation of the training pixels scaled to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type codes -> numpy big-endian dtypes
_IDX_DTYPES: Dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array.

    Raises
    ------
    ValueError
        If the header is malformed or the payload size does not match it.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: payload has {len(data) - header} bytes, header {shape} implies {expected}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _resolve_root(root: Optional[Union[str, os.PathLike]]) -> Path:
    if root is None:
        root = os.environ.get("FASHION_MNIST_ROOT", DEFAULT_FASHION_MNIST_ROOT)
    return Path(root)


def fashion_mnist_available(root: Optional[Union[str, os.PathLike]] = None) -> bool:
    """True when all four Fashion-MNIST files exist under ``root``."""
    r = _resolve_root(root)
    return all((r / f).is_file() for pair in _FILES.values() for f in pair)


def load_fashion_mnist(
    split: str = "train", root: Optional[Union[str, os.PathLike]] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split from local gzipped IDX files.

    Parameters
    ----------
    split : {"train", "test"}
        60,000 training or 10,000 test images.
    root : path, optional
        Folder holding the ``*-idx?-ubyte.gz`` files. Default: ``$FASHION_MNIST_ROOT`` or
        ``/usr/share/datasets/fashion-mnist``.

    Returns
    -------
    images : ndarray (n, 28, 28) uint8
    labels : ndarray (n,) int64, in ``0..9`` (see :data:`FASHION_MNIST_CLASSES`)

    Raises
    ------
    FileNotFoundError
        If the files are missing (install the Debian package ``dataset-fashion-mnist``).
    ValueError
        For an unknown split or inconsistent files.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    r = _resolve_root(root)
    img_path, lbl_path = (r / f for f in _FILES[split])
    missing = [str(p) for p in (img_path, lbl_path) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. Install the Debian package "
            f"'dataset-fashion-mnist' (sudo apt-get install dataset-fashion-mnist, files go to "
            f"{DEFAULT_FASHION_MNIST_ROOT}) or pass root= / set FASHION_MNIST_ROOT to a folder "
            "with the four gzipped IDX files. Nothing is downloaded automatically."
        )
    images = read_idx(img_path)
    labels = read_idx(lbl_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(
            f"{img_path}: expected uint8 (n, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"{lbl_path}: {labels.shape[0]} labels for {images.shape[0]} images")
    return images, labels.astype(np.int64)


def fashion_mnist_tensors(
    split: str = "train",
    root: Optional[Union[str, os.PathLike]] = None,
    limit: Optional[int] = None,
    normalize: bool = True,
) -> TensorDataset:
    """Fashion-MNIST as a :class:`torch.utils.data.TensorDataset` of ``(image, label)``.

    Parameters
    ----------
    split, root
        As in :func:`load_fashion_mnist`.
    limit : int, optional
        Keep only the first ``limit`` examples.
    normalize : bool
        If True, images are ``(x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD`` with ``x`` in [0, 1];
        otherwise ``x`` in [0, 1].

    Returns
    -------
    TensorDataset
        images float32 ``(n, 1, 28, 28)``, labels int64 ``(n,)``.
    """
    images, labels = load_fashion_mnist(split, root)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    if normalize:
        x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return TensorDataset(x, torch.from_numpy(labels))
