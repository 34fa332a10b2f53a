"""Evaluation that cannot be gamed: the numbers behind ``docs/evaluating.md`` (issue 11).

Writes ``benchmarks/results/metrics.md`` (and ``metrics.json``). One CPU thread; each section's
result is cached under ``benchmarks/cache/metrics_bench_*.json`` (delete it, or pass ``--force``,
to recompute)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/metrics_bench.py [--quick] [--force]

Sections
--------
1. ROAD speed and parity: ``captum_cam_ext.metrics.road`` against pytorch-grad-cam's ROAD
   classes (``NoisyLinearImputer(noise=0)``, raw logits) on 100 Fashion-MNIST test images (28 x 28)
   and on the 6 bundled photos at 224 x 224 (EfficientNet-Lite0), Grad-CAM maps.
2. The area effect: Grad-CAM, Conceptor-CAM (Grad-CAM base) and the matched-area controls
   (Grad-CAM ** p with Conceptor-CAM's mean area, Grad-CAM ** 0.5, a blur, a constant map and a
   seeded random map at Grad-CAM's area) on 1000 Fashion-MNIST test images (0-999; the CNN of
   ``benchmarks/conceptor_bench.py``), with ``evaluate(controls=True)``: AD / AI / AG with mask
   area, deletion / insertion AUC, ROAD; paired bootstrap 95% intervals over images.
3. ROAD's ties: threshold semantics (the definition and the reference code) against exact
   nominal counts (``ties="rank"``) for Grad-CAM, whose ReLU leaves exact zeros.
4. Sanity checks for Grad-CAM on 100 images: cascading parameter randomisation (Spearman and
   SSIM per step) and the data-independence control, next to a map that ignores the model (the
   input itself) as a negative control.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captum_cam_ext.attr.grad_cam import LayerGradCam  # noqa: E402
from captum_cam_ext.evaluation import evaluate, results_markdown  # noqa: E402
from captum_cam_ext.metrics.road import road  # noqa: E402
from captum_cam_ext.metrics.sanity import data_independence, parameter_randomization  # noqa: E402
from captum_cam_ext.metrics.statistics import comparisons_markdown, paired_comparison  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "cache"
PCTS = [10, 20, 30, 40, 50, 60, 70, 80, 90]


class FashionCNN(nn.Module):
    """The Fashion-MNIST CNN of ``benchmarks/conceptor_bench.py`` (weights ``fmnist_cnn_bn.pt``)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64),
        )  # fmt: skip
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.body(x))), 1))


def fashion(n: int) -> Tuple[nn.Module, Tensor, Tensor]:
    from captum_cam_ext.data import fashion_mnist_tensors

    path = CACHE / "fmnist_cnn_bn.pt"
    if not path.is_file():
        raise SystemExit(f"{path} is missing; run benchmarks/conceptor_bench.py once to train and cache it")
    model = FashionCNN()
    model.load_state_dict(torch.load(path, map_location="cpu"))
    model.eval()
    x, y = fashion_mnist_tensors("test", normalize=False, limit=n).tensors
    return model, x, y


