"""The see-through-walls audit: train a blind model once, measure every CAM's leakage behind it.

:func:`run_audit` is what ``python -m captum_cam_ext.walls audit`` calls.  It trains (or loads from
the cache) a :class:`~captum_cam_ext.walls.SplitTrunkBlindNet` (or a
:class:`~captum_cam_ext.walls.DenseWallNet`) on stacked Fashion-MNIST (D1, "different"), then for
each CAM class of the core computes maps on ``n_test`` stacked test images of D1 and D2 ("same")
and the leakage metrics of :mod:`captum_cam_ext.metrics.leakage`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_cam_ext._maps import normalize_maps, upsample_maps
from captum_cam_ext.metrics.leakage import (
    unseen_any_positive,
    unseen_positive_mass,
    unseen_seen_mean_ratio,
    wall_ratio,
)
from captum_cam_ext.registry import methods as registered_methods
from captum_cam_ext.walls.cache import walls_cache_dir
from captum_cam_ext.walls.datasets import StackedPairs, stacked_fashion_mnist
from captum_cam_ext.walls.model_audit import SKIPPABLE, positive_maps, skip_reason
from captum_cam_ext.walls.models import DenseWallNet, SplitTrunkBlindNet, paper_wall_net

__all__ = ["DATASETS", "MODEL_KINDS", "default_methods", "train_blind_model", "audit_pairs",
           "run_audit", "audit_markdown", "plot_audit_maps"]

DATASETS = {"D1": "different", "D2": "same"}
#: Models :func:`train_blind_model` trains: ``split`` and ``dense`` hide the lower half of a
#: stacked pair (rows 28..55); ``paper`` is the paper's construction at the paper's geometry
#: (:func:`~captum_cam_ext.walls.models.paper_wall_net`, rows 42..55 hidden, i.e. 54 of 224) and
#: ``paper-nowall`` the same network without the wall (the control).
MODEL_KINDS = ("split", "dense", "paper", "paper-nowall")


def default_methods() -> List[type]:
    """Every CAM class in the method registry (:func:`captum_cam_ext.registry.methods`).

    Importing :mod:`captum_cam_ext.attr` registers the package's own classes; classes registered
    later with :func:`captum_cam_ext.registry.register_method` are audited too.
    """
    import captum_cam_ext.attr  # noqa: F401  (importing it registers every CAM class of the package)

    return list(registered_methods().values())


def _make_model(kind: str) -> nn.Module:
    if kind == "split":
        return SplitTrunkBlindNet()
    if kind == "dense":
        return DenseWallNet()
    if kind == "paper":
        return paper_wall_net()
    if kind == "paper-nowall":
        return paper_wall_net(wall=False)
    raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")


def _accuracy(model: nn.Module, pairs: StackedPairs, batch: int = 500) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(pairs), batch):
            out = model(pairs.images[i : i + batch])
            correct += int((out.argmax(1) == pairs.labels[i : i + batch]).sum())
    return correct / max(len(pairs), 1)


def train_blind_model(
    kind: str = "split",
    epochs: int = 3,
    n_train: Optional[int] = None,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
    use_cache: bool = True,
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Train a blind model on stacked Fashion-MNIST D1 (Adam), or load it from the cache.

    Parameters
    ----------
    kind : {"split", "dense", "paper", "paper-nowall"}
        :class:`SplitTrunkBlindNet` (default), :class:`DenseWallNet`, or the paper-geometry
        wall and its no-wall control (see :data:`MODEL_KINDS`).
    epochs : int
        Passes over the training pairs.
    n_train : int, optional
        Number of stacked training images (default: all 60,000).
    seed : int
        Seed of the pairing, the initialization and the batch order.
    batch_size, lr : int, float
        Optimizer settings.
    cache_dir : path, optional
        The state dict is cached as ``blind_<kind>_e<epochs>_n<n_train>_s<seed>.pt`` there.
        Default: the user cache directory of :func:`~captum_cam_ext.walls.cache.walls_cache_dir`
        (``$CAPTUM_CAM_EXT_CACHE_DIR/walls``, else ``$XDG_CACHE_HOME/captum-cam-ext/walls``,
        else ``~/.cache/captum-cam-ext/walls``), never the working directory.
    progress : bool
        Show a tqdm bar.
    use_cache : bool
        ``False``: neither read nor write a cached model.

    Returns
    -------
    (model, info)
        The model in eval mode and a dict with ``train_seconds``, ``epochs``, ``n_train``,
        ``cached`` (whether it was loaded) and ``cache_path`` (where it was read or written;
        absent with ``use_cache=False``).
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    model = _make_model(kind)
    tag = f"blind_{kind}_e{epochs}_n{n_train or 'all'}_s{seed}.pt"
    path = walls_cache_dir(cache_dir) / tag if use_cache else None
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
        info = dict(blob.get("info", {}))
        info["cached"] = True
        info["cache_path"] = str(path)
        return model.eval(), info
    torch.manual_seed(seed)
    model = _make_model(kind)
    pairs = stacked_fashion_mnist("train", "different", n=n_train, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = len(pairs)
    steps = epochs * math.ceil(n / batch_size)
    bar = _tqdm(total=steps, desc=f"train blind {kind}", disable=not progress)
    t0 = time.perf_counter()
    model.train()
    # the split model's logits depend on the top rows only: train on them (same logits, same
    # parameter gradients, half the cost); the dense model always sees the full image
    fwd = model.forward_visible if isinstance(model, SplitTrunkBlindNet) else model.forward
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            loss = F.cross_entropy(fwd(pairs.images[idx]), pairs.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    info = dict(kind=kind, epochs=epochs, n_train=n, seed=seed, batch_size=batch_size, lr=lr,
                train_seconds=time.perf_counter() - t0, cached=False,
                threads=torch.get_num_threads(), torch=str(torch.__version__))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "info": info}, path)
        info["cache_path"] = str(path)
    return model, info


def _tqdm(**kw: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(**kw)


def _unseen(model: nn.Module) -> Tuple[Optional[int], int]:
    """(first unseen feature row or None, first unseen input row)."""
    if isinstance(model, SplitTrunkBlindNet):
        return model.visible_feature_rows, model.split_row
    if not isinstance(model, DenseWallNet):
        raise TypeError(
            f"the audit needs a SplitTrunkBlindNet or a DenseWallNet, got {type(model).__name__}"
        )
    first = int(model.unseen_input_rows[0])
    return None, first


def _maps(method: type, model: nn.Module, images: Tensor, batch: int) -> Tuple[Tensor, Tensor]:
    """``(maps (N,1,h,w) after ReLU, predicted classes)``."""
    layer = model.features  # type: ignore[union-attr]
    cam = method(model, layer)
    outs, preds = [], []
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch]
        with torch.no_grad():
            pred = model(x).argmax(1)
        outs.append(positive_maps(cam, x, pred))
        preds.append(pred)
    return torch.cat(outs), torch.cat(preds)


def _summary(values: Tensor) -> Dict[str, float]:
    v = values.to(torch.float64)
    finite = v[torch.isfinite(v)]
    return {
        "mean": float(finite.mean()) if finite.numel() else float("nan"),
        "std": float(finite.std()) if finite.numel() > 1 else 0.0,
        "median": float(v.median()) if v.numel() else float("nan"),
        "n_inf": int((~torch.isfinite(v)).sum()),
    }


def audit_pairs(
    model: nn.Module,
    pairs: StackedPairs,
    methods: Optional[Sequence[type]] = None,
    batch: int = 100,
    progress: bool = True,
    keep_maps: int = 0,
    skip_inapplicable: Optional[bool] = None,
) -> Dict[str, Any]:
    """Leakage of each CAM method on one stacked dataset.

    Parameters
    ----------
    model : SplitTrunkBlindNet or DenseWallNet
        A model with ``.features`` (the CAM layer) and a known unseen region.
    pairs : StackedPairs
        The images (targets are the model's predicted classes, as in the paper).
    methods : sequence of CAM classes, optional
        Default :func:`default_methods`.
    keep_maps : int
        Keep the first ``keep_maps`` maps of every method (for figures).
    skip_inapplicable : bool, optional
        Skip, and list under ``skipped`` with its reason, a method that does not apply to the
        model (it raises a ``ValueError`` / ``TypeError`` / ``NotImplementedError`` /
        ``RuntimeError`` while built or run), instead of raising.  Default: True when
        ``methods`` is None (every registered method), else False.

    Returns
    -------
    dict
        ``accuracy`` and ``methods``: name -> {metric -> {mean, std, median, n_inf}, ``maps``}.
        Metrics: ``wall_ratio`` (paper: bilinear upsampling to the input, min-max normalized,
        band = unseen input rows), ``wall_ratio_nearest`` (same with nearest upsampling, no bleed
        across the wall), ``positive_mass``, ``any_positive``, ``mean_ratio`` (at the layer's
        resolution for the split model, where the unseen part is exact; on the upsampled map for
        the dense model).
    """
    skip = methods is None if skip_inapplicable is None else bool(skip_inapplicable)
    if methods is None:
        methods = default_methods()
    feat_row, in_row = _unseen(model)
    size = tuple(pairs.images.shape[-2:])
    was_training = model.training
    model.eval()
    results: Dict[str, Any] = {"accuracy": _accuracy(model, pairs), "n": len(pairs),
                               "methods": {}, "skipped": {}}
    bar = _tqdm(total=len(methods), desc=f"audit {pairs.mode}", disable=not progress)
    try:
        for meth in methods:
            t0 = time.perf_counter()
            try:
                maps, _ = _maps(meth, model, pairs.images, batch)
            except SKIPPABLE as exc:  # a registered method that does not apply to this model
                if not skip:
                    raise
                results["skipped"][meth.__name__] = skip_reason(exc)
                bar.update(1)
                continue
            if feat_row is not None:
                un: Union[int, Tensor] = feat_row
                lay = maps
            else:
                un = in_row
                lay = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            metrics = {
                "wall_ratio": wall_ratio(maps, in_row, input_size=size),  # type: ignore[arg-type]
                "wall_ratio_nearest": wall_ratio(maps, in_row, input_size=size,  # type: ignore
                                                 interpolate_mode="nearest"),
                "positive_mass": unseen_positive_mass(lay, un),
                "any_positive": unseen_any_positive(lay, un),
                "mean_ratio": unseen_seen_mean_ratio(lay, un),
            }
            entry: Dict[str, Any] = {k: _summary(v) for k, v in metrics.items()}
            entry["seconds"] = time.perf_counter() - t0
            if keep_maps:
                entry["maps"] = maps[:keep_maps]
            results["methods"][meth.__name__] = entry
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return results


def _fmt(s: Dict[str, float], std: bool = True, nd: int = 3) -> str:
    if math.isnan(s["mean"]):
        return "-"
    return f"{s['mean']:.{nd}f} ± {s['std']:.{nd}f}" if std else f"{s['mean']:.{nd}f}"


def audit_markdown(results: Dict[str, Dict[str, Any]]) -> str:
    """Markdown tables (one per dataset) of :func:`run_audit` results."""
    lines: List[str] = []
    for name, res in results.items():
        lines.append(f"**{name}** ({res.get('mode', '')}; {res['n']} images; blind model accuracy "
                     f"{100 * res['accuracy']:.1f}%)")
        lines.append("")
        lines.append("| method | wall ratio (paper, bilinear) | wall ratio (nearest) | positive "
                     "mass behind the wall | images with positive saliency behind the wall | "
                     "unseen/seen mean ratio (median) | s |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for meth, e in res["methods"].items():
            lines.append(
                f"| {meth} | {_fmt(e['wall_ratio'])} | {_fmt(e['wall_ratio_nearest'])} | "
                f"{_fmt(e['positive_mass'])} | {100 * e['any_positive']['mean']:.1f}% | "
                f"{e['mean_ratio']['median']:.3f} | {e['seconds']:.1f} |"
            )
        if res.get("skipped"):
            lines += ["", "Not applicable to this model (skipped): " + "; ".join(
                f"{k} ({v})" for k, v in res["skipped"].items()) + "."]
        lines.append("")
    return "\n".join(lines)


def plot_audit_maps(
    pairs: StackedPairs, maps: Dict[str, Tensor], wall_row: int, n_images: int = 4
) -> Any:
    """Figure: stacked images (first column) and every method's map over them, wall in red."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = list(maps)
    n_images = min(n_images, pairs.images.shape[0], *(m.shape[0] for m in maps.values()))
    size = tuple(pairs.images.shape[-2:])
    fig, axes = plt.subplots(n_images, len(names) + 1,
                             figsize=(1.3 * (len(names) + 1), 2.5 * n_images), squeeze=False)
    for r in range(n_images):
        img = pairs.images[r, 0].numpy()
        axes[r, 0].imshow(img, cmap="gray")
        axes[r, 0].set_title(f"label {int(pairs.labels[r])}/{int(pairs.bottom_labels[r])}",
                             fontsize=7)
        for c, name in enumerate(names, start=1):
            m = normalize_maps(upsample_maps(maps[name][r : r + 1].float(), size))[0, 0]  # type: ignore[arg-type]
            axes[r, c].imshow(img, cmap="gray")
            axes[r, c].imshow(m.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if r == 0:
                axes[r, c].set_title(name.replace("Layer", ""), fontsize=7)
        for ax in axes[r]:
            ax.axhline(wall_row - 0.5, color="red", lw=1)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("CAM maps of a model blind below the red line (top class of the top image)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def run_audit(
    epochs: int = 3,
    n_test: int = 1000,
    out: Union[str, Path, None] = "out/walls",
    kind: str = "split",
    n_train: Optional[int] = None,
    methods: Optional[Sequence[type]] = None,
    seed: int = 0,
    cache_dir: Union[str, Path, None] = None,
    progress: bool = True,
    batch: int = 100,
    verbose: bool = True,
    use_cache: bool = True,
) -> Dict[str, Any]:
    """Train (or load) the blind model, audit every CAM on D1 and D2, write table and figure.

    Parameters
    ----------
    epochs, n_train, seed, cache_dir, use_cache :
        See :func:`train_blind_model` (the default cache is the user cache directory).
    n_test : int
        Stacked test images per dataset.
    out : path or None
        Folder for ``leakage.md``, ``leakage.json`` and ``maps.png`` (None: write nothing).
    kind : {"split", "dense"}
        The wall.
    methods : sequence of CAM classes, optional
        Default :func:`default_methods`.
    progress, verbose : bool
        tqdm bars; print the table.

    Returns
    -------
    dict
        ``train`` (info), ``datasets`` (``D1``/``D2`` -> :func:`audit_pairs` output plus
        ``mode``), ``markdown``, ``files``.

    See Also
    --------
    captum_cam_ext.walls.audit_model : audit any model on any images (proves blindness first).
    """
    if not isinstance(n_test, int) or n_test < 1:
        raise ValueError(f"n_test must be a positive int, got {n_test!r}")
    model, info = train_blind_model(kind, epochs, n_train, seed, cache_dir=cache_dir,
                                    progress=progress, use_cache=use_cache)
    datasets: Dict[str, Any] = {}
    first_maps: Dict[str, Tensor] = {}
    fig_pairs: Optional[StackedPairs] = None
    for name, mode in DATASETS.items():
        pairs = stacked_fashion_mnist("test", mode, n=n_test, seed=seed + 1)
        res = audit_pairs(model, pairs, methods, batch=batch, progress=progress, keep_maps=4)
        res["mode"] = mode
        if mode == "same":
            fig_pairs = pairs
            first_maps = {k: v.pop("maps") for k, v in res["methods"].items()}
        else:
            for v in res["methods"].values():
                v.pop("maps", None)
        datasets[name] = res
    md = audit_markdown(datasets)
    files: List[str] = []
    if out is not None:
        outdir = Path(out)
        outdir.mkdir(parents=True, exist_ok=True)
        (outdir / "leakage.md").write_text(md + "\n")
        (outdir / "leakage.json").write_text(json.dumps({"train": info, "datasets": datasets},
                                                        indent=1, default=str))
        files += [str(outdir / "leakage.md"), str(outdir / "leakage.json")]
        if fig_pairs is not None and first_maps:
            wall = int(getattr(model, "split_row", getattr(model, "band_start", 0)))
            fig = plot_audit_maps(fig_pairs, first_maps, wall)
            fig.savefig(outdir / "maps.png", dpi=110)
            files.append(str(outdir / "maps.png"))
            import matplotlib.pyplot as plt

            plt.close(fig)
    if verbose:
        print(md)
    return {"train": info, "datasets": datasets, "markdown": md, "files": files,
            "maps": first_maps, "pairs": fig_pairs}
