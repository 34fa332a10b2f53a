"""Grad-CAM element-wise (pytorch-grad-cam's ``GradCAMElementWise``): positive gradient-activation products."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution
from captum_cam_ext.registry import register_method


@register_method(aliases=("gradcam-elementwise", "elementwise"))
class LayerGradCamElementWise(GradientCamAttribution):
    r"""Grad-CAM element-wise: :math:`L(p) = \sum_k \mathrm{ReLU}\big(g_k(p)\, A_k(p)\big)`,
    :math:`g_k(p) = \partial y^c / \partial A_k(p)`.

    Like HiResCAM (:math:`\sum_k g_k A_k`) but each channel's product is clipped at zero before
    the channel sum, so channels cannot cancel each other. Reference: pytorch-grad-cam 1.5.7
    ``GradCAMElementWise`` (J. Gildenblat); no paper.

    The weights are per position, :math:`W_k(p) = g_k(p)\,[g_k(p) A_k(p) > 0]`, so that
    :math:`W_k A_k = \mathrm{ReLU}(g_k A_k)` (these are the terms returned by
    ``attr_dim_summation=False``). Shapes as :class:`~captum_cam_ext.CamAttribution`: activations
    and gradients ``(N, K, *S)``, map ``(N, 1, *S)``.
    """

    name = "gradcamelementwise"

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        assert gradients is not None
        return gradients * (gradients * activations > 0).to(gradients.dtype)
