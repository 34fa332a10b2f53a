"""Speed machinery of the perturbation CAMs (issue 12): measured chunk sizes and skipped copies.

What may change for speed is only the grouping of independent forward passes and which passes
run at all; the maps must not change. Every test compares against a computation that does not use
the machinery (a fixed chunk size, or a channel-by-channel loop in plain Python).
"""

from __future__ import annotations

import itertools
from typing import List

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import captum_cam_ext as cce
from captum_cam_ext.attr.perturbation import (
    AUTO_FALLBACK,
    PerturbationCamAttribution,
    check_batch_size,
    clear_tuned_chunk_sizes,
    tuned_chunk_sizes,
)

D = torch.float64


class DeadChannels(nn.Module):
    """conv -> ReLU (channels ``dead`` are exactly 0 everywhere) -> mean -> linear."""

    def __init__(self, dead: List[int], k: int = 6, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, k, 3, padding=1).double()
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g, dtype=D))
            self.conv.bias.copy_(torch.rand(k, generator=g, dtype=D) + 0.5)
            for c in dead:
                self.conv.weight[c] = 0.0
                self.conv.bias[c] = -1.0  # ReLU(-1) = 0 everywhere
        self.act = nn.ReLU()
        self.fc = nn.Linear(k, 4).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(4, k, generator=g, dtype=D))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean((2, 3)))


def _by_hand_ablation_scores(model: DeadChannels, x: torch.Tensor, target: int) -> torch.Tensor:
    """Score of ``target`` with each channel of ``model.act`` zeroed, one plain forward per channel."""
    with torch.no_grad():
        a = model.act(model.conv(x))
        out = []
        for k in range(a.shape[1]):
            b = a.clone()
            b[:, k] = 0.0
            out.append(model.fc(b.mean((2, 3)))[0, target])
    return torch.stack(out)


@pytest.mark.parametrize("dead", [[], [1], [0, 4, 5]])
def test_ablation_cam_skips_channels_that_are_already_ablated_and_keeps_the_map(dead):
    model = DeadChannels(dead).eval()
    x = torch.randn(1, 3, 5, 5, dtype=D, generator=torch.Generator().manual_seed(1))
    target = 2
    cam = cce.LayerAblationCam(model, model.act, batch_size=4)
    got = cam.attribute(x, target=target)
    clean = model(x)[0, target]
    drop = (clean - _by_hand_ablation_scores(model, x, target)) / clean
    with torch.no_grad():
        a = model.act(model.conv(x))
    expect = (drop[None, :, None, None] * a).sum(1, keepdim=True)
    torch.testing.assert_close(got, expect, rtol=1e-10, atol=1e-12)
    # only the live channels (plus one unablated copy when some are dead) were run
    assert cam.last_run["copies"] == 6 - len(dead) + (1 if dead else 0)
    assert cam.last_run["skipped"] == max(0, len(dead) - 1)


def test_score_cam_skips_constant_channels_and_keeps_the_map():
    model = DeadChannels([2, 3]).eval()
    x = torch.randn(2, 3, 5, 5, dtype=D, generator=torch.Generator().manual_seed(2))
    fast = cce.LayerScoreCam(model, model.act, batch_size=3)
    got = fast.attribute(x, target=[0, 3])
    assert fast.last_run["copies"] == 2 * (4 + 1)  # per example: 4 live channels + 1 all-zero mask
    assert fast.last_run["skipped"] == 2 * 1
    # by hand: every channel's masked input scored on its own
    with torch.no_grad():
        a = model.act(model.conv(x))
        for n, t in enumerate([0, 3]):
            up = torch.nn.functional.interpolate(a[n : n + 1], size=(5, 5), mode="bilinear", align_corners=True)[0]
            lo = up.flatten(1).min(1).values[:, None, None]
            hi = up.flatten(1).max(1).values[:, None, None]
            masks = (up - lo) / (hi - lo + 1e-8)
            scores = torch.stack([model(x[n : n + 1] * masks[k])[0, t] for k in range(6)])
            w = torch.softmax(scores, 0)
            torch.testing.assert_close(got[n, 0], (w[:, None, None] * a[n]).sum(0), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [cce.LayerScoreCam, cce.LayerAblationCam], ids=lambda c: c.__name__)
