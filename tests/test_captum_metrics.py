"""Every method runs under captum.metrics.infidelity and sensitivity_max.

How: captum perturbs the *inputs*, so the CAM is upsampled to the input size (the CAM method's
``upsample_to_input=True`` is :meth:`LayerAttribution.interpolate` with bilinear mode) and
broadcast over the input channels, which gives an input-shaped attribution.
"""

from __future__ import annotations

import pytest
import torch
from captum.metrics import infidelity, sensitivity_max
from models import SmallCNN

import captum_cam_ext as cce

CLASSES = [
    cce.LayerGradCam,
    cce.LayerGradCamPlusPlus,
    cce.LayerXGradCam,
    cce.LayerHiResCam,
    cce.LayerCam,
    cce.LayerEigenCam,
    cce.LayerEigenGradCam,
    cce.LayerScoreCam,
    cce.LayerAblationCam,
]


def _input_shaped(cam, x, target):
    maps = cam.attribute(x, target=target, relu_attributions=True, upsample_to_input=True)
    return maps.expand_as(x).contiguous()  # captum.metrics uses .view on attributions


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_infidelity_and_sensitivity_run_with_every_method(cls):
    torch.manual_seed(0)
    model = SmallCNN(width=4, n_classes=3).eval()
    x = torch.randn(2, 3, 8, 8)
    cam = cls(model, model.features)
    attributions = _input_shaped(cam, x, 1)
    assert attributions.shape == x.shape

    def perturb(inputs):
        noise = torch.randn_like(inputs) * 0.05
        return noise, inputs - noise

    infid = infidelity(model, perturb, x, attributions, target=1, n_perturb_samples=4)
    assert infid.shape == (2,) and torch.isfinite(infid).all() and bool((infid >= 0).all())

    def explain(inputs, target):  # captum passes a tuple of inputs and expects a tuple back
        (inp,) = inputs if isinstance(inputs, tuple) else (inputs,)
        return (_input_shaped(cam, inp, target),)

    sens = sensitivity_max(explain, x, target=1, n_perturb_samples=2, perturb_radius=0.01)
    assert sens.shape == (2,) and torch.isfinite(sens).all() and bool((sens >= 0).all())


def test_infidelity_is_zero_for_an_exact_linear_explanation():
    """Sanity of the recipe: for a linear model, gradient*input-like attributions are exact."""
    torch.manual_seed(1)
    lin = torch.nn.Linear(12, 2)
    x = torch.randn(3, 12)
    attributions = lin.weight[1].detach().expand_as(x)

    def perturb(inputs):
        noise = torch.randn_like(inputs)
        return noise, inputs - noise

    infid = infidelity(lin, perturb, x, attributions, target=1, n_perturb_samples=5)
    assert float(infid.abs().max()) < 1e-8
