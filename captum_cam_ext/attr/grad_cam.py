"""Grad-CAM (Selvaraju et al., 2017): channel weights are the spatially averaged gradients."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution, spatial_dims
from captum_cam_ext.registry import register_method


@register_method
class LayerGradCam(GradientCamAttribution):
    r"""Grad-CAM, numerically identical to :class:`captum.attr.LayerGradCam`.

    Weights :math:`w_k = \frac{1}{hw}\sum_p \partial y^c / \partial A_k(p)`; the map is
    :math:`\sum_k w_k A_k`. Unlike Captum's class it can trim the autograd graph before the layer,
    fuse several layers, upsample and normalise (see :class:`~captum_cam_ext.CamAttribution`).

    Examples
    --------
    >>> cam = LayerGradCam(model, model.layer4)
    >>> maps = cam.attribute(images, target=3, relu_attributions=True)  # (N, 1, 7, 7)
    """

    name = "gradcam"

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        assert gradients is not None
        return gradients.mean(dim=spatial_dims(activations), keepdim=True)
