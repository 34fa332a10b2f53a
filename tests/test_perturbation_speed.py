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
    measuring_clock,
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


class ConvBnZoo(nn.Module):
    """Conv -> BN pairs that may be folded, and patterns that must not be."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)  # foldable
        self.c2, self.b2 = nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)  # conv output also read elsewhere
        self.shared = nn.Conv2d(4, 4, 1)  # called twice: never folded
        self.b3 = nn.BatchNorm2d(4)
        self.b4 = nn.BatchNorm2d(4, affine=False)  # after a ReLU, not a conv
        self.fc = nn.Linear(4, 3)
        for bn in (self.b1, self.b2, self.b3, self.b4):  # non-trivial running statistics
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            if bn.affine:
                nn.init.uniform_(bn.weight, 0.5, 1.5)
                nn.init.uniform_(bn.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.b1(self.c1(x)))
        c = self.c2(h)
        h = torch.relu(self.b2(c)) + 0.1 * c
        h = self.b3(self.shared(h)) + self.shared(h)
        h = self.b4(torch.relu(h))
        return self.fc(h.mean((2, 3)))


class StandardizedConv(nn.Conv2d):
    """A convolution that normalises its weight: folding a BatchNorm scale into it is wrong."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return nn.functional.conv2d(x, w, self.bias, self.stride, self.padding)


def test_fold_batchnorm_folds_only_safe_pairs_and_keeps_the_outputs():
    from captum_cam_ext.attr.perturbation import fold_batchnorm

    model = ConvBnZoo().eval()
    folded, folds = fold_batchnorm(model)
    assert folds == 1 and folded is not None  # only c1 -> b1
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-6)
    assert model.c1.bias is None  # the original is untouched
    assert fold_batchnorm(model.train()) == (None, 0)  # training-mode BatchNorms are never folded
    assert fold_batchnorm(nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU()).eval()) == (None, 0)


def test_folded_forward_checks_the_copy_and_drops_a_wrong_one():
    from captum_cam_ext.attr.perturbation import FoldedForward

    torch.manual_seed(12)
    good = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    bad = nn.Sequential(StandardizedConv(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(6, 3, 5, 5)
    for model, kept in ((good, True), (bad, False)):
        with torch.no_grad():
            model(x)  # materialise the lazy layer
            bn = model[1]
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(bn.weight, 0.2, 3.0)
        model.eval()
        fwd = FoldedForward(model)
        assert fwd.folds == 1
        seen: List[int] = []
        handle = model.register_forward_pre_hook(lambda m, inp, seen=seen: seen.append(inp[0].shape[0]))
        try:
            with torch.no_grad():
                expect = model(x)
                seen.clear()
                first = fwd((x,), None)  # the copy on the chunk, the model on its first examples
                assert (fwd.folded is not None) is kept
                if kept:
                    assert seen == [FoldedForward.check_examples]  # not a second pass over the chunk
                    torch.testing.assert_close(first, expect, rtol=1e-5, atol=1e-6)
                else:
                    assert seen == [FoldedForward.check_examples, 6]  # a wrong copy: the model's own output
                    assert torch.equal(first, expect)
                torch.testing.assert_close(fwd((x,), None), expect, rtol=1e-5, atol=1e-6)
        finally:
            handle.remove()


def test_score_cam_maps_are_the_same_with_and_without_folding():
    import torchvision

    torch.manual_seed(13)
    model = torchvision.models.resnet18(num_classes=7).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 32, 32)
    fast = cce.LayerScoreCam(model, model.layer3, batch_size=64)
    got = fast.attribute(x, target=2)
    assert fast.last_run["folded"] == 20
    plain = cce.LayerScoreCam(model, model.layer3, batch_size=64, fold_batchnorm=False, channels_last=False)
    want = plain.attribute(x, target=2)
    assert plain.last_run["folded"] == 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_chunk_size_search_times_cpu_work_with_the_threads_cpu_time_when_torch_uses_one_thread():
    import time

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        clock = measuring_clock(torch.device("cpu"))
        assert clock is time.thread_time
        t0 = clock()
        time.sleep(0.05)  # waiting (another process holding the core) costs no CPU time
        assert clock() - t0 < 0.02
        torch.set_num_threads(2)
        assert measuring_clock(torch.device("cpu")) is time.perf_counter  # worker threads: wall time
    finally:
        torch.set_num_threads(threads)
    assert measuring_clock(torch.device("cuda")) is time.perf_counter
