"""Paired comparisons of two methods (or a method and a control): mean difference, 95% interval, win rate.

Every claim "method A is better than method B on metric M" in this package is reported as one
:class:`PairedComparison`: both methods are scored on the *same* units (images, or seeds when a
model is trained per arm), the per-unit differences ``a_i - b_i`` are averaged, and the
uncertainty of that mean comes from a paired bootstrap (resample the units with replacement,
``n_boot`` times; the percentile interval of the resampled means) or, for a handful of units such
as 3 training seeds, from Student's t (``method="t"``), since a bootstrap over 3 units can only
produce 10 distinct resamples and its interval is far too narrow.

Reading a row: the interval covers the true mean difference in 95% of repeated experiments. If it
contains 0 the data do not resolve which method is better; the win rate (share of units on which
A is better, ties counting half) says how often A wins, which a mean can hide.

For the authors of results pages: :func:`paired_comparison` takes two per-example tensors and
returns the row, :func:`compare_per_example` builds the rows for several pairs and metrics from
``EvaluationResult.per_example``, and :func:`comparisons_markdown` formats them.

Examples
--------
>>> import torch
>>> a = torch.tensor([0.30, 0.42, 0.25, 0.51, 0.38])
>>> b = torch.tensor([0.35, 0.40, 0.31, 0.55, 0.36])
>>> row = paired_comparison(a, b, metric="deletion_auc", a="new", b="base", higher_is_better=False)
>>> round(row.mean_diff, 3), row.win_rate
(-0.022, 0.6)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_cam_ext.metrics.registry import metric_specs

__all__ = [
    "PairedComparison",
    "bootstrap_ci",
    "compare_per_example",
    "comparisons_markdown",
    "paired_comparison",
    "win_rate",
]

_METHODS = ("bootstrap", "t")


def _as_vector(values: Any, name: str) -> Tensor:
    if isinstance(values, Tensor):
        t = values.detach().to("cpu", torch.float64)
    else:
        try:
            t = torch.as_tensor(values, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a 1-D tensor or sequence of numbers") from exc
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (one value per unit), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty; a comparison needs at least one unit")
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise ValueError(f"{name} has {bad} NaN/Inf values; drop those units from both sides first")
    return t


def _check_level(confidence: float) -> float:
    if not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95, got {confidence!r}")
    return float(confidence)


def bootstrap_ci(
    values: Union[Tensor, Sequence[float]],
    *,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "bootstrap",
) -> Tuple[float, float]:
    """Two-sided interval for the mean of ``values`` (for paired data: the differences).

    Parameters
    ----------
    values : Tensor (n,) or sequence
        One value per unit (image or seed); finite.
    n_boot : int
        Bootstrap resamples (``method="bootstrap"``).
    confidence : float
        Coverage of the interval, in (0, 1).
    seed : int
        Seed of the resampling (the interval is reproducible).
    method : {"bootstrap", "t"}
        Percentile bootstrap of the mean, or Student's t interval ``mean +- t * sd / sqrt(n)``
        (use it for a few units, e.g. 3 seeds; needs scipy).

    Returns
    -------
    (low, high) : tuple of float
        For a single unit both are the value itself (no spread can be estimated).
    """
    v = _as_vector(values, "values")
    level = _check_level(confidence)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    n = v.numel()
    if n == 1:
        return float(v[0]), float(v[0])
    alpha = 1.0 - level
    if method == "t":
        try:
            from scipy.stats import t as student_t
        except ImportError as exc:  # pragma: no cover - scipy ships with the test extras
            raise ImportError("method='t' needs scipy (pip install scipy)") from exc
        half = float(student_t.ppf(1 - alpha / 2, n - 1)) * float(v.std(unbiased=True)) / math.sqrt(n)
        m = float(v.mean())
        return m - half, m + half
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ValueError(f"n_boot must be an int >= 100, got {n_boot!r}")
    g = torch.Generator().manual_seed(int(seed))
    means = torch.empty(n_boot, dtype=torch.float64)
    block = max(1, min(n_boot, 2_000_000 // n))
    for s in range(0, n_boot, block):
        e = min(s + block, n_boot)
        idx = torch.randint(0, n, (e - s, n), generator=g)
        means[s:e] = v[idx].mean(dim=1)
    q = torch.quantile(means, torch.tensor([alpha / 2, 1 - alpha / 2], dtype=torch.float64))
    return float(q[0]), float(q[1])


def win_rate(
    a: Union[Tensor, Sequence[float]], b: Union[Tensor, Sequence[float]], higher_is_better: Optional[bool]
) -> float:
    """Share of units on which ``a`` is better than ``b``; ties count half.

    With ``higher_is_better=None`` (no better direction) it is the share with ``a > b``.
    """
    va, vb = _as_vector(a, "a"), _as_vector(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"a and b must be paired: {va.numel()} vs {vb.numel()} units")
    diff = va - vb if higher_is_better in (True, None) else vb - va
    return float(((diff > 0).double() + 0.5 * (diff == 0).double()).mean())


@dataclass(frozen=True)
class PairedComparison:
    """One paired comparison ``a - b`` on one metric.

    Attributes
    ----------
    metric, a, b : str
        What was compared.
    n : int
        Number of paired units.
    mean_a, mean_b, mean_diff : float
        Means of ``a``, ``b`` and of the differences ``a - b``.
    ci_low, ci_high : float
        Interval for ``mean_diff`` at ``confidence``.
    win_rate : float
        Share of units where ``a`` is better (ties half); for a metric without a better
        direction, the share with ``a > b``.
    higher_is_better : bool or None
        The metric's direction (None: descriptive, e.g. mask area).
    confidence : float
        Interval coverage (0.95).
    method : str
        ``"bootstrap"`` (paired percentile bootstrap) or ``"t"``.
    n_boot : int
        Resamples of the bootstrap.
    unit : str
        What a unit is ("images", "seeds").
    """

    metric: str
    a: str
    b: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci_low: float
    ci_high: float
    win_rate: float
    higher_is_better: Optional[bool]
    confidence: float = 0.95
    method: str = "bootstrap"
    n_boot: int = 10000
    unit: str = "images"

    @property
    def resolved(self) -> bool:
        """True when the interval excludes 0 (the data resolve the sign of the difference).

        Differences within float rounding, ``1e-6 * max(1, |mean_a|, |mean_b|)``, count as 0; a
        single unit (``n < 2``) resolves nothing (its interval has no width, not no uncertainty).
        """
        if self.n < 2:
            return False
        tol = 1e-6 * max(1.0, abs(self.mean_a), abs(self.mean_b))
        return self.ci_low > tol or self.ci_high < -tol

    @property
    def verdict(self) -> str:
        """``"a better"``, ``"b better"``, ``"not resolved"`` (interval contains 0), ``"too few units"``
        (``n < 2``), or for a descriptive metric ``"a larger"`` / ``"a smaller"``."""
        if self.n < 2:
            return f"too few {self.unit}"
        if not self.resolved:
            return "not resolved"
        positive = self.ci_low > 0
        if self.higher_is_better is None:
            return f"{self.a} larger" if positive else f"{self.a} smaller"
        a_better = positive == self.higher_is_better
        return f"{self.a} better" if a_better else f"{self.b} better"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict (adds ``resolved`` and ``verdict``)."""
        d = asdict(self)
        d["resolved"] = self.resolved
        d["verdict"] = self.verdict
        return d


