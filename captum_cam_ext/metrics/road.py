"""ROAD: Remove And Debias (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022).

Pixels are removed in the order of the map and *imputed* from their neighbours instead of being
set to a constant, so that the removed region's shape leaks little information to the model.

Definition, for an example with map ``m`` (upsampled to the input size), clean target score
``s`` and a percentile ``p`` (default 10, 20, ..., 90):

* **MoRF** (most relevant first) removes the pixels with ``m >= q_p`` where ``q_p`` is the
  ``p``-th percentile of ``m`` (linear interpolation, as ``numpy.percentile``): about ``100 - p``
  percent of the image, the most salient part. Lower is better.
* **LeRF** (least relevant first) removes the pixels with ``1 - m >= `` the ``p``-th percentile of
  ``1 - m``, i.e. those at or below the ``(100 - p)``-th percentile of ``m``. Higher is better.
* The value per order is the change of the target score, ``score(imputed) - s``, averaged over
  the percentiles; ``combined = (LeRF - MoRF) / 2`` (higher is better).

**Noisy linear imputation.** Each removed pixel takes the weighted mean of its 8 neighbours
(weights 1/6 for the 4 edge neighbours and 1/12 for the 4 diagonal ones; neighbours outside the
image are left out and the weights renormalised), where removed neighbours are themselves
unknowns: one sparse, symmetric positive-definite linear system per mask, shared by all
channels. Gaussian noise of standard deviation ``noise`` is added to the imputed pixels.

**Solvers.** ``"direct"`` builds the systems of a whole chunk of masks as one block-diagonal sparse
matrix (vectorised) and solves it once with SciPy's sparse LU; ``"cg"`` runs a batched
conjugate-gradient solve of all masks and channels at once on the tensor's device (3x3
convolutions, Jacobi preconditioner, started from a pull-push interpolation), to ``tol``.
``"auto"`` (default) takes ``"direct"`` on the CPU when SciPy is installed, else ``"cg"``.

**Ties and constant maps (a defined result).** With ``ties="threshold"`` (the definition above and
the reference implementations) every pixel tied with the threshold is removed, so a map with many
equal values (a ReLU'd CAM with a large zero region, or a constant map) removes more than the
nominal share; when a mask removes *every* pixel there is nothing to impute from, and the imputed
image is all zeros (plus noise), as in the reference code. A constant map therefore removes
everything at every percentile in both orders: ``MoRF == LeRF`` and ``combined == 0`` exactly
("no ranking, no information"). With ``ties="rank"`` exactly the nominal number of pixels,
``P - ceil(p / 100 * (P - 1))``, is removed, ties broken by a seeded random order: identical to
``"threshold"`` on maps without ties, and a constant map is scored like a random ranking.

Parity: with ``noise=0``, ``probability_fn=None`` and ``ties="threshold"`` the values equal
``pytorch_grad_cam.metrics.road``'s ``ROADMostRelevantFirstAverage`` /
``ROADLeastRelevantFirstAverage`` / ``ROADCombined`` (built with ``NoisyLinearImputer(noise=0)``)
to 1e-4 (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_cam_ext._maps import upsample_maps
from captum_cam_ext.metrics._common import (
    ProbabilityFn,
    TargetType,
    check_batch_size,
    check_inputs,
    check_maps_or_method,
    check_positive_int,
    format_args,
    forward,
    index_args,
    iter_chunks,
    target_scores,
    to_probabilities,
)
from captum_cam_ext.metrics.registry import register_metric

__all__ = ["ROAD_ORDERS", "RoadResult", "impute_linear", "road", "road_masks"]

#: Values of ``order``.
ROAD_ORDERS: Tuple[str, ...] = ("morf", "lerf", "combined")
_TIES = ("threshold", "rank")
_SOLVERS = ("auto", "direct", "cg")

# 3x3 neighbour weights: 1/6 for edge neighbours, 1/12 for diagonal ones (sum 1)
_W_EDGE, _W_DIAG = 1.0 / 6.0, 1.0 / 12.0
_OFFSETS = ((-1, -1, _W_DIAG), (-1, 0, _W_EDGE), (-1, 1, _W_DIAG), (0, -1, _W_EDGE),
            (0, 1, _W_EDGE), (1, -1, _W_DIAG), (1, 0, _W_EDGE), (1, 1, _W_DIAG))  # fmt: skip


@dataclass
class RoadResult:
    """ROAD values per example, and the per-percentile score changes behind them.

    Attributes
    ----------
    morf, lerf, combined : Tensor (N,)
        Mean score change over the percentiles for MoRF (lower is better) and LeRF (higher is
        better), and ``(lerf - morf) / 2`` (higher is better). An order that was not computed
        (``order="morf"`` or ``"lerf"``) is NaN, and so is ``combined``.
    morf_curve, lerf_curve : Tensor (N, K)
        Score change at each percentile (NaN when not computed).
    morf_removed, lerf_removed : Tensor (N, K)
        Fraction of pixels removed at each percentile (more than nominal where the map has ties
        and ``ties="threshold"``).
    percentiles : Tensor (K,)
    scores : Tensor (N,)
        Target score on the clean input.
    target : Tensor (N,) or None
        Class index per example (None for a callable target).
    """

    morf: Tensor
    lerf: Tensor
    combined: Tensor
    morf_curve: Tensor
    lerf_curve: Tensor
    morf_removed: Tensor
    lerf_removed: Tensor
    percentiles: Tensor
    scores: Tensor
    target: Optional[Tensor]

    def value(self, order: str) -> Tensor:
        """``morf``, ``lerf`` or ``combined`` by name."""
        if order not in ROAD_ORDERS:
            raise ValueError(f"order must be one of {ROAD_ORDERS}, got {order!r}")
        return cast(Tensor, getattr(self, order))


def _check_percentiles(percentiles: Sequence[float]) -> Tensor:
    try:
        p = torch.as_tensor(list(percentiles), dtype=torch.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"percentiles must be a sequence of numbers, got {percentiles!r}") from exc
    if p.dim() != 1 or p.numel() == 0:
        raise ValueError("percentiles must be a non-empty sequence of numbers, e.g. (10, 20, ..., 90)")
    bad = [float(v) for v in p if not 0 < float(v) < 100]
    if bad:
        raise ValueError(f"percentiles must lie strictly between 0 and 100, got {bad}")
    return p


def road_masks(
    maps: Tensor,
    percentiles: Sequence[float],
    order: str,
    *,
    ties: str = "threshold",
    seed: int = 0,
    indices: Optional[Sequence[int]] = None,
) -> Tensor:
    """Boolean *removed* masks ``(N, K, H, W)`` for maps ``(N, 1, H, W)`` at input resolution.

    ``order`` is ``"morf"`` or ``"lerf"``; see the module docstring for the definitions and
    ``ties``. With ``ties="rank"`` example ``i`` breaks its ties with a generator seeded by
    ``(seed, indices[i])`` (default ``indices = 0..N-1``), whatever the batching.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be 'morf' or 'lerf' here, got {order!r}")
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    pct = _check_percentiles(percentiles)
    n, _, h, w = maps.shape
    num = h * w
    flat = maps.reshape(n, num)
    score = flat if order == "morf" else 1 - flat  # high score = removed first
    if ties == "threshold":
        # numpy's percentile (linear interpolation, in the maps' dtype), as the reference code: the
        # same thresholds to the last bit, so that the same pixels tie with them
        q = np.percentile(score.detach().cpu().numpy(), pct.numpy(), axis=1)  # (K, N)
        thr = torch.from_numpy(np.ascontiguousarray(q.T)).to(score.device, score.dtype)
        removed = score[:, None, :] >= thr[:, :, None]
        return removed.view(n, len(pct), h, w)
    # rank: exactly the nominal count, ties in a seeded random order
    idx = list(indices) if indices is not None else list(range(n))
    if len(idx) != n:
        raise ValueError(f"indices has {len(idx)} entries for {n} maps")
    perm = torch.stack([torch.randperm(num, generator=_example_generator(seed, i, 0)) for i in idx]).to(score.device)
    order_idx = perm.gather(1, torch.argsort(score.gather(1, perm), dim=1, stable=True))  # ties: random
    ranks = torch.empty_like(order_idx)
    ranks.scatter_(1, order_idx, torch.arange(num, device=score.device).expand(n, -1))  # ascending rank
    kept = torch.ceil(pct / 100 * (num - 1)).long().to(score.device)  # pixels below the percentile
    removed = ranks[:, None, :] >= kept[None, :, None]
    return removed.view(n, len(pct), h, w)


