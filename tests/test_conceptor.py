"""Property tests of the conceptor algebra (research note §1.4, laws L1-L11)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_cam_ext.conceptor import (
    adapt_aperture,
    auto_aperture,
    conceptor_from_correlation,
    conjunction,
    disjunction,
    negation,
    norm_gradient,
    quota,
    similarity,
)

D = torch.float64
ATOL = 1e-8
FAST = settings(max_examples=25, deadline=None, derandomize=True)


# --------------------------------------------------------------------------------------------
# generators
# --------------------------------------------------------------------------------------------
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def data_conceptor(n: int, rank: int, aperture: float, g: torch.Generator) -> torch.Tensor:
    """C(X X^T / r, aperture) with X of shape (n, rank): singular when rank < n."""
    if rank == 0:
        return torch.zeros(n, n, dtype=D)
    X = torch.randn(n, rank, generator=g, dtype=D)
    return conceptor_from_correlation(X @ X.T / rank, aperture)


def projector(n: int, rank: int, g: torch.Generator) -> torch.Tensor:
    if rank == 0:
        return torch.zeros(n, n, dtype=D)
    Q, _ = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=D))
    return Q @ Q.T


@st.composite
def conceptor_pair_like(draw, count: int = 2):
    """(n, [C_1..C_count]): data conceptors of random rank (often singular) or projectors."""
    n = draw(st.integers(2, 6))
    g = _gen(draw(st.integers(0, 2**31 - 1)))
    out = []
    for _ in range(count):
        kind = draw(st.sampled_from(["full", "singular", "projector"]))
        if kind == "projector":
            out.append(projector(n, draw(st.integers(0, n)), g))
        else:
            rank = n + 2 if kind == "full" else draw(st.integers(1, n - 1))
            out.append(data_conceptor(n, rank, draw(st.floats(0.3, 10.0)), g))
    return n, out


def close(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return bool(torch.allclose(a, b, atol=atol, rtol=0))


def loewner_leq(a: torch.Tensor, b: torch.Tensor, atol: float = ATOL) -> bool:
    return bool(torch.linalg.eigvalsh(b - a).min() >= -atol)


def eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=D)


# --------------------------------------------------------------------------------------------
# L1 symmetric, spectrum in [0, 1]
# --------------------------------------------------------------------------------------------
@FAST
@given(conceptor_pair_like(2))
def test_L1_symmetric_unit_spectrum_after_every_operation(case):
    n, (C, B) = case
    for M in (C, B, negation(C), conjunction(C, B), disjunction(C, B), adapt_aperture(C, 2.5)):
        assert close(M, M.T, 1e-12)
        ev = torch.linalg.eigvalsh(M)
        assert ev.min() >= -1e-9 and ev.max() <= 1 + 1e-9


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.floats(0.05, 50.0))
def test_L1_data_conceptor_spectrum_matches_closed_form(seed, n, a):
    X = torch.randn(n, n + 3, generator=_gen(seed), dtype=D)
    R = X @ X.T / (n + 3)
    C = conceptor_from_correlation(R, a)
    ref = R @ torch.linalg.inv(R + a**-2 * eye(n))
    assert close(C, ref, 1e-10)
    ev = torch.linalg.eigvalsh(C)
    assert ev.min() >= 0 and ev.max() < 1
    assert close(C @ R, R @ C, 1e-10)  # commutes with R


# --------------------------------------------------------------------------------------------
# L2-L5 Boolean laws
# --------------------------------------------------------------------------------------------
@FAST
@given(conceptor_pair_like(1))
def test_L2_double_negation(case):
    _, (C,) = case
    assert close(negation(negation(C)), C, 1e-14)


@FAST
@given(conceptor_pair_like(2))
def test_L3_de_morgan(case):
    _, (C, B) = case
    assert close(negation(disjunction(C, B)), conjunction(negation(C), negation(B)))
    assert close(negation(conjunction(C, B)), disjunction(negation(C), negation(B)))


@FAST
@given(conceptor_pair_like(3))
def test_L4_commutative_and_associative(case):
    _, (C, B, E) = case
    assert close(conjunction(C, B), conjunction(B, C))
    assert close(disjunction(C, B), disjunction(B, C))
    assert close(conjunction(conjunction(C, B), E), conjunction(C, conjunction(B, E)), 1e-7)
    assert close(disjunction(disjunction(C, B), E), disjunction(C, disjunction(B, E)), 1e-7)


@FAST
@given(conceptor_pair_like(1))
def test_L5_identities_with_I_and_0(case):
    n, (C,) = case
    Z = torch.zeros(n, n, dtype=D)
    assert close(conjunction(C, eye(n)), C)
    assert close(disjunction(C, Z), C)
    assert close(conjunction(C, Z), Z)
    assert close(disjunction(C, eye(n)), eye(n))


# --------------------------------------------------------------------------------------------
# L6 Loewner order, including the Conceptor-CAM combination C+ AND NOT C-
# --------------------------------------------------------------------------------------------
@FAST
@given(conceptor_pair_like(2))
def test_L6_loewner_order(case):
    _, (C, B) = case
    assert loewner_leq(conjunction(C, B), C)
    assert loewner_leq(C, disjunction(C, B))
    # F2: negative evidence only damps
    assert loewner_leq(conjunction(C, negation(B)), C)


# --------------------------------------------------------------------------------------------
# L7 general form equals the invertible formula; not the naive pinv formula when singular
# --------------------------------------------------------------------------------------------
@FAST
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.floats(0.3, 5.0), st.floats(0.3, 5.0))
def test_L7_invertible_formula(seed, n, a, b):
    g = _gen(seed)
    C, B = data_conceptor(n, n + 3, a, g), data_conceptor(n, n + 3, b, g)
    ref = torch.linalg.inv(torch.linalg.inv(C) + torch.linalg.inv(B) - eye(n))
    assert close(conjunction(C, B), ref, 1e-9)
    # closed form of OR (C, B, I-C, I-B invertible)
    inner = C @ torch.linalg.inv(eye(n) - C) + B @ torch.linalg.inv(eye(n) - B)
    ref_or = torch.linalg.inv(eye(n) + torch.linalg.inv(inner))
    assert close(disjunction(C, B), ref_or, 1e-8)


def test_L7_naive_pinv_formula_is_not_used_for_singular_inputs():
    g = _gen(3)
    n = 5
    C, B = data_conceptor(n, 3, 2.0, g), data_conceptor(n, 3, 2.0, g)
    naive = torch.linalg.pinv(torch.linalg.pinv(C) + torch.linalg.pinv(B) - eye(n))
    got = conjunction(C, B)
    # ranges of dim 3 in R^5 meet in a 1-dim subspace; the naive formula has a larger rank
    assert int(torch.linalg.matrix_rank(got, atol=1e-8)) == 1
    assert int(torch.linalg.matrix_rank(naive, atol=1e-8)) > 1
    assert not close(got, naive, 1e-3)


# --------------------------------------------------------------------------------------------
# L8 ranks: rank(C AND B) = dim(R(C) ∩ R(B)), rank(C OR B) = dim(R(C) + R(B))
# --------------------------------------------------------------------------------------------
@FAST
@given(
    st.integers(0, 2**31 - 1),
    st.integers(3, 7),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 3),
    st.floats(0.5, 5.0),
)
def test_L8_rank_of_and_or(seed, n, shared, extra_c, extra_b, a):
    g = _gen(seed)
    shared = min(shared, n)
    extra_c = min(extra_c, n - shared)
    extra_b = min(extra_b, n - shared - extra_c)  # generic: no accidental intersection
    S = torch.randn(n, shared, generator=g, dtype=D)
    Xc = torch.cat([S, torch.randn(n, extra_c, generator=g, dtype=D)], 1)
    Xb = torch.cat([S, torch.randn(n, extra_b, generator=g, dtype=D)], 1)
    C = conceptor_from_correlation(Xc @ Xc.T, a) if Xc.shape[1] else torch.zeros(n, n, dtype=D)
    B = conceptor_from_correlation(Xb @ Xb.T, a) if Xb.shape[1] else torch.zeros(n, n, dtype=D)
    assert int(torch.linalg.matrix_rank(conjunction(C, B), atol=1e-9)) == shared
    assert int(torch.linalg.matrix_rank(disjunction(C, B), atol=1e-9)) == shared + extra_c + extra_b


def test_L8_projectors_give_intersection_and_sum():
    e = eye(4)
    P1 = e[:, :2] @ e[:, :2].T  # span(e0, e1)
    P2 = e[:, 1:3] @ e[:, 1:3].T  # span(e1, e2)
    assert close(conjunction(P1, P2), e[:, 1:2] @ e[:, 1:2].T)
    assert close(disjunction(P1, P2), e[:, :3] @ e[:, :3].T)


# --------------------------------------------------------------------------------------------
# L9 aperture adaptation
# --------------------------------------------------------------------------------------------
@FAST
@given(conceptor_pair_like(2), st.floats(0.2, 5.0), st.floats(0.2, 5.0))
def test_L9_phi_identities(case, a, b):
    n, (C, B) = case
    assert close(adapt_aperture(adapt_aperture(C, a), b), adapt_aperture(C, a * b), 1e-9)
    assert close(adapt_aperture(C, 1.0), C, 1e-12)
    assert close(
        adapt_aperture(conjunction(C, B), a),
        conjunction(adapt_aperture(C, a), adapt_aperture(B, a)),
        1e-7,
    )
    assert close(
        adapt_aperture(disjunction(C, B), a),
        disjunction(adapt_aperture(C, a), adapt_aperture(B, a)),
        1e-7,
    )
    assert close(adapt_aperture(negation(C), a), negation(adapt_aperture(C, 1.0 / a)), 1e-9)
    assert close(disjunction(C, C), adapt_aperture(C, math.sqrt(2.0)), 1e-8)
    assert close(conjunction(C, C), adapt_aperture(C, 1 / math.sqrt(2.0)), 1e-8)


@FAST
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 6),
    st.integers(1, 6),
    st.floats(0.2, 5.0),
    st.floats(0.2, 5.0),
)
def test_L9_phi_of_data_conceptor_and_limits(seed, n, r, a, gam):
    g = _gen(seed)
    X = torch.randn(n, min(r, n), generator=g, dtype=D)
    R = X @ X.T
    assert close(
        adapt_aperture(conceptor_from_correlation(R, a), gam),
        conceptor_from_correlation(R, a * gam),
        1e-9,
    )
    # gamma = inf: projector onto range(R); same as aperture inf
    P = conceptor_from_correlation(R, math.inf)
    assert close(adapt_aperture(conceptor_from_correlation(R, a), math.inf), P, 1e-9)
    assert close(P @ P, P, 1e-9) and int(torch.linalg.matrix_rank(P)) == min(r, n)
    assert close(adapt_aperture(P, gam), P, 1e-9)  # projectors are fixed points
    # gamma = 0 keeps only eigenvalue-1 directions
    C = 0.5 * (P + negation(P)) + 0.5 * P  # eigenvalue 1 on range(P), 1/2 elsewhere
    assert close(adapt_aperture(C, 0.0), P, 1e-9)


# --------------------------------------------------------------------------------------------
# L10 scale <-> aperture, monotonicity; pooling semantics of OR
# --------------------------------------------------------------------------------------------
@FAST
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 6),
    st.integers(1, 8),
    st.floats(0.1, 10.0),
    st.floats(0.1, 10.0),
)
def test_L10_scale_and_monotonicity(seed, n, r, a, lam):
    X = torch.randn(n, r, generator=_gen(seed), dtype=D)
    R = X @ X.T / r
    assert close(
        conceptor_from_correlation(lam * R, a),
        conceptor_from_correlation(R, math.sqrt(lam) * a),
        1e-9,
    )
    assert loewner_leq(conceptor_from_correlation(R, a), conceptor_from_correlation(R, 1.5 * a))


@FAST
@given(
    st.integers(0, 2**31 - 1),
    st.integers(2, 6),
    st.integers(1, 8),
    st.integers(1, 8),
    st.floats(0.3, 5.0),
)
def test_or_pools_the_data_also_when_singular(seed, n, r1, r2, a):
    g = _gen(seed)
    X, Y = torch.randn(n, r1, generator=g, dtype=D), torch.randn(n, r2, generator=g, dtype=D)
    R, Q = X @ X.T / r1, Y @ Y.T / r2
    pooled = conceptor_from_correlation(R + Q, a)
    assert close(
        disjunction(conceptor_from_correlation(R, a), conceptor_from_correlation(Q, a)),
        pooled,
        1e-8,
    )


# --------------------------------------------------------------------------------------------
# L11 only for projectors
# --------------------------------------------------------------------------------------------
@FAST
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.integers(0, 6), st.integers(0, 6))
def test_L11_projector_laws(seed, n, r1, r2):
    g = _gen(seed)
    P, Q = projector(n, min(r1, n), g), projector(n, min(r2, n), g)
    assert close(conjunction(P, P), P)
    assert close(disjunction(P, conjunction(P, Q)), P, 1e-7)
    assert close(disjunction(P, negation(P)), eye(n))


def test_L11_fails_for_generic_conceptors():
    C = data_conceptor(4, 6, 1.0, _gen(0))
    assert not close(conjunction(C, C), C, 1e-3)
    assert not close(disjunction(C, negation(C)), eye(4), 1e-3)


# --------------------------------------------------------------------------------------------
# quota, similarity, auto aperture
# --------------------------------------------------------------------------------------------
@FAST
@given(conceptor_pair_like(2))
def test_quota_and_similarity(case):
    n, (C, B) = case
    assert close(quota(C), torch.trace(C) / n, 1e-14)
    assert close(quota(negation(C)), 1 - quota(C), 1e-12)
    sim = similarity(C, B)
    assert -1e-12 <= float(sim) <= 1 + 1e-12
    assert close(sim, similarity(B, C), 1e-14)
    # Jaeger's form ||S_C^1/2 U_C^T U_B S_B^1/2||_F^2 / (||s_C|| ||s_B||)
    sc, Uc = torch.linalg.eigh(C)
    sb, Ub = torch.linalg.eigh(B)
    sc, sb = sc.clamp_min(0), sb.clamp_min(0)
    if sc.norm() > 0 and sb.norm() > 0:
        M = torch.diag(sc.sqrt()) @ Uc.T @ Ub @ torch.diag(sb.sqrt())
        assert close(sim, M.pow(2).sum() / (sc.norm() * sb.norm()), 1e-10)
        assert close(similarity(C, C), torch.tensor(1.0, dtype=D), 1e-12)
    else:
        assert float(sim) == 0.0


@FAST
@given(st.integers(0, 2**31 - 1), st.integers(2, 6), st.integers(1, 8), st.floats(0.01, 100.0))
def test_auto_aperture_maximises_norm_gradient_and_is_scale_equivariant(seed, n, r, lam):
    X = torch.randn(n, r, generator=_gen(seed), dtype=D)
    R = X @ X.T / r
    a = auto_aperture(R)
    # brute force on a dense grid
    sigma = torch.linalg.eigvalsh(R).clamp_min(0)
    grid = torch.logspace(-4, 4, 40001, dtype=D)
    best = norm_gradient(sigma, grid).max()
    assert float(norm_gradient(sigma, a.reshape(1))[0]) >= float(best) * (1 - 1e-6)
    # d||C||^2/dlog a closed form against finite differences
    Cf = lambda al: conceptor_from_correlation(R, al).pow(2).sum()  # noqa: E731
    h = 1e-5
    fd = (Cf(float(a) * math.exp(h)) - Cf(float(a) * math.exp(-h))) / (2 * h)
    assert abs(float(fd) - float(norm_gradient(sigma, a.reshape(1))[0])) < 1e-5
    assert close(auto_aperture(lam * R), a / math.sqrt(lam), 1e-6 * float(a) / math.sqrt(lam))


def test_auto_aperture_of_zero_matrix_is_finite():
    assert float(auto_aperture(torch.zeros(2, 3, 3, dtype=D))[0]) == 1.0


# --------------------------------------------------------------------------------------------
# batching, dtypes, errors
# --------------------------------------------------------------------------------------------
def test_batched_operations_equal_per_item_and_broadcast():
    g = _gen(7)
    Cs = torch.stack([data_conceptor(5, r, 2.0, g) for r in (1, 3, 7, 2)]).reshape(2, 2, 5, 5)
    Bs = torch.stack([data_conceptor(5, r, 1.5, g) for r in (4, 2, 9, 5)]).reshape(2, 2, 5, 5)
    got = conjunction(Cs, Bs)
    for i in range(2):
        for j in range(2):
            assert close(got[i, j], conjunction(Cs[i, j], Bs[i, j]), 1e-12)
    assert close(disjunction(Cs, Bs[0, 0])[1, 1], disjunction(Cs[1, 1], Bs[0, 0]), 1e-12)
    gam = torch.tensor([[1.0, 2.0], [math.inf, 0.5]], dtype=D)
    ad = adapt_aperture(Cs, gam)
    assert close(ad[1, 0], adapt_aperture(Cs[1, 0], math.inf), 1e-12)
    assert close(ad[0, 1], adapt_aperture(Cs[0, 1], 2.0), 1e-12)
    assert quota(Cs).shape == (2, 2) and similarity(Cs, Bs).shape == (2, 2)
    assert auto_aperture(Cs).shape == (2, 2)


def test_float32_in_float32_out():
    X = torch.randn(4, 6, generator=_gen(1))
    C = conceptor_from_correlation(X @ X.T / 6, 2.0)
    assert C.dtype == torch.float32
    assert conjunction(C, negation(C)).dtype == torch.float32
    assert close(
        conjunction(C, negation(C)).double(), conjunction(C.double(), negation(C.double())), 1e-5
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_bad_aperture_raises(bad):
    with pytest.raises(ValueError, match="aperture|NaN"):
        conceptor_from_correlation(eye(3), bad)


def test_bad_gamma_raises():
    with pytest.raises(ValueError, match="gamma"):
        adapt_aperture(0.5 * eye(3), -1.0)


def test_input_errors():
    with pytest.raises(ValueError, match="square"):
        conceptor_from_correlation(torch.ones(3, 4, dtype=D), 1.0)
    with pytest.raises(ValueError, match="symmetric"):
        conceptor_from_correlation(torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=D), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        conceptor_from_correlation(torch.full((3, 3), float("nan"), dtype=D), 1.0)
    with pytest.raises(ValueError, match="positive semi-definite"):
        conceptor_from_correlation(-eye(3), 1.0)
    with pytest.raises(ValueError, match="not a conceptor"):
        conjunction(2 * eye(3), eye(3))
    with pytest.raises(ValueError, match="same size"):
        conjunction(eye(3), eye(2))
    with pytest.raises(TypeError):
        negation([[1.0]])  # type: ignore[arg-type]
