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

This module also holds the small helpers shared with :mod:`captum_cam_ext.metrics.causal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_cam_ext._engine import resolve_target

__all__ = [
    "ConfidenceResult",
    "confidence_metrics",
    "average_drop",
    "average_increase",
    "average_gain",
]

TargetType = Union[None, int, List[int], Tuple[int, ...], Tensor, Callable[[Tensor], Tensor]]
ProbabilityFn = Union[str, Callable[[Tensor], Tensor], None]

_NORMALIZE_MODES = ("after_upsample", "before_upsample", "none")
_CHANNEL_REDUCTIONS = ("sum", "mean", "abs_sum")
EPS = 1e-7


# --------------------------------------------------------------------------------------------
# Shared helpers (also used by causal.py)
# --------------------------------------------------------------------------------------------


def _check_inputs(inputs: Any) -> Tensor:
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 1:
            raise TypeError(
                "metrics support a single input tensor (N, C, H, W); pass other model arguments "
                "through additional_forward_args"
            )
        inputs = inputs[0]
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a torch.Tensor (N, C, H, W), got {type(inputs).__name__}")
    if inputs.dim() != 4:
        raise ValueError(f"inputs must have shape (N, C, H, W), got {tuple(inputs.shape)}")
    if inputs.shape[0] == 0:
        raise ValueError("inputs is an empty batch (N = 0); pass at least one example")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be floating point, got dtype {inputs.dtype}")
    if not bool(torch.isfinite(inputs).all()):
        raise ValueError("inputs contain NaN or Inf values")
    return inputs


def _check_batch_size(max_examples_per_batch: Optional[int], n: int) -> int:
    if max_examples_per_batch is None:
        return n
    if isinstance(max_examples_per_batch, bool) or not isinstance(max_examples_per_batch, int):
        raise TypeError("max_examples_per_batch must be a positive int or None")
    if max_examples_per_batch <= 0:
        raise ValueError(f"max_examples_per_batch must be positive, got {max_examples_per_batch}")
    return max_examples_per_batch


def _format_args(args: Any) -> Optional[Tuple[Any, ...]]:
    if args is None:
        return None
    return tuple(args) if isinstance(args, (tuple, list)) else (args,)


def _index_args(
    args: Optional[Tuple[Any, ...]], index: Tensor, batch: int
) -> Optional[Tuple[Any, ...]]:
    """Select (with repetition) rows of every tensor argument whose first dimension is ``batch``."""
    if args is None:
        return None
    return tuple(
        a[index.to(a.device)]
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch
        else a
        for a in args
    )


def _forward(forward_func: Callable, x: Tensor, args: Optional[Tuple[Any, ...]]) -> Tensor:
    out = forward_func(x, *(args or ()))
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_func must return a Tensor, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"forward_func must return (N, num_classes) scores, got shape {tuple(out.shape)} "
            f"for {x.shape[0]} examples"
        )
    return out


def _to_probabilities(outputs: Tensor, probability_fn: ProbabilityFn) -> Tensor:
    if probability_fn == "softmax":
        return torch.softmax(outputs.float(), dim=1)
    if probability_fn == "sigmoid":
        return torch.sigmoid(outputs.float())
    if probability_fn is None or probability_fn == "identity":
        return outputs
    if callable(probability_fn):
        return probability_fn(outputs)
    raise ValueError(
        "probability_fn must be 'softmax', 'sigmoid', 'identity', None or a callable, "
        f"got {probability_fn!r}"
    )


def _target_scores(probs: Tensor, target: Union[Tensor, Callable[[Tensor], Tensor]]) -> Tensor:
    if isinstance(target, Tensor):
        return probs.gather(1, target.to(probs.device)[:, None]).squeeze(1)
    scores = target(probs)
    if not isinstance(scores, Tensor) or scores.shape != (probs.shape[0],):
        raise ValueError(
            f"a callable target must map probabilities (N, C) to scores ({probs.shape[0]},)"
        )
    return scores


def _resolve_chunk_target(
    target: TargetType, outputs: Tensor, start: int, stop: int, n: int
) -> Union[Tensor, Callable[[Tensor], Tensor]]:
    """Class indices ``(B,)`` for examples ``start:stop`` (or the callable itself)."""
    if callable(target) and not isinstance(target, Tensor):
        return target
    if isinstance(target, Tensor) and target.dim() == 1:
        if target.shape[0] != n:
            raise ValueError(
                f"target has {target.shape[0]} entries for {n} examples; pass one class per example"
            )
        target = target[start:stop]
    elif isinstance(target, (list, tuple)):
        if len(target) != n:
            raise ValueError(
                f"target has {len(target)} entries for {n} examples; pass one class per example"
            )
        target = list(target[start:stop])
    return resolve_target(outputs, target)  # type: ignore[arg-type]


def _compute_attributions(
    attribution_method: Any,
    x: Tensor,
    target: Union[Tensor, Callable[[Tensor], Tensor]],
    args: Optional[Tuple[Any, ...]],
    attribute_kwargs: Optional[Dict[str, Any]],
) -> Tensor:
    if not hasattr(attribution_method, "attribute"):
        raise TypeError(
            "attribution_method must have an .attribute(inputs, target=..., **kwargs) method, "
            f"got {type(attribution_method).__name__}"
        )
    kwargs = dict(attribute_kwargs or {})
    if args is not None:
        kwargs["additional_forward_args"] = args
    attr = attribution_method.attribute(x, target=target, **kwargs)
    if isinstance(attr, (tuple, list)):
        attr = attr[0]
    if not isinstance(attr, Tensor):
        raise TypeError(
            f"attribution_method.attribute returned {type(attr).__name__}, not a Tensor"
        )
    return attr.detach()


def _check_maps(maps: Tensor, n: int, channel_reduction: Optional[str] = None) -> Tensor:
    """Validate maps of shape (n, 1, h, w) / (n, h, w) / (n, C, h, w) and return (n, 1, h, w)."""
    if not isinstance(maps, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4:
        raise ValueError(
            f"attributions must have shape (N, 1, h, w) (or (N, h, w)), got {tuple(maps.shape)}"
        )
    if maps.shape[0] != n:
        raise ValueError(
            f"attributions have {maps.shape[0]} examples but inputs have {n}; they must match"
        )
    if maps.shape[1] != 1:
        if channel_reduction is None:
            raise ValueError(
                f"attributions have {maps.shape[1]} channels; saliency maps need 1. Pass "
                f"channel_reduction='sum' | 'mean' | 'abs_sum', or reduce them yourself"
            )
        if channel_reduction == "sum":
            maps = maps.sum(1, keepdim=True)
        elif channel_reduction == "mean":
            maps = maps.mean(1, keepdim=True)
        elif channel_reduction == "abs_sum":
            maps = maps.abs().sum(1, keepdim=True)
        else:
            raise ValueError(
                f"channel_reduction must be one of {_CHANNEL_REDUCTIONS} or None, "
                f"got {channel_reduction!r}"
            )
    if maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise ValueError(f"attributions have an empty spatial size {tuple(maps.shape[-2:])}")
    if not bool(torch.isfinite(maps).all()):
        bad = (~torch.isfinite(maps)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(
            f"attributions contain NaN or Inf values (examples {bad}); fix or drop those maps"
        )
    return maps.float()


def _minmax(maps: Tensor) -> Tensor:
    """Exact per-example min-max to [0, 1] (max maps to exactly 1); constant maps become 0."""
    flat = maps.reshape(maps.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    rng = flat.max(dim=1, keepdim=True).values - lo
    out = torch.where(rng > 0, (flat - lo) / torch.where(rng > 0, rng, 1.0), 0.0)
    return out.reshape(maps.shape)


def _upsample(maps: Tensor, size: Tuple[int, int], mode: str) -> Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode in ("bilinear", "bicubic"):
        return F.interpolate(maps, size=size, mode=mode, align_corners=False)
    return F.interpolate(maps, size=size, mode=mode)


def _prepare_masks(
    maps: Tensor, size: Tuple[int, int], normalize: Optional[str], interpolate_mode: str
) -> Tensor:
    """(B, 1, h, w) maps -> (B, 1, H, W) masks, normalised per example as requested."""
    if normalize is None:
        normalize = "none"
    if normalize not in _NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {_NORMALIZE_MODES}, got {normalize!r}")
    if normalize == "before_upsample":
        maps = _minmax(maps)
    maps = _upsample(maps, size, interpolate_mode)
    if normalize == "after_upsample":
        maps = _minmax(maps)
    return maps


def _as_float(value: Tensor) -> float:
    return float(value.float().mean().item()) if value.numel() else float("nan")


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
    """

    drop: Tensor
    increase: Tensor
    gain: Tensor
    probs: Tensor
    masked_probs: Tensor
    target: Optional[Tensor]

    @property
    def average_drop(self) -> float:
        """Average Drop in %, lower is better."""
        return _as_float(self.drop)

    @property
    def average_increase(self) -> float:
        """Average Increase (Increase in Confidence) in %, higher is better."""
        return _as_float(self.increase)

    @property
    def average_gain(self) -> float:
        """Average Gain in %, higher is better."""
        return _as_float(self.gain)

    def summary(self) -> Dict[str, float]:
        """The three averages (in %) as a dict."""
        return {
            "average_drop": self.average_drop,
            "average_increase": self.average_increase,
            "average_gain": self.average_gain,
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
        Per-example ``drop``, ``increase``, ``gain`` (in %), ``probs``, ``masked_probs`` and the
        averages ``average_drop``, ``average_increase``, ``average_gain`` (in %).

    Raises
    ------
    ValueError
        Empty batch, shape mismatch between maps and inputs, NaN/Inf in maps or inputs, bad
        option values.
    TypeError
        Wrong argument types, or both/neither of ``attributions`` and ``attribution_method``.
    """
    x_all = _check_inputs(inputs)
    n = x_all.shape[0]
    if (attributions is None) == (attribution_method is None):
        raise TypeError("pass exactly one of attributions= and attribution_method=")
    maps_all = _check_maps(attributions, n, channel_reduction) if attributions is not None else None
    bs = _check_batch_size(max_examples_per_batch, n)
    args = _format_args(additional_forward_args)
    size = (x_all.shape[-2], x_all.shape[-1])

    drops, incs, gains, ys, os_, tgts = [], [], [], [], [], []
    callable_target = callable(target) and not isinstance(target, Tensor)
    for start in range(0, n, bs):
        stop = min(start + bs, n)
        x = x_all[start:stop]
        idx = torch.arange(start, stop, device=x.device)
        cargs = _index_args(args, idx, n)
        with torch.no_grad():
            out = _forward(forward_func, x, cargs)
        tgt = _resolve_chunk_target(target, out, start, stop, n)
        if maps_all is None:
            maps = _check_maps(
                _compute_attributions(attribution_method, x, tgt, cargs, attribute_kwargs),
                stop - start,
                channel_reduction,
            )
        else:
            maps = maps_all[start:stop]
        masks = _prepare_masks(maps.to(x.device), size, normalize, interpolate_mode).to(x.dtype)
        with torch.no_grad():
            y = _target_scores(_to_probabilities(out, probability_fn), tgt)
            xm = _apply_mask(x, masks, baseline, denormalize, renormalize)
            o = _target_scores(
                _to_probabilities(_forward(forward_func, xm, cargs), probability_fn), tgt
            )
        y, o = y.detach().float(), o.detach().float()
        drops.append(torch.relu(y - o) / (y + EPS))
        incs.append((o > y).float())
        gains.append(torch.relu(o - y) / (1.0 - y + EPS))
        ys.append(y)
        os_.append(o)
        if not callable_target:
            tgts.append(tgt.detach())  # type: ignore[union-attr]

    return ConfidenceResult(
        drop=torch.cat(drops) * 100.0,
        increase=torch.cat(incs) * 100.0,
        gain=torch.cat(gains) * 100.0,
        probs=torch.cat(ys),
        masked_probs=torch.cat(os_),
        target=None if callable_target else torch.cat(tgts),
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
