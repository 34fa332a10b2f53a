"""Issue 9's speed check: the restructured package against the commit before it, same machine, one run.

The two versions cannot be imported in one process (same package name), so the script alternates
fresh subprocesses, ``old, new, old, new, ...``; each process times one no-grad forward and every
method interleaved round-robin and reports each method's median time divided by the median
forward of that same process. Dividing by the process' own forward cancels the machine's speed
drift between processes; alternating the versions spreads the rest over both. The clock is the CPU
time of the calling thread (``time.thread_time``): with one torch thread every kernel, autograd's
included, runs on it, so time other processes take from the shared cores is not counted.

Settings: torchvision resnet50 (random weights), batch 4, 224x224, layer ``layer4`` for the
gradient methods; Score-CAM and Ablation-CAM on resnet18 ``layer4`` (512 channels), batch 1,
112x112 (a full resnet50 Score-CAM takes many minutes here). One torch thread (state it; the
machine is shared).

Usage::

    python benchmarks/structure_speed.py [--old 6fa6be3] [--rounds 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "structure_speed.md"
GRADIENT = [
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerXGradCam",
    "LayerCam",
    "LayerHiResCam",
    "LayerEigenCam",
    "LayerEigenGradCam",
    "LayerGuidedGradCam",
]
PERTURBATION = ["LayerScoreCam", "LayerAblationCam"]

# Runs in the subprocess: the package root comes first on sys.path.
CHILD = r"""
import json, statistics, sys, time
sys.path.insert(0, sys.argv[1])
import torch, torchvision
torch.set_num_threads(1)
import captum_cam_ext as cce
assert cce.__file__.startswith(sys.argv[1]), cce.__file__
repeats = int(sys.argv[2])
gradient, perturbation = json.loads(sys.argv[3]), json.loads(sys.argv[4])

def timed(calls):
    times = {k: [] for k in calls}
    for name, fn in calls.items():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in calls.items():
            t0 = time.thread_time(); fn(); times[name].append(time.thread_time() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {k: med[k] / med["forward"] for k in med}, med

def setting(arch, batch, size, names, layer_name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    target = [int(t) for t in torch.randint(0, 1000, (batch,))]
    layer = getattr(model, layer_name)
    def forward():
        with torch.no_grad():
            return model(x)
    calls = {"forward": forward}
    for n in names:
        cam = getattr(cce, n)(model, layer)
        calls[n] = (lambda cam=cam: cam.attribute(x, target=target, relu_attributions=True))
    multi = cce.MultiCam(model, layer, methods=["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"]) \
        if names is gradient else None
    if multi is not None:
        calls["MultiCam (5 methods)"] = lambda: multi.attribute(x, target=target, relu_attributions=True)
    return timed(calls)

out = {}
out["gradient"] = setting("resnet50", 4, 224, gradient, "layer4")
out["perturbation"] = setting("resnet18", 1, 112, perturbation, "layer4")
print("RESULT " + json.dumps(out))
"""


def run_child(root: Path, repeats: int) -> Dict[str, Dict[str, List[Dict[str, float]]]]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(repeats), json.dumps(GRADIENT), json.dumps(PERTURBATION)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the benchmark process for {root} failed:\n{proc.stderr[-3000:]}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def checkout(commit: str, where: Path) -> Path:
    """The package of ``commit`` extracted with ``git archive`` (no worktree left behind)."""
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "captum_cam_ext"], capture_output=True,
                             check=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    return where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", default="6fa6be3", help="the commit before the restructuring (issue 9)")
    ap.add_argument("--rounds", type=int, default=2, help="old/new process pairs")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per method and process")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        old_root = checkout(args.old, Path(tmp) / "old")
        runs: Dict[str, list] = {"old": [], "new": []}
        for r in range(args.rounds):
            for version, root in (("old", old_root), ("new", ROOT)):
                t0 = time.perf_counter()
                runs[version].append(run_child(root, args.repeats))
                print(f"round {r} {version}: {time.perf_counter() - t0:.0f} s", flush=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    rows = []
    worst = 0.0
    for part in ("gradient", "perturbation"):
        names = [n for n in runs["new"][0][part][0] if n != "forward"]
        for name in names:
            olds = [run[part][0][name] for run in runs["old"]]
            news = [run[part][0][name] for run in runs["new"]]
            old, new = statistics.median(olds), statistics.median(news)
            worst = max(worst, new / old)
            # every (old process, new process) pair: the spread of after/before across processes
            pairs = [b / a for a in olds for b in news]
            rows.append((part, name, old, new, new / old, min(pairs), max(pairs)))
    load1 = os.getloadavg()
    lines = [
        "# Speed before and after the restructuring (issue 9)",
        "",
        f"`benchmarks/structure_speed.py`: commit `{args.old}` (before issue 9) vs `{head}`, alternating fresh "
        f"processes ({args.rounds} of each), {args.repeats} timed calls per method per process, methods interleaved "
        "round-robin, timed in the calling thread's CPU time (one torch thread); each time divided by the median "
        "no-grad forward of the same process; the cell is the median "
        "over the processes. Gradient methods: resnet50 (random weights), batch 4, 224x224, `layer4`; Score-CAM and "
        "Ablation-CAM: resnet18 `layer4` (512 channels), batch 1, 112x112. "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{load0[0]:.1f} at the start, {load1[0]:.1f} at the end), torch 1 thread, Python {platform.python_version()}. "
        f"Wall time {time.perf_counter() - t_start:.0f} s.",
        "",
        "| setting | method | before (x forward) | after (x forward) | after / before | range over process pairs |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [f"| {p} | {n} | {o:.3f} | {w:.3f} | {r:.3f} | {lo:.3f}–{hi:.3f} |" for p, n, o, w, r, lo, hi in rows]
    lines += [
        "",
        f"Worst after/before: {worst:.3f}. The last column is the min–max of after/before over every pair of an "
        "old and a new process (too few processes for a bootstrap interval): a ratio above 1 inside a range that "
        "contains 1 is noise of this shared machine; the goal of issue 9 is no method slower than before.",
        "",
    ]
    args.out.write_text("\n".join(lines))
    args.out.with_suffix(".json").write_text(json.dumps({"old": args.old, "new": head, "runs": runs}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
