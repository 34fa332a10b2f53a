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
from typing import List, Optional

from captum_cam_ext.walls.cache import CACHE_ENV, cache_dir_source, walls_cache_dir

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
    a = sub.add_parser("audit", help="train the blind model once (cached) and audit every CAM",
                       description="Train (or load from the user cache) a model blind to the "
                       "lower rows of stacked Fashion-MNIST pairs and measure how much saliency "
                       "every CAM method puts behind its wall.")
    a.add_argument("--epochs", type=_int_at_least(0), default=3, help="training epochs (default 3)")
    a.add_argument("--n-train", type=_int_at_least(1), default=None,
                   help="stacked training images (all)")
    a.add_argument("--n-test", type=_int_at_least(1), default=1000,
                   help="test images per dataset (1000)")
    a.add_argument("--out", default="out/walls", help="output folder (default out/walls)")
    a.add_argument("--model", choices=("split", "dense"), default="split",
                   help="split-trunk blind model (default) or the dense-mask wall")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--cache-dir", default=None, help=cache_help)
    a.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    a.add_argument("--threads", type=_int_at_least(1), default=1, help="torch threads (default 1)")
    a.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def run_cli(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the command; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments after the program name, starting with the subcommand (``["audit", ...]``).
    prog : str, optional
        Program name shown by ``--help`` and in errors (default :func:`default_prog`).

    Returns
    -------
    int
        0 on success, 2 for a user error (printed as one ``error: ...`` line).
    """
    args = build_parser(prog).parse_args(argv)

    import torch

    from captum_cam_ext.walls.audit import run_audit

    torch.set_num_threads(args.threads)
    cache = None if args.no_cache else walls_cache_dir(args.cache_dir)
    try:
        res = run_audit(epochs=args.epochs, n_test=args.n_test, out=args.out, kind=args.model,
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


def main(argv: Optional[List[str]] = None, prog: Optional[str] = None) -> int:
    """Alias of :func:`run_cli` (kept for ``captum_cam_ext.cli``, which imports ``main``)."""
    return run_cli(argv, prog)


if __name__ == "__main__":
    sys.exit(run_cli())
