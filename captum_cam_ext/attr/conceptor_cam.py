"""Conceptor-CAM (after Qian et al., arXiv 2201.08636): conceptor fusion over any CAM's weights.

The base CAM method supplies the layer activations ``A`` and its weights ``w`` (per channel or per
position); Conceptor-CAM replaces the channel fusion ``m = sum_k w_k A_k`` by the conceptor fusion
``s = C m``, where ``C`` is a conceptor (a soft projector) built from the weighted activations of
the target class (positive evidence) and combined by Boolean operations with the conceptor of
pseudo-negative evidence (competitor classes and/or the negatively weighted channels).

Only the paper's abstract is available: the layout, readout, negatives and defaults below are our
reconstruction (see ``docs/conceptor_cam.md`` and the research note), not the authors' equations.
"""

from __future__ import annotations

import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Type, Union, cast

import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_cam_ext._engine import (
    CamAttribution,
    LayerSpec,
    RawMaps,
    TargetSpec,
    TensorOrTuple,
    format_inputs,
    resolve_target,
)
from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.conceptor import (
    auto_aperture,
    conceptor_from_correlation,
    conjunction,
    disjunction,
    negation,
)
from captum_cam_ext.registry import register_method

__all__ = ["LayerConceptorCam", "conceptor_fusion"]

ApertureSpec = Union[float, int, str]
_NEGATIVES = ("none", "classes", "channels", "both")
_COMBINE = ("and_not", "or_not", "sum")
_LAYOUTS = ("spatial", "channel")
_POSITIVE_DATA = ("positive", "signed")


def _check_aperture(value: Any, name: str) -> ApertureSpec:
    if isinstance(value, str):
        if value not in ("auto", "sqrt_dim"):
            raise ValueError(f"{name} must be a number in (0, inf], 'auto' or 'sqrt_dim', got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in (0, inf], 'auto' or 'sqrt_dim', got {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(
            f"{name} must be > 0 (got {value}); use e.g. 1..50, math.inf (projector, reduces "
            "to the base CAM without negatives), 'sqrt_dim' or 'auto'"
        )
    return float(value)


def _correlation(Z: Tensor, layout: str) -> Tuple[Tensor, Tensor]:
    """Trace-normalised correlation of weighted data ``Z`` (B, K, P) and whether it is non-zero."""
    R = Z.transpose(1, 2) @ Z if layout == "spatial" else Z @ Z.transpose(1, 2)
    t = torch.diagonal(R, dim1=-2, dim2=-1).sum(-1)
    nonzero = t > 0
    R = R / torch.where(nonzero, t, torch.ones_like(t))[:, None, None]
    return 0.5 * (R + R.transpose(1, 2)), nonzero


def _apertures(spec: ApertureSpec, R: Tensor, dim: int, rtol: Optional[float]) -> Union[float, Tensor]:
    if spec == "auto":
        return auto_aperture(R, rtol=rtol)
    if spec == "sqrt_dim":
        return math.sqrt(dim)
    return float(spec)


