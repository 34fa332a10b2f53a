"""``captum-cam-ext evaluate``: CAM metrics over an image folder or Fashion-MNIST."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset

from captum_cam_ext.cli._common import CliError
from captum_cam_ext.cli.images import ConvertedImages, ImageFolder, output_folder
from captum_cam_ext.cli.methods import build_methods, select_methods, trial_run
from captum_cam_ext.cli.models import LoadedModel, load_model
from captum_cam_ext.cli.options import add_method_arg, add_model_args, target_layer
from captum_cam_ext.metrics.registry import default_metric_names, metric_specs

__all__ = ["CAUSAL_METRICS", "add_parser", "metric_names", "metrics_help", "resolve_metrics", "run"]

DEFAULT_METHODS = ["gradcam"]
#: what ``--causal`` adds
CAUSAL_METRICS = ("deletion_auc", "insertion_auc")


def metric_names() -> List[str]:
    """Every registered metric (:func:`captum_cam_ext.metrics.registry.metric_specs`), in report order."""
    return list(metric_specs())


def metrics_help() -> str:
    """The ``--metrics`` help: each registered metric with its better direction."""
    items = [f"{n} ({s.direction} is better)" if s.higher_is_better is not None else n
             for n, s in metric_specs().items()]
    return (f"metric(s), comma-separated or repeated: {', '.join(items)} "
            f"(default {','.join(default_metric_names())})")


def resolve_metrics(spec: Optional[Sequence[str]], causal: bool) -> List[str]:
    """``--metrics`` values (comma-separated or repeated) plus the AUCs with ``--causal``.

    Raises
    ------
    CliError
        An unknown metric name.
    """
    known = metric_names()
    wanted: List[str] = []
    for item in spec or default_metric_names():
        wanted += [p.strip().lower().replace("-", "_") for p in item.split(",") if p.strip()]
    if causal:
        wanted += list(CAUSAL_METRICS)
    unknown = [m for m in wanted if m not in known]
    if unknown:
        raise CliError(f"unknown metric {unknown[0]!r}; choose from {', '.join(known)}")
    return [m for m in known if m in wanted]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    v = sub.add_parser("evaluate", help="CAM metrics over an image folder or Fashion-MNIST",
                       description="Average Drop / Increase / Gain (and with --causal the deletion and "
                                   "insertion AUCs) of every method; writes results.md and results.json.")
    v.add_argument("images", nargs="?", default=None, metavar="FOLDER")
    v.add_argument("--dataset", choices=("folder", "fashion-mnist"), default="folder",
                   help="an image folder (default) or Fashion-MNIST (28x28 grayscale, converted to the "
                        "model's input: channels replicated, resized, normalised; the output says how)")
    v.add_argument("--split", choices=("train", "test"), default="test")
    v.add_argument("--fmnist-root", default=None, help="folder with the Fashion-MNIST .gz files")
    v.add_argument("--limit", type=int, default=None, help="first N examples only")
    add_model_args(v)
    add_method_arg(v, " (default gradcam)")
    v.add_argument("--metrics", action="append", default=None, help=metrics_help())
    v.add_argument("--target", choices=("pred", "label"), default="pred")
    v.add_argument("--causal", action="store_true", help="also deletion/insertion AUC")
    v.add_argument("--causal-steps", type=int, default=16)
    v.add_argument("--controls", action="store_true",
                   help="add matched-area control rows (powers of the first method's map matched to each "
                        "method's mask area, blur, constant, random) and their paired comparisons")
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--method-batch-size", type=int, default=32)
    v.add_argument("--per-example", action="store_true", help="keep per-example values in the JSON")
    v.add_argument("--out", default="out/evaluate")
    v.add_argument("--no-progress", action="store_true")
    return v


def fashion_mnist_dataset(args: argparse.Namespace, lm: LoadedModel) -> Tuple[Dataset, str, str]:
    """Fashion-MNIST converted to the model's input: ``(dataset, title, conversion text)``."""
    from captum_cam_ext.data import fashion_mnist_available, load_fashion_mnist

    if not fashion_mnist_available(args.fmnist_root):
        raise CliError("Fashion-MNIST files not found (install dataset-fashion-mnist or pass --fmnist-root DIR)")
    images, labels = load_fashion_mnist(args.split, args.fmnist_root)
    images, labels = images[: args.limit], labels[: args.limit]
    prep = lm.preprocessing.with_crop(False)  # the whole 28x28 item, no centre crop
    h, w = images.shape[1:]
    dataset = ConvertedImages(images, labels, prep)
    return dataset, f"Fashion-MNIST {args.split} ({len(dataset)} images)", \
        prep.describe_conversion("Fashion-MNIST", int(h), int(w), 1)


