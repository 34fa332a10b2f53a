"""Grad-CAM++ (Chattopadhay et al., 2018), eq. 19 with the exponential-output shortcut."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution, spatial_dims
from captum_cam_ext.registry import register_method


@register_method
class LayerGradCamPlusPlus(GradientCamAttribution):
    r"""Grad-CAM++: positive gradients weighted by the second/third-order coefficients.

    :math:`a_k(p) = g^2 / (2 g^2 + \sum_q A_k(q)\, g^3)` with :math:`g = \partial y^c/\partial A_k(p)`
    (0 where :math:`g = 0`), :math:`w_k = \sum_p a_k(p)\,\mathrm{ReLU}(g)`.
    """

    name = "gradcam++"
    eps = 1e-6

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        assert gradients is not None
        g2 = gradients.pow(2)
        g3 = g2 * gradients
        total = activations.sum(dim=spatial_dims(activations), keepdim=True)
        alpha = g2 / (2 * g2 + total * g3 + self.eps)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        return (alpha * gradients.clamp(min=0)).sum(dim=spatial_dims(activations), keepdim=True)
