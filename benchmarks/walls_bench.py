"""Regenerate benchmarks/results/walls.md: the see-through-walls audit and the theory check.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/walls_bench.py [--n-test 1000] [--epochs 3]
        [--draws 20000] [--no-dense]

Writes ``benchmarks/results/walls.md``, ``walls_theory.png``, ``walls_maps_split.png``,
``walls_maps_dense.png`` and ``walls.json``; the blind models are cached in
``benchmarks/cache/blind_*.pt`` (delete them to retrain).  One thread; about 5-10 minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Dict

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captum_cam_ext.theory import (  # noqa: E402
    methods_at_init,
    methods_markdown,
    plot_sweep,
    sweep_markdown,
    theory_sweep,
)
from captum_cam_ext.walls.audit import (  # noqa: E402
    DATASETS,
    audit_markdown,
    audit_pairs,
    default_methods,
    plot_audit_maps,
    train_blind_model,
)
from captum_cam_ext.walls.datasets import stacked_fashion_mnist  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--n-train", type=int, default=None)
    ap.add_argument("--draws", type=int, default=20000)
    ap.add_argument("--no-dense", action="store_true", help="skip the dense-mask wall")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--cache-dir", default=str(ROOT / "benchmarks" / "cache"))
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    record: dict = {"args": vars(args), "torch": torch.__version__,
                    "python": platform.python_version()}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # ---------------------------------------------------------------- theory vs Monte-Carlo
    t0 = time.perf_counter()
    sweep = theory_sweep(n_filters=(1, 2, 4, 8, 16, 32), visible_rows=(2, 4, 6), height=10,
                         width=10, kernel_size=3, sigma_w=0.7, sigma_theta=1.3,
                         n_samples=args.draws, seed=0)
    # honesty check, not a replacement: configurations with |z| > 3 are re-run with 3 other
    # seeds and the extra z-scores are reported next to the table
    from captum_cam_ext import LayerGradCam
    from captum_cam_ext.theory import GradCamAtInitAnalyzer

    x_sweep = torch.rand(1, 10, 10, generator=torch.Generator().manual_seed(0))
    reruns = []
    for r in sweep:
        if abs(r["leak_z"]) > 3:
            an = GradCamAtInitAnalyzer(1, 10, 10, 3, r["V"], r["visible_rows"], 0.7, 1.3)
            zs = [an.monte_carlo(x_sweep, args.draws, seed=s, method=LayerGradCam).leak_z
                  for s in (101, 102, 103)]
            reruns.append((r["V"], r["visible_rows"], r["leak_z"], zs))
    fig = plot_sweep(sweep)
    fig.savefig(out / "walls_theory.png", dpi=110)
    plt.close(fig)
    t_sweep = time.perf_counter() - t0
    t0 = time.perf_counter()
    meths = default_methods()
    at_init = methods_at_init(meths, n_samples=args.draws,
                              n_samples_perturbation=max(200, args.draws // 10))
    t_init = time.perf_counter() - t0
    record["theory"] = {"sweep": sweep, "methods": at_init, "seconds": [t_sweep, t_init],
                        "reruns": reruns}

    # ---------------------------------------------------------------- the audits
    audits: Dict[str, Any] = {}
    kinds = ["split"] + ([] if args.no_dense else ["dense"])
    for kind in kinds:
        model: Any
        model, info = train_blind_model(kind, args.epochs, args.n_train, seed=0,
                                        cache_dir=args.cache_dir, progress=args.progress)
        res = {}
        maps_fig = None
        for name, mode in DATASETS.items():
            pairs = stacked_fashion_mnist("test", mode, n=args.n_test, seed=1)
            r = audit_pairs(model, pairs, meths, progress=args.progress, keep_maps=4)
            r["mode"] = mode
            maps = {k: v.pop("maps") for k, v in r["methods"].items()}
            if mode == "same":
                maps_fig = (pairs, maps)
            res[name] = r
        assert maps_fig is not None
        wall = int(getattr(model, "split_row", getattr(model, "band_start", 0)))
        fig = plot_audit_maps(maps_fig[0], maps_fig[1], wall)
        fig.savefig(out / f"walls_maps_{kind}.png", dpi=100)
        plt.close(fig)
        audits[kind] = {"train": info, "datasets": res, "wall_row": wall,
                        "visible_feature_rows": int(model.visible_feature_rows),
                        "feature_rows": int(model.feature_shape[1])}
    record["audits"] = audits
    total = time.perf_counter() - t_start
    record["total_seconds"] = total
    (out / "walls.json").write_text(json.dumps(record, indent=1, default=str))

    # ---------------------------------------------------------------- markdown
    md = [
        "# See-through-walls audit (benchmarks/walls_bench.py)",
        "",
        f"Regenerate: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/walls_bench.py` "
        f"(this run: {total:.0f} s on 1 thread, torch {torch.__version__}; CPU shared with "
        "other jobs, so times are indicative).",
        "",
        "Paper: Taimeskhanov, Sicre & Garreau, *CAM-based methods can see through walls* "
        "(arXiv 2404.01964). The models, datasets, closed forms and metrics other than the "
        "paper's ratio are our construction (see docs/see_through_walls.md).",
        "",
        "## 1. Blind models on stacked Fashion-MNIST",
        "",
        "Datasets: 56x28 images, two Fashion-MNIST test images stacked; label = class of the top "
        "image. **D1**: bottom image of another class. **D2**: bottom image of the same class. "
        f"{args.n_test} images each (seeded pairing). CAM target: the model's predicted class; "
        "target layer: the ReLU whose output covers the whole image; all maps with "
        "`relu_attributions=True`.",
        "",
        "Columns: *wall ratio* = the paper's ||S[band]||/||S|| on the min-max normalized map "
        "upsampled to 56x28 (bilinear as in the paper's code, and nearest, which does not bleed "
        "across the wall); a uniform map scores sqrt(band rows / 56). *Positive mass* = share "
        "of the positive saliency behind the wall; *images with positive saliency* = share of "
        "images with any positive value there; *unseen/seen mean ratio* = median over images. "
        "For the split model these three are computed at the layer's resolution, where the "
        "unseen part is exactly the lower feature rows; for the dense wall on the upsampled map. "
        "Mean ± std over images. A faithful map scores 0. D1 and D2 share the same top images "
        "(same seed), only the bottom images differ, so maps that ignore the bottom (HiResCAM, "
        "LayerCAM, Eigen-Grad-CAM) score the same on both.",
        "",
        "Reading: every method that spreads a channel weight over the whole map (Grad-CAM, "
        "Grad-CAM++, XGrad-CAM, Eigen-CAM, Score-CAM, Ablation-CAM, Conceptor-CAM) puts about "
        "half of its positive mass behind the wall on D2, and on almost every image; HiResCAM and "
        "LayerCAM (element-wise gradient x activation, 0 where the gradient is 0) put none; "
        "Eigen-Grad-CAM leaks only through the centring of its map (a constant `-mean` behind "
        "the wall, positive on ~9% of images). The split model's non-zero bilinear ratio for "
        "HiResCAM/LayerCAM is upsampling bleed across the wall (the 7th and 8th feature rows "
        "are interpolated): with nearest upsampling it is exactly 0.",
        "",
    ]
    for kind, a in audits.items():
        info = a["train"]
        if kind == "split":
            title = ("### Split-trunk blind model (ours): logits bit-identical whatever rows "
                     "28..55 contain")
            uni = ((56 - a["wall_row"]) / 56) ** 0.5
            desc = (f"Shared VGG-like trunk (conv16-pool-conv32-pool-conv32) run separately on "
                    f"rows 0..27 and 28..55, feature maps concatenated to 32x14x7, head reads "
                    f"feature rows 0..{a['visible_feature_rows'] - 1}. Invisible band: input rows "
                    f"{a['wall_row']}..55 (uniform-map ratio {uni:.3f}).")
        else:
            title = "### Dense-mask wall (the paper's construction)"
            desc = (f"Same trunk over the full image (32x14x7 features); the first dense layer's "
                    f"weights on feature rows {a['visible_feature_rows']}..13 are masked to 0 "
                    f"(in every forward). Receptive field: 18 rows, stride 4, so the invisible "
                    f"band is input rows {a['wall_row']}..55 (computed, and tested with "
                    f"autograd); uniform-map ratio {((56 - a['wall_row']) / 56) ** 0.5:.3f}.")
        n_tr = info.get("n_train", "all")
        md += [title, "", desc,
               f"Training: Adam lr 1e-3, batch 128, {info.get('epochs')} epochs on {n_tr} "
               f"stacked D1 training images (cached: benchmarks/cache/; "
               f"{info.get('train_seconds', float('nan')):.0f} s when trained).", ""]
        md.append(audit_markdown(a["datasets"]))
        md.append(f"![maps](walls_maps_{kind}.png)")
        md.append("")
    md += [
        "## 2. Theory vs Monte-Carlo (masked CNN at initialization)",
        "",
        "Masked CNN: 1x10x10 input (uniform noise, seed 0), 3x3 valid conv with V filters "
        "(sigma_W = 0.7) -> ReLU (CAM layer, 8x8) -> linear head reading the top `visible rows` "
        "feature rows (sigma_Theta = 1.3). *E[leak]* = closed-form expected Grad-CAM mass on the "
        "masked rows; *leak MC* = mean ± standard error over "
        f"{args.draws} sampled networks of the package's own `LayerGradCam` "
        "(`relu_attributions=True`); z = (MC - theory)/SE; *max abs z* is over all 64 "
        "positions (visible ones included: the closed form covers them). P(>0): "
        "(1 - 2^-V)/2 vs the MC rate on masked positions.",
        "",
        sweep_markdown(sweep),
        "",
        (f"{len(sweep)} configurations; |z| > 3 in {len(reruns)}"
         + ("".join(f"; (V={v}, {vr} visible rows): z = {z:.2f}, re-run with seeds 101-103: "
                    + ", ".join(f"{q:.2f}" for q in zs) for v, vr, z, zs in reruns)) + "."),
        "",
        "![theory vs Monte-Carlo](walls_theory.png)",
        "",
        "Every CAM of the core on the same model (V = 8, 4 of 8 rows visible); HiResCAM and "
        "LayerCAM have closed forms too (exactly 0 behind the wall). Score-CAM, Ablation-CAM and "
        "Conceptor-CAM (`negatives=\"channels\"`: one output, no competitor classes) use a "
        "tenth of the draws:",
        "",
        methods_markdown(at_init),
        "",
    ]
    (out / "walls.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"total {total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
