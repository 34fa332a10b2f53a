"""``python -m captum_cam_ext.walls audit [--epochs 3] [--n-test 1000] [--out DIR]``."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m captum_cam_ext.walls",
        description="See-through-walls audit: leakage of every CAM behind a model's wall.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("audit", help="train the blind model once (cached) and audit every CAM")
    a.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    a.add_argument("--n-train", type=int, default=None, help="stacked training images (all)")
    a.add_argument("--n-test", type=int, default=1000, help="test images per dataset (1000)")
    a.add_argument("--out", default="out/walls", help="output folder (default out/walls)")
    a.add_argument("--model", choices=("split", "dense"), default="split",
                   help="split-trunk blind model (default) or the dense-mask wall")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--cache-dir", default="benchmarks/cache")
    a.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)

    import torch

    from captum_cam_ext.walls.audit import run_audit

    torch.set_num_threads(max(1, args.threads))
    try:
        res = run_audit(epochs=args.epochs, n_test=args.n_test, out=args.out, kind=args.model,
                        n_train=args.n_train, seed=args.seed, cache_dir=args.cache_dir,
                        progress=not args.no_progress)
    except FileNotFoundError as exc:  # Fashion-MNIST missing
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in res["files"]:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
