"""Drop-in means drop-in (issue 10): Captum's call shapes, no silent failures, the model left as found.

Each test names a behaviour that failed on the 0.1 engine.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torchvision
from captum.attr import LayerGradCam as CaptumLayerGradCam
from captum.attr import NoiseTunnel
from captum.metrics import sensitivity_max
from models import SmallCNN
from torch import nn

import captum_cam_ext as cce

GRADIENT_CLASSES = [cce.LayerGradCam, cce.LayerGradCamPlusPlus, cce.LayerCam]
# LeGrad explains vision-transformer attention blocks only (issue 16); it has its own drop-in tests
ALL_CLASSES = [cce.methods()[n] for n in cce.methods() if n not in ("conceptor", "legrad")]


def _small(seed: int = 0, **kw) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(**kw).eval()


# ---------------------------------------------------------------------------------------------
# Silent wrong results: no gradient from the score to the layer must raise, never give zeros
# ---------------------------------------------------------------------------------------------


class FrozenBackbone(nn.Module):
    """The usual frozen-backbone pattern: the backbone runs under no_grad inside forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.backbone(x)
        return self.head(f.mean((2, 3)))


class Detaching(FrozenBackbone):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).detach().mean((2, 3)))


@pytest.mark.parametrize("cls", GRADIENT_CLASSES + [cce.MultiCam], ids=lambda c: c.__name__)
def test_missing_gradient_raises_instead_of_returning_zero_maps(cls, count_hooks):
    x = torch.randn(2, 3, 6, 6)
    m = _small()
    with torch.inference_mode(), pytest.raises(ValueError, match="inference_mode"):
        cls(m, m.features).attribute(x, target=1)
    for model in (FrozenBackbone(), Detaching()):
        with pytest.raises(ValueError, match="no_grad|detach"):
            cls(model, model.backbone[1]).attribute(x, target=1)
        assert count_hooks(model) == 0
    # freezing with requires_grad_(False), the fix the message suggests, works and is not zero
    frozen = FrozenBackbone()
    frozen.forward = lambda x: frozen.head(frozen.backbone(x).mean((2, 3)))  # type: ignore[method-assign]
    frozen.backbone.requires_grad_(False)
    out = cls(frozen, frozen.backbone[1]).attribute(x, target=1)
    maps = out["gradcam"] if isinstance(out, dict) else out
    assert maps.abs().sum() > 0


def test_perturbation_methods_still_work_under_inference_mode():
    m = _small()
    x = torch.randn(1, 3, 6, 6)
    ref = cce.LayerScoreCam(m, m.features).attribute(x, target=1)
    with torch.inference_mode():
        got = cce.LayerScoreCam(m, m.features).attribute(x, target=1)
    torch.testing.assert_close(got, ref)


# ---------------------------------------------------------------------------------------------
# Captum call shapes
# ---------------------------------------------------------------------------------------------


def test_one_element_target_tensor_is_broadcast_like_captum():
    m = _small()
    x = torch.randn(3, 3, 6, 6)
    cam = cce.LayerGradCam(m, m.features)
    expect = cam.attribute(x, target=2)
    for t in (torch.tensor([2]), torch.tensor(2), torch.tensor([[2]])):
        torch.testing.assert_close(cam.attribute(x, target=t), expect)
    torch.testing.assert_close(
        expect, CaptumLayerGradCam(m, m.features).attribute(x, target=torch.tensor([2])).detach()
    )


def test_sensitivity_max_and_noise_tunnel_at_batch_one_with_a_tensor_target():
    m = _small()
    x = torch.randn(1, 3, 6, 6)
    cam = cce.LayerGradCam(m, m.features)

    def explain(inputs, target):  # sensitivity_max passes a tuple of inputs
        x = inputs[0] if isinstance(inputs, tuple) else inputs
        return (cam.attribute(x, target=target, upsample_to_input=True).expand_as(x).contiguous(),)

    sens = sensitivity_max(explain, x, target=torch.tensor([1]), n_perturb_samples=3)
    assert sens.shape == (1,) and torch.isfinite(sens).all()
    nt = NoiseTunnel(cam)
    smooth = nt.attribute(x, nt_type="smoothgrad", nt_samples=4, stdevs=0.0, target=torch.tensor([1]))
    torch.testing.assert_close(smooth, cam.attribute(x, target=1))  # zero noise: the plain map