def _example_generator(seed: int, index: int, stream: int) -> torch.Generator:
    """A CPU generator for one example (and one use), independent of batching."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index) * 7 + stream) % (2**63 - 1))


# --------------------------------------------------------------------------------------------
# noisy linear imputation
# --------------------------------------------------------------------------------------------


def _solve_direct(x: Tensor, removed: Tensor, banded_max: int = 128) -> Tensor:
    """Imputed values for ``removed`` pixels of images ``x`` (M, C, H, W): one sparse solve per chunk.

    The systems of all masks form one block-diagonal SPD matrix. With the unknowns in raster order
    (along the shorter image side) its half-bandwidth is at most ``min(H, W) + 1``, so for small
    images one banded Cholesky solve (LAPACK ``pbsv``, cost ~ unknowns x bandwidth^2) does the whole
    chunk; above ``banded_max`` the sparse LU of SuperLU (better fill-in on large grids) is used.
    """
    try:
        from scipy.linalg import solveh_banded
        from scipy.sparse import csc_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError as exc:  # pragma: no cover - scipy ships with the test extras
        raise ImportError("solver='direct' needs scipy (pip install scipy); or pass solver='cg'") from exc
    transpose = x.shape[-1] > x.shape[-2]
    if transpose:  # raster order along the shorter side: smaller bandwidth
        x, removed = x.transpose(-1, -2), removed.transpose(-1, -2)
    m, c, h, w = x.shape
    num = h * w
    rem = removed.reshape(m, num).cpu().numpy().copy()
    xs = x.detach().reshape(m, c, num).double().cpu().numpy()
    # a mask that removes every pixel has no known pixel to start from: its imputation is defined
    # as 0 (the reference code's result for that singular system); it is left out of the system
    full = rem.all(axis=1)
    xs[full] = 0.0
    rem[full] = False
    ex, pix = np.nonzero(rem)  # unknowns, ordered by (mask, pixel)
    nu = ex.size
    if nu > 0:
        vid = np.full((m, num), -1, dtype=np.int64)
        vid[ex, pix] = np.arange(nu)
        row_i, col_j = pix // w, pix % w
        diag = np.zeros(nu)
        rhs = np.zeros((nu, c))
        rows: List[Any] = []
        cols: List[Any] = []
        vals: List[Any] = []
        for di, dj, wt in _OFFSETS:
            ni, nj = row_i + di, col_j + dj
            ok = (ni >= 0) & (ni < h) & (nj >= 0) & (nj < w)
            diag[ok] += wt
            src = np.nonzero(ok)[0]
            npix = ni[ok] * w + nj[ok]
            nvid = vid[ex[ok], npix]
            unknown = nvid >= 0
            rows.append(src[unknown])
            cols.append(nvid[unknown])
            vals.append(np.full(int(unknown.sum()), -wt))
            np.add.at(rhs, src[~unknown], wt * xs[ex[ok][~unknown], :, npix[~unknown]])
        r, cc, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
        if w + 1 <= banded_max:
            upper = cc > r  # symmetric: the upper triangle and the diagonal suffice
            band = int((cc[upper] - r[upper]).max()) if upper.any() else 0
            ab = np.zeros((band + 1, nu))
            ab[band] = diag
            ab[band + r[upper] - cc[upper], cc[upper]] = v[upper]
            sol = solveh_banded(ab, rhs, check_finite=False)
        else:
            a = csc_matrix((np.concatenate([diag, v]), (np.concatenate([np.arange(nu), r]),
                                                         np.concatenate([np.arange(nu), cc]))), shape=(nu, nu))
            sol = spsolve(a, rhs)
        xs[ex, :, pix] = np.asarray(sol).reshape(nu, c)
    out = torch.from_numpy(xs).to(x.device, x.dtype).view(m, c, h, w)
    return out.transpose(-1, -2) if transpose else out


def _neighbour_kernel(device: torch.device, dtype: torch.dtype) -> Tensor:
    k = torch.zeros(3, 3, dtype=dtype, device=device)
    for di, dj, wt in _OFFSETS:
        k[di + 1, dj + 1] = wt
    return k.view(1, 1, 3, 3)


def _pull_push(x: Tensor, known: Tensor) -> Tensor:
    """A smooth fill of the unknown pixels from a pyramid of known-pixel averages (CG's start)."""
    vals, wts = x * known, known
    levels: List[Tuple[Tensor, Tensor]] = [(vals, wts)]
    while min(vals.shape[-2:]) > 1:
        vals = F.avg_pool2d(vals, 2, ceil_mode=True)
        wts = F.avg_pool2d(wts, 2, ceil_mode=True)
        levels.append((vals, wts))
    v, wt = levels[-1]
    fill = torch.where(wt > 0, v / wt.clamp_min(1e-12), torch.zeros_like(v))
    for v, wt in reversed(levels[:-1]):
        up = F.interpolate(fill, size=v.shape[-2:], mode="bilinear", align_corners=False)
        own = torch.where(wt > 0, v / wt.clamp_min(1e-12), up)
        fill = torch.where(wt >= 0.999, own, torch.where(wt > 0, wt * own + (1 - wt) * up, up))
    return fill


def _solve_cg(x: Tensor, removed: Tensor, tol: float, max_iter: int) -> Tensor:
    """Batched preconditioned conjugate gradients for all masks and channels at once."""
    m, c, h, w = x.shape
    work = torch.float64 if x.device.type == "cpu" else torch.float32
    u = removed.to(work).view(m, 1, h, w).expand(m, c, h, w).reshape(m * c, 1, h, w)
    xs = x.detach().to(work).reshape(m * c, 1, h, w)
    kern = _neighbour_kernel(x.device, work)
    diag = F.conv2d(torch.ones(1, 1, h, w, dtype=work, device=x.device), kern, padding=1)
    known = 1 - u

    def apply(v: Tensor) -> Tensor:
        return u * (diag * v - F.conv2d(v, kern, padding=1))

    b = u * F.conv2d(xs * known, kern, padding=1)
    v = u * _pull_push(xs, known)
    r = b - apply(v)
    inv_d = u / diag
    z = inv_d * r
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3), keepdim=True)
    b_norm = b.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-30)
    for _ in range(max_iter):
        ap = apply(p)
        pap = (p * ap).sum(dim=(1, 2, 3), keepdim=True)
        alpha = torch.where(pap > 0, rz / pap.clamp_min(1e-300), torch.zeros_like(pap))
        v = v + alpha * p
        r = r - alpha * ap
        if bool((r.pow(2).sum(dim=(1, 2, 3), keepdim=True).sqrt() <= tol * b_norm).all()):
            break
        z = inv_d * r
        rz_new = (r * z).sum(dim=(1, 2, 3), keepdim=True)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-300), torch.zeros_like(rz))
        p = z + beta * p
        rz = rz_new
    # masks that remove every pixel: no known pixel, the imputation is 0 (as the reference code)
    all_removed = u.flatten(1).min(dim=1).values > 0.5
    v = torch.where(all_removed.view(-1, 1, 1, 1), torch.zeros_like(v), v)
    out = torch.where(u > 0.5, v, xs)
    return out.view(m, c, h, w).to(x.dtype)


