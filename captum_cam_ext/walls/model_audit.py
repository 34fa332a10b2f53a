"""Audit any model: prove it is blind to a region, then measure every CAM's saliency there.

:func:`audit_model` is the entry point (``captum-cam-ext walls audit --model ... --hidden-rows``
calls it).  It refuses a model that can see the region (:class:`~captum_cam_ext.walls.blindness.
NotBlindError`, with the measured output change): a leakage number is meaningless for a model
that may really use those pixels.  :func:`measure_leakage` is the measurement alone (used for
control models that *can* see the region, to compare with).

Per image and method it reports the paper's metric (Taimeskhanov et al. 2024, Table 1),
``||S[band]||_2 / ||S||_2`` on the min-max normalised map bilinearly upsampled to the input (a
constant map scores ``sqrt(hidden share)``, 0.491 for 54 of 224 rows), the same ratio with nearest
upsampling (no bleed across the wall), the share of the positive mass in the region, and whether
any hidden pixel gets positive saliency (both on the nearest-upsampled map, so that a map that is
exactly 0 on the feature cells the model cannot see scores exactly 0).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from captum_cam_ext._maps import upsample_maps
from captum_cam_ext.metrics.leakage import unseen_any_positive, unseen_positive_mass, wall_ratio
from captum_cam_ext.registry import create_method, method_class
from captum_cam_ext.walls.blindness import (
    BlindnessReport,
    Hidden,
    NotBlindError,
    check_blind,
    hidden_mask,
)

__all__ = ["LEAKAGE_METRICS", "SKIPPABLE", "WallAudit", "audit_model", "measure_leakage",
           "positive_maps", "skip_reason"]

#: Per-image metrics of :func:`measure_leakage`, with their meaning (0 is faithful for all four).
LEAKAGE_METRICS: Dict[str, str] = {
    "wall_ratio": "paper's ||S[band]||/||S|| (bilinear upsampling, min-max normalised)",
    "wall_ratio_nearest": "same ratio with nearest upsampling (no bleed across the wall)",
    "positive_mass": "share of the positive saliency mass in the hidden region (nearest)",
    "any_positive": "1 if some hidden pixel has positive saliency (nearest)",
}

MethodSpec = Union[str, type]


@dataclass
class WallAudit:
    """The result of :func:`audit_model` / :func:`measure_leakage`.

    Attributes
    ----------
    per_image : dict
        ``{method name: {metric: (N,) float64 tensor}}`` (metrics: :data:`LEAKAGE_METRICS`).
    targets : Tensor
        ``(N,)`` the explained classes (the model's predictions unless given).
    hidden_share : float
        Hidden pixels / all pixels; ``sqrt(hidden_share)`` is a constant map's wall ratio.
    blindness : BlindnessReport or None
        The proof (None from :func:`measure_leakage`).
    seconds : dict
        Wall time per method.
    maps : dict
        The first ``keep_maps`` layer-resolution maps per method.
    skipped : dict
        ``{method: reason}`` for registered methods that do not apply to this model (e.g. a method
        that needs a single fully connected head), when they were skipped rather than raised.
    """

    per_image: Dict[str, Dict[str, Tensor]]
    targets: Tensor
    hidden_share: float
    blindness: Optional[BlindnessReport] = None
    seconds: Dict[str, float] = field(default_factory=dict)
    maps: Dict[str, Tensor] = field(default_factory=dict)
    skipped: Dict[str, str] = field(default_factory=dict)

    @property
    def constant_map_ratio(self) -> float:
        """The wall ratio of a constant map: ``sqrt(hidden share)``."""
        return math.sqrt(self.hidden_share)

    def summary(self) -> Dict[str, Dict[str, Dict[str, float]]]:
        """``{method: {metric: {"mean", "std", "n"}}}`` over images (std with ``n - 1``)."""
        out: Dict[str, Dict[str, Dict[str, float]]] = {}
        for name, metrics in self.per_image.items():
            out[name] = {}
            for key, v in metrics.items():
                n = int(v.numel())
                out[name][key] = {"mean": float(v.mean()) if n else float("nan"),
                                  "std": float(v.std()) if n > 1 else 0.0, "n": n}
        return out

    def markdown(self) -> str:
        """A table: one row per method, mean ± std over images of every metric."""
        lines = []
        if self.blindness is not None:
            lines += [f"Blindness: {self.blindness.summary()}.", ""]
        lines += [f"Constant-map wall ratio (reference): {self.constant_map_ratio:.3f}.", "",
                  "| method | wall ratio (paper, bilinear) | wall ratio (nearest) | positive mass "
                  "in the hidden region (nearest) | images with positive saliency there (nearest) | s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, s in self.summary().items():
            lines.append(
                f"| {name} | {s['wall_ratio']['mean']:.3f} ± {s['wall_ratio']['std']:.3f} | "
                f"{s['wall_ratio_nearest']['mean']:.3f} ± {s['wall_ratio_nearest']['std']:.3f} | "
                f"{s['positive_mass']['mean']:.3f} ± {s['positive_mass']['std']:.3f} | "
                f"{100 * s['any_positive']['mean']:.1f}% | {self.seconds.get(name, 0.0):.1f} |"
            )
        if self.skipped:
            lines += ["", "Not applicable to this model (skipped): " + "; ".join(
                f"{k} ({v})" for k, v in self.skipped.items()) + "."]
        return "\n".join(lines)


def _method_classes(methods: Optional[Sequence[MethodSpec]]) -> List[type]:
    if methods is None:
        import captum_cam_ext.attr  # noqa: F401  (importing it registers every CAM class)
        from captum_cam_ext.registry import methods as registered

        return list(registered().values())
    if isinstance(methods, (str, type)):
        methods = [methods]
    return [method_class(m) if isinstance(m, str) else m for m in methods]


def _build(cls: type, model: nn.Module, layer: nn.Module, batch_size: Optional[int],
           cam_kwargs: Dict[str, Any]) -> Any:
    try:
        return create_method(cls, model, layer, batch_size=batch_size, **cam_kwargs)
    except ValueError:  # not registered (a user's own class): build it directly
        return cls(model, layer, **cam_kwargs)


#: Errors that mean "this method does not apply to this model" when methods are skipped.
SKIPPABLE = (ValueError, TypeError, NotImplementedError, RuntimeError)


def skip_reason(exc: BaseException) -> str:
    """``"<ExceptionType>: <first line>"`` for a skipped method."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def positive_maps(cam: Any, inputs: Tensor, target: Any) -> Tensor:
    """``cam``'s maps with negative values set to 0, as ``(N, 1, h, w)`` float32.

    Uses ``relu_attributions=True`` when the method's ``attribute`` takes it (the CAM family), and
    clamps the map otherwise (FullGrad, LeGrad, ...), so every method is scored on the same kind
    of map: the positive evidence it shows.
    """
    try:
        takes_relu = "relu_attributions" in inspect.signature(cam.attribute).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        takes_relu = True
    if takes_relu:
        maps = cam.attribute(inputs, target=target, relu_attributions=True)
    else:
        maps = cam.attribute(inputs, target=target).clamp_min(0)
    if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.shape[1] != 1:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"{type(cam).__name__} gave maps of shape {shape}, not (N, 1, h, w)")
    return maps.detach().float()


