"""Several gradient CAMs from one forward/backward pass (they share activations and gradients)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

from captum.log import log_usage
from torch import Tensor

from captum_cam_ext._engine import (
    CamAttribution,
    GradientCamAttribution,
    LayerSpec,
    MapsOrTuple,
    TargetSpec,
    TensorOrTuple,
)
from captum_cam_ext._linalg import first_component_projection
from captum_cam_ext.registry import canonical_method_name, method_class, method_kind, methods

MethodSpec = Union[str, Type[CamAttribution]]

#: The default set: the five classic gradient CAMs.
DEFAULT_METHODS: Tuple[str, ...] = ("gradcam", "gradcam++", "xgradcam", "layercam", "hirescam")


class MultiCam(GradientCamAttribution):
    r"""Compute several gradient-based CAMs from a single forward and backward pass.

    Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, Eigen-Grad-CAM, Eigen-CAM (and every
    registered method of kind ``"shared_pass"``, see :func:`captum_cam_ext.methods`) differ only in
    how they weight the same activations and gradients, so one pass serves them all.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    methods : sequence of str or CAM classes
        Registered names (``captum_cam_ext.methods("shared_pass")``: ``"gradcam"``,
        ``"gradcam++"``, ``"xgradcam"``, ``"layercam"``, ``"hirescam"``, ``"eigengradcam"``,
        ``"eigencam"``, ...) or the classes themselves.

    Examples
    --------
    >>> multi = MultiCam(model, model.layer4, methods=["gradcam", "gradcam++", LayerCam])
    >>> maps = multi.attribute(images, target=labels)   # {"gradcam": (N,1,h,w), ...}
    """

    name = "multicam"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        methods: Sequence[MethodSpec] = DEFAULT_METHODS,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        if isinstance(methods, str) or not len(methods):
            raise ValueError(f"methods must be a non-empty list of names or classes, got {methods!r}")
        self.methods: Dict[str, CamAttribution] = {}
        for m in methods:
            cls = self._method_class(m)
            key = canonical_method_name(cls) if cls in _registered() else cls.name
            if key in self.methods:
                raise ValueError(f"method {key!r} is listed twice")
            self.methods[key] = cls(forward_func, self.layers, reshape_transform=reshape_transform)

    @staticmethod
    def _method_class(m: MethodSpec) -> Type[CamAttribution]:
        shared = sorted(_shared_pass())
        if isinstance(m, str):
            cls = method_class(m)
        elif isinstance(m, type) and issubclass(m, CamAttribution):
            cls = m
        else:
            raise TypeError(f"a method must be a name or a CAM class, got {type(m).__name__}")
        if not (isinstance(cls, type) and issubclass(cls, CamAttribution)) or method_kind(cls) != "shared_pass":
            raise ValueError(f"{cls.__name__} cannot share a gradient pass; MultiCam takes {', '.join(shared)}")
        return cls

    def compute_all(
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
    ) -> Dict[str, List[Tensor]]:
        """The raw fused maps ``{name: [ (N,1,*S) per layer ]}`` from one pass."""
        record = self.record(
            inputs, [target], additional_forward_args, attribute_to_layer_input, backward_rule, with_gradients=True
        )
        return self._maps_of(record)

    def _maps_of(self, record: Any, eigen_smooth: bool = False) -> Dict[str, List[Tensor]]:
        out: Dict[str, List[Tensor]] = {}
        for name, m in self.methods.items():
            maps = []
            for u, (a, g) in enumerate(zip(record.activations, record.gradients[0])):
                w = m.cam_weights(a, g)
                cam = first_component_projection(m.contributions(a, w)) if eigen_smooth else m.fuse(a, w)
                maps.append(cam.reshape(cam.shape[0], 1) if record.flat[u] else cam)
            out[name] = maps
        return out

    def _maps_fn(self, eigen_smooth: bool) -> Callable[..., Dict[str, List[Tensor]]]:
        def maps(tup: Any, args: Any, target: TargetSpec, to_input: bool, rule: str) -> Dict[str, List[Tensor]]:
            return self._maps_of(self.record(tup, [target], args, to_input, rule, with_gradients=True), eigen_smooth)

        return maps

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
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> Dict[str, MapsOrTuple]:  # type: ignore[override]
        """Same arguments as :meth:`CamAttribution.attribute`; returns ``{name: maps}``."""
        return self.attribute_in_chunks(
            self._maps_fn(eigen_smooth), inputs, target, additional_forward_args, attribute_to_layer_input,
            relu_attributions, upsample_to_input, interpolate_mode, normalize, internal_batch_size, backward_rule,
            aug_smooth,
        )  # fmt: skip


def _registered() -> List[type]:
    return list(methods().values())


def _shared_pass() -> Dict[str, type]:
    return methods("shared_pass")
