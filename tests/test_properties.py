"""Property tests (hypothesis) over random small CNNs, shapes, batch sizes and targets."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import captum_cam_ext as cce

GRADIENT_CLASSES = [
    cce.LayerGradCam,
    cce.LayerGradCamPlusPlus,
    cce.LayerXGradCam,
    cce.LayerHiResCam,
    cce.LayerCam,
    cce.LayerEigenCam,
    cce.LayerEigenGradCam,
]
ALL_CLASSES = GRADIENT_CLASSES + [cce.LayerScoreCam, cce.LayerAblationCam]

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@st.composite
def cnn_case(draw):
    in_ch = draw(st.integers(1, 3))
    width = draw(st.integers(2, 6))
    n_classes = draw(st.integers(2, 5))
    h = draw(st.integers(5, 12))
    w = draw(st.integers(5, 12))
    kernel = draw(st.sampled_from([1, 3]))
    batch = draw(st.integers(1, 4))
    pool_head = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    targets = draw(st.lists(st.integers(0, n_classes - 1), min_size=batch, max_size=batch))
    return dict(
        in_ch=in_ch,
        width=width,
        n_classes=n_classes,
        h=h,
        w=w,
        kernel=kernel,
        batch=batch,
        pool_head=pool_head,
        seed=seed,
        targets=targets,
    )


def build(case):
    torch.manual_seed(case["seed"])
    k = case["kernel"]
    body = nn.Sequential(
        nn.Conv2d(case["in_ch"], case["width"], k, padding=k // 2),
        nn.ReLU(),
        nn.Conv2d(case["width"], case["width"], 3),
        nn.ReLU(),
    )
    h, w = case["h"] - 2, case["w"] - 2
    if case["pool_head"]:
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(case["width"], case["n_classes"]))
    else:
        head = nn.Sequential(nn.Flatten(), nn.Linear(case["width"] * h * w, case["n_classes"]))
    model = nn.Sequential(body, head).eval()
    x = torch.randn(case["batch"], case["in_ch"], case["h"], case["w"])
    return model, body[3], x, (h, w)


@SETTINGS
@given(case=cnn_case(), cls_index=st.integers(0, len(ALL_CLASSES) - 1))
def test_shapes_and_relu_non_negativity(case, cls_index):
    cls = ALL_CLASSES[cls_index]
    model, layer, x, grid = build(case)
    cam = cls(model, layer)
    raw = cam.attribute(x, target=case["targets"])
    assert raw.shape == (case["batch"], 1, *grid)
    assert torch.isfinite(raw).all()
    relu = cam.attribute(x, target=case["targets"], relu_attributions=True)
    assert bool((relu >= 0).all())
    torch.testing.assert_close(relu, raw.clamp(min=0))
    up = cam.attribute(x, target=case["targets"], relu_attributions=True, upsample_to_input=True, normalize=True)
    assert up.shape == (case["batch"], 1, case["h"], case["w"])
    assert float(up.min()) >= 0.0 and float(up.max()) <= 1.0 + 1e-6


@SETTINGS
@given(case=cnn_case(), cls_index=st.integers(0, len(ALL_CLASSES) - 1), data=st.data())
def test_an_examples_map_does_not_depend_on_the_rest_of_its_batch(case, cls_index, data):
    cls = ALL_CLASSES[cls_index]
    model, layer, x, _ = build(case)
    cam = cls(model, layer)
    full = cam.attribute(x, target=case["targets"])
    i = data.draw(st.integers(0, case["batch"] - 1))
    # the same example alone, and inside a batch of other random examples in another position
    alone = cam.attribute(x[i : i + 1], target=[case["targets"][i]])
    torch.testing.assert_close(full[i : i + 1], alone, atol=1e-5, rtol=1e-4)
    others = torch.randn(2, *x.shape[1:])
    mixed = cam.attribute(torch.cat([others, x[i : i + 1]]), target=[0, 1, case["targets"][i]])
    torch.testing.assert_close(mixed[2:], alone, atol=1e-5, rtol=1e-4)


@SETTINGS
@given(case=cnn_case(), cls_index=st.integers(0, len(ALL_CLASSES) - 1), bad=st.sampled_from(["target", "nan", "layer"]))
def test_no_hooks_are_left_after_errors(case, cls_index, bad):
    from conftest import hook_count

    cls = ALL_CLASSES[cls_index]
    model, layer, x, _ = build(case)
    before = hook_count(model)
    targets = case["targets"]
    if bad == "target":
        targets = [case["n_classes"]] * case["batch"]
    elif bad == "nan":
        x = x.clone()
        x.view(-1)[0] = float("nan")
    try:
        kw = {"layer_call": 1} if bad == "layer" else {}  # the layer runs once: no call 1
        cls(model, layer, **kw).attribute(x, target=targets)
        raised = False
    except (ValueError, TypeError):
        raised = True
    assert raised
    assert hook_count(model) == before


@SETTINGS
@given(case=cnn_case())
def test_gradient_methods_agree_with_their_closed_forms(case):
    """Against direct formulas on the activations/gradients captured by the engine."""
    model, layer, x, _ = build(case)
    d = cce.LayerGradCam(model, layer).compute(x, target=case["targets"])[0]
    a, g = d.activations, d.gradients
    torch.testing.assert_close(d.cam, (g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    hires = cce.LayerHiResCam(model, layer).compute(x, target=case["targets"])[0].cam
    torch.testing.assert_close(hires, (g * a).sum(1, keepdim=True))
    layercam = cce.LayerCam(model, layer).compute(x, target=case["targets"])[0].cam
    torch.testing.assert_close(layercam, (g.clamp(min=0) * a).sum(1, keepdim=True))
    if case["pool_head"]:  # with a GAP head the gradient is constant over positions: all agree
        torch.testing.assert_close(hires, d.cam, atol=1e-6, rtol=1e-4)