def paired_comparison(
    a_values: Union[Tensor, Sequence[float]],
    b_values: Union[Tensor, Sequence[float]],
    *,
    metric: str = "",
    a: str = "A",
    b: str = "B",
    higher_is_better: Optional[bool] = True,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "bootstrap",
    unit: str = "images",
) -> PairedComparison:
    """Mean difference ``a - b``, its interval and the win rate, from per-unit values.

    Parameters
    ----------
    a_values, b_values : Tensor (n,) or sequence
        The metric per unit for the two methods, in the same unit order (paired).
    metric, a, b : str
        Names for the report.
    higher_is_better : bool or None
        Direction of the metric (decides the win rate and the verdict).
    n_boot, confidence, seed, method
        See :func:`bootstrap_ci`.
    unit : str
        What a unit is, for the report.

    Returns
    -------
    PairedComparison

    Raises
    ------
    ValueError
        Different lengths, empty inputs, NaN/Inf values, bad ``confidence``/``n_boot``/``method``.
    """
    va, vb = _as_vector(a_values, "a_values"), _as_vector(b_values, "b_values")
    if va.shape != vb.shape:
        raise ValueError(f"a_values and b_values must be paired: {va.numel()} vs {vb.numel()} units")
    diff = va - vb
    lo, hi = bootstrap_ci(diff, n_boot=n_boot, confidence=confidence, seed=seed, method=method)
    return PairedComparison(
        metric=metric,
        a=a,
        b=b,
        n=int(va.numel()),
        mean_a=float(va.mean()),
        mean_b=float(vb.mean()),
        mean_diff=float(diff.mean()),
        ci_low=lo,
        ci_high=hi,
        win_rate=win_rate(va, vb, higher_is_better),
        higher_is_better=higher_is_better,
        confidence=float(confidence),
        method=method,
        n_boot=n_boot,
        unit=unit,
    )


