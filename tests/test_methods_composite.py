"""Parity of the issue-16 methods that are not single-layer weightings: FullGrad, LeGrad, Refine-CAM,
Deep Feature Factorization (pytorch-grad-cam 1.5.7 / torchcam 0.5; two architectures each)."""

from __future__ import annotations

import warnings
from typing import Dict, List, Union

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import DeepFeatureFactorization as RefDFF
from pytorch_grad_cam import FullGrad as RefFullGrad
from pytorch_grad_cam import RefineCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as RefTarget
from torch import nn
from torchcam.methods import GradCAM as TorchcamGradCAM
from torchcam.methods import LayerCAM as TorchcamLayerCAM
from torchcam.methods import LeGrad
from torchcam.methods import RefineCAM as TorchcamRefineCAM
from torchvision.models.vision_transformer import VisionTransformer

import captum_cam_ext as cce
from captum_cam_ext import normalize_maps
from captum_cam_ext.attr.deep_feature_factorization import nmf
from captum_cam_ext.attr.full_grad import effective_bias

ATOL, RTOL = 2e-4, 1e-3
TARGETS = [1, 7, 4]


def _randomise_biases(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero biases and BatchNorm statistics: at torchvision's init they are all zero, and
    FullGrad's bias terms with them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model


def _net(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(num_classes=10).eval()


@pytest.fixture(scope="module")
def nets():
    return {"resnet18": _net("resnet18", 0), "regnet_x_400mf": _net("regnet_x_400mf", 1)}


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(3)
    return torch.randn(3, 3, 64, 64)


# ------------------------------------------------------------------------------------------- FullGrad


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_full_grad_matches_pytorch_grad_cam(x, arch):
    model = _randomise_biases(_net(arch, 0))
    with RefFullGrad(model, []) as ref:
        expected = torch.from_numpy(ref(x, [RefTarget(t) for t in TARGETS]))
    got = cce.FullGrad(model).attribute(x, target=TARGETS, normalize=True)[:, 0]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    # the bias terms matter: the input-gradient term alone is another map
    input_only = cce.FullGrad.channel_sum((x * _input_gradient(model, x)).abs(), (64, 64), "bilinear")
    assert (normalize_maps(input_only)[:, 0] - expected).abs().max() > 0.1


def _input_gradient(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x)[torch.arange(3), TARGETS].sum(), x)
    return g


def test_full_grad_uses_every_bias_and_leaves_the_model_as_found(nets, x, count_hooks):
    model = nets["resnet18"]
    fg = cce.FullGrad(model, model.layer3)  # the layer argument is ignored, as pytorch-grad-cam's
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.bias is not None]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(fg.layers) == len(convs) + len(norms)
    flags = [p.requires_grad for p in model.parameters()]
    out = fg.attribute(x, target=TARGETS, internal_batch_size=2)
    assert out.shape == (3, 1, 64, 64) and bool((out >= 0).all())
    assert count_hooks(model) == 0 and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    bn = nn.BatchNorm2d(2).eval()
    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        bn.running_mean.fill_(2.0)
        bn.running_var.fill_(3.0)
        bn.weight.fill_(0.5)
        bn.bias.fill_(1.0)
    expected = 1.0 - 2.0 * 0.5 / np.sqrt(3.0 + bn.eps)  # beta - mean * gamma / sqrt(var + eps)
    torch.testing.assert_close(effective_bias(bn), torch.full((2,), expected, dtype=torch.float32))


