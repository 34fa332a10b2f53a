"""Property tests of the see-through-walls theory (captum_cam_ext.theory).

The closed forms are checked against Monte-Carlo runs of the package's own CAM classes on sampled
networks (within 4 standard errors), and the exact properties (invariance, HiResCAM/LayerCAM zero
behind the wall, scaling laws, P(>0)) are checked directly.  Hypothesis is seeded (derandomized),
so the draws are the same on every run.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import captum_cam_ext as cce
from captum_cam_ext.theory import (
    BatchedMaskedCNN,
    GradCamAtInitAnalyzer,
    chi_mean_binomial,
    masked_cnn,
    methods_markdown,
    plot_sweep,
    sweep_markdown,
    theory_sweep,
)

torch.set_num_threads(1)

FAST = settings(max_examples=10, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw, max_size: int = 9):
    c = draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    h = draw(st.integers(k + 1, max_size))
    w = draw(st.integers(k, max_size))
    hp = h - k + 1
    v = draw(st.integers(1, 8))
    vis = draw(st.integers(1, hp))
    sw = draw(st.floats(0.3, 2.0))
    sth = draw(st.floats(0.3, 2.0))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(c, h, w, generator=g)
    if draw(st.booleans()):  # a zero region: its patches have norm 0 (no leak there)
        x[:, : h // 2, : w // 2] = 0
    return dict(in_channels=c, height=h, width=w, kernel_size=k, n_filters=v, visible_rows=vis,
                sigma_w=sw, sigma_theta=sth, bias=bias), x, seed


# --------------------------------------------------------------------------- closed form vs MC


@FAST
@given(cfg=configs(), method=st.sampled_from(["LayerGradCam", "LayerHiResCam", "LayerCam"]))
def test_closed_form_matches_monte_carlo(cfg, method):
    kw, x, seed = cfg
    an = GradCamAtInitAnalyzer(**kw)
    res = an.monte_carlo(x, 8000, seed=seed, method=getattr(cce, method), batch=4000)
    assert res.expected is not None and res.z is not None and res.leak_z is not None
    # leaked mass (one scalar) within 4 standard errors
    assert abs(res.leak_z) < 4, (res.leak_mean, res.leak_expected, res.leak_stderr)
    assert abs(res.extra["total_z"]) < 4, res.extra  # the whole map's mass, visible part included
    # per position: Bonferroni-like margin over up to 81 positions
    assert res.max_abs_z() < 5
    # P(map > 0): the MC rate agrees with the closed form within 4 binomial standard errors
    p = res.positive_probability
    assert p is not None
    se = (p * (1 - p) / res.n_samples).sqrt().clamp_min(1e-12)
    assert float(((res.positive_rate - p).abs() / se).max()) < 5
    if method in ("LayerHiResCam", "LayerCam"):
        assert res.leak_mean == 0.0 and torch.count_nonzero(res.mean[an.masked_mask]) == 0


@FAST
@given(cfg=configs(max_size=7),
       method=st.sampled_from(["LayerGradCam", "LayerXGradCam", "LayerHiResCam", "LayerCam"]))
def test_conditional_closed_form_matches_monte_carlo(cfg, method):
    kw, x, seed = cfg
    an = GradCamAtInitAnalyzer(**kw)
    net = masked_cnn(kw["in_channels"], kw["height"], kw["width"], kw["kernel_size"],
                     kw["n_filters"], kw["visible_rows"], bias=kw["bias"], sigma_w=kw["sigma_w"],
                     generator=torch.Generator().manual_seed(seed + 1))
    res = an.monte_carlo(x, 8000, seed=seed, method=getattr(cce, method), conv_weight=net,
                         batch=4000)
    assert res.leak_z is not None and abs(res.leak_z) < 4
    assert abs(res.extra["total_z"]) < 4
    assert res.max_abs_z() is not None and res.max_abs_z() < 5


def test_reference_numbers_of_the_note():
    """The note's 8x8 / k=3 / V=5 / 3 visible rows example: P(>0) = 0.484375 exactly."""
    an = GradCamAtInitAnalyzer(1, 8, 8, 3, 5, 3, sigma_w=0.7, sigma_theta=1.3)
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    p = an.positive_probability(x)
    assert torch.allclose(p, torch.full_like(p, 0.484375))
    res = an.monte_carlo(x, 20000, seed=1)
    assert abs(res.leak_z) < 4 and res.max_abs_z() < 5


