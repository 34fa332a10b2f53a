"""``make demo``: explain a bundled cat photo with four CAM methods, side by side.

``python -m captum_cam_ext.demo --out out`` loads the bundled ImageNet-pretrained EfficientNet-Lite0
(:func:`captum_cam_ext.data.load_efficientnet_lite0`, no download) and the cat photo shipped with
scikit-image (``skimage.data.chelsea()``), predicts its class, and explains the top-1 class with
Grad-CAM, Grad-CAM++, Score-CAM and Conceptor-CAM. It writes

* ``out/demo_cams.png``: the input and the four overlays with the class name and probability;
* ``out/summary.txt``: the top-5 classes, the time of each method and the Average Drop / Average
  Increase of each map (:func:`captum_cam_ext.metrics.confidence_metrics`).

All four methods use the same layer, the output of the last MBConv block (``model._blocks[15]``,
320 channels at 7x7): Score-CAM runs one forward pass per channel, and this layer keeps it to 320
passes (the 1280-channel head would need up to 1280), which takes well under a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

__all__ = ["run_demo", "main"]

METHOD_LABELS = ("Grad-CAM", "Grad-CAM++", "Score-CAM", "Conceptor-CAM")


def _display_image(x: torch.Tensor) -> np.ndarray:
    """The model's (normalised) input crop as uint8 (H, W, 3)."""
    img = (x[0].detach() * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
    return (img * 255.0 + 0.5).astype(np.uint8)


def _figure(
    image: np.ndarray,
    maps: Dict[str, torch.Tensor],
    class_name: str,
    prob: float,
    stats: Dict[str, Dict[str, float]],
) -> Any:
    from matplotlib.figure import Figure

    from captum_cam_ext.visualization import overlay

    n = 1 + len(maps)
    fig = Figure(figsize=(2.7 * n, 3.5))
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(image)
    axes[0].set_title(f"input\n{class_name}: p = {prob:.2f}", fontsize=10)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(overlay(image, m[0], colormap="jet", alpha=0.45))
        s = stats[name]
        ax.set_title(f"{name}\n{class_name}: p = {prob:.2f}", fontsize=10)
        ax.set_xlabel(
            f"{s['seconds']:.2f} s, drop {s['average_drop']:.1f}%, "
            f"p(masked) = {s['masked_prob']:.2f}",
            fontsize=8,
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
    fig.suptitle(
        "EfficientNet-Lite0 (ImageNet), layer _blocks.15 (320 ch, 7x7): why the top-1 class?",
        fontsize=11,
        y=0.99,
    )
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.93))
    return fig


