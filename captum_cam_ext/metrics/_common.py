"""Helpers shared by the metric modules (input checks, forwards, targets, maps and masks).

Plain names: any module of :mod:`captum_cam_ext.metrics` may import them. Nothing here is part of
the public API; the public metric functions document the behaviour these helpers implement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor

from captum_cam_ext._engine import resolve_target
from captum_cam_ext._maps import normalize_maps, upsample_maps

__all__ = [
    "CHANNEL_REDUCTIONS",
    "EPS",
    "NORMALIZE_MODES",
    "Chunk",
    "ProbabilityFn",
    "ResolvedTarget",
    "TargetType",
    "as_float",
    "check_batch_size",
    "check_inputs",
    "check_maps",
    "check_positive_int",
    "compute_attributions",
    "format_args",
    "forward",
    "index_args",
    "iter_chunks",
    "prepare_masks",
    "resolve_chunk_target",
    "target_scores",
    "to_probabilities",
]

TargetType = Union[None, int, List[int], Tuple[int, ...], Tensor, Callable[[Tensor], Tensor]]
ProbabilityFn = Union[str, Callable[[Tensor], Tensor], None]
#: A chunk's target after resolution: class indices ``(B,)`` or a callable on probabilities.
ResolvedTarget = Union[Tensor, Callable[[Tensor], Tensor]]

NORMALIZE_MODES = ("after_upsample", "before_upsample", "none")
CHANNEL_REDUCTIONS = ("sum", "mean", "abs_sum")
#: Added to denominators of the confidence metrics (torchcam's value).
EPS = 1e-7


def check_inputs(inputs: Any) -> Tensor:
    """The single ``(N, C, H, W)`` floating-point, finite, non-empty input tensor."""
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


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is a positive int (not a bool), else a ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_batch_size(max_examples_per_batch: Optional[int], n: int) -> int:
    """The chunk size: ``n`` for None, else the validated positive int."""
    if max_examples_per_batch is None:
        return n
    if isinstance(max_examples_per_batch, bool) or not isinstance(max_examples_per_batch, int):
        raise TypeError("max_examples_per_batch must be a positive int or None")
    if max_examples_per_batch <= 0:
        raise ValueError(f"max_examples_per_batch must be positive, got {max_examples_per_batch}")
    return max_examples_per_batch


def format_args(args: Any) -> Optional[Tuple[Any, ...]]:
    """``additional_forward_args`` as a tuple (None stays None)."""
    if args is None:
        return None
    return tuple(args) if isinstance(args, (tuple, list)) else (args,)


def index_args(args: Optional[Tuple[Any, ...]], index: Tensor, batch: int) -> Optional[Tuple[Any, ...]]:
    """Select (with repetition) rows of every tensor argument whose first dimension is ``batch``."""
    if args is None:
        return None
    return tuple(
        a[index.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch else a
        for a in args
    )


def forward(forward_func: Callable[..., Any], x: Tensor, args: Optional[Tuple[Any, ...]]) -> Tensor:
    """``forward_func(x, *args)``, checked to be ``(N, num_classes)`` scores."""
    out = forward_func(x, *(args or ()))
    if not isinstance(out, Tensor):
        raise TypeError(f"forward_func must return a Tensor, got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"forward_func must return (N, num_classes) scores, got shape {tuple(out.shape)} "
            f"for {x.shape[0]} examples"
        )
    return out


def to_probabilities(outputs: Tensor, probability_fn: ProbabilityFn) -> Tensor:
    """Apply ``probability_fn`` ("softmax", "sigmoid", "identity"/None or a callable)."""
    if probability_fn == "softmax":
        return torch.softmax(outputs.float(), dim=1)
    if probability_fn == "sigmoid":
        return torch.sigmoid(outputs.float())
    if probability_fn is None or probability_fn == "identity":
        return outputs
    if callable(probability_fn):
        return probability_fn(outputs)
    raise ValueError(
        f"probability_fn must be 'softmax', 'sigmoid', 'identity', None or a callable, got {probability_fn!r}"
    )


def target_scores(probs: Tensor, target: ResolvedTarget) -> Tensor:
    """The score ``(N,)`` of each example's target: a gathered column or the callable's output."""
    if isinstance(target, Tensor):
        return probs.gather(1, target.to(probs.device)[:, None]).squeeze(1)
    scores = target(probs)
    if not isinstance(scores, Tensor) or scores.shape != (probs.shape[0],):
        raise ValueError(f"a callable target must map probabilities (N, C) to scores ({probs.shape[0]},)")
    return scores


def resolve_chunk_target(target: TargetType, outputs: Tensor, start: int, stop: int, n: int) -> ResolvedTarget:
    """Class indices ``(B,)`` for examples ``start:stop`` (or the callable itself)."""
    if callable(target) and not isinstance(target, Tensor):
        return target
    if isinstance(target, Tensor) and target.dim() == 1:
        if target.shape[0] != n:
            raise ValueError(f"target has {target.shape[0]} entries for {n} examples; pass one class per example")
        target = target[start:stop]
    elif isinstance(target, (list, tuple)):
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries for {n} examples; pass one class per example")
        target = list(target[start:stop])
    resolved = resolve_target(outputs, target)  # type: ignore[arg-type]
    if resolved is None:
        raise ValueError(
            f"target {target!r} selects no class; the metrics need one class index per example "
            "(None, an int, a sequence or LongTensor of N ints) or a callable on the probabilities"
        )
    return resolved


def compute_attributions(
    attribution_method: Any,
    x: Tensor,
    target: ResolvedTarget,
    args: Optional[Tuple[Any, ...]],
    attribute_kwargs: Optional[Dict[str, Any]],
) -> Tensor:
    """``attribution_method.attribute(x, target=..., **kwargs)`` as a detached tensor."""
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
        raise TypeError(f"attribution_method.attribute returned {type(attr).__name__}, not a Tensor")
    return attr.detach()


def check_maps(maps: Any, n: int, channel_reduction: Optional[str] = None) -> Tensor:
    """Validate maps of shape (n, 1, h, w) / (n, h, w) / (n, C, h, w) and return (n, 1, h, w).

    float64 maps stay float64 (their ranking is kept exactly, e.g. powers of masks); every other
    dtype becomes float32.
    """
    if not isinstance(maps, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(maps).__name__}")
    if maps.dim() == 3:
        maps = maps.unsqueeze(1)
    if maps.dim() != 4:
        raise ValueError(f"attributions must have shape (N, 1, h, w) (or (N, h, w)), got {tuple(maps.shape)}")
    if maps.shape[0] != n:
        raise ValueError(f"attributions have {maps.shape[0]} examples but inputs have {n}; they must match")
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
                f"channel_reduction must be one of {CHANNEL_REDUCTIONS} or None, got {channel_reduction!r}"
            )
    if maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise ValueError(f"attributions have an empty spatial size {tuple(maps.shape[-2:])}")
    if not bool(torch.isfinite(maps).all()):
        bad = (~torch.isfinite(maps)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ValueError(f"attributions contain NaN or Inf values (examples {bad}); fix or drop those maps")
    return maps if maps.dtype == torch.float64 else maps.float()


def prepare_masks(maps: Tensor, size: Tuple[int, int], normalize: Optional[str], interpolate_mode: str) -> Tensor:
    """(B, 1, h, w) maps -> (B, 1, H, W) masks, exact min-max normalised per example as requested.

    ``normalize``: ``"after_upsample"`` (the mask spans exactly [0, 1]), ``"before_upsample"``
    (torchcam's order) or ``"none"``/None. A constant map becomes all zeros when normalised.
    """
    if normalize is None:
        normalize = "none"
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if normalize == "before_upsample":
        maps = normalize_maps(maps, eps=0)
    maps = upsample_maps(maps, size, interpolate_mode)
    if normalize == "after_upsample":
        maps = normalize_maps(maps, eps=0)
    return maps


def as_float(value: Tensor) -> float:
    """The mean of ``value`` as a Python float (NaN when empty)."""
    return float(value.float().mean().item()) if value.numel() else float("nan")


@dataclass
class Chunk:
    """One chunk of examples, as :func:`iter_chunks` yields it.

    Attributes
    ----------
    start, stop : int
        The chunk's examples are ``start:stop`` of the whole batch.
    x : Tensor (B, C, H, W)
        Their inputs.
    args : tuple or None
        The additional forward arguments, sliced to the chunk.
    outputs : Tensor (B, classes)
        The model's outputs on ``x`` (no gradient).
    target : Tensor (B,) or callable
        The resolved target.
    maps : Tensor (B, 1, h, w)
        The checked maps (given, or computed by the attribution method).
    """

    start: int
    stop: int
    x: Tensor
    args: Optional[Tuple[Any, ...]]
    outputs: Tensor
    target: ResolvedTarget
    maps: Tensor


def iter_chunks(
    forward_func: Callable[..., Any],
    x_all: Tensor,
    maps_all: Optional[Tensor],
    attribution_method: Any,
    attribute_kwargs: Optional[Dict[str, Any]],
    target: TargetType,
    args: Optional[Tuple[Any, ...]],
    batch_size: int,
    channel_reduction: Optional[str],
) -> Iterator[Chunk]:
    """Walk the examples in chunks: clean forward, target resolution and the chunk's maps.

    ``maps_all`` are the checked maps of every example (or None: they are then computed per chunk
    with ``attribution_method``, which receives the resolved targets).
    """
    n = x_all.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        x = x_all[start:stop]
        cargs = index_args(args, torch.arange(start, stop, device=x.device), n)
        with torch.no_grad():
            out = forward(forward_func, x, cargs)
        tgt = resolve_chunk_target(target, out, start, stop, n)
        if maps_all is None:
            raw = compute_attributions(attribution_method, x, tgt, cargs, attribute_kwargs)
            maps = check_maps(raw, stop - start, channel_reduction)
        else:
            maps = maps_all[start:stop]
        yield Chunk(start, stop, x, cargs, out, tgt, maps.to(x.device))


def check_maps_or_method(
    attributions: Optional[Tensor], attribution_method: Any, n: int, channel_reduction: Optional[str]
) -> Optional[Tensor]:
    """Exactly one of the two must be given; returns the checked maps (None with a method)."""
    if (attributions is None) == (attribution_method is None):
        raise TypeError("pass exactly one of attributions= and attribution_method=")
    return check_maps(attributions, n, channel_reduction) if attributions is not None else None
