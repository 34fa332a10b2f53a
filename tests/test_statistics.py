"""Paired statistics: bootstrap interval coverage on a synthetic case, invariants, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from captum_cam_ext.metrics.statistics import (
    PairedComparison,
    bootstrap_ci,
    compare_per_example,
    comparisons_markdown,
    paired_comparison,
    win_rate,
)

torch.set_num_threads(1)


@pytest.mark.parametrize("dist", ["normal", "exponential"])
def test_bootstrap_interval_covers_the_true_mean_difference(dist):
    """Repeat a synthetic paired experiment whose true mean difference is known.

    The 95% interval must contain it in about 95% of repetitions. With 400 repetitions the
    standard error of the observed coverage is 1.1 points; the percentile bootstrap of a mean of
    n = 80 is known to under-cover slightly (about 94%), hence the band [0.91, 0.98].
    """
    g = torch.Generator().manual_seed(123)
    trials, n, true_diff = 400, 80, 0.3
    hits = 0
    for t in range(trials):
        base = torch.randn(n, generator=g, dtype=torch.float64)
        if dist == "normal":
            noise = torch.randn(n, generator=g, dtype=torch.float64)
        else:  # skewed differences, mean 1 -> centred
            noise = -torch.log(torch.rand(n, generator=g, dtype=torch.float64)) - 1.0
        a = base + true_diff + noise
        b = base
        lo, hi = bootstrap_ci(a - b, n_boot=1000, seed=t)
        hits += int(lo <= true_diff <= hi)
    coverage = hits / trials
    assert 0.91 <= coverage <= 0.98, coverage


def test_t_interval_covers_for_three_seeds_and_the_bootstrap_does_not():
    """With 3 units (seeds) the t interval keeps its coverage; the bootstrap's is far too narrow."""
    g = torch.Generator().manual_seed(7)
    hits_t = 0
    for _ in range(3000):  # standard error of the coverage: 0.4 points
        d = torch.randn(3, generator=g, dtype=torch.float64)
        lo, hi = bootstrap_ci(d, method="t")
        hits_t += int(lo <= 0 <= hi)
    assert 0.935 <= hits_t / 3000 <= 0.965
    hits_b = 0
    for t in range(600):
        d = torch.randn(3, generator=g, dtype=torch.float64)
        lo, hi = bootstrap_ci(d, n_boot=500, seed=t)
        hits_b += int(lo <= 0 <= hi)
    assert hits_b / 600 < 0.85  # about 0.72


def test_t_interval_closed_form():
    d = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    lo, hi = bootstrap_ci(d, method="t")
    sd = float(d.std(unbiased=True))
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert lo == pytest.approx(7 / 3 - half) and hi == pytest.approx(7 / 3 + half)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    vals=st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=30),
    shift=st.floats(-3, 3, allow_nan=False),
    higher=st.sampled_from([True, False, None]),
)
def test_paired_comparison_invariants(vals, shift, higher):
    a = torch.tensor(vals, dtype=torch.float64)
    b = a.flip(0) * 0.5
    row = paired_comparison(a, b, higher_is_better=higher, n_boot=200, seed=3)
    # swapping the sides negates the difference and its interval (same resamples)
    rev = paired_comparison(b, a, higher_is_better=higher, n_boot=200, seed=3)
    assert rev.mean_diff == pytest.approx(-row.mean_diff, abs=1e-9)
    assert rev.ci_low == pytest.approx(-row.ci_high, abs=1e-9)
    assert rev.ci_high == pytest.approx(-row.ci_low, abs=1e-9)
    if higher is not None:
        assert row.win_rate + rev.win_rate == pytest.approx(1.0)
    # adding a constant to every a-value shifts the difference and the interval by it
    moved = paired_comparison(a + shift, b, higher_is_better=higher, n_boot=200, seed=3)
    assert moved.ci_low == pytest.approx(row.ci_low + shift, abs=1e-9)
    assert moved.ci_high == pytest.approx(row.ci_high + shift, abs=1e-9)
    assert row.ci_low <= row.ci_high
    # the interval lies within the range of the differences
    d = a - b
    assert float(d.min()) - 1e-9 <= row.ci_low and row.ci_high <= float(d.max()) + 1e-9


