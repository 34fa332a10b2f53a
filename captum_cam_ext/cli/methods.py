"""``--method`` values -> registered CAM methods (:mod:`captum_cam_ext.registry`)."""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional, Sequence

from torch import Tensor, nn

from captum_cam_ext.cli._common import CliError
from captum_cam_ext.registry import canonical_method_name, create_method, method_class, methods

__all__ = ["build_method", "constructor_parameters", "method_choices", "methods_help", "resolve_methods"]


def method_choices() -> List[str]:
    """Canonical names of every registered method, in registration order."""
    return list(methods())


def methods_help() -> str:
    """The ``--method`` help text, listing the registered methods."""
    return f"CAM method(s), comma-separated or repeated: {', '.join(method_choices())}, or all"


def resolve_methods(spec: Sequence[str]) -> List[str]:
    """Canonical method names from ``--method`` values (comma-separated allowed; ``all``).

    Raises
    ------
    CliError
        An unknown name (the message lists the registered ones) or no name at all.
    """
    known = method_choices()
    out: List[str] = []
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
            if key not in out:
                out.append(key)
    if not out:
        raise CliError(f"no method given; choose from {', '.join(known)}, or all")
    return out


def constructor_parameters(cls: type) -> List[str]:
    """Names of the constructor arguments of a method class."""
    try:
        return list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):  # pragma: no cover - classes without a signature
        return []


def build_method(
    name: str,
    model: nn.Module,
    layer: nn.Module,
    batch_size: Optional[int] = None,
    reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
) -> Any:
    """The attribution object of a registered method, with a token layout when one is given.

    Methods that build on another method (Conceptor-CAM) pass the layout to their base through
    ``base_kwargs``.

    Raises
    ------
    CliError
        A token layout for a method that cannot take one.
    """
    kwargs: dict = {}
    if reshape_transform is not None:
        params = constructor_parameters(method_class(name))
        if "reshape_transform" in params:
            kwargs["reshape_transform"] = reshape_transform
        elif "base_kwargs" in params:
            kwargs["base_kwargs"] = {"reshape_transform": reshape_transform}
        else:
            able = [m for m, c in methods().items() if "reshape_transform" in constructor_parameters(c)]
            raise CliError(f"{name} does not support token layouts (--reshape); use one of {', '.join(able)}")
    return create_method(name, model, layer, batch_size=batch_size, **kwargs)
