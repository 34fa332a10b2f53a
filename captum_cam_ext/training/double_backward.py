"""Cheaper double backpropagation through convolutions and eval-mode BatchNorm.

The interpretable-gradient regularizer differentiates an input gradient with respect to the
parameters (double backprop). Profiling a regularized step (``benchmarks/guided_bench.py
--stage cost``) showed most of its time in two autograd nodes:

- ``ConvolutionBackwardBackward0``: the derivative of the convolution's input gradient. For
  grouped (e.g. depthwise) convolutions PyTorch computes its weight part group by group.
- ``NativeBatchNormBackwardBackward0``: the generic batch-norm double backward, which also covers
  batch statistics and is ~3x the cost of the multiply-add that eval-mode BatchNorm reduces to.

:func:`double_backward_ops` is a context manager (a ``TorchFunctionMode``, so the model is not
edited) under which every ``conv2d`` call runs through an autograd Function whose backward writes
the input gradient as a transposed convolution (a differentiable op whose own backward is one
grouped convolution per operand, no per-group loop), and every eval-mode ``batch_norm`` call runs
as ``x * scale + shift``. Values are the same as the native ops' (up to float rounding); only
the graph recorded for a later double backward changes.

The yielded :class:`OpsScope` also lets the caller say that the next backward passes only need
input gradients (``with scope.input_only(): torch.autograd.grad(loss, x, ...)``): a custom
Function cannot know which of its inputs the current backward needs, and would otherwise compute
weight gradients that ``autograd.grad(..., inputs=x)`` throws away.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = ["OpsScope", "double_backward_ops"]

_Pair = Tuple[int, int]


class OpsScope:
    """Switch shared by the convolutions run under :func:`double_backward_ops`.

    Attributes
    ----------
    weights : bool
        Whether backward passes compute weight and bias gradients (default True).
    calls : dict
        How many ``conv2d`` / ``batch_norm`` calls were rerouted (for tests and profiling).
    """

    def __init__(self) -> None:
        self.weights = True
        self.calls: Dict[str, int] = {"conv2d": 0, "batch_norm": 0}

    @contextlib.contextmanager
    def input_only(self) -> Iterator[OpsScope]:
        """Inside the block, backward passes skip weight and bias gradients (return None)."""
        old = self.weights
        self.weights = False
        try:
            yield self
        finally:
            self.weights = old


def _pair(v: Union[int, Sequence[int]]) -> _Pair:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


class _Conv2dFn(torch.autograd.Function):
    """``conv2d`` whose input gradient is a (differentiable) transposed convolution."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Optional[Tensor],
        stride: _Pair,
        padding: _Pair,
        dilation: _Pair,
        groups: int,
        scope: OpsScope,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups, bias is not None)
        ctx.scope = scope
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, has_bias = ctx.conf
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            k = weight.shape[2:]
            out_pad = [
                x.shape[2 + i]
                - ((grad.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1)
                for i in range(2)
            ]
            gx = F.conv_transpose2d(grad, weight, None, stride, padding, out_pad, groups, dilation)
        if ctx.scope.weights and ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(
                grad, x, weight, None, list(stride), list(padding), list(dilation), False,
                [0, 0], groups, [False, True, False],
            )[1]  # fmt: skip
        if ctx.scope.weights and has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None, None, None, None, None


def _conv2d(scope: OpsScope, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tensor]:
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults: List[Any] = [None, None, None, 1, 0, 1, 1]
    vals = list(args) + defaults[len(args) :]
    for i, name in enumerate(names):
        if name in kwargs:
            vals[i] = kwargs[name]
    x, weight, bias, stride, padding, dilation, groups = vals
    if isinstance(padding, str) or not isinstance(x, Tensor) or x.dim() != 4:
        return None  # "same"/"valid" padding or unbatched input: leave it to the native op
    scope.calls["conv2d"] += 1
    return _Conv2dFn.apply(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), int(groups), scope)  # type: ignore[no-any-return]


def _batch_norm_eval(scope: OpsScope, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Optional[Tensor]:
    names = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")
    defaults: List[Any] = [None, None, None, None, None, False, 0.1, 1e-5]
    vals = list(args) + defaults[len(args) :]
    for i, name in enumerate(names):
        if name in kwargs:
            vals[i] = kwargs[name]
    x, mean, var, weight, bias, training, _, eps = vals
    if training or mean is None or var is None:
        return None
    scope.calls["batch_norm"] += 1
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.view(shape) + shift.view(shape)


class _Mode(TorchFunctionMode):
    def __init__(self, scope: OpsScope) -> None:
        super().__init__()
        self.scope = scope

    def __torch_function__(self, func: Any, types: Any, args: Tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = None
        if func is torch.conv2d:
            out = _conv2d(self.scope, args, kwargs)
        elif func is F.batch_norm:
            out = _batch_norm_eval(self.scope, args, kwargs)
        return func(*args, **kwargs) if out is None else out


@contextlib.contextmanager
def double_backward_ops(enabled: bool = True) -> Iterator[OpsScope]:
    """Reroute ``conv2d`` and eval-mode ``batch_norm`` calls in the block through ops with a cheap double backward.

    Parameters
    ----------
    enabled : bool
        ``False`` makes the block a no-op (the yielded scope still works).

    Yields
    ------
    OpsScope
        Its :meth:`OpsScope.input_only` block skips weight gradients in backward passes that
        only need input gradients.

    Notes
    -----
    Only the forward calls made inside the block are rerouted; the backward passes may run
    later, outside it. Train-mode BatchNorm (batch statistics) and convolutions with string
    padding keep the native ops.
    """
    scope = OpsScope()
    if not enabled:
        yield scope
        return
    with _Mode(scope):
        yield scope
