"""KPCA-CAM (Karmani et al., 2024): the first kernel principal component of the activations."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from captum_cam_ext._engine import CamAttribution, CamDetails, LayerSpec
from captum_cam_ext._linalg import eigh
from captum_cam_ext.registry import register_method

KERNELS = ("linear", "poly", "rbf", "sigmoid", "cosine")


def kernel_matrix(x: Tensor, kernel: str, gamma: float, degree: int, coef0: float) -> Tensor:
    """The kernel matrix ``(N, P, P)`` of the rows of ``x`` ``(N, P, K)`` (scikit-learn's kernel definitions)."""
    if kernel == "rbf":
        sq = (x * x).sum(-1)
        dist = (sq[:, :, None] + sq[:, None, :] - 2 * x @ x.transpose(1, 2)).clamp_min(0)
        return torch.exp(-gamma * dist)
    if kernel == "cosine":
        norm = x.norm(dim=-1, keepdim=True)
        x = x / torch.where(norm > 0, norm, torch.ones_like(norm))
        return x @ x.transpose(1, 2)
    gram = x @ x.transpose(1, 2)
    if kernel == "linear":
        return gram
    if kernel == "poly":
        return (gamma * gram + coef0) ** degree
    return torch.tanh(gamma * gram + coef0)  # sigmoid


def first_kernel_component(
    values: Tensor, kernel: str = "sigmoid", gamma: Optional[float] = None, degree: int = 3, coef0: float = 1.0
) -> Tensor:
    """The projection of each example's positions on its first kernel principal component.

    Parameters
    ----------
    values : Tensor
        ``(N, K, *S)``: ``P = prod(S)`` positions with ``K`` features each, centred over the
        positions before the kernel is applied.
    kernel, gamma, degree, coef0 :
        As :class:`LayerKpcaCam`.

    Returns
    -------
    Tensor
        ``(N, 1, *S)``: :math:`\\sqrt{\\lambda_1}\\, v_1` of the doubly centred kernel matrix, with
        the sign that makes its largest absolute value positive (scikit-learn's convention).
    """
    n, k = values.shape[:2]
    x = torch.nan_to_num(values.reshape(n, k, -1).transpose(1, 2).double())  # (N, P, K)
    x = x - x.mean(dim=1, keepdim=True)
    km = kernel_matrix(x, kernel, 1.0 / k if gamma is None else float(gamma), degree, coef0)
    km = km - km.mean(dim=1, keepdim=True) - km.mean(dim=2, keepdim=True) + km.mean(dim=(1, 2), keepdim=True)
    vals, vecs = eigh((km + km.transpose(1, 2)) / 2)
    v = vecs[:, :, -1] * vals[:, -1:].clamp_min(0).sqrt()
    idx = v.abs().argmax(dim=1, keepdim=True)
    v = v * (torch.sign(v.gather(1, idx)).clamp_min(0) * 2 - 1)
    return v.to(values.dtype).reshape(n, 1, *values.shape[2:])


@register_method(aliases=("kpca",))
class LayerKpcaCam(CamAttribution):
    r"""KPCA-CAM: the map is the first kernel principal component of the activation vectors.

    Each position :math:`p` is a point :math:`a_p \in \mathbb{R}^K` (its channel values, centred
    over the positions); with the kernel :math:`\kappa` and the doubly centred kernel matrix
    :math:`\tilde K = H K H` (:math:`K_{pq} = \kappa(a_p, a_q)`, :math:`H = I - \frac{1}{P}\mathbf{1}\mathbf{1}^\top`),
    the map is :math:`L = \sqrt{\lambda_1}\, v_1`, the first eigenpair of :math:`\tilde K`. The
    sign of an eigenvector is arbitrary; it is fixed so that the map's largest absolute value is
    positive (as Eigen-CAM here, and as scikit-learn's ``KernelPCA``, so the maps equal
    pytorch-grad-cam's). With ``kernel="linear"`` this is Eigen-CAM. Class-agnostic (no
    gradients; ``target`` only selects the reported outputs).

    Reference: S. Karmani, T. Sivakaran, G. Prasad, M. Ali, W. Yang, S. Hasan, "KPCA-CAM: Visual
    Explainability of Deep Computer Vision Models using Kernel PCA", MMSP 2024
    (arXiv:2410.00267); pytorch-grad-cam 1.5.7 ``KPCA_CAM``.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    kernel : str
        ``"sigmoid"`` (default, :math:`\tanh(\gamma\, a^\top b + c_0)`), ``"rbf"``
        (:math:`e^{-\gamma \|a - b\|^2}`), ``"poly"`` (:math:`(\gamma\, a^\top b + c_0)^d`),
        ``"linear"``, ``"cosine"``.
    gamma : float, optional
        Default :math:`1/K`.
    degree : int
        :math:`d` of the polynomial kernel (default 3).
    coef0 : float
        :math:`c_0` (default 1).

    Notes
    -----
    The map is not a weighted sum of channels: :attr:`CamDetails.weights` holds the map itself
    ``(N, 1, *S)`` and ``attr_dim_summation=False`` is not available. One ``P x P``
    eigendecomposition per example (``P`` positions): cheap at CNN heads (7x7), slow beyond a few
    thousand positions.
    """

    name = "kpcacam"
    uses_gradients = False

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
        kernel: str = "sigmoid",
        gamma: Optional[float] = None,
        degree: int = 3,
        coef0: float = 1.0,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma <= 0):
            raise ValueError(f"gamma must be a positive number or None (1 / channels), got {gamma!r}")
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise ValueError(f"degree must be a positive int, got {degree!r}")
        self.kernel = kernel
        self.gamma = gamma
        self.degree = degree
        self.coef0 = float(coef0)

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        return first_kernel_component(activations, self.kernel, self.gamma, self.degree, self.coef0)

    def fuse(self, activations: Tensor, weights: Tensor) -> Tensor:
        return weights

    def eigen_smoothed(self, details: CamDetails) -> Tensor:
        """``eigen_smooth`` leaves KPCA-CAM's map as it is: it already is a principal component (as
        pytorch-grad-cam's ``KPCA_CAM``, which ignores the option)."""
        return details.cam

    def contributions(self, activations: Tensor, weights: Tensor) -> Tensor:
        raise ValueError(
            "KPCA-CAM's map is a kernel principal component, not a sum over channels: attr_dim_summation=False "
            "has no per-channel terms to return; use attr_dim_summation=True"
        )
