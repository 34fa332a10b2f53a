"""FullGrad (Srinivas & Fleuret, 2019): input-gradient and bias-gradient maps of every layer, summed."""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr._utils.attribution import GradientAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_cam_ext._engine import (
    LayerRecorder,
    TargetSpec,
    format_inputs,
    module_path,
    preserved_state,
    run_forward,
    select_target_scores,
    slice_args,
)
from captum_cam_ext._maps import check_interpolate_mode, normalize_maps, upsample_maps
from captum_cam_ext.registry import register_method

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def effective_bias(layer: nn.Module) -> Tensor:
    r"""The bias a layer adds to each output channel, ``(K,)``.

    A convolution's ``bias``; a BatchNorm's implicit bias with its running statistics,
    :math:`\beta - \mu\gamma / \sqrt{\sigma^2 + \epsilon}` (the FullGrad paper's; ``\gamma = 1``,
    ``\beta = 0`` without affine parameters).
    """
    if isinstance(layer, _NORMS):
        if layer.running_mean is None or layer.running_var is None:
            raise ValueError(f"{type(layer).__name__} has no running statistics, so its bias is not defined")
        scale = torch.rsqrt(layer.running_var + layer.eps)
        weight = layer.weight if layer.weight is not None else torch.ones_like(scale)
        beta = layer.bias if layer.bias is not None else torch.zeros_like(scale)
        return (beta - layer.running_mean * weight * scale).detach()
    bias = getattr(layer, "bias", None)
    if not isinstance(bias, Tensor):
        raise ValueError(f"{type(layer).__name__} has no bias")
    return bias.detach()


def bias_layers(model: nn.Module) -> List[nn.Module]:
    """Every convolution with a bias and every BatchNorm (1-3-D) of ``model``, in module order."""
    return [
        m
        for m in model.modules()
        if (isinstance(m, _CONVS) and m.bias is not None) or (isinstance(m, _NORMS) and m.running_mean is not None)
    ]


