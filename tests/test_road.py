"""ROAD: parity with pytorch-grad-cam at noise 0, the imputation's closed forms, ties, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from captum_cam_ext.metrics.road import RoadResult, impute_linear, road, road_masks

torch.set_num_threads(1)
PCTS = [10, 20, 30, 40, 50, 60, 70, 80, 90]


def small_model(seed=0, c=3, classes=5):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(c, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes)
    ).eval()


def _reference(model, x, cams, pcts=PCTS):
    """pytorch-grad-cam's ROAD averagers with the noiseless imputer, raw target outputs."""
    pgc_road = pytest.importorskip("pytorch_grad_cam.metrics.road")
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        AveragerAcrossThresholds,
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    imputer = pgc_road.NoisyLinearImputer(noise=0)
    with torch.no_grad():
        pred = model(x).argmax(1)
    targets = [ClassifierOutputTarget(int(c)) for c in pred]
    morf = AveragerAcrossThresholds(
        lambda p: PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, imputer)), pcts
    )(x, cams.numpy(), targets, model)
    lerf = AveragerAcrossThresholds(
        lambda p: PerturbationConfidenceMetric(RemoveLeastRelevantFirst(p, imputer)), pcts
    )(x, cams.numpy(), targets, model)
    return torch.from_numpy(np.asarray(morf)), torch.from_numpy(np.asarray(lerf))


