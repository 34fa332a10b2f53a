"""Grad-CAM++, Score-CAM and Ablation-CAM against values computed by hand (plain Python loops).

The model is linear in the layer, ``y_c = sum_{k,p} theta[c, k, p] * A_k(p)`` with the layer an
identity on the input, so every quantity the papers define has a closed form. These tests stand
without the reference library (the parity tests in test_parity.py use pytorch-grad-cam).
"""

from __future__ import annotations

import math
from typing import List

import pytest
import torch
from torch import nn

import captum_cam_ext as cce

D = torch.float64
K, H, W, C = 3, 2, 3, 4


class LinearInLayer(nn.Module):
    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.register_buffer("theta", theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nkhw,ckhw->nc", self.layer(x), self.theta)


def _case(seed: int):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(C, K, H, W, generator=g, dtype=D)
    x = torch.rand(2, K, H, W, generator=g, dtype=D) + 0.1  # positive activations, non-constant
    return LinearInLayer(theta).eval(), x


def _cells():
    return [(i, j) for i in range(H) for j in range(W)]


def _cam(a: List[List[List[float]]], w: List[float]) -> List[List[float]]:
    return [[sum(w[k] * a[k][i][j] for k in range(K)) for j in range(W)] for i in range(H)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grad_cam_plus_plus_by_hand(seed):
    model, x = _case(seed)
    target = [1, 3]
    got = cce.LayerGradCamPlusPlus(model, model.layer).attribute(x, target=target)
    for n, c in enumerate(target):
        a = x[n].tolist()
        th = model.theta[c].tolist()  # the gradient of y_c w.r.t. A_k(p) is theta[c, k, p]
        w = []
        for k in range(K):
            total = sum(a[k][i][j] for i, j in _cells())
            wk = 0.0
            for i, j in _cells():
                gr = th[k][i][j]
                alpha = gr**2 / (2 * gr**2 + total * gr**3 + 1e-6) if gr != 0 else 0.0
                wk += alpha * max(gr, 0.0)
            w.append(wk)
        torch.testing.assert_close(got[n, 0], torch.tensor(_cam(a, w), dtype=D), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_score_cam_by_hand(seed):
    model, x = _case(seed)
    target = [0, 2]
    got = cce.LayerScoreCam(model, model.layer, batch_size=2).attribute(x, target=target)
    for n, c in enumerate(target):
        a = x[n].tolist()
        th = model.theta[c].tolist()
        scores = []
        for k in range(K):
            lo = min(a[k][i][j] for i, j in _cells())
            hi = max(a[k][i][j] for i, j in _cells())
            mask = [[(a[k][i][j] - lo) / (hi - lo + 1e-8) for j in range(W)] for i in range(H)]
            # the masked input x * mask_k goes through the identity layer and the linear head
            scores.append(sum(th[q][i][j] * a[q][i][j] * mask[i][j] for q in range(K) for i, j in _cells()))
        top = max(scores)
        e = [math.exp(s - top) for s in scores]
        w = [v / sum(e) for v in e]
        torch.testing.assert_close(got[n, 0], torch.tensor(_cam(a, w), dtype=D), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ablation_cam_by_hand(seed):
    model, x = _case(seed)
    target = [3, 1]
    got = cce.LayerAblationCam(model, model.layer, batch_size=2).attribute(x, target=target)
    for n, c in enumerate(target):
        a = x[n].tolist()
        th = model.theta[c].tolist()
        part = [sum(th[k][i][j] * a[k][i][j] for i, j in _cells()) for k in range(K)]
        y = sum(part)
        w = [(y - (y - part[k])) / y for k in range(K)]  # zeroing channel k removes its part
        torch.testing.assert_close(got[n, 0], torch.tensor(_cam(a, w), dtype=D), rtol=1e-9, atol=1e-12)


def test_ablation_cam_keeps_the_raw_drop_when_the_clean_score_is_zero():
    model, x = _case(4)
    theta = model.theta.clone()
    theta[0] = 0.0
    theta[0, 0, 0, 0], theta[0, 1, 0, 0] = 1.0, -1.0  # y_0 = A_0(0,0) - A_1(0,0)
    x = x[:1].clone()
    x[0, 0, 0, 0] = x[0, 1, 0, 0] = 0.5  # ... which is exactly 0
    model = LinearInLayer(theta).eval()
    assert float(model(x)[0, 0]) == 0.0
    got = cce.LayerAblationCam(model, model.layer).attribute(x, target=0)
    a = x[0]
    expect = 0.5 * a[0] - 0.5 * a[1]  # raw drops +0.5 and -0.5 (not divided by the zero score)
    torch.testing.assert_close(got[0, 0], expect, rtol=1e-12, atol=1e-12)
