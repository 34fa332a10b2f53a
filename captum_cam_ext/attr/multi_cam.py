"""Several gradient CAMs from one forward/backward pass (they share activations and gradients)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Type, Union

from captum._utils.common import _format_additional_forward_args
from captum.log import log_usage
from torch import Tensor

from captum_cam_ext._engine import CamAttribution, LayerSpec, TargetSpec, TensorOrTuple, format_inputs
from captum_cam_ext.attr.eigen_cam import LayerEigenCam, LayerEigenGradCam
from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.attr.grad_cam_pp import LayerGradCamPlusPlus
from captum_cam_ext.attr.hires_cam import LayerHiResCam
from captum_cam_ext.attr.layer_cam import LayerCam
from captum_cam_ext.attr.xgrad_cam import LayerXGradCam

#: Methods that :class:`MultiCam` can share one pass between, by name.
MULTI_CAM_METHODS: Dict[str, Type[CamAttribution]] = {
    cls.name: cls
    for cls in (
        LayerGradCam,
        LayerGradCamPlusPlus,
        LayerXGradCam,
        LayerCam,
        LayerHiResCam,
        LayerEigenGradCam,
        LayerEigenCam,
    )
}

MethodSpec = Union[str, Type[CamAttribution]]


class MultiCam(CamAttribution):
    r"""Compute several gradient-based CAMs from a single forward and backward pass.

    Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Eigen-Grad-CAM (and Eigen-CAM) differ
    only in how they weight the same activations and gradients, so one pass serves them all.

    Parameters
    ----------
    forward_func, layer, reshape_transform, trim_graph :
        As in :class:`~captum_cam_ext.CamAttribution`.
    methods : sequence of str or CAM classes
        Names (``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``, ``"layercam"``, ``"hirescam"``,
        ``"eigengradcam"``, ``"eigencam"``) or the classes themselves.

    Examples
    --------
    >>> multi = MultiCam(model, model.layer4, methods=["gradcam", "gradcam++", LayerCam])
    >>> maps = multi.attribute(images, target=labels)   # {"gradcam": (N,1,h,w), ...}
    """

    name = "multicam"

    def __init__(
        self,
        forward_func: Any,
        layer: LayerSpec,
        methods: Sequence[MethodSpec] = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"),
        reshape_transform: Any = None,
        trim_graph: bool = True,
    ) -> None:
        super().__init__(forward_func, layer, reshape_transform=reshape_transform, trim_graph=trim_graph)
        if isinstance(methods, str) or not len(methods):
            raise ValueError(f"methods must be a non-empty list of names or classes, got {methods!r}")
        self.methods: Dict[str, CamAttribution] = {}
        for m in methods:
            if isinstance(m, str):
                key = m.lower().replace("-", "").replace("_", "").replace("plusplus", "++")
                if key not in MULTI_CAM_METHODS:
                    raise ValueError(f"unknown CAM method {m!r}; choose from {sorted(MULTI_CAM_METHODS)}")
                cls = MULTI_CAM_METHODS[key]
            elif isinstance(m, type) and issubclass(m, CamAttribution):
                cls = m
                if cls.uses_perturbation or cls not in MULTI_CAM_METHODS.values():
                    raise ValueError(
                        f"{cls.__name__} cannot share a gradient pass; MultiCam takes "
                        f"{sorted(c.__name__ for c in MULTI_CAM_METHODS.values())}"
                    )
            else:
                raise TypeError(f"a method must be a name or a CAM class, got {type(m).__name__}")
            if cls.name in self.methods:
                raise ValueError(f"method {cls.name!r} is listed twice")
            self.methods[cls.name] = cls(forward_func, self.layers, reshape_transform=reshape_transform)

    def compute_all(
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
    ) -> Dict[str, List[Tensor]]:
        """The raw fused maps ``{name: [ (N,1,h,w) per layer ]}`` from one pass."""
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self._check_post_args("bilinear", None, backward_rule)
        self._check_inputs_match_model(tup)
        return self._maps(tup, args, target, attribute_to_layer_input, rule)

    def _maps(self, tup: Any, args: Any, target: TargetSpec, to_input: bool, rule: str) -> Dict[str, List[Tensor]]:
        acts, grads, _ = self._record(tup, args, target, to_input, with_gradients=True, backward_rule=rule)
        assert grads is not None
        a = [self._to_maps(x, lay).float() for x, lay in zip(acts, self.layers)]
        g = [self._to_maps(x, lay).float() for x, lay in zip(grads, self.layers)]
        return {name: [m.fuse(ai, m.cam_weights(ai, gi)) for ai, gi in zip(a, g)] for name, m in self.methods.items()}

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        upsample_to_input: bool = False,
        interpolate_mode: str = "bilinear",
        normalize: bool = False,
        internal_batch_size: Optional[int] = None,
        backward_rule: Optional[str] = None,
    ) -> Dict[str, Tensor]:  # type: ignore[override]
        """Same arguments as :meth:`CamAttribution.attribute`; returns ``{name: maps}``."""
        return self._attribute_in_chunks(
            self._maps, inputs, target, additional_forward_args, attribute_to_layer_input, relu_attributions,
            upsample_to_input, interpolate_mode, normalize, internal_batch_size, backward_rule,
        )  # fmt: skip
