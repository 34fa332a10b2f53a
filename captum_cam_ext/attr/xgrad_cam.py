"""XGrad-CAM (Fu et al., 2020): gradients weighted by the normalised activations."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution, spatial_dims
from captum_cam_ext.registry import register_method


@register_method
class LayerXGradCam(GradientCamAttribution):
    r"""XGrad-CAM: :math:`w_k = \sum_p \frac{A_k(p)}{\sum_q A_k(q)}\, \partial y^c / \partial A_k(p)`."""

    name = "xgradcam"
    eps = 1e-7

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        assert gradients is not None
        total = activations.sum(dim=spatial_dims(activations), keepdim=True)
        return (gradients * activations / (total + self.eps)).sum(dim=spatial_dims(activations), keepdim=True)
