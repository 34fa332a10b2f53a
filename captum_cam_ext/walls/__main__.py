"""``python -m captum_cam_ext.walls audit ...`` (also ``captum-cam-ext walls audit ...``).

:func:`run_cli` is the entry point; the package's command line forwards everything after
``walls`` to it with ``prog="captum-cam-ext walls"``, so that ``--help`` and error messages name
the command the user typed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

from captum_cam_ext.walls.cache import CACHE_ENV, cache_dir_source, walls_cache_dir

#: ``--model`` values without IMAGES (see :data:`captum_cam_ext.walls.audit.MODEL_KINDS`).
TRAINED_MODELS = ("split", "dense", "paper", "paper-nowall")
#: The bundled pretrained model made blind to the bottom rows (:func:`blind_efficientnet_lite0`).
BLIND_EFFICIENTNET = "efficientnet_lite0_blind"

__all__ = ["build_parser", "default_prog", "main", "run_cli"]


def default_prog() -> str:
    """The program name as the user invoked it (``sys.argv[0]``).

    ``python -m captum_cam_ext.walls`` and ``python -m captum_cam_ext walls`` are recognised;
    a console script (``captum-cam-ext``) gives ``"<script> walls"``.
    """
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "captum-cam-ext"
    path = Path(argv0)
    if path.name == "__main__.py":
        if path.parent.name == "walls":
            return "python -m captum_cam_ext.walls"
        return f"python -m {path.parent.name} walls"
    return f"{path.name} walls"


def _int_at_least(low: int):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def build_parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    """The ``walls`` argument parser; ``prog`` defaults to :func:`default_prog`."""
    prog = default_prog() if prog is None else prog
    parser = argparse.ArgumentParser(
        prog=prog,
        description="See-through-walls audit: leakage of every CAM behind a model's wall.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="audit")
    cache_help = (
        f"where trained blind models are cached (default: ${CACHE_ENV}/walls, else "
        "$XDG_CACHE_HOME/captum-cam-ext/walls, else ~/.cache/captum-cam-ext/walls; "
        f"now {walls_cache_dir()})"
    )
    a = sub.add_parser(
        "audit", help="audit every CAM behind a model's wall",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Two modes.\n\n"
            "Without IMAGES: train (or load from the user cache) a model blind to the lower rows\n"
            "of stacked Fashion-MNIST pairs (--model split, dense, or the paper's geometry: paper,\n"
            "paper-nowall) and measure every CAM's saliency behind its wall.\n\n"
            "With IMAGES (an image or a folder): prove that --model cannot see --hidden-rows\n"
            "(bit-identical outputs under random changes there, zero input gradient; a model that\n"
            "can see them is refused with the measured output change), then report every CAM's\n"
            "leakage there: the paper's ||S[band]||/||S|| and ours. Rows are rows of the model\n"
            "input (after resizing and cropping). Example:\n"
            f"  {prog} audit --model efficientnet_lite0_blind --hidden-rows 170:224 images/"),
    )
    a.add_argument("images", nargs="?", default=None, metavar="IMAGES",
                   help="an image or a folder of images: audit --model on them")
    a.add_argument("--model", default=None,
                   help=f"without IMAGES: one of {', '.join(TRAINED_MODELS)} (default split); "
                   f"with IMAGES: {BLIND_EFFICIENTNET} (default; the bundled EfficientNet-Lite0 "
                   "made blind to rows 160..223), efficientnet_lite0, a torchvision name or a "
                   "model file (through captum-cam-ext)")
    a.add_argument("--hidden-rows", default=None, metavar="START:STOP",
                   help=f"input rows the model cannot see, e.g. 170:224, or --hidden-rows=-54: "
                   f"for the bottom 54 rows (default for {BLIND_EFFICIENTNET}: 170:224, the "
                   "paper's bottom 54 of 224 rows)")
    a.add_argument("--layer", default=None, help="CAM layer (dotted module name)")
    a.add_argument("--method", action="append", default=None,
                   help="a CAM method (repeatable or comma-separated; default: every one)")
    a.add_argument("--weights", default=None, help="state_dict for a torchvision --model")
    a.add_argument("--size", type=_int_at_least(1), default=None, help="model input size")
    a.add_argument("--limit", type=_int_at_least(1), default=None, help="first N images only")
    a.add_argument("--batch-size", type=_int_at_least(1), default=8,
                   help="images per attribute call (default 8)")
    a.add_argument("--method-batch-size", type=_int_at_least(1), default=64,
                   help="masked forwards per chunk for Score-CAM / Ablation-CAM (default 64)")
    a.add_argument("--epochs", type=_int_at_least(0), default=3, help="training epochs (default 3)")
    a.add_argument("--n-train", type=_int_at_least(1), default=None,
                   help="stacked training images (all)")
    a.add_argument("--n-test", type=_int_at_least(1), default=1000,
                   help="test images per dataset (1000)")
    a.add_argument("--out", default="out/walls", help="output folder (default out/walls)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--cache-dir", default=None, help=cache_help)
    a.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    a.add_argument("--threads", type=_int_at_least(1), default=None,
                   help="torch threads (default: unchanged)")
    a.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def run_cli(
    argv: Optional[List[str]] = None,
    prog: Optional[str] = None,
    model_loader: Optional[Callable[[str, Optional[str], Optional[int]], Any]] = None,
) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name, starting with the subcommand (``["audit", ...]``).
    prog : str, optional
        Program name shown by ``--help`` and in errors (default :func:`default_prog`).
    model_loader : callable, optional
        ``model_loader(name, weights, size)`` returning an object with ``.model`` (eval-mode
        ``nn.Module``), ``.preprocess(image)`` (uint8 ``(H, W, 3)`` -> ``(1, C, S, S)``) and
        ``.default_layer`` (dotted name or None): how the package command line lends its model
        loading (torchvision names, model files).  Without it, only the bundled EfficientNet-Lite0
        models are known.

    Returns
    -------
    int
        0 on success, 2 for a user error (a bad argument: argparse's usage and error lines; any
        other: one ``error: ...`` line), including a model that can see the hidden rows.
        ``--help`` exits with ``SystemExit(0)`` as usual.
    """
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage and the error (or the help: code 0)
        if exc.code in (0, None):
            raise
        return 2

    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.images is not None:
        try:
            return _audit_images(args, model_loader)
        except (ValueError, TypeError, OSError) as exc:  # user errors, incl. NotBlindError
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return _audit_trained(args)


