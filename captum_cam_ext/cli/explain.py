"""``captum-cam-ext explain IMAGE_OR_FOLDER``: overlays and maps for one image or a folder."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

from captum_cam_ext.cli._common import CliError, one_line, warn
from captum_cam_ext.cli.images import (
    IMAGE_EXTENSIONS,
    list_images,
    output_folder,
    parse_target,
    read_image,
    save_overlay,
)
from captum_cam_ext.cli.methods import INAPPLICABLE, build_methods, compute_map, select_methods
from captum_cam_ext.cli.models import load_model
from captum_cam_ext.cli.options import add_method_arg, add_model_args, target_layer

__all__ = ["DEFAULT_METHODS", "add_parser", "run"]

DEFAULT_METHODS = ["gradcam"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    e = sub.add_parser("explain", help="overlays and maps for an image or a folder of images",
                       description="CAM overlays (PNG) and maps (.npy at input size, maps.pt at layer "
                                   "resolution) for one image or every image of a folder.")
    e.add_argument("input", metavar="IMAGE_OR_FOLDER")
    add_model_args(e)
    add_method_arg(e, " (default gradcam)")
    e.add_argument("--target", default="pred", help="'pred' (default), a class index or an ImageNet class name")
    e.add_argument("--out", default="out/explain", help="output folder (default out/explain)")
    e.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity (default 0.5)")
    e.add_argument("--batch-size", type=int, default=32, help="masked forwards per chunk (Score-CAM)")
    e.add_argument("--no-progress", action="store_true")
    return e


def run(args: argparse.Namespace) -> int:
    from captum_cam_ext.visualization import overlay, resize_cam

    src = Path(args.input)
    if not src.exists():
        raise CliError(f"no such file or folder: {src}")
    selection = select_methods(args.method or DEFAULT_METHODS)
    lm = load_model(args.model, args.weights, args.size, args.preprocessing)
    tl = target_layer(lm, args.layer, args.reshape)
    files = list_images(src)
    if not files:
        raise CliError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {src}")
    fixed_target = parse_target(args.target, lm.class_names)
    if fixed_target is not None and lm.num_classes is not None and not 0 <= fixed_target < lm.num_classes:
        raise CliError(f"--target {fixed_target} is out of range for {lm.num_classes} classes")
    out = output_folder(args.out)
    cams = build_methods(selection, lm.model, tl.layer, args.batch_size, tl.reshape_transform,
                         layout_required=args.reshape != "auto")
    folder = src.is_dir()
    all_maps: Dict[str, Any] = {}
    records: List[Dict[str, Any]] = []
    it: Any = files
    if folder and not args.no_progress:
        from tqdm.auto import tqdm

        it = tqdm(files, desc="explain", unit="image")
    skipped = 0
    for f in it:
        try:
            img = read_image(f)
        except CliError as exc:
            if not folder:
                raise
            warn(f"skipping {f.name}: {exc}")
            skipped += 1
            continue
        x = lm.preprocess(img)
        with torch.no_grad():
            probs = torch.softmax(lm.model(x), dim=1)[0]
        target = int(probs.argmax()) if fixed_target is None else fixed_target
        cname = lm.class_names[target] if lm.class_names is not None else f"class {target}"
        view = lm.display(x)
        entry: Dict[str, Any] = {}
        for m, cam in list(cams.items()):
            t0 = time.perf_counter()
            try:
                maps = compute_map(m, cam, x, target, tl.name)
            except INAPPLICABLE as exc:
                if m not in selection.optional:
                    raise CliError(f"{m}: {one_line(exc)}") from None
                warn(f"skipping {m}: {one_line(exc)}")
                del cams[m]
                continue
            dt = time.perf_counter() - t0
            entry[m] = maps[0].cpu()
            up = resize_cam(maps[0], (int(x.shape[-2]), int(x.shape[-1])))
            lo, hi = float(up.min()), float(up.max())
            up = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
            stem = f"{f.stem}_{m.replace('+', 'p')}"
            np.save(out / f"{stem}.npy", up.astype(np.float32))
            save_overlay(overlay(view, maps[0], alpha=args.alpha),
                         f"{m}: {cname} (p={float(probs[target]):.2f})", out / f"{stem}.png")
            records.append({"image": str(f), "method": m, "target": target, "class": cname,
                            "prob": float(probs[target]), "seconds": dt,
                            "png": str(out / f"{stem}.png"), "npy": str(out / f"{stem}.npy")})
        all_maps[f.stem] = {"target": target, "class": cname, "prob": float(probs[target]), "maps": entry}
    torch.save({"model": lm.name, "layer": tl.name, "reshape": tl.reshape, "images": all_maps}, out / "maps.pt")
    (out / "explain.json").write_text(json.dumps(records, indent=1))
    n_ok = len(files) - skipped
    print(f"explained {n_ok} image(s) with {', '.join(cams)} at layer {tl.describe()}; "
          f"wrote {len(records)} overlays, .npy maps and maps.pt to {out}"
          + (f" ({skipped} skipped)" if skipped else ""))
    if n_ok == 0:
        raise CliError(f"no readable image in {src}")
    return 0