def folder_dataset(args: argparse.Namespace, lm: LoadedModel) -> Tuple[Dataset, str, str]:
    """The readable images of ``args.images``: ``(dataset, title, conversion text)``."""
    if args.images is None:
        raise CliError("pass an image folder (evaluate FOLDER) or --dataset fashion-mnist")
    folder = Path(args.images)
    if not folder.exists():
        raise CliError(f"no such file or folder: {folder}")
    if args.target == "label":
        raise CliError("--target label needs --dataset fashion-mnist (folders have no labels)")
    dataset = ImageFolder(folder, lm.preprocess, limit=args.limit)
    return dataset, f"{folder} ({len(dataset)} images)", f"images -> model input {lm.preprocessing.describe()}"


def first_example(dataset: Dataset, target: str) -> Tuple[Tensor, Any]:
    """The first item as a batch of one and its label (``None`` unless ``target`` is ``"label"``)."""
    item = dataset[0]
    if isinstance(item, (tuple, list)):
        x, label = item[0], item[1]
        return x[None], (int(label) if target == "label" else None)
    return item[None], None


def run(args: argparse.Namespace) -> int:
    from captum_cam_ext.evaluation import evaluate, results_markdown

    selection = select_methods(args.method or DEFAULT_METHODS)
    metrics = resolve_metrics(args.metrics, args.causal)
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a positive integer, got {args.limit}")
    rank0 = int(os.environ.get("RANK", "0")) == 0
    out = output_folder(args.out) if rank0 else None
    if args.dataset == "fashion-mnist" and args.images is not None:
        raise CliError(f"--dataset fashion-mnist takes no FOLDER (got {args.images}); drop one of them")
    lm = load_model(args.model, args.weights, args.size, args.preprocessing)
    make = fashion_mnist_dataset if args.dataset == "fashion-mnist" else folder_dataset
    dataset, title, conversion = make(args, lm)
    tl = target_layer(lm, args.layer, args.reshape)
    if rank0:
        print(f"input: {conversion}", flush=True)
    cams = build_methods(selection, lm.model, tl.layer, args.method_batch_size, tl.reshape_transform,
                         layout_required=args.reshape != "auto")
    x0, t0 = first_example(dataset, args.target)
    if t0 is None:
        with torch.no_grad():
            t0 = int(lm.model(x0).argmax(1)[0])
    # tried the way evaluation.evaluate calls them
    cams = trial_run(cams, selection, x0, t0, tl.name, layout=tl.reshape is not None,
                     options={"relu_attributions": True})
    res = evaluate(lm.model, tl.layer, cams, dataset, batch_size=args.batch_size,
                   target=args.target, metrics=metrics, causal_steps=args.causal_steps,
                   progress=not args.no_progress, controls=args.controls)
    if out is None:
        return 0
    md = results_markdown(res, title=f"{lm.name}, layer {tl.describe()}: {title}")
    md += f"\n\nInput: {conversion}."
    (out / "results.md").write_text(md + "\n")
    payload = res.to_dict()
    payload.update(model=lm.name, layer=tl.name, reshape=tl.reshape, dataset=title, target=args.target,
                   input=conversion)
    if not args.per_example:
        payload.pop("per_example")
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    print(md)
    print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0
