"""Dataset-scale evaluation of CAM methods with the package's metrics, on one or many processes.

:func:`evaluate` walks a dataset in batches, computes every method's maps and, per example, the
confidence metrics (Average Drop / Increase / Gain, :mod:`captum_cam_ext.metrics.confidence`)
and optionally the RISE deletion / insertion AUCs (:mod:`captum_cam_ext.metrics.causal`).

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
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from captum_cam_ext._distributed import process_group

__all__ = [
    "METHOD_NAMES",
    "METRIC_NAMES",
    "EvaluationResult",
    "ExactDistributedSampler",
    "make_method",
    "evaluate",
    "results_markdown",
]

#: Metric names, in report order (higher/lower is better in :data:`METRIC_DIRECTION`).
METRIC_NAMES = ("average_drop", "average_increase", "average_gain", "deletion_auc", "insertion_auc")
METRIC_DIRECTION = {
    "average_drop": "lower",
    "average_increase": "higher",
    "average_gain": "higher",
    "deletion_auc": "lower",
    "insertion_auc": "higher",
}


def _method_table() -> Dict[str, Any]:
    from captum_cam_ext.attr import (
        LayerAblationCam,
        LayerCam,
        LayerEigenCam,
        LayerEigenGradCam,
        LayerGradCam,
        LayerGradCamPlusPlus,
        LayerHiResCam,
        LayerScoreCam,
        LayerXGradCam,
    )
    from captum_cam_ext.attr.conceptor_cam import LayerConceptorCam

    return {
        "gradcam": LayerGradCam,
        "gradcam++": LayerGradCamPlusPlus,
        "xgradcam": LayerXGradCam,
        "hirescam": LayerHiResCam,
        "layercam": LayerCam,
        "eigencam": LayerEigenCam,
        "eigengradcam": LayerEigenGradCam,
        "scorecam": LayerScoreCam,
        "ablationcam": LayerAblationCam,
        "conceptorcam": LayerConceptorCam,
    }


#: Method names accepted by :func:`make_method` (and the command line).
METHOD_NAMES: Tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "eigencam",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "conceptorcam",
)
_PERTURBATION = ("scorecam", "ablationcam")


def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "").replace("_", "").replace("plusplus", "++")
    key = key.replace("gradcampp", "gradcam++")
    return key


def make_method(name: str, model: Callable, layer: nn.Module, batch_size: int = 32) -> Any:
    """Build a CAM attribution object by name.

    Parameters
    ----------
    name : str
        One of :data:`METHOD_NAMES` (case, ``-`` and ``_`` are ignored: ``"Grad-CAM++"`` works).
    model : nn.Module or callable
        The model, output ``(N, classes)``.
    layer : nn.Module
        The target layer.
    batch_size : int
        Masked forward passes per chunk for Score-CAM / Ablation-CAM.

    Raises
    ------
    ValueError
        Unknown name (the message lists the known ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a str, got {type(name).__name__}")
    key = _canonical(name)
    table = _method_table()
    if key not in table:
        raise ValueError(f"unknown CAM method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    cls = table[key]
    if key in _PERTURBATION:
        return cls(model, layer, batch_size=batch_size)
    return cls(model, layer)


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
        Time spent computing maps, summed over ranks.
    """

    means: Dict[str, Dict[str, float]]
    sums: Dict[str, Dict[str, float]]
    counts: Dict[str, Dict[str, int]]
    per_example: Dict[str, Dict[str, Tensor]]
    n: int
    world_size: int = 1
    seconds: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict (per-example values as lists)."""
        return {
            "n": self.n,
            "world_size": self.world_size,
            "means": self.means,
            "sums": self.sums,
            "counts": self.counts,
            "seconds": self.seconds,
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
    methods: Union[Sequence[Union[str, Any]], Mapping[str, Any]],
    model: Callable, layer: Optional[nn.Module], batch_size: int,
) -> Dict[str, Any]:
    if isinstance(methods, str):
        methods = [methods]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    else:
        items = []
        for m in methods:
            if isinstance(m, str):
                items.append((m, m))
            else:
                items.append((type(m).__name__, m))
    if not items:
        raise ValueError("methods is empty; pass e.g. ['gradcam', 'scorecam']")
    out: Dict[str, Any] = {}
    for name, m in items:
        if isinstance(m, str):
            if layer is None:
                raise ValueError("layer is required when methods are given by name")
            m = make_method(m, model, layer, batch_size=batch_size)
        elif isinstance(m, type):
            if layer is None:
                raise ValueError("layer is required when methods are given as classes")
            m = m(model, layer)
        if not hasattr(m, "attribute"):
            raise TypeError(f"method {name!r} has no .attribute(); pass a name or a CAM object")
        if name in out:
            raise ValueError(f"method {name!r} is listed twice")
        out[name] = m
    return out


def evaluate(
    model: nn.Module,
    layer: Optional[nn.Module],
    methods: Union[Sequence[Union[str, Any]], Mapping[str, Any]],
    dataset: Dataset,
    batch_size: int = 16,
    target: str = "pred",
    metrics: Sequence[str] = ("average_drop", "average_increase", "average_gain"),
    causal_steps: int = 16,
    method_batch_size: int = 32,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
    confidence_kwargs: Optional[Dict[str, Any]] = None,
    causal_kwargs: Optional[Dict[str, Any]] = None,
) -> EvaluationResult:
    """CAM metrics of several methods over a dataset, per example, on one or many processes.

    Parameters
    ----------
    model : nn.Module
        Eval-mode classifier, ``(N, C, H, W) -> (N, classes)``. Its mode is not changed.
    layer : nn.Module or None
        Target layer (needed when ``methods`` holds names or classes).
    methods : sequence of names/classes/CAM objects, or dict name -> object
        E.g. ``["gradcam", "scorecam"]`` (see :data:`METHOD_NAMES`) or
        ``{"Grad-CAM": LayerGradCam(model, layer)}``.
    dataset : Dataset
        Items are an input ``(C, H, W)`` or ``(input, label, ...)``.
    batch_size : int
        Examples per batch (per process).
    target : {"pred", "label"}
        Explain the predicted class (default) or the dataset label.
    metrics : sequence of str
        Any of :data:`METRIC_NAMES`. The AUCs use ``causal_steps`` steps each.
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
        :func:`~captum_cam_ext.metrics.deletion_auc` / ``insertion_auc``.

    Returns
    -------
    EvaluationResult
        Means, sums, counts and per-example values (dataset order) per method and metric.

    Raises
    ------
    ValueError
        Unknown metric / target mode, empty dataset, ``target="label"`` without labels.
    """
    from captum_cam_ext.metrics import confidence_metrics, deletion_auc, insertion_auc

    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {METRIC_NAMES}")
    if target not in ("pred", "label"):
        raise ValueError(f"target must be 'pred' or 'label', got {target!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_total = len(dataset)  # type: ignore[arg-type]
    if n_total == 0:
        raise ValueError("the dataset is empty")
    cams = _resolve_methods(methods, model, layer, method_batch_size)

    p = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    with process_group(device, default_device=p.device if p is not None else None) as ctx:
        distributed, rank, world = ctx.distributed, ctx.rank, ctx.world_size
        device = ctx.device
        if isinstance(model, nn.Module):
            model.to(device)
        indexed = _Indexed(dataset)
        sampler = ExactDistributedSampler(indexed, num_replicas=world, rank=rank) if distributed else None
        loader = DataLoader(indexed, batch_size=batch_size, sampler=sampler, shuffle=False)
        conf_wanted = [m for m in metrics if m in ("average_drop", "average_increase", "average_gain")]
        local: Dict[str, Dict[str, List[Tensor]]] = {name: {m: [] for m in metrics} for name in cams}
        seconds = {name: 0.0 for name in cams}
        indices: List[Tensor] = []
        it: Any = loader
        if progress and rank == 0:
            from tqdm.auto import tqdm

            it = tqdm(loader, desc="evaluate", unit="batch")
        import time

        for idx, item in it:
            x, label = _split_item(item)
            x = x.to(device)
            if target == "label":
                if label is None:
                    raise ValueError("target='label' needs (input, label) dataset items")
                tgt = label.to(device).long()
            else:
                with torch.no_grad():
                    tgt = model(x).argmax(dim=1)
            indices.append(idx.cpu())
            for name, cam in cams.items():
                t0 = time.perf_counter()
                maps = cam.attribute(x, target=tgt, relu_attributions=True).detach()
                seconds[name] += time.perf_counter() - t0
                if conf_wanted:
                    res = confidence_metrics(model, x, maps, target=tgt, **(confidence_kwargs or {}))
                    for m in conf_wanted:
                        local[name][m].append(getattr(res, m.split("_", 1)[1]).detach().double().cpu())
                for m, fn in (("deletion_auc", deletion_auc), ("insertion_auc", insertion_auc)):
                    if m in metrics:
                        auc = fn(model, x, maps, target=tgt, n_steps=causal_steps, **(causal_kwargs or {}))
                        local[name][m].append(auc.detach().double().cpu())  # type: ignore[union-attr]

        idx_local = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
        values = {
            name: {m: (torch.cat(v) if v else torch.zeros(0, dtype=torch.float64)) for m, v in d.items()}
            for name, d in local.items()
        }
        # sums and counts: one all-reduce of a float64 vector
        names = list(cams)
        flat = []
        for name in names:
            for m in metrics:
                flat += [float(values[name][m].sum()), float(values[name][m].numel())]
        flat += [seconds[name] for name in names]
        vec = torch.tensor(flat, dtype=torch.float64)
        per_example: Dict[str, Dict[str, Tensor]]
        if distributed:
            import torch.distributed as dist

            dev = device if ctx.backend == "nccl" else torch.device("cpu")
            vec_d = vec.to(dev)
            dist.all_reduce(vec_d, op=dist.ReduceOp.SUM)
            vec = vec_d.cpu()
            gathered: List[Any] = [None] * world
            dist.all_gather_object(gathered, (idx_local, values))
            all_idx = torch.cat([g[0] for g in gathered])
            order = torch.argsort(all_idx)
            per_example = {
                name: {m: torch.cat([g[1][name][m] for g in gathered])[order] for m in metrics}
                for name in names
            }
        else:
            order = torch.argsort(idx_local)
            per_example = {name: {m: values[name][m][order] for m in metrics} for name in names}
        sums: Dict[str, Dict[str, float]] = {}
        counts: Dict[str, Dict[str, int]] = {}
        means: Dict[str, Dict[str, float]] = {}
        k = 0
        for name in names:
            sums[name], counts[name], means[name] = {}, {}, {}
            for m in metrics:
                s, c = float(vec[k]), int(round(float(vec[k + 1])))
                k += 2
                sums[name][m], counts[name][m] = s, c
                means[name][m] = s / c if c else math.nan
        secs = {name: float(vec[k + i]) for i, name in enumerate(names)}
        n = counts[names[0]][metrics[0]]
        if n != n_total:  # pragma: no cover - guarded by the sampler
            raise RuntimeError(f"evaluated {n} examples, the dataset has {n_total}")
        return EvaluationResult(means, sums, counts, per_example, n, world, secs)


def results_markdown(result: EvaluationResult, title: Optional[str] = None) -> str:
    """The means as a markdown table (one row per method, one column per metric)."""
    methods = list(result.means)
    metrics = list(next(iter(result.means.values())))
    head = [
        f"{m} ({'%' if m.startswith('average') else 'AUC'}, {METRIC_DIRECTION[m]} is better)"
        for m in metrics
    ]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += ["| method | " + " | ".join(head) + " | time (s) |"]
    lines += ["|---|" + "---:|" * len(metrics) + "---:|"]
    for name in methods:
        cells = [
            f"{result.means[name][m]:.2f}" if m.startswith("average") else f"{result.means[name][m]:.4f}"
            for m in metrics
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result.seconds.get(name, 0.0):.2f} |")
    lines += ["", f"{result.n} examples, {result.world_size} process(es)."]
    return "\n".join(lines)