def _predicted(model: nn.Module, images: Tensor, batch: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i : i + batch]).argmax(1)
                          for i in range(0, images.shape[0], batch)])


def measure_leakage(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    hidden: Hidden,
    methods: Optional[Sequence[MethodSpec]] = None,
    target: Optional[Union[int, Tensor]] = None,
    batch: int = 16,
    method_batch_size: Optional[int] = None,
    cam_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
    keep_maps: int = 0,
    progress: bool = False,
    skip_inapplicable: Optional[bool] = None,
) -> WallAudit:
    """Every method's saliency in the hidden region, per image (no blindness check).

    Parameters
    ----------
    model : nn.Module
        The classifier (evaluated in eval mode; its mode is restored afterwards).
    layer : nn.Module
        The CAM layer (its output must cover the whole input, e.g. the last ReLU).
    images : Tensor
        ``(N, C, H, W)``, preprocessed as the model expects.
    hidden : Hidden
        The region (rows, ``"170:224"``, or a boolean mask; see
        :func:`~captum_cam_ext.walls.blindness.hidden_mask`).
    methods : sequence of names or classes, optional
        Default: every registered method (:func:`captum_cam_ext.registry.methods`).
    target : int or Tensor, optional
        The explained class(es); default each image's predicted class, as the paper.
    batch : int
        Images per ``attribute`` call.
    method_batch_size : int, optional
        Forward passes per chunk for perturbation methods (Score-CAM, Ablation-CAM).
    cam_kwargs : dict, optional
        ``{method name or class name: constructor kwargs}``.
    keep_maps : int
        Keep the first ``keep_maps`` layer-resolution maps of every method.
    progress : bool
        Print one line per method.
    skip_inapplicable : bool, optional
        Skip (and list in ``WallAudit.skipped``) a method whose construction or ``attribute``
        raises a ``ValueError`` / ``TypeError`` / ``NotImplementedError`` / ``RuntimeError`` for
        this model, instead of raising.  Default: True when ``methods`` is None (every registered
        method, some of which need a particular architecture), else False.

    Returns
    -------
    WallAudit
    """
    skip = methods is None if skip_inapplicable is None else bool(skip_inapplicable)
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty tensor (N, C, H, W), got {shape}")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    size = tuple(int(s) for s in images.shape[-2:])
    mask = hidden_mask(hidden, size)
    classes = _method_classes(methods)
    kwargs = {str(k).lower(): v for k, v in (cam_kwargs or {}).items()}
    was_training = model.training
    model.eval()
    try:
        targets = _predicted(model, images, batch) if target is None else (
            torch.as_tensor(target).reshape(-1).expand(images.shape[0]).clone())
        audit = WallAudit(per_image={}, targets=targets,
                          hidden_share=float(mask.sum()) / mask.numel())
        for cls in classes:
            t0 = time.perf_counter()
            ckw = kwargs.get(cls.__name__.lower(), kwargs.get(getattr(cls, "name", ""), {}))
            try:
                cam = _build(cls, model, layer, method_batch_size, ckw)
                maps = torch.cat([positive_maps(cam, images[i : i + batch], targets[i : i + batch])
                                  for i in range(0, images.shape[0], batch)])
            except SKIPPABLE as exc:
                if not skip:
                    raise
                audit.skipped[cls.__name__] = skip_reason(exc)
                continue
            audit.per_image[cls.__name__] = _metrics(maps, mask, size)
            audit.seconds[cls.__name__] = time.perf_counter() - t0
            if keep_maps:
                audit.maps[cls.__name__] = maps[:keep_maps]
            if progress:
                print(f"  {cls.__name__}: {audit.seconds[cls.__name__]:.1f} s", flush=True)
    finally:
        model.train(was_training)
    return audit


