"""``captum-cam-ext bench``: quick timing of CAM methods against a no-grad forward pass."""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, List, Tuple

import torch

from captum_cam_ext.cli._common import CliError
from captum_cam_ext.cli.methods import build_methods, select_methods
from captum_cam_ext.cli.models import load_model
from captum_cam_ext.cli.options import add_method_arg, add_model_args, target_layer

__all__ = ["DEFAULT_METHODS", "add_parser", "run"]

DEFAULT_METHODS = ["gradcam", "gradcam++", "layercam", "scorecam"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="quick timing of CAM methods (or --script: benchmarks/cam_speed.py)")
    add_model_args(b, default_model="resnet18")
    add_method_arg(b, f" (default {','.join(DEFAULT_METHODS)})")
    b.add_argument("--batch", type=int, default=2)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--method-batch-size", type=int, default=64)
    b.add_argument("--script", action="store_true", help="run benchmarks/cam_speed.py instead")
    b.add_argument("--script-path", default="benchmarks/cam_speed.py")
    b.add_argument("--script-args", default="",
                   help="arguments for the script, one string (--script-args='--repeats 3')")
    return b


def median_seconds(fn: Any, repeats: int) -> float:
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return statistics.median(t)


def run(args: argparse.Namespace) -> int:
    if args.script:
        script = Path(args.script_path)
        if not script.is_file():
            raise CliError(f"benchmark script not found: {script} (run from the repository root)")
        return subprocess.call([sys.executable, str(script), *shlex.split(args.script_args)])
    if args.repeats < 1 or args.batch < 1:
        raise CliError("--repeats and --batch must be positive integers")
    selection = select_methods(args.method or DEFAULT_METHODS)
    lm = load_model(args.model, args.weights, args.size, args.preprocessing, quiet=True)
    tl = target_layer(lm, args.layer, args.reshape)
    c, s = lm.preprocessing.channels, lm.preprocessing.size
    torch.manual_seed(0)
    x = torch.randn(args.batch, c, s, s)

    def forward() -> None:
        with torch.no_grad():
            lm.model(x)

    forward()  # warm-up
    rows: List[Tuple[str, float]] = [("forward (no grad)", median_seconds(forward, args.repeats))]
    cams = build_methods(selection, lm.model, tl.layer, args.method_batch_size, tl.reshape_transform,
                         layout_required=args.reshape != "auto")
    for m, cam in cams.items():
        rows.append((m, median_seconds(lambda cam=cam: cam.attribute(x, target=0), args.repeats)))
    print(f"{lm.name}, layer {tl.describe()}, batch {args.batch}x{c}x{s}x{s}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print("| method | seconds | x forward |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.4f} | {sec / rows[0][1]:.1f} |")
    return 0