def impute_linear(
    x: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.0,
    generator: Optional[torch.Generator] = None,
    noise_generators: Optional[Sequence[torch.Generator]] = None,
    solver: str = "auto",
    tol: float = 1e-7,
    max_iter: int = 2000,
) -> Tensor:
    """Noisy linear imputation of the ``removed`` pixels of ``x``.

    Parameters
    ----------
    x : Tensor (M, C, H, W)
        Images.
    removed : bool Tensor (M, H, W) or (M, 1, H, W)
        Pixels to impute (all channels).
    noise : float
        Standard deviation of the Gaussian noise added to the imputed pixels.
    generator : torch.Generator, optional
        For the noise (CPU generator; the noise is drawn on the CPU and moved).
    noise_generators : sequence of torch.Generator, optional
        One CPU generator per image instead (so that an image's noise does not depend on the
        other images of the call).
    solver : {"auto", "direct", "cg"}
        See the module docstring.
    tol, max_iter
        Relative residual and iteration cap of ``"cg"``.

    Returns
    -------
    Tensor (M, C, H, W)
        ``x`` with the removed pixels replaced.
    """
    if x.dim() != 4:
        raise ValueError(f"x must be (M, C, H, W), got {tuple(x.shape)}")
    rem = removed.reshape(x.shape[0], x.shape[-2], x.shape[-1]).bool()
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    if solver == "auto":
        solver = "direct" if x.device.type == "cpu" and _has_scipy() else "cg"
    out = _solve_direct(x, rem) if solver == "direct" else _solve_cg(x, rem, tol, max_iter)
    if noise:
        if noise_generators is not None:
            if len(noise_generators) != x.shape[0]:
                raise ValueError(f"noise_generators has {len(noise_generators)} entries for {x.shape[0]} images")
            eps = torch.stack([torch.randn(out.shape[1:], generator=g) for g in noise_generators])
        else:
            eps = torch.randn(out.shape, generator=generator, dtype=torch.float32)
        out = torch.where(rem[:, None], out + float(noise) * eps.to(out.device, out.dtype), out)
    return out


