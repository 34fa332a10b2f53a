# ruff: noqa: E501  (markdown table rows are long string literals)
"""Interpretable gradients (Figueroa et al., VISAPP 2024) on Fashion-MNIST at a scale where the
regularizer takes effect (issue 14).

Stages (each resumable: finished runs are skipped, training checkpoints every epoch):

``sweep``  10,000 training images, 3 epochs, one seed, ResNet-18-style: for each lam x error x
           BatchNorm mode (and mean vs sum), accuracy and the eval-mode cosine between standard
           and guided input gradients on 2,000 held-out training images (50000-51999).
``cost``   plain vs regularized training step, side by side (CPU time of interleaved pairs),
           and where the time of a regularized step goes (autograd profile).
``train``  all 60,000 training images (augmented: random 2-pixel shift + horizontal flip, the
           same for every arm), arms baseline / lam=7.5e-3 / the lam the sweep found to engage,
           seeds x {ResNet-18-style, MobileNet-V2-style}.
``eval``   test accuracy (10,000 images) and, on the first ``n_eval`` test images, per image:
           eval-mode cosine, gradient noise (total variation, Sparseness, Complexity), and for
           Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, Score-CAM and the plain gradient: Average
           Drop / Increase / Gain with mask area, matched-area controls, Insertion / Deletion.
``report`` ``benchmarks/results/guided.md`` / ``guided.json`` and figures from the cached stages.

Presets: ``tiny`` (CPU smoke test of every stage, ~2 min), ``cpu`` (the experiment on a 2-core
CPU: hours, run in the background), ``gpu`` (the same experiment sized for <= 8 minutes on one
GPU with parallel runs; written for ``--device cuda`` but not run on a GPU here).

Usage::

    nice -n 10 python benchmarks/guided_bench.py --preset cpu --stage sweep --threads 2
    python benchmarks/guided_bench.py --preset cpu --stage report
    python benchmarks/guided_bench.py --preset gpu --device cuda --stage all
    python benchmarks/guided_bench.py --preset tiny --stage all        # smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captum_cam_ext.data.fashion_mnist import (  # noqa: E402
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_tensors,
)
from captum_cam_ext.metrics.alignment import gradient_alignment  # noqa: E402
from captum_cam_ext.training.loops import train  # noqa: E402
from captum_cam_ext.training.models import SmallMobileNetV2, SmallResNet18  # noqa: E402

# Outputs go to this checkout unless GUIDED_BENCH_OUT names another one (long background runs
# execute a frozen copy of the code, so that edits in the shared tree cannot break them midway).
OUT_ROOT = Path(os.environ.get("GUIDED_BENCH_OUT", str(ROOT)))
RESULTS = OUT_ROOT / "benchmarks" / "results"
CACHE = OUT_ROOT / "benchmarks" / "cache"
PAPER_LAM = 7.5e-3
LAMBDAS = (7.5e-3, 3e-2, 0.1, 0.3, 1.0)
ERRORS = ("cosine", "mse", "mae")

PRESETS: Dict[str, Dict[str, Any]] = {
    "cpu": dict(
        sweep_n=10_000, sweep_epochs=3, val_start=50_000, n_val=2_000, sweep_arch="resnet18s",
        lambdas=LAMBDAS, errors=ERRORS, bn_modes=("train", "eval"), sweep_bn_mode="eval",
        full_n=60_000, full_epochs=3, full_augment=False, seeds={"resnet18s": 3, "mobilenetv2s": 1},
        batch=128, lr=3e-3, weight_decay=5e-4, n_test=10_000, n_eval=2_000, causal_steps=16,
        timing_batch=128, timing_pairs=5, jobs=1,
    ),
    "gpu": dict(
        sweep_n=10_000, sweep_epochs=3, val_start=50_000, n_val=2_000, sweep_arch="resnet18s",
        lambdas=LAMBDAS, errors=ERRORS, bn_modes=("train", "eval"), sweep_bn_mode="eval",
        full_n=60_000, full_epochs=3, full_augment=False, seeds={"resnet18s": 3, "mobilenetv2s": 3},
        batch=128, lr=3e-3, weight_decay=5e-4, n_test=10_000, n_eval=2_000, causal_steps=16,
        timing_batch=128, timing_pairs=10, jobs=8,
    ),
    "tiny": dict(
        sweep_n=256, sweep_epochs=1, val_start=50_000, n_val=64, sweep_arch="resnet18s",
        lambdas=(7.5e-3, 1.0), errors=("cosine", "mse"), bn_modes=("train", "eval"), sweep_bn_mode="eval",
        full_n=256, full_epochs=2, full_augment=True, seeds={"resnet18s": 2, "mobilenetv2s": 1},
        batch=32, lr=3e-3, weight_decay=5e-4, n_test=128, n_eval=24, causal_steps=4,
        timing_batch=16, timing_pairs=2, jobs=1,
    ),
}  # fmt: skip

# Sized for a shared 2-core CPU: a 2-2-2-2 BasicBlock ResNet at widths 8-16-32-64 (176k
# parameters, layer4 4x4) and a MobileNet-V2 layout with torchvision's stride-2 stem (32k
# parameters, features[-1] 4x4).
ARCHS: Dict[str, Callable[[], nn.Module]] = {
    "resnet18s": lambda: SmallResNet18(num_classes=10, in_channels=1, widths=(8, 16, 32, 64)),
    "mobilenetv2s": lambda: SmallMobileNetV2(
        num_classes=10, in_channels=1, widths=(16, 16, 24, 32, 128), stem_stride=2
    ),
}
ARCH_TITLE = {
    "resnet18s": "ResNet-18-style (8-16-32-64)",
    "mobilenetv2s": "MobileNet-V2-style (16-16-24-32-128, stride-2 stem, ReLU6)",
}
BLACK = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD  # a black pixel, normalised


def cam_layer(arch: str, model: nn.Module) -> nn.Module:
    layer = model.layer4 if arch == "resnet18s" else model.features[-1]  # type: ignore[index]
    assert isinstance(layer, nn.Module)
    return layer


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------
# runs: one training configuration = one key
# ------------------------------------------------------------------------------------------------


def run_key(stage: str, arch: str, seed: int, lam: float, error: str, bn_mode: str, reduction: str) -> str:
    if lam == 0:
        return f"{stage}_{arch}_s{seed}_base"
    return f"{stage}_{arch}_s{seed}_lam{lam:g}_{error}_{bn_mode}_{reduction}"


def run_spec(stage: str, arch: str, seed: int, lam: float, error: str = "cosine", bn_mode: str = "eval", reduction: str = "mean") -> Dict[str, Any]:
    return dict(key=run_key(stage, arch, seed, lam, error, bn_mode, reduction), stage=stage, arch=arch,
                seed=seed, lam=lam, error=error, bn_mode=bn_mode, reduction=reduction)  # fmt: skip


def preset_dir(preset: str) -> Path:
    return CACHE / f"guided_{preset}"


def ckpt_dir(preset: str) -> Path:
    d = preset_dir(preset) / "ckpt"  # weights and optimizer states: not committed
    d.mkdir(parents=True, exist_ok=True)
    ignore = d / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return d


def read_json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_json(path: Path, data: Dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def update_json(path: Path, key: str, value: Any) -> None:
    """Add one entry under a file lock (parallel shards write the same file)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_json(path)
        data[key] = value
        write_json(path, data)


