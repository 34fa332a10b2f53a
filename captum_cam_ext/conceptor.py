"""Conceptor algebra on batched symmetric matrices (Jaeger 2014).

A *conceptor* is a symmetric positive semi-definite matrix whose eigenvalues lie in ``[0, 1]``.
The conceptor of a correlation matrix ``R`` with aperture ``alpha`` is
``C(R, alpha) = R (R + alpha^-2 I)^-1``; conceptors are closed under aperture adaptation and the
Boolean operations NOT / AND / OR implemented here.

Every function accepts tensors of shape ``(..., N, N)`` (any number of batch dimensions, which
broadcast between the two arguments of the binary operations), works in float64 internally, uses
``torch.linalg.eigh`` on the whole batch at once and returns the floating dtype of its input(s).

Numerical conventions
---------------------
* Eigenvalues below ``rtol * max_eigenvalue`` are treated as exactly zero. This decides the range
  of a matrix, which matters for ``conjunction`` (range-intersection form) and for infinite
  apertures. ``rtol`` defaults to ``N * eps`` of the input dtype (as ``torch.linalg.matrix_rank``)
  for correlation matrices, and to ``max(N * eps, 1e-10)`` for conceptors, which are often
  results of earlier operations with round-off on their null space.
* ``conjunction`` is the general (possibly singular) form
  ``C AND B = V (V^T (C^+ + B^+ - I) V)^-1 V^T`` with ``V`` an orthonormal basis of
  ``range(C) ∩ range(B)``; it equals ``(C^-1 + B^-1 - I)^-1`` when both are invertible.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from captum_cam_ext import _linalg

__all__ = [
    "adapt_aperture",
    "auto_aperture",
    "conceptor_from_correlation",
    "conjunction",
    "disjunction",
    "negation",
    "norm_gradient",
    "quota",
    "similarity",
]

ApertureLike = Union[float, int, Tensor]


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _check_matrix(M: Tensor, name: str) -> Tensor:
    """Validate a batch of square, finite, symmetric matrices; return it symmetrised in float64."""
    if not isinstance(M, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (..., N, N), got {type(M)!r}")
    if M.dim() < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(
            f"{name} must be a batch of square matrices of shape (..., N, N), got shape "
            f"{tuple(M.shape)}"
        )
    if M.shape[-1] == 0:
        raise ValueError(f"{name} has N = 0; conceptors need at least one dimension")
    if M.is_complex():
        raise TypeError(f"{name} must be real, got dtype {M.dtype}")
    if not M.is_floating_point():
        M = M.to(torch.get_default_dtype())
    if not bool(torch.isfinite(M).all()):
        raise ValueError(
            f"{name} contains NaN or inf entries; check the activations/weights it was built from"
        )
    M64 = M.to(torch.float64)
    scale = M64.abs().amax(dim=(-2, -1)).clamp_min(1.0)
    asym = (M64 - M64.transpose(-1, -2)).abs().amax(dim=(-2, -1))
    tol = math.sqrt(torch.finfo(M.dtype).eps) * scale
    if bool((asym > tol).any()):
        raise ValueError(
            f"{name} must be symmetric (max |M - M^T| = {float(asym.max()):.3g}); build it as "
            "X @ X.T / n or symmetrise it with (M + M.mT) / 2"
        )
    return 0.5 * (M64 + M64.transpose(-1, -2))


def _out_dtype(*tensors: Tensor) -> torch.dtype:
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"expected a torch.Tensor of shape (..., N, N), got {type(t)!r}")
    dt = tensors[0].dtype if tensors[0].is_floating_point() else torch.get_default_dtype()
    for t in tensors[1:]:
        dt = torch.promote_types(dt, t.dtype if t.is_floating_point() else dt)
    return dt


def _default_rtol(n: int, dtype: torch.dtype) -> float:
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    return n * torch.finfo(dtype).eps


def _range_rtol(n: int, dtype: torch.dtype) -> float:
    """Threshold deciding the range of a *computed* conceptor (results of earlier operations
    carry round-off of a few eps on their null space, so ``N * eps`` is too tight)."""
    return max(_default_rtol(n, dtype), 1e-10)


def _as_aperture(aperture: ApertureLike, name: str, allow_zero: bool = False) -> Tensor:
    """Aperture as a float64 tensor (scalar or batch-shaped), validated."""
    if isinstance(aperture, bool) or not isinstance(aperture, (int, float, Tensor)):
        raise TypeError(f"{name} must be a positive number or a tensor, got {type(aperture)!r}")
    a = torch.as_tensor(aperture, dtype=torch.float64)
    if bool(torch.isnan(a).any()):
        raise ValueError(f"{name} must not be NaN")
    bad = (a < 0).any() if allow_zero else (a <= 0).any()
    if bool(bad):
        rng = "[0, inf]" if allow_zero else "(0, inf]"
        raise ValueError(
            f"{name} must lie in {rng} (got {a.flatten()[:4].tolist()}); the aperture scales the "
            "inverse noise level alpha^-2, use e.g. 1..50 or math.inf for the range projector"
        )
    return a


def _batched_param(a: Tensor, like: Tensor) -> Tensor:
    """Shape a scalar/batch-shaped parameter so it broadcasts against eigenvalues (..., N)."""
    return a.to(like.device).unsqueeze(-1)


def _eigh(M64: Tensor) -> Tuple[Tensor, Tensor]:
    return _linalg.eigh(M64)  # single-threaded on the CPU: far faster for small matrices


def _compose(U: Tensor, s: Tensor) -> Tensor:
    """U diag(s) U^T, symmetrised."""
    out = (U * s.unsqueeze(-2)) @ U.transpose(-1, -2)
    return 0.5 * (out + out.transpose(-1, -2))


def _conceptor_spectrum(C64: Tensor, name: str, dtype: torch.dtype) -> Tuple[Tensor, Tensor]:
    """Eigen-decompose a conceptor and check its eigenvalues are in [0, 1] (up to round-off)."""
    s, U = _eigh(C64)
    tol = 1e3 * math.sqrt(torch.finfo(dtype).eps) if dtype != torch.float64 else 1e-7
    if bool((s < -tol).any()) or bool((s > 1 + tol).any()):
        raise ValueError(
            f"{name} is not a conceptor: its eigenvalues must lie in [0, 1] but range over "
            f"[{float(s.min()):.4g}, {float(s.max()):.4g}]"
        )
    return s.clamp(0.0, 1.0), U


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------
def conceptor_from_correlation(
    R: Tensor, aperture: ApertureLike, rtol: Optional[float] = None
) -> Tensor:
    """Conceptor ``C(R, alpha) = R (R + alpha^-2 I)^-1`` of a correlation matrix.

    Parameters
    ----------
    R : Tensor, shape (..., N, N)
        Symmetric positive semi-definite correlation matrices (e.g. ``X X^T / n``).
    aperture : float or Tensor broadcastable to R.shape[:-2]
        ``alpha`` in ``(0, inf]``. ``math.inf`` gives the orthogonal projector onto ``range(R)``.
    rtol : float, optional
        Eigenvalues ``<= rtol * max_eigenvalue`` are treated as zero (default ``N * eps``).

    Returns
    -------
    Tensor, shape (..., N, N)
        The conceptor, same eigenvectors as ``R``, eigenvalues ``s = sigma / (sigma + alpha^-2)``.
    """
    dtype = _out_dtype(R)
    R64 = _check_matrix(R, "R")
    a = _as_aperture(aperture, "aperture")
    sigma, U = _eigh(R64)
    n = R64.shape[-1]
    smax = sigma.abs().amax(dim=-1, keepdim=True)
    if bool((sigma < -math.sqrt(torch.finfo(dtype).eps) * smax).any()):
        raise ValueError(
            "R must be positive semi-definite (found eigenvalue "
            f"{float(sigma.min()):.4g}); build it as X @ X.T / n"
        )
    thr = (rtol if rtol is not None else _default_rtol(n, dtype)) * smax
    sigma = torch.where(sigma > thr, sigma, torch.zeros_like(sigma))
    inv_a2 = _batched_param(a, sigma).pow(-2.0)  # 0 for alpha = inf
    denom = sigma + inv_a2
    s = torch.where(sigma > 0, sigma / torch.where(denom > 0, denom, 1.0), torch.zeros_like(sigma))
    return _compose(U, s).to(dtype)


def adapt_aperture(C: Tensor, gamma: ApertureLike, rtol: Optional[float] = None) -> Tensor:
    """Aperture adaptation ``phi(C, gamma) = C (C + gamma^-2 (I - C))^-1``.

    Computed per eigenvalue, ``s -> s / (s + gamma^-2 (1 - s))``, so that the limits are exact:
    ``gamma = inf`` maps every non-zero eigenvalue to 1 (projector onto ``range(C)``) and
    ``gamma = 0`` keeps only the eigenvalues equal to 1. ``phi(C(R, a), g) = C(R, a g)``.

    Parameters
    ----------
    C : Tensor, shape (..., N, N)
        Conceptors (symmetric, eigenvalues in [0, 1]).
    gamma : float or Tensor broadcastable to C.shape[:-2]
        Adaptation factor in ``[0, inf]`` (0 and inf are the continuity limits).
    rtol : float, optional
        For the limits only: eigenvalues ``<= rtol`` count as 0 (``gamma = inf``) and
        ``>= 1 - rtol`` as 1 (``gamma = 0``); default ``max(N * eps, 1e-10)``.

    Returns
    -------
    Tensor, shape (..., N, N)
    """
    dtype = _out_dtype(C)
    C64 = _check_matrix(C, "C")
    g = _as_aperture(gamma, "gamma", allow_zero=True)
    s, U = _conceptor_spectrum(C64, "C", dtype)
    tol = rtol if rtol is not None else _range_rtol(C64.shape[-1], dtype)
    gb = _batched_param(g, s)
    zero = torch.zeros_like(s)
    one = torch.ones_like(s)
    inv_g2 = torch.where(gb > 0, gb.pow(-2.0), torch.full_like(gb, math.inf)).clamp_max(1e300)
    finite = torch.where(s >= 1, one, torch.where(s <= 0, zero, s / (s + inv_g2 * (1 - s))))
    # the limits decide "zero" / "one" with a tolerance (computed conceptors carry round-off)
    s_inf = torch.where(s > tol, one, zero)
    s_zero = torch.where(s >= 1 - tol, one, zero)
    new = torch.where(torch.isinf(gb), s_inf, torch.where(gb == 0, s_zero, finite))
    return _compose(U, new).to(dtype)


# --------------------------------------------------------------------------------------------
# Boolean operations
# --------------------------------------------------------------------------------------------
def negation(C: Tensor) -> Tensor:
    """Boolean NOT: ``I - C``. Shape (..., N, N) -> (..., N, N)."""
    dtype = _out_dtype(C)
    C64 = _check_matrix(C, "C")
    eye = torch.eye(C64.shape[-1], dtype=torch.float64, device=C64.device)
    return (eye - C64).to(dtype)


def conjunction(C: Tensor, B: Tensor, rtol: Optional[float] = None) -> Tensor:
    """Boolean AND of conceptors, valid for singular matrices.

    ``C AND B = V (V^T (C^+ + B^+ - I) V)^-1 V^T`` where ``V`` is an orthonormal basis of
    ``range(C) ∩ range(B)`` (computed as the null space of ``P_N(C) + P_N(B)``, the sum of the
    projectors onto the two null spaces) and ``^+`` is the pseudo-inverse. It is 0 when the
    ranges intersect trivially, and ``(C^-1 + B^-1 - I)^-1`` when both are invertible.

    Parameters
    ----------
    C, B : Tensor, shape (..., N, N)
        Conceptors; batch dimensions broadcast.
    rtol : float, optional
        Eigenvalues ``<= rtol * max_eigenvalue`` count as zero when deciding the ranges (default
        ``max(N * eps, 1e-10)``).

    Returns
    -------
    Tensor, shape (broadcast(...), N, N)
    """
    dtype = _out_dtype(C, B)
    C64 = _check_matrix(C, "C")
    B64 = _check_matrix(B, "B")
    if C64.shape[-1] != B64.shape[-1]:
        raise ValueError(
            f"C and B must have the same size N, got {C64.shape[-1]} and {B64.shape[-1]}"
        )
    batch = torch.broadcast_shapes(C64.shape[:-2], B64.shape[:-2])
    n = C64.shape[-1]
    C64 = C64.expand(*batch, n, n)
    B64 = B64.expand(*batch, n, n)
    tol = rtol if rtol is not None else _range_rtol(n, dtype)

    sC, UC = _conceptor_spectrum(C64, "C", dtype)
    sB, UB = _conceptor_spectrum(B64, "B", dtype)
    nullC = sC <= tol * sC.amax(dim=-1, keepdim=True)
    nullB = sB <= tol * sB.amax(dim=-1, keepdim=True)
    zero = torch.zeros_like(sC)
    pinv_C = _compose(UC, torch.where(nullC, zero, 1.0 / torch.where(nullC, 1.0, sC)))
    pinv_B = _compose(UB, torch.where(nullB, zero, 1.0 / torch.where(nullB, 1.0, sB)))
    null_sum = _compose(UC, nullC.to(torch.float64)) + _compose(UB, nullB.to(torch.float64))
    mu, W = _eigh(null_sum)
    # mu = 1 - cos(principal angle) between the two ranges; ~0 on the intersection
    # (an error d in the null-space projectors moves mu by ~d^2, so a tolerance of 10 tol is ample)
    inter = mu <= 10.0 * tol
    eye = torch.eye(n, dtype=torch.float64, device=C64.device)
    T = W.transpose(-1, -2) @ (pinv_C + pinv_B - eye) @ W
    mask2 = inter.unsqueeze(-1) & inter.unsqueeze(-2)
    # restrict to the intersection block; put I on the complement so the batch inverts at once
    T_reg = torch.where(mask2, T, torch.zeros_like(T)) + torch.diag_embed((~inter).to(T.dtype))
    T_reg = 0.5 * (T_reg + T_reg.transpose(-1, -2))
    T_inv = torch.where(mask2, torch.linalg.inv(T_reg), torch.zeros_like(T))
    out = W @ T_inv @ W.transpose(-1, -2)
    return (0.5 * (out + out.transpose(-1, -2))).to(dtype)


def disjunction(C: Tensor, B: Tensor, rtol: Optional[float] = None) -> Tensor:
    """Boolean OR by De Morgan: ``C OR B = NOT(NOT C AND NOT B)``.

    Shapes as in :func:`conjunction`. For data conceptors of equal aperture it pools the data:
    ``C(R, a) OR C(Q, a) = C(R + Q, a)``.
    """
    return negation(conjunction(negation(C), negation(B), rtol=rtol))


# --------------------------------------------------------------------------------------------
# measures
# --------------------------------------------------------------------------------------------
def quota(C: Tensor) -> Tensor:
    """Quota ``trace(C) / N``, the fraction of the space claimed by C. Shape (...,)."""
    dtype = _out_dtype(C)
    C64 = _check_matrix(C, "C")
    return (torch.diagonal(C64, dim1=-2, dim2=-1).sum(-1) / C64.shape[-1]).to(dtype)


def similarity(C: Tensor, B: Tensor) -> Tensor:
    """Jaeger's conceptor similarity.

    ``sim(C, B) = ||S_C^1/2 U_C^T U_B S_B^1/2||_F^2 / (||diag S_C|| ||diag S_B||)``, which equals
    ``trace(C B) / (||C||_F ||B||_F)`` (the Frobenius cosine). In ``[0, 1]`` for conceptors; 1 iff
    ``B`` is a positive multiple of ``C``. Defined as 0 when either matrix is 0. Shape (...,).
    """
    dtype = _out_dtype(C, B)
    C64 = _check_matrix(C, "C")
    B64 = _check_matrix(B, "B")
    if C64.shape[-1] != B64.shape[-1]:
        raise ValueError(
            f"C and B must have the same size N, got {C64.shape[-1]} and {B64.shape[-1]}"
        )
    num = (C64 * B64).sum(dim=(-2, -1))  # trace(C B) for symmetric C, B
    den = torch.linalg.matrix_norm(C64) * torch.linalg.matrix_norm(B64)
    out = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), torch.zeros_like(num))
    return out.to(dtype)


def norm_gradient(sigma: Tensor, aperture: Tensor) -> Tensor:
    """Jaeger's norm-gradient ``d ||C(R, a)||_F^2 / d log a = 4 sum_i s_i^2 (1 - s_i)``.

    Parameters
    ----------
    sigma : Tensor, shape (..., N)
        Eigenvalues of ``R`` (non-negative).
    aperture : Tensor, shape (..., G)
        Apertures at which to evaluate (finite, > 0).

    Returns
    -------
    Tensor, shape (..., G)
    """
    log_s = torch.log(sigma.clamp_min(0.0)).unsqueeze(-2)  # (..., 1, N), -inf for sigma = 0
    s = torch.sigmoid(log_s + 2.0 * torch.log(aperture).unsqueeze(-1))  # s = sig a^2/(sig a^2+1)
    return 4.0 * (s.pow(2) * (1.0 - s)).sum(-1)


def auto_aperture(R: Tensor, grid_size: int = 129, rtol: Optional[float] = None) -> Tensor:
    """Aperture maximising Jaeger's norm-gradient criterion, per matrix of the batch.

    ``alpha* = argmax_alpha d ||C(R, alpha)||_F^2 / d log alpha``: the aperture at which the
    conceptor is most sensitive to aperture changes. The search runs on a log grid that spans all
    transitions of the spectrum (``alpha`` from ``0.05 / sqrt(sigma_max)`` to
    ``20 / sqrt(sigma_min_nonzero)``), then on a finer grid around the best point, then a
    parabolic refinement. Scale-equivariant: ``auto_aperture(t R) = auto_aperture(R) / sqrt(t)``.

    Parameters
    ----------
    R : Tensor, shape (..., N, N)
        Symmetric PSD correlation matrices.
    grid_size : int
        Points of each of the two search grids.
    rtol : float, optional
        Relative threshold below which eigenvalues count as zero.

    Returns
    -------
    Tensor, shape (...,)
        The apertures (float64 if R is float64, else R's dtype). For ``R = 0`` (criterion
        identically 0) the value 1.0 is returned.
    """
    if grid_size < 5:
        raise ValueError(f"grid_size must be >= 5, got {grid_size}")
    dtype = _out_dtype(R)
    R64 = _check_matrix(R, "R")
    with _linalg.single_threaded(R64.device):
        sigma = torch.linalg.eigvalsh(R64)
    smax = sigma.abs().amax(dim=-1, keepdim=True)
    thr = (rtol if rtol is not None else _default_rtol(R64.shape[-1], dtype)) * smax
    sigma = torch.where(sigma > thr, sigma, torch.zeros_like(sigma))
    zero_mat = smax.squeeze(-1) <= 0
    pos_min = torch.where(sigma > 0, sigma, torch.full_like(sigma, math.inf)).amin(-1)
    top = sigma.amax(-1)
    top = torch.where(zero_mat, torch.ones_like(top), top)
    pos_min = torch.where(zero_mat, torch.ones_like(pos_min), pos_min)
    lo = -0.5 * torch.log(top) + math.log(0.05)  # log alpha
    hi = -0.5 * torch.log(pos_min) + math.log(20.0)
    t = torch.linspace(0.0, 1.0, grid_size, dtype=torch.float64, device=R64.device)

    def search(lo_: Tensor, hi_: Tensor) -> Tuple[Tensor, Tensor]:
        u = lo_.unsqueeze(-1) + (hi_ - lo_).unsqueeze(-1) * t  # (..., G)
        grad = norm_gradient(sigma, torch.exp(u))
        return u, grad

    u, grad = search(lo, hi)
    idx = grad.argmax(-1, keepdim=True)
    step = (hi - lo) / (grid_size - 1)
    centre = u.gather(-1, idx).squeeze(-1)
    u, grad = search(centre - step, centre + step)  # zoom in
    idx = grad.argmax(-1, keepdim=True).clamp(1, grid_size - 2)
    g0 = grad.gather(-1, idx - 1).squeeze(-1)
    g1 = grad.gather(-1, idx).squeeze(-1)
    g2 = grad.gather(-1, idx + 1).squeeze(-1)
    h = 2.0 * step / (grid_size - 1)
    curv = g0 - 2.0 * g1 + g2
    shift = torch.where(curv < 0, 0.5 * h * (g0 - g2) / torch.where(curv < 0, curv, -1.0), 0.0)
    best = u.gather(-1, idx).squeeze(-1) + shift.clamp(-h, h)
    out = torch.where(zero_mat, torch.ones_like(best), torch.exp(best))
    return out.to(dtype)
