"""The one registry of CAM methods: canonical names, aliases, and how to build a method by name.

Every CAM class the package exports registers itself here with :func:`register_method` (a class
decorator in the method's own file). Everything that lists methods reads this registry:
:class:`~captum_cam_ext.MultiCam`, :func:`~captum_cam_ext.evaluation.evaluate`, the command line,
the walls audit, the theory report and the tests. A new CAM method is one file with a registered
class plus its import in :mod:`captum_cam_ext.attr`.

This module imports nothing from the rest of the package, so any module may import it.

Examples
--------
>>> import captum_cam_ext as cce
>>> sorted(cce.methods())[:3]
['ablationcam', 'conceptor', 'eigencam']
>>> cce.registry.method_class("Grad-CAM++").__name__
'LayerGradCamPlusPlus'
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, TypeVar, Union, overload

__all__ = [
    "KINDS",
    "canonical_method_name",
    "create_method",
    "method_class",
    "method_kind",
    "methods",
    "normalize_method_name",
    "register_method",
    "unregister_method",
]

#: What a method needs, as :func:`method_kind` reports it.
#: ``"shared_pass"``: weights from one forward/backward (activations and layer gradients), so
#: :class:`~captum_cam_ext.MultiCam` can compute it together with others;
#: ``"perturbation"``: masked or ablated forward passes; ``"composite"``: a method built on
#: another method (Conceptor-CAM) or needing several passes of its own.
KINDS: Tuple[str, ...] = ("shared_pass", "perturbation", "composite")

T = TypeVar("T", bound=type)

_METHODS: Dict[str, type] = {}  # canonical name -> class, in registration order
_ALIASES: Dict[str, str] = {}  # normalised spelling -> canonical name


def normalize_method_name(name: str) -> str:
    """The spelling-insensitive key of a method name.

    Case, spaces, ``-`` and ``_`` are ignored and ``plusplus`` / a trailing ``pp`` mean ``++``:
    ``"Grad-CAM++"``, ``"gradcam_pp"`` and ``"GradCAMPlusPlus"`` all give ``"gradcam++"``.
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a str, got {type(name).__name__}")
    key = "".join(name.split()).lower().replace("-", "").replace("_", "").replace("plusplus", "++")
    if key.endswith("pp") and not key.endswith("++"):
        key = key[:-2] + "++"
    return key


def method_kind(cls: type) -> str:
    """``"shared_pass"``, ``"perturbation"`` or ``"composite"`` (see :data:`KINDS`)."""
    declared = getattr(cls, "method_kind", None)
    if declared is not None:
        if declared not in KINDS:
            raise ValueError(f"{cls.__name__}.method_kind must be one of {KINDS}, got {declared!r}")
        return str(declared)
    if getattr(cls, "uses_perturbation", False):
        return "perturbation"
    if callable(getattr(cls, "cam_weights", None)) and getattr(cls, "default_backward_rule", "standard") == "standard":
        return "shared_pass"
    return "composite"


@overload
def register_method(cls: T, *, name: Optional[str] = ..., aliases: Sequence[str] = ...) -> T: ...


@overload
def register_method(
    cls: None = ..., *, name: Optional[str] = ..., aliases: Sequence[str] = ...
) -> Callable[[T], T]: ...