# ------------------------------------------------------------------------- exact properties


@FAST
@given(cfg=configs(), hidden=st.sampled_from([None, 5]), n_out=st.integers(1, 3))
def test_output_and_gradient_ignore_the_unseen_input(cfg, hidden, n_out):
    kw, x, seed = cfg
    g = torch.Generator().manual_seed(seed)
    net = masked_cnn(kw["in_channels"], kw["height"], kw["width"], kw["kernel_size"],
                     kw["n_filters"], kw["visible_rows"], bias=kw["bias"], hidden=hidden,
                     generator=g, n_outputs=n_out)
    first_unseen = kw["visible_rows"] + kw["kernel_size"] - 1
    if first_unseen >= kw["height"]:
        return
    x = x[None]
    x2 = x.clone()
    x2[:, :, first_unseen:] = 100 * torch.randn(x2[:, :, first_unseen:].shape, generator=g)
    assert torch.equal(net(x), net(x2))
    xr = x2.clone().requires_grad_(True)
    net(xr).sum().backward()
    assert xr.grad is not None
    assert torch.count_nonzero(xr.grad[:, :, first_unseen:]) == 0


@FAST
@given(cfg=configs(), method=st.sampled_from(["LayerHiResCam", "LayerCam"]))
def test_hirescam_and_layercam_are_exactly_zero_behind_the_wall(cfg, method):
    kw, x, seed = cfg
    net = masked_cnn(kw["in_channels"], kw["height"], kw["width"], kw["kernel_size"],
                     kw["n_filters"], kw["visible_rows"], bias=kw["bias"],
                     generator=torch.Generator().manual_seed(seed))
    cam = getattr(cce, method)(net, net.features)
    maps = cam.attribute(x[None], target=0)
    assert torch.count_nonzero(maps[:, :, kw["visible_rows"] :]) == 0


@FAST
@given(cfg=configs(), c=st.floats(0.1, 10.0))
def test_scaling_laws(cfg, c):
    kw, x, seed = cfg
    x = x.double()
    an = GradCamAtInitAnalyzer(**{**kw, "bias": False})
    base = an.expected_map(x)
    for name in ("sigma_w", "sigma_theta"):
        scaled = GradCamAtInitAnalyzer(**{**kw, "bias": False, name: kw[name] * c})
        torch.testing.assert_close(scaled.expected_map(x), c * base, rtol=1e-12, atol=0)
    torch.testing.assert_close(an.expected_map(c * x), c * base, rtol=1e-12, atol=1e-300)
    torch.testing.assert_close(an.expected_map(-x), base, rtol=1e-12, atol=0)
    # the same laws hold exactly for the package's Grad-CAM on any fixed network (not only on
    # average): B scales with W and x, alpha with Theta
    net = masked_cnn(kw["in_channels"], kw["height"], kw["width"], kw["kernel_size"],
                     kw["n_filters"], kw["visible_rows"],
                     generator=torch.Generator().manual_seed(seed)).double()
    cam = cce.LayerGradCam(net, net.features)
    xd = x[None]
    m0 = cam.attribute(xd, target=0, relu_attributions=True)
    torch.testing.assert_close(cam.attribute(c * xd, target=0, relu_attributions=True), c * m0)
    with torch.no_grad():
        net.conv.weight.mul_(c)
    torch.testing.assert_close(cam.attribute(xd, target=0, relu_attributions=True), c * m0)
    with torch.no_grad():
        net.conv.weight.div_(c)
        net.theta.mul_(c)
    torch.testing.assert_close(cam.attribute(xd, target=0, relu_attributions=True), c * m0)


