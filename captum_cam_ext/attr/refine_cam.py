"""Refine-CAM: several layers' maps multiplied, coarse layers localising, fine layers sharpening."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from captum.log import log_usage
from torch import Tensor

from captum_cam_ext._engine import (
    CamAttribution,
    GradientCamAttribution,
    LayerSpec,
    MapsOrTuple,
    TargetSpec,
)
from captum_cam_ext._maps import normalize_maps, upsample_maps
from captum_cam_ext.registry import method_class, register_method

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def refine_maps(
    maps: List[Tensor], size: Tuple[int, ...], interpolate_mode: str = "bilinear", renormalize: bool = True
) -> Tensor:
    r"""The element-wise product of per-layer maps: :math:`\prod_l \mathrm{mm}(R(\mathrm{mm}(\mathrm{ReLU}(M_l))))`.

    Each map ``(N, 1, *S_l)`` is ReLU'd, min-max normalised (mm: per example,
    :func:`~captum_cam_ext.normalize_maps`), resized to ``size`` and, with ``renormalize``,
    normalised again (a resized map's extremes can move inside ``[0, 1]``); the result
    ``(N, 1, *size)`` is not normalised.
    """
    out: Optional[Tensor] = None
    for m in maps:
        m = upsample_maps(normalize_maps(torch.relu(m)), size, interpolate_mode)
        if renormalize:
            m = normalize_maps(m)
        out = m if out is None else out * m
    assert out is not None
    return out


@register_method(aliases=("refine",))
class LayerRefineCam(GradientCamAttribution):
    r"""Refine-CAM: the product of a base CAM's normalised maps at several layers.

    .. math::

        L = \prod_{l} \mathrm{mm}\Big(R\big(\mathrm{mm}(\mathrm{ReLU}(L_l))\big)\Big),

    with :math:`L_l` the base method's map at layer :math:`l` (Grad-CAM++ by default),
    :math:`\mathrm{mm}` per-example min-max normalisation and :math:`R` the resize to a common
    size. With ``upsample_to_input=True`` the product is taken at the input's size and each
    resized map is normalised again (pytorch-grad-cam's ``RefineCAM``, equal to it); otherwise at
    the largest layer's size without the second normalisation (torchcam's ``RefineCAM``, equal to
    it). A region survives only where every layer agrees: the deep, coarse layer localises
    the class and the early, fine layers add resolution while their background noise is
    multiplied away. Shared-pass base methods compute all layers from one forward and one backward
    pass.

    Unlike :class:`~captum_cam_ext.CamAttribution`'s multi-layer fusion (the mean of normalised
    maps), the product is a logical AND: one layer's zero removes a region.

    References: pytorch-grad-cam 1.5.7 ``RefineCAM`` and torchcam 0.5 ``RefineCAM``, both citing
    "How to Evaluate and Refine your CAM", arXiv:2605.14641.

    Parameters
    ----------
    forward_func, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    layer : list of nn.Module
        The layers, usually from deep to early (e.g. ``[model.layer4, model.layer3, model.layer2]``);
        their maps need the same number of spatial dimensions. One layer gives the base map,
        normalised.
    base_method : str or CAM class
        A registered layer CAM (default ``"gradcam++"``).
    **base_kwargs :
        Further constructor arguments of the base method.

    Notes
    -----
    Returns ``(N, 1, *S)``: at the largest layer's resolution, or the input's with
    ``upsample_to_input=True``; non-negative, and in ``[0, 1]`` with ``normalize=True``.
    """

    name = "refinecam"
    #: A product over layers of another method's maps.
    method_kind = "composite"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
        base_method: Union[str, type] = "gradcam++",
        **base_kwargs: Any,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        cls = method_class(base_method)
        if not (isinstance(cls, type) and issubclass(cls, CamAttribution)) or issubclass(cls, LayerRefineCam):
            raise ValueError(f"base_method must be a registered layer CAM (e.g. 'gradcam++'), got {base_method!r}")
        kw: Dict[str, Any] = dict(base_kwargs)
        if device_ids is not None:
            kw["device_ids"] = device_ids
        if reshape_transform is not None:
            kw["reshape_transform"] = reshape_transform
        self.base: CamAttribution = cls(forward_func, list(self.layers), **kw)
        self.base.layer_call = layer_call  # public attributes of every CamAttribution
        self.base.trim_graph = self.trim_graph

    def layer_maps(
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
        grad_kwargs: Optional[Dict[str, Any]] = None,
        eigen_smooth: bool = False,
    ) -> List[Tensor]:
        """The base method's raw map at each layer, ``[(N, 1, *S_l)]`` (one pass for shared-pass bases);
        with ``eigen_smooth``, each layer's map is the base's ``eigen_smooth`` map."""
        details = self.base.compute(
            inputs, target, additional_forward_args, attribute_to_layer_input, backward_rule, grad_kwargs
        )
        if len(details) != len(self.layers):
            raise ValueError("Refine-CAM needs one tensor output per layer, not a layer returning a tuple")
        if any(d.cam.dim() < 3 for d in details):
            raise ValueError("Refine-CAM needs layers with spatial dimensions (N, K, *S)")
        return [self.base.eigen_smoothed(d) if eigen_smooth else d.cam for d in details]

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        grad_kwargs: Optional[Dict[str, Any]] = None,
        upsample_to_input: bool = False,
        interpolate_mode: str = "bilinear",
        normalize: bool = False,
        internal_batch_size: Optional[int] = None,
        backward_rule: Optional[str] = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> MapsOrTuple:
        """Same arguments as :meth:`captum_cam_ext.CamAttribution.attribute` (the per-layer maps are
        always ReLU'd, so ``relu_attributions`` changes nothing; ``eigen_smooth`` applies to each
        layer's map, as pytorch-grad-cam's)."""

        def raw_maps(tup: Tuple[Tensor, ...], args: Any, tgt: TargetSpec, to_input: bool, rule: str) -> Dict[str, Any]:
            maps = self.layer_maps(tup, tgt, args, to_input, rule, grad_kwargs, eigen_smooth)
            if any(m.dim() != maps[0].dim() for m in maps):
                raise ValueError("Refine-CAM multiplies maps with the same number of spatial dimensions")
            if upsample_to_input:
                size = tuple(tup[0].shape[-(maps[0].dim() - 2) :])
            else:
                size = max((tuple(m.shape[2:]) for m in maps), key=lambda s: int(torch.tensor(s).prod()))
            return {"cam": [refine_maps(maps, size, interpolate_mode, renormalize=upsample_to_input)]}

        return self.attribute_in_chunks(
            raw_maps, inputs, target, additional_forward_args, attribute_to_layer_input, relu_attributions,
            upsample_to_input, interpolate_mode, normalize, internal_batch_size, backward_rule, aug_smooth,
        )["cam"]  # fmt: skip
