"""Tests for captum_cam_ext.metrics (confidence and causal metrics).

References used here:
* torchcam's ``ClassificationMetric`` (test-only) for Average Drop / Increase in Confidence;
* naive per-example / per-step reimplementations written below;
* closed forms for models whose probability is linear in the kept pixels.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_cam_ext.metrics import (
    CausalResult,
    average_drop,
    average_gain,
    average_increase,
    confidence_metrics,
    deletion_auc,
    gaussian_blur,
    insertion_auc,
    normalized_auc,
    perturbation_counts,
)

torch.set_num_threads(1)


def small_cnn(seed: int = 0, in_ch: int = 3, n_classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, n_classes),
    ).eval()


def data(seed: int = 1, n: int = 6, c: int = 3, size: int = 16, map_size: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, size, size, generator=g)
    maps = torch.rand(n, 1, map_size, map_size, generator=g)
    return x, maps


def minmax(t: torch.Tensor) -> torch.Tensor:
    """Per-example min-max to [0, 1] (constant -> 0)."""
    out = torch.zeros_like(t)
    for i in range(t.shape[0]):
        lo, hi = t[i].min(), t[i].max()
        if hi > lo:
            out[i] = (t[i] - lo) / (hi - lo)
    return out


# ------------------------------------------------------------------------------------------
# Confidence metrics
# ------------------------------------------------------------------------------------------


class _StubExtractor:
    """The minimal torchcam CAM-extractor interface, returning fixed (N, h, w) maps."""

    def __init__(self, model: nn.Module, cams: torch.Tensor) -> None:
        self.model = model
        self.cams = cams

    def __call__(self, class_idx=None, scores=None, normalized=True, **kwargs):
        return [self.cams]

    def fuse_cams(self, cams):
        return cams[0]

    @contextlib.contextmanager
    def _hooks_off(self):
        yield


def test_average_drop_increase_match_torchcam():
    torchcam_metrics = pytest.importorskip("torchcam.metrics")
    model = small_cnn()
    x, maps = data(n=8)
    # a map with its maximum at the border and one tiny map so both branches of `increase` occur
    normalized = minmax(maps)
    metric = torchcam_metrics.ClassificationMetric(
        _StubExtractor(model, normalized[:, 0]), partial(torch.softmax, dim=-1)
    )
    metric.update(x)
    ref = metric.summary()
    res = confidence_metrics(model, x, maps, normalize="before_upsample")
    assert res.average_drop == pytest.approx(100 * ref["avg_drop"], rel=1e-5, abs=1e-6)
    assert res.average_increase == pytest.approx(100 * ref["conf_increase"], abs=1e-6)
    assert 0 < res.average_increase < 100  # both outcomes exercised
    # the functional wrappers agree
    kw = dict(normalize="before_upsample")
    assert average_drop(model, x, maps, **kw) == pytest.approx(res.average_drop)
    assert average_increase(model, x, maps, **kw) == pytest.approx(res.average_increase)

    # explicit per-example classes, input-resolution maps (normalisation order irrelevant)
    big = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    classes = [0, 1, 2, 3, 4, 0, 1, 2]
    metric = torchcam_metrics.ClassificationMetric(
        _StubExtractor(model, minmax(big)[:, 0]), partial(torch.softmax, dim=-1)
    )
    metric.update(x, class_idx=classes)
    ref = metric.summary()
    res = confidence_metrics(model, x, big, target=classes, max_examples_per_batch=3)
    assert res.average_drop == pytest.approx(100 * ref["avg_drop"], rel=1e-5, abs=1e-6)
    assert res.average_increase == pytest.approx(100 * ref["conf_increase"], abs=1e-6)
    assert res.target.tolist() == classes


def _reference_confidence(model, x, maps, target=None, to_space=None, from_space=None):
    """Naive per-example reference: upsample, min-max, mask, two forwards, formulas."""
    drops, incs, gains = [], [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        with torch.no_grad():
            p = torch.softmax(model(xi), -1)[0]
            c = int(p.argmax()) if target is None else target[i]
            m = F.interpolate(maps[i : i + 1], size=x.shape[-2:], mode="bilinear")
            m = minmax(m)
            xm = xi * m if to_space is None else from_space(to_space(xi) * m)
            o = torch.softmax(model(xm), -1)[0, c]
        y = p[c]
        drops.append(100 * max(0.0, float(y - o)) / (float(y) + 1e-7))
        incs.append(100.0 if o > y else 0.0)
        gains.append(100 * max(0.0, float(o - y)) / (1 - float(y) + 1e-7))
    return torch.tensor(drops), torch.tensor(incs), torch.tensor(gains)


def test_confidence_matches_naive_reference_and_batching():
    model = small_cnn(seed=2)
    x, maps = data(seed=5, n=7)
    ref_d, ref_i, ref_g = _reference_confidence(model, x, maps)
    ref_area = minmax(F.interpolate(maps, size=x.shape[-2:], mode="bilinear")).mean(dim=(1, 2, 3))
    for bs in (None, 1, 3):
        res = confidence_metrics(model, x, maps, max_examples_per_batch=bs)
        torch.testing.assert_close(res.mask_area, ref_area)
        torch.testing.assert_close(res.drop, ref_d, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res.increase, ref_i)
        torch.testing.assert_close(res.gain, ref_g, rtol=1e-4, atol=1e-4)
    assert average_gain(model, x, maps) == pytest.approx(float(ref_g.mean()), rel=1e-4)
    assert res.drop.shape == (7,) and res.probs.shape == (7,) and res.masked_probs.shape == (7,)
    assert set(res.summary()) == {"average_drop", "average_increase", "average_gain", "mask_area"}


def test_confidence_pixel_space_masking():
    model = small_cnn(seed=4)
    x, maps = data(seed=6, n=5)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), 0.25

    def denorm(t):
        return t * std + mean

    def renorm(t):
        return (t - mean) / std

    ref_d, ref_i, ref_g = _reference_confidence(model, x, maps, to_space=denorm, from_space=renorm)
    res = confidence_metrics(model, x, maps, denormalize=denorm, renormalize=renorm)
    torch.testing.assert_close(res.drop, ref_d, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(res.gain, ref_g, rtol=1e-4, atol=1e-4)
    # a baseline equal to the denormalised zero is the same as masking the normalised tensor
    res0 = confidence_metrics(
        model, x, maps, denormalize=denorm, renormalize=renorm, baseline=mean.view(1, 3, 1, 1)
    )
    torch.testing.assert_close(res0.drop, confidence_metrics(model, x, maps).drop)


def test_confidence_closed_form():
    # two-class "model" whose class-0 probability is the mean of the input (identity probs)
    def prob_model(x):
        p = x.mean(dim=(1, 2, 3))
        return torch.stack([p, 1 - p], dim=1)

    x = torch.full((2, 1, 4, 4), 0.5)
    maps = torch.zeros(2, 1, 4, 4)
    maps[0, 0, :2] = 1.0  # keep half the pixels -> O = 0.25, Y = 0.5 -> drop 50 %
    maps[1] = 1.0  # constant map -> all-zero mask -> O = 0 -> drop 100 %
    res = confidence_metrics(prob_model, x, maps, target=0, probability_fn="identity")
    torch.testing.assert_close(res.drop, torch.tensor([50.0, 100.0]), rtol=1e-5, atol=1e-4)
    # the kept fraction: half the pixels, then nothing (a constant map normalises to zeros)
    torch.testing.assert_close(res.mask_area, torch.tensor([0.5, 0.0]))
    assert res.mean_mask_area == pytest.approx(0.25)
    torch.testing.assert_close(res.increase, torch.zeros(2))
    # class 1: Y = 0.5, O = 0.75 / 1.0 -> gain (O-Y)/(1-Y) = 50 % / 100 %, increase 100 %
    res = confidence_metrics(prob_model, x, maps, target=1, probability_fn="identity")
    torch.testing.assert_close(res.gain, torch.tensor([50.0, 100.0]), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(res.increase, torch.full((2,), 100.0))
    torch.testing.assert_close(res.drop, torch.zeros(2))
    # O == Y exactly (the mask only removes zero pixels): no drop, no gain, and no increase
    # (the increase is strict, as in Grad-CAM++ and torchcam)
    x = torch.zeros(1, 1, 4, 4)
    x[..., :2, :] = 1.0
    keep = (x > 0).float()
    for t in (0, 1):
        res = confidence_metrics(prob_model, x, keep, target=t, probability_fn="identity")
        assert float(res.masked_probs[0]) == float(res.probs[0])
        assert res.summary() == {"average_drop": 0.0, "average_increase": 0.0, "average_gain": 0.0,
                                 "mask_area": 0.5}


class _FixedMethod:
    """Anything with .attribute(inputs, target=..., **kwargs); records its calls."""

    def __init__(self, maps):
        self.maps = maps
        self.calls = []

    def attribute(self, inputs, target=None, additional_forward_args=None, offset=0):
        self.calls.append((inputs.shape[0], target.clone(), additional_forward_args, offset))
        start = sum(c[0] for c in self.calls[:-1])
        return self.maps[start : start + inputs.shape[0]] + offset


def test_attribution_method_path_and_forward_args():
    base = small_cnn(seed=7)

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, x, scale):
            return self.base(x) * scale

    model = Scaled().eval()
    x, maps = data(seed=8, n=5)
    scale = torch.linspace(0.5, 2.0, 5).view(5, 1)
    expected = confidence_metrics(model, x, maps, additional_forward_args=(scale,))
    method = _FixedMethod(maps)
    got = confidence_metrics(
        model,
        x,
        attribution_method=method,
        attribute_kwargs={"offset": 3.0},  # min-max normalisation removes the offset
        additional_forward_args=(scale,),
        max_examples_per_batch=2,
    )
    torch.testing.assert_close(got.drop, expected.drop)
    torch.testing.assert_close(got.gain, expected.gain)
    assert [c[0] for c in method.calls] == [2, 2, 1]
    with torch.no_grad():
        predicted = (base(x) * scale).argmax(1)
    assert torch.equal(torch.cat([c[1] for c in method.calls]), predicted)
    assert torch.equal(method.calls[1][2][0], scale[2:4])  # args sliced with their examples
    # per-example forward args really matter (otherwise the test above would be vacuous)
    other = confidence_metrics(model, x, maps, additional_forward_args=(scale.flip(0),))
    assert not torch.allclose(other.probs, expected.probs)

    method = _FixedMethod(maps)
    auc = deletion_auc(
        model, x, attribution_method=method, additional_forward_args=(scale,), step=40
    )
    torch.testing.assert_close(
        auc, deletion_auc(model, x, maps, additional_forward_args=(scale,), step=40)
    )


def test_confidence_errors():
    model = small_cnn()
    x, maps = data(n=4)
    with pytest.raises(ValueError, match="4"):
        confidence_metrics(model, x, maps[:3])
    bad = maps.clone()
    bad[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        confidence_metrics(model, x, bad)
    with pytest.raises(ValueError, match="empty"):
        confidence_metrics(model, x[:0], maps[:0])
    with pytest.raises(ValueError, match="channel"):
        confidence_metrics(model, x, maps.expand(4, 3, 4, 4))
    multi = confidence_metrics(model, x, maps.expand(4, 3, 4, 4), channel_reduction="mean")
    torch.testing.assert_close(multi.drop, confidence_metrics(model, x, maps).drop)
    # three different channels: "mean" scores their channel mean, not any one channel
    three = torch.rand(4, 3, *maps.shape[2:], generator=torch.Generator().manual_seed(0))
    mean_drop = confidence_metrics(model, x, three, channel_reduction="mean").drop
    torch.testing.assert_close(mean_drop, confidence_metrics(model, x, three.mean(1, keepdim=True)).drop)
    assert not torch.allclose(mean_drop, confidence_metrics(model, x, three[:, :1]).drop)
    with pytest.raises(TypeError, match="exactly one"):
        confidence_metrics(model, x)
    with pytest.raises(TypeError, match="exactly one"):
        confidence_metrics(model, x, maps, attribution_method=_FixedMethod(maps))
    with pytest.raises(ValueError, match="normalize"):
        confidence_metrics(model, x, maps, normalize="sometimes")
    with pytest.raises(ValueError, match="max_examples_per_batch"):
        confidence_metrics(model, x, maps, max_examples_per_batch=0)
    with pytest.raises(ValueError, match="one class per example"):
        confidence_metrics(model, x, maps, target=[0, 1])
    with pytest.raises(ValueError):
        confidence_metrics(model, x, maps, target=99)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        confidence_metrics(model, x[0], maps)


# ------------------------------------------------------------------------------------------
# Causal metrics
# ------------------------------------------------------------------------------------------


def _naive_curve(model, x, sal, substrate, mode, step, target=None):
    """One example at a time, one step at a time, pixel by pixel: the RISE loop."""
    curves = []
    n, c, h, w = x.shape
    for i in range(n):
        with torch.no_grad():
            cls = int(model(x[i : i + 1]).argmax()) if target is None else target
            s = F.interpolate(sal[i : i + 1], size=(h, w), mode="bilinear")[0, 0].flatten()
            order = sorted(range(h * w), key=lambda p, s=s: (-float(s[p]), p))
            cur = (x[i].clone() if mode == "deletion" else substrate[i].clone()).view(c, -1)
            fin = (substrate[i] if mode == "deletion" else x[i]).reshape(c, -1)
            n_steps = math.ceil(h * w / step)
            vals = []
            for k in range(n_steps + 1):
                vals.append(float(torch.softmax(model(cur.view(1, c, h, w)), -1)[0, cls]))
                for p in order[k * step : (k + 1) * step]:
                    cur[:, p] = fin[:, p]
        curves.append(vals)
    curves = torch.tensor(curves)
    auc = (curves.sum(1) - curves[:, 0] / 2 - curves[:, -1] / 2) / (curves.shape[1] - 1)
    return curves, auc


def _rise_blur(x, k=11, sigma=5.0):
    t = torch.arange(k, dtype=x.dtype) - (k - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kern = torch.outer(g, g)
    kern = (kern / kern.sum()).expand(x.shape[1], 1, k, k)
    return F.conv2d(x, kern, padding=k // 2, groups=x.shape[1])


def test_gaussian_blur_matches_2d_convolution():
    x, _ = data(seed=9, n=2, size=20)
    torch.testing.assert_close(gaussian_blur(x), _rise_blur(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        gaussian_blur(x, 5, 1.0), _rise_blur(x, 5, 1.0), rtol=1e-5, atol=1e-5
    )
    const = torch.full((1, 2, 12, 12), 3.0)
    for pad in ("reflect", "replicate"):
        torch.testing.assert_close(gaussian_blur(const, padding=pad), const)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, 4)
    with pytest.raises(ValueError, match="padding"):
        gaussian_blur(x, padding="circular")


@pytest.mark.parametrize("step", [7, 16])
def test_deletion_insertion_match_naive_reference(step):
    model = small_cnn(seed=11)
    x, maps = data(seed=12, n=3, size=8, map_size=4)
    ref_del, ref_del_auc = _naive_curve(model, x, maps, torch.zeros_like(x), "deletion", step)
    res = deletion_auc(model, x, maps, step=step, return_curves=True, max_forwards_per_batch=5)
    assert isinstance(res, CausalResult)
    torch.testing.assert_close(res.curves, ref_del, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.auc, ref_del_auc, rtol=1e-5, atol=1e-6)

    blurred = _rise_blur(x)
    ref_ins, ref_ins_auc = _naive_curve(model, x, maps, blurred, "insertion", step)
    res = insertion_auc(model, x, maps, step=step, return_curves=True, max_examples_per_batch=2)
    torch.testing.assert_close(res.curves, ref_ins, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.auc, ref_ins_auc, rtol=1e-5, atol=1e-6)
    n_pix = 64
    assert res.fractions[0] == 0 and res.fractions[-1] == 1
    assert res.curves.shape == (3, math.ceil(n_pix / step) + 1)


def _linear_prob_model(weights: torch.Tensor):
    """Class-0 'probability' = sum of weights of the pixels equal to 1 (identity probs)."""

    def f(x):
        p = (x[:, 0] * weights).flatten(1).sum(1)
        return torch.stack([p, 1 - p], dim=1)

    return f


def test_causal_closed_form_linear_model():
    h = w = 6
    g = torch.Generator().manual_seed(13)
    weights = torch.rand(h, w, generator=g)
    weights /= weights.sum()
    model = _linear_prob_model(weights)
    x = torch.ones(1, 1, h, w)
    kw = dict(target=0, probability_fn="identity", step=4)

    # perfect saliency: deleting in decreasing weight order
    cums = torch.cat([torch.zeros(1), weights.flatten().sort(descending=True).values.cumsum(0)])
    counts = perturbation_counts(h * w, step=4)
    del_curve = 1 - cums[counts]
    res = deletion_auc(model, x, weights[None, None], return_curves=True, **kw)
    torch.testing.assert_close(res.curves[0], del_curve, rtol=1e-5, atol=1e-6)
    expected = (del_curve.sum() - del_curve[0] / 2 - del_curve[-1] / 2) / (len(counts) - 1)
    assert float(res.auc[0]) == pytest.approx(float(expected), abs=1e-6)
    # insertion onto a zero substrate restores the same mass
    ins = insertion_auc(model, x, weights[None, None], substrate="zeros", **kw)
    assert float(ins[0]) == pytest.approx(float(1 - expected), abs=1e-6)
    # reversed saliency deletes the least important pixels first -> higher deletion AUC
    worse = deletion_auc(model, x, -weights[None, None], **kw)
    assert float(worse[0]) > float(res.auc[0])

    # uniform weights: probability linear in the number of kept pixels -> AUC exactly 1/2
    uniform = _linear_prob_model(torch.full((h, w), 1 / (h * w)))
    sal = torch.rand(1, 1, h, w, generator=g)
    for steps in (1, 9, 36):
        auc = deletion_auc(uniform, x, sal, target=0, probability_fn="identity", n_steps=steps)
        assert float(auc[0]) == pytest.approx(0.5, abs=1e-6)
    # partial last step: RISE's uniform-step area differs from the exact fraction trapezoid
    r = deletion_auc(uniform, x, sal, target=0, probability_fn="identity", step=5,
                     return_curves=True)  # fmt: skip
    assert r.fractions.tolist()[-2:] == pytest.approx([35 / 36, 1.0])
    frac = deletion_auc(uniform, x, sal, target=0, probability_fn="identity", step=5,
                        x_axis="fraction")  # fmt: skip
    assert float(frac[0]) == pytest.approx(0.5, abs=1e-6)
    assert float(r.auc[0]) != pytest.approx(0.5, abs=1e-3)


def test_perturbation_counts_and_auc_helpers():
    assert perturbation_counts(10, step=3).tolist() == [0, 3, 6, 9, 10]
    assert perturbation_counts(10, n_steps=4).tolist() == [0, 2, 5, 7, 10]
    assert perturbation_counts(224 * 224, step=224).shape == (225,)
    with pytest.raises(ValueError, match="not both"):
        perturbation_counts(10, n_steps=2, step=2)
    with pytest.raises(ValueError):
        perturbation_counts(10, step=0)
    a = torch.tensor([[1.0, 0.5, 0.0]])
    assert float(normalized_auc(a)[0]) == pytest.approx(0.5)


def test_causal_errors():
    model = small_cnn()
    x, maps = data(n=3, size=8)
    with pytest.raises(ValueError, match="3"):
        deletion_auc(model, x, maps[:2])
    bad = maps.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        insertion_auc(model, x, bad)
    with pytest.raises(ValueError, match="empty"):
        deletion_auc(model, x[:0], maps[:0])
    with pytest.raises(ValueError, match="not both"):
        deletion_auc(model, x, maps, step=4, n_steps=4)
    with pytest.raises(ValueError, match="substrate"):
        insertion_auc(model, x, maps, substrate="noise")
    with pytest.raises(ValueError, match="broadcast"):
        insertion_auc(model, x, maps, substrate=torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="max_forwards_per_batch"):
        deletion_auc(model, x, maps, max_forwards_per_batch=0)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    n=st.integers(1, 3),
    map_size=st.sampled_from([2, 3, 8]),
    chunk=st.integers(1, 20),
)
def test_causal_curve_endpoints_and_chunk_invariance(seed, n, map_size, chunk):
    model = small_cnn(seed=seed % 7)
    x, maps = data(seed=seed, n=n, size=8, map_size=map_size)
    sub = torch.full_like(x, 0.3)
    full = insertion_auc(model, x, maps, substrate=sub, n_steps=6, return_curves=True)
    part = insertion_auc(
        model, x, maps, substrate=sub, n_steps=6, return_curves=True,
        max_forwards_per_batch=chunk, max_examples_per_batch=1,
    )  # fmt: skip
    torch.testing.assert_close(full.curves, part.curves)
    dele = deletion_auc(model, x, maps, substrate=0.3, n_steps=6, return_curves=True)
    with torch.no_grad():
        p_clean = torch.softmax(model(x), -1)
        cls = p_clean.argmax(1)
        p_clean = p_clean.gather(1, cls[:, None])[:, 0]
        p_sub = torch.softmax(model(sub), -1).gather(1, cls[:, None])[:, 0]
    torch.testing.assert_close(dele.curves[:, 0], p_clean)
    torch.testing.assert_close(dele.curves[:, -1], p_sub)
    torch.testing.assert_close(full.curves[:, 0], p_sub)
    torch.testing.assert_close(full.curves[:, -1], p_clean)
    assert torch.all((dele.auc >= 0) & (dele.auc <= 1))


def test_with_package_grad_cam():
    """End to end with the package's LayerGradCam as the attribution method."""
    from captum_cam_ext import LayerGradCam

    model = small_cnn(seed=21)
    x, _ = data(seed=22, n=4, size=16)
    cam = LayerGradCam(model, model[2])
    with torch.no_grad():
        predicted = model(x).argmax(1)
    maps = cam.attribute(x, target=predicted, relu_attributions=True)
    assert maps.shape == (4, 1, 8, 8)
    kw = {"relu_attributions": True}
    via_method = confidence_metrics(
        model, x, attribution_method=cam, attribute_kwargs=kw, max_examples_per_batch=3
    )
    torch.testing.assert_close(via_method.drop, confidence_metrics(model, x, maps).drop)
    d1 = deletion_auc(model, x, attribution_method=cam, attribute_kwargs=kw, n_steps=8)
    torch.testing.assert_close(d1, deletion_auc(model, x, maps, n_steps=8))
    assert all(p.grad is None for p in model.parameters())
