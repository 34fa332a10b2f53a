"""Volumes (N, C, D, H, W) and sequences (N, C, L).

* pytorch-grad-cam's 3-D path on torchvision's R3D-18 (random weights, a 2 x 8 x 32 x 32 clip):
  every method it supports in 3-D, our layer-resolution map put through its own resize (a cubic
  spline, scipy's ``zoom``) equals its output. Our ``upsample_to_input`` resizes trilinearly instead.
* Every method on a volume of depth 1 equals the method on the image, and on a sequence equals the
  method on the image of width 1 (the same network written with 1-D, 2-D and 3-D layers): this
  covers the perturbation and composite methods pytorch-grad-cam cannot run in 3-D.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as RefTarget
from scipy.ndimage import zoom
from torch import nn

import captum_cam_ext as cce

TARGETS = [1, 7]

PGC_3D = [
    ("gradcam", GradCAM), ("gradcam++", GradCAMPlusPlus), ("xgradcam", XGradCAM), ("hirescam", HiResCAM),
    ("layercam", LayerCAM), ("eigencam", EigenCAM), ("eigengradcam", EigenGradCAM),
    ("gradcamelementwise", GradCAMElementWise), ("fem", FEM), ("kpcacam", KPCA_CAM), ("randomcam", RandomCAM),
    ("shapleycam", ShapleyCAM),
]  # fmt: skip


@pytest.fixture(scope="module")
def r3d():
    torch.manual_seed(0)
    model = torchvision.models.video.r3d_18(weights=None, num_classes=10).eval()
    torch.manual_seed(1)
    return model, torch.randn(2, 3, 8, 32, 32)  # layer3: (2, 256, 2, 4, 4)


def _pgc_postprocess(raw: torch.Tensor, size) -> torch.Tensor:
    """pytorch-grad-cam's 3-D post-processing of raw maps (N, 1, d, h, w): ReLU, min-max, spline zoom
    to ``size``, ReLU, min-max (its scale_cam_image twice)."""
    out = []
    for img in torch.relu(raw[:, 0]).numpy():
        img = img - img.min()
        img = img / (1e-7 + img.max())
        img = zoom(np.float32(img), [t / s for s, t in zip(img.shape, size)])
        img = np.maximum(img, 0)
        img = img - img.min()
        out.append(img / (1e-7 + img.max()))
    return torch.from_numpy(np.stack(out).astype(np.float32))


@pytest.mark.parametrize("name,ref_cls", PGC_3D, ids=[p[0] for p in PGC_3D])
def test_r3d_18_maps_equal_pytorch_grad_cams_3d_path(r3d, name, ref_cls):
    model, x = r3d
    np.random.seed(2)  # Random-CAM: numpy's global state in both
    with ref_cls(model=model, target_layers=[model.layer3]) as ref:
        expected = torch.from_numpy(np.asarray(ref(input_tensor=x, targets=[RefTarget(t) for t in TARGETS])))
    np.random.seed(2)
    raw = cce.registry.create_method(name, model, model.layer3).attribute(x, target=TARGETS)
    assert raw.shape == (2, 1, 2, 4, 4)
    got = _pgc_postprocess(raw, tuple(x.shape[2:]))
    if name in ("eigencam", "eigengradcam"):  # the SVD's sign is arbitrary in pytorch-grad-cam
        flipped = _pgc_postprocess(-raw, tuple(x.shape[2:]))
        pick = (flipped - expected).flatten(1).abs().amax(1) < (got - expected).flatten(1).abs().amax(1)
        got = torch.where(pick[:, None, None, None], flipped, got)
    assert expected.flatten(1).amax(1).min() > 0.5
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)


def test_upsample_to_input_is_trilinear_for_volumes(r3d):
    model, x = r3d
    cam = cce.LayerGradCam(model, model.layer3)
    raw = cam.attribute(x, target=TARGETS)
    up = cam.attribute(x, target=TARGETS, upsample_to_input=True)
    expected = torch.nn.functional.interpolate(raw, size=(8, 32, 32), mode="trilinear", align_corners=False)
    torch.testing.assert_close(up, expected)


# ---------------------------------------------------------------------------------------------------
# The same network in 1, 2 and 3 dimensions
# ---------------------------------------------------------------------------------------------------

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


class Net(nn.Module):
    """conv-BN-ReLU-maxpool-conv-BN-ReLU (``features``) -> global average pool -> linear."""

    def __init__(self, dims: int, kernel, padding, pool) -> None:
        super().__init__()
        self.conv1 = _CONV[dims](2, 6, kernel, padding=padding)
        self.bn1 = _BN[dims](6)
        self.relu1 = nn.ReLU()
        self.pool = _POOL[dims](pool)
        self.conv2 = _CONV[dims](6, 8, kernel, padding=padding)
        self.bn2 = _BN[dims](8)
        self.features = nn.ReLU()
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu1(self.bn1(self.conv1(x))))
        x = self.features(self.bn2(self.conv2(x)))
        return self.head(x.flatten(2).mean(-1))


def _image_net() -> Net:
    torch.manual_seed(3)
    net = Net(2, 3, 1, 2).eval()
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for bn in (net.bn1, net.bn2):
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(bn.num_features, generator=g) * 0.1)
    return net


def _copy(src: Net, dst: Net, reshape) -> Net:
    with torch.no_grad():
        for (name, p), q in zip(src.state_dict().items(), dst.state_dict().values()):
            q.copy_(reshape(p) if name.startswith("conv") and name.endswith("weight") else p)
    return dst.eval()


def _volume_net(image: Net) -> Net:  # kernels (1, 3, 3) on (N, C, 1, H, W)
    return _copy(image, Net(3, (1, 3, 3), (0, 1, 1), (1, 2, 2)), lambda w: w[:, :, None])


def _column_net() -> Net:  # an image network with (3, 1) kernels, for (N, C, L, 1) images
    torch.manual_seed(5)
    net = Net(2, (3, 1), (1, 0), (2, 1)).eval()
    assert net.bn2.running_mean is not None
    with torch.no_grad():
        net.bn2.running_mean.uniform_(-0.1, 0.1)
        net.bn2.bias.uniform_(-0.1, 0.1)
    return net


def _sequence_net(column: Net) -> Net:
    return _copy(column, Net(1, 3, 1, 2), lambda w: w[..., 0])


#: every registered method (LeGrad explains ViT attention blocks only; Conceptor-CAM is defined
#: for 2-D maps only), with small options
CASES: Dict[str, Dict[str, Any]] = {n: {} for n in cce.methods() if n not in ("legrad", "conceptor")}
CASES.update({"randomcam": {"seed": 0}, "smoothgradcam++": {"seed": 0}, "sscam": {"seed": 0, "num_samples": 2},
              "iscam": {"num_samples": 2}})  # fmt: skip


def _maps(name, model, x, **kw):
    if name == "fullgrad":
        return cce.FullGrad(model).attribute(x, target=[0, 3])
    layer = [model.features, model.relu1] if name == "refinecam" else model.features
    cam = cce.registry.create_method(name, model, layer, **kw)
    return cam.attribute(x, target=[0, 3], upsample_to_input=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_method_on_a_depth_1_volume_equals_the_method_on_the_image(name):
    image = _image_net()
    volume = _volume_net(image)
    torch.manual_seed(6)
    x = torch.randn(2, 2, 8, 8)
    np.random.seed(7)
    on_image = _maps(name, image, x, **CASES[name])
    np.random.seed(7)
    on_volume = _maps(name, volume, x[:, :, None], **CASES[name])
    assert on_volume.shape == (2, 1, 1, 8, 8)
    assert on_image.abs().amax() > 0
    torch.testing.assert_close(on_volume[:, :, 0], on_image, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_method_on_a_sequence_equals_the_method_on_an_image_of_width_1(name):
    column = _column_net()
    sequence = _sequence_net(column)
    torch.manual_seed(8)
    x = torch.randn(2, 2, 12)
    np.random.seed(9)
    on_image = _maps(name, column, x[..., None], **CASES[name])
    np.random.seed(9)
    on_sequence = _maps(name, sequence, x, **CASES[name])
    assert on_sequence.shape == (2, 1, 12)
    assert on_image.abs().amax() > 0
    torch.testing.assert_close(on_sequence, on_image[..., 0], atol=1e-5, rtol=1e-4)


def test_deep_feature_factorization_of_volumes_and_sequences():
    image = _image_net()
    torch.manual_seed(6)
    x = torch.randn(2, 2, 8, 8)
    flat = cce.DeepFeatureFactorization(image, image.features).attribute(x, n_components=2, upsample_to_input=True)
    vol_net = _volume_net(image)
    vol = cce.DeepFeatureFactorization(vol_net, vol_net.features).attribute(
        x[:, :, None], n_components=2, upsample_to_input=True
    )
    assert vol.maps.shape == (2, 2, 1, 8, 8)
    torch.testing.assert_close(vol.maps[:, :, 0], flat.maps, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(vol.concepts, flat.concepts, atol=1e-5, rtol=1e-4)
