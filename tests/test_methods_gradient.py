"""Parity of the issue-16 layer methods with their references (pytorch-grad-cam 1.5.7, torchcam 0.5).

Two architectures each (torchvision ResNet-18 and RegNet-X-400MF or MobileNet-V2, random weights,
fixed seeds, 64x64 inputs); the tolerance is tests/test_parity.py's (atol 2e-4, rtol 1e-3 on
maps min-max normalised to [0, 1]).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import FEM, KPCA_CAM, FinerCAM, GradCAMElementWise, RandomCAM, ShapleyCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST as RefReST
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as RefTarget
from torchcam.methods import CAM as TorchcamCAM
from torchcam.methods import FinerCAM as TorchcamFinerCAM

import captum_cam_ext as cce
from captum_cam_ext import normalize_maps
from captum_cam_ext.registry import method_kind
from captum_cam_ext.targets import ClassifierOutputReST

ATOL, RTOL = 2e-4, 1e-3


def _resnet18():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    return m, m.layer4


def _regnet():
    # a light second architecture (VGG-11-BN's 100M-parameter head made these tests 2x slower)
    torch.manual_seed(1)
    m = torchvision.models.regnet_x_400mf(num_classes=10).eval()
    return m, m.trunk_output.block4  # 2x2 maps at 64x64, 400 channels


@pytest.fixture(scope="module")
def nets():
    return {"resnet18": _resnet18(), "regnet_x_400mf": _regnet()}


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(3)
    return torch.randn(3, 3, 64, 64)


TARGETS = [1, 7, 4]


def _reference(ref_cls, model, layer, x, targets, **kw):
    with ref_cls(model=model, target_layers=[layer], **kw) as ref:
        out = ref(input_tensor=x, targets=targets)
    return torch.from_numpy(np.asarray(out))


def _ours(cam, x, target):
    return cam.attribute(x, target=target, relu_attributions=True, upsample_to_input=True, normalize=True)[:, 0]


def _close(got, expected):
    assert got.shape == expected.shape
    # not vacuous: most reference maps are not degenerate (an all-negative map is all zero after the ReLU)
    assert int((expected.flatten(1).amax(1) > 0.5).sum()) >= 2
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_grad_cam_elementwise_matches_pytorch_grad_cam(nets, x, arch):
    model, layer = nets[arch]
    expected = _reference(GradCAMElementWise, model, layer, x, [RefTarget(t) for t in TARGETS])
    _close(_ours(cce.LayerGradCamElementWise(model, layer), x, TARGETS), expected)


def test_grad_cam_elementwise_terms_are_the_clipped_products(nets, x):
    model, layer = nets["resnet18"]
    (d,) = cce.LayerGradCamElementWise(model, layer).compute(x, target=TARGETS)
    assert d.gradients is not None
    terms = cce.LayerGradCamElementWise(model, layer).attribute(x, target=TARGETS, attr_dim_summation=False)
    torch.testing.assert_close(terms, torch.relu(d.gradients * d.activations))
    hires = cce.LayerHiResCam(model, layer).attribute(x, target=TARGETS)
    assert bool((d.cam >= hires - 1e-6).all())  # clipping each channel can only add


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_shapley_cam_matches_pytorch_grad_cam_with_the_rest_target(nets, x, arch):
    model, layer = nets[arch]
    expected = _reference(ShapleyCAM, model, layer, x, [RefReST(t) for t in TARGETS])
    got = _ours(cce.LayerShapleyCam(model, layer), x, ClassifierOutputReST(TARGETS))
    _close(got, expected)
    grad_cam = _ours(cce.LayerGradCam(model, layer), x, ClassifierOutputReST(TARGETS))
    assert (got - grad_cam).abs().max() > 1e-3  # the Hessian term matters for a softmax-based target


def test_shapley_cam_is_grad_cam_when_the_score_is_linear_in_the_layer(nets, x):
    model, layer = nets["resnet18"]  # layer4 -> average pool -> fc: the Hessian is zero
    torch.testing.assert_close(
        cce.LayerShapleyCam(model, layer).attribute(x, target=TARGETS),
        cce.LayerGradCam(model, layer).attribute(x, target=TARGETS),
    )


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_finer_cam_matches_pytorch_grad_cam(nets, x, arch):
    model, layer = nets[arch]
    with FinerCAM(model, [layer]) as ref:
        expected_argmax = torch.from_numpy(ref(x))
        expected_4 = torch.from_numpy(ref(x, target_idx=4))
    cam = cce.LayerFinerCam(model, layer)
    _close(_ours(cam, x, None), expected_argmax)
    _close(_ours(cam, x, 4), expected_4)


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_finer_cam_uniform_weighting_matches_torchcam(nets, x, arch):
    model, layer = nets[arch]
    with TorchcamFinerCAM(model, layer, input_shape=(3, 64, 64)) as ref:
        expected = ref(TARGETS, model(x))[0]
    cam = cce.LayerFinerCam(model, layer, alpha=0.6, weighting="uniform")
    got = normalize_maps(cam.attribute(x, target=TARGETS, relu_attributions=True), eps=1e-8)[:, 0]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_finer_cam_with_alpha_zero_is_its_base_method(nets, x):
    model, layer = nets["resnet18"]
    for base in ("gradcam", "layercam"):
        finer = cce.LayerFinerCam(model, layer, base_method=base, alpha=0.0).attribute(x, target=TARGETS)
        plain = cce.registry.method_class(base)(model, layer).attribute(x, target=TARGETS)
        torch.testing.assert_close(finer, plain)
    with pytest.raises(ValueError, match="class indices"):
        cce.LayerFinerCam(model, layer).attribute(x, target=lambda out: out[:, 0])


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_fem_matches_pytorch_grad_cam(nets, x, arch):
    model, layer = nets[arch]
    # 4x4 maps: with 2x2 no value can exceed mean + 2 std
    layer = model.layer3 if arch == "resnet18" else model.trunk_output.block3
    expected = _reference(FEM, model, layer, x, [RefTarget(t) for t in TARGETS])
    _close(_ours(cce.LayerFem(model, layer), x, TARGETS), expected)


def test_fem_weights_are_the_share_of_positions_above_k_sigma():
    acts = torch.tensor([[[[0.0, 0.0, 0.0, 10.0]], [[1.0, 2.0, 3.0, 4.0]]]])  # (1, 2, 1, 4)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    w = cce.LayerFem(model, model[0], k=1.0).compute(acts, target=0)[0].weights.flatten()
    # channel 0: mean 2.5, std 4.33 -> only 10 exceeds 6.83; channel 1: mean 2.5, std 1.118 -> only 4
    torch.testing.assert_close(w, torch.tensor([0.25, 0.25]))


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_kpca_cam_matches_pytorch_grad_cam(nets, x, arch):
    model, layer = nets[arch]
    expected = _reference(KPCA_CAM, model, layer, x, [RefTarget(t) for t in TARGETS])
    _close(_ours(cce.LayerKpcaCam(model, layer), x, TARGETS), expected)


def test_kpca_cam_kernels_match_scikit_learn_and_linear_is_eigen_cam(nets, x):
    from sklearn.decomposition import KernelPCA

    model, layer = nets["regnet_x_400mf"]
    (d,) = cce.LayerKpcaCam(model, layer).compute(x[:1], target=1)
    a = d.activations[0].reshape(d.activations.shape[1], -1).T.double().numpy()
    a = a - a.mean(0)
    for kernel, gamma in (("rbf", 0.01), ("poly", None), ("cosine", None), ("sigmoid", 0.002)):
        ref = KernelPCA(n_components=1, kernel=kernel, gamma=gamma, eigen_solver="dense").fit_transform(a)[:, 0]
        (ours,) = cce.LayerKpcaCam(model, layer, kernel=kernel, gamma=gamma).compute(x[:1], target=1)
        np.testing.assert_allclose(ours.cam.flatten().double().numpy(), ref, atol=1e-4 * np.abs(ref).max())
    linear = cce.LayerKpcaCam(model, layer, kernel="linear").attribute(x, target=1)
    eigen = cce.LayerEigenCam(model, layer).attribute(x, target=1)
    assert float((linear / linear.flatten(1).norm(dim=1)[:, None, None, None]
                  - eigen / eigen.flatten(1).norm(dim=1)[:, None, None, None]).abs().max()) < 1e-4  # fmt: skip
    with pytest.raises(ValueError, match="attr_dim_summation"):
        cce.LayerKpcaCam(model, layer).attribute(x, target=1, attr_dim_summation=False)


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_random_cam_matches_pytorch_grad_cam_with_its_numpy_seed(nets, x, arch):
    model, layer = nets[arch]
    np.random.seed(4)
    expected = _reference(RandomCAM, model, layer, x, [RefTarget(t) for t in TARGETS])
    got = _ours(cce.LayerRandomCam(model, layer, seed=4), x, TARGETS)
    _close(got, expected)
    np.random.seed(4)  # no seed: numpy's global state, as pytorch-grad-cam
    _close(_ours(cce.LayerRandomCam(model, layer), x, TARGETS), expected)


def test_random_cam_is_reproducible_and_does_not_depend_on_chunking(nets, x):
    model, layer = nets["resnet18"]
    whole = cce.LayerRandomCam(model, layer, seed=11).attribute(x, target=TARGETS)
    chunked = cce.LayerRandomCam(model, layer, seed=11).attribute(x, target=TARGETS, internal_batch_size=1)
    torch.testing.assert_close(whole, chunked, rtol=1e-4, atol=1e-4)  # batch-size-dependent conv rounding
    cam = cce.LayerRandomCam(model, layer, generator=np.random.RandomState(11))
    torch.testing.assert_close(cam.attribute(x, target=TARGETS), whole)
    assert not torch.allclose(cam.attribute(x, target=TARGETS), whole)  # the stream moves on
    with pytest.raises(ValueError, match="not both"):
        cce.LayerRandomCam(model, layer, seed=1, generator=np.random.RandomState(1))


def _mobilenet_v2():
    torch.manual_seed(2)
    m = torchvision.models.mobilenet_v2(num_classes=10).eval()
    return m, m.features, m.classifier[1]


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_gap_cam_matches_torchcam_cam(nets, x, arch):
    if arch == "resnet18":
        model, layer = nets["resnet18"]
        fc = model.fc
    else:
        model, layer, fc = _mobilenet_v2()
    with TorchcamCAM(model, layer, fc, input_shape=(3, 64, 64)) as ref:
        with torch.no_grad():
            model(x)
        expected = ref(TARGETS)[0]  # torchcam's CAM applies no ReLU
    got = normalize_maps(cce.LayerGapCam(model, layer, fc_layer=fc).attribute(x, target=TARGETS), eps=1e-8)[:, 0]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_gap_cam_is_grad_cam_times_the_number_of_positions_after_global_pooling(nets, x):
    model, layer = nets["resnet18"]
    gap = cce.LayerGapCam(model, layer).attribute(x, target=TARGETS)  # finds model.fc by itself
    grad = cce.LayerGradCam(model, layer).attribute(x, target=TARGETS)
    torch.testing.assert_close(gap, grad * grad.shape[-1] * grad.shape[-2], atol=1e-5, rtol=1e-4)
    with torch.inference_mode():  # no backward pass at all
        torch.testing.assert_close(cce.LayerGapCam(model, layer).attribute(x, target=TARGETS), gap)
    with pytest.raises(ValueError, match="class indices"):
        cce.LayerGapCam(model, layer).attribute(x, target=lambda out: out[:, 0])
    with pytest.raises(ValueError, match="channels"):
        cce.LayerGapCam(model, model.layer3).attribute(x, target=1)
    two_heads = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5), torch.nn.Linear(5, 2)
    )
    with pytest.raises(ValueError, match="nn.Linear"):
        cce.LayerGapCam(two_heads, two_heads[0])


def test_kinds_of_the_new_methods():
    shared = {"gradcamelementwise", "fem", "kpcacam", "randomcam"}
    composite = {"shapleycam", "finercam", "gapcam"}
    for name in shared | composite:
        assert method_kind(cce.registry.method_class(name)) == ("shared_pass" if name in shared else "composite")


def test_multicam_runs_the_new_shared_pass_methods_from_one_pass(nets, x):
    model, layer = nets["resnet18"]
    names = ["gradcam", "gradcamelementwise", "fem", "kpcacam", "randomcam"]
    assert set(names[1:]) <= set(cce.methods("shared_pass"))
    np.random.seed(0)  # Random-CAM without a seed draws from numpy's global state
    together = cce.MultiCam(model, layer, methods=names).attribute(x, target=TARGETS, relu_attributions=True)
    for name in names:
        np.random.seed(0)
        alone = cce.registry.create_method(name, model, layer).attribute(x, target=TARGETS, relu_attributions=True)
        torch.testing.assert_close(together[name], alone, atol=1e-6, rtol=1e-5, msg=name)
    with pytest.raises(ValueError, match="cannot share"):
        cce.MultiCam(model, layer, methods=["gradcam", "shapleycam"])
