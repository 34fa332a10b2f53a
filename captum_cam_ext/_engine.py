"""The CAM engine shared by every method of the package.

One class, :class:`CamAttribution`, owns everything that is not a method's weighting: input
validation, target selection (Captum's target forms), ``additional_forward_args``, tuple inputs,
forward hooks on one or several layers (always removed), layer-only gradients
(``torch.autograd.grad`` with respect to the layer activations, never into the parameters), graph
trimming before the layer, ``reshape_transform`` for token layouts, ReLU / upsampling /
normalisation, multi-layer fusion, batching, and leaving the model exactly as found. A method is a
subclass that overrides :meth:`CamAttribution.cam_weights` (gradient methods subclass
:class:`GradientCamAttribution`; perturbation methods subclass
:class:`captum_cam_ext.attr.perturbation.PerturbationCamAttribution`).

Data flows one way: inputs -> :meth:`CamAttribution.record` (one forward, one backward per
target: activations, gradients) -> :meth:`CamAttribution.layer_weights` (the method) ->
:meth:`CamAttribution.fuse` -> post-processing (:meth:`CamAttribution.attribute_in_chunks`).

Extension API
-------------
Methods built on other methods (Conceptor-CAM, :class:`~captum_cam_ext.MultiCam`) use only public
members: :meth:`~CamAttribution.record`, :meth:`~CamAttribution.compute`,
:meth:`~CamAttribution.compute_for_targets`, :meth:`~CamAttribution.to_maps`,
:meth:`~CamAttribution.check_options` and :meth:`~CamAttribution.attribute_in_chunks`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_cam_ext._hooks import LayerRecorder, has_training_module, module_path, preserved_state
from captum_cam_ext._inputs import TensorOrTuple, format_inputs, repeat_args, run_forward, slice_args
from captum_cam_ext._linalg import first_component_projection
from captum_cam_ext._maps import check_interpolate_mode, normalize_maps, upsample_maps
from captum_cam_ext._targets import (
    TargetSpec,
    describe,
    normalise_target,
    resolve_target,
    select_target_scores,
)
from captum_cam_ext.backprop import guided_relus

__all__ = [
    "BACKWARD_RULES",
    "CamAttribution",
    "CamDetails",
    "GradientCamAttribution",
    "LayerRecord",
    "LayerRecorder",
    "MapsOrTuple",
    "TargetSpec",
    "format_inputs",
    "module_path",
    "preserved_state",
    "repeat_args",
    "resolve_target",
    "run_forward",
    "select_target_scores",
    "slice_args",
    "spatial_dims",
]

LayerSpec = Union[nn.Module, Sequence[nn.Module]]
MapsOrTuple = Union[Tensor, Tuple[Tensor, ...]]
RawMaps = Dict[str, List[Tensor]]  # {name: [raw (N, 1, *S) map per recorded unit]}

BACKWARD_RULES: Tuple[str, ...] = ("standard", "guided")
#: ``aug_smooth``'s test-time augmentations: (horizontal flip, factor), as pytorch-grad-cam's default.
AUG_SMOOTH_TRANSFORMS: Tuple[Tuple[bool, float], ...] = tuple((f, m) for f in (False, True) for m in (0.9, 1.0, 1.1))


@dataclass
class CamDetails:
    """Everything one CAM computation produced for one layer (or one tensor of a tuple output).

    Attributes
    ----------
    activations : Tensor
        Layer activations, shape ``(N, K, *S)`` (after ``reshape_transform``; a layer output
        ``(N, K)`` is seen as ``(N, K, 1)``).
    gradients : Tensor or None
        Gradients of the target scores with respect to the activations, same shape; ``None`` for
        methods that use no gradients.
    weights : Tensor
        The method's weights: per channel ``(N, K, 1, ...)`` or per position ``(N, K, *S)``.
    cam : Tensor
        The fused map before any ReLU, ``(N, 1, *S)`` (``(N, 1)`` for a layer output ``(N, K)``).
    target : Tensor or None
        The class index used for each example, ``(N,)``; ``None`` for a callable or tuple target.
    outputs : Any
        The model outputs on the unperturbed inputs (detached).
    """

    activations: Tensor
    gradients: Optional[Tensor]
    weights: Tensor
    cam: Tensor
    target: Optional[Tensor]
    outputs: Any


@dataclass
class LayerRecord:
    """What one forward pass (and one backward pass per target) recorded at the target layers.

    A *unit* is one recorded tensor: one per layer, or one per tensor of a layer's tuple output.

    Attributes
    ----------
    activations : list of Tensor
        Per unit, ``(N, K, *S)`` (canonical layout, detached, compute dtype).
    gradients : list of list of Tensor
        ``gradients[t][u]``: gradient of target ``t``'s scores w.r.t. unit ``u`` (same layout);
        empty when no gradients were taken.
    outputs : Any
        The model outputs (detached).
    targets : list
        The target specs, one per column ``t``.
    indices : list of (Tensor or None)
        Per target, the class index of each example ``(N,)``, or None (callable / tuple targets).
    units : list of (int, int or None)
        Per unit, ``(layer index, element index in a tuple output or None)``.
    flat : list of bool
        Per unit, whether the layer value was ``(N, K)`` (its maps are returned as ``(N, 1)``).
    calls : list of int
        Per layer, how many times it ran in the forward pass.
    roots, graph_gradients : list
        Only for methods with ``needs_graph = True`` (second-order methods such as Shapley-CAM):
        per unit the raw layer value that is the graph root, and ``graph_gradients[t][u]`` the raw
        gradient *with* its graph (``create_graph=True``), so that Hessian-vector products
        ``torch.autograd.grad(graph_gradients[t][u], roots[u], grad_outputs=v)`` can be taken.
    """

    activations: List[Tensor]
    gradients: List[List[Tensor]]
    outputs: Any
    targets: List[Any]
    indices: List[Optional[Tensor]]
    units: List[Tuple[int, Optional[int]]]
    flat: List[bool] = field(default_factory=list)
    calls: List[int] = field(default_factory=list)
    roots: List[Tensor] = field(default_factory=list)
    graph_gradients: List[List[Tensor]] = field(default_factory=list)

    @property
    def tuple_output(self) -> bool:
        """True when the (single) layer returned a tuple of tensors."""
        return any(e is not None for _, e in self.units)


# --------------------------------------------------------------------------------------------
# Small shared helpers
# --------------------------------------------------------------------------------------------


def spatial_dims(t: Tensor) -> Tuple[int, ...]:
    """The dimensions after batch and channel, ``(2, ..., t.dim() - 1)``."""
    return tuple(range(2, t.dim()))


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class CamAttribution(LayerAttribution):
    r"""Base class of every CAM method: a Captum layer attribution over one or several layers.

    Gradient methods subclass :class:`GradientCamAttribution` and override :meth:`cam_weights`;
    perturbation methods subclass
    :class:`~captum_cam_ext.attr.perturbation.PerturbationCamAttribution`. All the rest (hooks,
    targets, batching, post-processing) happens here, once.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model. Its output is ``(N, C)`` scores for class targets, any tensor for tuple
        targets, or anything (a dict, a tuple) for callable targets.
    layer : nn.Module or list of nn.Module
        The layer(s) whose activations are explained. Their value may be ``(N, K, *S)`` with 0 to
        3 dimensions ``S`` (a ``Linear`` output, sequences, images, volumes) or a tuple of such
        tensors (one map per tensor, as Captum). With several layers the maps are upsampled to a
        common size, min-max normalised per layer and averaged.
    device_ids : list of int, optional
        As in Captum: the devices of a ``DataParallel`` model, whose layer runs once per replica;
        the replicas' values are concatenated in this order.
    reshape_transform : callable, optional
        Maps a layer output (e.g. ViT tokens ``(N, T, C)``) to ``(N, K, *S)``. Applied to the
        activations and to the gradients.
    trim_graph : bool
        When True (default) the forward runs without recording the autograd graph until the
        first target layer, so a gradient CAM costs about one inference forward in memory. The
        gradients are the same (they are taken with respect to the layer only). Turn it off for
        models whose code behaves differently under ``torch.no_grad()``.
    layer_call : int
        Which call of a layer that runs several times in one forward pass is explained (default
        -1, the last one, as Captum).
    """

    uses_gradients: ClassVar[bool] = True
    uses_perturbation: ClassVar[bool] = False
    #: The backward rule used when ``attribute``/``compute`` get ``backward_rule=None``.
    default_backward_rule: ClassVar[str] = "standard"
    #: Keep the backward graph (``create_graph=True``) in :attr:`LayerRecord.graph_gradients`.
    needs_graph: ClassVar[bool] = False
    name: ClassVar[str] = "cam"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func must be a callable (usually an nn.Module), got {type(forward_func).__name__}"
            )
        if isinstance(device_ids, nn.Module) or callable(device_ids):
            raise TypeError(
                "the third positional argument is device_ids (as in Captum); pass reshape_transform= by keyword"
            )
        layers: List[nn.Module] = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]  # type: ignore[list-item]
        if not layers:
            raise ValueError("layer is an empty list; pass at least one nn.Module")
        modules = list(forward_func.modules()) if isinstance(forward_func, nn.Module) else []
        for lay in layers:
            if not isinstance(lay, nn.Module):
                raise TypeError(f"layer must be an nn.Module or a list of them, got {type(lay).__name__}")
            if modules and not any(lay is m for m in modules):
                raise ValueError(
                    f"layer {type(lay).__name__} is not a submodule of the model; pass a module taken "
                    "from the model itself (e.g. model.layer4)"
                )
        if reshape_transform is not None and not callable(reshape_transform):
            raise TypeError("reshape_transform must be a callable or None")
        if device_ids is not None and (
            not isinstance(device_ids, (list, tuple)) or not all(isinstance(d, int) for d in device_ids)
        ):
            raise TypeError(f"device_ids must be a list of ints (as in Captum) or None, got {device_ids!r}")
        if isinstance(layer_call, bool) or not isinstance(layer_call, int):
            raise TypeError(f"layer_call must be an int (-1: the last call), got {layer_call!r}")
        LayerAttribution.__init__(
            self,
            forward_func,
            layers[0] if len(layers) == 1 else layers,
            device_ids,  # type: ignore[arg-type]
        )
        self.layers = layers
        self.layer_names = [module_path(forward_func, lay) for lay in layers]
        self.reshape_transform = reshape_transform
        self.trim_graph = bool(trim_graph)
        self.layer_call = layer_call

    # ---- what a method overrides --------------------------------------------------------

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        """The method's weights for ``activations`` ``(N, K, *S)`` and their gradients.

        Returns ``(N, K, 1, ...)`` channel weights or ``(N, K, *S)`` position weights.
        """
        raise NotImplementedError(f"{type(self).__name__} must override cam_weights (or layer_weights)")

    def fuse(self, activations: Tensor, weights: Tensor) -> Tensor:
        """Fuse channels into one map: ``sum_k w_k * A_k``, shape ``(N, 1, *S)``."""
        return (weights * activations).sum(dim=1, keepdim=True)

    def contributions(self, activations: Tensor, weights: Tensor) -> Tensor:
        """Per-channel terms ``w_k * A_k`` ``(N, K, *S)``, returned by ``attr_dim_summation=False``."""
        return weights * activations

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        """Weights ``[target t][unit u]`` from a record; the default applies :meth:`cam_weights`."""
        out = []
        for t in range(len(record.targets)):
            grads: Sequence[Optional[Tensor]] = record.gradients[t] if record.gradients else [None] * len(record.units)
            out.append([self.cam_weights(a, g) for a, g in zip(record.activations, grads)])
        return out

    # ---- the shared pipeline ------------------------------------------------------------

    def to_maps(self, value: Tensor, layer: nn.Module) -> Tensor:
        """A layer value in the canonical layout ``(N, K, *S)``, ``S`` of 1 to 3 dimensions.

        Applies ``reshape_transform``; a value ``(N, K)`` becomes ``(N, K, 1)``.
        """
        where = module_path(self.forward_func, layer)
        if self.reshape_transform is not None:
            value = self.reshape_transform(value)
            if not isinstance(value, Tensor) or not 2 <= value.dim() <= 5:
                raise ValueError(
                    f"reshape_transform must return a tensor (N, K, *S) with 0 to 3 dimensions S, got {describe(value)}"
                )
        elif value.dim() == 3 and self._looks_like_tokens(value):
            raise ValueError(
                f"the output of layer {where} has shape {tuple(value.shape)}, which looks like tokens "
                "(N, tokens, channels); pass reshape_transform= to map it to (N, channels, h, w) "
                "(e.g. captum_cam_ext.reshape.vit_reshape_transform); if it really is a sequence (N, K, L), "
                "pass reshape_transform=lambda t: t"
            )
        if value.dim() < 2 or value.dim() > 5:
            raise ValueError(
                f"the value of layer {where} has shape {tuple(value.shape)}; CAMs need (N, K) or (N, K, *S) "
                "with at most 3 dimensions S; pass reshape_transform= to map it"
            )
        return value[..., None] if value.dim() == 2 else value

    @staticmethod
    def _looks_like_tokens(value: Tensor) -> bool:
        # (N, T, C) with T = 1 + a square grid of at least 4 x 4 patches (class token + patches) and
        # a transformer width C (a multiple of 16), as ViTs produce; a real (N, K, L) sequence
        # that matches can pass reshape_transform=lambda t: t
        t, c = value.shape[1], value.shape[2]
        root = int(round((t - 1) ** 0.5)) if t > 1 else 0
        return root >= 4 and root * root == t - 1 and c >= 32 and c % 16 == 0

    def _guided_context(self, backward_rule: str) -> Any:
        if backward_rule == "standard":
            return contextlib.nullcontext()
        if not isinstance(self.forward_func, nn.Module):
            raise TypeError("backward_rule='guided' needs forward_func to be an nn.Module (its ReLUs are hooked)")
        return guided_relus(self.forward_func)

    def _no_gradient_error(self, reason: str) -> ValueError:
        names = ", ".join(self.layer_names)
        return ValueError(
            f"{type(self).__name__} needs the gradient of the target score with respect to layer {names}, "
            f"but {reason}. Call attribute() outside torch.inference_mode(), and do not detach or run "
            "torch.no_grad() between that layer and the output inside the model's forward (for a frozen "
            "backbone, freeze it with requires_grad_(False) instead); or pick a layer after the detached part"
        )

    def record(
        self,
        inputs: TensorOrTuple,
        targets: Sequence[TargetSpec] = (None,),
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
        with_gradients: Optional[bool] = None,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> LayerRecord:
        """One forward pass, then one backward pass per target: activations, gradients, outputs.

        Parameters
        ----------
        inputs, additional_forward_args, attribute_to_layer_input, backward_rule, grad_kwargs :
            As in :meth:`attribute` (inputs are validated here).
        targets : sequence of target specs
            One entry per column ``t`` (each in any form ``attribute`` accepts).
        with_gradients : bool, optional
            Take gradients (default: the method's ``uses_gradients``).

        Returns
        -------
        LayerRecord
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self.check_options("bilinear", None, backward_rule)
        self._check_inputs_match_model(tup)
        return self._record(tup, args, list(targets), attribute_to_layer_input, rule, with_gradients, grad_kwargs)

    def _record(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        targets: List[TargetSpec],
        to_input: bool,
        rule: str,
        with_gradients: Optional[bool] = None,
        grad_kwargs: Optional[Dict[str, Any]] = None,
        training: Optional[bool] = None,
    ) -> LayerRecord:
        grads_wanted = self.uses_gradients if with_gradients is None else bool(with_gradients)
        n = inputs[0].shape[0]
        targets = [normalise_target(t, n) for t in targets]
        if grads_wanted and torch.is_inference_mode_enabled():
            raise self._no_gradient_error(
                "attribute() was called inside torch.inference_mode(), where no gradient exists"
            )
        rec = LayerRecorder(self.layers, to_input, grad_root=grads_wanted, names=self.layer_names)
        grad_ctx: Any = (
            (torch.no_grad() if self.trim_graph else torch.enable_grad()) if grads_wanted else torch.no_grad()
        )
        gradients: List[List[Tensor]] = []
        graph_gradients: List[List[Tensor]] = []
        flat_roots: List[Tensor] = []
        state = preserved_state(self.forward_func, training)
        with state, self._guided_context(rule if grads_wanted else "standard"), grad_ctx:
            with rec:
                outputs = run_forward(self.forward_func, inputs, args)
            raw = [rec.value(i, self.layer_call, self.device_ids) for i in range(len(self.layers))]
            calls = [rec.calls(i) for i in range(len(self.layers))]
            units, values = self._units(raw)
            if grads_wanted:
                unit_roots: List[List[Tensor]] = [v if isinstance(v, list) else [v] for v in values]
                flat_roots = [r for rs in unit_roots for r in rs]
                for t, target in enumerate(targets):
                    scores = select_target_scores(outputs, target)
                    if not scores.requires_grad:
                        raise self._no_gradient_error(
                            "the target score does not depend on it through a recorded graph (the output was "
                            "computed under torch.no_grad() or detached after the layer)"
                        )
                    kw = {"allow_unused": True, "retain_graph": t < len(targets) - 1, **(grad_kwargs or {})}
                    if self.needs_graph:
                        kw.update(create_graph=True, retain_graph=True)
                    got = torch.autograd.grad(scores.sum(), flat_roots, **kw)
                    if any(g is None for g in got):
                        raise self._no_gradient_error(
                            "no gradient flows from the target score to it (a .detach() or torch.no_grad() sits "
                            "between the layer and the output, or the output does not use the layer)"
                        )
                    it = iter(got)
                    gradients.append([torch.cat([next(it) for _ in rs]) for rs in unit_roots])  # type: ignore[misc]
                    if self.needs_graph:
                        graph_gradients.append(list(got))  # type: ignore[arg-type]
        acts = [torch.cat([r.detach() for r in v]) if isinstance(v, list) else v.detach() for v in values]
        out_detached = outputs.detach() if isinstance(outputs, Tensor) else outputs
        layer_of = [self.layers[li] for li, _ in units]
        canon_acts = [self.to_maps(a, lay) for a, lay in zip(acts, layer_of)]
        flat = [a.dim() == 2 and self.reshape_transform is None for a in acts]
        dtype_of = [self._compute_dtype(a) for a in canon_acts]
        canon_acts = [a.to(d) for a, d in zip(canon_acts, dtype_of)]
        canon_grads = [
            [self.to_maps(g.detach(), lay).to(d) for g, lay, d in zip(gs, layer_of, dtype_of)] for gs in gradients
        ]
        indices = [resolve_target(out_detached, t) if self._has_class_index(out_detached, t) else None for t in targets]
        kept_roots = flat_roots if self.needs_graph else []
        return LayerRecord(
            canon_acts, canon_grads, out_detached, targets, indices, units, flat, calls, kept_roots, graph_gradients
        )

    @staticmethod
    def _has_class_index(outputs: Any, target: TargetSpec) -> bool:
        if callable(target) and not isinstance(target, Tensor):
            return False
        if isinstance(target, tuple) or (isinstance(target, list) and target and isinstance(target[0], tuple)):
            return False
        return isinstance(outputs, Tensor) and outputs.dim() == 2

    @staticmethod
    def _compute_dtype(t: Tensor) -> torch.dtype:
        return torch.float64 if t.dtype == torch.float64 else torch.float32

    def _units(self, raw: List[Any]) -> Tuple[List[Tuple[int, Optional[int]]], List[Any]]:
        units: List[Tuple[int, Optional[int]]] = []
        values: List[Any] = []
        for li, v in enumerate(raw):
            if isinstance(v, tuple):
                if len(self.layers) > 1:
                    raise ValueError(
                        f"layer {self.layer_names[li]} returns a tuple of tensors; with several layers each must "
                        "return one tensor (explain a tuple-output layer on its own: one map per tensor)"
                    )
                units += [(li, e) for e in range(len(v))]
                values += list(v)
            else:
                units.append((li, None))
                values.append(v)
        return units, values

    def _details(self, record: LayerRecord, weights: List[List[Tensor]]) -> List[List[CamDetails]]:
        result = []
        for t, ws in enumerate(weights):
            row = []
            for u, (a, w) in enumerate(zip(record.activations, ws)):
                g = record.gradients[t][u] if record.gradients else None
                cam = self.fuse(a, w)
                if record.flat[u]:
                    cam = cam.reshape(cam.shape[0], 1)
                row.append(CamDetails(a, g, w, cam, record.indices[t], record.outputs))
            result.append(row)
        return result

    def _compute_many(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        targets: List[TargetSpec],
        to_input: bool,
        rule: str,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> List[List[CamDetails]]:
        training = has_training_module(self.forward_func)  # one scan of the modules per call
        record = self._record(inputs, args, targets, to_input, rule, grad_kwargs=grad_kwargs, training=training)
        with preserved_state(self.forward_func, training):
            weights = self.layer_weights(record, inputs, args, to_input)
        return self._details(record, weights)

    def compute(
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
        grad_kwargs: Optional[Dict[str, Any]] = None,
    ) -> List[CamDetails]:
        """Activations, gradients, weights and the raw fused map, one :class:`CamDetails` per unit.

        Same arguments as :meth:`attribute` (without the post-processing ones). This is what
        Conceptor-CAM and :class:`~captum_cam_ext.MultiCam` build on.
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self.check_options("bilinear", None, backward_rule)
        self._check_inputs_match_model(tup)
        return self._compute_many(tup, args, [target], attribute_to_layer_input, rule, grad_kwargs)[0]

    def compute_for_targets(
        self,
        inputs: TensorOrTuple,
        targets: Union[Tensor, Callable[[Any], Tensor]],
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
    ) -> List[List[CamDetails]]:
        """:meth:`compute` for several classes per example, sharing the expensive passes.

        Gradient methods run one forward pass and one backward pass per class; perturbation
        methods (Score-CAM, Ablation-CAM) score every class from the same masked forward passes,
        so ``T`` targets cost about one target.

        Parameters
        ----------
        inputs, additional_forward_args, attribute_to_layer_input, backward_rule :
            As in :meth:`attribute`.
        targets : LongTensor or callable
            ``(N, T)`` class indices, or a callable mapping the clean outputs ``(N, C)`` to them
            (e.g. the top-``T`` classes).

        Returns
        -------
        list of list of CamDetails
            ``result[t][u]``: target column ``t``, unit (layer) ``u``.
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self.check_options("bilinear", None, backward_rule)
        self._check_inputs_match_model(tup)
        if callable(targets) and not isinstance(targets, Tensor):
            with torch.no_grad(), preserved_state(self.forward_func):
                targets = targets(run_forward(self.forward_func, tup, args))
        index = self.check_target_matrix(targets, tup[0].shape[0])
        return self._compute_many(
            tup, args, [index[:, t] for t in range(index.shape[1])], attribute_to_layer_input, rule
        )

    @staticmethod
    def check_target_matrix(targets: Any, n: int) -> Tensor:
        """Validate an ``(N, T)`` integer tensor of class indices; returns it as a LongTensor."""
        if not isinstance(targets, Tensor) or targets.dim() != 2 or targets.is_floating_point():
            raise ValueError(f"targets must be an integer tensor of shape (N, T), got {describe(targets)}")
        if targets.shape[0] != n:
            raise ValueError(f"targets has {targets.shape[0]} rows but the batch has {n} examples")
        if targets.shape[1] == 0:
            raise ValueError("targets has no columns; pass at least one class per example")
        return targets.long()

    def _postprocess(
        self,
        cams: List[Tensor],
        input_size: Optional[Tuple[int, ...]],
        relu_attributions: bool,
        interpolate_mode: str,
        normalize: bool,
        tuple_output: bool = False,
    ) -> List[Tensor]:
        if relu_attributions:
            cams = [torch.relu(c) for c in cams]
        if tuple_output or len(cams) == 1:
            out = []
            for c in cams:
                if input_size is not None:
                    # normalising before the resize too keeps a constant map exactly constant
                    # (interpolation rounding would otherwise be blown up by the min-max)
                    c = upsample_maps(
                        normalize_maps(c) if normalize else c, self._size_for(c, input_size), interpolate_mode
                    )
                out.append(normalize_maps(c) if normalize else c)
            return out
        if any(c.dim() != cams[0].dim() for c in cams):
            raise ValueError("several layers can be fused only when their maps have the same number of dimensions")
        size = input_size or max((tuple(c.shape[2:]) for c in cams), key=lambda s: int(torch.tensor(s).prod()))
        fused = torch.stack([normalize_maps(upsample_maps(c, size, interpolate_mode)) for c in cams]).mean(0)
        return [normalize_maps(fused) if normalize else fused]

    @staticmethod
    def _size_for(cam: Tensor, input_size: Tuple[int, ...]) -> Tuple[int, ...]:
        spatial = cam.dim() - 2
        if spatial < 1:
            raise ValueError("upsample_to_input needs a layer with spatial dimensions; this layer's map is (N, 1)")
        if len(input_size) < spatial:
            raise ValueError(f"cannot upsample a {spatial}-D map to inputs with spatial size {input_size}")
        return tuple(input_size[-spatial:])

    def _check_inputs_match_model(self, inputs: Tuple[Tensor, ...]) -> None:
        if not isinstance(self.forward_func, nn.Module):
            return
        first = next((p for p in self.forward_func.parameters() if p.is_floating_point()), None)
        if first is None or all(x.dtype == first.dtype for x in inputs):
            return  # the usual case, without a pass over every parameter on each call
        dtypes = {p.dtype for p in self.forward_func.parameters() if p.is_floating_point()}
        if len(dtypes) == 1:
            (dtype,) = dtypes
            for i, x in enumerate(inputs):
                if x.dtype != dtype:
                    raise TypeError(
                        f"inputs[{i}] has dtype {x.dtype} but the model's parameters are {dtype}; "
                        f"convert one to the other (inputs.to({dtype}) or model.to({x.dtype}))"
                    )

    def check_options(
        self, interpolate_mode: str, internal_batch_size: Optional[int], backward_rule: Optional[str]
    ) -> str:
        """Validate the common options; return the backward rule in force (the class default for None)."""
        rule = self.default_backward_rule if backward_rule is None else backward_rule
        if rule not in BACKWARD_RULES:
            raise ValueError(f"backward_rule must be one of {BACKWARD_RULES}, got {rule!r}")
        check_interpolate_mode(interpolate_mode)
        if internal_batch_size is not None and (
            not isinstance(internal_batch_size, int) or isinstance(internal_batch_size, bool) or internal_batch_size < 1
        ):
            raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}")
        return rule

    @staticmethod
    def _chunks(n: int, size: Optional[int]) -> List[Tuple[int, int]]:
        step = n if size is None else size
        return [(s, min(s + step, n)) for s in range(0, n, step)]

    @staticmethod
    def _slice_target(target: TargetSpec, start: int, stop: int, n: int) -> TargetSpec:
        if isinstance(target, Tensor) and target.dim() == 1 and target.shape[0] == n:
            return target[start:stop]
        if isinstance(target, list) and len(target) == n:
            return list(target[start:stop])
        return target

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
        r"""Compute the class activation map of each example.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Model inputs; the first dimension is the batch ``N``. A tuple is passed to the model
            as positional arguments, as in Captum.
        target : int, tuple, list, Tensor, callable or None
            What is explained, in Captum's forms: an int (negative counts from the end) or a
            one-element tensor for all examples; a list of ints or an ``(N,)`` tensor, one class per
            example; a tuple (or a list of tuples) indexing each example's output for models with
            multi-dimensional outputs; None for the arg-max class. Also a callable mapping the
            model's output (a tensor, or a dict / tuple for segmentation and detection models) to
            one score per example ``(N,)`` (see :mod:`captum_cam_ext.targets`).
        additional_forward_args : Any, optional
            Extra positional arguments passed to the model after ``inputs``. Tensors whose first
            dimension is ``N`` are split with the batch when ``internal_batch_size`` is set.
        attribute_to_layer_input : bool
            Explain the layer's input instead of its output.
        relu_attributions : bool
            Apply a ReLU to the map (Captum's default is False; pytorch-grad-cam always applies it).
        attr_dim_summation : bool
            Sum over channels (default, the CAM). False returns the per-channel terms
            ``w_k A_k`` ``(N, K, *S)``, as Captum's ``LayerGradCam`` does.
        grad_kwargs : dict, optional
            Extra keyword arguments for ``torch.autograd.grad`` (as Captum).
        upsample_to_input : bool
            Upsample the map to the spatial size of ``inputs[0]`` (its last 1-3 dimensions).
        interpolate_mode : str
            ``"bilinear"`` (default, ``align_corners=False``; linear / trilinear for 1-D / 3-D
            maps), ``"nearest"``, ``"bicubic"``, ``"area"``.
        normalize : bool
            Min-max normalise each example's map to ``[0, 1]`` (after ReLU and upsampling).
        internal_batch_size : int, optional
            Process at most this many examples per forward/backward pass (bounded memory). The
            result does not depend on it.
        backward_rule : str, optional
            ``"standard"`` or ``"guided"`` (ReLUs between the output and the layer apply the
            guided-backpropagation rule; see :mod:`captum_cam_ext.backprop`). None: the class
            default (``"guided"`` for :class:`~captum_cam_ext.LayerGuidedGradCam`).
        aug_smooth : bool
            Test-time augmentation, as pytorch-grad-cam's ``aug_smooth``: the map is computed for
            the input flipped horizontally or not and multiplied by 0.9, 1 and 1.1 (6 passes),
            each post-processed (ReLU / upsampling / normalisation as asked), flipped back, and
            averaged. Reduces noise at 6x the cost.
        eigen_smooth : bool
            Replace the channel sum by the projection of the weighted activations ``w_k A_k`` on
            their first principal component (pytorch-grad-cam's ``eigen_smooth``; sign fixed so
            that the dominant value is positive). Removes noise not aligned with the main pattern.

        Returns
        -------
        Tensor or tuple of Tensor
            ``(N, 1, *S)`` at the layer's resolution (``(N, 1)`` for a layer output ``(N, K)``),
            ``(N, 1, H, W)`` with ``upsample_to_input=True``; with several layers, at the
            largest layer's resolution. A tuple, one map per tensor, when the layer returns a
            tuple of tensors (as Captum).

        Raises
        ------
        ValueError
            No gradient can flow from the target score to the layer (``torch.inference_mode``,
            ``no_grad`` or ``.detach()`` between the layer and the output), an invalid target, a
            layer that is not called, and the other invalid inputs (the message says what to do).
        """
        if eigen_smooth and not attr_dim_summation:
            raise ValueError("eigen_smooth replaces the channel sum: it cannot be used with attr_dim_summation=False")
        return self.attribute_in_chunks(
            self._raw_maps(attr_dim_summation, grad_kwargs, eigen_smooth), inputs, target, additional_forward_args,
            attribute_to_layer_input, relu_attributions, upsample_to_input, interpolate_mode, normalize,
            internal_batch_size, backward_rule, aug_smooth,
        )["cam"]  # fmt: skip

    def _raw_maps(
        self, attr_dim_summation: bool, grad_kwargs: Optional[Dict[str, Any]], eigen_smooth: bool = False
    ) -> Callable[..., RawMaps]:
        def raw_maps(tup: Tuple[Tensor, ...], args: Any, target: TargetSpec, to_input: bool, rule: str) -> RawMaps:
            (details,) = self._compute_many(tup, args, [target], to_input, rule, grad_kwargs)
            if eigen_smooth:
                return {"cam": [self.eigen_smoothed(d) for d in details]}
            if attr_dim_summation:
                return {"cam": [d.cam for d in details]}
            return {"cam": [self.contributions(d.activations, d.weights) for d in details]}

        return raw_maps

    def eigen_smoothed(self, details: CamDetails) -> Tensor:
        """The ``eigen_smooth`` map of one unit: first principal component of ``w_k A_k``, ``(N, 1, *S)``."""
        cam = first_component_projection(self.contributions(details.activations, details.weights))
        return cam.reshape(cam.shape[0], 1) if details.cam.dim() == 2 else cam

    def attribute_in_chunks(
        self,
        raw_maps: Callable[[Tuple[Tensor, ...], Any, TargetSpec, bool, str], RawMaps],
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
    ) -> Dict[str, MapsOrTuple]:
        """The body of every ``attribute``: validate, chunk, get raw maps, post-process, concatenate.

        Parameters
        ----------
        raw_maps : callable
            ``raw_maps(inputs_chunk, args_chunk, target_chunk, attribute_to_layer_input, backward_rule)``
            returns ``{name: [raw map (n, 1, *S) per unit]}`` for one chunk of examples. Methods
            built on the engine (Conceptor-CAM, MultiCam) pass their own.
        inputs, target, ... :
            As in :meth:`attribute`.

        Returns
        -------
        dict
            ``{name: maps}``; maps are a tensor, or a tuple when the layer returns a tuple.
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self.check_options(interpolate_mode, internal_batch_size, backward_rule)
        self._check_inputs_match_model(tup)
        n = tup[0].shape[0]
        target = normalise_target(target, n)
        if upsample_to_input and tup[0].dim() < 3:
            raise ValueError(f"upsample_to_input needs spatial inputs (N, C, *S), got {tuple(tup[0].shape)}")
        input_size = tuple(tup[0].shape[2:]) if upsample_to_input else None
        if aug_smooth and tup[0].dim() < 4:
            raise ValueError(
                "aug_smooth flips inputs[0] horizontally: it needs image or volume inputs (N, C, H, W[, ...]), "
                f"got {tuple(tup[0].shape)} (flipping a sequence would reverse it in time)"
            )
        augmentations = AUG_SMOOTH_TRANSFORMS if aug_smooth else ((False, 1.0),)
        parts: Dict[str, List[List[Tensor]]] = {}
        tuple_names: set = set()
        for start, stop in self._chunks(n, internal_batch_size):
            chunk = tuple(x[start:stop] for x in tup)
            summed: Dict[str, List[Tensor]] = {}
            for flip, factor in augmentations:
                x0 = chunk[0].flip(-1) if flip else chunk[0]
                maps = raw_maps(
                    (x0 * factor if factor != 1.0 else x0, *chunk[1:]),
                    slice_args(args, start, stop, n),
                    self._slice_target(target, start, stop, n),
                    attribute_to_layer_input,
                    rule,
                )
                for name, cams in maps.items():
                    is_tuple = len(cams) > 1 and len(self.layers) == 1
                    if is_tuple:
                        tuple_names.add(name)
                    post = self._postprocess(cams, input_size, relu_attributions, interpolate_mode, normalize, is_tuple)
                    post = [p.flip(-1) if flip else p for p in post]
                    acc = summed.setdefault(name, [torch.zeros_like(p) for p in post])
                    for i, p in enumerate(post):
                        acc[i] = acc[i] + p
            for name, acc in summed.items():
                parts.setdefault(name, []).append([a / len(augmentations) if aug_smooth else a for a in acc])
        out: Dict[str, MapsOrTuple] = {}
        for name, chunks in parts.items():
            per_unit = [
                torch.cat([c[u] for c in chunks], dim=0) if len(chunks) > 1 else chunks[0][u]
                for u in range(len(chunks[0]))
            ]
            out[name] = tuple(per_unit) if name in tuple_names else per_unit[0]
        return out


class GradientCamAttribution(CamAttribution, GradientAttribution):
    """Base class of the gradient CAM methods: a Captum ``LayerAttribution`` + ``GradientAttribution``.

    Subclasses override :meth:`CamAttribution.cam_weights`; see :class:`CamAttribution` for the
    parameters.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
        layer_call: int = -1,
    ) -> None:
        CamAttribution.__init__(self, forward_func, layer, device_ids, reshape_transform, trim_graph, layer_call)
        GradientAttribution.__init__(self, forward_func)
