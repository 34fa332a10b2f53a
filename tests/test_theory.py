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
    methods_at_init,
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
    # the running moments do not depend on how the draws are chunked (same draws, any split)
    from captum_cam_ext.theory.monte_carlo import MapMoments

    draws = torch.randn(50, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    masked = torch.zeros(4, 4, dtype=torch.bool)
    masked[2:] = True
    whole, parts = MapMoments(masked), MapMoments(masked)
    whole.add(draws)
    for chunk in draws.split(7):
        parts.add(chunk)
    r_whole, r_parts = whole.result("m", 50), parts.result("m", 50)
    torch.testing.assert_close(r_parts.mean, r_whole.mean)
    torch.testing.assert_close(r_parts.stderr, r_whole.stderr)
    torch.testing.assert_close(r_whole.mean, draws.mean(0))
    torch.testing.assert_close(r_whole.stderr, draws.std(0) / math.sqrt(50))
    # another chunk size draws other networks: both estimates agree within their standard errors
    a = an.monte_carlo(x, 400, seed=2, batch=400)
    b = an.monte_carlo(x, 400, seed=2, batch=64)
    assert not torch.equal(a.mean, b.mean)
    assert bool(((a.mean - b.mean).abs() <= 5 * (a.stderr**2 + b.stderr**2).sqrt() + 1e-12).all())


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


def test_methods_at_init_skips_a_method_that_does_not_apply_when_asked():
    # Finer-CAM needs a class besides the target; the masked CNN has a single output
    small = dict(n_filters=3, visible_rows=2, height=6, width=6, n_samples=400,
                 n_samples_perturbation=40, seed=3)
    with pytest.raises(ValueError, match="besides the target"):
        methods_at_init([cce.LayerGradCam, cce.LayerFinerCam], **small)
    rows = methods_at_init([cce.LayerGradCam, cce.LayerFinerCam], skip_inapplicable=True, **small)
    assert [r["method"] for r in rows] == ["LayerGradCam", "LayerFinerCam"]
    grad, finer = rows
    assert "skipped" not in grad and grad["n_samples"] == 400
    # the applicable method's numbers are the Monte-Carlo of the closed form, not placeholders
    assert grad["leak_theory"] is not None and grad["leak_theory"] > 0
    assert abs(grad["leak_mc"] - grad["leak_theory"]) < 4 * grad["leak_se"]
    assert finer["skipped"].startswith("ValueError: ") and "besides the target" in finer["skipped"]
    assert finer["n_samples"] == 0 and "leak_mc" not in finer
    md = methods_markdown(rows)
    assert "| LayerFinerCam | - | not applicable: ValueError: " in md
    # an explicit False raises
    with pytest.raises(ValueError, match="besides the target"):
        methods_at_init([cce.LayerFinerCam], skip_inapplicable=False, **small)


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


# ------------------------------------------------ max-pooled head (the authors' notebook model)


@st.composite
def pooled_configs(draw):
    c = draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    s = draw(st.integers(2, 3))
    h = draw(st.integers(k - 1 + s, 10))
    w = draw(st.integers(k - 1 + s, 10))
    hp = h - k + 1
    v = draw(st.integers(1, 8))
    vis = draw(st.integers(1, hp // s))
    sw = draw(st.floats(0.3, 2.0))
    sth = draw(st.floats(0.3, 2.0))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 10_000))
    x = torch.randn(c, h, w, generator=torch.Generator().manual_seed(seed))
    return dict(in_channels=c, height=h, width=w, kernel_size=k, n_filters=v, visible_rows=vis,
                sigma_w=sw, sigma_theta=sth, bias=bias, pool_size=s), x, seed


@FAST
@given(cfg=pooled_configs())
def test_max_pool_closed_form_matches_monte_carlo(cfg):
    """alpha_v = (1/P) sum of the visible pooled cells' Theta: the Grad-CAM law with |S| pooled
    cells and P conv positions (the map is on the conv grid)."""
    kw, x, seed = cfg
    an = GradCamAtInitAnalyzer(**kw)
    res = an.monte_carlo(x, 8000, seed=seed, batch=4000)
    hp, wp = an.feature_size
    assert res.mean.shape == (hp, wp) and an.n_visible == kw["visible_rows"] * (wp // kw["pool_size"])
    assert res.leak_z is not None and abs(res.leak_z) < 4
    assert abs(res.extra["total_z"]) < 4
    assert res.max_abs_z() is not None and res.max_abs_z() < 5
    p = res.positive_probability
    assert p is not None
    se = (p * (1 - p) / res.n_samples).sqrt().clamp_min(1e-12)
    assert float(((res.positive_rate - p).abs() / se).max()) < 5


@FAST
@given(cfg=pooled_configs(),
       method=st.sampled_from(["LayerGradCam", "LayerXGradCam", "LayerHiResCam", "LayerCam"]))
def test_max_pool_conditional_closed_forms_match_monte_carlo(cfg, method):
    kw, x, seed = cfg
    an = GradCamAtInitAnalyzer(**kw)
    net = masked_cnn(kw["in_channels"], kw["height"], kw["width"], kw["kernel_size"],
                     kw["n_filters"], kw["visible_rows"], bias=kw["bias"], sigma_w=kw["sigma_w"],
                     pool_size=kw["pool_size"], generator=torch.Generator().manual_seed(seed + 1))
    res = an.monte_carlo(x, 8000, seed=seed, method=getattr(cce, method), conv_weight=net,
                         batch=4000)
    assert res.leak_z is not None and abs(res.leak_z) < 4
    assert abs(res.extra["total_z"]) < 4
    assert res.max_abs_z() is not None and res.max_abs_z() < 5
    if method in ("LayerHiResCam", "LayerCam"):  # 0 off the visible windows' argmax positions
        assert res.leak_mean == 0.0
        b = an.features(x, net)
        off = an.gradient_support(b).sum(1)[0] == 0
        assert torch.count_nonzero(res.mean[off]) == 0


@FAST
@given(cfg=st.one_of(configs(max_size=7), pooled_configs()), n_out=st.integers(2, 10))
def test_predicted_class_conditional_law_matches_monte_carlo(cfg, n_out):
    """target="argmax": given W the map is (sigma/P)(a M_K + r Z); checked against the package's
    Grad-CAM on networks whose target is each network's own predicted class."""
    kw, x, seed = cfg
    an = GradCamAtInitAnalyzer(**kw)
    net = masked_cnn(kw["in_channels"], kw["height"], kw["width"], kw["kernel_size"],
                     kw["n_filters"], kw["visible_rows"], bias=kw["bias"], sigma_w=kw["sigma_w"],
                     pool_size=kw.get("pool_size", 1),
                     generator=torch.Generator().manual_seed(seed + 1))
    res = an.monte_carlo(x, 8000, seed=seed, target="argmax", n_outputs=n_out, conv_weight=net,
                         batch=4000)
    assert res.extra["target"] == "argmax" and res.extra["n_outputs"] == n_out
    assert res.leak_z is not None and abs(res.leak_z) < 4
    assert abs(res.extra["total_z"]) < 4
    assert res.max_abs_z() is not None and res.max_abs_z() < 5
    p = res.positive_probability
    assert p is not None
    se = (p * (1 - p) / res.n_samples).sqrt().clamp_min(1e-3)
    assert float(((res.positive_rate - p).abs() / se).max()) < 5


def test_predicted_class_target_shifts_the_map_up():
    """The winner's weights correlate with the visible features (all >= 0): the map is larger and
    positive more often than with a fixed target, also behind the wall."""
    an = GradCamAtInitAnalyzer(1, 10, 10, 3, 8, 4, sigma_w=0.7, sigma_theta=1.3)
    x = torch.rand(1, 10, 10, generator=torch.Generator().manual_seed(0))
    fixed = an.monte_carlo(x, 4000, seed=1)
    top = an.monte_carlo(x, 4000, seed=1, target="argmax", n_outputs=10)
    assert top.expected is None  # no closed form over W for the predicted class
    m = an.masked_mask
    assert fixed.leak_expected is not None
    assert top.leak_mean - 4 * top.leak_stderr > 1.5 * fixed.leak_expected
    assert float(top.positive_rate[m].mean()) > 0.7 > float(fixed.positive_rate[m].mean())
    # one logit: the predicted class is logit 0, and the draws are the same
    one = an.monte_carlo(x, 300, seed=3, target="argmax", n_outputs=1)
    assert torch.equal(one.mean, an.monte_carlo(x, 300, seed=3).mean)


def test_max_normal_quadrature_moments():
    from captum_cam_ext.theory.closed_form import max_normal_quadrature

    for n, mean in [(1, 0.0), (2, 1 / math.sqrt(math.pi)), (3, 1.5 / math.sqrt(math.pi))]:
        m, w = max_normal_quadrature(n)
        assert float((m * w).sum()) == pytest.approx(mean, abs=1e-10)
    m, w = max_normal_quadrature(1)
    assert float((m * m * w).sum()) == pytest.approx(1.0, abs=1e-8)


@FAST
@given(cfg=pooled_configs(), hidden=st.sampled_from([None, 4]))
def test_pooled_model_is_blind_below_its_band(cfg, hidden):
    kw, x, seed = cfg
    s, k, r = kw["pool_size"], kw["kernel_size"], kw["visible_rows"]
    g = torch.Generator().manual_seed(seed)
    net = masked_cnn(kw["in_channels"], kw["height"], kw["width"], k, kw["n_filters"], r,
                     bias=kw["bias"], hidden=hidden, pool_size=s, generator=g, n_outputs=3)
    first_unseen = s * r + k - 1
    if first_unseen >= kw["height"]:
        return
    x2 = x[None].clone()
    x2[:, :, first_unseen:] = 100 * torch.randn(x2[:, :, first_unseen:].shape, generator=g)
    assert torch.equal(net(x[None]), net(x2))
    xr = x2.clone().requires_grad_(True)
    net(xr).sum().backward()
    assert xr.grad is not None and torch.count_nonzero(xr.grad[:, :, first_unseen:]) == 0
    an = GradCamAtInitAnalyzer(**kw)
    assert int(an.masked_mask[:, 0].sum()) == an.feature_size[0] - s * r


def test_the_notebook_model_sees_only_the_top_rows():
    """The authors' MNIST notebook: 1x29x29 input, Conv2d(1, 256, 2) -> ReLU -> MaxPool2d(2) ->
    Linear on the first 7 of 14 pooled rows: input rows 15..28 are invisible."""
    net = masked_cnn(1, 29, 29, 2, 256, 7, pool_size=2, n_outputs=10,
                     generator=torch.Generator().manual_seed(0))
    assert net.head_grid == (14, 14) and net.theta is not None
    assert tuple(net.theta.shape) == (10, 256, 7, 14)
    x = torch.rand(2, 1, 29, 29)
    x2 = x.clone()
    x2[:, :, 15:] = torch.rand(2, 1, 14, 29)
    assert torch.equal(net(x), net(x2))
    x3 = x.clone()
    x3[:, :, 14] += 1.0  # row 14 is read by the last visible window
    assert not torch.equal(net(x), net(x3))
    an = GradCamAtInitAnalyzer(1, 29, 29, 2, 256, 7, pool_size=2)
    assert an.n_visible == 7 * 14 and an.n_positions == 28 * 28
    assert an.expected_map(x[0]).shape == (1, 1, 28, 28)


@pytest.mark.parametrize("method", ["LayerGradCam", "LayerHiResCam", "LayerScoreCam"])
def test_batched_pooled_networks_equal_single_networks(method):
    an = GradCamAtInitAnalyzer(1, 9, 8, 2, 3, 2, sigma_w=0.8, sigma_theta=1.1, pool_size=2)
    x = torch.randn(1, 1, 9, 8, generator=torch.Generator().manual_seed(3))
    batched = an.sample_networks(3, torch.Generator().manual_seed(4), n_outputs=2)
    cls = getattr(cce, method)
    got = cls(batched, batched.features).attribute(
        x.expand(3, -1, -1, -1).contiguous(), target=1, relu_attributions=True,
        additional_forward_args=(torch.arange(3),))
    for i in range(3):
        net = masked_cnn(1, 9, 8, 2, 3, 2, pool_size=2, n_outputs=2)
        with torch.no_grad():
            net.conv.weight.copy_(batched.conv_weight[i])
            net.theta.copy_(batched.theta[i])
        want = cls(net, net.features).attribute(x, target=1, relu_attributions=True)
        torch.testing.assert_close(got[i : i + 1], want, rtol=1e-4, atol=1e-5)


def test_pool_and_target_errors():
    an = GradCamAtInitAnalyzer(1, 9, 9, 2, 4, 2, pool_size=2)
    x = torch.rand(1, 9, 9)
    with pytest.raises(ValueError, match="pool_size=2"):
        an.expected_map(x, "hirescam")
    with pytest.raises(ValueError, match=r"visible_rows must be an int in \[0, 4\].*pooled"):
        GradCamAtInitAnalyzer(1, 9, 9, 2, 4, 5, pool_size=2)
    with pytest.raises(ValueError, match="pool_size=9 does not fit"):
        GradCamAtInitAnalyzer(1, 9, 9, 2, 4, 0, pool_size=9)
    with pytest.raises(ValueError, match="target=3 is not one of the n_outputs=2"):
        an.monte_carlo(x, 10, target=3, n_outputs=2)
    with pytest.raises(ValueError, match="'argmax'"):
        an.monte_carlo(x, 10, target="top")
    net = masked_cnn(1, 9, 9, 2, 4, 2, pool_size=2)
    with pytest.raises(ValueError, match="gradcam' only"):
        an.conditional_expected_map(x, net, "xgradcam", target="argmax", n_outputs=3)
    with pytest.raises(ValueError, match=r"pool_size\) = \(1, 9, 9, 2, 1\)"):
        an.check_model(masked_cnn(1, 9, 9, 2, 4, 2))