@pytest.mark.parametrize("v", [1, 2, 3, 5, 8, 13, 40])
def test_positive_probability_and_chi_constant(v):
    an = GradCamAtInitAnalyzer(1, 6, 5, 2, v, 2, bias=True)
    x = torch.randn(1, 6, 5)
    p = an.positive_probability(x)
    assert torch.allclose(p, torch.full_like(p, (1 - 2.0**-v) / 2))
    ph = an.positive_probability(x, "hirescam")
    assert torch.all(ph[..., 2:, :] == 0) and torch.allclose(ph[..., :2, :], p[..., :2, :])
    pl = an.positive_probability(x, "layercam")
    assert torch.allclose(pl[..., :2, :], torch.full_like(pl[..., :2, :], 1 - 0.75**v))
    # c_V = E[chi_K], K ~ Bin(V, 1/2): Jensen bound, large-V limit sqrt(V/2), direct sum
    c = chi_mean_binomial(v)
    assert c <= math.sqrt(v / 2) + 1e-12
    direct = sum(math.comb(v, k) * 2.0**-v * math.sqrt(2) * math.gamma((k + 1) / 2)
                 / math.gamma(k / 2) for k in range(1, v + 1))
    assert c == pytest.approx(direct, rel=1e-12)
    if v >= 40:
        assert c == pytest.approx(math.sqrt(v / 2), rel=0.02)


def test_zero_patches_do_not_leak_and_bias_does():
    an = GradCamAtInitAnalyzer(1, 6, 6, 3, 4, 2)
    x = torch.zeros(1, 6, 6)
    assert torch.count_nonzero(an.expected_map(x)) == 0
    assert torch.count_nonzero(an.positive_probability(x)) == 0
    anb = GradCamAtInitAnalyzer(1, 6, 6, 3, 4, 2, bias=True)
    assert bool((anb.expected_leak(x) > 0).all())


def test_visible_part_has_the_same_law_as_the_masked_part():
    """Grad-CAM does not know where the wall is: same closed form on S and on M."""
    x = torch.ones(1, 8, 8)  # every patch has the same norm
    em = GradCamAtInitAnalyzer(1, 8, 8, 3, 6, 3).expected_map(x)
    assert torch.allclose(em, em[0, 0, 0, 0].expand_as(em))


# ---------------------------------------------------------------- vectorization and validation


@pytest.mark.parametrize(
    "method",
    ["LayerGradCam", "LayerGradCamPlusPlus", "LayerXGradCam", "LayerHiResCam", "LayerCam",
     "LayerEigenCam", "LayerEigenGradCam", "LayerScoreCam", "LayerAblationCam",
     "LayerConceptorCam"],
)
def test_batched_networks_equal_single_networks(method):
    """The vectorized Monte-Carlo runs each CAM exactly as on separate networks."""
    an = GradCamAtInitAnalyzer(2, 7, 6, 3, 4, 3, sigma_w=0.8, sigma_theta=1.1, bias=True)
    x = torch.randn(1, 2, 7, 6, generator=torch.Generator().manual_seed(3))
    batched = an.sample_networks(3, torch.Generator().manual_seed(4))
    kw = {}
    if method == "LayerConceptorCam":
        cls = pytest.importorskip("captum_cam_ext.attr.conceptor_cam").LayerConceptorCam
        kw = {"negatives": "channels"}  # one output: no competitor classes
    else:
        cls = getattr(cce, method)
    got = cls(batched, batched.features, **kw).attribute(
        x.expand(3, -1, -1, -1).contiguous(), target=0, relu_attributions=True,
        additional_forward_args=(torch.arange(3),))
    for i in range(3):
        net = masked_cnn(2, 7, 6, 3, 4, 3, bias=True)
        with torch.no_grad():
            net.conv.weight.copy_(batched.conv_weight[i])
            assert net.conv.bias is not None and batched.conv_bias is not None
            net.conv.bias.copy_(batched.conv_bias[i])
            net.theta.copy_(batched.theta[i])
        want = cls(net, net.features, **kw).attribute(x, target=0, relu_attributions=True)
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-4, atol=1e-5)


def test_monte_carlo_runs_every_cam_and_is_reproducible():
    an = GradCamAtInitAnalyzer(1, 6, 6, 3, 3, 2)
    x = torch.rand(1, 6, 6)
    for cls in (cce.LayerGradCamPlusPlus, cce.LayerScoreCam, cce.LayerAblationCam,
                cce.LayerEigenCam):
        r1 = an.monte_carlo(x, 40, seed=5, method=cls, batch=16)
        r2 = an.monte_carlo(x, 40, seed=5, method=cls, batch=16)
        assert torch.equal(r1.mean, r2.mean) and r1.expected is None and r1.z is None
        assert r1.mean.shape == (4, 4) and bool(torch.isfinite(r1.stderr).all())
    # chunking does not change the draws' statistics beyond float rounding
    a = an.monte_carlo(x, 64, seed=2, batch=64)
    b = an.monte_carlo(x, 64, seed=2, batch=64)
    assert torch.equal(a.mean, b.mean)


