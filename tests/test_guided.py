"""The guided backward rule (captum_cam_ext.backprop) against Captum and closed forms."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from captum.attr import GuidedBackprop
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_cam_ext import LayerGradCam, LayerGuidedGradCam
from captum_cam_ext.backprop import (
    BackwardRule,
    find_relus,
    guided_relus,
    switchable_relus,
)

torch.set_num_threads(1)


def _n_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _input_grad(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xi)[:, target].sum(), xi)
    return g


class _ReLU6AsReLU(nn.ReLU):
    """ReLU6 disguised as an nn.ReLU so that Captum's GuidedBackprop hooks it (reference only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp_(0, 6) if self.inplace else x.clamp(0, 6)


def _swap_relu6(module: nn.Module) -> nn.Module:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU6):
            setattr(module, name, _ReLU6AsReLU(inplace=child.inplace))
        else:
            _swap_relu6(child)
    return module


def test_resnet18_matches_captum_guided_backprop() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=7).eval()  # inplace, reused ReLU
    x = torch.randn(2, 3, 32, 32)
    with guided_relus(model):
        ours = _input_grad(model, x, 3)
    ref = GuidedBackprop(model).attribute(x.clone(), target=3)
    standard = _input_grad(model, x, 3)
    assert _n_hooks(model) == 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-7 * float(ref.abs().max()))
    assert not torch.allclose(ours, standard)  # the rule really changed something


def test_mobilenet_v2_relu6_matches_captum_on_relu_disguised_copy() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32) * 4
    saturated = []
    hooks = [
        m.register_forward_pre_hook(lambda m, a: saturated.append(bool((a[0] > 6).any())))
        for m in model.modules()
        if isinstance(m, nn.ReLU6)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert any(saturated), "test input must saturate some ReLU6 so the upper mask matters"
    with guided_relus(model):
        ours = _input_grad(model, x, 2)
    ref = GuidedBackprop(_swap_relu6(copy.deepcopy(model))).attribute(x.clone(), target=2)
    scale = float(ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6 * scale)
    assert (ours - _input_grad(model, x, 2)).abs().max() > 1e-3 * scale


@settings(max_examples=8, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), inplace=st.booleans())
def test_closed_form_reused_relu6_and_relu(seed: int, inplace: bool) -> None:
    """y = w3 . relu6(W2 relu(W1 x)) with the ReLU module reused: guided rule in closed form."""
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.l1 = nn.Linear(5, 6, bias=False)
            self.l2 = nn.Linear(6, 6, bias=False)
            self.l3 = nn.Linear(6, 1, bias=False)
            self.act = nn.ReLU(inplace=inplace)
            self.act6 = nn.ReLU6(inplace=inplace)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.act(self.l1(x))
            h = self.act(self.l2(h) * 4.0)  # the same module again
            return self.l3(self.act6(h * 2.0 - 1.0))

    net = Net().double()
    x = torch.randn(3, 5, dtype=torch.float64)
    with guided_relus(net):
        ours = _input_grad(net, x, 0)
    w1, w2, w3 = net.l1.weight, net.l2.weight, net.l3.weight
    with torch.no_grad():
        u1 = x @ w1.T
        h1 = u1.clamp(min=0)
        u2 = 4.0 * (h1 @ w2.T)
        h2 = u2.clamp(min=0)
        u3 = 2.0 * h2 - 1.0
        g = w3.expand(3, -1).clamp(min=0) * ((u3 > 0) & (u3 < 6))
        g = (2.0 * g).clamp(min=0) * (u2 > 0)
        g = (4.0 * g @ w2).clamp(min=0) * (u1 > 0)
        expected = g @ w1
    torch.testing.assert_close(ours, expected)


def test_switchable_one_forward_two_rules_equals_two_forwards() -> None:
    torch.manual_seed(1)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with guided_relus(model):
        guided_ref = _input_grad(model, x, 1)
    standard_ref = _input_grad(model, x, 1)
    xi = x.clone().requires_grad_(True)
    with switchable_relus(model) as rule:
        score = model(xi)[:, 1].sum()
    assert _n_hooks(model) == 0  # the graph outlives the hooks
    with rule.use("guided"):
        (guided,) = torch.autograd.grad(score, xi, retain_graph=True)
    assert rule.rule == "standard"
    (standard,) = torch.autograd.grad(score, xi)
    assert torch.equal(guided, guided_ref)
    assert torch.equal(standard, standard_ref)