class Augment:
    """Random shift by up to ``pad`` pixels (black border) and horizontal flip, from a seeded generator."""

    def __init__(self, seed: int, pad: int = 2) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.pad = pad

    def __call__(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        p = self.pad
        shifts = torch.randint(0, 2 * p + 1, (n, 2), generator=self.gen)
        flips = torch.rand(n, generator=self.gen) < 0.5
        padded = F.pad(x, (p, p, p, p), value=BLACK)
        rows = (torch.arange(h)[None, :] + shifts[:, :1]).to(x.device)  # (n, h)
        cols = (torch.arange(w)[None, :] + shifts[:, 1:]).to(x.device)  # (n, w)
        cols = torch.where(flips[:, None].to(x.device), cols.flip(1), cols)
        idx_r = rows[:, None, :, None].expand(n, x.shape[1], h, w + 2 * p)
        out = padded.gather(2, idx_r)
        idx_c = cols[:, None, None, :].expand(n, x.shape[1], h, w)
        return out.gather(3, idx_c)


def train_run(spec: Dict[str, Any], data: TensorDataset, epochs: int, cfg: Dict[str, Any], preset: str, device: torch.device, augment: bool) -> Dict[str, Any]:
    """Train (or resume) one run; returns its info (history, wall seconds). Checkpoint each epoch."""
    path = ckpt_dir(preset) / f"{spec['key']}.pt"
    torch.manual_seed(spec["seed"])
    model = ARCHS[spec["arch"]]().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps_per_epoch = len(data) // cfg["batch"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=epochs * steps_per_epoch, pct_start=0.25)
    state: Dict[str, Any] = {"epoch": 0, "history": [], "seconds": 0.0}
    if path.is_file():
        blob = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(blob["model"])
        opt.load_state_dict(blob["opt"])
        sched.load_state_dict(blob["sched"])
        state = blob["state"]
    for epoch in range(state["epoch"], epochs):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(1000 * spec["seed"] + epoch)
        loader = DataLoader(data, batch_size=cfg["batch"], shuffle=True, generator=gen, drop_last=True)
        hist = train(
            model, loader, epochs=1, lam=spec["lam"], error=spec["error"], optimizer=opt,
            device=device, track_alignment=False, progress=False, bn_mode=spec["bn_mode"],
            reduction=spec["reduction"], scheduler=sched,
            input_transform=Augment(7919 * spec["seed"] + epoch) if augment else None,
        )  # fmt: skip
        state["history"].append(hist[0])
        state["seconds"] += time.perf_counter() - t0
        state["epoch"] = epoch + 1
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "state": state}, path)
        log(f"{spec['key']}: epoch {epoch + 1}/{epochs} ce {hist[0]['ce']:.3f} acc {hist[0]['acc']:.3f} ({time.perf_counter() - t0:.0f}s)")
    return state


