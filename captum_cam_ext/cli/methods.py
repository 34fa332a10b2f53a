"""``--method`` values -> registered CAM methods (:mod:`captum_cam_ext.registry`).

``all`` selects every registered method; those that do not apply to the model or layer (a method
for transformer blocks on a CNN, one needing a GAP -> FC head, ...) are then skipped with a
warning, while a method named explicitly that does not apply is an error.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from torch import Tensor, nn

from captum_cam_ext.cli._common import CliError, one_line, warn
from captum_cam_ext.registry import canonical_method_name, create_method, method_class, method_kind, methods

__all__ = [
    "INAPPLICABLE",
    "MethodSelection",
    "attribute_options",
    "build_method",
    "build_methods",
    "check_map",
    "compute_map",
    "constructor_parameters",
    "method_choices",
    "methods_help",
    "resolve_methods",
    "select_methods",
    "takes_layout",
    "trial_run",
]

#: Errors that mean "this method does not apply to this model or layer".
INAPPLICABLE = (ValueError, TypeError, NotImplementedError, RuntimeError, CliError)


def method_choices() -> List[str]:
    """Canonical names of every registered method, in registration order."""
    return list(methods())


def methods_help() -> str:
    """The ``--method`` help text, listing the registered methods."""
    return f"CAM method(s), comma-separated or repeated: {', '.join(method_choices())}, or all"


@dataclass
class MethodSelection:
    """The methods to run; ``optional`` ones came from ``all`` only and may be skipped."""

    names: List[str]
    optional: Set[str] = field(default_factory=set)


def select_methods(spec: Sequence[str]) -> MethodSelection:
    """Canonical method names from ``--method`` values (comma-separated allowed; ``all``).

    Raises
    ------
    CliError
        An unknown name (the message lists the registered ones) or no name at all.
    """
    known = method_choices()
    out: List[str] = []
    named: Set[str] = set()
    for item in spec:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() == "all":
                out += [m for m in known if m not in out]
                continue
            try:
                key = canonical_method_name(part)
            except (ValueError, TypeError):
                raise CliError(f"unknown method {part!r}; choose from {', '.join(known)}, or all") from None
            named.add(key)
            if key not in out:
                out.append(key)
    if not out:
        raise CliError(f"no method given; choose from {', '.join(known)}, or all")
    return MethodSelection(out, set(out) - named)


def resolve_methods(spec: Sequence[str]) -> List[str]:
    """The canonical names of :func:`select_methods`."""
    return select_methods(spec).names


def constructor_parameters(cls: type) -> List[str]:
    """Names of the constructor arguments of a method class."""
    try:
        return list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):  # pragma: no cover - classes without a signature
        return []


def takes_layout(cls: type) -> bool:
    """The method can lay a layer's tokens out as a grid (directly or through its base method)."""
    params = constructor_parameters(cls)
    return "reshape_transform" in params or "base_kwargs" in params


def build_method(
    name: str,
    model: nn.Module,
    layer: nn.Module,
    batch_size: Optional[int] = None,
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
    layout_required: bool = True,
) -> Any:
    """The attribution object of a registered method, with a token layout when one is given.

    Methods that build on another method (Conceptor-CAM) pass the layout to their base through
    ``base_kwargs``. A method without a ``reshape_transform`` argument refuses a layout when
    ``layout_required`` (``--reshape vit``), and is built without it otherwise (``--reshape auto``:
    e.g. LeGrad reads a transformer block's tokens itself).

    Raises
    ------
    CliError
        A required token layout for a method that cannot take one.
    """
    kwargs: Dict[str, Any] = {}
    cls = method_class(name)
    if reshape_transform is not None:
        params = constructor_parameters(cls)
        if "reshape_transform" in params:
            kwargs["reshape_transform"] = reshape_transform
        elif "base_kwargs" in params:
            kwargs["base_kwargs"] = {"reshape_transform": reshape_transform}
        elif layout_required:
            able = [m for m, c in methods().items() if takes_layout(c)]
            raise CliError(f"{name} does not support token layouts (--reshape); use one of {', '.join(able)}")
    return create_method(name, model, layer, batch_size=batch_size, **kwargs)


def build_methods(
    selection: MethodSelection,
    model: nn.Module,
    layer: nn.Module,
    batch_size: Optional[int] = None,
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
    layout_required: bool = True,
) -> Dict[str, Any]:
    """``{name: attribution object}``; optional methods that cannot be built are skipped (warning).

    Raises
    ------
    CliError
        A named method that cannot be built, or no method left.
    """
    cams: Dict[str, Any] = {}
    for name in selection.names:
        try:
            cams[name] = build_method(name, model, layer, batch_size, reshape_transform, layout_required)
        except INAPPLICABLE as exc:
            if name not in selection.optional:
                raise CliError(f"{name}: {one_line(exc)}") from None
            warn(f"skipping {name}: {one_line(exc)}")
    if not cams:
        raise CliError("none of the selected methods applies to this model and layer; pick --method and --layer")
    return cams


def attribute_options(cam: Any) -> Dict[str, Any]:
    """``relu_attributions=True`` for methods whose ``attribute`` takes it (not FullGrad, LeGrad)."""
    try:
        params = inspect.signature(cam.attribute).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return {}
    return {"relu_attributions": True} if "relu_attributions" in params else {}


def check_map(name: str, maps: Tensor, layer_name: str) -> Tensor:
    """``maps`` if they are image maps ``(N, 1, h, w)``; a one-line error otherwise."""
    if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.shape[1] != 1:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise CliError(f"{name} gives {shape} maps at layer {layer_name}, not (N, 1, h, w) image maps; pick "
                       "another --layer (a feature map, or tokens with --reshape vit) or another method")
    return maps


def compute_map(
    name: str, cam: Any, x: Tensor, target: Any, layer_name: str, options: Optional[Dict[str, Any]] = None
) -> Tensor:
    """The checked map of ``cam`` for ``x``, detached.

    ``options`` are the ``attribute`` keyword arguments; default :func:`attribute_options`.
    """
    kwargs = attribute_options(cam) if options is None else options
    return check_map(name, cam.attribute(x, target=target, **kwargs), layer_name).detach()


def trial_run(
    cams: Dict[str, Any], selection: MethodSelection, x: Tensor, target: Any, layer_name: str,
    layout: bool = False,
    options: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
    """Try the methods on one input; drop optional ones that fail (warning), raise for named ones.

    Perturbation methods are costly and apply to any layer with a feature map, so they are tried
    only when a token ``layout`` is in use and they cannot take it. ``options``: the ``attribute``
    keyword arguments of the real run (see :func:`compute_map`).
    """
    kept: Dict[str, Any] = {}
    for name, cam in cams.items():
        if method_kind(type(cam)) != "perturbation" or (layout and not takes_layout(type(cam))):
            try:
                compute_map(name, cam, x, target, layer_name, options)
            except INAPPLICABLE as exc:
                if name not in selection.optional:
                    raise CliError(f"{name}: {one_line(exc)}") from None
                warn(f"skipping {name}: {one_line(exc)}")
                continue
        kept[name] = cam
    if not kept:
        raise CliError("none of the selected methods applies to this model and layer; pick --method and --layer")
    return kept
