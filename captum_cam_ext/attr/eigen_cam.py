"""Eigen-CAM (Muhammad & Yeasin, 2020) and Eigen-Grad-CAM: first principal component maps."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from captum_cam_ext._engine import CamAttribution, GradientCamAttribution, spatial_dims
from captum_cam_ext._linalg import eigh
from captum_cam_ext.registry import register_method


def first_component_weights(values: Tensor) -> Tensor:
    """Channel weights ``(N, K, 1, ...)``: the first right singular vector of the centred
    position-by-channel matrix of ``values`` ``(N, K, *S)``, batched.

    Computed from the smaller of the two Gram matrices with one batched ``eigh`` in float64
    (``P x P`` when there are fewer positions ``P`` than channels ``K``, as at CNN heads), which
    is much cheaper than an SVD of the ``P x K`` matrix. The sign of a singular vector is
    arbitrary; we fix it so that the projection's largest absolute value is positive (the map
    highlights the dominant pattern, not its negative).
    """
    n, k = values.shape[:2]
    x = values.reshape(n, k, -1).transpose(1, 2).double()  # (N, P, K)
    x = torch.nan_to_num(x - x.mean(dim=1, keepdim=True))
    if x.shape[1] < k:
        _, vecs = eigh(x @ x.transpose(1, 2))  # (N, P, P), ascending eigenvalues
        v = torch.einsum("npk,np->nk", x, vecs[:, :, -1])
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    else:
        _, vecs = eigh(x.transpose(1, 2) @ x)  # (N, K, K)
        v = vecs[:, :, -1]
    proj = torch.einsum("npk,nk->np", x, v)
    idx = proj.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(proj.gather(1, idx)).clamp_min(0) * 2 - 1
    return (v * sign).to(values.dtype).reshape(n, k, *([1] * (values.dim() - 2)))


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
