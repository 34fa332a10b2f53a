"""The interpretable-gradient regularizer, its training helper (incl. torchrun) and alignment."""

from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from captum.attr import GuidedBackprop, Saliency
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from captum_cam_ext.metrics.alignment import gradient_alignment
from captum_cam_ext.training import (
    InterpretableGradientLoss,
    gradient_error,
    input_gradients,
    per_example_cosine,
)
from captum_cam_ext.training.loops import evaluate, train
from captum_cam_ext.training.models import SmallMobileNetV2, SmallResNet18

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _n_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


def _tiny64() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).double()


def _central_fd(f, params, h: float = 1e-6):  # type: ignore[no-untyped-def]
    out = []
    for p in params:
        fd = torch.zeros_like(p)
        flat = p.data.view(-1)
        for i in range(p.numel()):
            old = flat[i].item()
            flat[i] = old + h
            fp = f()
            flat[i] = old - h
            fm = f()
            flat[i] = old
            fd.view(-1)[i] = (fp - fm) / (2 * h)
        out.append(fd)
    return out


@pytest.mark.parametrize("error", ["cosine", "mse", "mae"])
def test_regularizer_gradient_matches_finite_differences(error: str) -> None:
    """detach_guided=False: d L_R / d theta (double backprop) is the derivative of L_R(theta)."""
    torch.manual_seed(0)
    model = _tiny64()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 1])
    loss = InterpretableGradientLoss(model, lam=1.0, error=error, detach_guided=False)
    params = [model[0].weight, model[2].bias, model[6].weight]
    grads = torch.autograd.grad(loss(x, y).reg, params)
    fds = _central_fd(lambda: float(loss(x, y).reg.detach()), params)
    for g, fd in zip(grads, fds):
        assert g.abs().max() > 0
        torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-9)


def test_detached_guided_gradient_is_a_constant_target() -> None:
    torch.manual_seed(1)
    model = _tiny64()
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64) * 3
    y = torch.tensor([2, 0, 1])
    loss = InterpretableGradientLoss(model, lam=1.0, detach_guided=True)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss(x, y).reg, params)
    _, _, target = input_gradients(model, x, y)

    def fixed_target_reg() -> float:
        _, standard, _ = input_gradients(model, x, y)
        return float(gradient_error(standard, target).mean())

    for g, fd in zip(grads, _central_fd(fixed_target_reg, params)):
        torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-9)
    # and it is not the full derivative
    full = torch.autograd.grad(
        InterpretableGradientLoss(model, lam=1.0, detach_guided=False)(x, y).reg, params
    )
    assert any(not torch.allclose(a, b) for a, b in zip(grads, full))


