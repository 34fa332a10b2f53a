"""Random-CAM (pytorch-grad-cam's ``RandomCAM``): random channel weights, a baseline for evaluation."""

from __future__ import annotations

from typing import Callable, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from captum_cam_ext._engine import CamAttribution, LayerSpec
from captum_cam_ext.registry import register_method

RandomSource = Union[np.random.RandomState, np.random.Generator]


@register_method(aliases=("random",))
class LayerRandomCam(CamAttribution):
    r"""Random-CAM: :math:`L = \sum_k w_k A_k` with :math:`w_k \sim \mathcal{U}(-1, 1)` i.i.d.

    A control for evaluations: a metric that cannot tell a CAM from Random-CAM measures the
    activations, not the explanation. No gradients are taken. Reference: pytorch-grad-cam 1.5.7
    ``RandomCAM``.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    seed : int, optional
        Seeds a private ``numpy.random.RandomState`` created here, consumed by successive calls
        (the same seed gives the same sequence of maps). ``RandomState(seed)`` draws what
        ``np.random.seed(seed)`` then pytorch-grad-cam's ``RandomCAM`` would draw.
    generator : numpy RandomState or Generator, optional
        Draw from this one instead. With neither ``seed`` nor ``generator``, numpy's global
        random state is used (as pytorch-grad-cam).

    Notes
    -----
    Shapes: activations ``(N, K, *S)``, weights ``(N, K, 1, ...)`` drawn in row-major order
    (example by example), map ``(N, 1, *S)``.
    """

    name = "randomcam"
    uses_gradients = False

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
        seed: Optional[int] = None,
        generator: Optional[RandomSource] = None,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        if seed is not None and generator is not None:
            raise ValueError("pass seed= or generator=, not both")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if generator is not None and not isinstance(generator, (np.random.RandomState, np.random.Generator)):
            raise TypeError(
                "generator must be a numpy.random.RandomState or numpy.random.Generator, "
                f"got {type(generator).__name__}"
            )
        self.generator: Optional[RandomSource] = np.random.RandomState(seed) if seed is not None else generator

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        n, k = activations.shape[:2]
        source = self.generator if self.generator is not None else np.random
        draws = source.uniform(-1.0, 1.0, size=(n, k))
        w = torch.from_numpy(np.asarray(draws)).to(activations.device, activations.dtype)
        return w.reshape(n, k, *([1] * (activations.dim() - 2)))
