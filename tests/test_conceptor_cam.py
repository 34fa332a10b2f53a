"""LayerConceptorCam: reduction to every base CAM, invariants F1-F6, batching, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from models import FlattenHeadCNN, SmallCNN
from torch import nn

from captum_cam_ext import (
    LayerAblationCam,
    LayerCam,
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerHiResCam,
    LayerScoreCam,
    LayerXGradCam,
)
from captum_cam_ext.attr.conceptor_cam import LayerConceptorCam, conceptor_fusion

BASES = [
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerXGradCam,
    LayerCam,
    LayerHiResCam,
    LayerScoreCam,
    LayerAblationCam,
]
D = torch.float64


def _model(kind: str):
    torch.manual_seed(0)
    if kind == "gap":
        model = SmallCNN(width=4, n_classes=5).eval()  # layer: 8 channels, 8x8 = 64 positions
        return model, model.features
    model = FlattenHeadCNN(width=6, size=6, n_classes=4).eval()  # 6 channels, 36 positions
    return model, model.relu


def _inputs(kind: str, n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    size = 8 if kind == "gap" else 6
    return torch.randn(n, 3, size, size, generator=g)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


# --------------------------------------------------------------------------------------------
# F1: aperture inf, no negatives, signed data -> exactly the base CAM, for every base
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base_cls", BASES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", ["gap", "flat"])
def test_reduces_to_base_cam(base_cls, kind):
    model, layer = _model(kind)
    x = _inputs(kind)
    base = base_cls(model, layer)
    target = [0, 1, 2]
    ref = base.attribute(x, target=target)
    for layout in ("spatial", "channel"):
        cc = LayerConceptorCam(
            model,
            base=base,
            aperture=math.inf,
            negatives="none",
            positive_data="signed",
            layout=layout,
        )
        got = cc.attribute(x, target=target)
        assert got.shape == ref.shape and got.dtype == ref.dtype
        assert _rel_err(got, ref) < 1e-6, (layout, _rel_err(got, ref))
    # post-processing options follow the base's conventions
    kw = dict(relu_attributions=True, upsample_to_input=True, normalize=True)
    got = LayerConceptorCam(
        model, layer, base=base_cls, aperture=math.inf, negatives="none", positive_data="signed"
    ).attribute(x, target=target, **kw)
    assert _rel_err(got, base.attribute(x, target=target, **kw)) < 1e-5


def test_finite_aperture_differs_and_never_amplifies():
    model, layer = _model("gap")
    x = _inputs("gap")
    m = LayerGradCam(model, layer).attribute(x).flatten(1)
    prev = None
    for a in (1.0, 5.0, 50.0, 1e4):
        s = LayerConceptorCam(model, layer, aperture=a, negatives="none", positive_data="signed")
        s = s.attribute(x).flatten(1)
        assert bool((s.norm(dim=1) <= m.norm(dim=1) * (1 + 1e-5)).all())  # ||C m|| <= ||m||
        err = float((s - m).norm() / m.norm())
        if prev is not None:
            assert err <= prev + 1e-6  # converges monotonically to the base map
        prev = err
    assert prev is not None and prev < 1e-3


# --------------------------------------------------------------------------------------------
# the fusion against an independent reference (numpy-style dense formulas)
# --------------------------------------------------------------------------------------------
def _reference_and_not(A, w, m, a_pos, a_neg):
    """Dense reference for one example: C+ AND NOT C- with N2 negatives, readout C m."""
    Z = w[:, None] * A  # (K, P)
    Zp, Zn = torch.relu(w)[:, None] * A, torch.relu(-w)[:, None] * A
    Rp, Rn = Zp.T @ Zp, Zn.T @ Zn
    Rp, Rn = Rp / torch.trace(Rp), Rn / torch.trace(Rn)
    eye = torch.eye(A.shape[1], dtype=D)
    Cp = Rp @ torch.linalg.inv(Rp + a_pos**-2 * eye)
    notCn = eye - Rn @ torch.linalg.inv(Rn + a_neg**-2 * eye)  # invertible for finite aperture
    # range(C+ AND NOT C-) = range(C+) = range(Rp); V: orthonormal basis of it
    ev, U = torch.linalg.eigh(Rp)
    V = U[:, ev > 1e-12 * ev.max()]
    inner = V.T @ (torch.linalg.pinv(Cp, hermitian=True) + torch.linalg.inv(notCn) - eye) @ V
    C = V @ torch.linalg.inv(inner) @ V.T
    return C @ m, Z


def test_fusion_matches_dense_reference():
    g = torch.Generator().manual_seed(0)
    K, h, w_ = 5, 4, 4
    A = torch.relu(torch.randn(2, K, h, w_, generator=g, dtype=D))
    w = torch.randn(2, K, 1, 1, generator=g, dtype=D)
    m = (w * A).sum(1, keepdim=True)
    got = conceptor_fusion(A, w, m, negative_channels=True, aperture=3.0, negative_aperture=2.0)
    for i in range(2):
        ref, _ = _reference_and_not(A[i].reshape(K, -1), w[i].flatten(), m[i].flatten(), 3.0, 2.0)
        assert torch.allclose(got[i].flatten(), ref, atol=1e-9)


def test_sum_and_or_not_combinations():
    g = torch.Generator().manual_seed(2)
    A = torch.relu(torch.randn(2, 6, 3, 3, generator=g, dtype=D))
    w = torch.randn(2, 6, 1, 1, generator=g, dtype=D)
    m = (w * A).sum(1, keepdim=True).flatten(1)
    pos = conceptor_fusion(A, w, negative_channels=False, aperture=2.0).flatten(1)
    andn = conceptor_fusion(A, w, negative_channels=True, aperture=2.0).flatten(1)
    orn = conceptor_fusion(A, w, negative_channels=True, aperture=2.0, combine="or_not").flatten(1)
    sm = conceptor_fusion(A, w, negative_channels=True, aperture=2.0, combine="sum").flatten(1)
    q = lambda s: (m * s).sum(1)  # noqa: E731  quadratic evidence m^T C m
    # F2: C+ AND NOT C- <= C+ <= C+ OR NOT C- (Loewner) -> ordered quadratic evidence
    assert bool((q(andn) <= q(pos) + 1e-12).all()) and bool((q(pos) <= q(orn) + 1e-12).all())
    assert bool((q(andn) < q(pos) - 1e-9).all())  # negatives actually damp here
    # sum = (C+ + NOT C-) / 2: affine in the conceptors
    negonly = conceptor_fusion(
        A,
        torch.zeros_like(w),
        m.reshape(2, 1, 3, 3),
        competitor_data=[(A, -w)],
        negative_channels=False,
        aperture=2.0,
        combine="sum",
    )
    assert negonly.shape == (2, 1, 3, 3)
    # sum, by hand: C+ from ReLU(w) A, C- from ReLU(-w) A, trace-normalised spatial correlations,
    # conceptors R (R + a^-2 I)^-1 at apertures 2.0 / 0.5, s = ((C+ + I - C-) / 2) m
    eye = torch.eye(9, dtype=D)
    for i in range(2):
        zp = (torch.relu(w[i]) * A[i]).reshape(6, 9)
        zn = (torch.relu(-w[i]) * A[i]).reshape(6, 9)
        rp, rn = zp.T @ zp, zn.T @ zn
        rp, rn = rp / torch.trace(rp), rn / torch.trace(rn)
        cp = rp @ torch.linalg.inv(rp + 2.0**-2 * eye)
        cn = rn @ torch.linalg.inv(rn + 0.5**-2 * eye)
        torch.testing.assert_close(sm[i], ((cp + eye - cn) / 2) @ m[i], rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------------------------
# F3-F6 invariants on random activations (hypothesis)
# --------------------------------------------------------------------------------------------
@st.composite
def activations(draw):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    K = draw(st.integers(2, 10))
    h, w = draw(st.integers(2, 4)), draw(st.integers(2, 4))
    A = torch.relu(torch.randn(2, K, h, w, generator=g, dtype=D))
    W = torch.randn(2, K, 1, 1, generator=g, dtype=D)
    W2 = torch.randn(2, K, 1, 1, generator=g, dtype=D)
    return A, W, W2


CFG = dict(negative_channels=True, aperture=3.0)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(activations())
def test_F3_F4_F5_permutations_and_scale(data):
    A, W, W2 = data
    comp = [(A, W2)]
    s = conceptor_fusion(A, W, competitor_data=comp, **CFG)
    K, h, w = A.shape[1:]
    pk = torch.randperm(K, generator=torch.Generator().manual_seed(0))
    s_k = conceptor_fusion(A[:, pk], W[:, pk], competitor_data=[(A[:, pk], W2[:, pk])], **CFG)
    assert torch.allclose(s_k, s, atol=1e-9)  # F3 channel permutation invariance
    pp = torch.randperm(h * w, generator=torch.Generator().manual_seed(1))
    Ap = A.flatten(2)[:, :, pp].reshape(A.shape)
    s_p = conceptor_fusion(Ap, W, competitor_data=[(Ap, W2)], **CFG)
    assert torch.allclose(s_p.flatten(2), s.flatten(2)[:, :, pp], atol=1e-9)  # F4 equivariance
    s_t = conceptor_fusion(2.5 * A, W, competitor_data=[(2.5 * A, W2)], **CFG)
    assert torch.allclose(s_t, 2.5 * s, atol=1e-9)  # F5 scale


@settings(max_examples=15, deadline=None, derandomize=True)
@given(activations(), st.sampled_from([1.0, 4.0, "auto", math.inf]))
def test_F6_layout_duality(data, aperture):
    A, W, _ = data
    # same data in both layouts (signed, no negatives): C_S m == (1^T C_C z_p)_p; the trace-
    # normalised correlations share their non-zero spectrum, so "auto" picks the same aperture
    kw = dict(negative_channels=False, aperture=aperture, positive_data="signed")
    spatial = conceptor_fusion(A, W, layout="spatial", **kw)
    channel = conceptor_fusion(A, W, layout="channel", **kw)
    assert torch.allclose(spatial, channel, atol=1e-8 * float(spatial.abs().max()) + 1e-12)


# --------------------------------------------------------------------------------------------
# competitor classes: the one-pass gradient path equals base.compute per class
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("base_cls", [LayerGradCam, LayerCam])
def test_one_pass_competitors_match_base_compute(base_cls):
    model, layer = _model("gap")
    x = _inputs("gap")
    cc = LayerConceptorCam(model, layer, base=base_cls, negatives="classes", k=2, aperture=4.0)
    got = cc.attribute(x)
    base = base_cls(model, layer)
    d0 = base.compute(x)[0]
    comp = d0.outputs.clone().scatter_(1, d0.target[:, None], -math.inf).topk(2, dim=1).indices
    comps = [
        (
            base.compute(x, target=comp[:, j])[0].activations,
            base.compute(x, target=comp[:, j])[0].weights,
        )
        for j in range(2)
    ]
    ref = conceptor_fusion(
        d0.activations,
        d0.weights,
        d0.cam,
        competitor_data=comps,
        negative_channels=False,
        aperture=4.0,
    )
    assert torch.allclose(got, ref, atol=1e-6)


def test_perturbation_base_with_competitors_runs_and_damps():
    model, layer = _model("gap")
    x = _inputs("gap", 2)
    base = LayerScoreCam(model, layer, batch_size=16)
    pos = LayerConceptorCam(model, base=base, negatives="none", aperture=4.0).compute_maps(x)[0]
    neg = LayerConceptorCam(model, base=base, negatives="classes", k=2, aperture=4.0).compute_maps(
        x
    )[0]
    m = base.compute(x)[0].cam.flatten(1)
    assert bool(((m * neg.flatten(1)).sum(1) <= (m * pos.flatten(1)).sum(1) + 1e-6).all())


# --------------------------------------------------------------------------------------------
# batching, model state, variants, errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aperture", ["auto", 5.0])
def test_batch_invariance(aperture):
    model, layer = _model("flat")
    x = _inputs("flat", 4)
    cc = LayerConceptorCam(
        model, layer, base=LayerXGradCam, aperture=aperture, negatives="both", k=2
    )
    full = cc.attribute(x, target=[0, 1, 2, 3])
    single = torch.cat([cc.attribute(x[i : i + 1], target=[i]) for i in range(4)])
    chunked = cc.attribute(x, target=[0, 1, 2, 3], internal_batch_size=3)
    assert torch.allclose(full, single, atol=1e-6) and torch.allclose(full, chunked, atol=1e-6)


def test_model_state_and_hooks_left_as_found(count_hooks):
    model, layer = _model("gap")
    model.conv1.weight.requires_grad_(False)
    before = count_hooks(model)
    LayerConceptorCam(model, layer, negatives="both", k=2).attribute(_inputs("gap"))
    assert count_hooks(model) == before and not model.training
    assert not model.conv1.weight.requires_grad and model.conv2.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "variant",
    [
        dict(aperture="auto"),
        dict(aperture=math.inf),
        dict(negatives="channels"),
        dict(combine="or_not"),
        dict(combine="sum"),
        dict(layout="channel"),
        dict(negative_aperture="auto"),
    ],
)
def test_variants_run(variant):
    model, layer = _model("gap")
    x = _inputs("gap", 2)
    out = LayerConceptorCam(model, layer, k=2, **variant).attribute(
        x, relu_attributions=True, upsample_to_input=True, normalize=True
    )
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out).all()
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_callable_target_needs_no_classes():
    model, layer = _model("gap")
    x = _inputs("gap", 2)

    def tgt(o):
        return o[:, 1]

    out = LayerConceptorCam(model, layer, negatives="channels").attribute(x, target=tgt)
    assert out.shape == (2, 1, 8, 8)
    # a callable selecting class 1 explains exactly what target=1 explains
    torch.testing.assert_close(out, LayerConceptorCam(model, layer, negatives="channels").attribute(x, target=1))
    contrast = LayerConceptorCam(model, layer, negatives="none", aperture=math.inf, positive_data="signed")
    base = LayerGradCam(model, layer)
    torch.testing.assert_close(  # the projector limit reduces to the base CAM, for callables too
        contrast.attribute(x, target=lambda o: o[:, 1] - o[:, 0]),
        base.attribute(x, target=lambda o: o[:, 1] - o[:, 0]),
        atol=1e-5,
        rtol=1e-4,
    )
    with pytest.raises(ValueError, match="class-index targets"):
        LayerConceptorCam(model, layer, negatives="classes").attribute(x, target=tgt)


class _NaNLayer(nn.Module):
    def forward(self, x):
        return x * torch.nan


def test_errors():
    model, layer = _model("gap")
    x = _inputs("gap", 2)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="aperture"):
            LayerConceptorCam(model, layer, aperture=bad)
    with pytest.raises(ValueError, match="aperture"):
        LayerConceptorCam(model, layer, aperture="big")
    with pytest.raises(ValueError, match="only 5"):
        LayerConceptorCam(model, layer, negatives="classes", k=5).attribute(x)
    with pytest.raises(ValueError, match="only 5"):
        LayerConceptorCam(model, layer, base=LayerScoreCam, negatives="both", k=7).attribute(x)
    for kw in (dict(negatives="all"), dict(combine="xor"), dict(layout="tokens"), dict(k=0)):
        with pytest.raises(ValueError):
            LayerConceptorCam(model, layer, **kw)
    with pytest.raises(TypeError, match="CamAttribution"):
        LayerConceptorCam(model, layer, base=nn.Linear)
    with pytest.raises(ValueError, match="layer is required"):
        LayerConceptorCam(model, base=LayerGradCam)
    other, _ = _model("flat")
    with pytest.raises(ValueError, match="forward_func"):
        LayerConceptorCam(model, base=LayerGradCam(other, other.relu))
    nan_model = nn.Sequential(
        nn.Conv2d(3, 4, 3), _NaNLayer(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    )
    with pytest.raises(ValueError, match="NaN"):
        LayerConceptorCam(nan_model, nan_model[1], negatives="channels").attribute(x)


@pytest.mark.parametrize("base_cls", ["LayerScoreCam", "LayerAblationCam"])
def test_perturbation_bases_score_competitors_from_the_same_passes(base_cls):
    """The shared-pass path equals one base.compute per competitor class, fused the same way."""
    import captum_cam_ext as cce

    torch.manual_seed(11)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).eval()  # fmt: skip
    x = torch.randn(3, 3, 8, 8)
    base = getattr(cce, base_cls)(model, model[3])
    cc = cce.LayerConceptorCam(model, base=base, negatives="both", k=2)
    got = cc.compute_maps(x, target=[0, 3, 1])[0]
    d = base.compute(x, target=[0, 3, 1])[0]
    comps = cc._competitors(d.outputs, d.target)
    alone = [base.compute(x, target=comps[:, j])[0] for j in range(2)]
    comp_data = [(c.activations, c.weights) for c in alone]
    expected = cc._fuse_all([(d.activations, d.weights, d.cam, comp_data)])[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