def test_lam_zero_update_equals_plain_cross_entropy() -> None:
    torch.manual_seed(2)
    model = SmallResNet18(num_classes=4, widths=(4, 8, 8, 8)).train()
    ref = copy.deepcopy(model)
    x, y = torch.randn(6, 1, 16, 16), torch.randint(0, 4, (6,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    terms = InterpretableGradientLoss(model, lam=0.0)(x, y)
    terms.total.backward()
    opt.step()
    F.cross_entropy(ref(x), y).backward()
    opt_ref.step()
    assert float(terms.reg) > 0  # still logged
    assert torch.equal(terms.total.detach(), terms.ce.detach())
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_total_is_ce_plus_lam_reg_and_gradient_is_linear_in_lam() -> None:
    torch.manual_seed(3)
    model = _tiny64()
    x, y = torch.randn(4, 1, 6, 6, dtype=torch.float64) * 3, torch.tensor([0, 1, 2, 0])
    params = list(model.parameters())
    g = {}
    for lam in (0.0, 0.5, 1.0):
        t = InterpretableGradientLoss(model, lam=lam)(x, y)
        if lam > 0:
            torch.testing.assert_close(t.total, t.ce + lam * t.reg)
        g[lam] = torch.autograd.grad(t.total, params)
    for a, b, c in zip(g[0.0], g[0.5], g[1.0]):
        torch.testing.assert_close(b - a, 0.5 * (c - a))


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 1000), scale=st.floats(1e-3, 1e3))
def test_cosine_error_scale_invariant_and_bounded(seed: int, scale: float) -> None:
    g = torch.Generator().manual_seed(seed)
    a, b = (
        torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64),
    )
    e = gradient_error(a, b)
    torch.testing.assert_close(gradient_error(a * scale, b), e)
    assert bool(((e >= 0) & (e <= 2)).all())
    torch.testing.assert_close(
        gradient_error(a, a), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0
    )
    torch.testing.assert_close(gradient_error(a, b, "mse"), ((a - b) ** 2).flatten(1).mean(1))
    torch.testing.assert_close(gradient_error(a, b, "mae"), (a - b).abs().flatten(1).mean(1))
    torch.testing.assert_close(
        per_example_cosine(a, b), F.cosine_similarity(a.flatten(1), b.flatten(1))
    )


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_unchanged_after_training_step(arch: str) -> None:
    torch.manual_seed(4)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=5)
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2,))
    before_state = copy.deepcopy(model.state_dict())
    before_modules = repr(model)
    model.eval()
    with torch.no_grad():
        out_before = model(x)
    # eval-mode step with lr=0: nothing may change
    loss = InterpretableGradientLoss(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    terms = loss(x, y)
    terms.total.backward()
    opt.step()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.isfinite(terms.reg) and float(terms.reg.detach()) > 0
    with torch.no_grad():
        assert torch.equal(model(x), out_before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    assert repr(model) == before_modules and _n_hooks(model) == 0 and not model.training
    # train mode: exactly one forward per step (running stats as after one plain forward)
    model.train()
    twin = copy.deepcopy(model)
    InterpretableGradientLoss(model, lam=1e-2)(x, y).total.backward()
    twin(x)
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, twin.state_dict()[k]), k


def test_errors_and_no_hooks_left_after_exception() -> None:
    with pytest.raises(ValueError, match="no nn.ReLU"):
        InterpretableGradientLoss(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(inplace=True), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="lam"):
        InterpretableGradientLoss(model, lam=-1e-3)
    with pytest.raises(ValueError, match="lam"):
        InterpretableGradientLoss(model, lam=float("nan"))
    with pytest.raises(ValueError, match="error must be one of"):
        InterpretableGradientLoss(model, error="huber")
    loss = InterpretableGradientLoss(model)
    with pytest.raises(ValueError, match="targets"):
        loss(torch.randn(2, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="floating"):
        loss(torch.ones(2, 4, dtype=torch.long), torch.tensor([0, 1]))

    class Exploding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.relu(x)
            raise RuntimeError("boom")

    bad = Exploding()
    with pytest.raises(RuntimeError, match="boom"):
        InterpretableGradientLoss(bad)(torch.randn(2, 3), torch.tensor([0, 1]))
    assert _n_hooks(bad) == 0
    with pytest.raises(IndexError):  # label out of range: raised after the forward
        loss(torch.randn(2, 4), torch.tensor([0, 7]))
    assert _n_hooks(model) == 0


def test_gradient_alignment_matches_captum_for_scores() -> None:
    torch.manual_seed(5)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    x = torch.randn(3, 3, 32, 32)
    target = [0, 3, 1]
    ours = gradient_alignment(model, x, target, objective="score")
    guided = GuidedBackprop(model).attribute(x.clone(), target=target)
    plain = Saliency(model).attribute(x.clone(), target=target, abs=False)
    torch.testing.assert_close(
        ours, F.cosine_similarity(plain.flatten(1), guided.flatten(1)), rtol=1e-4, atol=1e-6
    )
    loss_cos = gradient_alignment(model, x, torch.tensor(target))
    assert loss_cos.shape == (3,) and bool((loss_cos.abs() <= 1 + 1e-6).all())
    with pytest.raises(ValueError, match="objective"):
        gradient_alignment(model, x, target, objective="logit")
    with pytest.raises(ValueError, match="one class per example"):
        gradient_alignment(model, x, [0, 1])
    assert _n_hooks(model) == 0


def test_train_matches_manual_loop_and_evaluate_matches_manual_metrics() -> None:
    torch.manual_seed(6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 1, 12, 12, generator=g)
    y = (x[:, 0, :6].mean((1, 2)) > 0).long()
    data = TensorDataset(x, y)
    model = SmallMobileNetV2(num_classes=2, widths=(8, 8, 8, 8, 16), expand=2)
    twin = copy.deepcopy(model)
    hist = train(model, DataLoader(data, batch_size=16), epochs=2, lam=0.5, lr=3e-3, progress=False)
    # the same steps by hand
    loss = InterpretableGradientLoss(twin, lam=0.5)
    opt = torch.optim.Adam(twin.parameters(), lr=3e-3)
    twin.train()
    ces, coss = [], []
    for _ in range(2):
        for xb, yb in DataLoader(data, batch_size=16):
            opt.zero_grad()
            t = loss(xb, yb)
            t.total.backward()
            opt.step()
            ces.append(float(t.ce.detach()))
            coss.append(float(loss.last_cosine.mean()))  # type: ignore[union-attr]
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), k
    assert len(hist) == 2 and hist[0]["steps"] == 3
    assert set(hist[0]) >= {"ce", "reg", "total", "cosine", "acc", "step_seconds"}
    assert hist[1]["ce"] == pytest.approx(sum(ces[3:]) / 3)
    assert hist[1]["cosine"] == pytest.approx(sum(coss[3:]) / 3)
    ev = evaluate(model, DataLoader(data, batch_size=20))
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    cos = float(gradient_alignment(model, x, y).mean())
    assert ev["acc"] == pytest.approx(acc) and ev["cosine"] == pytest.approx(cos, abs=1e-6)
    assert _n_hooks(model) == 0
    base = SmallResNet18(num_classes=2, widths=(4, 4, 8, 8))
    loader = DataLoader(data, batch_size=16)
    hist = train(
        base, loader, epochs=1, lam=0.0, track_alignment=False, max_steps=2, progress=False
    )
    assert hist[0]["steps"] == 2 and hist[0]["reg"] != hist[0]["reg"]  # NaN: not tracked
    with pytest.raises(ValueError, match="error"):
        train(base, loader, error="l3")


_WORKER = textwrap.dedent(
    """
    import os, sys
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    torch.set_num_threads(1)
    from captum_cam_ext.training.loops import distributed_env, train
    out = sys.argv[1]
    world, rank, _ = distributed_env()
    torch.manual_seed(100 + rank)  # different initial weights per rank: DDP must sync them
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU6(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 1, 8, 8, generator=g),
                         torch.randint(0, 3, (32,), generator=g))
    hist = train(model, DataLoader(data, batch_size=4, shuffle=True), epochs=1, lam=1e-2,
                 max_steps=3, progress=False, lr=1e-2)
    torch.save({"state": model.state_dict(), "init": init, "hist": hist, "world": world},
               os.path.join(out, f"rank{rank}.pt"))
    """
)


def test_torchrun_two_cpu_processes_hold_the_same_weights(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(worker),
        str(tmp_path),
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == 2 and r0["hist"][0]["steps"] == 3
    assert any(not torch.equal(r0["init"][k], r1["init"][k]) for k in r0["init"])
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert any(not torch.equal(r0["state"][k], r0["init"][k]) for k in r0["init"])
    assert r0["hist"] == r1["hist"]  # logged numbers are all-reduced


def _bn_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4, affine=False),
        nn.ReLU6(),
        nn.Dropout(0.0),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


def test_bn_mode_eval_regularizer_uses_running_statistics_and_ce_batch_statistics() -> None:
    """bn_mode="eval": reg and its parameter gradient are those of the eval-mode model; CE and the
    running-statistics update are those of one train-mode forward; all modes are restored."""
    torch.manual_seed(7)
    model = _bn_net().train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(8, 1, 6, 6, dtype=torch.float64) * 2 + 1)
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64) * 3
    y = torch.tensor([0, 1, 2, 1, 0])
    ref_train = copy.deepcopy(model).train()
    ref_ce = F.cross_entropy(ref_train(x), y)  # one train-mode forward: updates running stats
    ref_eval = copy.deepcopy(ref_train).eval()  # the regularizer sees the updated statistics
    loss = InterpretableGradientLoss(model, lam=0.5, bn_mode="eval", detach_guided=True)
    terms = loss(x, y)
    params = list(model.parameters())
    g_reg = torch.autograd.grad(terms.reg, params, retain_graph=True)
    # reference: native eval-mode BatchNorm (no affine rerouting), same formula
    _, s, gd = input_gradients(ref_eval, x, y, create_graph=True)
    ref_reg = gradient_error(s, gd).mean()
    torch.testing.assert_close(terms.reg, ref_reg, rtol=1e-10, atol=1e-12)
    for a, b in zip(g_reg, torch.autograd.grad(ref_reg, list(ref_eval.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(terms.ce, ref_ce)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, ref_train.state_dict()[k], rtol=0, atol=0)
    assert all(m.training for m in model.modules()) and _n_hooks(model) == 0
    # train mode differs (batch statistics) on the same batch
    other = InterpretableGradientLoss(copy.deepcopy(ref_train), lam=0.5)(x, y)
    assert abs(float(other.reg.detach()) - float(terms.reg.detach())) > 1e-6


def test_bn_mode_eval_on_eval_model_is_one_pass_and_reduction_sum_is_lam_times_n() -> None:
    torch.manual_seed(8)
    model = _bn_net().eval()
    x, y = torch.randn(4, 1, 6, 6, dtype=torch.float64), torch.tensor([0, 2, 1, 1])
    params = list(model.parameters())
    a = InterpretableGradientLoss(model, lam=0.3, bn_mode="eval")(x, y)
    b = InterpretableGradientLoss(model, lam=0.3, bn_mode="train")(x, y)
    torch.testing.assert_close(a.reg, b.reg)
    assert not any(m.training for m in model.modules())
    mean = InterpretableGradientLoss(model, lam=0.3 * 4, reduction="mean")(x, y)
    summed = InterpretableGradientLoss(model, lam=0.3, reduction="sum")(x, y)
    torch.testing.assert_close(summed.reg, 4 * mean.reg)
    for u, v in zip(torch.autograd.grad(mean.total, params), torch.autograd.grad(summed.total, params)):
        torch.testing.assert_close(u, v)
    with pytest.raises(ValueError, match="bn_mode"):
        InterpretableGradientLoss(model, bn_mode="frozen")
    with pytest.raises(ValueError, match="reduction"):
        InterpretableGradientLoss(model, reduction="none")


def test_batchnorm_eval_restores_modes_on_exception() -> None:
    from captum_cam_ext.training.loss import batchnorm_eval

    torch.manual_seed(9)
    model = _bn_net().train()
    model[4].eval()  # a module already in eval mode stays so
    x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        model(x)
    native = copy.deepcopy(model).eval()
    with batchnorm_eval(model) as switched:
        assert switched == [model[1]] and model[6].training
        torch.testing.assert_close(model(x), native(x))
    assert model[1].training and not model[4].training and _n_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with batchnorm_eval(model):
            raise RuntimeError("boom")
    assert model[1].training and not model[4].training and _n_hooks(model) == 0


def _gini_reference(a: np.ndarray) -> float:
    # Quantus 0.6 Sparseness.evaluate_instance after its default abs + normalise_by_max
    a = np.abs(a).reshape(-1).astype(np.float64)
    a = a / a.max() + 1e-7
    a = np.sort(a)
    n = a.size
    return float(np.sum((2 * np.arange(1, n + 1) - n - 1) * a) / (n * np.sum(a)))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 1e3), h=st.integers(2, 9))
