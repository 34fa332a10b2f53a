"""CAM (Zhou et al., 2016): the original class activation map of a GAP -> fully connected head."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple, Union

from torch import Tensor, nn

from captum_cam_ext._engine import CamAttribution, LayerRecord, LayerSpec
from captum_cam_ext.registry import register_method


@register_method(aliases=("cam", "classactivationmap"))
class LayerGapCam(CamAttribution):
    r"""CAM: the class's weights in the final fully connected layer weight the channels.

    .. math::

        L^c = \sum_k W^{fc}_{c,k} A_k,

    for a network whose head is global average pooling of :math:`A` followed by a fully
    connected layer :math:`W^{fc}` (ResNets, MobileNets, EfficientNets). For such a network the
    map is Grad-CAM's times the number of positions (the gradient of :math:`y^c` with respect to
    :math:`A_k(p)` is :math:`W^{fc}_{c,k} / |S|`), but it is computed without any backward pass.
    The fully connected bias is not part of the map.

    Reference: B. Zhou, A. Khosla, A. Lapedriza, A. Oliva, A. Torralba, "Learning Deep Features for
    Discriminative Localization", CVPR 2016; torchcam 0.5 ``CAM``.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`. The layer's channels must be the fully
        connected layer's inputs.
    fc_layer : nn.Module or str, optional
        The fully connected layer (an ``nn.Linear``, or a 1x1 convolution), or its name in the
        model. Default: the model's only ``nn.Linear``.

    Notes
    -----
    Shapes: activations ``(N, K, *S)``, weights ``(N, K, 1, ...)`` (the rows of the target
    classes), map ``(N, 1, *S)``. ``target`` must select classes (an int, a list, a tensor or
    None for the arg-max); a callable target has no row in the fully connected layer.
    """

    name = "gapcam"
    uses_gradients = False
    #: The weights need the target's class index from the record, so MultiCam's shared pass
    #: (which calls ``cam_weights(activations, gradients)``) cannot compute it.
    method_kind = "composite"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
        fc_layer: Optional[Union[nn.Module, str]] = None,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        self.fc_layer = self._find_fc(forward_func, fc_layer)

    @staticmethod
    def _find_fc(model: Any, fc_layer: Optional[Union[nn.Module, str]]) -> nn.Module:
        if not isinstance(model, nn.Module):
            if isinstance(fc_layer, (nn.Linear, nn.Conv2d)):
                return fc_layer
            raise TypeError("forward_func is not an nn.Module: pass fc_layer= (the nn.Linear of the head)")
        named = dict(model.named_modules())
        if isinstance(fc_layer, str):
            if fc_layer not in named:
                raise ValueError(f"fc_layer {fc_layer!r} is not a module of the model (see model.named_modules())")
            fc_layer = named[fc_layer]
        if fc_layer is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if len(linears) != 1:
                raise ValueError(
                    f"the model has {len(linears)} nn.Linear layers; pass fc_layer= (the fully connected layer "
                    "after global average pooling)"
                )
            fc_layer = linears[0]
        if not isinstance(fc_layer, nn.Module) or not isinstance(getattr(fc_layer, "weight", None), Tensor):
            raise TypeError(f"fc_layer must be a module with a weight (nn.Linear), got {type(fc_layer).__name__}")
        return fc_layer

    def class_weights(self) -> Tensor:
        """The fully connected weight as ``(classes, K)`` (a 1x1 convolution's is flattened)."""
        weight = self.fc_layer.weight
        assert isinstance(weight, Tensor)
        w = weight.detach()
        if w.dim() > 2:
            if any(s != 1 for s in w.shape[2:]):
                raise ValueError(f"fc_layer's weight has shape {tuple(w.shape)}; CAM needs a Linear or 1x1 conv")
            w = w.reshape(w.shape[0], w.shape[1])
        return w

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        fc = self.class_weights()
        out = []
        for index in record.indices:
            if index is None:
                raise ValueError(
                    "CAM weights channels with the target class's row of the fully connected layer, so target must "
                    "be class indices (an int, a list, a tensor, or None for the arg-max), not a callable or a tuple"
                )
            row = []
            for a in record.activations:
                if a.shape[1] != fc.shape[1]:
                    raise ValueError(
                        f"the layer has {a.shape[1]} channels but the fully connected layer has {fc.shape[1]} inputs; "
                        "explain the layer that is globally pooled into it"
                    )
                w = fc[index.to(fc.device)].to(a.device, a.dtype)
                row.append(w.reshape(*w.shape, *([1] * (a.dim() - 2))))
            out.append(row)
        return out