def compare_per_example(
    per_example: Mapping[str, Mapping[str, Tensor]],
    pairs: Iterable[Tuple[str, str]],
    metrics: Optional[Sequence[str]] = None,
    *,
    directions: Optional[Mapping[str, Optional[bool]]] = None,
    n_boot: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    method: str = "bootstrap",
    unit: str = "images",
) -> List[PairedComparison]:
    """Rows for every ``(a, b)`` pair and metric of ``per_example[row][metric]`` (e.g. from ``evaluate``).

    ``directions`` maps a metric to ``higher_is_better``; by default the metric registry's.
    """
    if directions is None:
        directions = {n: s.higher_is_better for n, s in metric_specs().items()}
    out: List[PairedComparison] = []
    for a, b in pairs:
        for name in (a, b):
            if name not in per_example:
                raise ValueError(f"no per-example values for {name!r}; have {', '.join(per_example)}")
        names = list(metrics) if metrics is not None else [m for m in per_example[a] if m in per_example[b]]
        for m in names:
            if m not in per_example[a] or m not in per_example[b]:
                raise ValueError(f"metric {m!r} is missing for {a!r} or {b!r}")
            if m not in directions:
                raise ValueError(f"no direction known for metric {m!r}; pass directions={{...}}")
            out.append(
                paired_comparison(
                    per_example[a][m], per_example[b][m], metric=m, a=a, b=b, higher_is_better=directions[m],
                    n_boot=n_boot, confidence=confidence, seed=seed, method=method, unit=unit,
                )  # fmt: skip
            )
    return out


def _fmt(x: float, decimals: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{decimals}f}"


def comparisons_markdown(
    rows: Sequence[PairedComparison],
    title: Optional[str] = None,
    decimals: Optional[Mapping[str, int]] = None,
) -> str:
    """A markdown table of comparisons: means, ``a - b`` with its interval, win rate, verdict.

    ``decimals`` maps a metric to its decimals (default: the metric registry's, else 3).
    """
    if decimals is None:
        decimals = {n: s.decimals for n, s in metric_specs().items()}
    lines = [f"### {title}", ""] if title else []
    if not rows:
        return "\n".join(lines + ["(no comparisons)"])
    level = {r.confidence for r in rows}
    pct = f"{100 * next(iter(level)):g}%" if len(level) == 1 else "CI"
    lines += [
        f"| metric | A | B | mean A | mean B | A − B [{pct} CI] | A wins | n | verdict |",
        "|---|---|---|---:|---:|---|---:|---:|---|",
    ]
    for r in rows:
        d = decimals.get(r.metric, 3) + (1 if r.metric == "mask_area" else 0)
        diff = f"{_fmt(r.mean_diff, d)} [{_fmt(r.ci_low, d)}, {_fmt(r.ci_high, d)}]"
        wins = f"{100 * r.win_rate:.0f}%"
        lines.append(
            f"| {r.metric} | {r.a} | {r.b} | {_fmt(r.mean_a, d)} | {_fmt(r.mean_b, d)} | {diff} | {wins} | "
            f"{r.n} | {r.verdict} |"
        )
    kinds = sorted({(r.method, r.n_boot, r.unit) for r in rows})
    how = "; ".join(
        (f"paired bootstrap over {u} ({nb} resamples)" if m == "bootstrap" else f"Student t over {u}")
        for m, nb, u in kinds
    )
    lines += [
        "",
        f"A − B: mean of the paired differences, {how}. 'A wins': share of {kinds[0][2]} on which A is "
        "better (ties count half; for mask area: A larger). 'not resolved': the interval contains 0.",
    ]
    return "\n".join(lines)