def test_noise_measures_match_definitions_and_are_scale_invariant(seed: int, scale: float, h: int) -> None:
    from scipy.stats import entropy

    from captum_cam_ext.metrics.alignment import gradient_noise

    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(3, 2, h, h + 1, generator=g, dtype=torch.float64)
    out = gradient_noise(maps)
    out_scaled = gradient_noise(maps * scale)
    a = maps.abs().sum(1).numpy()
    for i in range(3):
        assert float(out["sparseness"][i]) == pytest.approx(_gini_reference(a[i]), rel=1e-9)
        assert float(out["complexity"][i]) == pytest.approx(float(entropy(a[i].reshape(-1))), rel=1e-9)
        m = a[i] / a[i].sum()
        tv = np.abs(np.diff(m, axis=0)).sum() + np.abs(np.diff(m, axis=1)).sum()
        assert float(out["total_variation"][i]) == pytest.approx(float(tv), rel=1e-9)
    for k in out:
        torch.testing.assert_close(out[k], out_scaled[k], rtol=1e-6, atol=1e-9)


def test_noise_measures_closed_forms() -> None:
    from captum_cam_ext.metrics.alignment import complexity, sparseness, total_variation

    const = torch.full((1, 6, 5), 0.3)
    spike = torch.zeros(1, 6, 5)
    spike[0, 2, 3] = 2.0
    assert float(total_variation(const)) == pytest.approx(0.0, abs=1e-7)
    assert float(sparseness(const)) == pytest.approx(0.0, abs=1e-6)
    assert float(complexity(const)) == pytest.approx(math.log(30), rel=1e-6)
    assert float(sparseness(spike)) == pytest.approx(1 - 1 / 30, rel=1e-5)
    assert float(complexity(spike)) == pytest.approx(0.0, abs=1e-6)
    assert float(total_variation(spike)) == pytest.approx(4.0, rel=1e-6)  # 4 edges of height 1
    assert float(complexity(torch.zeros(1, 3, 3))) == 0.0
    with pytest.raises(ValueError, match="shape"):
        sparseness(torch.ones(4))
    with pytest.raises(TypeError, match="floating"):
        complexity(torch.ones(1, 2, 2, dtype=torch.long))


