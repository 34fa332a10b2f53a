"""IS-CAM (Naidu et al., 2020): Score-CAM integrated over scaled masks."""

from __future__ import annotations

from typing import Callable, List, Optional

from torch import Tensor

from captum_cam_ext._engine import LayerSpec
from captum_cam_ext.attr.sampled_score_cam import SampledScoreCam
from captum_cam_ext.registry import register_method


@register_method(aliases=("integratedscorecam", "is-cam"))
class LayerIsCam(SampledScoreCam):
    r"""IS-CAM: Score-CAM weights averaged along a path of scaled masks.

    .. math::

        w_k = \mathrm{softmax}_k\Big(\frac{1}{n}\sum_{s=1}^{n} y^c\big(c_s\, M_k \odot x\big)\Big),
        \qquad c_s = \sum_{j=1}^{s} \frac{j}{n}, \qquad L = \sum_k w_k A_k,

    with :math:`M_k` as in :class:`~captum_cam_ext.LayerSsCam`. The coefficients :math:`c_s` are
    torchcam's reading of the paper's integration path (cumulative, so the last ones exceed 1:
    :math:`c_n = (n + 1)/2`). Deterministic. Costs ``num_samples`` Score-CAMs.

    Reference: R. Naidu, A. Ghosh, Y. Maurya, S. R. Nayak K, S. S. Kundu, "IS-CAM: Integrated
    Score-CAM for axiomatic-based explanations", arXiv:2010.03023 (2020); torchcam 0.5 ``ISCAM``.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    batch_size : int
        Masked inputs per forward pass (default 32).
    num_samples : int
        :math:`n` (default 10, torchcam's).

    Notes
    -----
    Shapes as :class:`~captum_cam_ext.LayerSsCam`.
    """

    name = "iscam"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        batch_size: int = 32,
        layer_call: int = -1,
        num_samples: int = 10,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, batch_size, layer_call)
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
        self.num_samples = num_samples

    def coefficient(self, sample: int) -> float:
        """:math:`c_s` for the 0-based sample ``sample`` (``s = sample + 1``)."""
        s = sample + 1
        return s * (s + 1) / (2 * self.num_samples)

    def sample_masks(self, masks: Tensor, sample: int) -> Tensor:
        return self.coefficient(sample) * masks