def test_win_rate_counts_ties_half_and_follows_the_direction():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([0.0, 2.0, 5.0, 1.0])
    assert win_rate(a, b, True) == pytest.approx((2 + 0.5) / 4)
    assert win_rate(a, b, False) == pytest.approx((1 + 0.5) / 4)
    assert win_rate(a, b, None) == pytest.approx((2 + 0.5) / 4)


def test_verdicts_and_rows():
    up = torch.arange(50, dtype=torch.float64)
    row = paired_comparison(up + 1, up, metric="insertion_auc", a="new", b="base", higher_is_better=True)
    assert row.resolved and row.verdict == "new better" and row.ci_low == row.ci_high == 1.0
    row = paired_comparison(up + 1, up, metric="deletion_auc", a="new", b="base", higher_is_better=False)
    assert row.verdict == "base better"
    row = paired_comparison(up + 1, up, metric="mask_area", a="new", b="base", higher_is_better=None)
    assert row.verdict == "new larger"
    noisy = paired_comparison(torch.tensor([1.0, -1.0, 2.0, -2.0]), torch.zeros(4))
    assert not noisy.resolved and noisy.verdict == "not resolved"
    d = noisy.to_dict()
    assert d["verdict"] == "not resolved" and d["n"] == 4
    single = bootstrap_ci([0.25])
    assert single == (0.25, 0.25)


def test_compare_per_example_and_markdown():
    g = torch.Generator().manual_seed(0)
    pe = {
        "gradcam": {"average_drop": torch.rand(40, generator=g) * 50, "mask_area": torch.rand(40, generator=g)},
        "new": {"average_drop": torch.rand(40, generator=g) * 50, "mask_area": torch.rand(40, generator=g)},
    }
    rows = compare_per_example(pe, [("new", "gradcam")], n_boot=500)
    assert [r.metric for r in rows] == ["average_drop", "mask_area"]
    assert rows[0].higher_is_better is False and rows[1].higher_is_better is None
    direct = paired_comparison(pe["new"]["average_drop"], pe["gradcam"]["average_drop"],
                               higher_is_better=False, n_boot=500)
    assert rows[0].ci_low == direct.ci_low and rows[0].win_rate == direct.win_rate
    md = comparisons_markdown(rows, title="t")
    assert "| average_drop | new | gradcam |" in md and "95% CI" in md and "paired bootstrap" in md
    with pytest.raises(ValueError, match="no per-example values"):
        compare_per_example(pe, [("new", "missing")])
    with pytest.raises(ValueError, match="direction"):
        compare_per_example({"a": {"x": torch.ones(3)}, "b": {"x": torch.ones(3)}}, [("a", "b")])
    assert isinstance(rows[0], PairedComparison)


def test_errors():
    with pytest.raises(ValueError, match="paired"):
        paired_comparison(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="empty"):
        paired_comparison(torch.ones(0), torch.ones(0))
    with pytest.raises(ValueError, match="NaN"):
        paired_comparison(torch.tensor([1.0, float("nan")]), torch.ones(2))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(torch.ones(3), confidence=95)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(torch.ones(3), n_boot=10)
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(torch.ones(3), method="bca")
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(torch.ones(3, 2))


def test_a_single_example_resolves_nothing():
    one = paired_comparison(torch.tensor([3.0]), torch.tensor([1.0]), higher_is_better=True, a="A", b="B")
    assert not one.resolved and one.verdict == "too few images"
    two = paired_comparison(torch.tensor([3.0, 3.1]), torch.tensor([1.0, 1.0]), higher_is_better=True, a="A", b="B")
    assert two.resolved and two.verdict == "A better"
