"""SS-CAM (Wang et al., 2020): Score-CAM with Gaussian noise on the masks, averaged."""

from __future__ import annotations

from typing import Callable, List, Optional

import torch
from torch import Tensor

from captum_cam_ext._engine import LayerSpec
from captum_cam_ext.attr.sampled_score_cam import SampledScoreCam
from captum_cam_ext.attr.smooth_grad_cam_pp import check_noise_options, cpu_generator, gaussian_noise
from captum_cam_ext.registry import register_method


@register_method(aliases=("smoothedscorecam", "ss-cam"))
class LayerSsCam(SampledScoreCam):
    r"""SS-CAM: Score-CAM weights averaged over noisy masks.

    .. math::

        w_k = \mathrm{softmax}_k\Big(\frac{1}{n}\sum_{s=1}^{n} y^c\big((M_k + \delta_{s,k}) \odot x\big)\Big),
        \qquad \delta_{s,k} \sim \mathcal{N}(0, \sigma^2 I), \qquad L = \sum_k w_k A_k,

    with :math:`M_k` channel :math:`k` min-max normalised at the layer's resolution and resized
    to the input (:func:`~captum_cam_ext.attr.sampled_score_cam.normalized_masks`, torchcam's
    convention). Costs ``num_samples`` Score-CAMs: ``n * K`` forward passes per example, in chunks
    of ``batch_size``, without gradients.

    Reference: H. Wang, R. Naidu, J. Michael, S. S. Kundu, "SS-CAM: Smoothed Score-CAM for Sharper
    Visual Feature Localization", arXiv:2006.14255 (2020); torchcam 0.5 ``SSCAM``.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    batch_size : int
        Masked inputs per forward pass (default 32).
    num_samples : int
        :math:`n` (default 35, torchcam's).
    std : float
        :math:`\sigma`, in mask units (default 2.0, torchcam's).
    seed, generator :
        As :class:`~captum_cam_ext.LayerSmoothGradCamPlusPlus`: a private seeded CPU generator, a
        given one, or (neither) torch's global RNG, which gives torchcam's noise after the same
        ``torch.manual_seed``. The noise ``(N, K, *S_in)`` is drawn per sample for the whole
        chunk of examples.

    Notes
    -----
    Shapes: activations ``(N, K, *S)`` with as many spatial dimensions as ``inputs[0]``
    ``(N, C, *S_in)``; weights ``(N, K, 1, ...)``; map ``(N, 1, *S)``.
    """

    name = "sscam"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        batch_size: int = 32,
        layer_call: int = -1,
        num_samples: int = 35,
        std: float = 2.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, batch_size, layer_call)
        check_noise_options(num_samples, std, seed, generator)
        self.num_samples = num_samples
        self.std = float(std)
        self.generator = cpu_generator(seed, generator)

    def sample_masks(self, masks: Tensor, sample: int) -> Tensor:
        return masks + gaussian_noise(tuple(masks.shape), self.std, self.generator, masks)