@register_method(aliases=("full-gradient", "fullgradient"))
class FullGrad(GradientAttribution):
    r"""FullGrad: the input gradient and the gradient at every bias, as one saliency map.

    .. math::

        L = \psi\big(|\nabla_x y^c \odot x|\big) + \sum_{l} \sum_{k} \psi\big(|b_{l,k}\, \nabla_{z_l} y^c_k|\big),

    where :math:`z_l` is the output of layer :math:`l` (a convolution with a bias, or a BatchNorm
    whose implicit bias is :func:`effective_bias`), and :math:`\psi` min-max normalises each
    channel map (per example) and resizes it to the input (bilinear). The paper's completeness
    property, :math:`y = \nabla_x y \cdot x + \sum_l \nabla_{z_l} y \cdot b_l` for ReLU networks,
    needs every bias, so FullGrad is not a single-layer method.

    Reference: S. Srinivas, F. Fleuret, "Full-Gradient Representation for Neural Network
    Visualization", NeurIPS 2019 (arXiv:1905.00780); pytorch-grad-cam 1.5.7 ``FullGrad`` (per-channel
    normalisation, the convention here).

    Parameters
    ----------
    forward_func : nn.Module
        The model.
    layer : nn.Module or list, optional
        Ignored (pytorch-grad-cam ignores its ``target_layers`` too): accepted so that FullGrad
        is built by name like the layer methods (:func:`captum_cam_ext.registry.create_method`).
        The layers are every convolution with a bias and every BatchNorm of the model
        (:func:`bias_layers`), every call of each.

    Notes
    -----
    Only ``inputs[0]`` receives an input-gradient term. BatchNorm biases use the running
    statistics (the eval-mode network); the model is left as found.
    """

    name = "fullgrad"
    method_kind = "composite"

    def __init__(self, forward_func: Callable, layer: Any = None) -> None:
        if not isinstance(forward_func, nn.Module):
            raise TypeError(
                f"FullGrad needs an nn.Module (its bias layers are hooked), got {type(forward_func).__name__}"
            )
        GradientAttribution.__init__(self, forward_func)
        self.model = forward_func
        self.layers = bias_layers(forward_func)
        self.layer_names = [module_path(forward_func, m) for m in self.layers]
        self._warned_reused = False

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        interpolate_mode: str = "bilinear",
        normalize: bool = False,
        internal_batch_size: Optional[int] = None,
        relu_attributions: bool = False,
        upsample_to_input: bool = True,
    ) -> Tensor:
        r"""The FullGrad map of each example.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            ``(N, C, *S)`` with 1 to 3 spatial dimensions ``S``.
        target, additional_forward_args :
            As in :meth:`captum_cam_ext.CamAttribution.attribute` (Captum's target forms or a
            callable).
        interpolate_mode : str
            How bias maps are resized to the input (default ``"bilinear"``).
        normalize : bool
            Min-max normalise each example's map to ``[0, 1]`` (pytorch-grad-cam's output).
        internal_batch_size : int, optional
            Examples per forward/backward pass.
        relu_attributions, upsample_to_input : bool
            Accepted for the layer CAMs' call shape; they change nothing (the map is non-negative
            and at the input's resolution by construction).

        Returns
        -------
        Tensor
            ``(N, 1, *S)``, non-negative.
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        check_interpolate_mode(interpolate_mode)
        if internal_batch_size is not None and (
            isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1
        ):
            raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}")
        if tup[0].dim() < 3 or tup[0].dim() > 5:
            raise ValueError(
                f"FullGrad needs inputs (N, C, *S) with 1 to 3 spatial dimensions, got {tuple(tup[0].shape)}"
            )
        if torch.is_inference_mode_enabled():
            raise ValueError("FullGrad needs gradients: call attribute() outside torch.inference_mode()")
        n = tup[0].shape[0]
        step = n if internal_batch_size is None else internal_batch_size
        maps = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            chunk_target = target
            if isinstance(target, Tensor) and target.dim() == 1 and target.shape[0] == n:
                chunk_target = target[start:stop]
            elif isinstance(target, list) and len(target) == n:
                chunk_target = target[start:stop]
            maps.append(
                self.full_gradient_map(
                    tuple(x[start:stop] for x in tup), chunk_target, slice_args(args, start, stop, n), interpolate_mode
                )
            )
        out = torch.cat(maps) if len(maps) > 1 else maps[0]
        return normalize_maps(out) if normalize else out

    def full_gradient_map(
        self, inputs: Tuple[Tensor, ...], target: TargetSpec, args: Optional[Tuple[Any, ...]], interpolate_mode: str
    ) -> Tensor:
        """The unnormalised FullGrad map ``(n, 1, *S)`` of one chunk of examples."""
        x = inputs[0].detach().requires_grad_(True)
        size = tuple(x.shape[2:])
        with preserved_state(self.model), torch.enable_grad():
            with LayerRecorder(self.layers, to_input=False, grad_root=True, names=self.layer_names) as rec:
                outputs = run_forward(self.model, (x,) + tuple(inputs[1:]), args)
            scores = select_target_scores(outputs, target)
            calls = [(i, v) for i in range(len(self.layers)) for v in rec.captured[i] if isinstance(v, Tensor)]
            self._warn_reused_layers([len(c) for c in rec.captured])
            grads = torch.autograd.grad(scores.sum(), [x] + [v for _, v in calls], allow_unused=True)
        if grads[0] is None:
            raise ValueError("the target score does not depend on inputs[0]; FullGrad needs its gradient")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        total = self.channel_sum((grads[0] * x).detach().abs().to(dtype), size, interpolate_mode)
        biases = [effective_bias(m) for m in self.layers]
        for (i, value), g in zip(calls, grads[1:]):
            if g is None or value.dim() < 3:
                continue
            b = biases[i].to(g.device, dtype).reshape(1, -1, *([1] * (g.dim() - 2)))
            total = total + self.channel_sum((b * g.detach().to(dtype)).abs(), size, interpolate_mode)
        return total.to(x.dtype)

    def _warn_reused_layers(self, counts: List[int]) -> None:
        reused = [f"{self.layer_names[i]} ({c} calls)" for i, c in enumerate(counts) if c > 1]
        if reused and not self._warned_reused:
            self._warned_reused = True
            warnings.warn(
                f"FullGrad: {len(reused)} bias layer(s) ran more than once in one forward pass ("
                + ", ".join(reused[:3]) + (", ..." if len(reused) > 3 else "")
                + "). Every call's bias-gradient map is resized to the whole input and added, as in "
                "pytorch-grad-cam; if the calls see different parts of the input (a trunk run on crops "
                "or tiles), those maps land in the wrong place and the sum is not a spatial map of the input.",
                UserWarning,
                stacklevel=5,
            )

    @staticmethod
    def channel_sum(maps: Tensor, size: Tuple[int, ...], interpolate_mode: str) -> Tensor:
        r""":math:`\sum_k \mathrm{resize}(\mathrm{minmax}(M_k))` for maps ``(n, K, *s)``: ``(n, 1, *size)``.

        Each channel is min-max normalised per example (pytorch-grad-cam's epsilon, 1e-7); the
        channels are summed before the resize (bilinear resizing is linear, so this equals
        resizing each channel, for ``K`` times less work).
        """
        n, k = maps.shape[:2]
        norm = normalize_maps(maps.reshape(n * k, 1, *maps.shape[2:])).reshape(maps.shape)
        return upsample_maps(norm.sum(dim=1, keepdim=True), size, interpolate_mode)
