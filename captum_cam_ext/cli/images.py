"""Images in and out: reading photos, folders as datasets, targets by name, output folders."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from captum_cam_ext.cli._common import CliError, warn

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolder",
    "ConvertedImages",
    "list_images",
    "output_folder",
    "parse_target",
    "read_image",
    "save_overlay",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB; raises ``CliError`` when the file cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CliError(f"cannot read image {path}: {exc}") from None


def list_images(path: Path) -> List[Path]:
    """Image files of a folder (by extension, sorted), or the file itself."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return [path]


def output_folder(path: str) -> Path:
    """Create the output folder ``path`` (and its parents); a one-line error if it cannot be.

    Raises
    ------
    CliError
        ``path`` (or a parent) is an existing file, or the folder cannot be created.
    """
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            raise CliError(f"--out {path}: {p} is an existing file, not a folder; give a folder path "
                           "(it is created when missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"--out {path}: cannot create the folder ({exc.strerror or exc}); pick another "
                       "path") from None
    return out


def parse_target(spec: Optional[str], class_names: Optional[Sequence[str]]) -> Optional[int]:
    """``pred`` -> None, a class index, or a class name (case-insensitive) -> its index."""
    if spec is None or spec.lower() in ("pred", "predicted", "top1"):
        return None
    try:
        return int(spec)
    except ValueError:
        pass
    if class_names is not None:
        lower = [c.lower() for c in class_names]
        if spec.lower() in lower:
            return lower.index(spec.lower())
        close = difflib.get_close_matches(spec.lower(), lower, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CliError(f"unknown class name {spec!r}.{hint}")
    raise CliError(f"--target must be 'pred' or a class index, got {spec!r}")


def save_overlay(img: np.ndarray, title: str, path: Path) -> None:
    """Save an overlay image with a title line above it as PNG."""
    from matplotlib.figure import Figure

    h, w = img.shape[:2]
    fig = Figure(figsize=(max(2.5, w / 100), max(2.5, h / 100) + 0.35))
    ax = fig.add_axes((0, 0, 1, h / (h + 35)))
    ax.imshow(img)
    ax.set_axis_off()
    fig.text(0.5, 1 - 0.5 * 35 / (h + 35), title, ha="center", va="center", fontsize=9)
    fig.savefig(path, dpi=100)


class ImageFolder(Dataset):
    """The readable images of a folder as a dataset of preprocessed tensors (C, S, S).

    Unreadable files are skipped with a warning; a folder without any readable image is an error.
    """

    def __init__(self, folder: Path, preprocess: Callable[[Any], Tensor], limit: Optional[int] = None) -> None:
        self.items: List[Tensor] = []
        for f in list_images(folder):
            if limit is not None and len(self.items) >= limit:
                break
            try:
                img = read_image(f)
            except CliError as exc:
                warn(f"skipping {f.name}: {exc}")
                continue
            self.items.append(preprocess(img)[0])
        if not self.items:
            raise CliError(f"no readable image in {folder}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tensor:
        return self.items[i]


class ConvertedImages(Dataset):
    """uint8 images with labels, converted to model inputs one at a time (``(input, label)``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess: Callable[[Any], Tensor]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.preprocess = images, labels, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.preprocess(self.images[i])[0], int(self.labels[i])