@pytest.mark.parametrize("solver", ["direct", "cg"])
def test_parity_with_pytorch_grad_cam_at_noise_zero(solver):
    model = small_model()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 12, 12, generator=g)
    cams = torch.rand(6, 12, 12, generator=g)
    cams[1] = torch.relu(cams[1] - 0.6)  # a ReLU'd map: ties at zero (over-removal at low percentiles)
    cams[2] = 0.5  # a constant map: every pixel removed at every percentile
    ref_morf, ref_lerf = _reference(model, x, cams)
    res = road(model, x, cams[:, None], noise=0, probability_fn=None, solver=solver, return_curves=True,
               max_forwards_per_batch=7)  # fmt: skip
    assert isinstance(res, RoadResult)
    torch.testing.assert_close(res.morf, ref_morf.float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(res.lerf, ref_lerf.float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(res.combined, (ref_lerf.float() - ref_morf.float()) / 2, rtol=0, atol=1e-4)
    # the defined result for a constant map: everything removed in both orders -> combined 0
    assert float(res.combined[2]) == 0.0 and bool((res.morf_removed[2] == 1).all())
    assert bool((res.morf_removed[1, :3] == 1).all())  # the ReLU'd map removes all at low p
    # the public wrappers agree with the result object
    torch.testing.assert_close(road(model, x, cams[:, None], noise=0, probability_fn=None, order="morf",
                                    solver=solver), res.morf)  # fmt: skip


def test_parity_with_smaller_maps_upsampled_and_subset_percentiles():
    model = small_model(seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 3, 10, 10, generator=g)
    small = torch.rand(3, 1, 5, 5, generator=g)
    up = torch.nn.functional.interpolate(small, size=(10, 10), mode="bilinear", align_corners=False)
    ref_morf, ref_lerf = _reference(model, x, up[:, 0], pcts=[25, 75])
    res = road(model, x, small, noise=0, probability_fn=None, percentiles=(25, 75), return_curves=True)
    torch.testing.assert_close(res.morf, ref_morf.float(), rtol=0, atol=1e-4)
    torch.testing.assert_close(res.lerf, ref_lerf.float(), rtol=0, atol=1e-4)


def test_imputation_reproduces_linear_images_and_constants():
    h = w = 9
    ii, jj = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")  # fmt: skip
    ramp = (0.3 * ii - 0.2 * jj + 1.0).expand(2, 2, h, w).clone()
    removed = torch.zeros(2, h, w, dtype=torch.bool)
    removed[0, 2:7, 3:6] = True  # interior holes: the 8-neighbour mean of a plane is the plane
    removed[1, 1:8:2, 1:8:3] = True
    for solver in ("direct", "cg"):
        out = impute_linear(ramp, removed, solver=solver)
        torch.testing.assert_close(out, ramp, rtol=0, atol=1e-5)
        const = torch.full((2, 3, h, w), 2.5)
        border = torch.zeros(2, h, w, dtype=torch.bool)
        border[:, :4] = True  # touching the border: the renormalised weights still average to 2.5
        torch.testing.assert_close(impute_linear(const, border, solver=solver), const, rtol=0, atol=1e-5)
        every = torch.ones(2, h, w, dtype=torch.bool)  # nothing known: defined as zeros
        assert float(impute_linear(const, every, solver=solver).abs().max()) == 0.0


def test_imputation_solves_the_neighbour_equations():
    """Each imputed pixel equals the weighted mean of its in-image neighbours (1/6 edges, 1/12 corners)."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, 1, 7, 8, generator=g, dtype=torch.float64)
    removed = torch.rand(1, 7, 8, generator=g) < 0.5
    for solver in ("direct", "cg"):
        out = impute_linear(x, removed, solver=solver)[0, 0]
        kept = ~removed[0]
        assert torch.equal(out[kept], x[0, 0][kept])
        for i, j in removed[0].nonzero().tolist():
            num = den = 0.0
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    if (di or dj) and 0 <= i + di < 7 and 0 <= j + dj < 8:
                        wt = 1 / 12 if di and dj else 1 / 6
                        num += wt * float(out[i + di, j + dj])
                        den += wt
            assert float(out[i, j]) == pytest.approx(num / den, abs=1e-6)


def test_noise_statistics_and_reproducibility():
    x = torch.zeros(4, 2, 16, 16)
    removed = torch.zeros(4, 16, 16, dtype=torch.bool)
    removed[:, 4:12, 4:12] = True
    gen = torch.Generator().manual_seed(0)
    out = impute_linear(x, removed, noise=0.1, generator=gen)
    vals = out[removed[:, None].expand_as(out)]
    assert float(vals.std()) == pytest.approx(0.1, rel=0.1)
    assert float(out[~removed[:, None].expand_as(out)].abs().max()) == 0.0
    model = small_model(c=2)
    xs = torch.randn(5, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    maps = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    a = road(model, xs, maps, noise=0.05, seed=7)
    b = road(model, xs, maps, noise=0.05, seed=7, max_examples_per_batch=2, max_forwards_per_batch=5)
    torch.testing.assert_close(a, b)  # the noise follows the example, not the chunking
    assert not torch.allclose(a, road(model, xs, maps, noise=0.05, seed=8))


def test_rank_ties_remove_exactly_the_nominal_share():
    g = torch.Generator().manual_seed(6)
    maps = torch.rand(3, 1, 10, 10, generator=g)
    thr = road_masks(maps, PCTS, "morf")
    rank = road_masks(maps, PCTS, "morf", ties="rank")
    assert torch.equal(thr, rank)  # no ties: the same masks
    assert torch.equal(road_masks(maps, PCTS, "lerf"), road_masks(maps, PCTS, "lerf", ties="rank"))
    tied = torch.relu(maps - 0.5)  # half the pixels tie at 0
    nominal = torch.tensor([100 - int(np.ceil(p / 100 * 99)) for p in PCTS], dtype=torch.float32) / 100
    got = road_masks(tied, PCTS, "morf", ties="rank").flatten(2).float().mean(2)
    torch.testing.assert_close(got, nominal.expand(3, -1))
    over = road_masks(tied, PCTS, "morf").flatten(2).float().mean(2)
    assert bool((over[:, 0] == 1).all())  # threshold semantics remove every tied pixel
    # MoRF removes the top of the map, LeRF the bottom
    m = road_masks(maps, [50], "morf")[:, 0]
    lo = road_masks(maps, [50], "lerf")[:, 0]
    for i in range(3):
        v = maps[i, 0]
        assert float(v[m[i]].min()) >= float(v[~m[i]].max())
        assert float(v[lo[i]].max()) <= float(v[~lo[i]].min())
    # a constant map under rank ties is a (seeded) random ranking, reproducible per example
    const = torch.ones(2, 1, 10, 10)
    r1 = road_masks(const, [50], "morf", ties="rank", indices=[4, 9])
    r2 = road_masks(const[:1], [50], "morf", ties="rank", indices=[4])
    assert torch.equal(r1[:1], r2) and not torch.equal(r1[0], r1[1])


def test_solvers_agree_and_a_better_ranking_scores_better():
    """On a model that only sums one region, the map of that region beats its reverse."""

    class RegionModel(nn.Module):
        def forward(self, x):
            s = x[:, :, 2:6, 2:6].sum(dim=(1, 2, 3))
            return torch.stack([s, -s], 1)

    model = RegionModel()
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.1 + 1.0
    x[:, :, 2:6, 2:6] += 2.0  # a bright region that its surroundings cannot impute
    good = torch.zeros(4, 1, 8, 8)
    good[:, :, 2:6, 2:6] = 1.0
    good = good + 0.01 * torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    kw = dict(noise=0.0, probability_fn=None, target=0, return_curves=True)
    d = road(model, x, good, solver="direct", **kw)
    c = road(model, x, good, solver="cg", **kw)
    torch.testing.assert_close(d.combined, c.combined, rtol=0, atol=1e-4)
    bad = road(model, x, -good, **kw)
    assert bool((d.morf < bad.morf).all()) and bool((d.combined > bad.combined).all())


def test_errors():
    model = small_model()
    x = torch.randn(2, 3, 8, 8)
    maps = torch.rand(2, 1, 4, 4)
    for bad in ([0, 50], [50, 100], [-5], [], [150]):
        with pytest.raises(ValueError, match="percentiles"):
            road(model, x, maps, percentiles=bad)
    with pytest.raises(ValueError, match="2"):
        road(model, x, maps[:1])
    with pytest.raises(ValueError, match=r"\(N, 1, h, w\)"):
        road(model, x, torch.rand(2, 1, 1, 4, 4))
    nan = maps.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        road(model, x, nan)
    with pytest.raises(ValueError, match="order"):
        road(model, x, maps, order="both")
    with pytest.raises(ValueError, match="ties"):
        road(model, x, maps, ties="first")
    with pytest.raises(ValueError, match="solver"):
        road(model, x, maps, solver="lu")
    with pytest.raises(ValueError, match="noise"):
        road(model, x, maps, noise=-1)
    with pytest.raises(ValueError, match="empty"):
        road(model, x[:0], maps[:0])
    with pytest.raises(TypeError, match="exactly one"):
        road(model, x)