def test_negative_class_index_counts_from_the_end():
    m = _small(n_classes=5)
    x = torch.randn(2, 3, 6, 6)
    cam = cce.LayerGradCam(m, m.features)
    torch.testing.assert_close(cam.attribute(x, target=-1), cam.attribute(x, target=4))
    torch.testing.assert_close(cam.attribute(x, target=[-1, -5]), cam.attribute(x, target=[4, 0]))
    torch.testing.assert_close(cam.attribute(x, target=-2), CaptumLayerGradCam(m, m.features).attribute(x, -2).detach())


class GridOutput(nn.Module):
    """A model with multi-dimensional outputs (N, 3, 4), as for tuple targets in Captum."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.head = nn.Linear(6, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.conv(x)).mean((2, 3))).reshape(-1, 3, 4)


def test_tuple_targets_and_lists_of_tuples_equal_captum():
    m = GridOutput().eval()
    x = torch.randn(2, 3, 5, 5)
    ours, ref = cce.LayerGradCam(m, m.relu), CaptumLayerGradCam(m, m.relu)
    torch.testing.assert_close(ours.attribute(x, target=(1, 2)), ref.attribute(x, target=(1, 2)).detach())
    torch.testing.assert_close(
        ours.attribute(x, target=[(0, 1), (2, 3)]), ref.attribute(x, target=[(0, 1), (2, 3)]).detach()
    )
    with pytest.raises(ValueError, match="class index"):
        ours.attribute(x, target=1)


def test_captum_arguments_device_ids_grad_kwargs_attr_dim_summation():
    m = _small()
    x = torch.randn(2, 3, 6, 6)
    ours = cce.LayerGradCam(m, m.features, device_ids=None)
    ref = CaptumLayerGradCam(m, m.features, None)
    per_channel = ours.attribute(x, target=1, attr_dim_summation=False)
    assert per_channel.shape == (2, 16, 6, 6)
    torch.testing.assert_close(per_channel, ref.attribute(x, 1, attr_dim_summation=False).detach())
    torch.testing.assert_close(per_channel.sum(1, keepdim=True), ours.attribute(x, target=1), atol=1e-6, rtol=1e-5)
    g = ours.attribute(x, target=1, grad_kwargs={"retain_graph": False})
    torch.testing.assert_close(g, ref.attribute(x, 1, grad_kwargs={"retain_graph": False}).detach())
    with pytest.raises(TypeError, match="device_ids"):
        cce.LayerGradCam(m, m.features, lambda t: t)  # the third positional argument is device_ids


def test_device_grouping_picks_each_replicas_call_in_device_order():
    from captum_cam_ext._hooks import group_by_device

    a0, a1, b0, b1 = (torch.full((1,), float(v)) for v in range(4))
    entries = [("dev1", a1), ("dev0", a0), ("dev1", b1), ("dev0", b0)]  # replicas run in any order
    assert [float(t) for t in group_by_device(entries, ["dev0", "dev1"], -1)] == [2.0, 3.0]
    assert [float(t) for t in group_by_device(entries, ["dev0", "dev1"], 0)] == [0.0, 1.0]
    assert [float(t) for t in group_by_device(entries, ["dev1", "dev0"], 0)] == [1.0, 0.0]


def test_a_reused_module_explains_its_last_call_like_captum():
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    layer = m.layer4[1].relu  # BasicBlock calls its relu twice
    ours = cce.LayerGradCam(m, layer).attribute(x, target=[1, 5])
    torch.testing.assert_close(ours, CaptumLayerGradCam(m, layer).attribute(x, target=[1, 5]).detach())
    first = cce.LayerGradCam(m, layer, layer_call=0).attribute(x, target=[1, 5])
    # the first call, by hand: its output with retained gradient
    store = []

    def keep(mod, inp, out):
        if not store:
            out.retain_grad()
            store.append(out)

    h = layer.register_forward_hook(keep)
    try:
        out = m(x)
        out.gather(1, torch.tensor([[1], [5]])).sum().backward()
    finally:
        h.remove()
    a, g = store[0].detach(), store[0].grad
    by_hand = (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True)
    torch.testing.assert_close(first, by_hand, atol=1e-5, rtol=1e-4)
    m.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match=r"layer4\.1\.relu ran 2 time"):
        cce.LayerGradCam(m, layer, layer_call=2).attribute(x, target=1)


@pytest.mark.parametrize("cls", [cce.LayerScoreCam, cce.LayerAblationCam], ids=lambda c: c.__name__)
def test_perturbation_methods_explain_the_chosen_call_of_a_reused_module(cls):
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(2)
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.relu = nn.ReLU()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return self.fc(self.relu(self.conv(self.relu(x))).mean((2, 3)))

    class Once(Twice):  # the same computation with the second call as its own module
        def __init__(self) -> None:
            super().__init__()
            self.relu2 = nn.ReLU()

        def forward(self, x):
            return self.fc(self.relu2(self.conv(torch.relu(x))).mean((2, 3)))

    twice, once = Twice().eval(), Once().eval()
    once.load_state_dict(twice.state_dict())
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(
        cls(twice, twice.relu).attribute(x, target=[0, 3]), cls(once, once.relu2).attribute(x, target=[0, 3])
    )


def test_linear_and_sequence_layers_equal_captum():
    torch.manual_seed(4)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(4, 6)
    got = cce.LayerGradCam(mlp, mlp[1]).attribute(x, target=2)
    assert got.shape == (4, 1)
    torch.testing.assert_close(got, CaptumLayerGradCam(mlp, mlp[1]).attribute(x, target=2).detach())
    seq = nn.Sequential(nn.Conv1d(2, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 10, 3)).eval()
    s = torch.randn(3, 2, 10)
    got = cce.LayerGradCam(seq, seq[1]).attribute(s, target=[0, 1, 2])
    assert got.shape == (3, 1, 10)
    torch.testing.assert_close(got, CaptumLayerGradCam(seq, seq[1]).attribute(s, target=[0, 1, 2]).detach())
    up = cce.LayerGradCam(seq, seq[1]).attribute(s, target=1, upsample_to_input=True)
    assert up.shape == (3, 1, 10)
    with pytest.raises(ValueError, match="spatial"):
        cce.LayerGradCam(mlp, mlp[1]).attribute(x, target=0, upsample_to_input=True)  # no grid to upsample to
    with pytest.raises(ValueError, match="spatial dimensions"):
        cce.LayerScoreCam(mlp, mlp[1]).attribute(x, target=0)


class TupleLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.a(x)), torch.relu(self.b(x))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.pair = TupleLayer()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        a, b = self.pair(x)
        return self.fc(torch.cat([a.mean((2, 3)), b.amax((2, 3))], 1))


def test_a_layer_with_tuple_outputs_gives_one_map_per_tensor_like_captum():
    m = TwoHeads().eval()
    x = torch.randn(2, 3, 6, 6)
    got = cce.LayerGradCam(m, m.pair).attribute(x, target=1)
    ref = CaptumLayerGradCam(m, m.pair).attribute(x, target=1)
    assert isinstance(got, tuple) and len(got) == 2
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r.detach())
    multi = cce.MultiCam(m, m.pair, methods=["gradcam"]).attribute(x, target=1, internal_batch_size=1)
    for g, r in zip(multi["gradcam"], ref):
        torch.testing.assert_close(g, r.detach())
    for negatives in ("both", "channels"):
        with pytest.raises(ValueError, match="tuple"):
            cce.LayerConceptorCam(m, m.pair, negatives=negatives, k=1).attribute(x, target=1)


def test_float64_models_give_float64_maps():
    m = _small().double()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    for cls in ALL_CLASSES + [cce.LayerConceptorCam]:
        got = cls(m, m.features).attribute(x, target=1)
        assert got.dtype == torch.float64, cls.__name__
    torch.testing.assert_close(
        cce.LayerGradCam(m, m.features).attribute(x, target=1),
        CaptumLayerGradCam(m, m.features).attribute(x, target=1).detach(),
    )


class Segmenter(nn.Module):
    """Returns a dict, as torchvision's segmentation models do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.cls = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return {"out": self.cls(self.body(x)), "aux": None}


