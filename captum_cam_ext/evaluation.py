"""Dataset-scale evaluation of CAM methods with the package's metrics, on one or many processes.

:func:`evaluate` walks a dataset in batches, computes every method's maps and, per example, the
requested metrics. Methods come from the method registry (:func:`captum_cam_ext.registry.methods`:
any registered name or alias), metrics from the metric registry
(:func:`captum_cam_ext.metrics.registry.metric_specs`: Average Drop / Increase / Gain, the RISE
deletion / insertion AUCs, ...); metrics of one group are computed by one call per batch.

Scaling out. Started under ``torchrun`` (the environment variables ``RANK`` and ``WORLD_SIZE`` are
set), it joins the process group (``gloo`` on CPU, ``nccl`` on GPU; created when missing), splits
the dataset with a :class:`torch.utils.data.DistributedSampler` *without* the padding duplicates
that sampler normally adds (so every example is counted exactly once), and all-reduces the metric
sums and counts. Every rank returns the same result, equal to the single-process one up to float
rounding. Example::

    torchrun --nproc_per_node=4 my_eval.py      # my_eval.py calls evaluate(...)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import captum_cam_ext.attr  # noqa: F401  (importing it registers every CAM method)
from captum_cam_ext._distributed import DistributedContext, process_group
from captum_cam_ext.metrics.controls import CONTROL_KINDS, ControlSpec, DatasetControls
from captum_cam_ext.metrics.registry import (
    MetricSpec,
    compute_group,
    default_metric_names,
    metric_specs,
    resolve_metrics,
)
from captum_cam_ext.metrics.statistics import PairedComparison, compare_per_example, comparisons_markdown
from captum_cam_ext.registry import create_method

__all__ = [
    "EvaluationResult",
    "ExactDistributedSampler",
    "compare",
    "evaluate",
    "make_method",
    "results_markdown",
]


def __getattr__(name: str) -> Any:
    """Read-only views kept for old callers: ``METRIC_NAMES`` and ``METRIC_DIRECTION``.

    Both are views of :func:`captum_cam_ext.metrics.registry.metric_specs` (names in report
    order; ``"higher"``/``"lower"``/``"none"``). New code reads the registry.
    """
    if name == "METRIC_NAMES":
        return tuple(metric_specs())
    if name == "METRIC_DIRECTION":
        return {n: s.direction for n, s in metric_specs().items()}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_method(name: str, model: Callable, layer: nn.Module, batch_size: int = 32) -> Any:
    """Build a registered CAM method by name: :func:`captum_cam_ext.registry.create_method`.

    Parameters
    ----------
    name : str
        A registered name or alias (``captum_cam_ext.methods()``; case, ``-`` and ``_`` are
        ignored: ``"Grad-CAM++"`` works).
    model : nn.Module or callable
        The model, output ``(N, classes)``.
    layer : nn.Module
        The target layer.
    batch_size : int
        Masked forward passes per chunk for the methods that take one (Score-CAM, Ablation-CAM).

    Raises
    ------
    ValueError
        Unknown name (the message lists the registered ones).
    """
    return create_method(name, model, layer, batch_size=batch_size)


@dataclass
class EvaluationResult:
    """What :func:`evaluate` returns (identical on every rank).

    Attributes
    ----------
    means : dict method -> dict metric -> float
        Averages over the whole dataset (confidence metrics in %, AUCs in [0, 1]).
    sums, counts : dict method -> dict metric -> float / int
        The reduced sums and example counts behind ``means``.
    per_example : dict method -> dict metric -> Tensor (n,)
        Per-example values in dataset order (gathered from every rank).
    n : int
        Number of examples evaluated.
    world_size : int
        Number of processes that shared the work.
    seconds : dict method -> float
        Time spent computing maps (controls: building their masks), summed over ranks.
    controls : dict row -> str
        The control rows (``controls=True``) and what each one is.
    comparisons : list of PairedComparison
        Paired statistics (mean difference, 95% interval, win rate) of the compared rows, one per
        pair and metric.
    """

    means: Dict[str, Dict[str, float]]
    sums: Dict[str, Dict[str, float]]
    counts: Dict[str, Dict[str, int]]
    per_example: Dict[str, Dict[str, Tensor]]
    n: int
    world_size: int = 1
    seconds: Dict[str, float] = field(default_factory=dict)
    controls: Dict[str, str] = field(default_factory=dict)
    comparisons: List[PairedComparison] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict (per-example values as lists, comparisons as dicts)."""
        return {
            "n": self.n,
            "world_size": self.world_size,
            "means": self.means,
            "sums": self.sums,
            "counts": self.counts,
            "seconds": self.seconds,
            "controls": self.controls,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "per_example": {
                m: {k: v.tolist() for k, v in d.items()} for m, d in self.per_example.items()
            },
        }


