"""Write the documentation gallery: real CAM outputs on the bundled photos.

Usage (from the repository root)::

    python docs/make_gallery.py [--out docs/_static/gallery] [--threads 1] [--skip-score-cam]
                                [--only photos|methods|tasks|demo]

For every photo of :func:`captum_cam_ext.data.bundled_photos` the bundled ImageNet EfficientNet-Lite0
predicts a class, and Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM and Conceptor-CAM explain it at the
layer used by the demo (``_blocks.15``, 320 channels, 7x7). One PNG per photo (palette-quantised to
stay small) and ``gallery.json`` (classes, probabilities, Average Drop, timings) are written.

``--only methods`` writes ``methods_<photo>.png`` and ``methods.json``: every registered method of the
package on two photos (Average Drop and time each). ``--only tasks`` writes ``tasks.png``: the
segmentation, detection and ViT examples (torchvision models with random weights: no pretrained
weights can be downloaded here, so they show what runs and the shapes, not meaningful
explanations) and Deep Feature Factorization of the real EfficientNet-Lite0 head, its concepts
named by the model's own classifier.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def _save_small_png(fig, path: Path, dpi: int = 72) -> int:
    """Save a figure as a 256-colour palette PNG; returns the size in bytes."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    buf.seek(0)
    with Image.open(buf) as im:
        q = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        q.save(path, format="PNG", optimize=True)
    return path.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(HERE / "_static" / "gallery"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-score-cam", action="store_true")
    p.add_argument("--demo-only", action="store_true", help="only (re)make demo_cams.png")
    p.add_argument("--only", choices=("photos", "methods", "tasks", "demo"), default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.demo_only or args.only == "demo":
        _demo_figure(out)
        return
    if args.only == "methods":
        _methods_figures(out)
        return
    if args.only == "tasks":
        _tasks_figure(out)
        return

    from matplotlib.figure import Figure

    from captum_cam_ext import LayerCam, LayerGradCam, LayerGradCamPlusPlus, LayerScoreCam
    from captum_cam_ext.attr.conceptor_cam import LayerConceptorCam
    from captum_cam_ext.data import (
        IMAGENET_CLASSES,
        bundled_photos,
        load_efficientnet_lite0,
        preprocess_efficientnet,
    )
    from captum_cam_ext.metrics import confidence_metrics
    from captum_cam_ext.visualization import overlay

    model: Any = load_efficientnet_lite0()
    layer = model._blocks[15]
    cams: Dict[str, Any] = {
        "Grad-CAM": LayerGradCam(model, layer),
        "Grad-CAM++": LayerGradCamPlusPlus(model, layer),
        "LayerCAM": LayerCam(model, layer),
        "Score-CAM": LayerScoreCam(model, layer, batch_size=16),
        "Conceptor-CAM": LayerConceptorCam(model, layer),
    }
    if args.skip_score_cam:
        cams.pop("Score-CAM")
    meta = {}
    total = 0
    for name, photo in bundled_photos().items():
        x = preprocess_efficientnet(photo)
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        target = int(probs.argmax())
        cls, prob = IMAGENET_CLASSES[target], float(probs[target])
        view = ((x[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        fig = Figure(figsize=(2.1 * (1 + len(cams)), 2.55))
        axes = fig.subplots(1, 1 + len(cams))
        axes[0].imshow(view)
        axes[0].set_title(f"{name}\n{cls}: p = {prob:.2f}", fontsize=8)
        info = {"class": cls, "prob": prob, "methods": {}}
        for ax, (mname, cam) in zip(axes[1:], cams.items()):
            t0 = time.perf_counter()
            m = cam.attribute(x, target=target, relu_attributions=True).detach()
            dt = time.perf_counter() - t0
            drop = confidence_metrics(model, x, m, target=target).average_drop
            ax.imshow(overlay(view, m[0], alpha=0.45))
            ax.set_title(f"{mname}\ndrop {drop:.0f}%, {dt:.1f} s", fontsize=8)
            info["methods"][mname] = {"average_drop": drop, "seconds": dt}
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout(pad=0.3)
        size = _save_small_png(fig, out / f"{name}.png")
        total += size
        meta[name] = info
        print(f"{name}: {cls} ({prob:.2f}), {size / 1024:.0f} kB", flush=True)
    (out / "gallery.json").write_text(json.dumps(meta, indent=1))
    if args.only == "photos":
        return
    _methods_figures(out)
    _tasks_figure(out)
    _demo_figure(out)
    total = sum(f.stat().st_size for f in out.glob("*.png"))
    print(f"total {total / 1024:.0f} kB in {out}")


def _demo_figure(out: Path) -> None:
    """The figure of ``make demo`` (captum_cam_ext.demo), palette-quantised."""
    import tempfile

    from PIL import Image

    from captum_cam_ext.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        res = run_demo(tmp, verbose=False)
        with Image.open(res["figure"]) as im:
            w, h = im.size
            small = im.convert("RGB").resize((w * 3 // 4, h * 3 // 4), Image.Resampling.LANCZOS)
            small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
                out / "demo_cams.png", format="PNG", optimize=True
            )
        text = Path(res["summary"]).read_text().splitlines()
        (out / "demo_summary.txt").write_text("\n".join(t for t in text if not t.startswith("figure:")) + "\n")
    print(f"demo_cams.png: {(out / 'demo_cams.png').stat().st_size / 1024:.0f} kB", flush=True)


#: The breadth figure: (title, registered name, constructor options); every registered method.
BREADTH = [
    ("Grad-CAM", "gradcam", {}),
    ("Grad-CAM++", "gradcam++", {}),
    ("XGrad-CAM", "xgradcam", {}),
    ("HiResCAM", "hirescam", {}),
    ("LayerCAM", "layercam", {}),
    ("Grad-CAM elem.", "gradcamelementwise", {}),
    ("Eigen-CAM", "eigencam", {}),
    ("Eigen-Grad-CAM", "eigengradcam", {}),
    ("KPCA-CAM", "kpcacam", {}),
    ("FEM", "fem", {}),
    ("Shapley-CAM (ReST)", "shapleycam", {}),
    ("Finer-CAM", "finercam", {}),
    ("CAM (head)", "gapcam", {}),
    ("Smooth Grad-CAM++", "smoothgradcam++", {"seed": 0}),
    ("Refine-CAM (15, 11, 5)", "refinecam", {}),
    ("Guided Grad-CAM", "guidedgradcam", {}),
    ("FullGrad", "fullgrad", {}),
    ("Random-CAM", "randomcam", {"seed": 0}),
    ("Score-CAM", "scorecam", {"batch_size": 32}),
    ("Ablation-CAM", "ablationcam", {"batch_size": 32}),
    ("IS-CAM (2 samples)", "iscam", {"batch_size": 32, "num_samples": 2}),
    ("SS-CAM (2 samples)", "sscam", {"batch_size": 32, "num_samples": 2, "seed": 0}),
    ("Conceptor-CAM", "conceptor", {}),
]


def _view(x: torch.Tensor) -> np.ndarray:
    return ((x[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _methods_figures(out: Path, photos: tuple = ("chelsea", "coffee")) -> None:
    """Every registered method on ``photos`` at ``_blocks.15`` (CAM: at the head, which it needs)."""
    from matplotlib.figure import Figure

    from captum_cam_ext.data import IMAGENET_CLASSES, bundled_photos, load_efficientnet_lite0, preprocess_efficientnet
    from captum_cam_ext.metrics import confidence_metrics
    from captum_cam_ext.registry import create_method
    from captum_cam_ext.targets import ClassifierOutputReST
    from captum_cam_ext.visualization import overlay

    model: Any = load_efficientnet_lite0()
    layer = model._blocks[15]
    meta = {}
    available = bundled_photos()
    for name in photos:
        x = preprocess_efficientnet(available[name])
        with torch.no_grad():
            probs = torch.softmax(model(x), dim=1)[0]
        target = int(probs.argmax())
        view = _view(x)
        cols = 6
        rows = (len(BREADTH) + cols) // cols
        fig = Figure(figsize=(2.0 * cols, 2.3 * rows))
        axes = fig.subplots(rows, cols).flatten()
        axes[0].imshow(view)
        axes[0].set_title(f"{name}\n{IMAGENET_CLASSES[target]}: p = {float(probs[target]):.2f}", fontsize=7)
        info = {"class": IMAGENET_CLASSES[target], "prob": float(probs[target]), "methods": {}}
        for ax, (title, key, kw) in zip(axes[1:], BREADTH):
            lay = {
                "gapcam": model._head_act,
                "refinecam": [model._blocks[15], model._blocks[11], model._blocks[5]],
            }.get(key, layer)
            cam = create_method(key, model, lay, **kw)
            tgt = ClassifierOutputReST(target) if key == "shapleycam" else target
            t0 = time.perf_counter()
            if key == "fullgrad":
                m = cam.attribute(x, target=tgt).detach()
            else:
                m = cam.attribute(x, target=tgt, relu_attributions=True, upsample_to_input=True).detach()
            dt = time.perf_counter() - t0
            drop = confidence_metrics(model, x, m, target=target).average_drop
            ax.imshow(overlay(view, m[0], alpha=0.45))
            ax.set_title(f"{title}\ndrop {drop:.0f}%, {dt:.1f} s", fontsize=7)
            info["methods"][title] = {"name": key, "average_drop": drop, "seconds": dt}
            print(f"  {name} {title}: drop {drop:.1f}%, {dt:.2f} s", flush=True)
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout(pad=0.3)
        size = _save_small_png(fig, out / f"methods_{name}.png")
        meta[name] = info
        print(f"methods_{name}.png: {size / 1024:.0f} kB", flush=True)
    (out / "methods.json").write_text(json.dumps(meta, indent=1))


def _tasks_figure(out: Path) -> None:
    """Segmentation, detection and ViT (random weights) and DFF of the real Lite0, on the bundled photos."""
    import torchvision
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    from captum_cam_ext.attr.deep_feature_factorization import DeepFeatureFactorization
    from captum_cam_ext.attr.grad_cam import LayerGradCam
    from captum_cam_ext.attr.legrad import LayerLeGrad
    from captum_cam_ext.data import IMAGENET_CLASSES, bundled_photos, load_efficientnet_lite0, preprocess_efficientnet
    from captum_cam_ext.reshape import vit_reshape_transform
    from captum_cam_ext.targets import FasterRCNNBoxScoreTarget, SemanticSegmentationTarget
    from captum_cam_ext.visualization import overlay

    photos = bundled_photos()
    x = preprocess_efficientnet(photos["chelsea"])  # (1, 3, 224, 224), normalised to [-1, 1]
    view = _view(x)
    fig = Figure(figsize=(13, 5.2))
    axes = fig.subplots(2, 5)
    info: dict = {}
    # segmentation: FCN-ResNet50, the pixels predicted as class 0 in the top half
    torch.manual_seed(0)
    seg: Any = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=4).eval()
    with torch.no_grad():
        pred = seg(x)["out"].argmax(1)[0]
    category = int(pred[:112].flatten().mode().values)  # the class predicted most in the top half
    mask = (pred == category).float()
    mask[112:] = 0
    t0 = time.perf_counter()
    m = LayerGradCam(seg, seg.backbone.layer4).attribute(
        x, target=SemanticSegmentationTarget(category, mask), relu_attributions=True, upsample_to_input=True
    )
    info["segmentation"] = {"seconds": time.perf_counter() - t0, "category": category, "mask_pixels": int(mask.sum())}
    axes[0, 0].imshow(mask.numpy(), cmap="gray")
    axes[0, 0].set_title(f"FCN-ResNet50 (random)\ntarget: class {category} in this mask", fontsize=7)
    axes[0, 1].imshow(overlay(view, m[0].detach(), alpha=0.45))
    axes[0, 1].set_title("Grad-CAM, layer4\nSemanticSegmentationTarget", fontsize=7)
    # detection: Faster R-CNN MobileNetV3-FPN, the first two detections
    torch.manual_seed(0)
    det: Any = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None,
        weights_backbone=None,
        num_classes=5,
        min_size=224,
        max_size=224,
        box_score_thresh=0.0,
        box_detections_per_img=5,
    ).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random-init heads score every box alike: spread them (as tests/test_targets.py)
        for lin in (det.roi_heads.box_predictor.cls_score, det.roi_heads.box_predictor.bbox_pred):
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
            lin.weight.mul_(20)
    img01 = x * 0.5 + 0.5  # torchvision detectors normalise [0, 1] images themselves
    with torch.no_grad():
        dets = det(img01)[0]
    boxes, labels = dets["boxes"][:2], dets["labels"][:2].tolist()
    t0 = time.perf_counter()
    m = LayerGradCam(det, det.backbone.body["16"]).attribute(
        img01, target=FasterRCNNBoxScoreTarget(labels, boxes), relu_attributions=True, upsample_to_input=True
    )
    info["detection"] = {"seconds": time.perf_counter() - t0, "boxes": boxes.tolist()}
    ax = axes[0, 2]
    ax.imshow(overlay(view, m[0].detach(), alpha=0.45))
    for b in boxes.tolist():
        ax.add_patch(Rectangle((b[0], b[1]), b[2] - b[0], b[3] - b[1], fill=False, color="w", lw=1))
    ax.set_title("Faster R-CNN MNv3-FPN (random)\nGrad-CAM, FasterRCNNBoxScoreTarget", fontsize=7)
    # ViT-B/16: Grad-CAM on tokens and LeGrad (random weights, head re-initialised: it starts at zero)
    torch.manual_seed(0)
    vit: Any = torchvision.models.vit_b_16(weights=None).eval()
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)
    t0 = time.perf_counter()
    m = LayerGradCam(vit, vit.encoder.layers[-1].ln_1, reshape_transform=vit_reshape_transform).attribute(
        x, target=3, relu_attributions=True, upsample_to_input=True
    )
    info["vit_gradcam"] = {"seconds": time.perf_counter() - t0}
    axes[0, 3].imshow(overlay(view, m[0].detach(), alpha=0.45))
    axes[0, 3].set_title("ViT-B/16 (random)\nGrad-CAM, vit_reshape_transform", fontsize=7)
    t0 = time.perf_counter()
    m = LayerLeGrad(vit, list(vit.encoder.layers[-4:])).attribute(x, target=3, upsample_to_input=True)
    info["vit_legrad"] = {"seconds": time.perf_counter() - t0}
    axes[0, 4].imshow(overlay(view, m[0].detach(), alpha=0.45))
    axes[0, 4].set_title("ViT-B/16 (random)\nLeGrad, last 4 blocks", fontsize=7)
    # DFF of the real Lite0 head over two photos, concepts named by its classifier
    model: Any = load_efficientnet_lite0()
    batch = torch.cat([x, preprocess_efficientnet(photos["coffee"])])
    t0 = time.perf_counter()
    res = DeepFeatureFactorization(model, model._head_act, computation_on_concepts=model._fc).attribute(
        batch, n_components=4, upsample_to_input=True
    )
    info["dff"] = {"seconds": time.perf_counter() - t0}
    assert res.concept_scores is not None
    names = [IMAGENET_CLASSES[int(i)] for i in res.concept_scores.softmax(-1).argmax(-1)]
    info["dff"]["concepts"] = names
    for j in range(4):
        ax = axes[1, j]
        pick = 0 if j % 2 == 0 else 1
        ax.imshow(overlay((view, _view(batch[1:]))[pick], res.maps[pick, j], alpha=0.5))
        ax.set_title(f"DFF concept {j} (Lite0 head)\n~ {names[j]}", fontsize=7)
    axes[1, 4].imshow(_view(batch[1:]))
    axes[1, 4].set_title("coffee (DFF's second image)", fontsize=7)
    for ax in axes.flatten():
        ax.set_axis_off()
    fig.tight_layout(pad=0.3)
    size = _save_small_png(fig, out / "tasks.png")
    (out / "tasks.json").write_text(json.dumps(info, indent=1))
    print(f"tasks.png: {size / 1024:.0f} kB", flush=True)


if __name__ == "__main__":
    main()