def _grouped_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU6(),
        nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=6),  # depthwise, dilated
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 1, groups=2),
        nn.Conv2d(4, 4, 3, padding="same"),  # string padding: native op
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()


@pytest.mark.parametrize("bn_mode", ["train", "eval"])
@pytest.mark.parametrize("detach_guided", [True, False])
def test_fast_ops_give_the_native_loss_and_parameter_gradient(bn_mode: str, detach_guided: bool) -> None:
    """double_backward_ops only changes the recorded graph: same reg, same d(total)/d theta."""
    torch.manual_seed(10)
    model = _grouped_net().train()
    with torch.no_grad():
        model(torch.randn(8, 2, 9, 9, dtype=torch.float64))
    x, y = torch.randn(5, 2, 9, 9, dtype=torch.float64), torch.tensor([0, 1, 2, 2, 1])
    twin = copy.deepcopy(model)
    kw = dict(lam=0.7, bn_mode=bn_mode, detach_guided=detach_guided)
    fast = InterpretableGradientLoss(model, fast_ops=True, **kw)(x, y)  # type: ignore[arg-type]
    native = InterpretableGradientLoss(twin, fast_ops=False, **kw)(x, y)  # type: ignore[arg-type]
    torch.testing.assert_close(fast.reg, native.reg, rtol=1e-12, atol=1e-14)
    fast.total.backward()
    native.total.backward()
    for (k, p), q in zip(model.named_parameters(), twin.parameters()):
        assert p.grad is not None and p.grad.abs().max() > 0, k
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-13, msg=k)
    for (k, v), w in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(v, w, rtol=0, atol=0, msg=k)
    assert _n_hooks(model) == 0