def load_model(spec: Dict[str, Any], preset: str, device: torch.device) -> nn.Module:
    model = ARCHS[spec["arch"]]()
    blob = torch.load(ckpt_dir(preset) / f"{spec['key']}.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(blob["model"])
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------
# stage 1: the sweep
# ------------------------------------------------------------------------------------------------


def sweep_specs(cfg: Dict[str, Any], part: str = "all") -> List[Dict[str, Any]]:
    """Most informative first. Part ``cosine``: baseline, cosine x lam x BN mode (what the full
    runs depend on); part ``rest``: mean vs sum, then mse / mae x lam."""
    arch = cfg["sweep_arch"]
    first = [run_spec("sweep", arch, 0, 0.0)]
    for bn in cfg["bn_modes"]:
        first += [run_spec("sweep", arch, 0, lam, "cosine", bn) for lam in cfg["lambdas"]]
    # "sum" at lam is "mean" at lam * batch: one run shows it (cosine, the paper's lam)
    rest = [run_spec("sweep", arch, 0, PAPER_LAM, "cosine", cfg["sweep_bn_mode"], "sum")]
    for error in cfg["errors"][1:]:
        rest += [run_spec("sweep", arch, 0, lam, error, cfg["sweep_bn_mode"]) for lam in cfg["lambdas"]]
    return {"cosine": first, "rest": rest, "all": first + rest}[part]


def alignment_stats(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch: int = 250) -> Dict[str, Any]:
    """Accuracy and per-image eval-mode cosines (CE-loss gradients and class-score gradients)."""
    model.eval()
    cos_loss, cos_score, correct = [], [], []
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        with torch.no_grad():
            correct.append((model(xb).argmax(1) == yb).cpu())
        cos_loss.append(gradient_alignment(model, xb, yb).cpu())
        cos_score.append(gradient_alignment(model, xb, yb, objective="score").cpu())
    cl, cs = torch.cat(cos_loss), torch.cat(cos_score)
    return {
        "acc": float(torch.cat(correct).float().mean()),
        "cos_loss": float(cl.mean()),
        "cos_loss_sd": float(cl.std()),
        "cos_score": float(cs.mean()),
        "n": len(x),
    }


def stage_sweep(cfg: Dict[str, Any], preset: str, device: torch.device, shard: Tuple[int, int], part: str = "all") -> None:
    out = preset_dir(preset) / "sweep.json"
    train_x, train_y = fashion_mnist_tensors("train").tensors
    data = TensorDataset(train_x[: cfg["sweep_n"]], train_y[: cfg["sweep_n"]])
    xv = train_x[cfg["val_start"] : cfg["val_start"] + cfg["n_val"]]
    yv = train_y[cfg["val_start"] : cfg["val_start"] + cfg["n_val"]]
    for i, spec in enumerate(sweep_specs(cfg, part)):
        if i % shard[1] != shard[0] or spec["key"] in read_json(out):
            continue
        info = train_run(spec, data, cfg["sweep_epochs"], cfg, preset, device, augment=True)
        model = load_model(spec, preset, device)
        res = {**spec, **alignment_stats(model, xv, yv, device), "train_seconds": info["seconds"],
               "reg_last_epoch": info["history"][-1]["reg"], "train_cos_last_epoch": info["history"][-1]["cosine"],
               "step_seconds": info["history"][-1]["step_seconds"], "history": info["history"]}  # fmt: skip
        update_json(out, spec["key"], res)
        log(f"sweep {spec['key']}: val acc {res['acc']:.3f} eval-mode cos {res['cos_loss']:.3f}")


# ------------------------------------------------------------------------------------------------
# stage 2: the cost of a regularized step
# ------------------------------------------------------------------------------------------------


def timing_models(cfg: Dict[str, Any]) -> Dict[str, Tuple[Callable[[], nn.Module], Tuple[int, ...]]]:
    import torchvision

    b = cfg["timing_batch"]
    return {
        "resnet18s": (ARCHS["resnet18s"], (b, 1, 28, 28)),
        "mobilenetv2s": (ARCHS["mobilenetv2s"], (b, 1, 28, 28)),
        "MobileNet-V2-style, stride-1 stem (issue's 4.1-4.5x model)": (
            lambda: SmallMobileNetV2(num_classes=10, in_channels=1, widths=(16, 16, 24, 32, 128)), (b, 1, 28, 28)),
        "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (max(b // 4, 2), 3, 32, 32)),
        "torchvision mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (max(b // 4, 2), 3, 32, 32)),
    }


VARIANTS = ("plain", "reg bn=train native", "reg bn=train fast", "reg bn=eval native", "reg bn=eval fast")


def step_functions(make: Callable[[], nn.Module], shape: Tuple[int, ...], device: torch.device) -> Dict[str, Callable[[], None]]:
    """One optimizer step per variant, each on its own copy of the same initial model and batch."""
    from captum_cam_ext.training.loss import InterpretableGradientLoss

    torch.manual_seed(0)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, 10, (shape[0],), device=device)
    fns: Dict[str, Callable[[], None]] = {}
    for variant in VARIANTS:
        torch.manual_seed(0)
        model = make().to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)
        loss: Optional[InterpretableGradientLoss] = None
        if variant != "plain":
            bn, ops = variant.split()[1:]
            loss = InterpretableGradientLoss(model, lam=0.1, bn_mode=bn.split("=")[1], fast_ops=ops == "fast")

        def step(model: nn.Module = model, loss: Optional[InterpretableGradientLoss] = loss, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            total = F.cross_entropy(model(x), y) if loss is None else loss(x, y).total
            total.backward()
            opt.step()

        fns[variant] = step
    return fns


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(step: Callable[[], None]) -> Dict[str, float]:
    """Seconds per autograd node type (backward and double backward) plus the forward rest."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    prefix = "autograd::engine::evaluate_function: "
    out: Dict[str, float] = {"total": total}
    for e in events:
        if e.key.startswith(prefix):
            name = e.key[len(prefix) :]
            out[name] = out.get(name, 0.0) + e.cpu_time_total / 1e6
    return out


def stage_cost(cfg: Dict[str, Any], preset: str, device: torch.device, shard: Tuple[int, int]) -> None:
    """Interleaved plain / regularized steps on the same batch; CPU time (robust to other jobs)."""
    res: Dict[str, Any] = {"threads": torch.get_num_threads(), "device": str(device), "pairs": cfg["timing_pairs"], "models": {}}
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    for name, (make, shape) in timing_models(cfg).items():
        fns = step_functions(make, shape, device)
        for f in fns.values():
            f()  # warm-up
        times: Dict[str, List[float]] = {k: [] for k in fns}
        walls: Dict[str, List[float]] = {k: [] for k in fns}
        for _ in range(cfg["timing_pairs"]):
            for k, f in fns.items():
                sync(device)
                t, w = clock(), time.perf_counter()
                f()
                sync(device)
                times[k].append(clock() - t)
                walls[k].append(time.perf_counter() - w)
        med = {k: statistics.median(v) for k, v in times.items()}
        res["models"][name] = {
            "batch_shape": list(shape),
            "seconds": med,
            "wall_seconds": {k: statistics.median(v) for k, v in walls.items()},
            "ratio": {k: med[k] / med["plain"] for k in med},
        }
        log(f"cost {name}: " + ", ".join(f"{k} {1000 * v:.0f} ms ({med[k] / med['plain']:.2f}x)" for k, v in med.items()))
        if device.type == "cpu" and name in ("mobilenetv2s", "resnet18s"):
            res["models"][name]["profile"] = {k: profile_step(fns[k]) for k in fns}
    res["loadavg"] = list(os.getloadavg())
    write_json(preset_dir(preset) / "cost.json", res)


# ------------------------------------------------------------------------------------------------
# stage 3: full training
# ------------------------------------------------------------------------------------------------

MIN_GAIN = 0.1  # "engages": eval-mode cosine at least this much above the baseline's (held-out)


def sweep_decisions(cfg: Dict[str, Any], preset: str) -> Dict[str, Any]:
    """BatchNorm mode and the lam that engages, from the sweep (cosine error, held-out images).

    BN mode: the one whose best held-out eval-mode cosine (over lam) is higher. lam: the smallest
    lam of that mode whose eval-mode cosine exceeds the baseline's by ``MIN_GAIN``; if none does,
    the lam with the highest cosine.
    """
    sweep = read_json(preset_dir(preset) / "sweep.json")
    arch = cfg["sweep_arch"]
    base = sweep.get(run_key("sweep", arch, 0, 0.0, "", "", ""))
    if base is None:
        raise SystemExit("the sweep has no baseline run yet: run --stage sweep first")

    def runs(bn: str) -> List[Dict[str, Any]]:
        keys = [run_key("sweep", arch, 0, lam, "cosine", bn, "mean") for lam in cfg["lambdas"]]
        return [sweep[k] for k in keys if k in sweep]

    best = {bn: max((r["cos_loss"] for r in runs(bn)), default=-math.inf) for bn in cfg["bn_modes"]}
    bn_mode = max(cfg["bn_modes"], key=lambda b: (best[b], b == "eval"))
    rs = sorted(runs(bn_mode), key=lambda r: r["lam"])
    if not rs:
        raise SystemExit("the sweep has no cosine runs yet: run --stage sweep first")
    engaged = [r for r in rs if r["cos_loss"] - base["cos_loss"] >= MIN_GAIN]
    lam = engaged[0]["lam"] if engaged else max(rs, key=lambda r: r["cos_loss"])["lam"]
    return {"bn_mode": bn_mode, "lam_engage": lam, "engaged": bool(engaged), "min_gain": MIN_GAIN,
            "base_cos": base["cos_loss"], "best_cos_by_bn_mode": best}  # fmt: skip


def full_specs(cfg: Dict[str, Any], decisions: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Arms per (arch, seed) in the order: ResNet seed 0, MobileNet seed 0, then further seeds."""
    lams = [0.0, PAPER_LAM] + ([decisions["lam_engage"]] if decisions["lam_engage"] != PAPER_LAM else [])
    n_max = max(cfg["seeds"].values())
    specs = []
    for seed in range(n_max):
        for arch, n in cfg["seeds"].items():
            if seed < n:
                specs += [run_spec("full", arch, seed, lam, "cosine", decisions["bn_mode"]) for lam in lams]
    return specs


def current_decisions(cfg: Dict[str, Any], preset: str) -> Dict[str, Any]:
    path = preset_dir(preset) / "decisions.json"
    if path.is_file():  # fixed once the full runs started: later sweep runs must not move them
        return read_json(path)
    d = sweep_decisions(cfg, preset)
    write_json(path, d)
    return d


def stage_train(cfg: Dict[str, Any], preset: str, device: torch.device, shard: Tuple[int, int]) -> None:
    decisions = current_decisions(cfg, preset)
    out = preset_dir(preset) / "full.json"
    train_x, train_y = fashion_mnist_tensors("train").tensors
    data = TensorDataset(train_x[: cfg["full_n"]], train_y[: cfg["full_n"]])
    test_x, test_y = fashion_mnist_tensors("test").tensors
    for i, spec in enumerate(full_specs(cfg, decisions)):
        if i % shard[1] != shard[0] or spec["key"] in read_json(out):
            continue
        info = train_run(spec, data, cfg["full_epochs"], cfg, preset, device, augment=cfg["full_augment"])
        model = load_model(spec, preset, device)
        n_test = cfg["n_test"]
        with torch.no_grad():
            correct = sum(
                int((model(test_x[j : min(j + 1000, n_test)].to(device)).argmax(1).cpu() == test_y[j : min(j + 1000, n_test)]).sum())
                for j in range(0, n_test, 1000)
            )
        res = {**spec, "test_acc": correct / cfg["n_test"], "train_seconds": info["seconds"], "history": info["history"]}
        update_json(out, spec["key"], res)
        log(f"full {spec['key']}: test acc {res['test_acc']:.4f}, {info['seconds'] / 60:.1f} min")


# ------------------------------------------------------------------------------------------------
# stage 4: evaluation on test images
# ------------------------------------------------------------------------------------------------

METHODS = ("Grad-CAM", "Grad-CAM++", "XGrad-CAM", "LayerCAM", "Score-CAM", "Gradient")


def denorm(x: Tensor) -> Tensor:
    return x * FASHION_MNIST_STD + FASHION_MNIST_MEAN


def renorm(x: Tensor) -> Tensor:
    return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


def saliency(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """``|d y_c / d x|`` summed over channels, ``(N, 1, H, W)``, eval mode."""
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xi).gather(1, target[:, None]).sum(), xi)
    return g.abs().sum(1, keepdim=True)


