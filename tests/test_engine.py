"""The shared engine: targets, inputs, hooks, trimming, layers, post-processing, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from captum.attr import LayerGradCam as CaptumLayerGradCam
from models import FlattenHeadCNN, SmallCNN
from torch import nn

import captum_cam_ext as cce

ALL_CLASSES = [
    cce.LayerGradCam,
    cce.LayerGradCamPlusPlus,
    cce.LayerXGradCam,
    cce.LayerHiResCam,
    cce.LayerCam,
    cce.LayerEigenCam,
    cce.LayerEigenGradCam,
    cce.LayerScoreCam,
    cce.LayerAblationCam,
]


def _model(**kw):
    torch.manual_seed(0)
    return FlattenHeadCNN(**kw).eval()


class TinyVit(nn.Module):
    """Tokens (N, 1 + 7*7, 64) as a ViT produces them (a class token and a 7x7 patch grid)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Conv2d(3, 64, 4, stride=4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 64))
        self.block = nn.Linear(64, 64)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        t = self.embed(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1)
        return self.head(self.block(t)[:, 0])


def test_targets_int_list_tensor_callable_and_none_agree():
    m = _model()
    x = torch.randn(3, 3, 8, 8)
    cam = cce.LayerGradCam(m, m.relu)
    by_list = cam.attribute(x, target=[2, 2, 2])
    torch.testing.assert_close(cam.attribute(x, target=2), by_list)
    torch.testing.assert_close(cam.attribute(x, target=torch.tensor(2)), by_list)
    torch.testing.assert_close(cam.attribute(x, target=torch.tensor([2, 2, 2])), by_list)
    torch.testing.assert_close(cam.attribute(x, target=lambda out: out[:, 2]), by_list)
    pred = m(x).argmax(1)
    torch.testing.assert_close(cam.attribute(x, target=None), cam.attribute(x, target=pred))


def test_callable_target_can_explain_a_contrast():
    m = _model()
    x = torch.randn(2, 3, 8, 8)
    cam = cce.LayerGradCam(m, m.relu)
    diff = cam.attribute(x, target=lambda out: out[:, 1] - out[:, 0])
    # Grad-CAM is linear in the target's gradient, hence in the target
    torch.testing.assert_close(diff, cam.attribute(x, target=1) - cam.attribute(x, target=0), atol=1e-5, rtol=1e-4)


def test_trimmed_graph_gives_the_same_maps_as_the_full_graph():
    torch.manual_seed(1)
    m = torchvision.models.resnet18(num_classes=6).eval()
    x = torch.randn(2, 3, 64, 64)
    for layer in (m.layer2, m.layer3[0].bn2, m.layer4):
        a = cce.LayerXGradCam(m, layer, trim_graph=True).attribute(x, target=[0, 5])
        b = cce.LayerXGradCam(m, layer, trim_graph=False).attribute(x, target=[0, 5])
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_inplace_ops_after_the_layer_do_not_corrupt_the_map():
    """resnet's ``out += identity`` and ReLU(inplace=True) after the layer: same as out-of-place."""
    torch.manual_seed(2)
    m = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(2, 3, 64, 64)
    layer = m.layer3[1].bn2  # followed by `out += identity` and an in-place ReLU
    ours = cce.LayerGradCam(m, layer).compute(x, target=1)[0]
    # reference: the activation values and gradients captured by a non-inplace copy of the model
    ref_model = torchvision.models.resnet18(num_classes=4).eval()
    ref_model.load_state_dict(m.state_dict())
    for mod in ref_model.modules():
        if isinstance(mod, nn.ReLU):
            mod.inplace = False
    captured = {}

    def keep(module, args, out):
        out.retain_grad()
        captured["a"] = out
        return out.clone()  # `out += identity` then modifies the clone, not the captured tensor

    h = ref_model.layer3[1].bn2.register_forward_hook(keep)
    try:
        ref_model(x)[:, 1].sum().backward()
    finally:
        h.remove()
    torch.testing.assert_close(ours.activations, captured["a"].detach())
    torch.testing.assert_close(ours.gradients, captured["a"].grad, atol=1e-6, rtol=1e-5)


def test_inplace_relu_model_equals_non_inplace_model():
    torch.manual_seed(3)
    a = SmallCNN(inplace=True).eval()
    b = SmallCNN(inplace=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 10, 10)
    for cls in (cce.LayerGradCam, cce.LayerCam, cce.LayerScoreCam):
        torch.testing.assert_close(cls(a, a.conv2).attribute(x, target=1), cls(b, b.conv2).attribute(x, target=1))


