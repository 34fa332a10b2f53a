"""Causal metrics: Deletion and Insertion AUC (RISE, Petsiuk et al. 2018).

Pixels (spatial positions, shared across channels) are ranked by saliency, most salient first
(the map is bilinearly upsampled to the input size; ties keep raster order).

* **Deletion** starts from the input and replaces the ``k`` most salient pixels with the
  substrate (zeros by default), for ``k = 0, step, 2*step, ..., H*W``. Lower AUC is better.
* **Insertion** starts from the substrate (a Gaussian blur of the input by default) and restores
  the ``k`` most salient original pixels. Higher AUC is better.

After each step the target-class probability (softmax by default) is recorded; the curve
``a_0..a_S`` (``S + 1`` points) is summarised by the normalised trapezoid area used by RISE,
``(sum(a) - a_0/2 - a_S/2) / S`` (``x_axis="steps"``, uniformly spaced steps), or by the
trapezoid over the actual fraction of changed pixels (``x_axis="fraction"``, which differs only
when the last step is partial).

All perturbed inputs are built with vectorised ``torch.where`` on rank masks and scored in chunks
of ``max_forwards_per_batch`` under ``torch.no_grad()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Union, cast

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_cam_ext._maps import upsample_maps
from captum_cam_ext.metrics._common import (
    ProbabilityFn,
    TargetType,
    check_batch_size,
    check_inputs,
    check_maps_or_method,
    check_positive_int,
    format_args,
    forward,
    index_args,
    iter_chunks,
    target_scores,
    to_probabilities,
)
from captum_cam_ext.metrics.registry import register_metric

__all__ = [
    "CausalResult",
    "insertion_auc",
    "deletion_auc",
    "gaussian_blur",
    "perturbation_counts",
    "normalized_auc",
]

SubstrateType = Union[str, float, Tensor, Callable[[Tensor], Tensor]]
_PADDINGS = ("zeros", "reflect", "replicate")


@dataclass
class CausalResult:
    """Deletion or insertion curves and their areas.

    Attributes
    ----------
    auc : Tensor (N,)
        Per-example normalised area under the curve, in [0, 1] for probabilities.
    curves : Tensor (N, S + 1)
        Target probability after each step (point 0: nothing changed yet).
    fractions : Tensor (S + 1,)
        Fraction of pixels changed at each point (0 ... 1).
    target : Tensor (N,) or None
        Class index used per example (None for a callable target).
    """

    auc: Tensor
    curves: Tensor
    fractions: Tensor
    target: Optional[Tensor]

    @property
    def mean_auc(self) -> float:
        """Average AUC over the examples."""
        return float(self.auc.mean().item())


def perturbation_counts(
    num_pixels: int, n_steps: Optional[int] = None, step: Optional[int] = None
) -> Tensor:
    """Number of changed pixels at each point of the curve, ``(S + 1,)`` from 0 to ``num_pixels``.

    ``step`` pixels per step (the last step may be partial): ``min(i * step, P)`` for
    ``i = 0..ceil(P / step)``; or ``n_steps`` evenly spaced steps: ``floor(i * P / n_steps)``.
    """
    if num_pixels <= 0:
        raise ValueError(f"num_pixels must be positive, got {num_pixels}")
    if step is not None and n_steps is not None:
        raise ValueError("pass either n_steps or step, not both")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
            raise ValueError(f"step must be a positive int (pixels per step), got {step!r}")
        s = math.ceil(num_pixels / step)
        return torch.clamp(torch.arange(s + 1, dtype=torch.long) * step, max=num_pixels)
    if n_steps is None:
        raise ValueError("pass n_steps or step")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps <= 0:
        raise ValueError(f"n_steps must be a positive int, got {n_steps!r}")
    return torch.div(
        torch.arange(n_steps + 1, dtype=torch.long) * num_pixels, n_steps, rounding_mode="floor"
    )


def normalized_auc(curves: Tensor, fractions: Optional[Tensor] = None) -> Tensor:
    """Normalised area under ``curves`` ``(..., S + 1)``.

    Without ``fractions``: RISE's ``(sum(a) - a_0/2 - a_S/2) / S`` (unit-spaced trapezoid scaled
    to an x-range of 1). With ``fractions`` ``(S + 1,)``: ``torch.trapezoid(a, fractions)``.
    """
    if curves.shape[-1] < 2:
        raise ValueError("a curve needs at least 2 points")
    if fractions is not None:
        return torch.trapezoid(curves, fractions.to(curves), dim=-1)
    s = curves.shape[-1] - 1
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / s


def gaussian_blur(
    x: Tensor, kernel_size: int = 11, sigma: float = 5.0, padding: str = "zeros"
) -> Tensor:
    """Separable Gaussian blur of ``(N, C, H, W)`` images, channel by channel.

    The kernel is a sampled, normalised Gaussian of ``kernel_size`` taps. ``padding="zeros"``
    (RISE's ``conv2d(..., padding=k//2)``), ``"reflect"`` or ``"replicate"``.
    """
    if x.dim() != 4:
        raise ValueError(f"gaussian_blur expects (N, C, H, W), got {tuple(x.shape)}")
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    c = x.shape[1]
    t = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - (kernel_size - 1) / 2
    g = torch.exp(-(t**2) / (2 * float(sigma) ** 2))
    g = g / g.sum()
    r = kernel_size // 2
    if padding == "zeros":
        y = F.pad(x, (r, r, r, r))
    elif padding == "reflect" and (x.shape[-1] <= r or x.shape[-2] <= r):
        y = F.pad(x, (r, r, r, r), mode="replicate")  # reflect needs pad < size
    else:
        y = F.pad(x, (r, r, r, r), mode=padding)
    y = F.conv2d(y, g.view(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(y, g.view(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


def _substrate(
    x: Tensor, substrate: SubstrateType, kernel_size: int, sigma: float, padding: str
) -> Tensor:
    if isinstance(substrate, str):
        if substrate == "zeros":
            return torch.zeros_like(x)
        if substrate == "blur":
            return gaussian_blur(x, kernel_size, sigma, padding)
        if substrate == "mean":
            return x.mean(dim=(2, 3), keepdim=True).expand_as(x)
        raise ValueError(
            f"substrate must be 'zeros', 'blur', 'mean', a number, a Tensor or a callable, "
            f"got {substrate!r}"
        )
    if isinstance(substrate, bool):
        raise TypeError("substrate must not be a bool")
    if isinstance(substrate, (int, float)):
        return torch.full_like(x, float(substrate))
    if isinstance(substrate, Tensor):
        sub = substrate
    elif callable(substrate):
        sub = substrate(x)
        if not isinstance(sub, Tensor):
            raise TypeError("a substrate callable must return a Tensor")
    else:
        raise TypeError(f"unsupported substrate type {type(substrate).__name__}")
    try:
        return torch.broadcast_to(sub.to(x.device, x.dtype), x.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"substrate of shape {tuple(sub.shape)} does not broadcast to the inputs "
            f"{tuple(x.shape)}"
        ) from exc


def _causal(
    mode: str,
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor],
    attribution_method: Any,
    attribute_kwargs: Optional[Dict[str, Any]],
    target: TargetType,
    additional_forward_args: Any,
    n_steps: Optional[int],
    step: Optional[int],
    substrate: SubstrateType,
    blur_kernel_size: int,
    blur_sigma: float,
    blur_padding: str,
    probability_fn: ProbabilityFn,
    max_examples_per_batch: Optional[int],
    max_forwards_per_batch: int,
    interpolate_mode: str,
    channel_reduction: Optional[str],
    x_axis: str,
) -> CausalResult:
    x_all = check_inputs(inputs)
    n, _, h, w = x_all.shape
    maps_all = check_maps_or_method(attributions, attribution_method, n, channel_reduction)
    if x_axis not in ("steps", "fraction"):
        raise ValueError(f"x_axis must be 'steps' or 'fraction', got {x_axis!r}")
    check_positive_int(max_forwards_per_batch, "max_forwards_per_batch")
    if isinstance(substrate, Tensor) and substrate.dim() == 4 and substrate.shape[0] == n and n > 1:
        per_example_substrate: Optional[Tensor] = substrate
    else:
        per_example_substrate = None
    num_pixels = h * w
    if n_steps is None and step is None:
        step = w  # RISE: one image row's worth of pixels per step (224 for 224x224 inputs)
    counts = perturbation_counts(num_pixels, n_steps=n_steps, step=step).to(x_all.device)
    k = counts.shape[0]
    fractions = counts.double().div(num_pixels).float()
    bs = check_batch_size(max_examples_per_batch, n)
    callable_target = callable(target) and not isinstance(target, Tensor)

    curves_list, tgts = [], []
    chunks = iter_chunks(
        forward_func, x_all, maps_all, attribution_method, attribute_kwargs, target,
        format_args(additional_forward_args), bs, channel_reduction,
    )  # fmt: skip
    for ch in chunks:
        x, b = ch.x, ch.stop - ch.start
        with torch.no_grad():
            sal = upsample_maps(ch.maps, (h, w), interpolate_mode).reshape(b, num_pixels)
            order = torch.argsort(sal, dim=1, descending=True, stable=True)
            ranks = torch.empty_like(order)
            ranks.scatter_(1, order, torch.arange(num_pixels, device=x.device).expand(b, -1))
            sub_src = per_example_substrate[ch.start : ch.stop] if per_example_substrate is not None else substrate
            sub = _substrate(x, sub_src, blur_kernel_size, blur_sigma, blur_padding)
            # switched pixels come from `new`, the others from `old`
            old, new = (x, sub) if mode == "deletion" else (sub, x)
            job_ex = torch.arange(b, device=x.device).repeat_interleave(k)
            job_cnt = counts.repeat(b)
            curve = torch.empty(b * k, dtype=torch.float32, device=x.device)
            for j0 in range(0, b * k, max_forwards_per_batch):
                j1 = min(j0 + max_forwards_per_batch, b * k)
                je = job_ex[j0:j1]
                switched = (ranks[je] < job_cnt[j0:j1, None]).view(j1 - j0, 1, h, w)
                xp = torch.where(switched, new[je], old[je])
                probs = to_probabilities(forward(forward_func, xp, index_args(ch.args, je, b)), probability_fn)
                jt = ch.target[je] if isinstance(ch.target, Tensor) else ch.target
                curve[j0:j1] = target_scores(probs, jt).float()
        curves_list.append(curve.view(b, k))
        if isinstance(ch.target, Tensor):
            tgts.append(ch.target.detach())

    curves = torch.cat(curves_list)
    auc = normalized_auc(curves, fractions if x_axis == "fraction" else None)
    return CausalResult(
        auc=auc,
        curves=curves,
        fractions=fractions,
        target=None if callable_target else torch.cat(tgts),
    )


_COMMON_DOC = """
    Parameters
    ----------
    forward_func : callable
        The model, ``forward_func(inputs, *additional_forward_args) -> (N, num_classes)``. Not
        switched to eval mode; pass an eval-mode model.
    inputs : Tensor (N, C, H, W)
        The (preprocessed) model inputs.
    attributions : Tensor (N, 1, h, w) or (N, 1, H, W), optional
        Saliency maps, bilinearly upsampled to (H, W) to rank the pixels. Exactly one of
        ``attributions`` and ``attribution_method`` must be given.
    attribution_method : object with ``.attribute(inputs, target=..., **kwargs)``, optional
        Computes the maps per chunk of examples (receives the resolved class indices).
    attribute_kwargs : dict, optional
        Extra keyword arguments for ``attribution_method.attribute``.
    target : None, int, sequence of int, LongTensor (N,) or callable
        ``None`` = class predicted on the clean input. A callable maps probabilities (N, C) to
        scores (N,).
    additional_forward_args : any, optional
        Extra model arguments; tensors with first dimension N follow their example.
    n_steps, step : int, optional
        ``step`` pixels per step, or ``n_steps`` evenly spaced steps (not both). Default:
        ``step = W`` (224 for 224x224 images, as in RISE). Each example costs ``S + 1`` forwards.
    substrate : "zeros", "blur", "mean", float, Tensor or callable
        What replaces (deletion) or precedes (insertion) the original pixels, in the space of
        ``inputs``. A Tensor must broadcast to (N, C, H, W); a callable maps a chunk
        ``(B, C, H, W)`` to its substrate.
    blur_kernel_size, blur_sigma, blur_padding
        The Gaussian blur for ``substrate="blur"`` (default 11, 5.0, "zeros" as in RISE).
    probability_fn : "softmax" (default), "sigmoid", "identity"/None or callable
    max_examples_per_batch : int, optional
        Examples whose maps/substrates are prepared at once (None = all).
    max_forwards_per_batch : int
        Perturbed inputs per forward pass (default 64).
    interpolate_mode : str
        Upsampling mode for the maps (``align_corners=False``).
    channel_reduction : {"sum", "mean", "abs_sum"} or None
        Reduction for multi-channel attributions (None raises on them).
    x_axis : {"steps", "fraction"}
        RISE's uniform-step area (default) or the trapezoid over the changed-pixel fraction.
    return_curves : bool
        Return a :class:`CausalResult` (AUCs, curves, fractions, targets) instead of the AUCs.

    Returns
    -------
    Tensor (N,) or CausalResult
        Per-example normalised AUC (``.mean()`` for the dataset score).

    Raises
    ------
    ValueError
        Empty batch, map/input shape mismatch, NaN/Inf maps, bad step options or substrate.
    TypeError
        Both or neither of ``attributions`` and ``attribution_method``; wrong argument types.
"""


def deletion_auc(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    *,
    attribution_method: Any = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    n_steps: Optional[int] = None,
    step: Optional[int] = None,
    substrate: SubstrateType = "zeros",
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
    blur_padding: str = "zeros",
    probability_fn: ProbabilityFn = "softmax",
    max_examples_per_batch: Optional[int] = None,
    max_forwards_per_batch: int = 64,
    interpolate_mode: str = "bilinear",
    channel_reduction: Optional[str] = None,
    x_axis: str = "steps",
    return_curves: bool = False,
) -> Union[Tensor, CausalResult]:
    res = _causal(
        "deletion", forward_func, inputs, attributions, attribution_method, attribute_kwargs,
        target, additional_forward_args, n_steps, step, substrate, blur_kernel_size, blur_sigma,
        blur_padding, probability_fn, max_examples_per_batch, max_forwards_per_batch,
        interpolate_mode, channel_reduction, x_axis,
    )  # fmt: skip
    return res if return_curves else res.auc


def insertion_auc(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    attributions: Optional[Tensor] = None,
    *,
    attribution_method: Any = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    n_steps: Optional[int] = None,
    step: Optional[int] = None,
    substrate: SubstrateType = "blur",
    blur_kernel_size: int = 11,
    blur_sigma: float = 5.0,
    blur_padding: str = "zeros",
    probability_fn: ProbabilityFn = "softmax",
    max_examples_per_batch: Optional[int] = None,
    max_forwards_per_batch: int = 64,
    interpolate_mode: str = "bilinear",
    channel_reduction: Optional[str] = None,
    x_axis: str = "steps",
    return_curves: bool = False,
) -> Union[Tensor, CausalResult]:
    res = _causal(
        "insertion", forward_func, inputs, attributions, attribution_method, attribute_kwargs,
        target, additional_forward_args, n_steps, step, substrate, blur_kernel_size, blur_sigma,
        blur_padding, probability_fn, max_examples_per_batch, max_forwards_per_batch,
        interpolate_mode, channel_reduction, x_axis,
    )  # fmt: skip
    return res if return_curves else res.auc


deletion_auc.__doc__ = (
    """Deletion AUC (RISE): remove the most salient pixels first; lower is better.
"""
    + _COMMON_DOC
)
insertion_auc.__doc__ = (
    """Insertion AUC (RISE): restore the most salient pixels onto the substrate; higher is better.
"""
    + _COMMON_DOC
)


def _deletion_for_evaluate(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Tensor,
    *,
    indices: Optional[Tensor] = None,
    **options: Any,
) -> Dict[str, Tensor]:
    return {"deletion_auc": cast(Tensor, deletion_auc(forward_func, inputs, maps, target=target, **options))}


def _insertion_for_evaluate(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    maps: Tensor,
    target: Tensor,
    *,
    indices: Optional[Tensor] = None,
    **options: Any,
) -> Dict[str, Tensor]:
    return {"insertion_auc": cast(Tensor, insertion_auc(forward_func, inputs, maps, target=target, **options))}


register_metric(
    "deletion_auc", higher_is_better=False, unit="AUC", group="deletion", compute=_deletion_for_evaluate,
    label="Del", position=20, decimals=4,
    description="area under the target probability while the most salient pixels are zeroed; ranking only",
)  # fmt: skip
register_metric(
    "insertion_auc", higher_is_better=True, unit="AUC", group="insertion", compute=_insertion_for_evaluate,
    label="Ins", position=21, decimals=4,
    description="area under the target probability while salient pixels are restored onto a blurred "
    "canvas; ranking only",
)  # fmt: skip