def register_method(
    cls: Optional[T] = None, *, name: Optional[str] = None, aliases: Sequence[str] = ()
) -> Union[T, Callable[[T], T]]:
    """Register a CAM attribution class under its canonical name (usable as a class decorator).

    Parameters
    ----------
    cls : type
        A Captum layer-attribution class whose constructor takes ``(forward_func, layer, ...)``
        and whose ``attribute`` returns ``(N, 1, ...)`` maps.
    name : str, optional
        Canonical lower-case name; defaults to the class attribute ``name``. Stored normalised
        (see :func:`normalize_method_name`).
    aliases : sequence of str
        Other spellings that resolve to this method.

    Returns
    -------
    type
        ``cls`` itself (so it can decorate a class definition).

    Raises
    ------
    ValueError
        If the name or an alias is already taken by another class.
    TypeError
        If ``cls`` is not a class or has no name.

    Examples
    --------
    >>> @register_method(aliases=("my-cam",))          # doctest: +SKIP
    ... class LayerMyCam(CamAttribution):
    ...     name = "mycam"
    ...     def cam_weights(self, activations, gradients):
    ...         return gradients.amax(dim=(2, 3), keepdim=True)
    """

    def decorate(c: T) -> T:
        if not isinstance(c, type):
            raise TypeError(f"register_method takes a class, got {type(c).__name__}")
        raw = name if name is not None else getattr(c, "name", None)
        if not isinstance(raw, str) or not raw:
            raise TypeError(f"{c.__name__} needs a name: pass name= or set the class attribute `name`")
        canonical = normalize_method_name(raw)
        method_kind(c)  # validates a declared kind
        keys = [canonical, *(normalize_method_name(a) for a in aliases), normalize_method_name(c.__name__)]
        for key in keys:
            owner = _ALIASES.get(key)
            if owner is not None and _METHODS[owner] is not c:
                raise ValueError(
                    f"method name {key!r} is already registered for {_METHODS[owner].__name__}; "
                    "pick another name or unregister_method() the old one first"
                )
        _METHODS[canonical] = c
        for key in keys:
            _ALIASES[key] = canonical
        return c

    return decorate if cls is None else decorate(cls)


def unregister_method(name: Union[str, type]) -> type:
    """Remove a method (by name, alias or class) and all its aliases; returns the class."""
    canonical = canonical_method_name(name)
    cls = _METHODS.pop(canonical)
    for key in [k for k, v in _ALIASES.items() if v == canonical]:
        del _ALIASES[key]
    return cls


def methods(kind: Optional[str] = None) -> Dict[str, type]:
    """``{canonical name: class}`` of every registered CAM method, in registration order.

    Parameters
    ----------
    kind : str, optional
        Keep only methods of this kind (:data:`KINDS`), e.g. ``"shared_pass"`` for what
        :class:`~captum_cam_ext.MultiCam` can compute from one pass.

    Returns
    -------
    dict
        A new dict: changing it does not change the registry.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return {n: c for n, c in _METHODS.items() if kind is None or method_kind(c) == kind}


def canonical_method_name(name: Union[str, type]) -> str:
    """The canonical name of a registered method given any alias, spelling or the class itself.

    Raises
    ------
    ValueError
        Unknown name; the message lists the registered names and the closest matches.
    """
    if isinstance(name, type):
        for n, c in _METHODS.items():
            if c is name:
                return n
        raise ValueError(f"{name.__name__} is not a registered CAM method; register it with register_method()")
    key = normalize_method_name(name)
    if key in _ALIASES:
        return _ALIASES[key]
    close = difflib.get_close_matches(key, list(_ALIASES), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(sorted({_ALIASES[c] for c in close}))}?" if close else ""
    raise ValueError(f"unknown CAM method {name!r}.{hint} Choose from {', '.join(_METHODS)}")


def method_class(name: Union[str, type]) -> type:
    """The registered class for a name, alias or class (see :func:`canonical_method_name`)."""
    return _METHODS[canonical_method_name(name)]


def create_method(
    name: Union[str, type], forward_func: Callable, layer: Any, *, batch_size: Optional[int] = None, **kwargs: Any
) -> Any:
    """Build a registered CAM method by name.

    Parameters
    ----------
    name : str or type
        A registered name or alias (``"Grad-CAM++"`` works) or a registered class.
    forward_func : nn.Module or callable
        The model.
    layer : nn.Module or list of nn.Module
        The target layer(s).
    batch_size : int, optional
        Forward passes per chunk, passed only to methods whose constructor takes ``batch_size``
        (Score-CAM, Ablation-CAM, ...); ignored by the others.
    **kwargs :
        Further constructor arguments, passed as they are.

    Returns
    -------
    The attribution object.
    """
    cls = method_class(name)
    if batch_size is not None and "batch_size" in _constructor_parameters(cls):
        kwargs["batch_size"] = batch_size
    return cls(forward_func, layer, **kwargs)


def _constructor_parameters(cls: type) -> List[str]:
    try:
        return list(inspect.signature(cls.__init__).parameters)  # type: ignore[misc]
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return []