def test_tuple_inputs_and_additional_forward_args():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = FlattenHeadCNN()

        def forward(self, x, y, scale, shift):
            return self.body(x + y) * scale[:, None] + shift

    torch.manual_seed(4)
    m = TwoInputs().eval()
    x, y = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    scale = torch.rand(4) + 0.5
    cam = cce.LayerGradCam(m, m.body.relu)
    got = cam.attribute((x, y), target=1, additional_forward_args=(scale, 0.25))
    ref = CaptumLayerGradCam(m, m.body.relu).attribute((x, y), target=1, additional_forward_args=(scale, 0.25))
    torch.testing.assert_close(got, ref.detach())
    # batched in chunks: per-example additional args are split with the batch
    chunked = cam.attribute((x, y), target=1, additional_forward_args=(scale, 0.25), internal_batch_size=3)
    torch.testing.assert_close(chunked, got)


def test_internal_batch_size_does_not_change_results_for_every_method():
    m = _model()
    x = torch.randn(5, 3, 8, 8)
    target = [0, 1, 2, 3, 0]
    for cls in ALL_CLASSES:
        cam = cls(m, m.relu)
        full = cam.attribute(x, target=target, upsample_to_input=True, normalize=True)
        chunked = cam.attribute(x, target=target, upsample_to_input=True, normalize=True, internal_batch_size=2)
        torch.testing.assert_close(full, chunked, atol=1e-5, rtol=1e-4, msg=cls.__name__)


def test_several_layers_are_fused_after_upsampling_and_per_layer_normalisation():
    torch.manual_seed(5)
    m = torchvision.models.resnet18(num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    both = cce.LayerGradCam(m, [m.layer3, m.layer4]).attribute(x, target=0)
    assert both.shape == (2, 1, 4, 4)  # the larger layer's grid
    l3 = cce.LayerGradCam(m, m.layer3).attribute(x, target=0)
    l4 = cce.LayerGradCam(m, m.layer4).attribute(x, target=0)
    # non-trivial maps on different scales, so that each step of the fusion matters
    assert float(l3.std()) > 0 and float(l4.std()) > 0
    assert not torch.allclose(l3.abs().amax(), l4.abs().amax(), rtol=0.5)
    up4 = cce.upsample_maps(l4, (4, 4))
    expected = (cce.normalize_maps(l3) + cce.normalize_maps(up4)) / 2
    torch.testing.assert_close(both, expected)
    assert not torch.allclose(both, cce.normalize_maps(l3 + up4) / 1, atol=1e-3)  # no per-layer normalisation
    assert not torch.allclose(both, (cce.normalize_maps(l3) + cce.normalize_maps(l4).mean()) / 2, atol=1e-3)


def test_attribute_to_layer_input():
    m = _model()
    x = torch.randn(2, 3, 8, 8)
    got = cce.LayerGradCam(m, m.relu).attribute(x, target=1, attribute_to_layer_input=True)
    ref = CaptumLayerGradCam(m, m.relu).attribute(x, target=1, attribute_to_layer_input=True)
    torch.testing.assert_close(got, ref.detach())


def test_reshape_transform_for_token_layouts():
    class Tokens(nn.Module):
        """A toy transformer-like model: a patch embedding to tokens (N, T, C), then a head."""

        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.block = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)  # (N, 16, 8)
            return self.head(torch.relu(self.block(t)).mean(1))

    def to_grid(t):
        n, tokens, c = t.shape
        side = int(tokens**0.5)
        return t.transpose(1, 2).reshape(n, c, side, side)

    torch.manual_seed(6)
    m = Tokens().eval()
    x = torch.randn(2, 3, 16, 16)
    maps = cce.LayerGradCam(m, m.block, reshape_transform=to_grid).attribute(x, target=2)
    assert maps.shape == (2, 1, 4, 4)
    # without reshape_transform the (N, 16, 8) value is a sequence (N, K, L), as in Captum
    seq = cce.LayerGradCam(m, m.block).attribute(x, target=2)
    torch.testing.assert_close(seq, CaptumLayerGradCam(m, m.block).attribute(x, target=2).detach())


def test_upsample_and_normalize():
    m = _model()
    x = torch.randn(3, 3, 8, 8)
    out = cce.LayerGradCamPlusPlus(m, m.relu).attribute(
        x, relu_attributions=True, upsample_to_input=True, normalize=True
    )
    assert out.shape == (3, 1, 8, 8)
    flat = out.flatten(1)
    assert float(flat.min()) >= 0.0 and float(flat.max()) <= 1.0
    assert torch.allclose(flat.amax(1), torch.ones(3), atol=1e-5)


def test_bfloat16_model_and_inputs_work():
    m = _model().to(torch.bfloat16)
    x = torch.randn(2, 3, 8, 8, dtype=torch.bfloat16)
    maps = cce.LayerGradCam(m, m.relu).attribute(x, target=1)
    ref_model = _model()
    ref = cce.LayerGradCam(ref_model, ref_model.relu).attribute(x.float(), target=1)
    assert maps.dtype == torch.float32 and maps.shape == (2, 1, 8, 8)
    assert torch.nn.functional.cosine_similarity(maps.flatten(), ref.flatten(), dim=0) > 0.95


