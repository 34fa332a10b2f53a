"""Models, layers and images for ``walls audit IMAGES`` (the command line's audit of any model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["AuditModel", "IMAGE_EXTENSIONS", "load_audit_model", "read_images", "resolve_layer"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
_EFFICIENTNET = ("efficientnet_lite0", "efficientnetlite0")
_BLIND_EFFICIENTNET = ("efficientnet_lite0_blind", "efficientnetlite0blind")


@dataclass
class AuditModel:
    """A model to audit: the module, its preprocessing, its default CAM layer and hidden rows."""

    name: str
    model: nn.Module
    preprocess: Callable[[np.ndarray], Tensor]
    default_layer: Optional[str]
    hidden_rows: Optional[str] = None


def _efficientnet_preprocess(size: Optional[int]) -> Callable[[np.ndarray], Tensor]:
    from captum_cam_ext.data.efficientnet import EFFICIENTNET_INPUT_SIZE, preprocess_efficientnet

    if size not in (None, EFFICIENTNET_INPUT_SIZE):
        raise ValueError(
            f"--size {size} is not possible for EfficientNet-Lite0, which takes "
            f"{EFFICIENTNET_INPUT_SIZE}x{EFFICIENTNET_INPUT_SIZE} inputs only; drop --size"
        )

    def pre(img: np.ndarray) -> Tensor:
        return preprocess_efficientnet(img)

    return pre


def load_audit_model(
    name: str,
    weights: Optional[str] = None,
    size: Optional[int] = None,
    model_loader: Optional[Callable[[str, Optional[str], Optional[int]], Any]] = None,
) -> AuditModel:
    """The model named on the command line.

    ``efficientnet_lite0_blind`` (the bundled pretrained EfficientNet-Lite0 made blind to rows
    160..223, :func:`~captum_cam_ext.walls.pretrained.blind_efficientnet_lite0`; hidden rows
    default to the paper's ``170:224``) and ``efficientnet_lite0`` are built here; any other name
    goes to ``model_loader`` (the package command line's, which knows torchvision names and model
    files).

    Raises
    ------
    ValueError
        An unknown name without a loader, or weights / size that do not apply.
    """
    key = name.replace("-", "_").lower()
    if key in _BLIND_EFFICIENTNET or key in _EFFICIENTNET:
        if weights is not None:
            raise ValueError(f"--weights does not apply to {name} (its weights are bundled)")
        pre = _efficientnet_preprocess(size)
        from captum_cam_ext.data.efficientnet import load_efficientnet_lite0

        base = load_efficientnet_lite0()
        if key in _EFFICIENTNET:
            return AuditModel("efficientnet_lite0", base, pre, "_head_act")
        from captum_cam_ext.walls.pretrained import blind_efficientnet_lite0

        return AuditModel("efficientnet_lite0_blind", blind_efficientnet_lite0(base=base), pre,
                          "features", "170:224")
    if model_loader is None:
        raise ValueError(
            f"unknown model {name!r}: python -m captum_cam_ext.walls knows "
            "efficientnet_lite0_blind and efficientnet_lite0; run `captum-cam-ext walls audit` "
            "for torchvision names and model files"
        )
    loaded = model_loader(name, weights, size)
    return AuditModel(getattr(loaded, "name", name), loaded.model, loaded.preprocess,
                      getattr(loaded, "default_layer", None))


def resolve_layer(model: nn.Module, name: Optional[str]) -> nn.Module:
    """``model``'s submodule with the dotted ``name`` (a clear error when missing)."""
    if not name:
        raise ValueError("this model has no default CAM layer: pass --layer (a dotted module name)")
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-12:]
        raise ValueError(
            f"model has no layer {name!r}; some of its layers: {', '.join(names)}"
        ) from None


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except OSError as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from None


def read_images(
    path: Path, preprocess: Callable[[np.ndarray], Tensor], limit: Optional[int] = None
) -> Tuple[Tensor, List[str]]:
    """Every image of a folder (sorted), or one image file, preprocessed: ``(N, C, S, S)``."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise ValueError(f"no such image or folder: {path}")
    files = files[:limit] if limit else files
    batch = []
    for f in files:
        x = preprocess(_read(f))
        batch.append(x if x.dim() == 4 else x.unsqueeze(0))
    return torch.cat(batch), [f.name for f in files]