def method_maps(arch: str, model: nn.Module, x: Tensor, target: Tensor, batch: int = 250) -> Dict[str, Tensor]:
    from captum_cam_ext.attr.grad_cam import LayerGradCam
    from captum_cam_ext.attr.grad_cam_pp import LayerGradCamPlusPlus
    from captum_cam_ext.attr.layer_cam import LayerCam
    from captum_cam_ext.attr.score_cam import LayerScoreCam
    from captum_cam_ext.attr.xgrad_cam import LayerXGradCam

    layer = cam_layer(arch, model)
    classes = {"Grad-CAM": LayerGradCam, "Grad-CAM++": LayerGradCamPlusPlus, "XGrad-CAM": LayerXGradCam,
               "LayerCAM": LayerCam, "Score-CAM": LayerScoreCam}  # fmt: skip
    maps: Dict[str, Tensor] = {}
    for name, cls in classes.items():
        cam = cls(model, layer, batch_size=512) if name == "Score-CAM" else cls(model, layer)
        maps[name] = torch.cat([
            cam.attribute(x[i : i + batch], target=target[i : i + batch], relu_attributions=True).detach()
            for i in range(0, len(x), batch)
        ])  # fmt: skip
    maps["Gradient"] = torch.cat([saliency(model, x[i : i + batch], target[i : i + batch]) for i in range(0, len(x), batch)])
    return maps


def confidence_rows(model: nn.Module, x: Tensor, y: Tensor, masks: Tensor, prefix: str) -> Dict[str, Tensor]:
    """AD / AI / AG per image (in %) and mask area for masks already in [0, 1] at input size."""
    from captum_cam_ext.metrics.confidence import confidence_metrics

    r = confidence_metrics(model, x, masks, target=y, normalize="none", denormalize=denorm,
                           renormalize=renorm, max_examples_per_batch=500)  # fmt: skip
    return {f"{prefix}AD": r.drop, f"{prefix}AI": r.increase, f"{prefix}AG": r.gain, f"{prefix}area": r.mask_area}


def image_metrics(arch: str, model: nn.Module, x: Tensor, y: Tensor, cfg: Dict[str, Any], match_area: Optional[Dict[str, float]]) -> Dict[str, Dict[str, Tensor]]:
    """Per-image metrics of every method: {method: {metric: (N,)}}.

    ``AD/AI/AG/area``: the method's own mask; ``const_*``: a constant mask at the same per-image
    area (what area alone buys); ``rand_*``: a seeded random mask at the same mean area;
    ``matched_*``: the mask raised to the power whose mean area is ``match_area[method]`` (the
    baseline's area; regularized models only); ``Ins`` / ``Del``: insertion (blurred substrate) /
    deletion (black) AUC; ``ROAD`` / ``MoRF`` / ``LeRF``: ROAD (noisy linear imputation, noise
    0.01, percentiles 10..90, softmax score change; combined = (LeRF - MoRF) / 2).
    """
    from captum_cam_ext.metrics.causal import deletion_auc, insertion_auc
    from captum_cam_ext.metrics.controls import maps_to_masks, power_control, random_control, solve_power
    from captum_cam_ext.metrics.road import road

    model.eval()
    out: Dict[str, Dict[str, Tensor]] = {}
    size = tuple(x.shape[-2:])
    for name, maps in method_maps(arch, model, x, y).items():
        masks = maps_to_masks(maps, size)
        rows = confidence_rows(model, x, y, masks, "")
        area = rows["area"]
        const = area.view(-1, 1, 1, 1).expand_as(masks).clone()
        rows.update(confidence_rows(model, x, y, const, "const_"))
        rand = random_control(range(len(x)), size, map_size=tuple(maps.shape[-2:]), seed=0, device=x.device)
        rand = power_control(rand, solve_power(rand, float(area.mean()), clamp=True))
        rows.update(confidence_rows(model, x, y, rand, "rand_"))
        if match_area is not None and name in match_area:
            p = solve_power(masks, match_area[name], clamp=True)
            rows.update(confidence_rows(model, x, y, power_control(masks, p), "matched_"))
        common = dict(target=y, n_steps=cfg["causal_steps"], max_forwards_per_batch=2048)
        rows["Ins"] = insertion_auc(model, x, maps, **common)  # type: ignore[assignment]
        rows["Del"] = deletion_auc(model, x, maps, substrate=BLACK, **common)  # type: ignore[assignment]
        rd = road(model, x, maps, target=y, return_curves=True, max_forwards_per_batch=512, solver="direct" if x.device.type == "cpu" else "cg")
        rows.update({"ROAD": rd.combined, "MoRF": rd.morf, "LeRF": rd.lerf})  # type: ignore[union-attr]
        out[name] = {k: v.detach().float().cpu() for k, v in rows.items()}
    return out


def gradient_rows(model: nn.Module, x: Tensor, y: Tensor, device: torch.device, batch: int = 250) -> Dict[str, Tensor]:
    """Per image: eval-mode cosines, correctness, confidence, noise of |d y_c / d x|."""
    from captum_cam_ext.metrics.alignment import gradient_noise

    rows: Dict[str, List[Tensor]] = {}
    for i in range(0, len(x), batch):
        xb, yb = x[i : i + batch].to(device), y[i : i + batch].to(device)
        with torch.no_grad():
            prob = model(xb).softmax(1)
        r = {
            "correct": (prob.argmax(1) == yb).float(),
            "prob": prob.gather(1, yb[:, None])[:, 0],
            "cos_loss": gradient_alignment(model, xb, yb),
            "cos_score": gradient_alignment(model, xb, yb, objective="score"),
            **gradient_noise(saliency(model, xb, yb)),
        }
        for k, v in r.items():
            rows.setdefault(k, []).append(v.detach().float().cpu())
    return {k: torch.cat(v) for k, v in rows.items()}


def eval_dir(preset: str) -> Path:
    d = ckpt_dir(preset).parent / "eval"  # per-image tensors: not committed (regenerable)
    d.mkdir(parents=True, exist_ok=True)
    ignore = d / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")
    return d