def test_model_without_parameters_requiring_grad_still_gets_gradients():
    m = _model()
    for p in m.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 8, 8)
    for trim in (True, False):
        out = cce.LayerGradCam(m, m.relu, trim_graph=trim).attribute(x, target=1)
        assert out.abs().sum() > 0
    assert not any(p.requires_grad for p in m.parameters())


def test_no_parameter_gradients_are_accumulated():
    m = _model()
    cce.LayerGradCam(m, m.relu).attribute(torch.randn(2, 3, 8, 8), target=1)
    cce.MultiCam(m, m.relu).attribute(torch.randn(2, 3, 8, 8), target=1)
    assert all(p.grad is None for p in m.parameters())


# ---------------------------------------------------------------------------------------------
# Bad input: a clear error, no hooks left, mode and flags unchanged
# ---------------------------------------------------------------------------------------------


def _bad_calls():
    m = _model()
    x = torch.randn(2, 3, 8, 8)
    other = nn.Conv2d(3, 3, 1)
    yield "not a submodule", lambda: cce.LayerGradCam(m, other), ValueError, "not a submodule"
    yield "target too large", lambda: cce.LayerGradCam(m, m.relu).attribute(x, target=4), ValueError, "out of range"
    yield "negative target", lambda: cce.LayerGradCam(m, m.relu).attribute(x, target=-5), ValueError, "out of range"
    yield (
        "target shape",
        lambda: cce.LayerGradCam(m, m.relu).attribute(x, target=torch.tensor([1, 2, 3])),
        ValueError,
        "shape",
    )
    yield (
        "target list length",
        lambda: cce.LayerGradCam(m, m.relu).attribute(x, target=[1, 2, 3]),
        ValueError,
        "one entry per example",
    )
    yield (
        "float target",
        lambda: cce.LayerGradCam(m, m.relu).attribute(x, target=torch.tensor([1.0, 2.0])),
        TypeError,
        "integer",
    )
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    yield "nan input", lambda: cce.LayerGradCam(m, m.relu).attribute(nan), ValueError, "NaN"
    inf = x.clone()
    inf[1, 0, 0, 0] = float("inf")
    yield "inf input", lambda: cce.LayerCam(m, m.relu).attribute(inf), ValueError, "Inf"
    yield "empty batch", lambda: cce.LayerGradCam(m, m.relu).attribute(x[:0]), ValueError, "empty batch"
    yield "int input", lambda: cce.LayerGradCam(m, m.relu).attribute(x.long()), TypeError, "floating-point"
    yield (
        "half on a float model",
        lambda: cce.LayerGradCam(m, m.relu).attribute(x.half()),
        TypeError,
        "model's parameters are torch.float32",
    )
    vit = TinyVit().eval()
    yield (
        "token layer without reshape_transform",
        lambda: cce.LayerGradCam(vit, vit.block).attribute(torch.randn(2, 3, 28, 28)),
        ValueError,
        "reshape_transform",
    )
    yield (
        "bad mode",
        lambda: cce.LayerGradCam(m, m.relu).attribute(x, interpolate_mode="cubic"),
        ValueError,
        "interpolate_mode",
    )
    yield (
        "bad chunk",
        lambda: cce.LayerGradCam(m, m.relu).attribute(x, internal_batch_size=0),
        ValueError,
        "internal_batch_size",
    )
    yield (
        "bad rule",
        lambda: cce.LayerGradCam(m, m.relu).attribute(x, backward_rule="smooth"),
        ValueError,
        "backward_rule",
    )
    yield "score batch", lambda: cce.LayerScoreCam(m, m.relu, batch_size=0), ValueError, "batch_size"
    yield (
        "multicam method",
        lambda: cce.MultiCam(m, m.relu, methods=["gradcam", "nope"]),
        ValueError,
        "unknown CAM method",
    )
    yield (
        "multicam perturbation",
        lambda: cce.MultiCam(m, m.relu, methods=[cce.LayerScoreCam]),
        ValueError,
        "cannot share",
    )


@pytest.mark.parametrize("name,call,exc,match", list(_bad_calls()), ids=[c[0] for c in _bad_calls()])
def test_bad_input_raises_a_clear_error(name, call, exc, match):
    with pytest.raises(exc, match=match):
        call()


class ThreeD(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x)  # (N, 4, H, W): not 2-D


