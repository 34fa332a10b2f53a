"""Grad-CAM of the masked CNN at initialization: the closed forms and their Monte-Carlo reference.

:class:`GradCamAtInitAnalyzer` joins :class:`~captum_cam_ext.theory.closed_form.MaskedCnnClosedForm`
(the laws, in :mod:`captum_cam_ext.theory.closed_form`) and the Monte-Carlo estimate of
:mod:`captum_cam_ext.theory.monte_carlo`, which runs the package's own CAM classes on sampled
networks.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from torch import Tensor, nn

from .closed_form import CLOSED_FORM_METHODS, MaskedCnnClosedForm, chi_mean_binomial
from .masked_cnn import BatchedMaskedCNN
from .monte_carlo import MonteCarloResult, run_monte_carlo, sample_networks

__all__ = [
    "GradCamAtInitAnalyzer",
    "MonteCarloResult",
    "chi_mean_binomial",
    "CLOSED_FORM_METHODS",
]


class GradCamAtInitAnalyzer(MaskedCnnClosedForm):
    """Closed forms and Monte-Carlo for CAM maps of the masked CNN at initialization.

    Parameters
    ----------
    in_channels, height, width : int
        Input shape ``(C, H, W)``.
    kernel_size : int
        Convolution kernel ``k`` (valid, stride 1): feature grid ``H' x W'``.
    n_filters : int
        ``V``.
    visible_rows : int
        Number of top feature rows read by the head; the other ``H' - visible_rows`` rows are ``M``.
    sigma_w, sigma_theta : float
        Initialization standard deviations.
    bias : bool
        Whether the convolution has a bias (drawn ``N(0, sigma_w^2)``).
    pool_size : int
        ``s``: the authors' model, conv -> ReLU -> ``s x s`` max-pool -> masked dense.
        ``visible_rows`` then counts rows of the pooled grid, and ``expected_map`` (and every map)
        is on the conv grid.

    Notes
    -----
    The closed forms (``expected_map``, ``positive_probability``, ``expected_leak``,
    ``conditional_expected_map``, ``conditional_positive_probability``) are documented in
    :mod:`captum_cam_ext.theory.closed_form`.

    Examples
    --------
    >>> an = GradCamAtInitAnalyzer(1, 8, 8, 3, 5, 3, sigma_w=0.7, sigma_theta=1.3)
    >>> x = torch.ones(1, 8, 8)
    >>> an.expected_map(x).shape
    torch.Size([1, 1, 6, 6])
    >>> pooled = GradCamAtInitAnalyzer(1, 9, 9, 2, 6, 2, pool_size=2)  # 8x8 conv grid, 4x4 pooled
    >>> pooled.expected_map(torch.ones(1, 9, 9)).shape
    torch.Size([1, 1, 8, 8])
    """

    def sample_networks(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        n_outputs: int = 1,
        conv_weight: Optional[Tensor] = None,
        conv_bias: Optional[Tensor] = None,
        hidden: Optional[int] = None,
    ) -> BatchedMaskedCNN:
        """``n`` independent networks at initialization, as one module (float32).

        With ``conv_weight`` ``(V, C, k, k)`` (and ``conv_bias`` ``(V,)``) the convolution is fixed
        and only the head is drawn (the setting of :meth:`conditional_expected_map`).  With
        ``hidden`` the head is ``Linear(V*r*W', hidden) -> ReLU -> Linear(hidden, n_outputs)``
        (weights ``N(0, sigma_theta^2)``, biases 0), as ``masked_cnn(..., hidden=hidden)``.
        """
        return sample_networks(self, n, generator, n_outputs, conv_weight, conv_bias, hidden)

    def monte_carlo(
        self,
        x: Tensor,
        n_samples: int = 20000,
        seed: int = 0,
        method: Optional[type] = None,
        batch: int = 4096,
        cam_kwargs: Optional[Dict[str, Any]] = None,
        attribute_kwargs: Optional[Dict[str, Any]] = None,
        conv_weight: Optional[Union[Tensor, nn.Module]] = None,
        hidden: Optional[int] = None,
        target: Union[int, str] = 0,
        n_outputs: Optional[int] = None,
    ) -> MonteCarloResult:
        """Run a CAM class of this package on ``n_samples`` networks sampled at initialization.

        Networks are drawn ``batch`` at a time as one :class:`BatchedMaskedCNN` and the CAM is
        called once per chunk with the image repeated (row ``i`` = network ``i``; the network index
        also travels as ``additional_forward_args`` so that perturbation methods, which expand the
        batch, keep each masked copy on its own network).

        Parameters
        ----------
        x : Tensor
            One image, ``(C, H, W)`` or ``(1, C, H, W)``.
        n_samples : int
            Number of networks.
        seed : int
            Seed of the draws.
        method : CAM class, optional
            ``LayerGradCam`` (default) or any other CAM class of the package
            (constructor ``method(forward_func, layer, **cam_kwargs)``).  Always called with
            ``relu_attributions=True``.
        batch : int
            Networks per chunk.
        cam_kwargs, attribute_kwargs : dict, optional
            Extra arguments of the CAM constructor / of ``attribute``.
        conv_weight : Tensor or nn.Module, optional
            Fix the convolution (``(V, C, k, k)`` or a model with ``.conv``) and draw only the
            head: the estimate is then compared with :meth:`conditional_expected_map` (Grad-CAM,
            XGrad-CAM, HiResCAM, LayerCAM).
        hidden : int, optional
            Sample networks with a hidden dense layer (see :meth:`sample_networks`).  No closed
            form then (``expected``/``z`` are None); the wall still holds exactly.
        target : int or ``"argmax"``
            The logit explained: a fixed index (default 0; the closed forms hold for any fixed
            index), or ``"argmax"``, each sampled network's predicted class (what the authors'
            code explains).  With ``"argmax"`` only the Grad-CAM law given a fixed convolution
            is known (``conv_weight=``); otherwise ``expected`` is None.
        n_outputs : int, optional
            Number of logits of the sampled networks (default 1, and 10 with
            ``target="argmax"``, as the authors' MNIST model).

        Returns
        -------
        MonteCarloResult
        """
        return run_monte_carlo(self, x, n_samples, seed, method, batch, cam_kwargs,
                               attribute_kwargs, conv_weight, hidden, target, n_outputs)
