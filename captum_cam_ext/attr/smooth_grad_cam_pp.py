"""Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with derivatives averaged over noisy inputs."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution, LayerRecord, LayerSpec, TargetSpec, spatial_dims
from captum_cam_ext.registry import register_method


def check_noise_options(num_samples: Any, std: Any, seed: Any, generator: Any) -> None:
    """Validate the options shared by the noisy methods (``ValueError``/``TypeError`` otherwise)."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or std < 0:
        raise ValueError(f"std must be a non-negative number, got {std!r}")
    if seed is not None and generator is not None:
        raise ValueError("pass seed= or generator=, not both")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")


def cpu_generator(seed: Optional[int], generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    """A private CPU generator seeded with ``seed``, else ``generator`` (None: torch's global RNG)."""
    return torch.Generator().manual_seed(seed) if seed is not None else generator


def gaussian_noise(shape: Tuple[int, ...], std: float, generator: Optional[torch.Generator], like: Tensor) -> Tensor:
    """``N(0, std^2)`` noise of ``shape``, drawn on the CPU (the same numbers on every device, and
    the numbers torchcam draws after ``torch.manual_seed``) and moved to ``like``'s device and dtype."""
    noise = torch.normal(0.0, float(std), size=shape, generator=generator)
    return noise.to(like.device, like.dtype)


@register_method(aliases=("smoothgradcampp", "smoothgradcamplusplus"))
class LayerSmoothGradCamPlusPlus(GradientCamAttribution):
    r"""Smooth Grad-CAM++: Grad-CAM++'s coefficients from derivatives averaged over noisy copies.

    With :math:`g^{(s)} = \partial y^c / \partial A` at the input :math:`x + \epsilon_s`,
    :math:`\epsilon_s \sim \mathcal{N}(0, \sigma^2 I)`, :math:`s = 1..n`, and
    :math:`\overline{g^m} = \frac{1}{n}\sum_s (g^{(s)})^m`:

    .. math::

        \alpha_k(p) = \frac{\overline{g^2}_k(p)}{2\,\overline{g^2}_k(p) + \sum_q A_k(q)\,
        \overline{g^3}_k(p) + \varepsilon}, \qquad
        w_k = \sum_p \alpha_k(p)\, \mathrm{ReLU}\big(\overline{g}_k(p)\big), \qquad
        L = \sum_k w_k A_k,

    with :math:`A` the activations of the clean input and :math:`\varepsilon = 10^{-8}`. One
    forward and one backward pass per noisy copy (plus the clean pass).

    Reference: D. Omeiza, S. Speakman, C. Cintas, K. Weldemariam, "Smooth Grad-CAM++: An Enhanced
    Inference Level Visualization Technique for Deep Convolutional Neural Network Models",
    arXiv:1908.01224 (2019); torchcam 0.5 ``SmoothGradCAMpp``. The second- and third-order terms
    are torchcam's (averaged powers of the gradient). torchcam 0.5 also takes the ReLU'd gradient
    and the activations of the final sum from the *last* noisy copy; ``torchcam_compat=True``
    reproduces that exactly (same seed, same map), the default uses the average gradient and the
    clean activations.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    num_samples : int
        :math:`n`, noisy copies (default 4, torchcam's).
    std : float
        :math:`\sigma`, in the units of ``inputs[0]`` (default 0.3, torchcam's); only
        ``inputs[0]`` is perturbed.
    seed : int, optional
        Seeds a private CPU ``torch.Generator`` created here, consumed by successive calls.
    generator : torch.Generator, optional
        A CPU generator to draw from instead. With neither, torch's global RNG is used, so
        ``torch.manual_seed(s)`` before a call gives torchcam's noise after the same seed.
    torchcam_compat : bool
        Reproduce torchcam 0.5 (see above). The weights are then per position,
        :math:`w_k A^{(n)}_k(p)` with :math:`A^{(n)}` the last noisy copy's activations, and the
        map is their channel sum.

    Notes
    -----
    Shapes: activations ``(N, K, *S)``, weights ``(N, K, 1, ...)``, map ``(N, 1, *S)``. The noise
    is drawn per chunk of ``internal_batch_size`` examples, sample by sample (``(n_chunk, *x.shape[1:])``
    each), so chunking changes which noise an example gets.
    """

    name = "smoothgradcam++"
    eps = 1e-8
    #: Several passes of its own (one per noisy copy): MultiCam's shared pass cannot serve it.
    method_kind = "composite"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
        num_samples: int = 4,
        std: float = 0.3,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        torchcam_compat: bool = False,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        check_noise_options(num_samples, std, seed, generator)
        self.num_samples = num_samples
        self.std = float(std)
        self.generator = cpu_generator(seed, generator)
        self.torchcam_compat = bool(torchcam_compat)

    def _noisy_targets(self, record: LayerRecord) -> List[TargetSpec]:
        # the clean pass's classes (None -> arg-max of the clean output), or the target as given
        return [i if i is not None else t for i, t in zip(record.indices, record.targets)]

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        targets = self._noisy_targets(record)
        acts = record.activations
        n_t, n_u = len(targets), len(acts)
        g1 = [[torch.zeros_like(a) for a in acts] for _ in range(n_t)]
        g2 = [[torch.zeros_like(a) for a in acts] for _ in range(n_t)]
        g3 = [[torch.zeros_like(a) for a in acts] for _ in range(n_t)]
        last: Optional[LayerRecord] = None
        x0 = inputs[0]
        for _ in range(self.num_samples):
            noisy = (x0 + gaussian_noise(tuple(x0.shape), self.std, self.generator, x0),) + tuple(inputs[1:])
            last = self.record(noisy, targets, args, to_input, with_gradients=True)
            for t in range(n_t):
                for u in range(n_u):
                    g = last.gradients[t][u]
                    g1[t][u] += g
                    g2[t][u] += g * g
                    g3[t][u] += g * g * g
        assert last is not None
        out = []
        for t in range(n_t):
            row = []
            for u, a in enumerate(acts):
                dims = spatial_dims(a)
                m2, m3 = g2[t][u] / self.num_samples, g3[t][u] / self.num_samples
                alpha = m2 / (2 * m2 + (m3 * a).sum(dim=dims, keepdim=True) + self.eps)
                grad = last.gradients[t][u] if self.torchcam_compat else g1[t][u] / self.num_samples
                w = (alpha * grad.clamp(min=0)).sum(dim=dims, keepdim=True)
                row.append(w * last.activations[u] if self.torchcam_compat else w)
            out.append(row)
        return out

    def fuse(self, activations: Tensor, weights: Tensor) -> Tensor:
        if self.torchcam_compat:  # the weights already hold w_k * A_k of the last noisy copy
            return weights.sum(dim=1, keepdim=True)
        return super().fuse(activations, weights)

    def contributions(self, activations: Tensor, weights: Tensor) -> Tensor:
        return weights if self.torchcam_compat else super().contributions(activations, weights)
