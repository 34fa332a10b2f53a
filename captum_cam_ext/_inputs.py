"""Validating inputs, slicing and repeating additional forward arguments, running the model."""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum._utils.common import _format_tensor_into_tuples
from torch import Tensor

__all__ = ["TensorOrTuple", "format_inputs", "repeat_args", "run_forward", "slice_args"]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def format_inputs(inputs: TensorOrTuple) -> Tuple[Tensor, ...]:
    """Validate ``inputs`` (a tensor or a tuple of tensors sharing the batch size)."""
    if isinstance(inputs, Tensor):
        tup: Tuple[Tensor, ...] = (inputs,)
    elif isinstance(inputs, (tuple, list)) and len(inputs) > 0:
        tup = _format_tensor_into_tuples(tuple(inputs))  # type: ignore[arg-type]
    else:
        raise TypeError(f"inputs must be a Tensor or a non-empty tuple of Tensors, got {type(inputs).__name__}")
    for i, x in enumerate(tup):
        if not isinstance(x, Tensor):
            raise TypeError(f"inputs[{i}] must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(
                f"inputs[{i}] has dtype {x.dtype}; CAM methods need floating-point inputs "
                "(convert with .float(), and normalise images as the model expects)"
            )
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"inputs[{i}] is an empty batch (shape {tuple(x.shape)}); pass at least one example")
        if x.shape[0] != tup[0].shape[0]:
            raise ValueError(
                f"all inputs must share the batch size: inputs[0] has {tup[0].shape[0]}, inputs[{i}] has {x.shape[0]}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"inputs[{i}] contains NaN or Inf values; clean the inputs before explaining them")
    return tup


def slice_args(args: Optional[Tuple[Any, ...]], start: int, stop: int, batch: int) -> Optional[Tuple[Any, ...]]:
    """Slice every tensor of ``args`` whose first dimension is the batch; keep the rest."""
    if args is None:
        return None
    return tuple(a[start:stop] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == batch else a for a in args)


def repeat_args(args: Optional[Tuple[Any, ...]], repeats: int) -> Optional[Tuple[Any, ...]]:
    """Repeat every single-example tensor of ``args`` (first dimension 1) ``repeats`` times."""
    if args is None:
        return None
    return tuple(
        a.expand(repeats, *a.shape[1:]) if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == 1 else a
        for a in args
    )


def run_forward(forward_func: Callable, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]]) -> Any:
    """Call ``forward_func(*inputs, *args)`` and return what it returns."""
    return forward_func(*inputs, *(args or ()))
