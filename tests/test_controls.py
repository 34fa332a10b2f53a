"""Matched-area controls: closed forms for power, constant and random masks, and the histogram solver."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_cam_ext.metrics import confidence_metrics, deletion_auc
from captum_cam_ext.metrics.controls import (
    AreaHistogram,
    area_controls,
    blur_control,
    constant_control,
    maps_to_masks,
    mask_area,
    power_area,
    power_control,
    random_control,
    solve_power,
)

torch.set_num_threads(1)


def _masks(seed=0, n=5, size=16, map_size=4):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(n, 1, map_size, map_size, generator=g)
    return maps, maps_to_masks(maps, (size, size))


def test_masks_and_area_are_what_confidence_metrics_multiplies():
    maps, masks = _masks()
    ref = F.interpolate(maps, size=(16, 16), mode="bilinear", align_corners=False)
    lo = ref.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = ref.flatten(1).max(1).values.view(-1, 1, 1, 1)
    torch.testing.assert_close(masks, (ref - lo) / (hi - lo))
    torch.testing.assert_close(mask_area(maps, (16, 16)), masks.flatten(1).mean(1))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 4))
    x = torch.randn(5, 3, 16, 16)
    res = confidence_metrics(model, x, maps)
    torch.testing.assert_close(res.mask_area, mask_area(maps, (16, 16)))
    # masks scored with normalize="none" give the same numbers as the maps
    res2 = confidence_metrics(model, x, masks, normalize="none")
    torch.testing.assert_close(res.drop, res2.drop)


def test_power_keeps_the_ranking_and_solves_a_closed_form():
    # values {0, c, 1}: area(p) = (c^p + 1) / 3  ->  p = log(3 A - 1) / log(c)
    c = 0.4
    m = torch.tensor([0.0, c, 1.0]).view(1, 1, 1, 3)
    for target in (0.35, 0.5, 0.6):
        p = solve_power(m, target)
        assert p == pytest.approx(math.log(3 * target - 1) / math.log(c), rel=1e-6)
        assert float(power_area(m, p)[0]) == pytest.approx(target, abs=1e-6)
    _, masks = _masks(seed=3)
    pw = power_control(masks, 0.5)
    order = torch.argsort(masks.flatten(1), dim=1, stable=True)
    ranked = pw.flatten(1).gather(1, order)  # the power's values in the base's order never decrease
    assert bool((ranked[:, 1:] >= ranked[:, :-1]).all())
    assert bool((pw >= masks).all())  # p < 1 enlarges
    # float64 powers keep the ranking exactly: the ranking metrics give identical values
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16 * 16, 3))
    x = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    base = deletion_auc(model, x, masks.double(), n_steps=32)
    torch.testing.assert_close(deletion_auc(model, x, pw, n_steps=32), base, rtol=0, atol=0)
    # unreachable areas: above the share of pixels > 0, below the share equal to 1
    with pytest.raises(ValueError, match="no power"):
        solve_power(m, 0.9)
    assert solve_power(m, 0.9, clamp=True) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        power_control(masks * 2, 0.5)
    with pytest.raises(ValueError, match="positive"):
        power_control(masks, 0)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), target=st.floats(0.05, 0.9))
def test_histogram_solver_matches_the_exact_one(seed, target):
    _, masks = _masks(seed=seed, n=6, size=12, map_size=3)
    hist = AreaHistogram()
    for chunk in masks.split(2):  # batch by batch, as evaluate does
        hist.update(chunk)
    assert hist.area(1.0) == pytest.approx(float(masks.double().mean()), rel=1e-12)
    exact = solve_power(masks, target, clamp=True)
    approx = hist.solve_power(target, clamp=True)
    # the areas they give agree to the binning error
    assert float(power_area(masks, approx).mean()) == pytest.approx(float(power_area(masks, exact).mean()), abs=2e-4)
    merged = AreaHistogram.from_tensor(hist.as_tensor() * 1)  # round trip (what an all-reduce sends)
    assert merged.area(0.7) == pytest.approx(hist.area(0.7))


def test_constant_control_closed_form_on_a_homogeneous_model():
    """A constant mask a on a bias-free linear model: O = a * Y, so the drop is 100 (1 - a) exactly."""
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 3, bias=False))
    x = torch.randn(6, 2, 8, 8)
    with torch.no_grad():
        out = lin(x)
    target = out.argmax(1)  # positive scores (largest of 3, sum of weights random) -> check
    pos = out.gather(1, target[:, None])[:, 0] > 0
    x, target = x[pos], target[pos]
    for a in (0.25, 0.6):
        masks = constant_control(x.shape[0], (8, 8), a)
        res = confidence_metrics(lin, x, masks, target=target, probability_fn="identity", normalize="none")
        torch.testing.assert_close(res.mask_area, torch.full((x.shape[0],), a))
        torch.testing.assert_close(res.masked_probs, a * res.probs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.drop, torch.full((x.shape[0],), 100 * (1 - a)), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        constant_control(2, (4, 4), 1.5)


def test_random_control_is_seeded_per_example_and_has_the_expected_area_and_auc():
    full = random_control(range(6), (10, 10), map_size=(5, 5), seed=4)
    part = random_control([3, 4], (10, 10), map_size=(5, 5), seed=4)
    torch.testing.assert_close(full[3:5], part)  # independent of batching
    assert not torch.allclose(full, random_control(range(6), (10, 10), map_size=(5, 5), seed=5))
    assert float(full.amin()) == 0.0 and float(full.amax()) == 1.0
    # without upsampling, a min-max normalised uniform sample has expected mean 1/2 (symmetry)
    many = random_control(range(400), (6, 6), seed=0)
    assert float(many.mean()) == pytest.approx(0.5, abs=0.01)
    # a random ranking on a linear model: E[score after deleting k of P pixels] = (1 - k/P) total,
    # so the expected deletion AUC (RISE's uniform-step area) is total / 2
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(6, 6, generator=g)
    weights /= weights.sum()

    def model(inp):
        p = (inp[:, 0] * weights).flatten(1).sum(1)
        return torch.stack([p, 1 - p], dim=1)

    x = torch.ones(400, 1, 6, 6)
    auc = deletion_auc(model, x, many, target=0, probability_fn="identity", n_steps=36)
    assert float(auc.mean()) == pytest.approx(0.5, abs=0.01)


def test_blur_and_area_controls():
    maps, masks = _masks(seed=2, n=8, size=16, map_size=4)
    blurred = blur_control(masks, 2.0)
    assert blurred.shape == masks.shape
    assert float(blurred.amin()) == 0.0 and float(blurred.amax()) == pytest.approx(1.0)
    peak = torch.zeros(1, 1, 4, 4)
    peak[0, 0, 1, 2] = 1.0
    peak = maps_to_masks(peak, (16, 16))
    assert float(blur_control(peak, 2.0).mean()) > float(peak.mean()) + 0.05  # smoothing a peak enlarges it
    with pytest.raises(ValueError, match="sigma"):
        blur_control(masks, 0)
    ctl = area_controls(masks, areas={"new": 0.6}, powers=(0.5,), map_size=(4, 4), base_name="gc",
                        indices=range(10, 18))
    names = list(ctl)
    assert names[0].startswith("gc**") and names[0].endswith("(area of new)")
    assert names[1] == "gc**0.5" and names[2] == "blur(gc, 4px)"
    assert names[3].startswith("constant") and names[4] == "random (seed 0)"
    base_area = float(masks.mean())
    assert float(ctl[names[0]].mean()) == pytest.approx(0.6, abs=1e-6)
    assert float(ctl[names[3]].mean()) == pytest.approx(base_area, abs=1e-6)
    assert float(ctl[names[4]].mean()) == pytest.approx(base_area, abs=1e-6)
    torch.testing.assert_close(ctl[names[1]], masks.double().sqrt())
    with pytest.raises(ValueError, match="indices"):
        area_controls(masks, indices=[1, 2])