def test_bad_shapes_raise_clear_errors():
    an = GradCamAtInitAnalyzer(1, 8, 8, 3, 5, 3)
    with pytest.raises(ValueError, match=r"\(2, 8, 8\).*\(1, 8, 8\)"):
        an.expected_map(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"\(5, 1, 2, 2\).*\(5, 1, 3, 3\)"):
        an.conditional_expected_map(torch.zeros(1, 8, 8), torch.zeros(5, 1, 2, 2))
    other = masked_cnn(1, 9, 8, 3, 5, 3)
    with pytest.raises(ValueError, match=r"\(1, 9, 8, 3\).*\(1, 8, 8, 3\)"):
        an.check_model(other)
    with pytest.raises(ValueError, match=r"\(4, 1, 3, 3\).*\(5, 1, 3, 3\)"):
        an.check_model(masked_cnn(1, 8, 8, 3, 4, 3))
    with pytest.raises(ValueError, match="one image"):
        an.monte_carlo(torch.zeros(2, 1, 8, 8), 10)
    with pytest.raises(ValueError, match="visible_rows"):
        GradCamAtInitAnalyzer(1, 8, 8, 3, 5, 7)
    with pytest.raises(ValueError, match="no unconditional closed form"):
        an.expected_map(torch.zeros(1, 8, 8), "gradcam++")
    net = masked_cnn(1, 8, 8, 3, 5, 3)
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 7\)"):
        net(torch.zeros(2, 1, 8, 7))
    with pytest.raises(ValueError):
        BatchedMaskedCNN(torch.zeros(2, 3, 1, 3, 3), torch.zeros(2, 1, 3, 2, 5), 8, 8)


def test_sweep_report_table_and_figure():
    rows = theory_sweep(n_filters=(1, 4), visible_rows=(2, 5), height=8, width=8,
                        n_samples=2000, seed=0)
    assert len(rows) == 4
    for r in rows:
        assert abs(r["leak_z"]) < 4
    md = sweep_markdown(rows)
    assert md.count("\n") == 5 and "P(>0) theory" in md
    fig = plot_sweep(rows)
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt

    plt.close(fig)
    assert "LayerGradCam" in methods_markdown([dict(method="LayerGradCam", leak_mc=1.0,
                                                    leak_se=0.1, leak_theory=None, p_pos_mc=0.5,
                                                    n_samples=10)])


@pytest.mark.parametrize("method", ["LayerGradCam", "LayerHiResCam", "LayerScoreCam"])
def test_hidden_head_networks(method):
    """Batched hidden-head networks equal masked_cnn(hidden=...) networks; the wall still holds."""
    an = GradCamAtInitAnalyzer(1, 7, 6, 3, 4, 2, sigma_w=0.8, sigma_theta=1.1)
    x = torch.randn(1, 1, 7, 6, generator=torch.Generator().manual_seed(5))
    batched = an.sample_networks(2, torch.Generator().manual_seed(6), hidden=5)
    cls = getattr(cce, method)
    got = cls(batched, batched.features).attribute(
        x.expand(2, -1, -1, -1).contiguous(), target=0, relu_attributions=True,
        additional_forward_args=(torch.arange(2),))
    for i in range(2):
        net = masked_cnn(1, 7, 6, 3, 4, 2, hidden=5)
        assert net.head is not None and batched.head_out is not None
        with torch.no_grad():
            net.conv.weight.copy_(batched.conv_weight[i])
            net.head[0].weight.copy_(batched.theta[i].reshape(5, -1))
            net.head[2].weight.copy_(batched.head_out[i])
        want = cls(net, net.features).attribute(x, target=0, relu_attributions=True)
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-4, atol=1e-5)
    res = an.monte_carlo(x, 500, seed=0, method=cls, hidden=5, batch=250)
    assert res.expected is None and res.extra["hidden"] == 5
    if method == "LayerHiResCam":
        assert res.leak_mean == 0.0
    else:
        assert res.leak_mean > 0