def test_models_returning_a_dict_work_with_a_callable_target():
    m = Segmenter().eval()
    x = torch.randn(2, 3, 6, 6)
    mask = torch.zeros(6, 6)
    mask[:3] = 1

    def category_2_in_mask(out):
        return (out["out"][:, 2] * mask).sum(dim=(1, 2))

    got = cce.LayerGradCam(m, m.body[1]).attribute(x, target=category_2_in_mask)
    wrapped = CaptumLayerGradCam(lambda t: category_2_in_mask(m(t))[:, None], m.body[1]).attribute(x, target=0)
    torch.testing.assert_close(got, wrapped.detach())
    with pytest.raises(ValueError, match="callable target"):
        cce.LayerGradCam(m, m.body[1]).attribute(x, target=1)


# ---------------------------------------------------------------------------------------------
# The model left as found
# ---------------------------------------------------------------------------------------------


def _bn_model() -> nn.Module:
    torch.manual_seed(8)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1),
        nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
    )  # fmt: skip


@pytest.mark.parametrize("cls", ALL_CLASSES + [cce.LayerConceptorCam, cce.MultiCam], ids=lambda c: c.__name__)
def test_a_train_mode_model_is_left_exactly_as_found(cls):
    m = _bn_model().train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    flags = [p.requires_grad for p in m.parameters()]
    x = torch.randn(3, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls(m, m[5]).attribute(x, target=[0, 1, 2])
    assert m.training and all(mod.training for mod in m.modules())
    assert [p.requires_grad for p in m.parameters()] == flags
    assert all(p.grad is None for p in m.parameters())
    after = m.state_dict()
    for k, v in state.items():
        assert torch.equal(after[k], v), k


@pytest.mark.parametrize("cls", [cce.LayerScoreCam, cce.LayerAblationCam], ids=lambda c: c.__name__)
def test_perturbation_methods_warn_once_on_a_train_mode_model(cls):
    m = _bn_model().train()
    cam = cls(m, m[5])
    x = torch.randn(1, 3, 6, 6)
    with pytest.warns(UserWarning, match="train\\(\\) mode"):
        cam.attribute(x, target=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cam.attribute(x, target=0)  # once per object
        cls(m.eval(), m[5]).attribute(x, target=0)  # never in eval mode


def test_conceptor_cam_on_sequences_and_volumes_equals_the_image_case():
    torch.manual_seed(9)
    net2 = nn.Sequential(nn.Conv2d(2, 6, (1, 3), padding=(0, 1)), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 10, 4))
    net1 = nn.Sequential(nn.Conv1d(2, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 10, 4))
    net1[0].weight.data = net2[0].weight.data[:, :, 0].clone()
    net1[0].bias.data = net2[0].bias.data.clone()
    net1[3].load_state_dict(net2[3].state_dict())
    x = torch.randn(2, 2, 10)
    image = cce.LayerConceptorCam(net2.eval(), net2[1], k=2).attribute(x[:, :, None], target=[0, 3])
    seq = cce.LayerConceptorCam(net1.eval(), net1[1], k=2).attribute(x, target=[0, 3])
    assert seq.shape == (2, 1, 10)
    torch.testing.assert_close(seq, image[:, :, 0], atol=1e-5, rtol=1e-4)


def test_aug_smooth_refuses_sequences():
    seq = nn.Sequential(nn.Conv1d(2, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(50, 3)).eval()
    with pytest.raises(ValueError, match="reverse it in time"):
        cce.LayerGradCam(seq, seq[1]).attribute(torch.randn(2, 2, 10), target=0, aug_smooth=True)
