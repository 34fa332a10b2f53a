"""``aug_smooth`` and ``eigen_smooth`` against pytorch-grad-cam 1.5.7 (its ``aug_smooth`` /
``eigen_smooth`` arguments), for every method both libraries have, on two architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    FinerCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST as RefReST
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as RefTarget

import captum_cam_ext as cce
from captum_cam_ext.targets import ClassifierOutputReST

ATOL, RTOL = 2e-4, 1e-3
TARGETS = [1, 7, 4]

#: (our registered name, pytorch-grad-cam class, whether its eigen_smooth is the projection of w_k A_k);
#: the first five are the engine's own methods, checked on the second architecture in the slow run only
PAIRS = [
    ("gradcam", GradCAM, True),
    ("gradcam++", GradCAMPlusPlus, True),
    ("xgradcam", XGradCAM, True),
    ("hirescam", HiResCAM, True),
    ("layercam", LayerCAM, True),
    ("gradcamelementwise", GradCAMElementWise, True),
    ("shapleycam", ShapleyCAM, True),
    ("randomcam", RandomCAM, True),
    ("fem", FEM, False),  # pytorch-grad-cam's FEM ignores eigen_smooth
    ("kpcacam", KPCA_CAM, True),  # both leave the kernel component as it is
]


def _net(arch):
    torch.manual_seed(0 if arch == "resnet18" else 1)
    m = getattr(torchvision.models, arch)(num_classes=10).eval()
    # 4x4 maps at 64x64 (RegNet-X-400MF: a light second architecture, 0.04 s a pass here)
    return m, (m.layer3 if arch == "resnet18" else m.trunk_output.block3)


ARCHS = ["resnet18", "regnet_x_400mf"]


@pytest.fixture(scope="module")
def nets():
    return {a: _net(a) for a in ARCHS}


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(3)
    return torch.randn(3, 3, 64, 64)


def _targets(name):
    return ([RefReST(t) for t in TARGETS], ClassifierOutputReST(TARGETS)) if name == "shapleycam" else (
        [RefTarget(t) for t in TARGETS], TARGETS)  # fmt: skip


def _compare(name, ref_cls, model, layer, x, **smooth):
    ref_targets, ours_target = _targets(name)
    np.random.seed(4)  # Random-CAM draws from numpy's global state in both
    with ref_cls(model=model, target_layers=[layer]) as ref:
        expected = torch.from_numpy(np.asarray(ref(input_tensor=x, targets=ref_targets, **smooth)))
    np.random.seed(4)
    cam = cce.registry.create_method(name, model, layer)
    got = cam.attribute(x, target=ours_target, relu_attributions=True, upsample_to_input=True, normalize=True, **smooth)
    torch.testing.assert_close(got[:, 0], expected, atol=ATOL, rtol=RTOL)


ENGINE_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
AUG_CASES = [
    pytest.param(arch, name, ref_cls, id=f"{name}-{arch}",
                 marks=[pytest.mark.slow] if arch != "resnet18" and name in ENGINE_METHODS[1:] else [])
    for arch in ARCHS
    for name, ref_cls, _ in PAIRS
]  # fmt: skip


@pytest.mark.parametrize("arch,name,ref_cls", AUG_CASES)
def test_aug_smooth_matches_pytorch_grad_cam(nets, x, arch, name, ref_cls):
    model, layer = nets[arch]
    _compare(name, ref_cls, model, layer, x, aug_smooth=True)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name,ref_cls,projects", PAIRS, ids=[p[0] for p in PAIRS])
def test_eigen_smooth_matches_pytorch_grad_cam_up_to_the_sign_of_the_component(nets, x, arch, name, ref_cls, projects):
    if not projects:
        pytest.skip("pytorch-grad-cam's class does not define eigen_smooth as the projection of w_k A_k")
    model, layer = nets[arch]
    ref_targets, ours_target = _targets(name)
    np.random.seed(4)
    with ref_cls(model=model, target_layers=[layer]) as ref:
        expected = torch.from_numpy(np.asarray(ref(input_tensor=x, targets=ref_targets, eigen_smooth=True)))
    np.random.seed(4)
    cam = cce.registry.create_method(name, model, layer)
    raw = cam.attribute(x, target=ours_target, eigen_smooth=True)
    # pytorch-grad-cam's SVD sign is arbitrary; ours makes the dominant value positive: each example
    # equals the reference for one of the two signs
    for i in range(x.shape[0]):
        cands = [cce.normalize_maps(cce.upsample_maps(torch.relu(s * raw[i : i + 1]), (64, 64)))[0, 0] for s in (1, -1)]
        assert min(float((c - expected[i]).abs().max()) for c in cands) < 2e-3, (name, arch, i)


@pytest.mark.parametrize("arch", ARCHS)
def test_finer_cam_eigen_smooth_matches_pytorch_grad_cam(nets, x, arch):
    model, layer = nets[arch]
    with FinerCAM(model, [layer]) as ref:
        expected = torch.from_numpy(ref(x, eigen_smooth=True))
    raw = cce.LayerFinerCam(model, layer).attribute(x, eigen_smooth=True)
    for i in range(x.shape[0]):
        cands = [cce.normalize_maps(cce.upsample_maps(torch.relu(s * raw[i : i + 1]), (64, 64)))[0, 0] for s in (1, -1)]
        assert min(float((c - expected[i]).abs().max()) for c in cands) < 2e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_aug_smooth_of_the_composite_methods_is_the_mean_of_the_augmented_maps(nets, x, arch):
    model, layer = nets[arch]
    for cam in (cce.LayerFinerCam(model, layer), cce.LayerRefineCam(model, [layer])):
        got = cam.attribute(
            x, target=TARGETS, relu_attributions=True, upsample_to_input=True, normalize=True, aug_smooth=True
        )
        maps = []
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                xa = (x.flip(-1) if flip else x) * factor
                m = cam.attribute(xa, target=TARGETS, relu_attributions=True, upsample_to_input=True, normalize=True)
                maps.append(m.flip(-1) if flip else m)
        torch.testing.assert_close(got, torch.stack(maps).mean(0), atol=1e-6, rtol=1e-5)


def test_refine_cam_eigen_smooth_refines_the_base_methods_eigen_smooth_maps(nets, x):
    # pytorch-grad-cam's RefineCAM passes eigen_smooth to each layer's base CAM; the SVD sign of each
    # layer is arbitrary there, so the comparison is with the definition
    from captum_cam_ext.attr.refine_cam import refine_maps

    model, _ = nets["resnet18"]
    layers = [model.layer3, model.layer2]
    got = cce.LayerRefineCam(model, layers).attribute(x, target=TARGETS, upsample_to_input=True, eigen_smooth=True)
    per_layer = [cce.LayerGradCamPlusPlus(model, lay).attribute(x, target=TARGETS, eigen_smooth=True) for lay in layers]
    torch.testing.assert_close(got, refine_maps(per_layer, (64, 64)), atol=1e-6, rtol=1e-5)
