# ruff: noqa: E501  (markdown table rows are long string literals)
"""Interpretable gradients (Figueroa et al., VISAPP 2024) reproduced small on Fashion-MNIST.

Baseline (cross-entropy) vs regularized (CE + lam * mean(1 - cos(standard grad, guided grad)))
training of a small ResNet-18-style and a small MobileNet-V2-style network with the same budget
(same data, order, seed, optimizer, number of steps), then:

- accuracy, training-step overhead (plain vs regularized step, measured side by side),
- gradient alignment (cosine between standard and guided input gradients, test images),
- Average Drop / Increase / Gain and Insertion / Deletion AUC for Grad-CAM, Grad-CAM++,
  XGrad-CAM, Score-CAM, LayerCAM and plain gradients,
- a lambda sweep (0, 1e-3, 7.5e-3, 3e-2) and the three error functions on the smaller model
  (fewer steps), and figures of gradients and CAMs of both models on the same test images.

Budget: the whole run is sized for ~20 minutes on ONE CPU thread (``torch.set_num_threads(1)``).
Weights are cached under ``benchmarks/cache/guided_*.pt`` (delete them to retrain).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/guided_bench.py            # full (~20 min)
    OMP_NUM_THREADS=1 python benchmarks/guided_bench.py --quick    # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captum_cam_ext import (  # noqa: E402
    LayerCam,
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerScoreCam,
    LayerXGradCam,
)
from captum_cam_ext.backprop import guided_relus  # noqa: E402
from captum_cam_ext.data.fashion_mnist import (  # noqa: E402
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_tensors,
)
from captum_cam_ext.metrics import confidence_metrics, deletion_auc, insertion_auc  # noqa: E402
from captum_cam_ext.metrics.alignment import gradient_alignment  # noqa: E402
from captum_cam_ext.training import InterpretableGradientLoss  # noqa: E402
from captum_cam_ext.training.loops import evaluate, train  # noqa: E402
from captum_cam_ext.training.models import SmallMobileNetV2, SmallResNet18  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache"

FULL = dict(
    n_train=4000,
    n_test=1000,
    n_attr=100,
    batch=64,
    epochs=3,
    sweep_steps=80,
    lr=2e-3,
    lam=7.5e-3,
    causal_steps=16,
    timing_pairs=6,
)
QUICK = dict(
    n_train=256,
    n_test=128,
    n_attr=16,
    batch=32,
    epochs=1,
    sweep_steps=4,
    lr=2e-3,
    lam=7.5e-3,
    causal_steps=8,
    timing_pairs=2,
)

ARCHS: Dict[str, Callable[[], nn.Module]] = {
    "resnet18s": lambda: SmallResNet18(num_classes=10, in_channels=1, widths=(16, 32, 64, 128)),
    "mobilenetv2s": lambda: SmallMobileNetV2(num_classes=10, in_channels=1, widths=(16, 16, 24, 32, 128)),
}
ARCH_TITLE = {
    "resnet18s": "ResNet-18-style (16-32-64-128)",
    "mobilenetv2s": "MobileNet-V2-style (ReLU6)",
}


def cam_layer(name: str, model: nn.Module) -> nn.Module:
    return model.layer4 if name == "resnet18s" else model.features[-1]  # type: ignore[return-value]


def denorm(x: Tensor) -> Tensor:
    return x * FASHION_MNIST_STD + FASHION_MNIST_MEAN


def renorm(x: Tensor) -> Tensor:
    return (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD


BLACK = (0.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD  # a black pixel in the normalised space


# ------------------------------------------------------------------------------------------------
# training (cached)
# ------------------------------------------------------------------------------------------------


def train_cached(
    tag: str,
    arch: str,
    data: TensorDataset,
    cfg: Dict[str, Any],
    lam: float,
    error: str = "cosine",
    max_steps: Any = None,
    epochs: Any = None,
) -> Tuple[nn.Module, Dict[str, Any]]:
    key = f"guided_{tag}_{arch}_lam{lam:g}_{error}_n{cfg['n_train']}_e{epochs or cfg['epochs']}_s{max_steps}"
    path = CACHE / f"{key}.pt"
    torch.manual_seed(0)
    model = ARCHS[arch]()
    if path.is_file():
        blob = torch.load(path, weights_only=False)
        model.load_state_dict(blob["state"])
        return model.eval(), blob["info"]
    gen = torch.Generator().manual_seed(1)
    loader = DataLoader(data, batch_size=cfg["batch"], shuffle=True, generator=gen, drop_last=True)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    t0 = time.perf_counter()
    hist = train(
        model,
        loader,
        epochs=epochs or cfg["epochs"],
        lam=lam,
        error=error,
        optimizer=opt,
        max_steps=max_steps,
        track_alignment=lam > 0,
        progress=sys.stderr.isatty(),
    )
    info = {
        "history": hist,
        "seconds": time.perf_counter() - t0,
        "steps": sum(h["steps"] for h in hist),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save({"state": model.state_dict(), "info": info}, path)
    print(f"  trained {key}: {info['seconds']:.0f}s, {info['steps']:.0f} steps", flush=True)
    return model.eval(), info


# ------------------------------------------------------------------------------------------------
# timing: plain vs regularized step, side by side
# ------------------------------------------------------------------------------------------------


def step_timing(make: Callable[[], nn.Module], x: Tensor, y: Tensor, pairs: int, lam: float) -> Dict[str, float]:
    torch.manual_seed(0)
    plain_m = make().train()
    reg_m = copy.deepcopy(plain_m)
    opt_p = torch.optim.Adam(plain_m.parameters(), lr=1e-3)
    opt_r = torch.optim.Adam(reg_m.parameters(), lr=1e-3)
    loss = InterpretableGradientLoss(reg_m, lam=lam)

    def plain() -> None:
        opt_p.zero_grad()
        F.cross_entropy(plain_m(x), y).backward()
        opt_p.step()

    def reg() -> None:
        opt_r.zero_grad()
        loss(x, y).total.backward()
        opt_r.step()

    plain()
    reg()  # warm-up
    tp: List[float] = []
    tr: List[float] = []
    for _ in range(pairs):
        for f, acc in ((plain, tp), (reg, tr)):
            t = time.perf_counter()
            f()
            acc.append(time.perf_counter() - t)
    p, r = statistics.median(tp), statistics.median(tr)
    return {"plain_s": p, "reg_s": r, "ratio": r / p}


# ------------------------------------------------------------------------------------------------
# attribution metrics
# ------------------------------------------------------------------------------------------------


def saliency_maps(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xi).gather(1, target[:, None]).sum(), xi)
    return g.abs().sum(1, keepdim=True)


def method_maps(arch: str, model: nn.Module, x: Tensor, target: Tensor) -> Dict[str, Tensor]:
    layer = cam_layer(arch, model)
    maps: Dict[str, Tensor] = {}
    for name, cls, kw in (
        ("Grad-CAM", LayerGradCam, {}),
        ("Grad-CAM++", LayerGradCamPlusPlus, {}),
        ("XGrad-CAM", LayerXGradCam, {}),
        ("Score-CAM", LayerScoreCam, {"batch_size": 256}),
        ("LayerCAM", LayerCam, {}),
    ):
        cam = cls(model, layer, **kw)
        maps[name] = cam.attribute(x, target=target, relu_attributions=True).detach()
    maps["Gradient"] = saliency_maps(model, x, target).detach()
    return maps


def attribution_metrics(
    arch: str, model: nn.Module, x: Tensor, y: Tensor, cfg: Dict[str, Any]
) -> Dict[str, Dict[str, float]]:
    model.eval()
    out: Dict[str, Dict[str, float]] = {}
    for name, maps in method_maps(arch, model, x, y).items():
        conf = confidence_metrics(model, x, maps, target=y, denormalize=denorm, renormalize=renorm)
        common = dict(target=y, n_steps=cfg["causal_steps"], max_forwards_per_batch=512)
        ins = insertion_auc(model, x, maps, **common)  # blurred substrate
        dele = deletion_auc(model, x, maps, substrate=BLACK, **common)
        out[name] = {
            "AD": conf.average_drop,
            "AI": conf.average_increase,
            "AG": conf.average_gain,
            "Ins": float(ins.mean()),  # type: ignore[union-attr]
            "Del": float(dele.mean()),  # type: ignore[union-attr]
        }
    return out


# ------------------------------------------------------------------------------------------------
# figures
# ------------------------------------------------------------------------------------------------


def figure(
    arch: str,
    base: nn.Module,
    reg: nn.Module,
    x: Tensor,
    y: Tensor,
    path: Path,
    title: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from captum_cam_ext import upsample_maps

    def norm(m: Tensor) -> Tensor:
        m = m - m.flatten(1).min(1)[0].view(-1, 1, 1, 1)
        return m / m.flatten(1).max(1)[0].clamp_min(1e-12).view(-1, 1, 1, 1)

    rows: List[Tuple[str, Tensor]] = [("input", denorm(x))]
    for tag, m in (("baseline", base), ("regularized", reg)):
        m.eval()
        rows.append((f"|grad| {tag}", norm(saliency_maps(m, x, y))))
    with guided_relus(base):
        rows.append(("guided |grad| baseline", norm(saliency_maps(base, x, y))))
    for cname, cls in (("Grad-CAM", LayerGradCam), ("LayerCAM", LayerCam)):
        for tag, m in (("baseline", base), ("regularized", reg)):
            maps = cls(m, cam_layer(arch, m)).attribute(x, target=y, relu_attributions=True)
            rows.append((f"{cname} {tag}", norm(upsample_maps(maps.detach(), (28, 28)))))
    n = x.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n + 1.6, 1.3 * len(rows)))
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c, 0].detach().numpy(), cmap="gray" if r == 0 else "inferno", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center")
            if r == 0:
                ax.set_title(FASHION_MNIST_CLASSES[int(y[c])], fontsize=7)
    fig.suptitle(title or f"{ARCH_TITLE[arch]}: baseline vs regularized (lam=7.5e-3, cosine)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_figure(cfg: Dict[str, Any], suffix: str) -> None:
    """Gradients of the sweep's lam=0 and lam=0.3 MobileNet-style models (cached weights)."""
    train_set = fashion_mnist_tensors("train", limit=cfg["n_train"])
    xt, yt = fashion_mnist_tensors("test", limit=cfg["n_test"]).tensors
    idx = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])[: min(8, cfg["n_attr"])]
    arch = "mobilenetv2s"
    base, _ = train_cached(f"sweep{suffix}", arch, train_set, cfg, 0.0, max_steps=cfg["sweep_steps"], epochs=99)
    strong, _ = train_cached(f"sweep{suffix}", arch, train_set, cfg, 0.3, max_steps=cfg["sweep_steps"], epochs=99)
    figure(
        arch,
        base,
        strong,
        xt[idx],
        yt[idx],
        RESULTS / f"guided_sweep_lam0.3{suffix}.png",
        title=f"{ARCH_TITLE[arch]}, {cfg['sweep_steps']} steps: lam=0 vs lam=0.3 (cosine)",
    )


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def fmt(v: float, d: int = 2) -> str:
    return f"{v:.{d}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (results not written to guided.md)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite guided.md and the sweep figure from guided.json and the cached weights",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = QUICK if args.quick else FULL
    suffix = "_quick" if args.quick else ""
    if args.report_only:
        res = json.loads((RESULTS / f"guided{suffix}.json").read_text())
        sweep_figure(cfg, suffix)
        write_markdown(res, RESULTS / f"guided{suffix}.md", suffix)
        return
    t_start = time.perf_counter()
    train_set = fashion_mnist_tensors("train", limit=cfg["n_train"])
    test_set = fashion_mnist_tensors("test", limit=cfg["n_test"])
    xt, yt = test_set.tensors
    x_attr, y_attr = xt[: cfg["n_attr"]], yt[: cfg["n_attr"]]
    test_loader = DataLoader(test_set, batch_size=250)
    res: Dict[str, Any] = {"config": cfg, "main": {}, "timing": {}, "sweep": {}}
    timings: Dict[str, float] = {}

    # 1. main runs: baseline vs regularized, both architectures
    models: Dict[Tuple[str, str], nn.Module] = {}
    for arch in ARCHS:
        for tag, lam in (("base", 0.0), ("reg", cfg["lam"])):
            t = time.perf_counter()
            m, info = train_cached(f"main{suffix}", arch, train_set, cfg, lam)
            models[(arch, tag)] = m
            ev = evaluate(m, test_loader)
            align_score = float(gradient_alignment(m.eval(), x_attr, y_attr, objective="score").mean())
            res["main"].setdefault(arch, {})[tag] = {
                "lam": lam,
                "acc": ev["acc"],
                "test_ce": ev["ce"],
                "cos_loss": ev["cosine"],
                "cos_score": align_score,
                "train_seconds": info["seconds"],
                "steps": info["steps"],
                "history": info["history"],
            }
            timings[f"train+eval {arch} {tag}"] = time.perf_counter() - t
            print(f"{arch} {tag}: acc {ev['acc']:.3f} cos(loss) {ev['cosine']:.3f}", flush=True)

    # 2. step-time overhead, side by side (one batch of the training images)
    t = time.perf_counter()
    xb, yb = train_set.tensors[0][: cfg["batch"]], train_set.tensors[1][: cfg["batch"]]
    for arch, make in ARCHS.items():
        res["timing"][arch] = step_timing(make, xb, yb, cfg["timing_pairs"], cfg["lam"])
    import torchvision

    x3 = torch.randn(8, 3, 32, 32)
    y3 = torch.randint(0, 10, (8,))
    for name in ("resnet18", "mobilenet_v2"):
        res["timing"][f"torchvision {name} (3x32x32, batch 8)"] = step_timing(
            lambda name=name: getattr(torchvision.models, name)(weights=None, num_classes=10),
            x3,
            y3,
            3,
            cfg["lam"],
        )
    timings["timing"] = time.perf_counter() - t
    print("timing", json.dumps(res["timing"]), flush=True)

    # 3. attribution metrics, baseline vs regularized
    t = time.perf_counter()
    for arch in ARCHS:
        for tag in ("base", "reg"):
            res["main"][arch][tag]["attr"] = attribution_metrics(arch, models[(arch, tag)], x_attr, y_attr, cfg)
    timings["attribution metrics"] = time.perf_counter() - t

    # 4. figures
    t = time.perf_counter()
    idx = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])[: min(8, cfg["n_attr"])]
    RESULTS.mkdir(parents=True, exist_ok=True)
    for arch in ARCHS:
        figure(
            arch,
            models[(arch, "base")],
            models[(arch, "reg")],
            xt[idx],
            yt[idx],
            RESULTS / f"guided_{arch}{suffix}.png",
        )
    timings["figures"] = time.perf_counter() - t

    # 5. sweep on the smaller model (fewer steps): lambda and error function
    t = time.perf_counter()
    arch = "mobilenetv2s"
    runs = [
        (0.0, "cosine"),
        (1e-3, "cosine"),
        (7.5e-3, "cosine"),
        (3e-2, "cosine"),
        (0.3, "cosine"),
    ]
    runs += [(7.5e-3, "mse"), (7.5e-3, "mae")]
    for lam, error in runs:
        m, info = train_cached(
            f"sweep{suffix}",
            arch,
            train_set,
            cfg,
            lam,
            error,
            max_steps=cfg["sweep_steps"],
            epochs=99,
        )
        ev = evaluate(m, test_loader)
        maps = LayerGradCam(m, cam_layer(arch, m)).attribute(x_attr, target=y_attr, relu_attributions=True)
        conf = confidence_metrics(m, x_attr, maps, target=y_attr, denormalize=denorm, renormalize=renorm)
        ins = float(insertion_auc(m, x_attr, maps, target=y_attr, n_steps=cfg["causal_steps"]).mean())  # type: ignore[union-attr]
        last = info["history"][-1]
        res["sweep"][f"{lam:g}/{error}"] = {
            "lam": lam,
            "error": error,
            "acc": ev["acc"],
            "cos_loss": ev["cosine"],
            "train_reg_last_epoch": last["reg"],
            "step_s": last["step_seconds"],
            "gradcam_AD": conf.average_drop,
            "gradcam_AI": conf.average_increase,
            "gradcam_Ins": ins,
        }
    sweep_figure(cfg, suffix)
    timings["sweep"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    res["timings"] = timings
    res["platform"] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_at_end": list(os.getloadavg()),
    }
    (RESULTS / f"guided{suffix}.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, RESULTS / f"guided{suffix}.md", suffix)
    print(f"done in {timings['total']:.0f}s", flush=True)


def write_markdown(res: Dict[str, Any], path: Path, suffix: str) -> None:
    cfg = res["config"]
    tm = res["timings"]
    L: List[str] = []
    L.append("# Interpretable gradients on Fashion-MNIST (small reproduction)\n")
    L.append(
        "Generated by `benchmarks/guided_bench.py`. Method: Figueroa et al., *A Learning Paradigm for "
        "Interpretable Gradients* (VISAPP 2024, arXiv 2404.15024): train with "
        "`CE + lam * mean(1 - cos(dCE/dx, guided dCE/dx))`. The paper used CIFAR-100 with full "
        "ResNet-18 / MobileNet-V2; **this is a deliberately tiny, CPU-only run, not the paper's "
        "setting**, and its numbers are not comparable to the paper's tables (which we could not "
        "read). See `docs/interpretable_gradients.md`.\n"
    )
    L.append("## Budget and setup\n")
    L.append(
        f"- Budget: whole experiment sized for ~20 min on **1 CPU thread** "
        f"(`torch.set_num_threads(1)`, shared 2-core machine); this run took "
        f"**{tm['total'] / 60:.1f} min** ({', '.join(f'{k}: {v:.0f}s' for k, v in tm.items() if k != 'total')}; "
        "cached weights are reused on reruns, so a rerun is faster).\n"
        f"- Data: first {cfg['n_train']} Fashion-MNIST training images, 28x28 grey, normalised; "
        f"accuracy on the first {cfg['n_test']} test images; attribution metrics on the first "
        f"{cfg['n_attr']} test images, explained class = ground-truth label.\n"
        f"- Training: Adam lr {cfg['lr']}, batch {cfg['batch']}, {cfg['epochs']} epochs "
        f"(same seed, data order, steps for baseline and regularized), lam = {cfg['lam']}, cosine "
        "error, guided gradient detached (stop-gradient), no augmentation.\n"
        "- Models: `SmallResNet18` (torchvision BasicBlocks, widths 16-32-64-128, 3x3 stem, no max-pool; "
        "CAM layer `layer4`, 4x4) and `SmallMobileNetV2` (torchvision InvertedResidual, ReLU6, "
        "widths 16-16-24-32-128; CAM layer `features[-1]`, 7x7).\n"
        "- Metrics (`captum_cam_ext.metrics`): AD/AI/AG mask the [0,1] image with the upsampled, "
        "min-max-normalised map (then re-normalise); Insertion starts from a Gaussian blur "
        f"(11x11, sigma 5), Deletion replaces pixels by black; {cfg['causal_steps']} steps. "
        "CAMs with ReLU; Gradient = |d y_c / dx|.\n"
    )
    L.append("## Accuracy, alignment, cost\n")
    L.append("| model | training | test acc | cos(grad, guided grad) of CE | cos for class score | train time (s) |")
    L.append("|---|---|---|---|---|---|")
    for arch, d in res["main"].items():
        for tag in ("base", "reg"):
            r = d[tag]
            name = "baseline (CE)" if tag == "base" else f"regularized (lam={r['lam']:g})"
            L.append(
                f"| {ARCH_TITLE[arch]} | {name} | {fmt(100 * r['acc'], 1)}% | {fmt(r['cos_loss'], 3)} | "
                f"{fmt(r['cos_score'], 3)} | {r['train_seconds']:.0f} |"
            )
    L.append("")
    L.append(
        "Step time, plain CE step vs regularized step on the same batch (median of interleaved pairs, 1 thread):\n"
    )
    L.append("| model | plain step (ms) | regularized step (ms) | ratio (goal <= 3x) |")
    L.append("|---|---|---|---|")
    for name, t in res["timing"].items():
        L.append(
            f"| {ARCH_TITLE.get(name, name)} | {1000 * t['plain_s']:.0f} | {1000 * t['reg_s']:.0f} | {t['ratio']:.2f}x |"
        )
    L.append("")
    L.append("## Attribution metrics, baseline vs regularized\n")
    L.append("AD lower is better; AI, AG, Ins higher; Del lower. Bold: the better of the two trainings.\n")
    better = {"AD": min, "AI": max, "AG": max, "Ins": max, "Del": min}
    for arch, d in res["main"].items():
        L.append(f"### {ARCH_TITLE[arch]}\n")
        L.append(
            "| method | AD↓ base | AD↓ reg | AI↑ base | AI↑ reg | AG↑ base | AG↑ reg | Ins↑ base | Ins↑ reg | Del↓ base | Del↓ reg |"
        )
        L.append("|---|" + "---|" * 10)
        wins = 0
        total = 0
        for method in d["base"]["attr"]:
            cells = []
            for k in ("AD", "AI", "AG", "Ins", "Del"):
                dd = 1 if k in ("AD", "AI", "AG") else 3
                b = round(d["base"]["attr"][method][k], dd)
                r = round(d["reg"]["attr"][method][k], dd)
                best = better[k](b, r)
                cb = f"**{fmt(b, dd)}**" if b == best and b != r else fmt(b, dd)
                cr = f"**{fmt(r, dd)}**" if r == best and b != r else fmt(r, dd)
                cells += [cb, cr]
                total += 1
                wins += int(r == best and b != r)
            L.append(f"| {method} | " + " | ".join(cells) + " |")
        L.append(f"\nRegularized better on {wins} of {total} (method, metric) pairs.\n")
    L.append("## Sweep on the smaller model (MobileNet-V2-style, fewer steps)\n")
    L.append(
        f"{cfg['sweep_steps']} steps of batch {cfg['batch']} each, same seed; Grad-CAM metrics on the "
        f"{cfg['n_attr']} attribution images. MSE/MAE use the same lam as cosine (the paper's setting for "
        "them was not retrieved); their scale is that of the per-example input gradients. lam = 0.3 is "
        "our extra point (outside the issue's grid) to show what a strong regularizer does.\n"
    )
    L.append(
        "| lam | error | test acc | cos(grad, guided) | train L_R (last epoch) | step (ms) | Grad-CAM AD↓ | AI↑ | Ins↑ |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in res["sweep"].values():
        L.append(
            f"| {r['lam']:g} | {r['error']} | {fmt(100 * r['acc'], 1)}% | {fmt(r['cos_loss'], 3)} | "
            f"{r['train_reg_last_epoch']:.3g} | {1000 * r['step_s']:.0f} | {fmt(r['gradcam_AD'], 1)} | "
            f"{fmt(r['gradcam_AI'], 1)} | {fmt(r['gradcam_Ins'], 3)} |"
        )
    L.append("")
    L.append("## Figures\n")
    for arch in res["main"]:
        L.append(f"![{arch}](guided_{arch}{suffix}.png)\n")
    L.append(f"![sweep](guided_sweep_lam0.3{suffix}.png)\n")
    L.append(
        "Rows: input; |standard gradient| of the class score for the baseline and the regularized model "
        "(last figure: the sweep's lam=0 and lam=0.3 models); "
        "the baseline's guided-backprop gradient (the 'teacher'); Grad-CAM and LayerCAM of both models.\n"
    )
    L.append(
        f"Platform: Python {res['platform']['python']}, torch {res['platform']['torch']}, "
        f"{res['platform']['threads']} thread, {res['platform']['cpu']}; load average at the end "
        f"{', '.join(f'{v:.1f}' for v in res['platform'].get('loadavg_at_end', []))} "
        "(other jobs shared the 2 cores: absolute times are inflated, the side-by-side ratios less so).\n"
    )
    path.write_text("\n".join(L))


if __name__ == "__main__":
    main()