def stage_eval(cfg: Dict[str, Any], preset: str, device: torch.device, shard: Tuple[int, int], part: str = "all") -> None:
    decisions = current_decisions(cfg, preset)
    full = read_json(preset_dir(preset) / "full.json")
    test_x, test_y = fashion_mnist_tensors("test").tensors
    x, y = test_x[: cfg["n_eval"]], test_y[: cfg["n_eval"]]
    specs = [s for s in full_specs(cfg, decisions) if s["key"] in full]
    specs.sort(key=lambda s: s["lam"] > 0)  # baselines first: their areas are matched later
    if part != "all":  # parallel shards: all baselines (part "base") before the regularized models
        specs = [s for s in specs if (s["lam"] > 0) == (part == "reg")]
    for i, spec in enumerate(specs):
        path = eval_dir(preset) / f"{spec['key']}.pt"
        if i % shard[1] != shard[0] or path.is_file():
            continue
        t0 = time.perf_counter()
        model = load_model(spec, preset, device)
        match_area = None
        if spec["lam"] > 0:
            base_path = eval_dir(preset) / f"{run_key('full', spec['arch'], spec['seed'], 0.0, '', '', '')}.pt"
            if base_path.is_file():
                base = torch.load(base_path, weights_only=False)
                match_area = {m: float(v["area"].mean()) for m, v in base["methods"].items()}
        blob = {
            "spec": spec,
            "gradients": gradient_rows(model, x, y, device),
            "methods": image_metrics(spec["arch"], model, x.to(device), y.to(device), cfg, match_area),
            "seconds": time.perf_counter() - t0,
        }
        torch.save(blob, path)
        log(f"eval {spec['key']}: {blob['seconds']:.0f}s")


# ------------------------------------------------------------------------------------------------
# stage 5: the report
# ------------------------------------------------------------------------------------------------

# metric -> (higher is better, decimals, label)
CAM_METRICS: Dict[str, Tuple[Optional[bool], int, str]] = {
    "AD": (False, 2, "AD↓ (%)"),
    "AI": (True, 1, "AI↑ (%)"),
    "AG": (True, 2, "AG↑ (%)"),
    "area": (None, 3, "mask area"),
    "AD-const": (False, 2, "AD − AD(constant, same area)↓"),
    "AD-rand": (False, 2, "AD − AD(random, same area)↓"),
    "Ins": (True, 3, "Ins↑"),
    "Del": (False, 3, "Del↓"),
    "ROAD": (True, 4, "ROAD combined↑"),
    "MoRF": (False, 4, "ROAD MoRF↓"),
    "LeRF": (True, 4, "ROAD LeRF↑"),
}
GRAD_METRICS: Dict[str, Tuple[Optional[bool], int, str]] = {
    "cos_loss": (True, 3, "eval-mode cosine (CE)"),
    "cos_score": (True, 3, "eval-mode cosine (class score)"),
    "total_variation": (False, 3, "total variation↓"),
    "sparseness": (True, 3, "Sparseness↑"),
    "complexity": (False, 3, "Complexity↓"),
    "prob": (True, 3, "p(true class)"),
}


def cam_values(blob: Dict[str, Any], method: str, metric: str) -> Tensor:
    d = blob["methods"][method]
    if metric == "AD-const":
        return d["AD"] - d["const_AD"]
    if metric == "AD-rand":
        return d["AD"] - d["rand_AD"]
    return d[metric]


