"""Parity of the noisy / sampled methods with torchcam 0.5 (same seed, same maps): Smooth Grad-CAM++,
SS-CAM, IS-CAM. Two architectures each, random weights, small layers to keep the masked passes few."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchcam.methods import ISCAM, SSCAM, ScoreCAM, SmoothGradCAMpp

import captum_cam_ext as cce
from captum_cam_ext import normalize_maps

ATOL, RTOL = 2e-4, 1e-3
TARGETS = [1, 7]


def _resnet18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _mobilenet_v2():
    torch.manual_seed(2)
    return torchvision.models.mobilenet_v2(num_classes=10).eval()


def _regnet():
    torch.manual_seed(1)
    return torchvision.models.regnet_x_400mf(num_classes=10).eval()


@pytest.fixture(scope="module")
def nets():
    return {"resnet18": _resnet18(), "mobilenet_v2": _mobilenet_v2(), "regnet_x_400mf": _regnet()}


def _x(size: int = 64) -> torch.Tensor:
    torch.manual_seed(3)
    return torch.randn(2, 3, size, size)


def _torchcam(extractor, model, x, targets, seed):
    with extractor as ref:
        out = model(x)
        torch.manual_seed(seed)  # the noise is drawn from torch's global RNG inside the call
        return ref(targets, out)[0]


def _ours(cam, x, targets):
    return normalize_maps(cam.attribute(x, target=targets, relu_attributions=True), eps=1e-8)[:, 0]


# the layers: gradient methods at the head (RegNet: a randomly initialised MobileNet-V2's head
# gradients are ~1e-9, below torchcam's normalisation epsilon), masked methods at a 32-channel layer
GRAD_LAYER = {"resnet18": "layer4", "regnet_x_400mf": "trunk_output.block4"}
MASK_LAYER = {"resnet18": "layer1.0.conv1", "mobilenet_v2": "features.1.conv.0"}


def _layer(model, name):
    return dict(model.named_modules())[name]


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_smooth_grad_cam_pp_reproduces_torchcam_with_the_same_seed(nets, arch):
    model, x = nets[arch], _x()
    layer = _layer(model, GRAD_LAYER[arch])
    expected = _torchcam(SmoothGradCAMpp(model, layer, input_shape=(3, 64, 64)), model, x, TARGETS, seed=42)
    assert expected.flatten(1).amax(1).min() > 0.5
    torch.manual_seed(42)  # no seed: torch's global RNG, as torchcam
    got = _ours(cce.LayerSmoothGradCamPlusPlus(model, layer, torchcam_compat=True), x, TARGETS)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    seeded = _ours(cce.LayerSmoothGradCamPlusPlus(model, layer, torchcam_compat=True, seed=42), x, TARGETS)
    torch.testing.assert_close(seeded, expected, atol=ATOL, rtol=RTOL)


def test_smooth_grad_cam_pp_without_noise_is_grad_cam_pp(nets):
    model, x = nets["resnet18"], _x()
    layer = model.layer4
    (d,) = cce.LayerGradCam(model, layer).compute(x, target=TARGETS)
    assert d.gradients is not None
    g, a = d.gradients, d.activations
    alpha = g**2 / (2 * g**2 + (g**3 * a).sum(dim=(2, 3), keepdim=True) + 1e-8)
    expected = ((alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True)
    for compat in (False, True):
        cam = cce.LayerSmoothGradCamPlusPlus(model, layer, std=0.0, num_samples=2, torchcam_compat=compat)
        torch.testing.assert_close(cam.attribute(x, target=TARGETS), expected, atol=1e-6, rtol=1e-5)


def test_smooth_grad_cam_pp_seeds_and_the_default_average(nets):
    model, x = nets["resnet18"], _x()
    layer = model.layer4
    a = cce.LayerSmoothGradCamPlusPlus(model, layer, seed=5).attribute(x, target=TARGETS)
    b = cce.LayerSmoothGradCamPlusPlus(model, layer, generator=torch.Generator().manual_seed(5)).attribute(
        x, target=TARGETS
    )
    torch.testing.assert_close(a, b)
    compat = cce.LayerSmoothGradCamPlusPlus(model, layer, seed=5, torchcam_compat=True).attribute(x, target=TARGETS)
    assert not torch.allclose(a, compat)  # the average gradient and clean activations, not the last copy's
    with pytest.raises(ValueError, match="not both"):
        cce.LayerSmoothGradCamPlusPlus(model, layer, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="num_samples"):
        cce.LayerSmoothGradCamPlusPlus(model, layer, num_samples=0)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_ss_cam_reproduces_torchcam_with_the_same_seed(nets, arch):
    model, x = nets[arch], _x(32)
    name = MASK_LAYER[arch]
    ref = SSCAM(model, name, batch_size=64, num_samples=2, input_shape=(3, 32, 32))
    expected = _torchcam(ref, model, x, TARGETS, seed=9)
    assert expected.flatten(1).amax(1).min() > 0.5
    torch.manual_seed(9)
    got = _ours(cce.LayerSsCam(model, _layer(model, name), batch_size=64, num_samples=2), x, TARGETS)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    seeded = cce.LayerSsCam(model, _layer(model, name), batch_size=16, num_samples=2, seed=9)
    torch.testing.assert_close(_ours(seeded, x, TARGETS), expected, atol=ATOL, rtol=RTOL)


def test_ss_cam_without_noise_is_torchcam_score_cam(nets):
    model, x = nets["mobilenet_v2"], _x(32)
    name = MASK_LAYER["mobilenet_v2"]
    expected = _torchcam(ScoreCAM(model, name, batch_size=64, input_shape=(3, 32, 32)), model, x, TARGETS, seed=0)
    got = _ours(cce.LayerSsCam(model, _layer(model, name), batch_size=64, num_samples=1, std=0.0), x, TARGETS)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_is_cam_matches_torchcam(nets, arch):
    model, x = nets[arch], _x(32)
    name = MASK_LAYER[arch]
    expected = _torchcam(
        ISCAM(model, name, batch_size=64, num_samples=3, input_shape=(3, 32, 32)), model, x, TARGETS, 0
    )
    assert expected.flatten(1).amax(1).min() > 0.5
    cam = cce.LayerIsCam(model, _layer(model, name), batch_size=64, num_samples=3)
    torch.testing.assert_close(_ours(cam, x, TARGETS), expected, atol=ATOL, rtol=RTOL)
    assert [cam.coefficient(s) for s in range(3)] == pytest.approx([1 / 3, 1.0, 2.0])


def test_sampled_score_cams_score_several_classes_from_the_same_passes(nets):
    model, x = nets["mobilenet_v2"], _x(32)
    layer = _layer(model, MASK_LAYER["mobilenet_v2"])
    cam = cce.LayerIsCam(model, layer, batch_size=64, num_samples=2)
    both = cam.compute_for_targets(x, torch.tensor([[1, 7], [7, 1]]))
    for t, column in enumerate(([1, 7], [7, 1])):
        alone = cam.compute(x, target=column)[0].cam
        torch.testing.assert_close(both[t][0].cam, alone, atol=1e-6, rtol=1e-5)
