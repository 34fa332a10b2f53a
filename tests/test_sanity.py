"""Sanity checks: similarities vs scipy/skimage, parameter randomisation vs Quantus, closed forms, restore."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.metrics.sanity import (
    data_independence,
    parameter_randomization,
    randomizable_layers,
    spearman_correlation,
    ssim,
)

torch.set_num_threads(1)


def bn_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip


def _data(n=6, size=12, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    a=st.lists(st.integers(0, 4), min_size=6, max_size=6),
    b=st.lists(st.integers(0, 4), min_size=6, max_size=6),
)
def test_spearman_matches_scipy_with_ties(a, b):
    scipy_stats = pytest.importorskip("scipy.stats")
    ta = torch.tensor([a], dtype=torch.float32)
    tb = torch.tensor([b], dtype=torch.float32)
    got = float(spearman_correlation(ta, tb)[0])
    if len(set(a)) == 1 or len(set(b)) == 1:
        assert np.isnan(got)
    else:
        assert got == pytest.approx(scipy_stats.spearmanr(a, b)[0], abs=1e-12)


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(2)
    a = torch.rand(3, 1, 16, 20, generator=g)
    b = (a + 0.3 * torch.rand(3, 1, 16, 20, generator=g)).clamp(0, 1)
    got = ssim(a, b)
    for i in range(3):
        x, y = a[i, 0].double().numpy(), b[i, 0].double().numpy()
        rng = float(max(x.max(), y.max()) - min(x.min(), y.min()))
        ref = metrics.structural_similarity(x, y, data_range=rng)
        assert float(got[i]) == pytest.approx(ref, abs=1e-10)
    assert float(ssim(a, a)[0]) == pytest.approx(1.0)
    assert torch.isnan(ssim(torch.ones(1, 1, 8, 8), torch.ones(1, 1, 8, 8)))[0]
    with pytest.raises(ValueError, match="window"):
        ssim(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))


def test_cascading_randomisation_matches_quantus_mprt():
    quantus = pytest.importorskip("quantus")
    model = bn_cnn()
    x = _data()
    with torch.no_grad():
        y = model(x).argmax(1)

    def explain(model, inputs, targets, **kwargs):
        m = model if isinstance(model, nn.Module) else model.get_model()
        inp = torch.as_tensor(inputs)
        cam = LayerGradCam(m, m[3])
        maps = cam.attribute(inp, target=torch.as_tensor(targets), relu_attributions=True, upsample_to_input=True)
        return maps.detach().numpy()

    metric = quantus.MPRT(layer_order="top_down", seed=42, abs=True, normalise=True, disable_warnings=True,
                          display_progressbar=False)  # fmt: skip
    ref = metric(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, explain_func=explain,
                 channel_first=True, device="cpu")  # fmt: skip
    ours = parameter_randomization(model, LayerGradCam(model, model[3]), x, y,
                                   attribute_kwargs={"relu_attributions": True})  # fmt: skip
    layers = [k for k in ref if k != "original"]
    assert ours.layers == layers  # the same modules in the same (top-down) order
    for k, name in enumerate(layers):
        got = ours.spearman[k].numpy()
        want = np.asarray(ref[name], dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, equal_nan=True)


def test_model_is_restored_exactly_also_on_errors():
    model = bn_cnn()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    x = _data(n=3)
    res = parameter_randomization(model, LayerGradCam(model, model[3]), x,
                                  attribute_kwargs={"relu_attributions": True})  # fmt: skip
    assert len(res.layers) == len(randomizable_layers(model)) == 4

    class FailsLater:
        calls = 0

        def attribute(self, inputs, target=None, **kw):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("boom")
            return inputs.mean(1, keepdim=True)

    with pytest.raises(RuntimeError, match="boom"):
        parameter_randomization(model, FailsLater(), x)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert not model.training
    rng = torch.get_rng_state()
    parameter_randomization(model, FailsLater(), x, layers=["7"])
    assert torch.equal(rng, torch.get_rng_state())  # the global RNG is left alone


class InputIntensity:
    """A 'method' that ignores the model: the input's channel mean (an edge-detector-like map)."""

    def attribute(self, inputs, target=None, **kwargs):
        return inputs.mean(1, keepdim=True)


class FixedPattern:
    """A 'method' that ignores the input: a fixed pattern."""

    def attribute(self, inputs, target=None, **kwargs):
        pat = torch.arange(inputs.shape[-1] * inputs.shape[-2], dtype=torch.float32).view(1, 1, *inputs.shape[-2:])
        return pat.expand(inputs.shape[0], 1, -1, -1)


def test_closed_forms_model_independent_and_data_independent_methods():
    model = bn_cnn()
    x = _data(n=4)
    # a map that does not depend on the model fails the randomisation test: similarity stays 1
    res = parameter_randomization(model, InputIntensity(), x, take_abs=False)
    assert torch.allclose(res.spearman, torch.ones_like(res.spearman))
    assert torch.allclose(res.ssim, torch.ones_like(res.ssim))
    # Grad-CAM depends on the weights: fully randomised, its maps are no longer the original ones
    gc = parameter_randomization(model, LayerGradCam(model, model[3]), x, attribute_kwargs={"relu_attributions": True})
    last = gc.spearman[-1]
    assert float(last[torch.isfinite(last)].mean()) < 0.9
    md = gc.markdown(title="t")
    assert "| 1 | 7 |" in md and "cascading from the output layer" in md
    indep = parameter_randomization(model, InputIntensity(), x, order="independent", take_abs=False)
    assert torch.allclose(indep.spearman, torch.ones_like(indep.spearman))
    # data independence: a fixed pattern is identical for a blank input (similarity 1) ...
    di = data_independence(model, FixedPattern(), x)
    assert torch.allclose(di.spearman, torch.ones(4, dtype=torch.float64))
    # ... while the input-intensity map of a blank input is constant: undefined, counted
    di = data_independence(model, InputIntensity(), x)
    assert bool(torch.isnan(di.spearman).all()) and di.summary()["undefined_share"] == 1.0
    di = data_independence(model, InputIntensity(), x, baseline="mean", take_abs=False)
    assert bool(torch.isnan(di.spearman).all())  # a per-channel constant image has a constant mean map


def test_errors():
    model = bn_cnn()
    x = _data(n=2)
    with pytest.raises(ValueError, match="order"):
        parameter_randomization(model, InputIntensity(), x, order="random")
    with pytest.raises(ValueError, match="cannot be randomised"):
        parameter_randomization(model, InputIntensity(), x, layers=["2"])
    with pytest.raises(TypeError, match="nn.Module"):
        parameter_randomization(lambda t: model(t), InputIntensity(), x)
    with pytest.raises(TypeError, match="callable"):
        parameter_randomization(model, InputIntensity(), x, target=lambda p: p[:, 0])
    with pytest.raises(ValueError, match="baseline"):
        data_independence(model, InputIntensity(), x, baseline="noise")
    with pytest.raises(ValueError, match="empty"):
        parameter_randomization(model, InputIntensity(), x[:0])
