"""Eigen-CAM (Muhammad & Yeasin, 2020) and Eigen-Grad-CAM: first principal component maps."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from captum_cam_ext._engine import CamAttribution, GradientCamAttribution, spatial_dims
from captum_cam_ext._linalg import first_component_weights
from captum_cam_ext.registry import register_method


def _centred_sum(weighted: Tensor) -> Tensor:
    """``sum_k weighted_k(p)`` minus its spatial mean: the projection of centred data."""
    values = weighted.sum(dim=1, keepdim=True)
    return values - values.mean(dim=spatial_dims(values), keepdim=True)


@register_method
class LayerEigenCam(CamAttribution):
    r"""Eigen-CAM: the projection of the centred activations on their first principal component.

    Class-agnostic (no gradients, ``target`` only selects the reported outputs). The weights are
    the component's channel loadings ``(N, K, 1, 1)``; the fused map is
    :math:`\sum_k v_k (A_k(p) - \bar A_k)`.
    """

    name = "eigencam"
    uses_gradients = False

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        return first_component_weights(activations)

    def fuse(self, activations: Tensor, weights: Tensor) -> Tensor:
        return _centred_sum(weights * activations)


@register_method
class LayerEigenGradCam(GradientCamAttribution):
    r"""Eigen-Grad-CAM: the first principal component of gradients * activations.

    The weights are per position, :math:`W_k(p) = v_k\, \partial y^c/\partial A_k(p)`, so that
    :math:`\sum_k W_k A_k` is the (uncentred) projection; the fused map is centred.
    """

    name = "eigengradcam"

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        assert gradients is not None
        return first_component_weights(gradients * activations) * gradients

    def fuse(self, activations: Tensor, weights: Tensor) -> Tensor:
        return _centred_sum(weights * activations)
