"""The package on a CUDA device (issue 12): engine, perturbation methods, metrics, evaluate, training step.

Every test runs the same computation on the CPU and on the GPU and compares (float32 on both;
cuDNN may pick other algorithms, hence tolerances of float rounding, not bit equality). Marked
``cuda`` and skipped where CUDA is not available; ``benchmarks/gpu.sh`` runs them with
``pytest -m cuda``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

import captum_cam_ext as cce

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
GPU = torch.device("cuda")
TOL = {"rtol": 1e-3, "atol": 1e-4}


def _resnet(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=num_classes).eval()
    for bn in (b for b in m.modules() if isinstance(b, nn.BatchNorm2d)):  # non-trivial statistics
        bn.running_mean.uniform_(-0.1, 0.1)
        bn.running_var.uniform_(0.8, 1.2)
    return m


def _pair(model: nn.Module):
    """The model on the CPU and an exact copy on the GPU."""
    return model, copy.deepcopy(model).to(GPU)


@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigengradcam"])
def test_gradient_cams_on_the_gpu_equal_the_cpu(name):
    cpu, gpu = _pair(_resnet())
    x = torch.randn(3, 3, 64, 64)
    targets = [1, 5, 9]
    want = cce.registry.create_method(name, cpu, cpu.layer4).attribute(
        x, target=targets, upsample_to_input=True, relu_attributions=True, normalize=True
    )
    cam = cce.registry.create_method(name, gpu, gpu.layer4)
    got = cam.attribute(x.to(GPU), target=targets, upsample_to_input=True, relu_attributions=True, normalize=True)
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, **TOL)
    assert all(p.grad is None for p in gpu.parameters())  # layer-only gradients, nothing accumulated
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in gpu.modules())


def test_multicam_on_the_gpu_equals_each_method_alone():
    _, gpu = _pair(_resnet())
    x = torch.randn(2, 3, 64, 64, device=GPU)
    names = ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]
    multi = cce.MultiCam(gpu, gpu.layer4, methods=names).attribute(x, target=[2, 3])
    for name in names:
        alone = cce.registry.create_method(name, gpu, gpu.layer4).attribute(x, target=[2, 3])
        torch.testing.assert_close(multi[name], alone, **TOL)


@pytest.mark.parametrize("cls", [cce.LayerScoreCam, cce.LayerAblationCam], ids=lambda c: c.__name__)
def test_perturbation_cams_on_the_gpu_equal_the_cpu_with_auto_chunks(cls):
    cpu, gpu = _pair(_resnet())
    x = torch.randn(2, 3, 32, 32)
    want = cls(cpu, cpu.layer3, batch_size=64).attribute(x, target=[4, 7], upsample_to_input=True, normalize=True)
    cam = cls(gpu, gpu.layer3)  # batch_size="auto": chunk sizes measured with CUDA synchronisation
    cam.auto_candidates_cuda = (8, 16, 32)
    got = cam.attribute(x.to(GPU), target=[4, 7], upsample_to_input=True, normalize=True)
    torch.testing.assert_close(got.cpu(), want, **TOL)
    assert cam.last_run["batch_size"] in (8, 16, 32)
    if cls is cce.LayerScoreCam:
        assert cam.last_run["folded"] == 20  # BatchNorm folded on the GPU too


def test_score_cam_autocast_on_the_gpu_is_close_but_opt_in():
    _, gpu = _pair(_resnet())
    x = torch.randn(1, 3, 32, 32, device=GPU)
    exact = cce.LayerScoreCam(gpu, gpu.layer3).attribute(x, target=3, upsample_to_input=True, normalize=True)
    half = cce.LayerScoreCam(gpu, gpu.layer3, autocast_dtype=torch.float16).attribute(
        x, target=3, upsample_to_input=True, normalize=True
    )
    assert float((half - exact).abs().max()) < 0.1  # fp16 scores: close, not equal


def test_metrics_on_the_gpu_equal_the_cpu():
    from captum_cam_ext.metrics.causal import deletion_auc, insertion_auc
    from captum_cam_ext.metrics.confidence import confidence_metrics

    cpu, gpu = _pair(_resnet())
    x = torch.randn(4, 3, 32, 32)
    maps = torch.rand(4, 1, 4, 4)
    target = [0, 1, 2, 3]
    want = confidence_metrics(cpu, x, maps, target=target)
    got = confidence_metrics(gpu, x.to(GPU), maps.to(GPU), target=target)
    assert abs(got.average_drop - want.average_drop) < 1e-3
    assert abs(got.average_increase - want.average_increase) < 1e-6
    for fn in (deletion_auc, insertion_auc):
        a = fn(cpu, x, maps, target=target, n_steps=8)
        b = fn(gpu, x.to(GPU), maps.to(GPU), target=target, n_steps=8)
        torch.testing.assert_close(b.cpu(), a, **TOL)


def test_evaluate_on_the_gpu_equals_the_cpu():
    from torch.utils.data import TensorDataset

    from captum_cam_ext.evaluation import evaluate

    cpu, _ = _pair(_resnet())
    torch.manual_seed(1)
    data = TensorDataset(torch.randn(12, 3, 32, 32), torch.randint(0, 10, (12,)))
    metrics = ["average_drop", "average_increase", "deletion_auc", "insertion_auc"]
    want = evaluate(cpu, cpu.layer4, "gradcam", data, batch_size=5, metrics=metrics, causal_steps=8,
                    comparisons=False)  # fmt: skip
    gpu = copy.deepcopy(cpu)
    got = evaluate(gpu, gpu.layer4, "gradcam", data, batch_size=5, metrics=metrics, causal_steps=8, device=GPU,
                   comparisons=False)  # fmt: skip
    assert next(gpu.parameters()).device.type == "cuda"
    for metric in metrics:
        assert abs(got.means["gradcam"][metric] - want.means["gradcam"][metric]) < 1e-2, metric


def test_interpretable_gradient_training_step_on_the_gpu_equals_the_cpu():
    from captum_cam_ext.training import InterpretableGradientLoss
    from captum_cam_ext.training.models import SmallResNet18

    torch.manual_seed(2)
    cpu = SmallResNet18(num_classes=10, in_channels=1).train()
    gpu = copy.deepcopy(cpu).to(GPU)
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))
    grads = []
    for model, dev in ((cpu, "cpu"), (gpu, "cuda")):
        terms = InterpretableGradientLoss(model, lam=0.5)(x.to(dev), y.to(dev))
        terms.total.backward()
        grads.append(([float(t.detach()) for t in terms], [p.grad.detach().cpu().clone() for p in model.parameters()]))
    (lc, gc), (lg, gg) = grads
    assert all(abs(a - b) <= 1e-3 * max(1.0, abs(a)) for a, b in zip(lc, lg))
    for a, b in zip(gc, gg):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-4)