def test_double_backward_ops_reroutes_and_input_only_skips_weight_gradients() -> None:
    from captum_cam_ext.training.double_backward import double_backward_ops

    torch.manual_seed(11)
    model = _grouped_net().eval()
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    with double_backward_ops() as scope:
        out = model(x)
    assert scope.calls == {"conv2d": 3, "batch_norm": 2}  # "same" padding left native
    torch.testing.assert_close(out, model(x))
    with scope.input_only():
        torch.autograd.grad(out.sum(), x, retain_graph=True)
    # a later full backward gives the native gradients, although input_only was used before
    out.sum().backward()
    fast = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    model.zero_grad()
    model(x).sum().backward()
    for a, p in zip(fast, model.parameters()):
        torch.testing.assert_close(a, p.grad)
    # inside input_only a full backward leaves the rerouted weights without gradient
    model.zero_grad(set_to_none=True)
    with double_backward_ops() as scope:
        out = model(x)
    with scope.input_only():
        out.sum().backward()
    assert model[0].weight.grad is None and model[3].weight.grad is None
    assert model[7].weight.grad is not None  # native op (string padding)
    with double_backward_ops(enabled=False) as scope:
        model(x)
    assert scope.calls == {"conv2d": 0, "batch_norm": 0}


def test_small_mobilenet_stem_stride() -> None:
    x = torch.zeros(2, 1, 28, 28)
    assert SmallMobileNetV2(stem_stride=2).features(x).shape == (2, 128, 4, 4)
    assert SmallMobileNetV2().features(x).shape == (2, 128, 7, 7)
    with pytest.raises(ValueError, match="stem_stride"):
        SmallMobileNetV2(stem_stride=3)


