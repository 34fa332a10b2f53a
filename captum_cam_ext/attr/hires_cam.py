"""HiResCAM (Draelos & Carin, 2020): the element-wise product of gradients and activations."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution
from captum_cam_ext.registry import register_method


@register_method
class LayerHiResCam(GradientCamAttribution):
    r"""HiResCAM: per-position weights :math:`W_k(p) = \partial y^c/\partial A_k(p)`.

    The map :math:`\sum_k W_k(p) A_k(p)` is exactly zero where the output does not depend on the
    activations, so it cannot "see through walls".
    """

    name = "hirescam"

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        assert gradients is not None
        return gradients
