"""Speed and peak memory of the CAM family next to one no-grad forward, Captum and pytorch-grad-cam.

Setting of issue 2: CPU, 2 threads, torchvision resnet50 with random weights, batch 8, 224x224,
layer ``layer4``, medians of >= 5 runs in one process, the methods interleaved round-robin so that
a slow period of the machine hits every method alike. Peak memory: each method runs once in a
fresh subprocess; we report the growth of the process' peak resident set (ru_maxrss) during the
call, i.e. the extra memory the call needed on top of the model and the inputs.

Score-CAM runs one forward per channel and example (2048 x 8 resnet50 forwards would take about
an hour here), so it is compared with pytorch-grad-cam's ScoreCAM on a smaller setting that is
stated in the results: resnet18, layer4 (512 channels), batch 1, 224x224, each implementation
with its defaults. The matrix over architectures is ``benchmarks/matrix.py``.

Usage: ``python benchmarks/cam_speed.py [--repeats 5] [--threads 2] [--out benchmarks/results/cam_speed.md]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List

import torch
import torchvision

HERE = os.path.dirname(os.path.abspath(__file__))


def build(arch: str, batch: int, size: int, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(batch, 3, size, size)
    target = [int(t) for t in torch.randint(0, 1000, (batch,))]
    return model, x, target


def method_table(model: torch.nn.Module, x: torch.Tensor, target: List[int]) -> Dict[str, Callable[[], object]]:
    """Every timed call, by label. Each call produces maps for the whole batch."""
    from captum.attr import LayerGradCam as CaptumGradCam
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import captum_cam_ext as cce

    layer = model.layer4
    pgc_targets = [ClassifierOutputTarget(t) for t in target]

    def forward() -> object:
        with torch.no_grad():
            return model(x)

    def ours(cls: type) -> Callable[[], object]:
        cam = cls(model, layer)
        return lambda: cam.attribute(x, target=target, relu_attributions=True)

    def pgc(cls: type) -> Callable[[], object]:
        def run() -> object:
            with cls(model=model, target_layers=[layer]) as cam:
                out = cam(input_tensor=x, targets=pgc_targets)
            model.zero_grad(set_to_none=True)  # pytorch-grad-cam back-propagates into the parameters
            return out

        return run

    multi = cce.MultiCam(model, layer, methods=["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
    captum_cam = CaptumGradCam(model, layer)
    return {
        "no_grad forward": forward,
        "ours LayerGradCam": ours(cce.LayerGradCam),
        "ours LayerGradCamPlusPlus": ours(cce.LayerGradCamPlusPlus),
        "ours LayerXGradCam": ours(cce.LayerXGradCam),
        "ours LayerCam": ours(cce.LayerCam),
        "ours LayerHiResCam": ours(cce.LayerHiResCam),
        "ours LayerEigenGradCam": ours(cce.LayerEigenGradCam),
        "ours LayerEigenCam": ours(cce.LayerEigenCam),
        "ours MultiCam (5 methods)": lambda: multi.attribute(x, target=target, relu_attributions=True),
        "captum LayerGradCam": lambda: captum_cam.attribute(x, target=target, relu_attributions=True),
        "pytorch-grad-cam GradCAM": pgc(GradCAM),
        "pytorch-grad-cam GradCAMPlusPlus": pgc(GradCAMPlusPlus),
        "pytorch-grad-cam XGradCAM": pgc(XGradCAM),
        "pytorch-grad-cam LayerCAM": pgc(LayerCAM),
    }


def time_methods(table: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, List[float]]:
    times: Dict[str, List[float]] = {k: [] for k in table}
    for fn in table.values():  # warm-up (allocator, oneDNN primitive caches)
        fn()
    for _ in range(repeats):
        for name, fn in table.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def peak_memory_of(name: str, args: argparse.Namespace) -> float:
    """Run one method once in a fresh process; MiB the peak RSS grew during the call."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-one",
        name,
        "--threads",
        str(args.threads),
        "--batch",
        str(args.batch),
        "--size",
        str(args.size),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_one(name: str, args: argparse.Namespace) -> None:
    """Peak RSS during one call minus the RSS just before it, sampled every 0.2 ms by a thread.

    (Large tensors are mmap-ed and returned to the system when freed, so the resident set
    follows the live tensors; ru_maxrss alone would hide a call whose peak stays below the
    peak of building the model.)
    """
    model, x, target = build("resnet50", args.batch, args.size)
    fn = method_table(model, x, target)[name]
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    peak[0] = max(peak[0], _rss_bytes())
    print(json.dumps({"peak_mib": (peak[0] - before) / 2**20}))