def run_demo(
    out: str = "out",
    score_batch_size: int = 16,
    threads: Optional[int] = None,
    verbose: bool = True,
) -> Dict[str, Any]:
    """Run the demo and write ``demo_cams.png`` and ``summary.txt`` into ``out``.

    Parameters
    ----------
    out : str
        Output folder (created).
    score_batch_size : int
        Masked images per Score-CAM forward pass.
    threads : int, optional
        ``torch.set_num_threads`` value (None: leave as is).
    verbose : bool
        Print the summary.

    Returns
    -------
    dict
        ``figure`` and ``summary`` (paths), ``top5`` ([(class, prob)]), ``methods``
        ({name: {"seconds", "average_drop", "average_increase", "masked_prob"}}),
        ``maps`` ({name: Tensor (1, 1, 7, 7)}).
    """
    from captum_cam_ext.attr.conceptor_cam import LayerConceptorCam
    from captum_cam_ext.attr.grad_cam import LayerGradCam
    from captum_cam_ext.attr.grad_cam_pp import LayerGradCamPlusPlus
    from captum_cam_ext.attr.score_cam import LayerScoreCam
    from captum_cam_ext.data import IMAGENET_CLASSES, load_efficientnet_lite0, preprocess_efficientnet
    from captum_cam_ext.metrics import confidence_metrics
    from captum_cam_ext.visualization import save_figure

    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the demo needs scikit-image (pip install 'captum-cam-ext[demo]')") from exc

    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    t_start = time.perf_counter()
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)

    model = load_efficientnet_lite0()
    photo = skimage.data.chelsea()
    x = preprocess_efficientnet(photo)
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0]
    top = torch.topk(probs, 5)
    top5 = [(IMAGENET_CLASSES[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
    target = int(top.indices[0])
    class_name, prob = top5[0]

    layer = model.get_submodule("_blocks.15")
    cams: Dict[str, Any] = {
        "Grad-CAM": LayerGradCam(model, layer),
        "Grad-CAM++": LayerGradCamPlusPlus(model, layer),
        "Score-CAM": LayerScoreCam(model, layer, batch_size=score_batch_size),
        "Conceptor-CAM": LayerConceptorCam(model, layer),
    }
    maps: Dict[str, torch.Tensor] = {}
    stats: Dict[str, Dict[str, float]] = {}
    for name, cam in cams.items():
        t0 = time.perf_counter()
        m = cam.attribute(x, target=target, relu_attributions=True).detach()
        seconds = time.perf_counter() - t0
        res = confidence_metrics(model, x, m, target=target)
        maps[name] = m
        stats[name] = {
            "seconds": seconds,
            "average_drop": res.average_drop,
            "average_increase": res.average_increase,
            "masked_prob": float(res.masked_probs[0]),
        }

    image = _display_image(x)
    fig_path = save_figure(_figure(image, maps, class_name, prob, stats), outdir / "demo_cams.png")

    lines: List[str] = [
        "captum-cam-ext demo: skimage.data.chelsea() with the bundled EfficientNet-Lite0 (ImageNet)",
        f"input: {photo.shape[1]}x{photo.shape[0]} photo -> resize 256, center crop 224",
        f"torch threads: {torch.get_num_threads()}",
        "",
        "top-5 predicted classes:",
    ]
    lines += [f"  {i + 1}. {c:<24s} p = {p:.4f}" for i, (c, p) in enumerate(top5)]
    lines += [
        "",
        f"explained class: {class_name} (index {target}), layer _blocks.15 (320 channels, 7x7)",
        "Average Drop (lower is better) and Average Increase (higher is better) in %: the map",
        "(upsampled, min-max normalised) multiplies the input; p(masked) is the class",
        "probability on that explanation image.",
        "",
        f"{'method':<15s}{'time (s)':>10s}{'Avg Drop %':>12s}{'Avg Inc %':>11s}{'p(masked)':>11s}",
    ]
    for name, s in stats.items():
        lines.append(
            f"{name:<15s}{s['seconds']:>10.2f}{s['average_drop']:>12.2f}"
            f"{s['average_increase']:>11.1f}{s['masked_prob']:>11.4f}"
        )
    lines += ["", f"total time: {time.perf_counter() - t_start:.1f} s", f"figure: {fig_path}"]
    summary_path = outdir / "summary.txt"
    summary_path.write_text("\n".join(lines) + "\n")
    if verbose:
        print("\n".join(lines))
        print(f"summary: {summary_path}")
    return {
        "figure": fig_path,
        "summary": summary_path,
        "top5": top5,
        "methods": stats,
        "maps": maps,
    }


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (``python -m captum_cam_ext.demo``)."""
    parser = argparse.ArgumentParser(
        prog="python -m captum_cam_ext.demo",
        description="Explain a bundled cat photo with Grad-CAM, Grad-CAM++, Score-CAM and "
        "Conceptor-CAM (EfficientNet-Lite0, offline).",
    )
    parser.add_argument("--out", default="out", help="output folder (default: out)")
    parser.add_argument("--score-batch-size", type=int, default=16,
                        help="masked images per Score-CAM forward pass (default 16)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice, OMP_NUM_THREADS)")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, score_batch_size=args.score_batch_size, threads=args.threads)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
