"""Finer-CAM (Zhang et al., 2025): explain the target class against the classes most similar to it."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from captum.log import log_usage
from torch import Tensor

from captum_cam_ext._engine import (
    CamAttribution,
    CamDetails,
    GradientCamAttribution,
    LayerSpec,
    MapsOrTuple,
    TargetSpec,
)
from captum_cam_ext.registry import method_class, register_method
from captum_cam_ext.targets import FinerWeightedTarget

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


@register_method(aliases=("finer",))
class LayerFinerCam(GradientCamAttribution):
    r"""Finer-CAM: a base CAM of the contrastive score between the target and its most similar classes.

    The base method (Grad-CAM by default) explains
    :class:`~captum_cam_ext.targets.FinerWeightedTarget`'s score

    .. math::

        s = y_c - \alpha\, \frac{\sum_{j \in R} \omega_j\, y_j}{\sum_{j \in R} \omega_j},

    where :math:`R` are the classes whose scores are closest to :math:`y_c` (ranks
    ``comparison_ranks`` of :math:`|y_j - y_c|`) and :math:`\omega_j` their softmax probabilities
    (``weighting="softmax"``, pytorch-grad-cam) or 1 (``"uniform"``, torchcam). Features shared
    with the look-alike classes cancel, so the map shows what sets the class apart. One forward
    and one backward pass, as the base method.

    Reference: Z. Zhang, J. Wang, Z. Jiang, M. Huang, X. Liu, "Finer-CAM: Spotting the Difference
    Reveals Finer Details for Visual Explanation", CVPR 2025 (arXiv:2501.11309); pytorch-grad-cam
    1.5.7 ``FinerCAM`` (``alpha=1``, softmax weights, the default here) and torchcam 0.5
    ``FinerCAM`` (``weighting="uniform"``, ``alpha=0.6``).

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`. The model must return class scores ``(N, C)``.
    base_method : str or CAM class
        Any registered CAM that accepts a callable target (default ``"gradcam"``).
    alpha : float
        The comparison strength :math:`\alpha` (default 1).
    comparison_ranks : sequence of int
        Which of the most similar classes are compared (default ``(1, 2, 3)``).
    weighting : str
        ``"softmax"`` (default) or ``"uniform"``.
    **base_kwargs :
        Further constructor arguments of the base method (e.g. ``batch_size`` for Score-CAM).

    Notes
    -----
    ``target`` selects the class :math:`c` (an int, one per example, or None for the arg-max);
    callable and tuple targets are not supported. Shapes are the base method's: map ``(N, 1, *S)``.
    """

    name = "finercam"
    #: The base method runs with Finer-CAM's own target, not MultiCam's shared one.
    method_kind = "composite"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
        base_method: Union[str, type] = "gradcam",
        alpha: float = 1.0,
        comparison_ranks: Sequence[int] = (1, 2, 3),
        weighting: str = "softmax",
        **base_kwargs: Any,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        cls = method_class(base_method)
        if not (isinstance(cls, type) and issubclass(cls, CamAttribution)) or cls is type(self):
            raise ValueError(f"base_method must be a registered layer CAM (e.g. 'gradcam'), got {base_method!r}")
        FinerWeightedTarget(None, None, alpha, comparison_ranks, weighting)  # validates the options
        self.alpha = float(alpha)
        self.comparison_ranks = tuple(comparison_ranks)
        self.weighting = weighting
        kw: Dict[str, Any] = dict(base_kwargs)
        if device_ids is not None:
            kw["device_ids"] = device_ids
        if reshape_transform is not None:
            kw["reshape_transform"] = reshape_transform
        self.base: CamAttribution = cls(forward_func, self.layers if len(self.layers) > 1 else self.layers[0], **kw)
        self.base.layer_call = layer_call  # public attributes of every CamAttribution
        self.base.trim_graph = self.trim_graph

    def finer_target(self, target: TargetSpec) -> FinerWeightedTarget:
        """The contrastive target for ``target`` (class indices or None)."""
        if callable(target) and not isinstance(target, Tensor):
            raise ValueError("Finer-CAM builds its own target from class indices; pass an int, a list or a tensor")
        if isinstance(target, tuple) or (isinstance(target, list) and target and isinstance(target[0], tuple)):
            raise ValueError(
                "Finer-CAM needs class indices, not tuple targets (positions in a multi-dimensional output)"
            )
        if isinstance(target, Tensor) and target.numel() == 1:
            target = int(target.reshape(()).item())
        return FinerWeightedTarget(target, None, self.alpha, self.comparison_ranks, self.weighting)  # type: ignore[arg-type]

    def compute(
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> List[CamDetails]:
        """The base method's :meth:`~captum_cam_ext.CamAttribution.compute` with the contrastive target."""
        return self.base.compute(
            inputs, self.finer_target(target), additional_forward_args, attribute_to_layer_input, backward_rule,
            grad_kwargs,
        )  # fmt: skip

    def compute_for_targets(
        self,
        inputs: TensorOrTuple,
        targets: Union[Tensor, Callable[[Any], Tensor]],
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
    ) -> List[List[CamDetails]]:
        """:meth:`compute` for each column of ``targets`` ``(N, T)`` (one pass per column)."""
        if callable(targets) and not isinstance(targets, Tensor):
            raise ValueError("Finer-CAM needs the target classes as an (N, T) tensor")
        n = inputs[0].shape[0] if isinstance(inputs, (tuple, list)) else inputs.shape[0]
        index = self.check_target_matrix(targets, n)
        return [
            self.compute(inputs, index[:, t], additional_forward_args, attribute_to_layer_input, backward_rule)
            for t in range(index.shape[1])
        ]

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        grad_kwargs: Optional[Dict[str, Any]] = None,
        upsample_to_input: bool = False,
        interpolate_mode: str = "bilinear",
        normalize: bool = False,
        internal_batch_size: Optional[int] = None,
        backward_rule: Optional[str] = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
    ) -> MapsOrTuple:
        """Same arguments and shapes as :meth:`captum_cam_ext.CamAttribution.attribute`."""
        if eigen_smooth and not attr_dim_summation:
            raise ValueError("eigen_smooth replaces the channel sum: it cannot be used with attr_dim_summation=False")

        def raw_maps(tup: Tuple[Tensor, ...], args: Any, tgt: TargetSpec, to_input: bool, rule: str) -> Dict[str, Any]:
            details = self.compute(tup, tgt, args, to_input, rule, grad_kwargs)
            if eigen_smooth:
                return {"cam": [self.base.eigen_smoothed(d) for d in details]}
            if attr_dim_summation:
                return {"cam": [d.cam for d in details]}
            return {"cam": [self.base.contributions(d.activations, d.weights) for d in details]}

        return self.attribute_in_chunks(
            raw_maps, inputs, target, additional_forward_args, attribute_to_layer_input, relu_attributions,
            upsample_to_input, interpolate_mode, normalize, internal_batch_size, backward_rule, aug_smooth,
        )["cam"]  # fmt: skip