class _TiledTrunk(nn.Module):
    """One conv run separately on the top and bottom halves (a trunk on tiles)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[2] // 2
        top, bottom = self.conv(x[:, :, :h]), self.conv(x[:, :, h:])
        return self.head(torch.cat([top.mean((2, 3)), bottom.mean((2, 3))], dim=1))


def test_full_grad_warns_once_when_a_bias_layer_runs_on_parts_of_the_input():
    torch.manual_seed(0)
    model = _TiledTrunk().eval()
    fg = cce.FullGrad(model)
    x = torch.randn(2, 3, 8, 6)
    with pytest.warns(UserWarning, match=r"conv \(2 calls\)") as caught:
        fg.attribute(x, target=1)
    assert sum("FullGrad" in str(w.message) for w in caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fg.attribute(x, target=1)  # once per instance
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    net(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cce.FullGrad(net.eval()).attribute(x, target=0)  # each bias layer once: no warning


# --------------------------------------------------------------------------------------------- LeGrad


def _tiny_vit(seed: int = 0) -> VisionTransformer:
    torch.manual_seed(seed)
    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2, hidden_dim=32, mlp_dim=64,
                            num_classes=10).eval()  # fmt: skip
    nn.init.normal_(vit.heads.head.weight, std=0.5)  # torchvision initialises the head to zero
    return vit


def _vit_b_16() -> VisionTransformer:
    torch.manual_seed(1)
    vit = torchvision.models.vit_b_16(weights=None, image_size=32).eval()  # 2x2 patches of 16
    nn.init.normal_(vit.heads.head.weight, std=0.05)
    return vit


@pytest.mark.parametrize("arch", ["tiny_vit", "vit_b_16"])
def test_legrad_matches_torchcam(arch):
    vit = _tiny_vit() if arch == "tiny_vit" else _vit_b_16()
    torch.manual_seed(4)
    x = torch.randn(3, 3, 32, 32)
    blocks = list(vit.encoder.layers)[-2:]
    with LeGrad(vit, blocks) as ref:
        expected = ref(TARGETS, vit(x))[0]
    assert expected.flatten(1).amax(1).min() > 0.5
    got = normalize_maps(cce.LayerLeGrad(vit, blocks).attribute(x, target=TARGETS), eps=1e-8)[:, 0]
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_legrad_hooks_change_nothing_and_targets_work_as_elsewhere(count_hooks):
    vit = _tiny_vit(1)
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = vit(x)
    cam = cce.LayerLeGrad(vit, vit.encoder.layers[-1])
    by_index = cam.attribute(x, target=[2, 2])
    by_callable = cam.attribute(x, target=lambda scores: scores[:, 2])  # applied to the block's scores
    torch.testing.assert_close(by_index, by_callable)
    up = cam.attribute(x, target=2, upsample_to_input=True, normalize=True)
    assert up.shape == (2, 1, 32, 32) and float(up.amax()) == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(vit(x), before)  # hooks removed, nothing left changed
    assert count_hooks(vit) == 0
    with pytest.raises(TypeError, match="self_attention"):
        cce.LayerLeGrad(vit, vit.conv_proj)


# ----------------------------------------------------------------------------------------- Refine-CAM

REFINE_LAYERS: Dict[str, List[Union[nn.Module, str]]] = {
    "resnet18": ["layer4", "layer3", "layer2"],
    "regnet_x_400mf": ["trunk_output.block4", "trunk_output.block3", "trunk_output.block2"],
}


def _layers(model, names):
    mods = dict(model.named_modules())
    return [mods[n] for n in names]


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
def test_refine_cam_matches_pytorch_grad_cam_at_the_input_size(nets, x, arch):
    model = nets[arch]
    layers = _layers(model, REFINE_LAYERS[arch])
    expected = torch.from_numpy(RefineCAM(model, layers)(x, [RefTarget(t) for t in TARGETS]))
    got = cce.LayerRefineCam(model, layers).attribute(x, target=TARGETS, upsample_to_input=True, normalize=True)
    torch.testing.assert_close(got[:, 0], expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("arch", ["resnet18", "regnet_x_400mf"])
@pytest.mark.parametrize("base", ["gradcam", "layercam"])
def test_refine_cam_matches_torchcam_at_the_largest_layer(nets, x, arch, base):
    model = nets[arch]
    names = REFINE_LAYERS[arch]
    ref_base = TorchcamGradCAM if base == "gradcam" else TorchcamLayerCAM
    with TorchcamRefineCAM(model, names, input_shape=(3, 64, 64), base_method=ref_base) as ref:
        expected = ref(TARGETS, model(x))[0]
    got = cce.LayerRefineCam(model, _layers(model, names), base_method=base).attribute(x, target=TARGETS)
    torch.testing.assert_close(normalize_maps(got, eps=1e-8)[:, 0], expected, atol=ATOL, rtol=RTOL)


def test_refine_cam_of_one_layer_is_its_base_map(nets, x):
    model = nets["resnet18"]
    one = cce.LayerRefineCam(model, model.layer3, base_method="gradcam").attribute(x, target=TARGETS, normalize=True)
    base = cce.LayerGradCam(model, model.layer3).attribute(x, target=TARGETS, relu_attributions=True, normalize=True)
    torch.testing.assert_close(one, base)


# ------------------------------------------------------------------------------ Deep Feature Factorization


@pytest.mark.parametrize("arch,layer", [("resnet18", "layer4"), ("regnet_x_400mf", "trunk_output.block4")])
def test_deep_feature_factorization_matches_pytorch_grad_cam(nets, x, arch, layer):
    model = nets[arch]
    mod = dict(model.named_modules())[layer]
    head = model.fc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns when it stops at max_iter
        concepts, maps, scores = RefDFF(model, mod, computation_on_concepts=head)(x, n_components=4)
    res = cce.DeepFeatureFactorization(model, mod, computation_on_concepts=head).attribute(
        x, n_components=4, upsample_to_input=True
    )
    assert res.concepts.shape == (model.fc.in_features, 4) and res.maps.shape == (3, 4, 64, 64)
    np.testing.assert_allclose(res.concepts.numpy(), concepts, atol=1e-4 * np.abs(concepts).max())
    torch.testing.assert_close(res.maps, torch.from_numpy(np.asarray(maps)).float(), atol=ATOL, rtol=RTOL)
    assert res.concept_scores is not None
    np.testing.assert_allclose(res.concept_scores.numpy(), scores, atol=1e-4 * np.abs(scores).max())


def test_nmf_factorises_an_exactly_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    w, h = torch.rand(20, 3, generator=g, dtype=torch.float64), torch.rand(3, 30, generator=g, dtype=torch.float64)
    x = w @ h
    w_hat, h_hat = nmf(x, 3, max_iter=2000, tol=1e-10, seed=1)
    assert bool((w_hat >= 0).all()) and bool((h_hat >= 0).all())
    assert float((x - w_hat @ h_hat).norm() / x.norm()) < 1e-3
    with pytest.raises(ValueError, match="non-negative"):
        nmf(-x, 2)