def _metrics(maps: Tensor, mask: Tensor, size: Sequence[int]) -> Dict[str, Tensor]:
    """Per-image metrics of layer-resolution maps against an input-resolution mask."""
    hw = (int(size[0]), int(size[1]))
    if maps.dim() != 4 or maps.shape[1] != 1:
        raise ValueError(f"expected CAM maps (N, 1, h, w), got {tuple(maps.shape)}")
    near = upsample_maps(maps.double(), hw, "nearest")
    return {
        "wall_ratio": wall_ratio(maps.double(), mask, input_size=hw, interpolate_mode="bilinear"),
        "wall_ratio_nearest": wall_ratio(near, mask),
        "positive_mass": unseen_positive_mass(near, mask),
        "any_positive": unseen_any_positive(near, mask),
    }


def audit_model(
    model: nn.Module,
    layer: nn.Module,
    images: Tensor,
    hidden: Hidden,
    methods: Optional[Sequence[MethodSpec]] = None,
    target: Optional[Union[int, Tensor]] = None,
    batch: int = 16,
    method_batch_size: Optional[int] = None,
    cam_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
    keep_maps: int = 0,
    progress: bool = False,
    seed: int = 0,
    skip_inapplicable: Optional[bool] = None,
) -> WallAudit:
    """Prove ``model`` is blind to ``hidden`` on ``images``, then measure every CAM's leakage there.

    Parameters
    ----------
    model, layer, images, hidden, methods, target, batch
        See :func:`measure_leakage`.
    method_batch_size, cam_kwargs, keep_maps, progress, skip_inapplicable
        See :func:`measure_leakage`.
    seed : int
        Seed of the blindness check's random changes.

    Returns
    -------
    WallAudit
        With ``blindness`` set.

    Raises
    ------
    NotBlindError
        (a ``ValueError``) if changing the hidden region changes any output bit, or if the input
        gradient there is not exactly zero; the message gives the measured output change and
        gradient.  Nothing is measured then.

    Examples
    --------
    >>> from captum_cam_ext.walls import blind_efficientnet_lite0   # doctest: +SKIP
    >>> model = blind_efficientnet_lite0()                           # doctest: +SKIP
    >>> audit = audit_model(model, model.features, images, hidden="170:224",
    ...                     methods=["gradcam", "hirescam"])         # doctest: +SKIP
    >>> print(audit.markdown())                                      # doctest: +SKIP
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty tensor (N, C, H, W), got {shape}")
    mask = hidden_mask(hidden, images.shape[-2:])
    was_training = model.training
    model.eval()
    try:
        report = check_blind(model, images, mask, seed=seed)
    finally:
        model.train(was_training)
    if not report.blind:
        raise NotBlindError(
            f"refusing to audit: the model can see the hidden region ({report.summary()}). "
            "A leakage number only means something for a model whose outputs cannot depend on "
            "the region; hide rows the model is provably blind to, or build such a model (see "
            "captum_cam_ext.walls.blind_efficientnet_lite0).",
            report,
        )
    audit = measure_leakage(model, layer, images, mask, methods, target, batch,
                            method_batch_size, cam_kwargs, keep_maps, progress, skip_inapplicable)
    audit.blindness = report
    return audit