def test_auto_chunk_size_gives_the_maps_of_a_fixed_size_and_is_measured_once_per_model(cls):
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 40, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 5)
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    clear_tuned_chunk_sizes(model)
    # small candidates so that 40 channels are enough to finish the search
    cam = cls(model, model[1])
    cam.auto_candidates_cpu = (2, 4, 8)
    got = cam.attribute(x, target=[1, 4])
    assert cam.auto_batch_size and cam.batch_size == AUTO_FALLBACK
    sizes = tuned_chunk_sizes(model)
    assert len(sizes) == 1 and list(sizes.values())[0] in (2, 4, 8)
    assert cam.last_run["batch_size"] == list(sizes.values())[0]
    again = cls(model, model[1])  # a new object on the same model reuses the measurement
    again.auto_candidates_cpu = (2, 4, 8)
    torch.testing.assert_close(again.attribute(x, target=[1, 4]), got)
    assert again.last_run["measured"] is False
    for fixed in (1, 7, 64):
        torch.testing.assert_close(cls(model, model[1], batch_size=fixed).attribute(x, target=[1, 4]), got)
    clear_tuned_chunk_sizes(model)
    assert tuned_chunk_sizes(model) == {}


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(1, 200),
    costs=st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.25, 2.0, 4.0]), min_size=4, max_size=4),  # exact in binary
)
def test_run_chunks_covers_every_copy_once_and_keeps_the_fastest_size_it_saw(count, costs):
    sizes = (2, 4, 8, 16)
    per_copy = dict(zip(sizes, costs))
    now = [0.0]
    calls: List[int] = []

    def run(start: int, stop: int) -> torch.Tensor:
        b = stop - start
        calls.append(b)
        now[0] += b * per_copy.get(b, 1.0)
        return torch.arange(start, stop, dtype=D)[:, None]

    model = nn.Linear(1, 1)
    cam = cce.LayerScoreCam(model, model)
    cam.auto_candidates_cpu = sizes
    cam.clock = lambda: now[0]
    out = cam.run_chunks(count, run, ("k",), torch.device("cpu"))
    assert torch.equal(out[:, 0], torch.arange(count, dtype=D))  # every copy once, in order
    cached = tuned_chunk_sizes(model).get(("k",))
    # what the search must have seen: two chunks per candidate, in order, until one is > 5% slower per copy
    seen: List[int] = []
    pos, complete = 0, True
    for b in sizes:
        if count - pos < 2 * b:
            complete = False
            break
        seen.append(b)
        pos += 2 * b
        best = min(seen, key=lambda s: per_copy[s])
        if b != best and per_copy[b] > 1.05 * per_copy[best]:
            break
    assert calls[: 2 * len(seen)] == list(itertools.chain.from_iterable((b, b) for b in seen))
    if complete:
        assert cached == min(seen, key=lambda s: per_copy[s])
        assert cam.last_run["measured"] is True
        # the rest ran at the chosen size (the last chunk may be shorter)
        rest = calls[2 * len(seen) :]
        assert all(b == cached for b in rest[:-1]) and (not rest or rest[-1] <= cached)
    else:
        assert cached is None


def test_batch_size_must_be_a_positive_int_or_auto():
    assert check_batch_size("auto", allow_auto=True) == AUTO_FALLBACK
    for bad in (0, -3, 2.5, True, "fast", None):
        with pytest.raises(ValueError, match="batch_size"):
            check_batch_size(bad, allow_auto=True)
    with pytest.raises(ValueError, match="positive int"):
        check_batch_size("auto")
    m = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with pytest.raises(ValueError, match='"auto"'):
        cce.LayerScoreCam(m, m[1], batch_size="quick")
    with pytest.raises(ValueError, match="at least one copy"):
        cce.LayerScoreCam(m, m[1]).run_chunks(0, lambda a, b: torch.zeros(b - a, 1), ("k",), torch.device("cpu"))
    assert issubclass(cce.LayerScoreCam, PerturbationCamAttribution)