def _has_scipy() -> bool:
    try:
        import scipy.sparse.linalg  # noqa: F401
    except ImportError:  # pragma: no cover
        return False
    return True


# --------------------------------------------------------------------------------------------
# the metric
# --------------------------------------------------------------------------------------------


def road(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    *,
    attribution_method: Any = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    order: str = "combined",
    noise: float = 0.01,
    probability_fn: ProbabilityFn = "softmax",
    ties: str = "threshold",
    seed: int = 0,
    example_indices: Optional[Sequence[int]] = None,
    solver: str = "auto",
    tol: float = 1e-7,
    max_iter: int = 2000,
    max_examples_per_batch: Optional[int] = None,
    max_forwards_per_batch: int = 64,
    interpolate_mode: str = "bilinear",
    channel_reduction: Optional[str] = None,
    return_curves: bool = False,
) -> Union[Tensor, RoadResult]:
    """ROAD score change per example (MoRF, LeRF or combined); see the module docstring.

    Parameters
    ----------
    forward_func : callable
        The model, ``forward_func(inputs, *additional_forward_args) -> (N, num_classes)``. Not
        switched to eval mode; pass an eval-mode model.
    inputs : Tensor (N, C, H, W)
        The (preprocessed) model inputs; removed pixels are imputed in this space.
    attributions : Tensor (N, 1, h, w), optional
        Saliency maps, bilinearly upsampled to (H, W) to rank the pixels (not normalised: the
        ranking is what matters). Exactly one of ``attributions`` and ``attribution_method``.
    attribution_method : object with ``.attribute(inputs, target=..., **kwargs)``, optional
        Computes the maps per chunk of examples (receives the resolved class indices).
    attribute_kwargs : dict, optional
        Extra keyword arguments for ``attribution_method.attribute``.
    target : None, int, sequence of int, LongTensor (N,) or callable
        ``None`` = class predicted on the clean input.
    additional_forward_args : any, optional
        Extra model arguments; tensors with first dimension N follow their example.
    percentiles : sequence of float
        Percentiles ``p`` in (0, 100); MoRF at ``p`` removes about ``100 - p`` percent.
    order : {"morf", "lerf", "combined"}
        Which value to return (``combined`` computes both orders).
    noise : float
        Standard deviation of the imputation noise (0.01 as in the paper; 0 for the
        deterministic imputation).
    probability_fn : "softmax" (default), "sigmoid", "identity"/None or callable
        The score is this function of the model outputs (None: raw outputs).
    ties : {"threshold", "rank"}
        Threshold semantics of the definition (default) or exact nominal counts with seeded random
        tie-breaking; see the module docstring.
    seed : int
        Seed of the noise and of the tie-breaking (results are reproducible).
    example_indices : sequence of int, optional
        Identifiers of the examples (e.g. dataset indices; default ``0..N-1``): example ``i``'s
        noise and tie-breaking come from a generator seeded with ``(seed, example_indices[i])``,
        so an example gets the same values whatever batch or process it is evaluated in.
    solver : {"auto", "direct", "cg"}
        Linear-system solver (module docstring).
    tol, max_iter
        Conjugate-gradient settings.
    max_examples_per_batch : int, optional
        Examples whose maps are prepared at once (None = all).
    max_forwards_per_batch : int
        Imputed images per linear solve and forward pass (default 64).
    interpolate_mode : str
        Upsampling mode for the maps.
    channel_reduction : {"sum", "mean", "abs_sum"} or None
        Reduction for multi-channel attributions.
    return_curves : bool
        Return a :class:`RoadResult` instead of the ``order`` values.

    Returns
    -------
    Tensor (N,) or RoadResult

    Raises
    ------
    ValueError
        Percentiles outside (0, 100), empty batch, map/input shape mismatch, NaN/Inf maps, an
        unknown ``order`` / ``ties`` / ``solver``.
    """
    x_all = check_inputs(inputs)
    n, _, h, w = x_all.shape
    maps_all = check_maps_or_method(attributions, attribution_method, n, channel_reduction)
    pct = _check_percentiles(percentiles)
    if order not in ROAD_ORDERS:
        raise ValueError(f"order must be one of {ROAD_ORDERS}, got {order!r}")
    if ties not in _TIES:
        raise ValueError(f"ties must be one of {_TIES}, got {ties!r}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}, got {solver!r}")
    if not isinstance(noise, (int, float)) or isinstance(noise, bool) or not math.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    check_positive_int(max_forwards_per_batch, "max_forwards_per_batch")
    bs = check_batch_size(max_examples_per_batch, n)
    ids = [int(i) for i in example_indices] if example_indices is not None else list(range(n))
    if len(ids) != n:
        raise ValueError(f"example_indices has {len(ids)} entries for {n} examples")
    orders = ("morf", "lerf") if order == "combined" else (order,)
    k = len(pct)

    curves = {o: torch.full((n, k), math.nan) for o in ("morf", "lerf")}
    removed_frac = {o: torch.full((n, k), math.nan) for o in ("morf", "lerf")}
    scores_list: List[Tensor] = []
    tgts: List[Tensor] = []
    callable_target = callable(target) and not isinstance(target, Tensor)
    chunks = iter_chunks(
        forward_func, x_all, maps_all, attribution_method, attribute_kwargs, target,
        format_args(additional_forward_args), bs, channel_reduction,
    )  # fmt: skip
    for ch in chunks:
        with torch.no_grad():
            sal = upsample_maps(ch.maps, (h, w), interpolate_mode)
            before = target_scores(to_probabilities(ch.outputs, probability_fn), ch.target).float()
            for o in orders:
                index = ids[ch.start : ch.stop]
                masks = road_masks(sal, pct.tolist(), o, ties=ties, seed=seed, indices=index)  # (b, K, H, W)
                removed_frac[o][ch.start : ch.stop] = masks.flatten(2).float().mean(2).cpu()
                after = _scores_after_imputation(
                    forward_func, ch.x, ch.args, ch.target, masks, probability_fn, noise, solver, tol, max_iter,
                    max_forwards_per_batch, [(seed, i, 1 + ROAD_ORDERS.index(o)) for i in index],
                )  # fmt: skip
                curves[o][ch.start : ch.stop] = (after - before[:, None]).cpu()
        scores_list.append(before.cpu())
        if isinstance(ch.target, Tensor):
            tgts.append(ch.target.detach().cpu())

    morf = curves["morf"].mean(1)
    lerf = curves["lerf"].mean(1)
    result = RoadResult(
        morf=morf,
        lerf=lerf,
        combined=(lerf - morf) / 2,
        morf_curve=curves["morf"],
        lerf_curve=curves["lerf"],
        morf_removed=removed_frac["morf"],
        lerf_removed=removed_frac["lerf"],
        percentiles=pct.float(),
        scores=torch.cat(scores_list),
        target=None if callable_target else torch.cat(tgts),
    )
    return result if return_curves else result.value(order)


