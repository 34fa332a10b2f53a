"""The ``captum-cam-ext`` command (also ``python -m captum_cam_ext``).

Subcommands
-----------
``explain IMAGE_OR_FOLDER``
    CAM overlays (PNG), maps (``.npy`` upsampled to the model input, and one ``maps.pt`` with the
    layer-resolution maps) for one image or every image of a folder.
``evaluate``
    The package's CAM metrics (Average Drop / Increase / Gain, optionally deletion / insertion
    AUC) over an image folder or Fashion-MNIST; writes ``results.md`` and ``results.json``.
``walls audit``
    The see-through-walls audit (:func:`captum_cam_ext.walls.run_audit`).
``bench``
    A quick built-in timing of the CAM methods, or ``--script`` to run
    ``benchmarks/cam_speed.py``.

Models (``--model``): a torchvision classification architecture by name (``resnet18``,
``vgg11_bn``, ...; ``--weights FILE`` loads a local state_dict, otherwise the weights are random and
the command says so), ``efficientnet_lite0`` (bundled ImageNet weights), or the path of a
TorchScript / ``torch.save`` model file. Layers (``--layer``) are dotted module names
(``layer4``, ``features.7``, ``_blocks.15``).

Errors the user can fix (missing file, unknown layer / method / model, unreadable image) print
``error: ...`` and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["main", "CliError", "load_model", "resolve_layer", "candidate_layers"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CliError(Exception):
    """A user error: printed as ``error: <message>``, exit status 2."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# Models, layers, methods
# --------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model ready to explain, with its preprocessing."""

    model: Any
    name: str
    preprocess: Callable[[Any], Any]  # uint8 (H, W, 3) -> (1, C, S, S) tensor
    display: Callable[[Any], Any]  # (1, C, S, S) tensor -> uint8 (S, S, 3), the model's view
    default_layer: Optional[str]
    class_names: Optional[Sequence[str]]


def _torchvision_classifiers() -> List[str]:
    import torchvision

    try:
        return sorted(torchvision.models.list_models(module=torchvision.models))
    except Exception:  # pragma: no cover - very old torchvision
        return sorted(
            n for n in dir(torchvision.models) if n[0].islower() and callable(getattr(torchvision.models, n))
        )


def _imagenet_preprocess(size: int, channels: int = 3) -> Tuple[Callable, Callable]:
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    resize = max(size, round(size * 256 / 224))

    def pre(img: Any) -> Any:
        t = torch.as_tensor(img).float().div(255.0).permute(2, 0, 1)[None]
        h, w = t.shape[-2:]
        s = resize / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        t = t[..., top : top + size, left : left + size].clamp(0, 1)
        if channels == 1:
            return ((t.mean(1, keepdim=True) - 0.5) / 0.5).contiguous()
        return ((t - mean) / std).contiguous()

    def disp(x: Any) -> Any:
        if x.shape[1] == 1:
            img = (x[0, 0] * 0.5 + 0.5).clamp(0, 1)[..., None].expand(-1, -1, 3)
        else:
            img = (x[0] * std[0] + mean[0]).clamp(0, 1).permute(1, 2, 0)
        return (img.detach().cpu().numpy() * 255 + 0.5).astype("uint8")

    return pre, disp