def _audit_trained(args: argparse.Namespace) -> int:
    from captum_cam_ext.walls.audit import run_audit

    kind = "split" if args.model is None else args.model
    if kind not in TRAINED_MODELS:
        print(f"error: without IMAGES --model must be one of {', '.join(TRAINED_MODELS)}, got "
              f"{kind!r} (to audit {kind!r}, give an image folder)", file=sys.stderr)
        return 2
    cache = None if args.no_cache else walls_cache_dir(args.cache_dir)
    try:
        res = run_audit(epochs=args.epochs, n_test=args.n_test, out=args.out, kind=kind,
                        n_train=args.n_train, seed=args.seed, cache_dir=cache,
                        progress=not args.no_progress, use_cache=not args.no_cache)
    except OSError as exc:  # Fashion-MNIST missing, an unwritable cache or output folder
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = res["train"]
    if cache is None:
        print("model: trained, not cached (--no-cache)")
    elif info.get("cached"):
        print(f"model: loaded from the cache {info['cache_path']} "
              f"({cache_dir_source(args.cache_dir)})")
    else:
        print(f"model: trained in {info['train_seconds']:.0f} s, cached as {info['cache_path']} "
              f"({cache_dir_source(args.cache_dir)}; delete it to retrain)")
    for f in res["files"]:
        print(f"wrote {os.fspath(f)}")
    return 0


def _load(args: argparse.Namespace, model_loader: Optional[Callable[..., Any]]) -> Any:
    from captum_cam_ext.walls.cli_models import load_audit_model

    return load_audit_model(args.model or BLIND_EFFICIENTNET, args.weights, args.size, model_loader)


def _audit_images(args: argparse.Namespace, model_loader: Optional[Callable[..., Any]]) -> int:
    import json

    from captum_cam_ext.walls.cli_models import read_images, resolve_layer
    from captum_cam_ext.walls.model_audit import audit_model

    loaded = _load(args, model_loader)
    hidden = args.hidden_rows or loaded.hidden_rows
    if hidden is None:
        raise ValueError(f"--hidden-rows is required for --model {loaded.name} (e.g. 170:224)")
    images, names = read_images(Path(args.images), loaded.preprocess, args.limit)
    layer_name = args.layer or loaded.default_layer
    layer = resolve_layer(loaded.model, layer_name)
    methods = _methods(args.method)
    print(f"model: {loaded.name}; layer: {layer_name}; {len(names)} images of "
          f"{tuple(images.shape[1:])}; hidden rows {hidden}", flush=True)
    audit = audit_model(loaded.model, layer, images, hidden, methods=methods,
                        batch=args.batch_size, method_batch_size=args.method_batch_size,
                        progress=not args.no_progress, seed=args.seed)
    md = audit.markdown()
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "leakage.md").write_text(md + "\n")
    record = {"model": loaded.name, "layer": layer_name, "hidden_rows": hidden, "images": names,
              "blindness": vars(audit.blindness) if audit.blindness else None,
              "summary": audit.summary(), "targets": audit.targets.tolist(),
              "per_image": {m: {k: v.tolist() for k, v in d.items()}
                            for m, d in audit.per_image.items()}}
    (out / "leakage.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {out / 'leakage.md'}\nwrote {out / 'leakage.json'}")
    return 0


def _methods(specs: Optional[List[str]]) -> Optional[List[type]]:
    if not specs:
        return None
    import captum_cam_ext.attr  # noqa: F401  (importing it registers every CAM class)
    from captum_cam_ext.registry import method_class

    names = [n.strip() for spec in specs for n in spec.split(",") if n.strip()]
    if any(n.lower() == "all" for n in names):
        return None
    return [method_class(n) for n in names]


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    """Alias of :func:`run_cli` (kept for ``captum_cam_ext.cli``, which imports ``main``)."""
    return run_cli(argv, prog)


if __name__ == "__main__":
    sys.exit(run_cli())
