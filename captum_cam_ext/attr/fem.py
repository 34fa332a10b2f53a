"""FEM, the Feature Explanation Method (Fuad et al., 2020): gradient-free, k-sigma channel weights."""

from __future__ import annotations

from typing import Callable, List, Optional

from torch import Tensor

from captum_cam_ext._engine import CamAttribution, LayerSpec, spatial_dims
from captum_cam_ext.registry import register_method


@register_method(aliases=("feature-explanation-method",))
class LayerFem(CamAttribution):
    r"""FEM: each channel is weighted by the share of its positions that are unusually active.

    .. math::

        w_k = \frac{1}{|S|} \sum_p \big[A_k(p) > \mu_k + k\,\sigma_k\big], \qquad
        L = \sum_k w_k A_k,

    with :math:`\mu_k, \sigma_k` the mean and (population) standard deviation of channel
    :math:`k` over the positions :math:`S`. Class-agnostic: no gradients are taken and ``target``
    only selects the reported outputs. Reference: K. A. A. Fuad, P.-E. Martin, R. Giot,
    R. Bourqui, J. Benois-Pineau, A. Zemmari, "Features understanding in 3D CNNs for actions
    recognition in video", IPTA 2020; pytorch-grad-cam 1.5.7 ``FEM``.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    k : float
        The number of standard deviations above the mean (default 2, the paper's).

    Notes
    -----
    Shapes: activations ``(N, K, *S)`` (images, volumes, sequences), weights ``(N, K, 1, ...)``,
    map ``(N, 1, *S)``.
    """

    name = "fem"
    uses_gradients = False

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
        k: float = 2.0,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        if isinstance(k, bool) or not isinstance(k, (int, float)):
            raise TypeError(f"k must be a number (standard deviations above the mean), got {k!r}")
        self.k = float(k)

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        dims = spatial_dims(activations)
        mean = activations.mean(dim=dims, keepdim=True)
        std = activations.std(dim=dims, keepdim=True, unbiased=False)
        return (activations > mean + self.k * std).to(activations.dtype).mean(dim=dims, keepdim=True)
