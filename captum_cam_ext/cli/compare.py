"""``captum-cam-ext compare A B``: two methods, or a method and a control, with paired statistics."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, List, Optional

from captum_cam_ext.cli._common import CliError
from captum_cam_ext.cli.evaluate import fashion_mnist_dataset, folder_dataset, metrics_help, resolve_metrics
from captum_cam_ext.cli.images import output_folder
from captum_cam_ext.cli.methods import select_methods
from captum_cam_ext.cli.models import load_model
from captum_cam_ext.cli.options import add_model_args, target_layer

__all__ = ["CONTROLS", "add_parser", "resolve_side", "run"]

#: control names accepted as B (see :func:`captum_cam_ext.evaluation.compare`)
CONTROLS = ("power", "blur", "constant", "random")


def resolve_side(spec: str, role: str, allow_control: bool) -> str:
    """A registered method name, or (for B) a control spec ``power``, ``power:<p>``, ``blur[:<px>]``, ..."""
    head = spec.split(":", 1)[0].strip().lower()
    if allow_control and head in CONTROLS:
        if ":" in spec and head in ("constant", "random"):
            raise CliError(f"{role} {spec!r}: {head} takes no parameter")
        if ":" in spec:
            try:
                float(spec.split(":", 1)[1])
            except ValueError:
                raise CliError(f"{role} {spec!r}: the parameter after ':' must be a number") from None
        return spec.strip().lower()
    try:
        names = select_methods([spec]).names
    except CliError as exc:
        if not allow_control:
            raise
        raise CliError(f"{exc}; or, for B, a control: {', '.join(CONTROLS)} (e.g. power, power:0.5, blur:4)") from None
    if len(names) != 1:
        raise CliError(f"{role} must be one method (or, for B, a control: {', '.join(CONTROLS)}), got {spec!r}")
    return names[0]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    v = sub.add_parser(
        "compare",
        help="two methods (or a method and a matched-area control) with paired 95%% intervals",
        description="Evaluate A and B on the same images and report each metric's mean difference A - B, its "
        "paired bootstrap 95%% interval and A's win rate. B may be a method or a control of --base (default: "
        "A): power (the power of the base map with A's mean mask area), power:P, blur, blur:PX, constant, "
        "random. Writes compare.md and compare.json.",
    )
    v.add_argument("a", metavar="A", help="the method under test (a registered name)")
    v.add_argument("b", metavar="B", help="another method, or a control: " + ", ".join(CONTROLS))
    v.add_argument("images", nargs="?", default=None, metavar="FOLDER")
    v.add_argument("--base", default=None, help="the method a control is built from (default: A)")
    v.add_argument("--dataset", choices=("folder", "fashion-mnist"), default="folder")
    v.add_argument("--split", choices=("train", "test"), default="test")
    v.add_argument("--fmnist-root", default=None, help="folder with the Fashion-MNIST .gz files")
    v.add_argument("--limit", type=int, default=None, help="first N examples only")
    add_model_args(v)
    v.add_argument("--metrics", action="append", default=None, help=metrics_help())
    v.add_argument("--causal", action="store_true", help="also deletion/insertion AUC")
    v.add_argument("--causal-steps", type=int, default=16)
    v.add_argument("--target", choices=("pred", "label"), default="pred")
    v.add_argument("--controls", action="store_true", help="also every control row of evaluate --controls")
    v.add_argument("--n-boot", type=int, default=10000, help="bootstrap resamples (default 10000)")
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--method-batch-size", type=int, default=32)
    v.add_argument("--out", default="out/compare")
    v.add_argument("--no-progress", action="store_true")
    return v


def run(args: argparse.Namespace) -> int:
    from captum_cam_ext.evaluation import compare, results_markdown

    a = resolve_side(args.a, "A", allow_control=False)
    b = resolve_side(args.b, "B", allow_control=True)
    base: Optional[str] = resolve_side(args.base, "--base", allow_control=False) if args.base else None
    metrics: List[str] = resolve_metrics(args.metrics, args.causal)
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be a positive integer, got {args.limit}")
    if args.n_boot < 100:
        raise CliError(f"--n-boot must be at least 100 for a 95% interval, got {args.n_boot}")
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
    res = compare(
        lm.model, tl.layer, a, b, dataset, base=base, metrics=metrics, batch_size=args.batch_size,
        target=args.target, causal_steps=args.causal_steps, method_batch_size=args.method_batch_size,
        controls=args.controls, n_boot=args.n_boot, progress=not args.no_progress, verbose=False,
    )  # fmt: skip
    if out is None:
        return 0
    md = results_markdown(res, title=f"{lm.name}, layer {tl.describe()}: {a} vs {b} on {title}")
    md += f"\n\nInput: {conversion}."
    (out / "compare.md").write_text(md + "\n")
    payload = res.to_dict()
    payload.pop("per_example", None)
    payload.update(model=lm.name, layer=tl.name, dataset=title, a=a, b=b, base=base or a, input=conversion)
    (out / "compare.json").write_text(json.dumps(payload, indent=1))
    print(md)
    print(f"wrote {out / 'compare.md'} and {out / 'compare.json'}")
    return 0
