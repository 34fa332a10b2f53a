"""Confidence-based faithfulness metrics: Average Drop, Average Increase, Average Gain.

Definitions (Grad-CAM++, Chattopadhay et al. 2018; Average Gain from Opti-CAM, Zhang et al. 2023),
for example ``i``, target class ``c`` and saliency map ``L_i`` (bilinearly upsampled to the input
size and min-max normalised to [0, 1]):

* ``Y_i = p(c | x_i)``: the probability (softmax by default) on the clean input;
* ``O_i = p(c | L_i * x_i)``: the probability on the *explanation image*;
* drop ``= max(0, Y_i - O_i) / (Y_i + eps)``            (Average Drop, lower is better);
* increase ``= 1[O_i > Y_i]`` (strict)                    (Average Increase / Increase in
  Confidence, higher is better);
* gain ``= max(0, O_i - Y_i) / (1 - Y_i + eps)``         (Average Gain, higher is better).

Each is averaged over the examples and reported in percent. ``eps = 1e-7`` as in torchcam.

Masking space. By default the map multiplies the tensor the model receives (the *normalised*
image tensor), as torchcam's ``ClassificationMetric`` and most published code do. Pass
``denormalize``/``renormalize`` to mask in pixel space instead (``renormalize(denormalize(x) * L)``,
as in the Opti-CAM / CA-Stream code), and/or ``baseline`` to blend towards a value other than 0:
``baseline + L * (x - baseline)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import Tensor

from captum_cam_ext.metrics._common import (
    EPS,
    ProbabilityFn,
    TargetType,
    as_float,
    check_batch_size,
    check_inputs,
    check_maps_or_method,
    format_args,
    forward,
    iter_chunks,
    prepare_masks,
    target_scores,
    to_probabilities,
)
from captum_cam_ext.metrics.registry import register_metric

__all__ = [
    "ConfidenceResult",
    "confidence_metrics",
    "average_drop",
    "average_increase",
    "average_gain",
]

# --------------------------------------------------------------------------------------------
# Confidence metrics
# --------------------------------------------------------------------------------------------


@dataclass
class ConfidenceResult:
    """Per-example and averaged confidence metrics.

    Attributes
    ----------
    drop, increase, gain : Tensor (N,)
        Per-example values **in percent** (``increase`` is 0 or 100), so that
        ``drop.mean()`` is the Average Drop. Concatenate them across processes before averaging.
    probs : Tensor (N,)
        ``Y``: probability of the target on the clean inputs.
    masked_probs : Tensor (N,)
        ``O``: probability of the target on the explanation images.
    target : Tensor (N,) or None
        Class index used per example (None for a callable target).
    mask_area : Tensor (N,)
        Mean of the mask that multiplied each input (the normalised, upsampled map), in [0, 1]
        for normalised maps. The confidence metrics reward a large area whatever the ranking of
        the pixels, so compare methods at equal area (see
        :func:`captum_cam_ext.metrics.controls.area_controls`).
    """

    drop: Tensor
    increase: Tensor
    gain: Tensor
    probs: Tensor
    masked_probs: Tensor
    target: Optional[Tensor]
    mask_area: Tensor

    @property
    def average_drop(self) -> float:
        """Average Drop in %, lower is better."""
        return as_float(self.drop)

    @property
    def average_increase(self) -> float:
        """Average Increase (Increase in Confidence) in %, higher is better."""
        return as_float(self.increase)

    @property
    def average_gain(self) -> float:
        """Average Gain in %, higher is better."""
        return as_float(self.gain)

    @property
    def mean_mask_area(self) -> float:
        """Mean mask area over the examples (fraction of the input kept, in [0, 1])."""
        return as_float(self.mask_area)

    def summary(self) -> Dict[str, float]:
        """The three averages (in %) and the mean mask area (a fraction) as a dict."""
        return {
            "average_drop": self.average_drop,
            "average_increase": self.average_increase,
            "average_gain": self.average_gain,
            "mask_area": self.mean_mask_area,
        }


def _apply_mask(
    x: Tensor,
    mask: Tensor,
    baseline: Union[float, Tensor],
    denormalize: Optional[Callable[[Tensor], Tensor]],
    renormalize: Optional[Callable[[Tensor], Tensor]],
) -> Tensor:
    z = denormalize(x) if denormalize is not None else x
    if isinstance(baseline, Tensor):
        baseline = baseline.to(z.device, z.dtype)
    if isinstance(baseline, (int, float)) and baseline == 0:
        masked = z * mask
    else:
        masked = baseline + mask * (z - baseline)
    return renormalize(masked) if renormalize is not None else masked


def confidence_metrics(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    *,
    attribution_method: Any = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    max_examples_per_batch: Optional[int] = None,
    normalize: Optional[str] = "after_upsample",
    interpolate_mode: str = "bilinear",
    probability_fn: ProbabilityFn = "softmax",
    baseline: Union[float, Tensor] = 0.0,
    denormalize: Optional[Callable[[Tensor], Tensor]] = None,
    renormalize: Optional[Callable[[Tensor], Tensor]] = None,
    channel_reduction: Optional[str] = None,
) -> ConfidenceResult:
    """Average Drop, Average Increase and Average Gain, per example and averaged (in %).

    Parameters
    ----------
    forward_func : callable
        The model: ``forward_func(inputs, *additional_forward_args) -> (N, num_classes)``. It is
        not switched to eval mode; pass an eval-mode model.
    inputs : Tensor (N, C, H, W)
        The (preprocessed) inputs the model receives.
    attributions : Tensor (N, 1, h, w) or (N, 1, H, W), optional
        Saliency maps. Upsampled to ``(H, W)`` and min-max normalised per example inside.
        Exactly one of ``attributions`` and ``attribution_method`` must be given.
    attribution_method : object with ``.attribute(inputs, target=..., **kwargs)``, optional
        Computes the maps chunk by chunk (e.g. a ``LayerGradCam``); it receives the resolved class
        indices (N,) as ``target`` and ``additional_forward_args`` when given.
    attribute_kwargs : dict, optional
        Extra keyword arguments for ``attribution_method.attribute``.
    target : None, int, sequence of int, LongTensor (N,), or callable
        ``None`` = the class predicted on the clean input. A callable maps the probabilities
        ``(N, C)`` to one score per example (with ``attribution_method`` the same callable is
        passed on to ``.attribute``, where it receives the raw model outputs).
    additional_forward_args : any, optional
        Extra model arguments; tensors with first dimension N are sliced per batch.
    max_examples_per_batch : int, optional
        Examples per chunk (None = all at once).
    normalize : {"after_upsample", "before_upsample", "none"}
        Per-example min-max normalisation of the maps: after bilinear upsampling (default; the
        mask spans exactly [0, 1]), before it (torchcam: its CAMs are normalised at layer
        resolution, then resized), or not at all (maps used as given). Constant maps become 0.
    interpolate_mode : str
        ``F.interpolate`` mode for upsampling (``align_corners=False``).
    probability_fn : "softmax" (default), "sigmoid", "identity"/None or callable
        Turns the model outputs into probabilities.
    baseline : float or Tensor
        The masked input is ``baseline + L * (x - baseline)`` (0: ``L * x``).
    denormalize, renormalize : callable, optional
        Mask in another space: ``renormalize(baseline + L * (denormalize(x) - baseline))``.
        E.g. mask the [0, 1] image and normalise again.
    channel_reduction : {"sum", "mean", "abs_sum"} or None
        How to turn multi-channel attributions (e.g. input-gradient methods) into one map;
        None raises on multi-channel attributions.

    Returns
    -------
    ConfidenceResult
        Per-example ``drop``, ``increase``, ``gain`` (in %), ``probs``, ``masked_probs``,
        ``mask_area`` and the averages ``average_drop``, ``average_increase``, ``average_gain``
        (in %) and ``mean_mask_area``.

    Raises
    ------
    ValueError
        Empty batch, shape mismatch between maps and inputs, NaN/Inf in maps or inputs, bad
        option values.
    TypeError
        Wrong argument types, or both/neither of ``attributions`` and ``attribution_method``.
    """
    x_all = check_inputs(inputs)
    n = x_all.shape[0]
    maps_all = check_maps_or_method(attributions, attribution_method, n, channel_reduction)
    bs = check_batch_size(max_examples_per_batch, n)
    size = (x_all.shape[-2], x_all.shape[-1])

    drops, incs, gains, ys, os_, tgts, areas = [], [], [], [], [], [], []
    callable_target = callable(target) and not isinstance(target, Tensor)
    chunks = iter_chunks(
        forward_func, x_all, maps_all, attribution_method, attribute_kwargs, target,
        format_args(additional_forward_args), bs, channel_reduction,
    )  # fmt: skip
    for ch in chunks:
        masks = prepare_masks(ch.maps, size, normalize, interpolate_mode).to(ch.x.dtype)
        areas.append(masks.detach().flatten(1).float().mean(1))
        with torch.no_grad():
            y = target_scores(to_probabilities(ch.outputs, probability_fn), ch.target)
            xm = _apply_mask(ch.x, masks, baseline, denormalize, renormalize)
            o = target_scores(to_probabilities(forward(forward_func, xm, ch.args), probability_fn), ch.target)
        y, o = y.detach().float(), o.detach().float()
        drops.append(torch.relu(y - o) / (y + EPS))
        incs.append((o > y).float())
        gains.append(torch.relu(o - y) / (1.0 - y + EPS))
        ys.append(y)
        os_.append(o)
        if isinstance(ch.target, Tensor):
            tgts.append(ch.target.detach())

    return ConfidenceResult(
        drop=torch.cat(drops) * 100.0,
        increase=torch.cat(incs) * 100.0,
        gain=torch.cat(gains) * 100.0,
        probs=torch.cat(ys),
        masked_probs=torch.cat(os_),
        target=None if callable_target else torch.cat(tgts),
        mask_area=torch.cat(areas),
    )


def average_drop(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    **kwargs: Any,
) -> float:
    """Average Drop in %, ``(100/N) sum_i max(0, Y_i - O_i) / Y_i``; lower is better.

    Same arguments as :func:`confidence_metrics`.
    """
    return confidence_metrics(forward_func, inputs, attributions, **kwargs).average_drop


def average_increase(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    **kwargs: Any,
) -> float:
    """Average Increase (Increase in Confidence) in %, ``(100/N) sum_i 1[O_i > Y_i]``.

    Higher is better. Same arguments as :func:`confidence_metrics`.
    """
    return confidence_metrics(forward_func, inputs, attributions, **kwargs).average_increase


def average_gain(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    **kwargs: Any,
) -> float:
    """Average Gain in %, ``(100/N) sum_i max(0, O_i - Y_i) / (1 - Y_i)``; higher is better.

    Same arguments as :func:`confidence_metrics`.
    """
    return confidence_metrics(forward_func, inputs, attributions, **kwargs).average_gain


def _compute_for_evaluate(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Tensor,
    *,
    indices: Optional[Tensor] = None,
    **options: Any,
) -> Dict[str, Tensor]:
    res = confidence_metrics(forward_func, inputs, maps, target=target, **options)
    return {
        "average_drop": res.drop,
        "average_increase": res.increase,
        "average_gain": res.gain,
        "mask_area": res.mask_area,
    }


register_metric(
    "average_drop", higher_is_better=False, unit="%", group="confidence", compute=_compute_for_evaluate,
    label="AD", position=10, default=True,
    description="relative drop of the target probability when the input is multiplied by the map; "
    "rewards large maps",
)  # fmt: skip
register_metric(
    "average_increase", higher_is_better=True, unit="%", group="confidence", compute=_compute_for_evaluate,
    label="AI", position=11, default=True,
    description="share of examples whose target probability rises on the masked input; rewards large maps",
)  # fmt: skip
register_metric(
    "average_gain", higher_is_better=True, unit="%", group="confidence", compute=_compute_for_evaluate,
    label="AG", position=12, default=True,
    description="relative gain of the target probability on the masked input; rewards large maps",
)  # fmt: skip
register_metric(
    "mask_area", higher_is_better=None, unit="fraction", group="confidence", compute=_compute_for_evaluate,
    label="area", position=13, decimals=3, companion=True,
    description="mean of the normalised, upsampled map that multiplies the input; AD/AI/AG reward a large "
    "area, so read them next to it",
)  # fmt: skip