def _scores_after_imputation(
    forward_func: Callable[..., Tensor],
    x: Tensor,
    args: Optional[Tuple[Any, ...]],
    target: Union[Tensor, Callable[[Tensor], Tensor]],
    masks: Tensor,
    probability_fn: ProbabilityFn,
    noise: float,
    solver: str,
    tol: float,
    max_iter: int,
    chunk: int,
    noise_keys: Sequence[Tuple[int, int, int]],
) -> Tensor:
    """Target scores ``(b, K)`` on the imputed images of every (example, percentile) mask.

    The noise of example ``e`` comes from one generator per (seed, example index, order), drawn
    percentile after percentile: it does not depend on how the work is chunked.
    """
    b, k, h, w = masks.shape
    jobs_ex = torch.arange(b, device=x.device).repeat_interleave(k)
    generators = [_example_generator(*key) for key in noise_keys]
    flat_masks = masks.reshape(b * k, h, w)
    out = torch.empty(b * k, dtype=torch.float32, device=x.device)
    for j0 in range(0, b * k, chunk):
        j1 = min(j0 + chunk, b * k)
        je = jobs_ex[j0:j1]
        gens = [generators[int(e)] for e in je] if noise else None
        imputed = impute_linear(
            x[je], flat_masks[j0:j1], noise=noise, noise_generators=gens, solver=solver, tol=tol, max_iter=max_iter
        )
        probs = to_probabilities(forward(forward_func, imputed, index_args(args, je, b)), probability_fn)
        jt = target[je] if isinstance(target, Tensor) else target
        out[j0:j1] = target_scores(probs, jt).float()
    return out.view(b, k)


