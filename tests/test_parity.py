"""Parity with the reference implementations: Captum's LayerGradCam and pytorch-grad-cam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import LayerGradCam as CaptumLayerGradCam
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import captum_cam_ext as cce
from captum_cam_ext import normalize_maps


def _resnet18():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    return m, m.layer4


def _vgg11_bn():
    torch.manual_seed(1)
    m = torchvision.models.vgg11_bn(num_classes=10).eval()
    return m, m.features[-2]  # the last ReLU before the final max-pool


def _mobilenet_v2():
    torch.manual_seed(2)
    m = torchvision.models.mobilenet_v2(num_classes=10).eval()
    return m, m.features[-1]


GRADIENT_PAIRS = [
    (cce.LayerGradCam, GradCAM),
    (cce.LayerGradCamPlusPlus, GradCAMPlusPlus),
    (cce.LayerXGradCam, XGradCAM),
    (cce.LayerHiResCam, HiResCAM),
    (cce.LayerCam, LayerCAM),
]


def _reference(ref_cls, model, layer, x, targets, **kw):
    with ref_cls(model=model, target_layers=[layer], **kw) as ref:
        out = ref(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in targets])
    return torch.from_numpy(np.asarray(out))


def _ours(cls, model, layer, x, targets, **kw):
    cam = cls(model, layer, **kw)
    return cam.attribute(x, target=targets, relu_attributions=True, upsample_to_input=True, normalize=True)[:, 0]


@pytest.fixture(scope="module")
def nets():
    return {"resnet18": _resnet18(), "vgg11_bn": _vgg11_bn()}


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
@pytest.mark.parametrize("ours,ref", GRADIENT_PAIRS, ids=[p[0].__name__ for p in GRADIENT_PAIRS])
def test_gradient_cams_match_pytorch_grad_cam(nets, arch, ours, ref):
    model, layer = nets[arch]
    torch.manual_seed(3)
    x = torch.randn(3, 3, 64, 64)
    targets = [1, 7, 4]
    expected = _reference(ref, model, layer, x, targets)
    got = _ours(ours, model, layer, x, targets)
    assert got.shape == expected.shape == (3, 64, 64)
    assert expected.abs().max() > 0.5  # the reference map is not degenerate
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
def test_layer_grad_cam_equals_captum(nets, arch):
    model, layer = nets[arch]
    torch.manual_seed(4)
    x = torch.randn(4, 3, 64, 64)
    target = torch.tensor([0, 3, 9, 3])
    for relu in (False, True):
        expected = CaptumLayerGradCam(model, layer).attribute(x, target=target, relu_attributions=relu)
        got = cce.LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=relu)
        torch.testing.assert_close(got, expected.detach(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("ours,ref", [(cce.LayerEigenCam, EigenCAM), (cce.LayerEigenGradCam, EigenGradCAM)])
@pytest.mark.parametrize("arch", ["resnet18", "vgg11_bn"])
def test_eigen_cams_match_up_to_the_sign_of_the_component(nets, arch, ours, ref):
    model, layer = nets[arch]
    torch.manual_seed(5)
    x = torch.randn(3, 3, 64, 64)
    targets = [2, 2, 5]
    expected = _reference(ref, model, layer, x, targets)
    raw = ours(model, layer).compute(x, target=targets)[0].cam
    for sign in (1.0, -1.0):
        cand = normalize_maps(cce.upsample_maps(torch.relu(sign * raw), (64, 64)))[:, 0]
        match = (cand - expected).abs().flatten(1).amax(1) < 2e-3
        if sign == 1.0:
            pos = match
        else:
            neg = match
    assert bool((pos | neg).all()), "each example must equal the reference for one sign of the component"


def test_eigen_cam_sign_convention_makes_the_dominant_value_positive(nets):
    model, layer = nets["resnet18"]
    raw = cce.LayerEigenCam(model, layer).compute(torch.randn(4, 3, 64, 64))[0].cam.flatten(1)
    idx = raw.abs().argmax(1, keepdim=True)
    assert bool((raw.gather(1, idx) > 0).all())


def _resnet18_layer3():
    model, _ = _resnet18()
    return model, model.layer3  # 4x4 maps at 64x64 inputs, 256 channels


def _mobilenet_v2_block7():
    model, _ = _mobilenet_v2()
    # the expansion conv (ReLU6 output) of block 7: 8x8 maps at 64x64 inputs, 384 channels
    return model, model.features[7].conv[0]


# Score-CAM / Ablation-CAM run one forward per channel: mid-network layers keep them fast.
PERTURBATION_ARCHS = {"resnet18": _resnet18_layer3, "mobilenet_v2": _mobilenet_v2_block7}


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_score_cam_matches_pytorch_grad_cam(arch):
    model, layer = PERTURBATION_ARCHS[arch]()
    torch.manual_seed(6)
    x = torch.randn(2, 3, 64, 64)
    targets = [3, 8]
    expected = _reference(ScoreCAM, model, layer, x, targets)
    assert expected.flatten(1).amax(1).min() > 0.5  # not a degenerate (constant) map
    got = _ours(cce.LayerScoreCam, model, layer, x, targets, batch_size=128)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_ablation_cam_matches_pytorch_grad_cam(arch):
    model, layer = PERTURBATION_ARCHS[arch]()
    torch.manual_seed(7)
    x = torch.randn(2, 3, 64, 64)
    targets = [1, 6]
    expected = _reference(AblationCAM, model, layer, x, targets, batch_size=128)
    assert expected.flatten(1).amax(1).min() > 0.5
    got = _ours(cce.LayerAblationCam, model, layer, x, targets, batch_size=128)
    torch.testing.assert_close(got, expected, atol=2e-4, rtol=1e-3)


def test_multicam_equals_each_method_alone(nets):
    model, layer = nets["resnet18"]
    torch.manual_seed(8)
    x = torch.randn(3, 3, 64, 64)
    names = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam"]
    together = cce.MultiCam(model, layer, methods=names).attribute(x, target=[1, 2, 3], relu_attributions=True)
    for name in names:
        alone = cce.registry.method_class(name)(model, layer).attribute(x, target=[1, 2, 3], relu_attributions=True)
        torch.testing.assert_close(together[name], alone, atol=1e-6, rtol=1e-5)