def cached(name: str, force: bool, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    path = CACHE / f"metrics_bench_{name}.json"
    if path.is_file() and not force:
        return json.loads(path.read_text())
    t0 = time.time()
    out = fn()
    out["wall_s"] = time.time() - t0
    path.write_text(json.dumps(out, indent=1))
    return out


# --------------------------------------------------------------------------------------------
# 1. ROAD speed and parity
# --------------------------------------------------------------------------------------------


def gradcam_road(model: nn.Module, x: Tensor, cams: Tensor, targets: Tensor) -> Tuple[np.ndarray, np.ndarray, float]:
    """pytorch-grad-cam's MoRF / LeRF averages (noise 0, raw target logits) and its time."""
    from pytorch_grad_cam.metrics.perturbation_confidence import (
        AveragerAcrossThresholds,
        PerturbationConfidenceMetric,
        RemoveLeastRelevantFirst,
        RemoveMostRelevantFirst,
    )
    from pytorch_grad_cam.metrics.road import NoisyLinearImputer
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    imputer = NoisyLinearImputer(noise=0)
    tg = [ClassifierOutputTarget(int(c)) for c in targets]
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        morf = AveragerAcrossThresholds(lambda p: PerturbationConfidenceMetric(RemoveMostRelevantFirst(p, imputer)),
                                        PCTS)(x, cams.numpy(), tg, model)  # fmt: skip
        lerf = AveragerAcrossThresholds(lambda p: PerturbationConfidenceMetric(RemoveLeastRelevantFirst(p, imputer)),
                                        PCTS)(x, cams.numpy(), tg, model)  # fmt: skip
    return np.asarray(morf), np.asarray(lerf), time.perf_counter() - t0


def road_speed_case(model: nn.Module, x: Tensor, layer: nn.Module, label: str) -> Dict[str, Any]:
    with torch.no_grad():
        pred = model(x).argmax(1)
    maps = LayerGradCam(model, layer).attribute(x, target=pred, relu_attributions=True, upsample_to_input=True)
    maps = maps.detach()
    road(model, x[:1], maps[:1], target=pred[:1], noise=0, probability_fn=None)  # warm-up (imports)
    out: Dict[str, Any] = {"case": label, "n": int(x.shape[0]), "size": list(x.shape[-2:])}
    ref_morf, ref_lerf, t_ref = gradcam_road(model, x, maps[:, 0], pred)
    out["pytorch_grad_cam_s"] = t_ref
    for solver in ("direct", "cg"):
        if solver == "cg" and x.shape[-1] > 64:
            continue  # CG is the GPU path; on one CPU thread at 224 px it is slower than SuperLU
        t0 = time.perf_counter()
        res = road(model, x, maps, target=pred, noise=0, probability_fn=None, solver=solver, return_curves=True,
                   max_forwards_per_batch=64 if x.shape[-1] <= 64 else 16)  # fmt: skip
        out[f"ours_{solver}_s"] = time.perf_counter() - t0
        out[f"ours_{solver}_max_abs_diff"] = float(max(np.abs(res.morf.numpy() - ref_morf).max(),
                                                       np.abs(res.lerf.numpy() - ref_lerf).max()))  # fmt: skip
    t0 = time.perf_counter()
    road(model, x, maps, target=pred, max_forwards_per_batch=64 if x.shape[-1] <= 64 else 16)  # defaults
    out["ours_default_s"] = time.perf_counter() - t0
    return out


def section_road_speed(quick: bool) -> Dict[str, Any]:
    model, x, _ = fashion(100)
    cases = [road_speed_case(model, x, model.act, "Fashion-MNIST CNN, 100 test images")]
    if not quick:
        from captum_cam_ext.data.efficientnet import (
            default_target_layer,
            load_efficientnet_lite0,
            preprocess_efficientnet,
        )
        from captum_cam_ext.data.photos import bundled_photos

        net = load_efficientnet_lite0().eval()
        photos = bundled_photos()
        xp = torch.cat([preprocess_efficientnet(img) for img in photos.values()])
        cases.append(road_speed_case(net, xp, default_target_layer(net), f"EfficientNet-Lite0, {len(photos)} photos"))
    return {"cases": cases}


# --------------------------------------------------------------------------------------------
# 2. the area effect
# --------------------------------------------------------------------------------------------

AREA_METRICS = ("average_drop", "average_increase", "average_gain", "deletion_auc", "insertion_auc",
                "road_morf", "road_lerf", "road_combined")  # fmt: skip


def section_area(n: int) -> Dict[str, Any]:
    from torch.utils.data import TensorDataset

    model, x, y = fashion(n)
    ds = TensorDataset(x, y)
    res = evaluate(model, model.act, ["gradcam", "conceptor"], ds, batch_size=100, metrics=AREA_METRICS,
                   causal_steps=28, controls=True, control_options={"powers": (0.5,)})  # fmt: skip
    return {"markdown": results_markdown(res), "result": res.to_dict()}


# --------------------------------------------------------------------------------------------
# 3. ROAD ties
# --------------------------------------------------------------------------------------------


def section_ties(n: int) -> Dict[str, Any]:
    model, x, _ = fashion(n)
    with torch.no_grad():
        pred = model(x).argmax(1)
    maps = LayerGradCam(model, model.act).attribute(x, target=pred, relu_attributions=True).detach()
    up = torch.nn.functional.interpolate(maps, size=(28, 28), mode="bilinear", align_corners=False)
    zero_share = (up == 0).flatten(1).float().mean(1)
    out: Dict[str, Any] = {"n": n, "zero_share_mean": float(zero_share.mean()),
                           "share_maps_ge_10pct_zeros": float((zero_share >= 0.1).float().mean())}  # fmt: skip
    per: Dict[str, Any] = {}
    for ties in ("threshold", "rank"):
        r = road(model, x, maps, target=pred, ties=ties, return_curves=True)
        per[ties] = {"morf": r.morf.tolist(), "lerf": r.lerf.tolist(), "combined": r.combined.tolist(),
                     "morf_removed_p10": float(r.morf_removed[:, 0].mean())}  # fmt: skip
    out["per_example"] = per
    rows = []
    for key, hib in (("morf", False), ("lerf", True), ("combined", True)):
        rows.append(paired_comparison(per["threshold"][key], per["rank"][key], metric=f"road_{key}",
                                      a="threshold", b="rank", higher_is_better=hib).to_dict())  # fmt: skip
    out["comparisons"] = rows
    return out


# --------------------------------------------------------------------------------------------
# 4. sanity checks
# --------------------------------------------------------------------------------------------


class InputItself:
    """A map that ignores the model: the input image (a negative control for the randomisation test)."""

    def attribute(self, inputs: Tensor, target: Any = None, **kwargs: Any) -> Tensor:
        return inputs.mean(1, keepdim=True)


def section_sanity(n: int) -> Dict[str, Any]:
    model, x, _ = fashion(n)
    out: Dict[str, Any] = {"n": n}
    gc = parameter_randomization(model, LayerGradCam(model, model.act), x,
                                 attribute_kwargs={"relu_attributions": True})  # fmt: skip
    ctrl = parameter_randomization(model, InputItself(), x, take_abs=False)
    out["gradcam"] = {"markdown": gc.markdown(), "summary": gc.summary()}
    out["input_itself"] = {"markdown": ctrl.markdown(), "summary": ctrl.summary()}
    di = data_independence(model, LayerGradCam(model, model.act), x, attribute_kwargs={"relu_attributions": True})
    di_mean = data_independence(model, LayerGradCam(model, model.act), x, baseline="mean",
                                attribute_kwargs={"relu_attributions": True})  # fmt: skip
    out["data_independence"] = {"zeros": di.summary(), "mean": di_mean.summary()}
    return out


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------


def versions() -> str:
    import captum

    parts = [f"Python {platform.python_version()}", f"torch {torch.__version__}", f"captum {captum.__version__}"]
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("grad-cam", "quantus", "scipy", "numpy"):
        try:
            parts.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:  # pragma: no cover
            pass
    return ", ".join(parts)


def report(speed: Dict[str, Any], area: Dict[str, Any], ties: Dict[str, Any], sanity: Dict[str, Any],
           total_s: float) -> str:  # fmt: skip
    lines: List[str] = [
        "# Evaluation that cannot be gamed: measured numbers (issue 11)",
        "",
        f"Generated by `benchmarks/metrics_bench.py`; machine: {platform.machine()}, {platform.processor() or '?'}, "
        f"1 torch thread on a shared 2-core machine; {versions()}. Total wall time of the sections "
        f"{total_s / 60:.1f} min (cached sections count with their recorded time).",
        "",
        *summary(speed, area, sanity),
        "## 1. ROAD: speed and parity with pytorch-grad-cam",
        "",
        "Same maps (Grad-CAM, upsampled to the input), same targets (predicted class, raw logits), "
        "noise 0, percentiles 10..90, both orders (MoRF + LeRF = 18 imputations per image). "
        "`direct`: one banded Cholesky (small images) or SuperLU (large) solve per chunk of masks; "
        "`cg`: batched conjugate gradients (meant for GPUs). `default` = noise 0.01, softmax.",
        "",
        "| case | pytorch-grad-cam (s) | ours direct (s) | speed-up | ours cg (s) | ours default (s) | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in speed["cases"]:
        cg = f"{c['ours_cg_s']:.2f}" if "ours_cg_s" in c else "-"
        diff = max(c.get("ours_direct_max_abs_diff", 0.0), c.get("ours_cg_max_abs_diff", 0.0))
        lines.append(
            f"| {c['case']} ({c['size'][0]}x{c['size'][1]}) | {c['pytorch_grad_cam_s']:.2f} | "
            f"{c['ours_direct_s']:.2f} | "
            f"{c['pytorch_grad_cam_s'] / c['ours_direct_s']:.1f}x | {cg} | {c['ours_default_s']:.2f} | {diff:.1e} |"
        )
    lines += ["", f"Section wall time {speed['wall_s']:.0f} s.", ""]
    res = area["result"]
    lines += [
        "## 2. The area effect (Fashion-MNIST CNN, test images 0-999, predicted class)",
        "",
        "Rows: Grad-CAM, Conceptor-CAM (Grad-CAM base, package defaults) and the controls built from "
        "Grad-CAM's maps by `evaluate(controls=True)` (the powers are solved on these same images: they are "
        "matched controls, not tuned settings). AD/AI/AG multiply the normalised upsampled map into the "
        "input (mask area = its mean); deletion (zeros) / insertion (blurred canvas) with 28 steps; ROAD with "
        "noise 0.01 and softmax scores. Intervals: paired bootstrap over the 1000 images (10,000 resamples).",
        "",
        area["markdown"],
        "",
        f"Section wall time {area['wall_s'] / 60:.1f} min.",
        "",
    ]
    del res
    lines += [
        "## 3. ROAD and ties (Grad-CAM, the same images)",
        "",
        f"Grad-CAM's ReLU leaves exact zeros: {100 * ties['zero_share_mean']:.1f}% of the upsampled pixels on "
        f"average, and {100 * ties['share_maps_ge_10pct_zeros']:.0f}% of the maps have at least 10% zeros. With "
        "the threshold definition every pixel tied with the percentile is removed, so at MoRF 10% these maps "
        f"lose everything (mean removed share at p=10: {ties['per_example']['threshold']['morf_removed_p10']:.3f} "
        f"vs nominal 0.9 for `ties='rank'`: {ties['per_example']['rank']['morf_removed_p10']:.3f}).",
        "",
        comparisons_markdown([_row(r) for r in ties["comparisons"]]),
        "",
        f"Section wall time {ties['wall_s']:.0f} s.",
        "",
        "## 4. Sanity checks (Grad-CAM, test images 0-99)",
        "",
        "Cascading randomisation from the output layer down (Quantus' MPRT convention, seed 42), "
        "similarity of the randomised model's maps to the original ones:",
        "",
        sanity["gradcam"]["markdown"],
        "",
        "Negative control: a 'map' that ignores the model (the input image) keeps similarity 1 at every step:",
        "",
        sanity["input_itself"]["markdown"],
        "",
        "Data independence (Grad-CAM of a constant input vs of the image, same class): "
        + "; ".join(
            f"{k} input: Spearman {v['spearman']:.3f}, SSIM {v['ssim']:.3f}, undefined (constant map) "
            f"{100 * v['undefined_share']:.0f}%"
            for k, v in sanity["data_independence"].items()
        ),
        "",
        f"Section wall time {sanity['wall_s']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def summary(speed: Dict[str, Any], area: Dict[str, Any], sanity: Dict[str, Any]) -> List[str]:
    """The findings, negative ones first, with their intervals (read from the section results)."""
    comps = area["result"]["comparisons"]
    means = area["result"]["means"]
    rows = list(means)
    matched = next(r for r in rows if r.endswith("(area of conceptor)"))
    const = next(r for r in rows if r.startswith("constant"))
    half = next(r for r in rows if r.endswith("**0.5"))

    def c(a: str, b: str, m: str) -> str:
        r = next(x for x in comps if x["a"] == a and x["b"] == b and x["metric"] == m)
        d = 2 if m.startswith("average") else 4
        return f"{r['mean_diff']:+.{d}f} [{r['ci_low']:.{d}f}, {r['ci_high']:.{d}f}] ({r['verdict']})"

    fm, fast = speed["cases"][0], speed["cases"][-1]
    lines = [
        "## Summary (negative results first)",
        "",
        f"- **Average Drop / Increase / Gain cannot tell Grad-CAM from a constant mask of the same area** on "
        f"the Fashion-MNIST CNN (1000 images): AD {means['gradcam']['average_drop']:.2f} vs "
        f"{means[const]['average_drop']:.2f}, Grad-CAM minus constant {c('gradcam', const, 'average_drop')}; "
        f"AI {c('gradcam', const, 'average_increase')}. The ranking metrics separate them clearly: "
        f"deletion {c('gradcam', const, 'deletion_auc')}, ROAD combined {c('gradcam', const, 'road_combined')}.",
        f"- **Conceptor-CAM's gain over Grad-CAM is mostly mask area.** AD {c('conceptor', 'gradcam', 'average_drop')} "
        f"against Grad-CAM, but {c('conceptor', matched, 'average_drop')} against Grad-CAM raised to "
        f"Conceptor-CAM's mean area ({means['conceptor']['mask_area']:.3f}); AI "
        f"{c('conceptor', matched, 'average_increase')} at matched area. On the ranking metrics it is worse "
        f"than Grad-CAM: deletion {c('conceptor', 'gradcam', 'deletion_auc')}, ROAD combined "
        f"{c('conceptor', 'gradcam', 'road_combined')}; insertion {c('conceptor', 'gradcam', 'insertion_auc')}.",
        f"- **Area alone:** Grad-CAM ** 0.5 has exactly Grad-CAM's ranking (identical deletion, insertion and "
        f"ROAD) and 'improves' AD from {means['gradcam']['average_drop']:.2f} to {means[half]['average_drop']:.2f} "
        f"(Grad-CAM minus it: {c('gradcam', half, 'average_drop')}).",
        f"- **ROAD MoRF alone is gamed by ties**: the constant map removes every pixel at every percentile and "
        f"has the best MoRF of all rows ({means[const]['road_morf']:.3f} vs Grad-CAM "
        f"{means['gradcam']['road_morf']:.3f}); its LeRF is as bad, so ROAD combined is exactly 0.",
        f"- ROAD is {fm['pytorch_grad_cam_s'] / fm['ours_direct_s']:.1f}x faster than pytorch-grad-cam on "
        f"{fm['n']} images of {fm['size'][0]} px and {fast['pytorch_grad_cam_s'] / fast['ours_direct_s']:.1f}x on "
        f"{fast['n']} photos of {fast['size'][0]} px (largest difference "
        f"{max(fm['ours_direct_max_abs_diff'], fast['ours_direct_max_abs_diff']):.1e}).",
        f"- Grad-CAM passes the cascading randomisation test (Spearman "
        f"{sanity['gradcam']['summary'][0]['spearman']:.2f} after the classifier, "
        f"{sanity['gradcam']['summary'][-1]['spearman']:.2f} at the end); a map that ignores the model stays at "
        f"{sanity['input_itself']['summary'][-1]['spearman']:.2f}.",
        "",
    ]
    return lines


def _row(d: Dict[str, Any]) -> Any:
    from captum_cam_ext.metrics.statistics import PairedComparison

    keep = {k: v for k, v in d.items() if k not in ("resolved", "verdict")}
    return PairedComparison(**keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer images (smoke run; not for the results page)")
    ap.add_argument("--force", action="store_true", help="recompute cached sections")
    args = ap.parse_args()
    CACHE.mkdir(parents=True, exist_ok=True)
    q = args.quick
    tag = "_quick" if q else ""
    t0 = time.time()
    speed = cached("road_speed" + tag, args.force, lambda: section_road_speed(q))
    print("road speed done", flush=True)
    area = cached("area" + tag, args.force, lambda: section_area(100 if q else 1000))
    print("area done", flush=True)
    ties = cached("ties" + tag, args.force, lambda: section_ties(100 if q else 1000))
    print("ties done", flush=True)
    sanity = cached("sanity" + tag, args.force, lambda: section_sanity(20 if q else 100))
    print("sanity done", flush=True)
    total = sum(d["wall_s"] for d in (speed, area, ties, sanity))
    text = report(speed, area, ties, sanity, total)
    out = RESULTS / ("metrics_quick.md" if q else "metrics.md")
    out.write_text(text)
    (RESULTS / ("metrics_quick.json" if q else "metrics.json")).write_text(
        json.dumps({"road_speed": speed, "area": {k: v for k, v in area.items() if k != "result"},
                    "area_means": area["result"]["means"], "area_comparisons": area["result"]["comparisons"],
                    "area_controls": area["result"]["controls"], "ties": {k: v for k, v in ties.items()
                                                                          if k != "per_example"},
                    "sanity": sanity}, indent=1)  # fmt: skip
    )
    print(f"wrote {out} ({time.time() - t0:.0f} s this run)")


if __name__ == "__main__":
    main()