class Reuses(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc(self.conv(self.conv(x)).mean((2, 3)))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=[c.__name__ for c in ALL_CLASSES])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_errors_leave_no_hooks_and_the_same_mode(cls, mode, count_hooks):
    m = _model()
    m.train(mode == "train")
    flags = [p.requires_grad for p in m.parameters()]
    params = [p.detach().clone() for p in m.parameters()]
    x = torch.randn(2, 3, 8, 8)
    before = count_hooks(m)
    for call in (
        lambda: cls(m, m.relu).attribute(x, target=9),
        lambda: cls(m, m.relu).attribute(x, target=-9),
        lambda: cls(m, m.relu).attribute(x, target=[0, 1], backward_rule="nope"),
    ):
        with pytest.raises((ValueError, TypeError)):
            call()
        assert count_hooks(m) == before
    cls(m, m.relu).attribute(x, target=1)  # and a successful call
    assert count_hooks(m) == before
    assert m.training == (mode == "train")
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(torch.equal(a, b) for a, b in zip(params, m.parameters()))
    three = ThreeD()
    if cls is not cce.LayerEigenCam:  # class-agnostic: it never selects a target score
        with pytest.raises(ValueError, match="tuple target"):
            cls(three, three.conv).attribute(x, target=0)
    assert count_hooks(three) == 0
    reuse = Reuses()
    with pytest.raises(ValueError, match="ran 2 time"):
        cls(reuse, reuse.conv, layer_call=2).attribute(x, target=0)
    assert count_hooks(reuse) == 0


def test_a_layer_that_is_never_called_is_reported():
    m = _model()
    m.unused = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="not called"):
        cce.LayerGradCam(m, m.unused).attribute(torch.randn(1, 3, 8, 8))


def test_score_cam_falls_back_when_the_model_needs_contiguous_tensors():
    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()
            self.fc = nn.Linear(4 * 8 * 8, 3)

        def forward(self, x):
            h = self.act(self.conv(x))
            return self.fc(h.view(h.shape[0], -1))  # .view fails on channels_last tensors

    torch.manual_seed(9)
    m = Viewing().eval()
    x = torch.randn(2, 3, 8, 8)
    fast = cce.LayerScoreCam(m, m.act, channels_last=True)
    plain = cce.LayerScoreCam(m, m.act, channels_last=False)
    torch.testing.assert_close(fast.attribute(x, target=1), plain.attribute(x, target=1))
    assert fast.channels_last is False


def test_works_inside_a_users_no_grad_block_and_restores_grad_mode():
    m = _model()
    x = torch.randn(2, 3, 8, 8)
    expected = cce.LayerGradCam(m, m.relu).attribute(x, target=1)
    for trim in (True, False):
        with torch.no_grad():
            got = cce.LayerGradCam(m, m.relu, trim_graph=trim).attribute(x, target=1)
            assert not torch.is_grad_enabled()
        torch.testing.assert_close(got, expected)
    assert torch.is_grad_enabled()
    with pytest.raises(ValueError):
        cce.LayerGradCam(m, m.relu).attribute(x, target=7)
    assert torch.is_grad_enabled()


def test_ablation_cam_is_finite_when_the_clean_score_is_zero():
    class ZeroScore(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.act = nn.ReLU()

        def forward(self, x):
            h = self.act(self.conv(x)).mean((2, 3))
            return torch.stack([h[:, 0] - h[:, 0].detach(), h[:, 1]], dim=1)  # class 0 scores exactly 0

    torch.manual_seed(10)
    m = ZeroScore().eval()
    maps = cce.LayerAblationCam(m, m.act).attribute(torch.randn(2, 3, 6, 6), target=0)
    assert torch.isfinite(maps).all()


def test_eigen_cam_restores_the_callers_thread_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        m = _model()
        cce.LayerEigenCam(m, m.relu).attribute(torch.randn(2, 3, 8, 8))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=[c.__name__ for c in ALL_CLASSES])
def test_compute_for_targets_equals_one_compute_per_target(cls):
    m = _model()
    x = torch.randn(3, 3, 8, 8)
    targets = torch.tensor([[0, 1, 3], [2, 2, 0], [3, 1, 2]])
    cam = cls(m, m.relu)
    together = cam.compute_for_targets(x, targets)
    assert len(together) == 3
    for t in range(3):
        alone = cam.compute(x, target=targets[:, t])[0]
        torch.testing.assert_close(together[t][0].weights, alone.weights, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(together[t][0].cam, alone.cam, atol=1e-6, rtol=1e-5)
        assert torch.equal(together[t][0].target, targets[:, t])
    by_callable = cam.compute_for_targets(x, lambda out: out.topk(2, dim=1).indices)
    torch.testing.assert_close(by_callable[1][0].cam, cam.compute(x, target=m(x).topk(2, dim=1).indices[:, 1])[0].cam)
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        cam.compute_for_targets(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="out of range"):
        cam.compute_for_targets(x, torch.tensor([[0], [1], [9]]))
