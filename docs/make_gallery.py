"""Write the documentation gallery: real CAM outputs on the bundled photos.

Usage (from the repository root)::

    python docs/make_gallery.py [--out docs/_static/gallery] [--threads 1] [--skip-score-cam]

For every photo of :func:`captum_cam_ext.data.bundled_photos` the bundled ImageNet EfficientNet-Lite0
predicts a class, and Grad-CAM, Grad-CAM++, LayerCAM, Score-CAM and Conceptor-CAM explain it at the
layer used by the demo (``_blocks.15``, 320 channels, 7x7). One PNG per photo (palette-quantised to
stay small) and ``gallery.json`` (classes, probabilities, Average Drop, timings) are written.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

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
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.demo_only:
        _demo_figure(out)
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

    model = load_efficientnet_lite0()
    layer = model._blocks[15]
    cams = {
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
        (out / "demo_summary.txt").write_text(
            "\n".join(t for t in text if not t.startswith("figure:")) + "\n"
        )
    print(f"demo_cams.png: {(out / 'demo_cams.png').stat().st_size / 1024:.0f} kB", flush=True)


if __name__ == "__main__":
    main()