def score_cam_comparison(repeats: int) -> Dict[str, object]:
    from pytorch_grad_cam import ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    import captum_cam_ext as cce

    model, x, target = build("resnet18", 1, 224, seed=1)
    layer = model.layer4

    def run_ours() -> torch.Tensor:  # the defaults: measured chunk size (cached per model), BN folded
        ours = cce.LayerScoreCam(model, layer)
        return ours.attribute(x, target=target, relu_attributions=True, upsample_to_input=True, normalize=True)[:, 0]

    def run_ref() -> torch.Tensor:  # pytorch-grad-cam's defaults (16 masked inputs per forward)
        with ScoreCAM(model=model, target_layers=[layer]) as cam:
            return torch.from_numpy(cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in target]))

    a, b = run_ours(), run_ref()
    diff = float((a - b).abs().max())
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_ours()
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run_ref()
        t_ref.append(time.perf_counter() - t0)
    return {"ours": statistics.median(t_ours), "ref": statistics.median(t_ref), "max_abs_diff": diff, "runs": repeats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--score-repeats", type=int, default=3)
    p.add_argument("--skip-score-cam", action="store_true")
    p.add_argument("--out", default=os.path.join(HERE, "results", "cam_speed.md"))
    p.add_argument("--memory-one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_one:
        memory_one(args.memory_one, args)
        return
    import tqdm

    model, x, target = build("resnet50", args.batch, args.size)
    table = method_table(model, x, target)
    raw_path = os.path.splitext(args.out)[0] + ".json"
    times = time_methods(table, args.repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["no_grad forward"]
    mem = {name: peak_memory_of(name, args) for name in tqdm.tqdm(table, desc="peak memory")}
    with open(raw_path, "w") as f:
        json.dump({"times": times, "peak_mib": mem}, f, indent=1)
    score = None if args.skip_score_cam else score_cam_comparison(args.score_repeats)

    lines = [
        "# CAM speed and memory (issue 2)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, CPU. resnet50 (random weights), batch {args.batch}, "
        f"{args.size}x{args.size}, layer `layer4`, relu_attributions=True, medians of {args.repeats} runs "
        "interleaved in one process. Peak memory: growth of the peak RSS during one call in a fresh process.",
        "",
        "| method | median time (s) | x no-grad forward | peak extra memory (MiB) | x captum LayerGradCam memory |",
        "|---|---|---|---|---|",
    ]
    cap_mem = mem["captum LayerGradCam"]
    for name in table:
        lines.append(
            f"| {name} | {med[name]:.3f} | {med[name] / base:.2f} | {mem[name]:.0f} | "
            f"{mem[name] / cap_mem if cap_mem > 0 else float('nan'):.2f} |"
        )
    # every gradient-based class of ours (Eigen-CAM uses no gradients)
    grad_names = [n for n in table if n.startswith("ours Layer") and n != "ours LayerEigenCam"]
    worst = max(med[n] / base for n in grad_names)
    lines += [
        "",
        "Goals:",
        f"- every gradient-based CAM <= 1.15x the no-grad forward: worst {worst:.2f}x "
        f"({'met' if worst <= 1.15 else 'NOT met'})",
        f"- MultiCam with 5 methods <= 1.25x one forward: {med['ours MultiCam (5 methods)'] / base:.2f}x "
        f"({'met' if med['ours MultiCam (5 methods)'] / base <= 1.25 else 'NOT met'})",
        f"- pytorch-grad-cam GradCAM for comparison: {med['pytorch-grad-cam GradCAM'] / base:.2f}x",
        f"- Grad-CAM peak memory <= 0.5x Captum's LayerGradCam: {mem['ours LayerGradCam'] / cap_mem:.2f}x "
        f"({'met' if mem['ours LayerGradCam'] <= 0.5 * cap_mem else 'NOT met'})",
    ]
    if score is not None:
        ratio = score["ref"] / score["ours"]
        lines += [
            "",
            "## Score-CAM (resnet18, layer4 = 512 channels, batch 1, 224x224, every implementation's defaults)",
            "",
            "| implementation | median time (s) |",
            "|---|---|",
            f"| ours LayerScoreCam | {score['ours']:.2f} |",
            f"| pytorch-grad-cam ScoreCAM | {score['ref']:.2f} |",
            "",
            f"Speed-up {ratio:.2f}x (goal >= 1.5x: {'met' if ratio >= 1.5 else 'NOT met'}); maps equal: "
            f"max |difference| {score['max_abs_diff']:.2e} after the same normalisation "
            f"(medians of {score['runs']} runs, interleaved).",
        ]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
