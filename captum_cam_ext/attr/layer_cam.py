"""LayerCAM (Jiang et al., 2021): positive gradients as per-position weights."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution
from captum_cam_ext.registry import register_method


@register_method
class LayerCam(GradientCamAttribution):
    r"""LayerCAM: per-position weights :math:`W_k(p) = \mathrm{ReLU}(\partial y^c/\partial A_k(p))`."""

    name = "layercam"

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        assert gradients is not None
        return gradients.clamp(min=0)