def conceptor_fusion(
    activations: Tensor,
    weights: Tensor,
    base_map: Optional[Tensor] = None,
    competitor_data: Sequence[Tuple[Tensor, Tensor]] = (),
    negative_channels: bool = True,
    aperture: ApertureSpec = 2.0,
    negative_aperture: Optional[ApertureSpec] = 0.5,
    combine: str = "and_not",
    layout: str = "spatial",
    positive_data: str = "positive",
    rtol: Optional[float] = None,
) -> Tensor:
    """Conceptor fusion of weighted activations (research note §2.5, readout R1).

    Parameters
    ----------
    activations : Tensor
        Shape ``(B, K, *S)``.
        Layer activations ``A`` over a grid ``S`` of 1 to 3 dimensions (``P = prod(S)`` positions).
    weights : Tensor
        Shape ``(B, K, 1, ...)`` or ``(B, K, *S)``.
        The base method's (signed) weights for the target class.
    base_map : Tensor, optional
        Shape ``(B, 1, *S)``.
        The base CAM before ReLU, ``m``; defaults to ``sum_k w_k A_k``. Spatial layout only
        (the channel layout fuses the signed weighted columns ``z_p`` directly).
    competitor_data : sequence of (activations, weights)
        Pseudo-negative data N1: for each competitor class its activations and base weights.
    negative_channels : bool
        Pseudo-negative data N2: the negatively weighted channels ``ReLU(-w) * A``.
    aperture, negative_aperture : float, 'auto' or 'sqrt_dim'
        Aperture of the positive (negative) conceptor on trace-normalised correlations.
        ``negative_aperture=None`` uses ``aperture``. Defaults 2.0 / 0.5 were chosen on held-out
        Fashion-MNIST images (7 x 7 layer); the negative one is weaker because the pooled
        negative correlation has trace = number of negative sources, and at the positive
        aperture its conceptor also claims the object mode shared by all classes (see
        ``docs/conceptor_cam.md``).
    combine : {'and_not', 'or_not', 'sum'}
        ``C+ AND NOT C-``, ``C+ OR NOT C-`` or ``(C+ + NOT C-) / 2``.
    layout : {'spatial', 'channel'}
        Conceptor dimensions: the ``h*w`` positions, or the ``K`` channels (computed in the
        subspace spanned by the data, so ``K >> h*w`` stays cheap).
    positive_data : {'positive', 'signed'}
        Positive evidence from ``ReLU(w) * A`` (default) or from the signed ``w * A``.
    rtol : float, optional
        Relative eigenvalue threshold of the conceptor algebra.

    Returns
    -------
    Tensor
        ``(B, 1, *S)``: ``s = C m`` (not ReLU'd), in the dtype of ``activations``.
    """
    if not 3 <= activations.dim() <= 5:
        raise ValueError(f"activations must be (B, K, *S) with 1 to 3 dimensions S, got {tuple(activations.shape)}")
    b, k = activations.shape[:2]
    grid = tuple(activations.shape[2:])
    p = math.prod(grid)
    unit_shape = (1,) * len(grid)
    if (
        weights.dim() != activations.dim()
        or weights.shape[:2] != (b, k)
        or tuple(weights.shape[2:]) not in (unit_shape, grid)
    ):
        raise ValueError(
            f"weights must be (B, K, {', '.join('1' for _ in grid)}) or (B, K, *S) = {(b, k, *grid)}, "
            f"got {tuple(weights.shape)}"
        )
    for name, t in (("activations", activations), ("weights", weights)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(
                f"the layer {name} contain NaN or inf values; Conceptor-CAM needs finite "
                "activations (check the model and inputs)"
            )
    if combine not in _COMBINE:
        raise ValueError(f"combine must be one of {_COMBINE}, got {combine!r}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
    if positive_data not in _POSITIVE_DATA:
        raise ValueError(f"positive_data must be one of {_POSITIVE_DATA}, got {positive_data!r}")
    aperture = _check_aperture(aperture, "aperture")
    neg_ap = aperture if negative_aperture is None else _check_aperture(negative_aperture, "negative_aperture")

    A = activations.detach().reshape(b, k, p).to(torch.float64)
    W = weights.detach().reshape(b, k, -1).to(torch.float64)
    Z = W * A  # signed weighted data, rows = channels
    Zpos = torch.relu(W) * A if positive_data == "positive" else Z
    negs: List[Tensor] = []
    for a_j, w_j in competitor_data:
        if not bool(torch.isfinite(a_j).all()) or not bool(torch.isfinite(w_j).all()):
            raise ValueError("competitor activations/weights contain NaN or inf values")
        negs.append(
            torch.relu(w_j.detach().reshape(b, k, -1).to(torch.float64))
            * a_j.detach().reshape(b, k, p).to(torch.float64)
        )
    if negative_channels:
        negs.append(torch.relu(-W) * A)

    if layout == "spatial":
        dim = p
        m = Z.sum(1) if base_map is None else base_map.detach().reshape(b, p).to(torch.float64)
        basis = None
    else:
        dim = k
        cols = torch.cat([Z, Zpos, *negs], dim=2)  # (B, K, d0)
        if k > cols.shape[2]:  # work in an orthonormal basis of the data's span
            basis, _ = torch.linalg.qr(cols)  # (B, K, d0)
            Z, Zpos = basis.transpose(1, 2) @ Z, basis.transpose(1, 2) @ Zpos
            negs = [basis.transpose(1, 2) @ zn for zn in negs]
        else:
            basis = None
        m = Z  # columns z_p, fused below

    Rpos, _ = _correlation(Zpos, layout)
    Cpos = conceptor_from_correlation(Rpos, _apertures(aperture, Rpos, dim, rtol), rtol=rtol)
    if negs:
        pooled = torch.zeros_like(Rpos)
        for zn in negs:
            Rn, _ = _correlation(zn, layout)
            pooled = pooled + Rn
        # pooling the trace-normalised data = OR of the single conceptors (same aperture)
        Cneg = conceptor_from_correlation(pooled, _apertures(neg_ap, pooled, dim, rtol), rtol=rtol)
        if combine == "and_not":
            C = conjunction(Cpos, negation(Cneg), rtol=rtol)
        elif combine == "or_not":
            C = disjunction(Cpos, negation(Cneg), rtol=rtol)
        else:
            C = 0.5 * (Cpos + negation(Cneg))
    else:
        C = Cpos

    if layout == "spatial":
        s = (C @ m.unsqueeze(-1)).squeeze(-1)
    else:
        ones = torch.ones(b, k, 1, dtype=torch.float64, device=A.device)
        u = ones if basis is None else basis.transpose(1, 2) @ ones  # (B, d, 1)
        s = ((C @ u).transpose(1, 2) @ m).squeeze(1)  # s_p = 1^T C z_p
    return s.reshape(b, 1, *grid).to(activations.dtype)


@register_method(aliases=("conceptorcam", "conceptor-cam"))
class LayerConceptorCam(LayerAttribution, GradientAttribution):
    r"""Conceptor-CAM on top of any CAM method of the package.

    The base method (a :class:`~captum_cam_ext.CamAttribution` class or instance) provides the
    activations and weights through ``base.compute``; the channel fusion is replaced by
    :func:`conceptor_fusion` (spatial conceptor over the ``h*w`` positions, trace-normalised
    correlations, aperture 2, negative aperture 0.5, ``C = C+ AND NOT C-``, readout ``s = C m``).

    With ``aperture=math.inf``, ``negatives="none"`` and ``positive_data="signed"`` the conceptor is
    the projector onto the span of the weighted channel maps, which contains ``m``: the result is
    the base CAM (up to float round-off).

    Parameters
    ----------
    forward_func : nn.Module or callable
        The model, output ``(N, C)``.
    layer : nn.Module or list of nn.Module, optional
        Target layer(s); may be omitted when ``base`` is an instance.
    base : CamAttribution subclass or instance
        The weighting method (default :class:`~captum_cam_ext.LayerGradCam`).
    aperture : float, 'sqrt_dim' or 'auto'
        Aperture on trace-normalised correlations (default 2.0, chosen on held-out
        Fashion-MNIST images with a 7 x 7 layer). ``'sqrt_dim'`` is ``sqrt(h*w)`` (``sqrt(K)``
        in channel layout); ``'auto'`` maximises Jaeger's norm-gradient per image;
        ``math.inf`` is the hard projector.
    negatives : {'both', 'classes', 'channels', 'none'}
        Pseudo-negative evidence: top-``k`` competitor classes (N1), negatively weighted channels
        (N2), both (default) or none. N1 is computed from one forward pass for gradient methods
        (one extra cheap backward per class); perturbation methods score all ``k + 1`` classes
        from the same masked passes (:meth:`CamAttribution.compute_for_targets`).
    k : int
        Number of competitor classes (N1), default 3.
    combine : {'and_not', 'or_not', 'sum'}
        How the positive and negative conceptors are combined (default ``'and_not'``).
    layout : {'spatial', 'channel'}
        Conceptor dimensions (positions or channels).
    positive_data : {'positive', 'signed'}
        Positive evidence from ``ReLU(w) * A`` (default) or ``w * A``.
    negative_aperture : float, 'sqrt_dim', 'auto' or None
        Aperture of the negative conceptor (default 0.5; None: same as ``aperture``). Chosen on
        a held-out Fashion-MNIST split: at the positive aperture the pooled negatives (trace
        = number of negative sources) also remove the object mode shared by all classes.
    base_kwargs : dict, optional
        Extra keyword arguments for the base class constructor (e.g. ``batch_size=``).
    rtol : float, optional
        Relative eigenvalue threshold of the conceptor algebra.
    """

    name = "conceptor"

    def __init__(
        self,
        forward_func: Callable,
        layer: Optional[LayerSpec] = None,
        base: Union[Type[CamAttribution], CamAttribution] = LayerGradCam,
        aperture: ApertureSpec = 2.0,
        negatives: str = "both",
        k: int = 3,
        combine: str = "and_not",
        layout: str = "spatial",
        positive_data: str = "positive",
        negative_aperture: Optional[ApertureSpec] = 0.5,
        base_kwargs: Optional[dict] = None,
        rtol: Optional[float] = None,
    ) -> None:
        self.base: CamAttribution
        if isinstance(base, type) and issubclass(base, CamAttribution):
            if layer is None:
                raise ValueError("layer is required when base is a class")
            self.base = base(forward_func, layer, **(base_kwargs or {}))
        elif isinstance(base, CamAttribution) and not isinstance(base, type):
            inst = cast(CamAttribution, base)
            if base_kwargs:
                raise ValueError("base_kwargs can only be used when base is a class, not an instance")
            if inst.forward_func is not forward_func:
                raise ValueError("base was built for another forward_func; pass the same model to both")
            if layer is not None:
                given = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]
                if len(given) != len(inst.layers) or any(a is not b for a, b in zip(given, inst.layers)):
                    raise ValueError("layer differs from the base instance's layer(s); omit layer or make them match")
            self.base = inst
        else:
            raise TypeError(
                f"base must be a CamAttribution subclass (e.g. LayerGradCam) or an instance of one, got {base!r}"
            )
        self.aperture = _check_aperture(aperture, "aperture")
        self.negative_aperture = (
            None if negative_aperture is None else _check_aperture(negative_aperture, "negative_aperture")
        )
        if negatives not in _NEGATIVES:
            raise ValueError(f"negatives must be one of {_NEGATIVES}, got {negatives!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (number of competitor classes) must be a positive int, got {k!r}")
        if combine not in _COMBINE:
            raise ValueError(f"combine must be one of {_COMBINE}, got {combine!r}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        if positive_data not in _POSITIVE_DATA:
            raise ValueError(f"positive_data must be one of {_POSITIVE_DATA}, got {positive_data!r}")
        self.negatives = negatives
        self.k = k
        self.combine = combine
        self.layout = layout
        self.positive_data = positive_data
        self.rtol = rtol
        layers = self.base.layers
        LayerAttribution.__init__(self, forward_func, layers[0] if len(layers) == 1 else layers)  # type: ignore[arg-type]
        GradientAttribution.__init__(self, forward_func)

    # ------------------------------------------------------------------------------------
    @property
    def _uses_classes(self) -> bool:
        return self.negatives in ("classes", "both")

    def _competitors(self, outputs: Tensor, index: Optional[Tensor]) -> Tensor:
        if index is None:
            raise ValueError(
                "negatives='classes'/'both' needs class-index targets (competitor classes are the "
                "top-k other logits); with a callable target use negatives='channels' or 'none'"
            )
        n_classes = outputs.shape[1]
        if self.k > n_classes - 1:
            raise ValueError(
                f"k={self.k} competitor classes requested but the model has only {n_classes} "
                f"classes (at most {n_classes - 1} competitors); lower k"
            )
        scores = outputs.detach().float().clone()
        scores.scatter_(1, index[:, None], -math.inf)
        return scores.topk(self.k, dim=1).indices  # (N, k)

    def _gather(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        to_input: bool,
        backward_rule: str,
    ) -> List[Tuple[Tensor, Tensor, Tensor, List[Tuple[Tensor, Tensor]]]]:
        """Per layer: activations, target weights, base map, competitor (activations, weights)."""
        base = self.base
        callable_target = callable(target) and not isinstance(target, Tensor)
        if self._uses_classes and not callable_target:
            # the target and its competitors from shared passes: one forward and k + 1 backward
            # passes for gradient bases, the same masked passes for perturbation bases
            def with_competitors(outputs: Tensor) -> Tensor:
                index = resolve_target(outputs, target)
                return torch.cat([index[:, None], self._competitors(outputs, index)], dim=1)  # type: ignore[index]

            per_target = base.compute_for_targets(inputs, with_competitors, args, to_input, backward_rule)
            return [
                (d.activations, d.weights, d.cam, [(c[li].activations, c[li].weights) for c in per_target[1:]])
                for li, d in enumerate(per_target[0])
            ]
        details = base.compute(inputs, target, args, to_input, backward_rule)
        if self._uses_classes:
            self._competitors(details[0].outputs, details[0].target)  # raises: no class index
        return [(d.activations, d.weights, d.cam, []) for d in details]

    def _fuse_all(self, gathered: List[Tuple[Tensor, Tensor, Tensor, List[Tuple[Tensor, Tensor]]]]) -> List[Tensor]:
        return [
            conceptor_fusion(
                A,
                W,
                base_map=m,
                competitor_data=comp,
                negative_channels=self.negatives in ("channels", "both"),
                aperture=self.aperture,
                negative_aperture=self.negative_aperture,
                combine=self.combine,
                layout=self.layout,
                positive_data=self.positive_data,
                rtol=self.rtol,
            )
            for A, W, m, comp in gathered
        ]

    def compute_maps(
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        attribute_to_layer_input: bool = False,
        backward_rule: Optional[str] = None,
    ) -> List[Tensor]:
        """Raw conceptor maps ``s = C m`` (before ReLU), one ``(N, 1, h, w)`` tensor per layer."""
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rule = self.base.check_options("bilinear", None, backward_rule)
        return self._fuse_all(self._gather(tup, args, target, attribute_to_layer_input, rule))

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
    ) -> Tensor:
        r"""Conceptor-CAM maps; arguments and output as :meth:`CamAttribution.attribute`.

        Returns
        -------
        Tensor
            ``(N, 1, h, w)`` at the layer's resolution, ``(N, 1, H, W)`` with
            ``upsample_to_input=True``.
        """

        def raw_maps(tup: Tuple[Tensor, ...], args: Any, target: TargetSpec, to_input: bool, rule: str) -> RawMaps:
            gathered = self._gather(tup, args, target, to_input, rule)
            if len(gathered) != len(self.base.layers):
                raise ValueError("Conceptor-CAM needs layers with one tensor output each, not a tuple of tensors")
            return {"cam": self._fuse_all(gathered)}

        maps = self.base.attribute_in_chunks(
            raw_maps, inputs, target, additional_forward_args, attribute_to_layer_input, relu_attributions,
            upsample_to_input, interpolate_mode, normalize, internal_batch_size, backward_rule, aug_smooth,
        )["cam"]  # fmt: skip
        assert isinstance(maps, Tensor)  # tuple-output layers are refused in raw_maps
        return maps
