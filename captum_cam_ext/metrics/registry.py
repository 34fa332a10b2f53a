"""The one registry of dataset metrics: name, better direction, unit, and how to compute it.

Every metric that :func:`~captum_cam_ext.evaluation.evaluate` (and the command line) can report is
registered here by the module that implements it, with :func:`register_metric`. Metrics that come
from one computation (Average Drop, Average Increase, Average Gain and the mask area all come from
one :func:`~captum_cam_ext.metrics.confidence_metrics` call) share a ``group`` and its ``compute``
function, which ``evaluate`` calls once per batch for the whole group.

A ``compute`` function takes ``(forward_func, inputs, maps, target, *, indices, **options)`` --
the model, a batch ``(B, C, H, W)``, the method's maps ``(B, 1, h, w)``, the class indices
``(B,)`` and the examples' dataset indices ``(B,)`` (seeds for anything random, so that an
example's value does not depend on its batch or process) -- and returns ``{metric name:
per-example values (B,)}`` for (at least) every metric of its group. ``options`` are the keyword
arguments ``evaluate`` was given for that group.

Examples
--------
>>> from captum_cam_ext.metrics.registry import metric_specs
>>> [n for n, s in metric_specs().items() if s.group == "confidence"]
['average_drop', 'average_increase', 'average_gain', 'mask_area']
>>> metric_specs()["average_drop"].higher_is_better
False
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from torch import Tensor

__all__ = [
    "ComputeFn",
    "MetricSpec",
    "compute_group",
    "default_metric_names",
    "metric_spec",
    "metric_specs",
    "register_metric",
    "resolve_metrics",
    "unregister_metric",
]

ComputeFn = Callable[..., Mapping[str, Tensor]]

_SPECS: Dict[str, MetricSpec] = {}


@dataclass(frozen=True)
class MetricSpec:
    """How one metric is reported and computed.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"average_drop"``.
    higher_is_better : bool or None
        The better direction; None for a descriptive quantity with no better direction (the mask
        area: larger is neither better nor worse, it is what the confidence metrics reward).
    unit : str
        ``"%"``, ``"AUC"``, ``"score change"``, ``"fraction"`` ...
    group : str
        Metrics with the same group come from one call of ``compute``.
    compute : callable
        ``compute(forward_func, inputs, maps, target, *, indices, **options) -> {name: Tensor (B,)}``.
    label : str
        Short column title (e.g. ``"AD"``).
    description : str
        One line: what the metric measures and rewards.
    decimals : int
        Decimals used in tables.
    companion : bool
        Reported automatically whenever another metric of its group is requested (the mask area
        next to Average Drop/Increase/Gain).
    default : bool
        Part of :func:`default_metric_names` (``evaluate``'s default selection).
    position : float
        Sort key of the report order (ties: registration order).
    """

    name: str
    higher_is_better: Optional[bool]
    unit: str
    group: str
    compute: ComputeFn
    label: str = ""
    description: str = ""
    decimals: int = 2
    companion: bool = False
    default: bool = False
    position: float = math.inf

    @property
    def direction(self) -> str:
        """``"higher"``, ``"lower"`` or ``"none"`` (is better)."""
        if self.higher_is_better is None:
            return "none"
        return "higher" if self.higher_is_better else "lower"

    def format(self, value: float) -> str:
        """``value`` with this metric's decimals (``nan`` for NaN)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "nan"
        return f"{value:.{self.decimals}f}"

    def heading(self) -> str:
        """Column heading, e.g. ``"average_drop (%, lower is better)"``."""
        better = "descriptive" if self.higher_is_better is None else f"{self.direction} is better"
        return f"{self.name} ({self.unit}, {better})"


def register_metric(
    name: str,
    *,
    higher_is_better: Optional[bool],
    unit: str,
    compute: ComputeFn,
    group: Optional[str] = None,
    label: str = "",
    description: str = "",
    decimals: int = 2,
    companion: bool = False,
    default: bool = False,
    position: Optional[float] = None,
) -> MetricSpec:
    """Register a metric; returns its :class:`MetricSpec`.

    Parameters
    ----------
    name : str
        Unique metric name (lower case, ``_`` separated).
    higher_is_better : bool or None
        Better direction (None: descriptive, no direction).
    unit : str
        Unit shown in tables.
    compute : callable
        See the module docstring. Metrics of one group must share the same function.
    group : str, optional
        Shared computation; defaults to ``name``.
    label, description, decimals, companion, default
        See :class:`MetricSpec`.
    position : float, optional
        Place in the report order (the package uses 10-19 for the confidence metrics, 20-29 for
        deletion / insertion, 30-39 for ROAD); default: after everything registered so far.

    Raises
    ------
    ValueError
        Name taken by another metric, or a group whose ``compute`` differs.
    TypeError
        Bad argument types.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"a metric name must be a non-empty str, got {name!r}")
    if higher_is_better is not None and not isinstance(higher_is_better, bool):
        raise TypeError(f"higher_is_better must be True, False or None, got {higher_is_better!r}")
    if not callable(compute):
        raise TypeError(f"compute must be callable, got {type(compute).__name__}")
    group = group or name
    for other in _SPECS.values():
        if other.group == group and other.compute is not compute and other.name != name:
            raise ValueError(
                f"metric group {group!r} is computed by {other.compute!r}; register {name!r} with the "
                "same compute function or another group"
            )
    old = _SPECS.get(name)
    if old is not None and (old.compute is not compute or old.group != group):
        raise ValueError(f"metric {name!r} is already registered; unregister_metric({name!r}) first")
    spec = MetricSpec(
        name=name,
        higher_is_better=higher_is_better,
        unit=unit,
        group=group,
        compute=compute,
        label=label or name,
        description=description,
        decimals=decimals,
        companion=companion,
        default=default,
        position=float(position) if position is not None else 1000.0 + len(_SPECS),
    )
    _SPECS[name] = spec
    ordered = sorted(_SPECS.items(), key=lambda kv: kv[1].position)  # stable: ties keep registration order
    _SPECS.clear()
    _SPECS.update(ordered)
    return spec


def unregister_metric(name: str) -> MetricSpec:
    """Remove a metric; returns its spec. Raises ``ValueError`` for an unknown name."""
    metric_spec(name)
    return _SPECS.pop(name)


def metric_specs() -> Dict[str, MetricSpec]:
    """``{name: MetricSpec}`` of every registered metric, in report order (a new dict)."""
    return dict(_SPECS)


def metric_spec(name: str) -> MetricSpec:
    """The spec of one metric; ``ValueError`` listing the known names when unknown."""
    if not isinstance(name, str):
        raise TypeError(f"a metric name must be a str, got {type(name).__name__}")
    if name not in _SPECS:
        raise ValueError(f"unknown metric {name!r}; choose from {', '.join(_SPECS)}")
    return _SPECS[name]


def default_metric_names() -> List[str]:
    """The metrics ``evaluate`` reports when none are named."""
    return [n for n, s in _SPECS.items() if s.default]


def resolve_metrics(names: Sequence[str]) -> List[MetricSpec]:
    """Specs for ``names`` plus their groups' companions, in report order, without duplicates.

    Raises
    ------
    ValueError
        An empty selection or unknown names (the message lists the known ones).
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    unknown = [m for m in names if m not in _SPECS]
    if unknown or not names:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(_SPECS)}")
    groups = {_SPECS[m].group for m in names}
    keep = set(names) | {n for n, s in _SPECS.items() if s.companion and s.group in groups}
    return [s for n, s in _SPECS.items() if n in keep]


def compute_group(specs: Sequence[MetricSpec], *args: Any, **options: Any) -> Dict[str, Tensor]:
    """Call the shared ``compute`` of ``specs`` (one group) and keep their metrics."""
    out = specs[0].compute(*args, **options)
    missing = [s.name for s in specs if s.name not in out]
    if missing:
        raise RuntimeError(f"the compute function of group {specs[0].group!r} did not return {missing}")
    return {s.name: out[s.name] for s in specs}