def test_double_backward_through_guided_gates() -> None:
    """d/dw of <guided grad, v> is finite-difference exact (the gate backward is differentiable)."""
    torch.manual_seed(2)
    net = nn.Sequential(
        nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU6(), nn.Linear(3, 1)
    ).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    v = torch.randn(6, 4, dtype=torch.float64)

    def objective(create_graph: bool) -> torch.Tensor:
        xi = x.clone().requires_grad_(True)
        with guided_relus(net):
            (g,) = torch.autograd.grad(net(xi).sum(), xi, create_graph=create_graph)
        return (g * v).sum()

    w = net[2].weight
    (dw,) = torch.autograd.grad(objective(True), w)
    fd = torch.zeros_like(w)
    h = 1e-6
    flat = w.data.view(-1)
    for i in range(w.numel()):
        old = flat[i].item()
        flat[i] = old + h
        fp = objective(False)
        flat[i] = old - h
        fm = objective(False)
        flat[i] = old
        fd.view(-1)[i] = (fp - fm).detach() / (2 * h)
    assert dw.abs().max() > 0
    torch.testing.assert_close(dw, fd, rtol=1e-5, atol=1e-8)


def test_no_grad_forward_unchanged_and_hooks_removed_on_exception() -> None:
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        with guided_relus(model):
            inside = model(x)
    assert torch.equal(before, inside)
    with pytest.raises(RuntimeError, match="boom"):
        with guided_relus(model):
            model(x.requires_grad_(True))
            raise RuntimeError("boom")
    assert _n_hooks(model) == 0


def test_errors() -> None:
    with pytest.raises(ValueError, match="no nn.ReLU"):
        with guided_relus(nn.Sequential(nn.Linear(2, 2), nn.Tanh())):
            pass
    with pytest.raises(ValueError, match="backward rule"):
        with guided_relus(nn.Sequential(nn.ReLU()), rule="deconvnet"):
            pass
    with pytest.raises(TypeError, match="nn.ReLU"):
        with guided_relus(nn.Sequential(nn.ReLU()), modules=[nn.Tanh()]):
            pass
    with pytest.raises(TypeError, match="nn.Module"):
        find_relus(lambda x: x)  # type: ignore[arg-type]
    rule = BackwardRule("standard")
    with pytest.raises(ValueError):
        rule.rule = "other"
    assert rule.rule == "standard"


def test_find_relus_counts_reused_module_once() -> None:
    model = torchvision.models.resnet18(weights=None)
    relus = find_relus(model)
    assert len(relus) == 1 + 8  # stem + one (reused) ReLU per BasicBlock
    assert len(find_relus(torchvision.models.mobilenet_v2(weights=None))) == 35


def test_layer_guided_gradcam_is_gradcam_with_guided_rule() -> None:
    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None, num_classes=6).eval()
    x = torch.randn(2, 3, 64, 64)
    ours = LayerGuidedGradCam(model, model.layer3).attribute(x, target=[1, 4])
    plain = LayerGradCam(model, model.layer3)
    assert torch.equal(ours, plain.attribute(x, target=[1, 4], backward_rule="guided"))
    assert not torch.allclose(ours, plain.attribute(x, target=[1, 4]))
    # Closed form: Grad-CAM weights from gradients computed under guided_relus by hand.
    acts = {}
    h = model.layer3.register_forward_hook(lambda m, a, o: acts.__setitem__("a", o))
    with guided_relus(model):
        out = model(x)
        (g,) = torch.autograd.grad(out[[0, 1], [1, 4]].sum(), acts["a"])
    h.remove()
    expected = (g.mean(dim=(2, 3), keepdim=True) * acts["a"]).sum(1, keepdim=True)
    torch.testing.assert_close(ours, expected.detach(), rtol=1e-4, atol=1e-6)
    std = LayerGuidedGradCam(model, model.layer3).attribute(
        x, target=[1, 4], backward_rule="standard"
    )
    assert torch.equal(std, plain.attribute(x, target=[1, 4]))
    assert _n_hooks(model) == 0


def test_guided_default_reaches_the_wrappers():
    """LayerGuidedGradCam's default rule is used by compute and by Conceptor-CAM over it."""
    from captum_cam_ext import LayerConceptorCam, LayerGradCam, LayerGuidedGradCam

    torch.manual_seed(12)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    guided = LayerGuidedGradCam(model, model.layer3)
    plain = LayerGradCam(model, model.layer3)
    by_default = guided.compute(x, target=1)[0].cam
    torch.testing.assert_close(by_default, plain.compute(x, target=1, backward_rule="guided")[0].cam)
    assert not torch.allclose(guided.compute(x, target=1)[0].cam, plain.compute(x, target=1)[0].cam)
    over_guided = LayerConceptorCam(model, base=guided, negatives="none").attribute(x, target=1)
    over_plain = LayerConceptorCam(model, base=plain, negatives="none").attribute(x, target=1, backward_rule="guided")
    torch.testing.assert_close(over_guided, over_plain)