class ExactDistributedSampler(DistributedSampler):
    """A :class:`DistributedSampler` that never repeats an example.

    ``DistributedSampler(drop_last=False)`` pads the index list with repeated indices so that every
    rank gets ``ceil(n / world_size)`` examples; metric totals would then count those twice. The
    padding sits at the end of the (possibly shuffled) list, so each rank's padded examples are its
    last ones: this sampler drops them. Rank ``r`` gets ``len(range(r, n, world_size))`` examples
    and the ranks together cover every example exactly once.
    """

    def __init__(self, dataset: Dataset, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, shuffle: bool = False, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=False)
        n = len(dataset)  # type: ignore[arg-type]
        self.exact_num_samples = len(range(self.rank, n, self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        it = super().__iter__()
        for _, idx in zip(range(self.exact_num_samples), it):
            yield idx

    def __len__(self) -> int:
        return self.exact_num_samples


class _Indexed(Dataset):
    """Wrap a dataset so that every item also carries its index."""

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Tuple[int, Any]:
        return i, self.base[i]


def _split_item(batch: Any) -> Tuple[Tensor, Optional[Tensor]]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (list, tuple)) and len(batch) >= 1 and isinstance(batch[0], Tensor):
        label = batch[1] if len(batch) > 1 and isinstance(batch[1], Tensor) else None
        return batch[0], label
    raise TypeError(
        "dataset items must be an input tensor (C, H, W) or a tuple (input, label, ...), "
        f"got {type(batch).__name__}"
    )


def _resolve_methods(
    methods: Union[str, Sequence[Union[str, Any]], Mapping[str, Any]],
    model: Callable,
    layer: Optional[nn.Module],
    batch_size: int,
) -> Dict[str, Any]:
    """``{row name: attribution object}`` from names (registry), classes or objects."""
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    else:
        items = [(m, m) if isinstance(m, str) else (type(m).__name__, m) for m in methods]
    if not items:
        raise ValueError("methods is empty; pass e.g. ['gradcam', 'scorecam']")
    out: Dict[str, Any] = {}
    for name, m in items:
        if isinstance(m, (str, type)):
            if layer is None:
                raise ValueError("layer is required when methods are given by name or class")
            m = create_method(m, model, layer, batch_size=batch_size) if isinstance(m, str) else m(model, layer)
        if not hasattr(m, "attribute"):
            raise TypeError(f"method {name!r} has no .attribute(); pass a name or a CAM object")
        if name in out:
            raise ValueError(f"method {name!r} is listed twice")
        out[name] = m
    return out


def _check_target_mode(target: str) -> str:
    if target not in ("pred", "label"):
        raise ValueError(f"target must be 'pred' or 'label', got {target!r}")
    return target


def _batch_target(model: Callable, x: Tensor, label: Optional[Tensor], target: str) -> Tensor:
    """The classes to explain: the dataset labels or the model's predictions."""
    if target == "label":
        if label is None:
            raise ValueError("target='label' needs (input, label) dataset items")
        return label.to(x.device).long()
    with torch.no_grad():
        return model(x).argmax(dim=1)


def _group_options(
    metric_options: Optional[Mapping[str, Mapping[str, Any]]],
    confidence_kwargs: Optional[Dict[str, Any]],
    causal_kwargs: Optional[Dict[str, Any]],
    causal_steps: int,
) -> Dict[str, Dict[str, Any]]:
    """Keyword arguments per metric group; the named shorthands fill in the groups they describe."""
    opts: Dict[str, Dict[str, Any]] = {
        "confidence": dict(confidence_kwargs or {}),
        "deletion": {"n_steps": causal_steps, **(causal_kwargs or {})},
        "insertion": {"n_steps": causal_steps, **(causal_kwargs or {})},
    }
    for group, kw in (metric_options or {}).items():
        opts[group] = {**opts.get(group, {}), **dict(kw)}
    return opts


def _groups(specs: Sequence[MetricSpec]) -> Dict[str, List[MetricSpec]]:
    out: Dict[str, List[MetricSpec]] = {}
    for s in specs:
        out.setdefault(s.group, []).append(s)
    return out


def _metric_values(
    groups: Mapping[str, Sequence[MetricSpec]],
    options: Mapping[str, Mapping[str, Any]],
    model: Callable,
    x: Tensor,
    maps: Tensor,
    tgt: Tensor,
    indices: Tensor,
) -> Dict[str, Tensor]:
    """Per-example values of every requested metric for one batch (one call per group), float64 CPU."""
    out: Dict[str, Tensor] = {}
    for group, specs in groups.items():
        vals = compute_group(specs, model, x, maps, tgt, indices=indices, **options.get(group, {}))
        out.update({k: v.detach().double().cpu().reshape(-1) for k, v in vals.items()})
    return out


@dataclass
class _LocalValues:
    """What one process computed: per row and metric, its examples' values (dataset indices in ``indices``)."""

    values: Dict[str, Dict[str, List[Tensor]]]
    seconds: Dict[str, float]
    indices: List[Tensor] = field(default_factory=list)

    def stacked(self) -> Tuple[Tensor, Dict[str, Dict[str, Tensor]]]:
        idx = torch.cat(self.indices) if self.indices else torch.zeros(0, dtype=torch.long)
        vals = {
            row: {m: torch.cat(v) if v else torch.zeros(0, dtype=torch.float64) for m, v in d.items()}
            for row, d in self.values.items()
        }
        return idx, vals


def _attribute_batches(
    loader: Any,
    model: Callable,
    cams: Mapping[str, Any],
    metric_names: Sequence[str],
    groups: Mapping[str, Sequence[MetricSpec]],
    options: Mapping[str, Mapping[str, Any]],
    target: str,
    device: torch.device,
    controls: Optional[DatasetControls] = None,
) -> Tuple[_LocalValues, List[Tuple[Tensor, Tensor]]]:
    """Walk this process's batches: each method's maps, then the metrics of each group.

    With ``controls``, every map is also observed, and the base's maps and the targets are kept
    (for the control pass). Returns the values and that list of ``(base maps, targets)``.
    """
    local = _LocalValues({row: {m: [] for m in metric_names} for row in cams}, {row: 0.0 for row in cams})
    kept: List[Tuple[Tensor, Tensor]] = []
    for idx, item in loader:
        x, label = _split_item(item)
        x = x.to(device)
        tgt = _batch_target(model, x, label, target)
        local.indices.append(idx.cpu())
        for row, cam in cams.items():
            t0 = time.perf_counter()
            maps = cam.attribute(x, target=tgt, relu_attributions=True).detach()
            local.seconds[row] += time.perf_counter() - t0
            for m, v in _metric_values(groups, options, model, x, maps, tgt, idx).items():
                local.values[row][m].append(v)
            if controls is not None:
                controls.observe(row, maps, x.shape[-2:], idx.tolist())
                if row == controls.base:
                    kept.append((maps.cpu(), tgt.cpu()))
    return local, kept


def _control_batches(
    loader: Any,
    model: Callable,
    controls: DatasetControls,
    specs: Sequence[ControlSpec],
    kept: Sequence[Tuple[Tensor, Tensor]],
    metric_names: Sequence[str],
    groups: Mapping[str, Sequence[MetricSpec]],
    options: Mapping[str, Mapping[str, Any]],
    device: torch.device,
) -> _LocalValues:
    """The control rows: the same batches again, scored with the control masks (used as they are)."""
    rows = [c.name for c in specs]
    local = _LocalValues({row: {m: [] for m in metric_names} for row in rows}, {row: 0.0 for row in rows})
    as_is = {g: {**o, "normalize": "none"} if g == "confidence" else dict(o) for g, o in options.items()}
    for (idx, item), (base_maps, tgt) in zip(loader, kept):
        x = _split_item(item)[0].to(device)
        tgt = tgt.to(device)
        local.indices.append(idx.cpu())
        for spec in specs:
            t0 = time.perf_counter()
            masks = controls.masks(spec, base_maps.to(device), x.shape[-2:], idx.tolist())
            local.seconds[spec.name] += time.perf_counter() - t0
            for m, v in _metric_values(groups, as_is, model, x, masks, tgt, idx).items():
                local.values[spec.name][m].append(v)
    return local


def _all_reduce_sum(vec: Tensor, ctx: DistributedContext) -> Tensor:
    """``vec`` summed over the processes (itself when not distributed)."""
    if not ctx.distributed:
        return vec
    import torch.distributed as dist

    dev = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    out = vec.to(dev)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.cpu()


def _reduce(
    local: _LocalValues, rows: Sequence[str], metric_names: Sequence[str], ctx: DistributedContext
) -> Tuple[Dict[str, Dict[str, float]], Dict[str, Dict[str, int]], Dict[str, Dict[str, Tensor]], Dict[str, float]]:
    """Sums and counts (one all-reduce of a float64 vector) and per-example values in dataset order."""
    idx_local, values = local.stacked()
    flat: List[float] = []
    for row in rows:
        for m in metric_names:
            flat += [float(values[row][m].sum()), float(values[row][m].numel())]
    flat += [local.seconds[row] for row in rows]
    vec = _all_reduce_sum(torch.tensor(flat, dtype=torch.float64), ctx)
    if ctx.distributed:
        import torch.distributed as dist

        gathered: List[Any] = [None] * ctx.world_size
        dist.all_gather_object(gathered, (idx_local, values))
        order = torch.argsort(torch.cat([g[0] for g in gathered]))
        per_example = {
            row: {m: torch.cat([g[1][row][m] for g in gathered])[order] for m in metric_names} for row in rows
        }
    else:
        order = torch.argsort(idx_local)
        per_example = {row: {m: values[row][m][order] for m in metric_names} for row in rows}
    sums: Dict[str, Dict[str, float]] = {}
    counts: Dict[str, Dict[str, int]] = {}
    k = 0
    for row in rows:
        sums[row], counts[row] = {}, {}
        for m in metric_names:
            sums[row][m], counts[row][m] = float(vec[k]), int(round(float(vec[k + 1])))
            k += 2
    seconds = {row: float(vec[k + i]) for i, row in enumerate(rows)}
    return sums, counts, per_example, seconds


def evaluate(
    model: nn.Module,
    layer: Optional[nn.Module],
    methods: Union[str, Sequence[Union[str, Any]], Mapping[str, Any]],
    dataset: Dataset,
    batch_size: int = 16,
    target: str = "pred",
    metrics: Optional[Sequence[str]] = None,
    causal_steps: int = 16,
    method_batch_size: int = 32,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    confidence_kwargs: Optional[Dict[str, Any]] = None,
    causal_kwargs: Optional[Dict[str, Any]] = None,
    metric_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    controls: bool = False,
    control_options: Optional[Mapping[str, Any]] = None,
    comparisons: Union[bool, Sequence[Tuple[str, str]]] = True,
    n_boot: int = 10000,
    confidence: float = 0.95,
) -> EvaluationResult:
    """CAM metrics of several methods over a dataset, per example, with controls and paired statistics.

    Parameters
    ----------
    model : nn.Module
        Eval-mode classifier, ``(N, C, H, W) -> (N, classes)``. Its mode is not changed.
    layer : nn.Module or None
        Target layer (needed when ``methods`` holds names or classes).
    methods : sequence of names/classes/CAM objects, or dict name -> object
        E.g. ``["gradcam", "scorecam"]`` (any name of ``captum_cam_ext.methods()``, or an alias)
        or ``{"Grad-CAM": LayerGradCam(model, layer)}``. Rows are named as given; the first one is
        the *base* that the others are compared with (and that the controls are built from).
    dataset : Dataset
        Items are an input ``(C, H, W)`` or ``(input, label, ...)``.
    batch_size : int
        Examples per batch (per process).
    target : {"pred", "label"}
        Explain the predicted class (default) or the dataset label.
    metrics : sequence of str, optional
        Names from :func:`captum_cam_ext.metrics.registry.metric_specs` (default: the
        registry's default selection, Average Drop / Increase / Gain, with the mask area that
        comes with them). Metrics computed together share one computation per batch.
    causal_steps : int
        Steps of the deletion / insertion curves.
    method_batch_size : int
        Masked forwards per chunk for methods built by name (Score-CAM, Ablation-CAM).
    device : str or device, optional
        Where to run (default: the model's device). Under torchrun with CUDA each rank uses
        ``cuda:LOCAL_RANK``. The model is moved there (``model.to(device)``) and stays there;
        its mode and parameters are otherwise unchanged.
    progress : bool
        tqdm bar (rank 0 only).
    confidence_kwargs, causal_kwargs : dict, optional
        Extra arguments for :func:`~captum_cam_ext.metrics.confidence_metrics` and
        :func:`~captum_cam_ext.metrics.deletion_auc` / ``insertion_auc`` (shorthands for
        ``metric_options["confidence"]``, ``["deletion"]`` and ``["insertion"]``).
    metric_options : dict group -> dict, optional
        Extra keyword arguments for each metric group's computation (the ``group`` of
        :class:`~captum_cam_ext.metrics.registry.MetricSpec`, e.g. ``{"road": {"noise": 0}}``).
    controls : bool
        Add matched-area control rows built from the base's maps (second pass over the data):
        for every other method, the power of the base with that method's mean mask area; a blur
        of the base; a constant map and a seeded random map at the base's area. See
        :class:`~captum_cam_ext.metrics.controls.DatasetControls`; control masks are scored as they
        are (``normalize="none"``).
    control_options : dict, optional
        Keyword arguments of :class:`~captum_cam_ext.metrics.controls.DatasetControls`
        (``base``, ``match``, ``powers``, ``blur_sigma``, ``constant``, ``random``, ``seed``).
        Default ``powers``: ``(0.5,)`` when the base is the only method.
    comparisons : bool or sequence of (row, row)
        ``True``: every method against the base; with controls also every method against the
        power of the base matched to its area, and the base against the other controls.
        ``False``: none. Or an explicit list of ``(a, b)`` row pairs.
    n_boot, confidence : int, float
        Paired bootstrap resamples and interval coverage of the comparisons.

    Returns
    -------
    EvaluationResult
        Means, sums, counts and per-example values (dataset order) per row and metric, the
        control descriptions and the comparisons.

    Raises
    ------
    ValueError
        Unknown metric / method / target mode / control option, empty dataset,
        ``target="label"`` without labels, a comparison of an unknown row.
    """
    specs = resolve_metrics(list(metrics) if metrics is not None else default_metric_names())
    metric_names = [s.name for s in specs]
    _check_target_mode(target)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_total = len(dataset)  # type: ignore[arg-type]
    if n_total == 0:
        raise ValueError("the dataset is empty; pass at least one example")
    cams = _resolve_methods(methods, model, layer, method_batch_size)
    options = _group_options(metric_options, confidence_kwargs, causal_kwargs, causal_steps)
    groups = _groups(specs)
    collector = _control_collector(list(cams), options, control_options) if controls else None

    p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    with process_group(device, default_device=p.device if p is not None else None) as ctx:
        if isinstance(model, nn.Module):
            model.to(ctx.device)
        loader = _loader(dataset, batch_size, ctx, progress)
        local, kept = _attribute_batches(
            loader, model, cams, metric_names, groups, options, target, ctx.device, collector
        )
        rows = list(cams)
        control_specs: List[ControlSpec] = []
        if collector is not None:
            collector.load_state(_all_reduce_sum(collector.state(), ctx))
            control_specs = collector.specs()
            extra = _control_batches(_loader(dataset, batch_size, ctx, False), model, collector, control_specs, kept,
                                     metric_names, groups, options, ctx.device)  # fmt: skip
            local.values.update(extra.values)
            local.seconds.update(extra.seconds)
            rows += [c.name for c in control_specs]
        sums, counts, per_example, seconds = _reduce(local, rows, metric_names, ctx)
    means = {row: {m: sums[row][m] / c if (c := counts[row][m]) else math.nan for m in metric_names} for row in rows}
    n = counts[rows[0]][metric_names[0]]
    if n != n_total:  # pragma: no cover - guarded by the sampler
        raise RuntimeError(f"evaluated {n} examples, the dataset has {n_total}")
    result = EvaluationResult(means, sums, counts, per_example, n, ctx.world_size, seconds,
                              controls={c.name: c.description for c in control_specs})  # fmt: skip
    pairs = _pairs(comparisons, list(cams), control_specs, collector, rows)
    result.comparisons = compare_per_example(per_example, pairs, metric_names, n_boot=n_boot, confidence=confidence)
    return result


def _control_collector(
    rows: Sequence[str], options: Mapping[str, Mapping[str, Any]], control_options: Optional[Mapping[str, Any]]
) -> DatasetControls:
    """The controls' configuration: the base row and the confidence metrics' mask settings."""
    kw = dict(control_options or {})
    allowed = {"base", "match", "powers", "blur_sigma", "constant", "random", "seed", "bins"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"unknown control options {unknown}; choose from {sorted(allowed)}")
    base = kw.pop("base", rows[0])
    if base not in rows:
        raise ValueError(f"the control base {base!r} is not a method row; rows: {', '.join(rows)}")
    match = kw.get("match")
    if match is not None and any(r not in rows for r in match):
        raise ValueError(f"control match rows {list(match)} must be method rows: {', '.join(rows)}")
    kw.setdefault("powers", (0.5,) if len(rows) == 1 else ())
    conf = options.get("confidence", {})
    return DatasetControls(
        base, normalize=conf.get("normalize", "after_upsample"),
        interpolate_mode=conf.get("interpolate_mode", "bilinear"), **kw,
    )  # fmt: skip


def _pairs(
    comparisons: Union[bool, Sequence[Tuple[str, str]]],
    methods: Sequence[str],
    control_specs: Sequence[ControlSpec],
    collector: Optional[DatasetControls],
    rows: Sequence[str],
) -> List[Tuple[str, str]]:
    """The ``(a, b)`` row pairs to compare (see ``evaluate``'s ``comparisons``)."""
    if comparisons is False or comparisons is None:
        return []
    if comparisons is not True:
        pairs = [tuple(p) for p in comparisons]  # type: ignore[union-attr]
        bad = [p for p in pairs if len(p) != 2 or p[0] not in rows or p[1] not in rows]
        if bad:
            raise ValueError(f"comparisons {bad} name unknown rows; rows: {', '.join(rows)}")
        return [(str(a), str(b)) for a, b in pairs]
    base = collector.base if collector is not None else methods[0]
    out = [(m, base) for m in methods if m != base]
    for spec in control_specs:
        matched = next((m for m in methods if spec.name.endswith(f"(area of {m})")), None)
        out.append((matched, spec.name) if matched is not None else (base, spec.name))
    return out


def compare(
    model: nn.Module,
    layer: Optional[nn.Module],
    a: Union[str, Any],
    b: Union[str, Any],
    dataset: Dataset,
    *,
    base: Optional[Union[str, Any]] = None,
    metrics: Optional[Sequence[str]] = None,
    batch_size: int = 16,
    target: str = "pred",
    causal_steps: int = 16,
    method_batch_size: int = 32,
    device: Union[str, torch.device, None] = None,
    metric_options: Optional[Mapping[str, Mapping[str, Any]]] = None,
    controls: bool = False,
    control_seed: int = 0,
    n_boot: int = 10000,
    confidence: float = 0.95,
    progress: bool = False,
    verbose: bool = True,
) -> EvaluationResult:
    """Compare two methods, or a method and a control, over a dataset: means and paired statistics.

    Parameters
    ----------
    model, layer, dataset
        As in :func:`evaluate`.
    a : str, class or CAM object
        The method under test.
    b : str, class or CAM object
        The other method, or a control of ``base``: ``"power"`` (the power of ``base`` whose mean
        mask area equals ``a``'s), ``"power:<p>"`` (a fixed power), ``"blur"`` / ``"blur:<sigma px>"``,
        ``"constant"`` or ``"random"`` (at ``base``'s mean area).
    base : str, class or CAM object, optional
        The method the control is built from (default: ``a`` itself, e.g. ``compare("gradcam",
        "power:0.5", ...)`` shows what area alone buys Grad-CAM). Needed for ``"power"``.
    metrics, batch_size, target, causal_steps, method_batch_size, device, metric_options, progress
        As in :func:`evaluate`.
    controls : bool
        Also add the full set of controls of :func:`evaluate` (and their comparisons).
    control_seed : int
        Seed of the random control.
    n_boot, confidence
        Paired bootstrap settings.
    verbose : bool
        Print :func:`results_markdown` of the result.

    Returns
    -------
    EvaluationResult
        Its ``comparisons`` start with ``a`` against ``b`` on every metric.

    Examples
    --------
    >>> res = compare(model, model.layer4, "conceptor", "power", ds, base="gradcam")  # doctest: +SKIP
    """
    kind, param = _control_kind(b)
    a_name = _row_name(a)
    if kind is None:
        if _row_name(b) == a_name:
            raise ValueError(f"a and b are both {a_name!r}; compare two different methods or a method and a control")
        methods = {a_name: a, _row_name(b): b}
        result = evaluate(model, layer, methods, dataset, batch_size, target, metrics, causal_steps, method_batch_size,
                          device, progress, metric_options=metric_options, controls=controls,
                          control_options={"seed": control_seed}, comparisons=False)  # fmt: skip
        b_row = _row_name(b)
    else:
        if kind == "power" and param is None and base is None:
            raise ValueError("b='power' matches a's mean area with a power of base=...; pass base (e.g. "
                             "'gradcam') or a fixed power such as b='power:0.5'")  # fmt: skip
        base_name = _row_name(base) if base is not None else a_name
        methods = {base_name: base if base is not None else a}
        if base_name != a_name:
            methods[a_name] = a
        opts: Dict[str, Any] = {"base": base_name, "seed": control_seed, "constant": kind == "constant",
                                "random": kind == "random", "blur_sigma": 0, "powers": (), "match": []}  # fmt: skip
        if kind == "power":
            opts.update(powers=(param,) if param is not None else (), match=[a_name] if param is None else [])
        if kind == "blur":
            opts["blur_sigma"] = param
        if controls:
            opts = {"base": base_name, "seed": control_seed}
        result = evaluate(model, layer, methods, dataset, batch_size, target, metrics, causal_steps, method_batch_size,
                          device, progress, metric_options=metric_options, controls=True, control_options=opts,
                          comparisons=False)  # fmt: skip
        b_row = _find_control(result, kind, param, a_name)
    pairs = [(a_name, b_row)]
    if controls:
        pairs += [p for p in _pairs(True, [r for r in result.means if r not in result.controls],
                                    _specs_of(result), None, list(result.means)) if p != (a_name, b_row)]  # fmt: skip
    result.comparisons = compare_per_example(result.per_example, pairs, list(next(iter(result.means.values()))),
                                             n_boot=n_boot, confidence=confidence)  # fmt: skip
    if verbose:
        print(results_markdown(result))
    return result


def _row_name(m: Any) -> str:
    if isinstance(m, str):
        return m
    if isinstance(m, type):
        return m.__name__
    return type(m).__name__


def _control_kind(b: Any) -> Tuple[Optional[str], Optional[float]]:
    """``("power", 0.5)`` for ``"power:0.5"``, ``(None, None)`` for a method."""
    if not isinstance(b, str):
        return None, None
    kind, _, arg = b.strip().lower().partition(":")
    if kind not in CONTROL_KINDS:
        return None, None
    if not arg:
        return kind, None
    if kind in ("constant", "random"):
        raise ValueError(f"control {b!r} takes no parameter; use {kind!r}")
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"control {b!r}: the parameter after ':' must be a number") from None
    if not value > 0:
        raise ValueError(f"control {b!r}: the parameter must be positive")
    return kind, value


