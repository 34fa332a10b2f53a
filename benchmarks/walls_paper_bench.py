"""The see-through-walls audit at the paper's geometry (issue 15), resumable.

Stages (each skips what is already cached under ``benchmarks/cache/``)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/walls_paper_bench.py --stage train
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/walls_paper_bench.py --stage audit

``train``: the paper's construction at our training resolution (``paper``: a dense-mask wall that
hides input rows 42..55 of a 56x28 stacked Fashion-MNIST pair, the paper's 54 of 224) and the same
network without a wall (``paper-nowall``), 3 seeds each, Adam, 3 epochs on the 60,000 stacked D1
training pairs; weights cached as ``benchmarks/cache/blind_paper*_e3_nall_s<seed>.pt`` with the
wall time.  ``audit``: per-image leakage of every CAM method on stacked test pairs, cached as
``benchmarks/cache/blind_paper_audit_*.pt``.  The report is written by ``benchmarks/walls_bench.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captum_cam_ext.walls.audit import train_blind_model  # noqa: E402

CACHE = ROOT / "benchmarks" / "cache"
SEEDS = (0, 1, 2)
KINDS = ("paper", "paper-nowall")
EPOCHS = 3


def train_all(progress: bool) -> None:
    for seed in SEEDS:
        for kind in KINDS:
            t0 = time.perf_counter()
            _, info = train_blind_model(kind, EPOCHS, None, seed=seed, cache_dir=CACHE,
                                        progress=progress)
            state = "cached" if info.get("cached") else "trained"
            print(f"{kind} seed {seed}: {state} ({info.get('train_seconds', 0):.0f} s training, "
                  f"{time.perf_counter() - t0:.0f} s now) -> {info.get('cache_path')}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stage", choices=("train", "audit", "all"), default="all")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.stage in ("train", "all"):
        train_all(args.progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
