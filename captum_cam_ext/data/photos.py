"""Natural RGB photos bundled with scikit-image and scikit-learn (offline, no download)."""

from __future__ import annotations

import importlib
from typing import Any, Dict

import numpy as np

__all__ = ["bundled_photos"]

# skimage.data functions that return bundled RGB natural photographs (no pooch download needed).
_SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def bundled_photos() -> Dict[str, np.ndarray]:
    """Return the natural RGB photos shipped with scikit-image and scikit-learn.

    Returns
    -------
    dict[str, ndarray (H, W, 3) uint8]
        ``chelsea`` (a tabby cat), ``coffee`` (an espresso cup), ``astronaut``, ``rocket`` from
        :mod:`skimage.data`, and ``china`` / ``flower`` from
        :func:`sklearn.datasets.load_sample_images`. A photo whose package is missing is skipped;
        the call raises only when none is available.

    Raises
    ------
    ImportError
        If neither scikit-image nor scikit-learn is installed.
    """
    photos: Dict[str, np.ndarray] = {}
    try:
        skdata: Any = importlib.import_module("skimage.data")
    except ImportError:
        skdata = None
    if skdata is not None:
        for name in _SKIMAGE_PHOTOS:
            try:
                img = np.asarray(getattr(skdata, name)())
            except Exception:  # noqa: BLE001 - a missing optional image is skipped
                continue
            if img.ndim == 3 and img.shape[-1] == 3 and img.dtype == np.uint8:
                photos[name] = np.ascontiguousarray(img)
    try:
        sk_datasets: Any = importlib.import_module("sklearn.datasets")
    except ImportError:
        sk_datasets = None
    if sk_datasets is not None:
        bunch = sk_datasets.load_sample_images()
        for fname, img in zip(bunch.filenames, bunch.images):
            stem = str(fname).replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
            photos[stem] = np.ascontiguousarray(np.asarray(img, dtype=np.uint8))
    if not photos:
        raise ImportError("bundled_photos needs scikit-image and/or scikit-learn")
    return photos