def load_evals(cfg: Dict[str, Any], preset: str, decisions: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for spec in full_specs(cfg, decisions):
        path = eval_dir(preset) / f"{spec['key']}.pt"
        if path.is_file():
            out[spec["key"]] = torch.load(path, weights_only=False)
    return out


def comparison(a: List[Tensor], b: List[Tensor], hib: Optional[bool], name: str, mask: Optional[List[Tensor]] = None) -> Dict[str, Any]:
    """reg - base: across images (per-image differences averaged over seeds) and across seeds (t)."""
    from captum_cam_ext.metrics.statistics import bootstrap_ci, paired_comparison

    if mask is not None:
        m = torch.stack(mask).all(0)
        a, b = [v[m] for v in a], [v[m] for v in b]
    diffs = torch.stack([x.double() - y.double() for x, y in zip(a, b)])  # (seeds, images)
    img = paired_comparison(torch.stack(a).double().mean(0), torch.stack(b).double().mean(0), metric=name,
                            a="reg", b="base", higher_is_better=hib, n_boot=2000)  # fmt: skip
    res = {"n_images": int(diffs.shape[1]), "n_seeds": int(diffs.shape[0]), "base": img.mean_b, "reg": img.mean_a,
           "diff": img.mean_diff, "ci_images": [img.ci_low, img.ci_high], "verdict_images": img.verdict,
           "win_rate": img.win_rate}  # fmt: skip
    if diffs.shape[0] > 1:
        seed_means = diffs.mean(1)
        lo, hi = bootstrap_ci(seed_means, method="t")
        res["ci_seeds"] = [lo, hi]
        res["per_seed"] = [float(v) for v in seed_means]
    return res


def arm_pairs(evals: Dict[str, Dict[str, Any]], cfg: Dict[str, Any], decisions: Dict[str, Any], arch: str, lam: float) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Matched (base, reg) eval blobs over the seeds where both exist."""
    bases, regs = [], []
    for seed in range(cfg["seeds"][arch]):
        kb = run_key("full", arch, seed, 0.0, "", "", "")
        kr = run_key("full", arch, seed, lam, "cosine", decisions["bn_mode"], "mean")
        if kb in evals and kr in evals:
            bases.append(evals[kb])
            regs.append(evals[kr])
    return bases, regs


def compare_arms(bases: List[Dict[str, Any]], regs: List[Dict[str, Any]], matched_accuracy: bool = False) -> Optional[Dict[str, Any]]:
    mask = [rb["gradients"]["correct"].bool() & bb["gradients"]["correct"].bool() for bb, rb in zip(bases, regs)] if matched_accuracy else None
    if mask is not None and int(torch.stack(mask).all(0).sum()) < 2:
        return None
    out: Dict[str, Any] = {"gradients": {}, "methods": {}}
    for k, (hib, _, _) in GRAD_METRICS.items():
        out["gradients"][k] = comparison([r["gradients"][k] for r in regs], [b["gradients"][k] for b in bases], hib, k, mask)
    for method in METHODS:
        out["methods"][method] = {}
        for k, (hib, _, _) in CAM_METRICS.items():
            out["methods"][method][k] = comparison([cam_values(r, method, k) for r in regs], [cam_values(b, method, k) for b in bases], hib, k, mask)
        if all("matched_AD" in r["methods"][method] for r in regs):  # reg at the baseline's mask area
            for k, hib in (("AD", False), ("AI", True), ("AG", True)):
                out["methods"][method][f"matched_{k}"] = comparison(
                    [r["methods"][method][f"matched_{k}"] for r in regs], [b["methods"][method][k] for b in bases], hib, f"matched_{k}", mask)
    return out


def ci_cell(c: Dict[str, Any], d: int, hib: Optional[bool], key: str = "ci_images") -> str:
    """``diff [lo, hi]``; bold when the interval favours the regularized model, italic the baseline."""
    if key not in c:
        return "–"
    lo, hi = c[key]
    cell = f"{c['diff']:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]"
    tol = 1e-9 * max(1.0, abs(c["base"]), abs(c["reg"]))
    if hib is None or (lo <= tol and hi >= -tol):
        return cell
    return f"**{cell}**" if (lo > 0) == hib else f"_{cell}_"


def sweep_figure(cfg: Dict[str, Any], sweep: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arch = cfg["sweep_arch"]
    base = sweep.get(run_key("sweep", arch, 0, 0.0, "", "", ""))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    colors = {"cosine": "C0", "mse": "C1", "mae": "C2"}
    for error in cfg["errors"]:
        for bn in cfg["bn_modes"]:
            rs = [sweep[k] for k in (run_key("sweep", arch, 0, lam, error, bn, "mean") for lam in cfg["lambdas"]) if k in sweep]
            if not rs:
                continue
            lams = [r["lam"] for r in rs]
            kw = dict(ls="-" if bn == "eval" else "--", marker="o", color=colors.get(error), label=f"{error}, BN {bn}")
            axes[0].plot(lams, [r["cos_loss"] for r in rs], **kw)  # type: ignore[arg-type]
            axes[1].plot(lams, [r["cos_score"] for r in rs], **kw)  # type: ignore[arg-type]
            axes[2].plot(lams, [100 * r["acc"] for r in rs], **kw)  # type: ignore[arg-type]
    if base:
        axes[0].axhline(base["cos_loss"], color="k", lw=0.8, label="baseline (lam=0)")
        axes[1].axhline(base["cos_score"], color="k", lw=0.8)
        axes[2].axhline(100 * base["acc"], color="k", lw=0.8)
    labels = ("eval-mode cosine, CE gradients", "eval-mode cosine, class-score gradients", "held-out accuracy (%)")
    for ax, yl in zip(axes, labels):
        ax.set_xscale("log")
        ax.set_xlabel("lam (paper's 7.5e-3 dotted)")
        ax.set_ylabel(yl)
        ax.axvline(PAPER_LAM, color="grey", ls=":", lw=0.8)
    axes[0].legend(fontsize=6)
    fig.suptitle(f"Sweep: {ARCH_TITLE[arch]}, {cfg['sweep_n']} images, {cfg['sweep_epochs']} epochs, seed 0", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def maps_figure(cfg: Dict[str, Any], preset: str, decisions: Dict[str, Any], arch: str, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captum_cam_ext._maps import normalize_maps, upsample_maps
    from captum_cam_ext.attr.grad_cam import LayerGradCam
    from captum_cam_ext.backprop import guided_relus

    lams = [0.0, PAPER_LAM, decisions["lam_engage"]] if decisions["lam_engage"] != PAPER_LAM else [0.0, PAPER_LAM]
    specs = [run_spec("full", arch, 0, lam, "cosine", decisions["bn_mode"]) for lam in lams]
    if not all((ckpt_dir(preset) / f"{s['key']}.pt").is_file() for s in specs):
        return False
    models = [load_model(s, preset, torch.device("cpu")) for s in specs]
    test_x, test_y = fashion_mnist_tensors("test").tensors
    idx = torch.arange(8)
    x, y = test_x[idx], test_y[idx]
    rows: List[Tuple[str, Tensor]] = [("input", denorm(x))]
    names = ["baseline" if lam == 0 else f"lam={lam:g}" for lam in lams]
    for name, m in zip(names, models):
        rows.append((f"|grad| {name}", normalize_maps(saliency(m, x, y), eps=0)))
    with guided_relus(models[0]):
        rows.append(("guided |grad| baseline", normalize_maps(saliency(models[0], x, y), eps=0)))
    for name, m in zip(names, models):
        cam = LayerGradCam(m, cam_layer(arch, m)).attribute(x, target=y, relu_attributions=True).detach()
        rows.append((f"Grad-CAM {name}", normalize_maps(upsample_maps(cam, (28, 28)), eps=0)))
    fig, axes = plt.subplots(len(rows), len(idx), figsize=(1.2 * len(idx) + 1.8, 1.2 * len(rows)))
    for r, (label, imgs) in enumerate(rows):
        for c in range(len(idx)):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].detach().numpy(), cmap="gray" if r == 0 else "inferno", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(f"{ARCH_TITLE[arch]}, seed 0, first 8 test images (class-score gradients)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def stage_report(cfg: Dict[str, Any], preset: str, device: torch.device, shard: Tuple[int, int]) -> None:
    pdir = preset_dir(preset)
    sweep = read_json(pdir / "sweep.json")
    decisions = current_decisions(cfg, preset) if sweep else {}
    full = read_json(pdir / "full.json")
    cost = read_json(pdir / "cost.json")
    evals = load_evals(cfg, preset, decisions) if decisions else {}
    suffix = "" if preset == "cpu" else f"_{preset}"
    fig_dir = RESULTS / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    res: Dict[str, Any] = {"preset": preset, "config": cfg, "decisions": decisions, "sweep": sweep, "cost": cost,
                           "full": {k: {kk: vv for kk, vv in v.items() if kk != "history"} for k, v in full.items()},
                           "wall_seconds": read_json(pdir / "wall.json"), "comparisons": {}}  # fmt: skip
    for arch in cfg["seeds"]:
        for lam in sorted({PAPER_LAM, decisions.get("lam_engage", PAPER_LAM)}):
            bases, regs = arm_pairs(evals, cfg, decisions, arch, lam)
            if bases:
                res["comparisons"][f"{arch}/lam{lam:g}"] = {
                    "all": compare_arms(bases, regs), "both_correct": compare_arms(bases, regs, matched_accuracy=True)}
    if sweep:
        sweep_figure(cfg, sweep, fig_dir / f"guided_sweep{suffix}.png")
    figs = [arch for arch in cfg["seeds"] if decisions and maps_figure(cfg, preset, decisions, arch, fig_dir / f"guided_maps_{arch}{suffix}.png")]
    res["platform"] = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "loadavg_at_report": list(os.getloadavg())}  # fmt: skip
    write_json(RESULTS / f"guided{suffix}.json", res)
    (RESULTS / f"guided{suffix}.md").write_text(markdown(res, cfg, figs, suffix))
    log(f"wrote {RESULTS / f'guided{suffix}.md'}")


def markdown(res: Dict[str, Any], cfg: Dict[str, Any], figs: List[str], suffix: str) -> str:
    L: List[str] = []
    dec = res["decisions"]
    title = "Interpretable gradients at a scale where the regularizer takes effect (Fashion-MNIST)"
    L.append(f"# {title}\n")
    L.append(
        "Generated by `benchmarks/guided_bench.py --preset " + res["preset"] + " --stage report` from the cached "
        "stages (`benchmarks/cache/guided_" + res["preset"] + "/`). Method: Figueroa et al., *A Learning Paradigm "
        "for Interpretable Gradients* (VISAPP 2024, arXiv 2404.15024): `CE + lam * L_R`, `L_R` = batch mean of "
        "`1 - cos(dCE/dx, guided dCE/dx)`. Issue 14. Docs: `docs/interpretable_gradients.md`.\n"
    )
    verdict = RESULTS / f"guided_verdict{suffix}.md"
    if verdict.is_file():
        L.append(verdict.read_text().strip() + "\n")
    # setup
    wall = res.get("wall_seconds", {})
    L.append("## Setup\n")
    L.append(
        f"- Data: Fashion-MNIST (28x28 grey, normalised). Sweep: training images 0-{cfg['sweep_n'] - 1}, "
        f"{cfg['sweep_epochs']} epochs, seed 0, measured on held-out training images "
        f"{cfg['val_start']}-{cfg['val_start'] + cfg['n_val'] - 1}. Full runs: all {cfg['full_n']} training images, "
        f"{cfg['full_epochs']} epochs; test accuracy on {cfg['n_test']} test images; every per-image measure on "
        f"the first {cfg['n_eval']} test images (explained class = label).\n"
        f"- Recipe (all arms, all seeds): AdamW (lr {cfg['lr']}, weight decay {cfg['weight_decay']}), OneCycle "
        f"schedule, batch {cfg['batch']}; augmentation (sweep" + (" and full runs" if cfg["full_augment"] else " only")
        + ") = random shift by up to 2 pixels (black border) + horizontal flip; the seed fixes the initial weights, "
        "the data order and the augmentation, so the arms of a seed see the same batches. Guided gradient detached "
        "(stop-gradient); cosine error for the full runs.\n"
        f"- Models: {', '.join(ARCH_TITLE[a] for a in cfg['seeds'])}; CAM layer `layer4` / `features[-1]` (4x4).\n"
        "- Regularizer options ablated in the sweep: BatchNorm statistics for the two input gradients "
        "(`bn_mode=\"train\"`: the training forward's batch statistics; `\"eval\"`: running statistics, a second "
        "forward) and `reduction` (batch mean vs sum of the per-example errors).\n"
        "- Wall time of the stages (this machine, shared, 2 threads, nice 10): "
        + (", ".join(f"{k} {v / 60:.0f} min" for k, v in wall.items()) or "n/a") + ".\n"
    )
    # sweep
    sweep = res["sweep"]
    if sweep:
        arch = cfg["sweep_arch"]
        base = sweep.get(run_key("sweep", arch, 0, 0.0, "", "", ""), {})
        L.append("## Sweep: eval-mode cosine by lam, error and BatchNorm mode\n")
        L.append(
            f"{ARCH_TITLE[arch]}, {cfg['sweep_n']} images, {cfg['sweep_epochs']} epochs, one seed. *eval-mode cosine*: "
            "mean over the held-out images of the cosine between the standard and the guided input gradient of the "
            "per-example cross-entropy, model in eval mode (running BatchNorm statistics), the quantity the method "
            "optimises as saliency methods see it. Δ: minus the baseline's. The train-time cosine is the mean over "
            "the last epoch's batches, in the regularizer's BatchNorm mode.\n"
        )
        L.append("| error | BN mode | reduction | lam | held-out acc | eval-mode cosine | Δ vs baseline | eval-mode cosine (class score) | train-time cosine | min |")
        L.append("|---|---|---|---|---|---|---|---|---|---|")
        rows = sorted(sweep.values(), key=lambda r: (r["lam"] > 0, r["error"], r["bn_mode"], r["reduction"], r["lam"]))
        for r in rows:
            lab = ("–", "–", "–", "0 (baseline)") if r["lam"] == 0 else (r["error"], r["bn_mode"], r["reduction"], f"{r['lam']:g}")
            tc = r.get("train_cos_last_epoch", float("nan"))
            L.append(
                f"| {' | '.join(lab)} | {100 * r['acc']:.1f}% | {r['cos_loss']:.3f} | "
                f"{r['cos_loss'] - base.get('cos_loss', float('nan')):+.3f} | {r['cos_score']:.3f} | "
                f"{'–' if tc != tc else f'{tc:.3f}'} | {r['train_seconds'] / 60:.1f} |"
            )
        L.append("")
        if dec:
            L.append(
                f"Choice (rule fixed before the full runs, `sweep_decisions`): BatchNorm mode **{dec['bn_mode']}** (best "
                f"held-out eval-mode cosine by mode: {', '.join(f'{k} {v:.3f}' for k, v in dec['best_cos_by_bn_mode'].items())}); "
                f"engaging lam = **{dec['lam_engage']:g}** (smallest lam whose eval-mode cosine is at least "
                f"{dec['min_gain']} above the baseline's {dec['base_cos']:.3f}"
                + ("" if dec["engaged"] else "; none reached it, so the lam with the highest cosine") + ").\n"
            )
        L.append(f"![sweep](figures/guided_sweep{suffix}.png)\n")
    # cost
    cost = res["cost"]
    if cost:
        L.append("## Cost: regularized vs plain training step\n")
        L.append(
            f"Same batch, same initial weights, interleaved steps, median of {cost['pairs']} "
            f"({'CPU time' if cost['device'] == 'cpu' else 'wall time'}, {cost['threads']} thread(s), {cost['device']}; "
            f"load average {', '.join(f'{v:.1f}' for v in cost.get('loadavg', []))}). `native`: PyTorch's own double "
            "backward; `fast`: `double_backward_ops` (convolution input gradients as transposed convolutions, "
            "eval-mode BatchNorm as a multiply-add). Goal: <= 3x.\n"
        )
        variants = [v for v in VARIANTS if v != "plain"]
        L.append("| model | batch | plain (ms) | " + " | ".join(variants) + " |")
        L.append("|---|---|---|" + "---|" * len(variants))
        for name, m in cost["models"].items():
            cells = [f"{1000 * m['seconds'][v]:.0f} ms ({m['ratio'][v]:.2f}x)" for v in variants]
            L.append(f"| {ARCH_TITLE.get(name, name)} | {m['batch_shape'][0]} | {1000 * m['seconds']['plain']:.0f} | " + " | ".join(cells) + " |")
        L.append("")
        for name, m in cost["models"].items():
            prof = m.get("profile")
            if not prof:
                continue
            nodes = sorted({k for p in prof.values() for k in p if k != "total"}, key=lambda k: -max(p.get(k, 0) for p in prof.values()))[:8]
            L.append(f"Where the time goes, {ARCH_TITLE.get(name, name)} (profiler, seconds per step; autograd nodes include their children):\n")
            L.append("| node | " + " | ".join(prof) + " |")
            L.append("|---|" + "---|" * len(prof))
            L.append("| total (all ops) | " + " | ".join(f"{p['total']:.3f}" for p in prof.values()) + " |")
            for n in nodes:
                L.append(f"| {n} | " + " | ".join(f"{p.get(n, 0.0):.3f}" for p in prof.values()) + " |")
            L.append("")
    # full runs
    full = res["full"]
    if full:
        L.append("## Full training: test accuracy over seeds\n")
        L.append("| model | arm | seeds | test acc per seed | mean | 95% CI (seeds, t) | train min per run |")
        L.append("|---|---|---|---|---|---|---|")
        from captum_cam_ext.metrics.statistics import bootstrap_ci

        groups: Dict[Tuple[str, float], List[Dict[str, Any]]] = {}
        for r in full.values():
            groups.setdefault((r["arch"], r["lam"]), []).append(r)
        for (arch, lam), rs in sorted(groups.items()):
            rs.sort(key=lambda r: r["seed"])
            accs = [100 * r["test_acc"] for r in rs]
            ci = bootstrap_ci(accs, method="t") if len(accs) > 1 else (float("nan"), float("nan"))
            arm = "baseline (CE)" if lam == 0 else f"lam={lam:g} ({rs[0]['error']}, BN {rs[0]['bn_mode']})"
            L.append(
                f"| {ARCH_TITLE[arch]} | {arm} | {len(rs)} | {', '.join(f'{a:.2f}' for a in accs)} | {statistics.mean(accs):.2f}% | "
                + ("–" if len(accs) < 2 else f"[{ci[0]:.2f}, {ci[1]:.2f}]") + f" | {statistics.mean(r['train_seconds'] for r in rs) / 60:.0f} |"
            )
        L.append("")
    # comparisons
    for key, comp in res["comparisons"].items():
        arch, lam = key.split("/")
        c = comp["all"]
        assert c is not None
        n_seeds = next(iter(c["gradients"].values()))["n_seeds"]
        n_img = next(iter(c["gradients"].values()))["n_images"]
        L.append(f"## {ARCH_TITLE[arch]}: {lam.replace('lam', 'lam=')} vs baseline ({n_seeds} seed(s), {n_img} test images)\n")
        L.append(
            "Δ = regularized − baseline. 95% CI (images): paired percentile bootstrap over images of the per-image "
            "difference averaged over seeds (2,000 resamples); 95% CI (seeds): Student t over the per-seed mean "
            "differences. **Bold**: the interval favours the regularized model; _italic_: the baseline.\n"
        )
        L.append("### Gradients: eval-mode cosine and noise\n")
        L.append("| measure | baseline | regularized | Δ [95% CI, images] | Δ [95% CI, seeds] |")
        L.append("|---|---|---|---|---|")
        for k, (hib, d, glab) in GRAD_METRICS.items():
            g = c["gradients"][k]
            L.append(f"| {glab} | {g['base']:.{d}f} | {g['reg']:.{d}f} | {ci_cell(g, d, hib)} | {ci_cell(g, d, hib, 'ci_seeds')} |")
        L.append("")
        L.append("### CAM metrics with mask area and matched-area controls\n")
        L.append(
            "`AD − AD(constant)`: the map's Average Drop minus that of a constant mask with the same per-image area "
            "(what area alone gives); `AD − AD(random)`: minus a seeded random map at the same mean area; "
            "`matched AD/AI/AG`: the regularized model's masks raised to the power that gives the baseline's mean "
            "mask area for that method (compared with the baseline's own numbers).\n"
        )
        L.append("| method | metric | baseline | regularized | Δ [95% CI, images] | Δ [95% CI, seeds] | win rate (reg) |")
        L.append("|---|---|---|---|---|---|---|")
        metrics = dict(CAM_METRICS)
        metrics.update({"matched_AD": (False, 2, "matched-area AD↓"), "matched_AI": (True, 1, "matched-area AI↑"), "matched_AG": (True, 2, "matched-area AG↑")})
        for method in METHODS:
            for k, (hib, d, mlab) in metrics.items():
                m = c["methods"][method].get(k)
                if m is None:
                    continue
                L.append(f"| {method} | {mlab} | {m['base']:.{d}f} | {m['reg']:.{d}f} | {ci_cell(m, d, hib)} | {ci_cell(m, d, hib, 'ci_seeds')} | {m['win_rate']:.2f} |")
        L.append("")
        bc = comp["both_correct"]
        if bc is None:
            continue
        n_bc = next(iter(bc["gradients"].values()))["n_images"]
        L.append(f"### At matched accuracy: the {n_bc} images both models classify correctly (every seed)\n")
        L.append("| method | AD↓ Δ | AI↑ Δ | AD − AD(constant)↓ Δ | Ins↑ Δ | Del↓ Δ | ROAD↑ Δ |")
        L.append("|---|---|---|---|---|---|---|")
        for method in METHODS:
            mm = bc["methods"][method]
            L.append(f"| {method} | " + " | ".join(ci_cell(mm[k], CAM_METRICS[k][1], CAM_METRICS[k][0]) for k in ("AD", "AI", "AD-const", "Ins", "Del", "ROAD")) + " |")
        g = bc["gradients"]
        L.append(f"\nOn these images: eval-mode cosine Δ {ci_cell(g['cos_loss'], 3, True)}, total variation Δ {ci_cell(g['total_variation'], 3, False)}.\n")
    if figs:
        L.append("## Figures\n")
        for arch in figs:
            L.append(f"![{arch}](figures/guided_maps_{arch}{suffix}.png)\n")
        L.append("Rows: input; |class-score gradient| of each arm (seed 0); the baseline's guided-backprop gradient (the 'teacher'); Grad-CAM of each arm.\n")
    p = res["platform"]
    L.append(f"Platform: Python {p['python']}, torch {p['torch']}, {p['threads']} thread(s); load average when the report was written {', '.join(f'{v:.1f}' for v in p['loadavg_at_report'])}.\n")
    return "\n".join(L)


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------

STAGES = ("sweep", "cost", "train", "eval", "report")


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--stage", choices=STAGES + ("all",), default="all")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--shard", default="0/1", help="i/k: this process does every k-th run (parallel runs)")
    ap.add_argument("--jobs", type=int, default=None, help="run k shards as parallel processes (default: the preset's)")
    ap.add_argument("--eval-part", choices=("all", "base", "reg"), default="all", help=argparse.SUPPRESS)
    ap.add_argument("--sweep-part", choices=("all", "cosine", "rest"), default="all",
                    help="sweep runs: the cosine x lam x BN-mode part the full runs need, the rest, or all")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    cfg = PRESETS[args.preset]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu")
    shard_i, shard_k = (int(v) for v in args.shard.split("/"))
    stages = STAGES if args.stage == "all" else (args.stage,)
    jobs = cfg["jobs"] if args.jobs is None else args.jobs
    for stage in stages:
        t0 = time.perf_counter()
        if stage in ("sweep", "train", "eval") and jobs > 1 and args.shard == "0/1":
            for part in ("base", "reg") if stage == "eval" else ("all",):
                run_parallel(argv if argv is not None else sys.argv[1:], stage, jobs, part)
        elif stage == "eval":
            stage_eval(cfg, args.preset, device, (shard_i, shard_k), args.eval_part)
        elif stage == "sweep":
            stage_sweep(cfg, args.preset, device, (shard_i, shard_k), args.sweep_part)
        else:
            STAGE_FUNCS[stage](cfg, args.preset, device, (shard_i, shard_k))
        times = read_json(preset_dir(args.preset) / "wall.json")
        if args.shard == "0/1":
            times[stage] = times.get(stage, 0.0) + (time.perf_counter() - t0)
            write_json(preset_dir(args.preset) / "wall.json", times)
        log(f"stage {stage} done in {time.perf_counter() - t0:.0f}s")


def run_parallel(argv: List[str], stage: str, jobs: int, part: str = "all") -> None:
    """Run ``jobs`` shards of ``stage`` as parallel processes (GPU: small models leave it idle)."""
    drop = ("--stage", "--jobs", "--shard", "--eval-part")
    base: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in drop:
            skip = True
            continue
        if any(a.startswith(d + "=") for d in drop):
            continue
        base.append(a)
    procs = [
        subprocess.Popen([sys.executable, __file__, *base, "--stage", stage, "--shard", f"{i}/{jobs}",
                          "--jobs", "1", "--eval-part", part])  # fmt: skip
        for i in range(jobs)
    ]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"stage {stage}: shard exit codes {codes}")


STAGE_FUNCS: Dict[str, Callable[..., None]] = {"sweep": stage_sweep, "cost": stage_cost, "train": stage_train, "eval": stage_eval, "report": stage_report}

if __name__ == "__main__":
    main()
