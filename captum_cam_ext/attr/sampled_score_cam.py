"""The base of the sampled Score-CAM variants (SS-CAM, IS-CAM), with torchcam's mask convention."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_cam_ext._engine import (
    LayerRecord,
    LayerSpec,
    TargetSpec,
    repeat_args,
    run_forward,
    slice_args,
    spatial_dims,
)
from captum_cam_ext.attr.perturbation import PerturbationCamAttribution, example_target, target_scores

__all__ = ["SampledScoreCam", "normalized_masks"]

_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def normalized_masks(activations: Tensor, size: Tuple[int, ...], eps: float = 1e-8) -> Tensor:
    """torchcam's Score-CAM masks ``(N, K, *size)``: each channel min-max normalised at the layer's
    resolution (``(A - min) / (max - min + eps)``), then resized to ``size`` (linear / bilinear /
    trilinear, ``align_corners=False``).

    pytorch-grad-cam's :class:`~captum_cam_ext.LayerScoreCam` resizes first (``align_corners=True``)
    and normalises after; the two conventions give slightly different masks.
    """
    flat = activations.flatten(2)
    shape = (*activations.shape[:2], *([1] * (activations.dim() - 2)))
    lo = flat.amin(dim=2).reshape(shape)
    hi = flat.amax(dim=2).reshape(shape)
    norm = (activations - lo) / (hi - lo + eps)
    if tuple(norm.shape[2:]) == tuple(size):
        return norm
    return F.interpolate(norm, size=size, mode=_LINEAR[norm.dim() - 2], align_corners=False)


class SampledScoreCam(PerturbationCamAttribution):
    r"""Score-CAM averaged over ``num_samples`` transformed masks:
    :math:`w_k = \mathrm{softmax}_k\big(\frac{1}{n}\sum_{s=1}^n y^c(T_s(M_k) \odot x)\big)`.

    :math:`M_k` are :func:`normalized_masks` at the input's size; a subclass defines the
    transformation :math:`T_s` (:meth:`sample_masks`). The target scores of ``batch_size`` masked
    inputs are computed per forward pass, without gradients; samples are the outer loop (so that
    random transformations draw in the same order as torchcam). Scores of several targets
    ``(N, T)`` come from the same passes.
    """

    num_samples: int = 1

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        batch_size: int = 32,
        layer_call: int = -1,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, batch_size, layer_call)

    def sample_masks(self, masks: Tensor, sample: int) -> Tensor:
        """The masks ``(N, K, *S_in)`` of sample ``sample`` (0-based) from the clean ones."""
        raise NotImplementedError

    def example_scores(
        self,
        unit: int,
        example: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        activations: Tensor,
        record: LayerRecord,
        to_input: bool,
    ) -> Tensor:
        raise NotImplementedError("sampled Score-CAMs score every example in layer_weights")

    def _check_unit(self, record: LayerRecord, unit: int, x0: Tensor) -> None:
        acts = record.activations[unit]
        if record.flat[unit] or x0.dim() != acts.dim():
            raise ValueError(
                f"{type(self).__name__} masks inputs[0] with the layer's upsampled maps, so they need the same number "
                f"of spatial dimensions: inputs[0] has shape {tuple(x0.shape)}, the layer's maps {tuple(acts.shape)}; "
                "pick a convolutional layer (or a reshape_transform to a grid)"
            )

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        if record.tuple_output:
            raise ValueError(f"{type(self).__name__} needs a layer with one tensor output, not a tuple")
        self.warn_if_train_mode()
        target = self.record_target(record)
        n_targets = len(record.targets)
        x0, rest = inputs[0], inputs[1:]
        n = x0.shape[0]
        per_unit: List[Tensor] = []
        with torch.no_grad():
            for u, acts in enumerate(record.activations):
                self._check_unit(record, u, x0)
                masks = normalized_masks(acts, tuple(x0.shape[2:]))
                k = acts.shape[1]
                total = torch.zeros(n, k, n_targets, dtype=acts.dtype, device=acts.device)
                for s in range(self.num_samples):
                    sampled = self.sample_masks(masks, s)
                    for i in range(n):
                        tgt = example_target(target, i)
                        ex_args = slice_args(args, i, i + 1, n)
                        for start, stop in self.chunks(k, self.batch_size):
                            b = stop - start
                            batch = (x0[i : i + 1] * sampled[i, start:stop, None].to(x0.dtype),) + tuple(
                                r[i : i + 1].expand(b, *r.shape[1:]) for r in rest
                            )
                            out = run_forward(self.forward_func, batch, repeat_args(ex_args, b))
                            total[i, start:stop] += target_scores(out, tgt).to(total.dtype)
                per_unit.append(torch.softmax(total / self.num_samples, dim=1))
        return [
            [
                w[:, :, t].reshape(*w.shape[:2], *([1] * len(spatial_dims(a))))
                for w, a in zip(per_unit, record.activations)
            ]
            for t in range(n_targets)
        ]