def _specs_of(result: EvaluationResult) -> List[ControlSpec]:
    return [ControlSpec(name, "", 0.0, d) for name, d in result.controls.items()]


def _find_control(result: EvaluationResult, kind: str, param: Optional[float], a_name: str) -> str:
    """The control row of ``kind`` in ``result`` (the one matched to ``a`` for a plain "power")."""
    for name in result.controls:
        if kind == "power" and param is None and name.endswith(f"(area of {a_name})"):
            return name
        if kind == "power" and param is not None and name == name.split("**")[0] + f"**{param:g}":
            return name
        if kind == "blur" and name.startswith("blur("):
            return name
        if kind in ("constant", "random") and name.startswith(kind):
            return name
    raise RuntimeError(f"no {kind} control was built")  # pragma: no cover


def _loader(dataset: Dataset, batch_size: int, ctx: DistributedContext, progress: bool) -> Any:
    """Batches ``(dataset indices, items)`` of this process's share, in dataset order."""
    indexed = _Indexed(dataset)
    sampler = ExactDistributedSampler(indexed, num_replicas=ctx.world_size, rank=ctx.rank) if ctx.distributed else None
    loader: Any = DataLoader(indexed, batch_size=batch_size, sampler=sampler, shuffle=False)
    if progress and ctx.rank == 0:
        from tqdm.auto import tqdm

        loader = tqdm(loader, desc="evaluate", unit="batch")
    return loader


def results_markdown(result: EvaluationResult, title: Optional[str] = None) -> str:
    """Markdown report: the means (one row per method or control, one column per metric), the
    controls' descriptions, and the comparisons (mean difference, 95% interval, win rate)."""
    specs = metric_specs()
    rows = list(result.means)
    names = list(next(iter(result.means.values())))
    lines = [f"### {title}", ""] if title else []
    lines += ["| method | " + " | ".join(specs[m].heading() for m in names) + " | time (s) |"]
    lines += ["|---|" + "---:|" * len(names) + "---:|"]
    for row in rows:
        cells = [specs[m].format(result.means[row][m]) for m in names]
        label = f"control: {row}" if row in result.controls else row
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {result.seconds.get(row, 0.0):.2f} |")
    lines += ["", f"{result.n} examples, {result.world_size} process(es)."]
    if result.controls:
        lines += ["", "Controls (scored as masks, no renormalisation):"]
        lines += [f"- {name}: {d}" for name, d in result.controls.items()]
    if result.comparisons:
        lines += ["", comparisons_markdown(result.comparisons, title="Paired comparisons")]
    return "\n".join(lines)