def _fashion_preprocess() -> Tuple[Callable, Callable]:
    import torch
    import torch.nn.functional as F

    from captum_cam_ext.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD

    def pre(img: Any) -> Any:
        t = torch.as_tensor(img).float().div(255.0)
        if t.ndim == 3:
            t = t.mean(-1)
        t = t[None, None]
        if t.shape[-2:] != (28, 28):
            t = F.interpolate(t, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
        return (t - FASHION_MNIST_MEAN) / FASHION_MNIST_STD

    def disp(x: Any) -> Any:
        img = (x[0, 0] * FASHION_MNIST_STD + FASHION_MNIST_MEAN).clamp(0, 1)
        return (img[..., None].expand(-1, -1, 3).detach().cpu().numpy() * 255 + 0.5).astype("uint8")

    return pre, disp


def _is_conv(module: Any) -> bool:
    from torch import nn

    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return True
    # TorchScript modules are not nn.Conv2d instances but keep the original class name
    return str(getattr(module, "original_name", "")).startswith("Conv")


def _first_conv_in_channels(model: Any) -> int:
    for m in model.modules():
        if _is_conv(m):
            w = getattr(m, "weight", None)
            if w is not None and w.dim() == 4:
                return int(w.shape[1]) * int(getattr(m, "groups", 1))
    return 3


def load_model(
    spec: str,
    weights: Optional[str] = None,
    size: int = 224,
    preprocessing: str = "auto",
    quiet: bool = False,
) -> LoadedModel:
    """Load a model by torchvision name, ``efficientnet_lite0``, or file path.

    Parameters
    ----------
    spec : str
        ``efficientnet_lite0``, a torchvision classification architecture name, or the path of a
        TorchScript / ``torch.save`` file holding a whole ``nn.Module``.
    weights : str, optional
        A local state_dict file for a torchvision architecture (random weights otherwise).
    size : int
        Square input size for torchvision / file models.
    preprocessing : {"auto", "imagenet", "fashion-mnist"}
        How images become model inputs; ``auto``: ImageNet normalisation (resize, center crop) for
        3-channel models and Fashion-MNIST normalisation (28x28) for 1-channel file models.
    quiet : bool
        Do not print the random-weights notice.

    Raises
    ------
    CliError
        Unknown name, missing file, unreadable file, or a file that holds no model.
    """
    import torch

    if preprocessing not in ("auto", "imagenet", "fashion-mnist"):
        raise CliError(f"unknown preprocessing {preprocessing!r}; use auto, imagenet or fashion-mnist")
    if spec.replace("-", "_").lower() in ("efficientnet_lite0", "efficientnetlite0"):
        from captum_cam_ext.data import IMAGENET_CLASSES, load_efficientnet_lite0, preprocess_efficientnet

        if weights is not None:
            raise CliError("efficientnet_lite0 uses its bundled ImageNet weights; drop --weights")
        try:
            model = load_efficientnet_lite0()
        except ImportError as exc:
            raise CliError(str(exc)) from None

        def disp(x: Any) -> Any:
            return ((x[0] * 0.5 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")

        return LoadedModel(model, "efficientnet_lite0", lambda im: preprocess_efficientnet(im), disp,
                           "_head_act", IMAGENET_CLASSES)

    names = _torchvision_classifiers()
    path = Path(spec)
    if spec in names and not path.exists():
        import torchvision

        from captum_cam_ext.data import IMAGENET_CLASSES

        model = torchvision.models.get_model(spec, weights=None)
        if weights is not None:
            wpath = Path(weights)
            if not wpath.is_file():
                raise CliError(f"weights file not found: {weights}")
            try:
                state = torch.load(wpath, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - reported to the user
                raise CliError(f"cannot read weights file {weights}: {exc}") from None
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            try:
                model.load_state_dict(state)
            except Exception as exc:  # noqa: BLE001 - reported to the user
                raise CliError(f"{weights} does not fit {spec}: {str(exc).splitlines()[0]}") from None
        elif not quiet:
            _warn(f"{spec}: no --weights given, using RANDOM weights (the maps are not meaningful); "
                  "pass --weights FILE with a local state_dict")
        model.eval()
        n_out = getattr(getattr(model, "fc", None), "out_features", None)
        pre, disp_fn = _imagenet_preprocess(size)
        return LoadedModel(model, spec, pre, disp_fn, None,
                           IMAGENET_CLASSES if n_out in (None, 1000) else None)

    if not path.exists():
        looks_like_file = os.sep in spec or path.suffix in (".pt", ".pth", ".ts", ".jit", ".bin")
        if looks_like_file:
            raise CliError(f"model file not found: {spec}")
        close = difflib.get_close_matches(spec, names + ["efficientnet_lite0"], n=5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CliError(
            f"unknown model {spec!r}: not a torchvision architecture, not 'efficientnet_lite0' and "
            f"not an existing file.{hint}"
        )
    if weights is not None:
        raise CliError("--weights applies to torchvision architectures; a model file has its own")
    model = None  # type: ignore[assignment]
    errors = []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
        try:  # a torch.save'd module (torch.load dispatches TorchScript archives to torch.jit.load)
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - try the next format
            errors.append(f"torch.load: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        if model is None:
            try:
                model = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - reported to the user
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                errors.append(f"TorchScript: {msg}")
    if model is None:
        raise CliError(f"cannot load a model from {spec} ({'; '.join(errors)})")
    if not isinstance(model, torch.nn.Module):
        raise CliError(
            f"{spec} holds a {type(model).__name__}, not a model; save the whole module "
            "(torch.save(model, path) or torch.jit.save), or give --model ARCH --weights FILE "
            "for a state_dict"
        )
    if isinstance(model, torch.jit.ScriptModule):
        raise CliError(
            f"{spec} is a TorchScript model: TorchScript modules do not support the forward hooks "
            "that CAM methods need. Save the eager model instead: torch.save(model, path) "
            "(loaded here with weights_only=False; only load files you trust)."
        )
    model.eval()
    in_ch = _first_conv_in_channels(model)
    mode = preprocessing
    if mode == "auto":
        mode = "fashion-mnist" if in_ch == 1 else "imagenet"
    if mode == "fashion-mnist":
        pre, disp_fn = _fashion_preprocess()
    else:
        pre, disp_fn = _imagenet_preprocess(size, channels=1 if in_ch == 1 else 3)
    return LoadedModel(model, path.name, pre, disp_fn, None, None)


def _is_conv_like(module: Any) -> bool:
    return any(_is_conv(m) for m in module.modules())


def candidate_layers(model: Any, limit: int = 40) -> List[str]:
    """Dotted names of conv-like layers (modules containing a convolution), shallow ones first.

    Returns at most ``limit`` names: every top-level and second-level module that contains a
    convolution, in model order, then deeper ones.
    """
    named = [(n, m) for n, m in model.named_modules() if n and _is_conv_like(m)]
    shallow = [n for n, _ in named if n.count(".") <= 1]
    deep = [n for n, _ in named if n.count(".") > 1]
    return (shallow + deep)[:limit]


def default_layer_name(model: Any) -> Optional[str]:
    """The last top-level module that contains a convolution (e.g. ``layer4``, ``features``)."""
    last = None
    for n, m in model.named_children():
        if _is_conv_like(m):
            last = n
    return last


def _get_submodule(model: Any, name: str) -> Any:
    """``model.get_submodule(name)`` that also works on TorchScript modules."""
    module = model
    for part in name.split("."):
        children = dict(module.named_children())
        if part not in children:
            raise AttributeError(part)
        module = children[part]
    return module


def resolve_layer(model: Any, name: Optional[str], default: Optional[str] = None) -> Tuple[Any, str]:
    """The module at dotted path ``name`` (or the default layer), as ``(module, name)``.

    Raises
    ------
    CliError
        Unknown name; the message lists candidate conv-like layer names.
    """
    if name is None:
        name = default or default_layer_name(model)
        if name is None:
            raise CliError("the model has no convolution; pass --layer NAME")
    try:
        module = _get_submodule(model, name)
    except (AttributeError, IndexError, KeyError):
        cands = candidate_layers(model)
        close = difflib.get_close_matches(name, [n for n, _ in model.named_modules() if n], n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CliError(
            f"unknown layer {name!r} in {type(model).__name__}.{hint} Candidate conv-like layers: "
            + ", ".join(cands)
        ) from None
    return module, name


def resolve_methods(spec: Sequence[str]) -> List[str]:
    """Canonical method names from ``--method`` values (comma-separated allowed; ``all``)."""
    from captum_cam_ext.evaluation import METHOD_NAMES, _canonical

    out: List[str] = []
    for item in spec:
        for part in item.split(","):
            if not part.strip():
                continue
            if part.strip().lower() == "all":
                out += [m for m in METHOD_NAMES if m not in out]
                continue
            key = _canonical(part)
            if key not in METHOD_NAMES:
                raise CliError(f"unknown method {part.strip()!r}; choose from {', '.join(METHOD_NAMES)}")
            if key not in out:
                out.append(key)
    if not out:
        raise CliError(f"no method given; choose from {', '.join(METHOD_NAMES)}")
    return out


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def read_image(path: Path) -> Any:
    """uint8 (H, W, 3) RGB; raises ``CliError`` when the file cannot be decoded."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CliError(f"cannot read image {path}: {exc}") from None


def list_images(path: Path) -> List[Path]:
    """Image files of a folder (by extension, sorted), or the file itself."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    return [path]


def _parse_target(spec: Optional[str], class_names: Optional[Sequence[str]]) -> Optional[int]:
    if spec is None or spec.lower() in ("pred", "predicted", "top1"):
        return None
    try:
        return int(spec)
    except ValueError:
        pass
    if class_names is not None:
        lower = [c.lower() for c in class_names]
        if spec.lower() in lower:
            return lower.index(spec.lower())
        close = difflib.get_close_matches(spec.lower(), lower, n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CliError(f"unknown class name {spec!r}.{hint}")
    raise CliError(f"--target must be 'pred' or a class index, got {spec!r}")


# --------------------------------------------------------------------------------------------
# Subcommands
# --------------------------------------------------------------------------------------------


def _cmd_explain(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from captum_cam_ext.evaluation import make_method
    from captum_cam_ext.visualization import overlay, resize_cam

    src = Path(args.input)
    if not src.exists():
        raise CliError(f"no such file or folder: {src}")
    methods = resolve_methods(args.method)
    lm = load_model(args.model, args.weights, args.size, args.preprocessing)
    layer, layer_name = resolve_layer(lm.model, args.layer, lm.default_layer)
    files = list_images(src)
    if not files:
        raise CliError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {src}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cams = {m: make_method(m, lm.model, layer, batch_size=args.batch_size) for m in methods}
    folder = src.is_dir()
    all_maps: Dict[str, Any] = {}
    records = []
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
            _warn(f"skipping {f.name}: {exc}")
            skipped += 1
            continue
        x = lm.preprocess(img)
        with torch.no_grad():
            probs = torch.softmax(lm.model(x), dim=1)[0]
        pred = int(probs.argmax())
        target = _parse_target(args.target, lm.class_names)
        if target is None:
            target = pred
        if not 0 <= target < probs.numel():
            raise CliError(f"--target {target} is out of range for {probs.numel()} classes")
        cname = lm.class_names[target] if lm.class_names is not None else f"class {target}"
        view = lm.display(x)
        entry: Dict[str, Any] = {}
        for m, cam in cams.items():
            t0 = time.perf_counter()
            maps = cam.attribute(x, target=target, relu_attributions=True).detach()
            dt = time.perf_counter() - t0
            entry[m] = maps[0].cpu()
            up = resize_cam(maps[0], tuple(x.shape[-2:]))
            lo, hi = float(up.min()), float(up.max())
            up = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
            stem = f"{f.stem}_{m.replace('+', 'p')}"
            np.save(out / f"{stem}.npy", up.astype(np.float32))
            _save_overlay(overlay(view, maps[0], alpha=args.alpha),
                          f"{m}: {cname} (p={float(probs[target]):.2f})", out / f"{stem}.png")
            records.append({"image": str(f), "method": m, "target": target, "class": cname,
                            "prob": float(probs[target]), "seconds": dt,
                            "png": str(out / f"{stem}.png"), "npy": str(out / f"{stem}.npy")})
        all_maps[f.stem] = {"target": target, "class": cname, "prob": float(probs[target]),
                            "maps": entry}
    torch.save({"model": lm.name, "layer": layer_name, "images": all_maps}, out / "maps.pt")
    (out / "explain.json").write_text(json.dumps(records, indent=1))
    n_ok = len(files) - skipped
    print(f"explained {n_ok} image(s) with {', '.join(methods)} at layer {layer_name}; "
          f"wrote {len(records)} overlays, .npy maps and maps.pt to {out}"
          + (f" ({skipped} skipped)" if skipped else ""))
    if n_ok == 0:
        raise CliError(f"no readable image in {src}")
    return 0


def _save_overlay(img: Any, title: str, path: Path) -> None:
    from matplotlib.figure import Figure

    h, w = img.shape[:2]
    fig = Figure(figsize=(max(2.5, w / 100), max(2.5, h / 100) + 0.35))
    ax = fig.add_axes((0, 0, 1, h / (h + 35)))
    ax.imshow(img)
    ax.set_axis_off()
    fig.text(0.5, 1 - 0.5 * 35 / (h + 35), title, ha="center", va="center", fontsize=9)
    fig.savefig(path, dpi=100)


class _ImageFolder:
    """The readable images of a folder as a dataset of preprocessed tensors (C, S, S)."""

    def __init__(self, folder: Path, preprocess: Callable) -> None:
        self.items = []
        for f in list_images(folder):
            try:
                img = read_image(f)
            except CliError as exc:
                _warn(f"skipping {f.name}: {exc}")
                continue
            self.items.append(preprocess(img)[0])
        if not self.items:
            raise CliError(f"no readable image in {folder}")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from torch.utils.data import TensorDataset

    from captum_cam_ext.evaluation import evaluate, results_markdown

    methods = resolve_methods(args.method)
    if args.dataset == "fashion-mnist":
        from captum_cam_ext.data import fashion_mnist_available, load_fashion_mnist

        if not fashion_mnist_available(args.fmnist_root):
            raise CliError("Fashion-MNIST files not found (install dataset-fashion-mnist or pass "
                           "--fmnist-root DIR)")
        prep = args.preprocessing if args.preprocessing != "auto" else "auto"
        lm = load_model(args.model, args.weights, args.size, prep)
        imgs, labels = load_fashion_mnist(args.split, args.fmnist_root)
        imgs, labels = imgs[: args.limit], labels[: args.limit]
        import torch

        x = torch.cat([lm.preprocess(im) for im in imgs])
        dataset: Any = TensorDataset(x, torch.from_numpy(labels))
        title = f"Fashion-MNIST {args.split} ({len(dataset)} images)"
    else:
        if args.images is None:
            raise CliError("pass an image folder (evaluate FOLDER) or --dataset fashion-mnist")
        folder = Path(args.images)
        if not folder.exists():
            raise CliError(f"no such file or folder: {folder}")
        if args.target == "label":
            raise CliError("--target label needs --dataset fashion-mnist (folders have no labels)")
        lm = load_model(args.model, args.weights, args.size, args.preprocessing)
        dataset = _ImageFolder(folder, lm.preprocess)
        if args.limit is not None:
            dataset.items = dataset.items[: args.limit]
        title = f"{folder} ({len(dataset)} images)"
    layer, layer_name = resolve_layer(lm.model, args.layer, lm.default_layer)
    metrics = ["average_drop", "average_increase", "average_gain"]
    if args.causal:
        metrics += ["deletion_auc", "insertion_auc"]
    res = evaluate(lm.model, layer, methods, dataset, batch_size=args.batch_size,
                   target=args.target, metrics=metrics, causal_steps=args.causal_steps,
                   method_batch_size=args.method_batch_size, progress=not args.no_progress)
    md = results_markdown(res, title=f"{lm.name}, layer {layer_name}: {title}")
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(md + "\n")
        payload = res.to_dict()
        payload.update(model=lm.name, layer=layer_name, dataset=title, target=args.target)
        if not args.per_example:
            payload.pop("per_example")
        (out / "results.json").write_text(json.dumps(payload, indent=1))
        print(md)
        print(f"wrote {out / 'results.md'} and {out / 'results.json'}")
    return 0


def _cmd_walls(args: argparse.Namespace) -> int:
    from captum_cam_ext.walls.__main__ import main as walls_main

    try:
        return int(walls_main(["audit", *args.walls_args]) or 0)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    if args.script:
        script = Path(args.script_path)
        if not script.is_file():
            raise CliError(f"benchmark script not found: {script} (run from the repository root)")
        import shlex

        return subprocess.call([sys.executable, str(script), *shlex.split(args.script_args)])
    import statistics

    import torch

    from captum_cam_ext.evaluation import make_method

    methods = resolve_methods(args.method)
    lm = load_model(args.model, args.weights, args.size, "auto", quiet=True)
    layer, layer_name = resolve_layer(lm.model, args.layer, lm.default_layer)
    in_ch = _first_conv_in_channels(lm.model)
    size = 224 if lm.name == "efficientnet_lite0" else (28 if in_ch == 1 and args.size == 224 else args.size)
    torch.manual_seed(0)
    x = torch.randn(args.batch, in_ch, size, size)
    rows = []
    with torch.no_grad():
        lm.model(x)
    t = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            lm.model(x)
        t.append(time.perf_counter() - t0)
    rows.append(("forward (no grad)", statistics.median(t)))
    for m in methods:
        cam = make_method(m, lm.model, layer, batch_size=args.method_batch_size)
        t = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cam.attribute(x, target=0)
            t.append(time.perf_counter() - t0)
        rows.append((m, statistics.median(t)))
    print(f"{lm.name}, layer {layer_name}, batch {args.batch}x{in_ch}x{size}x{size}, "
          f"{torch.get_num_threads()} thread(s), median of {args.repeats}")
    print("| method | seconds | x forward |")
    print("|---|---:|---:|")
    for name, s in rows:
        print(f"| {name} | {s:.4f} | {s / rows[0][1]:.1f} |")
    return 0


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser, default_model: str = "efficientnet_lite0") -> None:
    p.add_argument("--model", default=default_model,
                   help="torchvision architecture name (resnet18, ...), efficientnet_lite0 "
                        f"(bundled weights), or a TorchScript / torch.save file (default {default_model})")
    p.add_argument("--weights", default=None, help="local state_dict file for a torchvision architecture")
    p.add_argument("--layer", default=None,
                   help="target layer, dotted name (layer4, features.7, _blocks.15); default: the "
                        "model's last conv block")
    p.add_argument("--size", type=int, default=224, help="input size for torchvision/file models")
    p.add_argument("--preprocessing", choices=("auto", "imagenet", "fashion-mnist"), default="auto")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``captum-cam-ext``."""
    from captum_cam_ext.evaluation import METHOD_NAMES

    parser = argparse.ArgumentParser(
        prog="captum-cam-ext",
        description="Class-activation maps (Grad-CAM family, Score-CAM, Conceptor-CAM) for PyTorch "
                    "models, as Captum attributions.",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    methods_help = f"CAM method(s), comma-separated or repeated: {', '.join(METHOD_NAMES)}, or all"

    e = sub.add_parser("explain", help="overlays and maps for an image or a folder of images")
    e.add_argument("input", metavar="IMAGE_OR_FOLDER")
    _add_model_args(e)
    e.add_argument("--method", action="append", default=None, help=methods_help + " (default gradcam)")
    e.add_argument("--target", default="pred", help="'pred' (default), a class index or an ImageNet class name")
    e.add_argument("--out", default="out/explain", help="output folder (default out/explain)")
    e.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity (default 0.5)")
    e.add_argument("--batch-size", type=int, default=32, help="masked forwards per chunk (Score-CAM)")
    e.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("evaluate", help="CAM metrics over an image folder or Fashion-MNIST")
    v.add_argument("images", nargs="?", default=None, metavar="FOLDER")
    v.add_argument("--dataset", choices=("folder", "fashion-mnist"), default="folder")
    v.add_argument("--split", choices=("train", "test"), default="test")
    v.add_argument("--fmnist-root", default=None, help="folder with the Fashion-MNIST .gz files")
    v.add_argument("--limit", type=int, default=None, help="first N examples only")
    _add_model_args(v)
    v.add_argument("--method", action="append", default=None, help=methods_help + " (default gradcam)")
    v.add_argument("--target", choices=("pred", "label"), default="pred")
    v.add_argument("--causal", action="store_true", help="also deletion/insertion AUC")
    v.add_argument("--causal-steps", type=int, default=16)
    v.add_argument("--batch-size", type=int, default=16)
    v.add_argument("--method-batch-size", type=int, default=32)
    v.add_argument("--per-example", action="store_true", help="keep per-example values in the JSON")
    v.add_argument("--out", default="out/evaluate")
    v.add_argument("--no-progress", action="store_true")

    w = sub.add_parser("walls", help="see-through-walls audit")
    wsub = w.add_subparsers(dest="walls_command", required=True, metavar="audit")
    wa = wsub.add_parser("audit", help="train (cached) the blind model and audit every CAM",
                         add_help=False)
    wa.add_argument("walls_args", nargs="*",
                    help="passed to python -m captum_cam_ext.walls audit (try walls audit --help)")

    b = sub.add_parser("bench", help="quick timing of CAM methods (or --script: benchmarks/cam_speed.py)")
    _add_model_args(b, default_model="resnet18")
    b.add_argument("--method", action="append", default=None, help=methods_help)
    b.add_argument("--batch", type=int, default=2)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--method-batch-size", type=int, default=64)
    b.add_argument("--script", action="store_true", help="run benchmarks/cam_speed.py instead")
    b.add_argument("--script-path", default="benchmarks/cam_speed.py")
    b.add_argument("--script-args", default="",
                   help="arguments for the script, one string (--script-args='--repeats 3')")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``captum-cam-ext``; returns the exit status (0 ok, 2 user error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `walls audit ...` forwards everything after `audit` (options included) to the walls CLI.
    i = 0
    while i < len(argv) and (argv[i] == "--debug" or argv[i].startswith("--threads")):
        i += 1 if (argv[i] == "--debug" or "=" in argv[i]) else 2
    if argv[i : i + 2] == ["walls", "audit"]:
        head = build_parser().parse_args([*argv[:i], "walls", "audit"])
        head.walls_args = argv[i + 2 :]
        return _run(head)
    args = build_parser().parse_args(argv)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "method", "unset") is None:
        args.method = (["gradcam", "gradcam++", "layercam", "scorecam"] if args.command == "bench"
                       else ["gradcam"])
    try:
        if args.threads is not None:
            import torch

            torch.set_num_threads(max(1, args.threads))
        if args.command == "explain":
            return _cmd_explain(args)
        if args.command == "evaluate":
            return _cmd_evaluate(args)
        if args.command == "walls":
            return _cmd_walls(args)
        if args.command == "bench":
            return _cmd_bench(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError) as exc:
        if args.debug:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {type(exc).__name__}: {first} (run with --debug for the traceback)",
              file=sys.stderr)
        return 2 if isinstance(exc, (ValueError, TypeError)) else 1
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    print(f"error: unknown command {args.command!r}", file=sys.stderr)  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