def _road_for_evaluate(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Tensor,
    *,
    indices: Optional[Tensor] = None,
    **options: Any,
) -> Dict[str, Tensor]:
    ids = indices.tolist() if indices is not None else None
    res = cast(RoadResult, road(forward_func, inputs, maps, target=target, order="combined", return_curves=True,
                                example_indices=ids, **options))  # fmt: skip
    return {"road_morf": res.morf, "road_lerf": res.lerf, "road_combined": res.combined}


register_metric(
    "road_morf", higher_is_better=False, unit="score change", group="road", compute=_road_for_evaluate,
    label="ROAD MoRF", position=30, decimals=4,
    description="score change when the most salient pixels are removed and linearly imputed (mean over "
    "percentiles); ranking only",
)  # fmt: skip
register_metric(
    "road_lerf", higher_is_better=True, unit="score change", group="road", compute=_road_for_evaluate,
    label="ROAD LeRF", position=31, decimals=4,
    description="score change when the least salient pixels are removed and imputed; ranking only",
)  # fmt: skip
register_metric(
    "road_combined", higher_is_better=True, unit="score change", group="road", compute=_road_for_evaluate,
    label="ROAD", position=32, decimals=4,
    description="(LeRF - MoRF) / 2: how much more the least than the most salient pixels can be removed",
)  # fmt: skip
