"""The CAM engine shared by every method of the package.

One class, :class:`CamAttribution`, owns everything that is not a method's weighting: input
validation, target selection, ``additional_forward_args``, tuple inputs, forward hooks on one or
several layers (always removed), layer-only gradients (``torch.autograd.grad`` with respect to the
layer activations, never into the parameters), graph trimming before the layer, ``reshape_transform``
for token layouts, ReLU / upsampling / normalisation, multi-layer fusion and batching. A method is a
subclass that overrides :meth:`CamAttribution.cam_weights` (and, for perturbation methods,
:meth:`CamAttribution._perturbation_weights`).

Data flows one way: inputs -> engine (activations, gradients) -> method weights -> fusion ->
post-processing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args, _format_tensor_into_tuples
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_cam_ext._maps import check_interpolate_mode, normalize_maps, upsample_maps

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]
TargetSpec = Union[None, int, Sequence[int], Tensor, Callable[[Tensor], Tensor]]
LayerSpec = Union[nn.Module, Sequence[nn.Module]]
RawMaps = Dict[str, List[Tensor]]  # {name: [raw (N, 1, h, w) map per layer]}

_BACKWARD_RULES = ("standard", "guided")


@dataclass
class CamDetails:
    """Everything one CAM computation produced for one layer.

    Attributes
    ----------
    activations : Tensor
        Layer activations, shape ``(N, K, h, w)`` (after ``reshape_transform``).
    gradients : Tensor or None
        Gradients of the target scores with respect to the activations, ``(N, K, h, w)``;
        ``None`` for methods that use no gradients.
    weights : Tensor
        The method's weights: per channel ``(N, K, 1, 1)`` or per position ``(N, K, h, w)``.
    cam : Tensor
        The fused map before any ReLU, ``(N, 1, h, w)``.
    target : Tensor or None
        The class index used for each example, ``(N,)``; ``None`` for a callable target.
    outputs : Tensor
        The model outputs on the unperturbed inputs.
    """

    activations: Tensor
    gradients: Optional[Tensor]
    weights: Tensor
    cam: Tensor
    target: Optional[Tensor]
    outputs: Tensor


# --------------------------------------------------------------------------------------------
# Small shared helpers (also used by the metrics and by Conceptor-CAM)
# --------------------------------------------------------------------------------------------


def select_target_scores(outputs: Tensor, target: TargetSpec) -> Tensor:
    """The score of each example's target, shape ``(N,)``.

    ``target`` is ``None`` (the arg-max class), an int, a sequence of ints, a tensor of shape
    ``()`` or ``(N,)``, or a callable mapping the outputs ``(N, C)`` to scores ``(N,)``.
    """
    if callable(target) and not isinstance(target, Tensor):
        scores = target(outputs)
        if not isinstance(scores, Tensor) or scores.dim() != 1 or scores.shape[0] != outputs.shape[0]:
            shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
            raise ValueError(
                f"a callable target must return one score per example, shape ({outputs.shape[0]},), got {shape}"
            )
        return scores
    index = resolve_target(outputs, target)
    return outputs.gather(1, index[:, None]).squeeze(1)


def resolve_target(outputs: Tensor, target: TargetSpec) -> Tensor:
    """Turn an index-like ``target`` into a LongTensor ``(N,)`` of class indices, validated."""
    if not isinstance(outputs, Tensor) or outputs.dim() != 2:
        shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
        raise ValueError(
            "CAM methods need a model whose output is 2-D (batch, classes) to select a target "
            f"class, got output of shape {shape}. Wrap the model so it returns (N, C) scores, "
            "or pass a callable target that maps the output to one score per example."
        )
    n, n_classes = outputs.shape
    if target is None:
        return outputs.detach().argmax(dim=1)
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of ints, a tensor or a callable, got bool")
    if isinstance(target, int):
        index = torch.full((n,), target, dtype=torch.long, device=outputs.device)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise TypeError(f"a target tensor must hold integer class indices, got dtype {target.dtype}")
        if target.dim() == 0:
            index = target.reshape(1).expand(n).to(outputs.device, torch.long)
        elif target.dim() == 1 and target.shape[0] == n:
            index = target.to(outputs.device, torch.long)
        else:
            raise ValueError(
                f"a target tensor must have shape () or ({n},) (one class per example), got {tuple(target.shape)}"
            )
    elif isinstance(target, (list, tuple)):
        if len(target) != n or not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise ValueError(f"a target list must hold one int class index per example ({n}), got {target!r}")
        index = torch.tensor(list(target), dtype=torch.long, device=outputs.device)
    else:
        raise TypeError(
            "target must be None, an int, a sequence of ints, an integer tensor or a callable, "
            f"got {type(target).__name__}"
        )
    if n and (int(index.min()) < 0 or int(index.max()) >= n_classes):
        raise ValueError(
            f"target class index out of range: the model has {n_classes} outputs "
            f"(valid indices 0..{n_classes - 1}), got {index.tolist()}"
        )
    return index


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


def run_forward(forward_func: Callable, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]]) -> Tensor:
    """Call ``forward_func(*inputs, *args)`` and check that it returned a tensor."""
    out = forward_func(*inputs, *(args or ()))
    if not isinstance(out, Tensor):
        raise TypeError(f"the model must return a Tensor, got {type(out).__name__}")
    return out


def _modules_of(forward_func: Callable) -> List[nn.Module]:
    return list(forward_func.modules()) if isinstance(forward_func, nn.Module) else []


@contextlib.contextmanager
def _no_op() -> Iterator[None]:
    yield


# --------------------------------------------------------------------------------------------
# Hooks: record layer activations (optionally as graph roots, trimming the graph before them)
# --------------------------------------------------------------------------------------------


class _LayerRecorder:
    """Forward hooks on the target layers that capture their outputs (or inputs).

    With ``grad_root=True`` each captured activation becomes a tensor that requires grad. When
    the forward runs under ``torch.no_grad()`` (graph trimming), the first hooked layer to run
    detaches its output and switches gradient recording on, so the autograd graph starts at the
    layer: nothing before it is stored. The hooks return a clone, so in-place operations after
    the layer (``ReLU(inplace=True)``, ``out += identity``) cannot modify what was captured.
    """

    def __init__(self, layers: Sequence[nn.Module], to_input: bool, grad_root: bool) -> None:
        self.layers = list(layers)
        self.to_input = to_input
        self.grad_root = grad_root
        self.captured: List[List[Tensor]] = [[] for _ in self.layers]
        self.handles: List[Any] = []

    def _capture(self, i: int, value: Any) -> Tensor:
        if not isinstance(value, Tensor):
            where = "input" if self.to_input else "output"
            raise ValueError(
                f"the {where} of target layer {type(self.layers[i]).__name__} is a "
                f"{type(value).__name__}, not a Tensor; pick a layer with a single tensor {where}"
            )
        if self.grad_root:
            if not torch.is_grad_enabled() or not value.requires_grad:
                value = value.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            self.captured[i].append(value)
            return value.clone()
        self.captured[i].append(value.detach().clone())  # in-place ops later must not alter it
        return value

    def __enter__(self) -> _LayerRecorder:
        try:
            for i, layer in enumerate(self.layers):
                if self.to_input:

                    def pre_hook(module: nn.Module, args: Tuple[Any, ...], i: int = i) -> Tuple[Any, ...]:
                        if not args:
                            raise ValueError(f"target layer {type(module).__name__} was called without inputs")
                        return (self._capture(i, args[0]), *args[1:])

                    self.handles.append(layer.register_forward_pre_hook(pre_hook))
                else:

                    def hook(module: nn.Module, args: Any, out: Any, i: int = i) -> Tensor:
                        return self._capture(i, out)

                    self.handles.append(layer.register_forward_hook(hook))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def activations(self) -> List[Tensor]:
        acts = []
        for layer, got in zip(self.layers, self.captured):
            if len(got) == 0:
                raise ValueError(
                    f"target layer {type(layer).__name__} was not called during the forward pass; "
                    "pass a submodule that the model actually runs"
                )
            if len(got) > 1:
                raise ValueError(
                    f"target layer {type(layer).__name__} ran {len(got)} times in one forward pass "
                    "(a reused module); CAM needs a layer that runs once: pick a module used once"
                )
            acts.append(got[0])
        return acts


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------


class CamAttribution(LayerAttribution, GradientAttribution):
    r"""Base class of every CAM method: a Captum layer attribution over one or several layers.

    A method subclasses it and overrides :meth:`cam_weights` (gradient methods) or
    :meth:`_perturbation_weights` (Score-CAM, Ablation-CAM). All the rest (hooks, targets,
    batching, post-processing) happens here, once.

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model. Its output must be ``(N, C)`` scores for index targets.
    layer : nn.Module or list of nn.Module
        The layer(s) whose activations are explained. With several layers the maps are upsampled
        to a common size, min-max normalised per layer and averaged.
    reshape_transform : callable, optional
        Maps a layer output (e.g. ViT tokens ``(N, T, C)``) to ``(N, K, h, w)``. Applied to the
        activations and to the gradients.
    trim_graph : bool
        When True (default) the forward runs without recording the autograd graph until the
        first target layer, so a gradient CAM costs about one inference forward in memory. The
        gradients are the same (they are taken with respect to the layer only). Turn it off for
        models whose code behaves differently under ``torch.no_grad()``.
    """

    uses_gradients: ClassVar[bool] = True
    uses_perturbation: ClassVar[bool] = False
    #: The backward rule used when ``attribute``/``compute`` get ``backward_rule=None``.
    default_backward_rule: ClassVar[str] = "standard"
    name: ClassVar[str] = "cam"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        trim_graph: bool = True,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func must be a callable (usually an nn.Module), got {type(forward_func).__name__}"
            )
        layers: List[nn.Module] = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]  # type: ignore[list-item]
        if not layers:
            raise ValueError("layer is an empty list; pass at least one nn.Module")
        modules = _modules_of(forward_func)
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
        LayerAttribution.__init__(self, forward_func, layers[0] if len(layers) == 1 else layers)  # type: ignore[arg-type]
        GradientAttribution.__init__(self, forward_func)
        self.layers = layers
        self.reshape_transform = reshape_transform
        self.trim_graph = bool(trim_graph)

    # ---- what a method overrides --------------------------------------------------------

    def cam_weights(self, activations: Tensor, gradients: Optional[Tensor]) -> Tensor:
        """The method's weights for ``activations`` ``(N, K, h, w)`` and their gradients.

        Returns ``(N, K, 1, 1)`` channel weights or ``(N, K, h, w)`` position weights.
        """
        raise NotImplementedError

    def fuse(self, activations: Tensor, weights: Tensor) -> Tensor:
        """Fuse channels into one map: ``sum_k w_k * A_k``, shape ``(N, 1, h, w)``."""
        return (weights * activations).sum(dim=1, keepdim=True)

    def _perturbation_weights(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        activations: List[Tensor],
        outputs: Tensor,
        to_input: bool = False,
    ) -> List[Tensor]:
        """Weights of perturbation methods; receives the clean pass' activations per layer."""
        raise NotImplementedError

    # ---- the shared pipeline ------------------------------------------------------------

    def _to_maps(self, value: Tensor, layer: nn.Module) -> Tensor:
        if self.reshape_transform is not None:
            value = self.reshape_transform(value)
            if not isinstance(value, Tensor) or value.dim() != 4:
                shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"reshape_transform must return a 4-D tensor (N, K, h, w), got {shape}")
            return value
        if value.dim() != 4:
            raise ValueError(
                f"the output of layer {type(layer).__name__} has shape {tuple(value.shape)}, not "
                "(N, K, h, w); pass reshape_transform= to map it to 4-D (e.g. ViT tokens to a grid)"
            )
        return value

    def _guided_context(self, backward_rule: str) -> Any:
        if backward_rule not in _BACKWARD_RULES:
            raise ValueError(f"backward_rule must be one of {_BACKWARD_RULES}, got {backward_rule!r}")
        if backward_rule == "standard":
            return _no_op()
        if not isinstance(self.forward_func, nn.Module):
            raise TypeError("backward_rule='guided' needs forward_func to be an nn.Module (its ReLUs are hooked)")
        from captum_cam_ext.backprop import guided_relus

        return guided_relus(self.forward_func)

    def _record(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        to_input: bool,
        with_gradients: bool,
        backward_rule: str = "standard",
    ) -> Tuple[List[Tensor], Optional[List[Tensor]], Tensor]:
        """One forward (and backward): activations, gradients (or None) and outputs."""
        if not with_gradients:
            with torch.no_grad(), _LayerRecorder(self.layers, to_input, grad_root=False) as rec:
                outputs = run_forward(self.forward_func, inputs, args)
            return rec.activations(), None, outputs.detach()
        grad_ctx = torch.no_grad() if self.trim_graph else torch.enable_grad()
        with self._guided_context(backward_rule), grad_ctx:
            with _LayerRecorder(self.layers, to_input, grad_root=True) as rec:
                outputs = run_forward(self.forward_func, inputs, args)
                acts = rec.activations()
            scores = select_target_scores(outputs, target)
            if not scores.requires_grad:
                grads = [torch.zeros_like(a) for a in acts]
            else:
                got = torch.autograd.grad(scores.sum(), acts, allow_unused=True)
                grads = [torch.zeros_like(a) if g is None else g for a, g in zip(acts, got)]
        return [a.detach() for a in acts], grads, outputs.detach()

    def _compute(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        to_input: bool,
        backward_rule: str = "standard",
    ) -> List[CamDetails]:
        acts, grads, outputs = self._record(inputs, args, target, to_input, self.uses_gradients, backward_rule)
        index = None if (callable(target) and not isinstance(target, Tensor)) else resolve_target(outputs, target)
        layer_acts = [self._to_maps(a, lay) for a, lay in zip(acts, self.layers)]
        layer_grads: List[Optional[Tensor]] = (
            [self._to_maps(g, lay) for g, lay in zip(grads, self.layers)] if grads is not None else [None] * len(acts)
        )
        if self.uses_perturbation:
            tgt = index if index is not None else target
            weights = self._perturbation_weights(inputs, args, tgt, layer_acts, outputs, to_input)
        else:
            weights = [
                self.cam_weights(a.float(), None if g is None else g.float()) for a, g in zip(layer_acts, layer_grads)
            ]
        details = []
        for a, g, w in zip(layer_acts, layer_grads, weights):
            a32 = a.float()
            cam = self.fuse(a32, w)
            details.append(CamDetails(a32, None if g is None else g.float(), w, cam, index, outputs))
        return details

    def compute(
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
    ) -> List[CamDetails]:
        """Activations, gradients, weights and the raw fused map, one :class:`CamDetails` per layer.

        Same arguments as :meth:`attribute` (without the post-processing ones). This is what
        Conceptor-CAM and :class:`MultiCam` build on.
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self._check_post_args("bilinear", None, backward_rule)
        self._check_inputs_match_model(tup)
        return self._compute(tup, args, target, attribute_to_layer_input, rule)

    def compute_for_targets(
        self,
        inputs: TensorOrTuple,
        targets: Union[Tensor, Callable[[Tensor], Tensor]],
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
    ) -> List[List[CamDetails]]:
        """:meth:`compute` for several classes per example, sharing the expensive passes.

        Perturbation methods (Score-CAM, Ablation-CAM) score every class from the same masked
        forward passes, so ``T`` targets cost about one target. Gradient methods run one
        :meth:`compute` per column.

        Parameters
        ----------
        inputs, additional_forward_args, attribute_to_layer_input :
            As in :meth:`attribute`.
        targets : LongTensor or callable
            ``(N, T)`` class indices, or a callable mapping the clean outputs ``(N, C)`` to them
            (e.g. the top-``T`` classes).

        Returns
        -------
        list of list of CamDetails
            ``result[t][l]``: target column ``t``, layer ``l``.
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        self._check_inputs_match_model(tup)
        if not self.uses_perturbation:
            if callable(targets) and not isinstance(targets, Tensor):
                with torch.no_grad():
                    targets = targets(run_forward(self.forward_func, tup, args))
            index = self._check_target_matrix(targets, None)
            rule = self.default_backward_rule
            return [
                self._compute(tup, args, index[:, t], attribute_to_layer_input, rule) for t in range(index.shape[1])
            ]
        acts, _, outputs = self._record(tup, args, None, attribute_to_layer_input, with_gradients=False)
        if callable(targets) and not isinstance(targets, Tensor):
            targets = targets(outputs)
        index = self._check_target_matrix(targets, outputs)
        layer_acts = [self._to_maps(a, lay).float() for a, lay in zip(acts, self.layers)]
        weights = self._perturbation_weights(tup, args, index, layer_acts, outputs, attribute_to_layer_input)
        return [
            [CamDetails(a, None, w[t], self.fuse(a, w[t]), index[:, t], outputs) for a, w in zip(layer_acts, weights)]
            for t in range(index.shape[1])
        ]

    @staticmethod
    def _check_target_matrix(targets: Any, outputs: Optional[Tensor]) -> Tensor:
        if not isinstance(targets, Tensor) or targets.dim() != 2 or targets.is_floating_point():
            shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"targets must be an integer tensor of shape (N, T), got {shape}")
        if outputs is not None:
            for t in range(targets.shape[1]):
                resolve_target(outputs, targets[:, t])  # validates the range and the batch size
        return targets.long()

    def _postprocess(
        self,
        cams: List[Tensor],
        input_size: Optional[Tuple[int, int]],
        relu_attributions: bool,
        interpolate_mode: str,
        normalize: bool,
    ) -> Tensor:
        if relu_attributions:
            cams = [F.relu(c) for c in cams]
        if len(cams) == 1:
            out = cams[0]
            if input_size is not None:
                # normalising before the resize too keeps a constant map exactly constant
                # (interpolation rounding would otherwise be blown up by the min-max)
                out = upsample_maps(normalize_maps(out) if normalize else out, input_size, interpolate_mode)
        else:
            size = input_size or max(((c.shape[-2], c.shape[-1]) for c in cams), key=lambda s: s[0] * s[1])
            out = torch.stack([normalize_maps(upsample_maps(c, size, interpolate_mode)) for c in cams]).mean(0)
        return normalize_maps(out) if normalize else out

    def _check_inputs_match_model(self, inputs: Tuple[Tensor, ...]) -> None:
        if not isinstance(self.forward_func, nn.Module):
            return
        dtypes = {p.dtype for p in self.forward_func.parameters() if p.is_floating_point()}
        if len(dtypes) == 1:
            (dtype,) = dtypes
            for i, x in enumerate(inputs):
                if x.dtype != dtype:
                    raise TypeError(
                        f"inputs[{i}] has dtype {x.dtype} but the model's parameters are {dtype}; "
                        f"convert one to the other (inputs.to({dtype}) or model.to({x.dtype}))"
                    )

    def _check_post_args(
        self, interpolate_mode: str, internal_batch_size: Optional[int], backward_rule: Optional[str]
    ) -> str:
        """Validate the common options; return the backward rule in force (the class default for None)."""
        rule = self.default_backward_rule if backward_rule is None else backward_rule
        if rule not in _BACKWARD_RULES:
            raise ValueError(f"backward_rule must be one of {_BACKWARD_RULES}, got {rule!r}")
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
        if isinstance(target, (list, tuple)) and len(target) == n:
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
        upsample_to_input: bool = False,
        interpolate_mode: str = "bilinear",
        normalize: bool = False,
        internal_batch_size: Optional[int] = None,
        backward_rule: Optional[str] = None,
    ) -> Tensor:
        r"""Compute the class activation map of each example.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            Model inputs; the first dimension is the batch ``N``. A tuple is passed to the model
            as positional arguments, as in Captum.
        target : int, list of int, Tensor, callable or None
            The class explained for each example: an int for all, one int per example (list or
            ``(N,)`` tensor), a callable ``outputs (N, C) -> scores (N,)``, or None for the
            arg-max class.
        additional_forward_args : Any, optional
            Extra positional arguments passed to the model after ``inputs``. Tensors whose first
            dimension is ``N`` are split with the batch when ``internal_batch_size`` is set.
        attribute_to_layer_input : bool
            Explain the layer's input instead of its output.
        relu_attributions : bool
            Apply a ReLU to the map (Captum's default is False; pytorch-grad-cam always applies it).
        upsample_to_input : bool
            Upsample the map to the spatial size of ``inputs[0]`` (last two dimensions).
        interpolate_mode : str
            ``"bilinear"`` (default, ``align_corners=False``), ``"nearest"``, ``"bicubic"``, ``"area"``.
        normalize : bool
            Min-max normalise each example's map to ``[0, 1]`` (after ReLU and upsampling).
        internal_batch_size : int, optional
            Process at most this many examples per forward/backward pass (bounded memory). The
            result does not depend on it.
        backward_rule : str, optional
            ``"standard"`` or ``"guided"`` (ReLUs between the output and the layer apply the
            guided-backpropagation rule; see :mod:`captum_cam_ext.backprop`). None: the class
            default (``"guided"`` for :class:`~captum_cam_ext.LayerGuidedGradCam`).

        Returns
        -------
        Tensor
            ``(N, 1, h, w)`` at the layer's resolution, or ``(N, 1, H, W)`` with
            ``upsample_to_input=True``; with several layers, at the largest layer's resolution.
        """
        def raw_maps(tup: Tuple[Tensor, ...], args: Any, target: TargetSpec, to_input: bool, rule: str) -> RawMaps:
            return {"cam": [d.cam for d in self._compute(tup, args, target, to_input, rule)]}

        return self._attribute_in_chunks(
            raw_maps, inputs, target, additional_forward_args, attribute_to_layer_input, relu_attributions,
            upsample_to_input, interpolate_mode, normalize, internal_batch_size, backward_rule,
        )["cam"]  # fmt: skip

    def _attribute_in_chunks(
        self,
        raw_maps: Callable[[Tuple[Tensor, ...], Any, TargetSpec, bool, str], RawMaps],
        inputs: TensorOrTuple,
        target: TargetSpec,
        additional_forward_args: Any,
        attribute_to_layer_input: bool,
        relu_attributions: bool,
        upsample_to_input: bool,
        interpolate_mode: str,
        normalize: bool,
        internal_batch_size: Optional[int],
        backward_rule: Optional[str],
    ) -> Dict[str, Tensor]:
        """The body of every ``attribute``: validate, split into chunks of examples, get the raw
        maps of each chunk from ``raw_maps`` (``{name: [map per layer]}``), post-process, concatenate."""
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self._check_post_args(interpolate_mode, internal_batch_size, backward_rule)
        self._check_inputs_match_model(tup)
        if upsample_to_input and tup[0].dim() < 3:
            raise ValueError(f"upsample_to_input needs spatial inputs (N, C, H, W), got {tuple(tup[0].shape)}")
        n = tup[0].shape[0]
        input_size = (tup[0].shape[-2], tup[0].shape[-1]) if upsample_to_input else None
        parts: Dict[str, List[Tensor]] = {}
        for start, stop in self._chunks(n, internal_batch_size):
            maps = raw_maps(
                tuple(x[start:stop] for x in tup),
                slice_args(args, start, stop, n),
                self._slice_target(target, start, stop, n),
                attribute_to_layer_input,
                rule,
            )
            for name, cams in maps.items():
                post = self._postprocess(cams, input_size, relu_attributions, interpolate_mode, normalize)
                parts.setdefault(name, []).append(post)
        return {name: p[0] if len(p) == 1 else torch.cat(p, dim=0) for name, p in parts.items()}