def test_train_steps_scheduler_and_applies_input_transform_like_a_manual_loop() -> None:
    torch.manual_seed(12)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 1, 8, 8, generator=g)
    y = torch.randint(0, 2, (24,), generator=g)
    data = TensorDataset(x, y)
    model = SmallResNet18(num_classes=2, widths=(4, 4, 4, 4))
    twin = copy.deepcopy(model)

    def flip(t: torch.Tensor) -> torch.Tensor:
        return t.flip(-1) * 0.5

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, DataLoader(data, batch_size=8), epochs=1, lam=0.2, optimizer=opt, scheduler=sched,
          input_transform=flip, bn_mode="eval", reduction="sum", progress=False)  # fmt: skip
    assert sched.last_epoch == 3 and opt.param_groups[0]["lr"] == pytest.approx(0.1 / 8)
    opt2 = torch.optim.SGD(twin.parameters(), lr=0.1)
    loss = InterpretableGradientLoss(twin, lam=0.2, bn_mode="eval", reduction="sum")
    twin.train()
    for i, (xb, yb) in enumerate(DataLoader(data, batch_size=8)):
        for group in opt2.param_groups:
            group["lr"] = 0.1 * 0.5**i
        opt2.zero_grad()
        loss(flip(xb), yb).total.backward()
        opt2.step()
    for (k, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="bn_mode"):
        train(model, DataLoader(data, batch_size=8), bn_mode="batch")
    with pytest.raises(TypeError, match="input_transform"):
        train(model, DataLoader(data, batch_size=8), input_transform=3)


def test_regularizer_gradients_equal_backprop_input_gradients() -> None:
    from captum_cam_ext.training.loss import regularizer_gradients

    torch.manual_seed(13)
    model = _grouped_net().eval()
    x, y = torch.randn(3, 2, 9, 9, dtype=torch.float64), torch.tensor([2, 0, 1])
    ref = input_gradients(model, x, y)
    for fast in (True, False):
        got = regularizer_gradients(model, x, y, fast_ops=fast)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="targets"):
        regularizer_gradients(model, x, torch.tensor([0, 1]))
