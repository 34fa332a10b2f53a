"""Every CAM method of the registry x common architectures, next to Captum, pytorch-grad-cam and torchcam (issue 12).

Stages (each cached under ``benchmarks/cache/matrix[_quick]/<device>/``, so an interrupted run resumes
where it stopped; ``--force`` recomputes):

``grad``
    Per architecture and batch size (1 and 8, 224x224, the bundled photos): one no-grad forward,
    every registered method that is not a perturbation method (the registry is iterated, so a
    method added later is timed without touching this file), MultiCam with its 5 default methods,
    and the peers that implement the same method (Captum, pytorch-grad-cam, torchcam), all in one
    process, interleaved round-robin (a slow period of the machine hits every entry alike),
    medians of ``--repeats`` runs after one warm-up run.
``memory``
    Peak extra memory of one call, each entry in a fresh process (CPU: growth of the resident set
    sampled every 0.2 ms; CUDA: ``max_memory_allocated`` growth).
``perturbation``
    The registry's perturbation methods (Score-CAM, Ablation-CAM) with their defaults, one image,
    next to pytorch-grad-cam's and torchcam's defaults; a fresh method object per run, so any
    one-off tuning of ours is inside the timing. Maps are checked against pytorch-grad-cam's.
``tune``
    The data behind the perturbation defaults: milliseconds per masked copy for each chunk size
    and memory format, per architecture.
``evaluate``
    ``captum-cam-ext evaluate`` (Grad-CAM + Average Drop / Increase + deletion / insertion AUC) on
    Fashion-MNIST test images, one process vs ``torchrun --nproc_per_node 2``, next to
    pytorch-grad-cam's metric classes and Quantus 0.6.
``profile``
    Where a gradient CAM's time goes, per architecture and batch: the no-grad forward, the forward
    with autograd recording the whole graph (what a CAM that hooks the model and calls
    ``backward`` pays before its backward), the floor of a trimmed-graph gradient CAM (no-grad
    forward up to the layer, autograd from the layer on, gradient of the target scores to the
    layer's output, no CAM arithmetic), ours and Captum's Grad-CAM; interleaved, ``--profile-repeats``
    rounds.
``report``
    ``benchmarks/results/matrix.md`` (and ``matrix.json``, ``matrix.png``) from the caches.

Architectures: torchvision resnet50, densenet121, convnext_tiny, mobilenet_v3_large,
regnet_y_400mf, vit_b_16 (random weights: no weights can be downloaded here; speed does not depend
on them) and the bundled pretrained EfficientNet-Lite0.

Usage::

    python benchmarks/matrix.py                 # the full CPU matrix (about an hour on a quiet machine)
    python benchmarks/matrix.py --quick         # < 5 minutes: batch 1, fewer repeats, small layers
    python benchmarks/matrix.py --device cuda   # on a GPU (benchmarks/gpu.sh)
    python benchmarks/matrix.py --stages report # rebuild the page from the caches
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# On a shared machine OpenMP threads that spin while waiting for a descheduled peer make small kernels
# 10-60x slower (regnet_y_400mf, batch 1, 2 threads, load 6: 3.3 s per forward with the default policy,
# 0.055 s with PASSIVE). Set before torch starts its thread pool; export OMP_WAIT_POLICY to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import Tensor, nn  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STAGES = ("grad", "memory", "perturbation", "tune", "evaluate", "profile", "report")

# ---------------------------------------------------------------------------------------------
# Architectures and inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchSpec:
    """One architecture of the matrix.

    Attributes
    ----------
    name : str
        torchvision name, or ``efficientnet_lite0`` (the bundled pretrained model).
    layer : str
        The gradient-CAM layer (dotted path): the last spatial feature map.
    perturbation_layers, quick_layers : tuple of str
        Layers explained by the perturbation methods in the full run and with ``--quick``
        (``--perturbation-layers ARCH=LAYER`` overrides, e.g. ``vit_b_16=...`` on a GPU).
    tokens : bool
        The layer outputs ViT tokens ``(N, 1 + h*w, C)`` (``vit_reshape_transform``).
    """

    name: str
    layer: str
    perturbation_layers: Tuple[str, ...]
    quick_layers: Tuple[str, ...] = ()
    tokens: bool = False


VIT_LAYER = "encoder.layers.encoder_layer_11.ln_1"
ARCHS: Dict[str, ArchSpec] = {
    a.name: a
    for a in (
        # perturbation layers: the last feature map where one image costs at most ~1,300 forwards on the
        # 2-core CPU; on the heavy networks an earlier, narrower layer (the cost is K forwards of the
        # whole model whatever the layer; the per-forward cost, hence the speed-up, does not depend on K)
        ArchSpec("resnet50", "layer4", ("layer1",)),
        ArchSpec("densenet121", "features", ("features.transition2",)),
        ArchSpec("convnext_tiny", "features", ("features.3",)),
        ArchSpec("mobilenet_v3_large", "features", ("features",)),
        ArchSpec("regnet_y_400mf", "trunk_output", ("trunk_output",), ("trunk_output",)),
        ArchSpec("vit_b_16", VIT_LAYER, (), tokens=True),  # 768 forwards of ViT-B per run: tune data only on CPU
        ArchSpec("efficientnet_lite0", "_head_act", ("_blocks.15", "_head_act"), ("_blocks.15",)),
    )
}

#: pytorch-grad-cam / torchcam / Captum classes implementing a registered method (by canonical name).
PGC_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcamelementwise": "GradCAMElementWise",
    "shapleycam": "ShapleyCAM",
    "finercam": "FinerCAM",
    "fem": "FEM",
    "kpcacam": "KPCA_CAM",
    "randomcam": "RandomCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
    "fullgrad": "FullGrad",
    "refinecam": "RefineCAM",
}
TORCHCAM_CLASSES = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMpp",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "gapcam": "CAM",
    "scorecam": "ScoreCAM",
    "smoothgradcam++": "SmoothGradCAMpp",
    "sscam": "SSCAM",
    "iscam": "ISCAM",
}
CAPTUM_CLASSES = {"gradcam": "LayerGradCam", "guidedgradcam": "GuidedGradCam"}
PEERS = ("captum", "pytorch-grad-cam", "torchcam")
MULTICAM = "multicam (5 methods)"


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path."""
    module = model
    for part in path.split("."):
        module = getattr(module, part)
    return module


def build_model(name: str, device: torch.device) -> nn.Module:
    """An eval-mode model: torchvision with random weights (seed 0) or the pretrained EfficientNet-Lite0."""
    if name == "efficientnet_lite0":
        from captum_cam_ext.data import load_efficientnet_lite0

        return load_efficientnet_lite0(device)
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval().to(device)


def photo_batch(arch: str, batch: int, device: torch.device) -> Tensor:
    """``batch`` bundled photos at 224x224 (cycled; the second round mirrored), preprocessed for ``arch``."""
    from captum_cam_ext.data import bundled_photos, preprocess_efficientnet

    photos = list(bundled_photos().values())
    x = preprocess_efficientnet(photos)  # (P, 3, 224, 224), (x - 0.5) / 0.5
    idx = [i % len(photos) for i in range(batch)]
    x = torch.stack([x[i].flip(-1) if k >= len(photos) else x[i] for k, i in enumerate(idx)])
    if arch != "efficientnet_lite0":  # ImageNet normalisation for torchvision models
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        x = ((x * 0.5 + 0.5) - mean) / std
    return x.contiguous().to(device)


@dataclass
class Setup:
    """A model, a layer and a batch of inputs with their targets (the model's predicted classes)."""

    arch: ArchSpec
    layer_name: str
    model: nn.Module
    layer: nn.Module
    x: Tensor
    targets: List[int]
    reshape: Optional[Callable[[Tensor], Tensor]]
    device: torch.device


def make_setup(arch: str, batch: int, device: torch.device, layer_name: Optional[str] = None) -> Setup:
    """Build the model, pick the layer, load the photos, and take the predicted classes as targets."""
    spec = ARCHS[arch]
    model = build_model(arch, device)
    name = layer_name or spec.layer
    x = photo_batch(arch, batch, device)
    with torch.no_grad():
        targets = [int(t) for t in model(x).argmax(1)]
    reshape = None
    if spec.tokens:
        from captum_cam_ext.reshape import vit_reshape_transform

        reshape = vit_reshape_transform
    return Setup(spec, name, model, get_module(model, name), x, targets, reshape, device)


# ---------------------------------------------------------------------------------------------
# Timed entries
# ---------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One timed call: who implements it, which registered method, and the call itself."""

    label: str
    family: str  # "baseline", "ours" or a peer name
    method: str  # canonical method name ("forward", "multicam (5 methods)" for the special rows)
    fn: Callable[[], Any]


def pgc_targets(targets: Sequence[int]) -> List[Any]:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(t) for t in targets]


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name``."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def ours_entry(s: Setup, method: str, **kwargs: Any) -> Entry:
    """Our registered method with its defaults (a token layout passed the way the CLI passes it)."""
    from captum_cam_ext.cli.methods import build_method

    def run() -> Any:
        cam = build_method(method, s.model, s.layer, None, s.reshape)
        kw = dict(kwargs)
        if accepts(cam.attribute, "relu_attributions"):
            kw.setdefault("relu_attributions", True)
        return cam.attribute(s.x, target=s.targets, **kw)

    return Entry(f"ours {method}", "ours", method, run)


def pgc_release(cam: Any) -> None:
    """Remove every hook a pytorch-grad-cam object (or its base CAMs) registered."""
    for obj in [cam, getattr(cam, "base_cam", None), *getattr(cam, "base_cam_per_layer", [])]:
        hooks = getattr(obj, "activations_and_grads", None)
        if hooks is not None:
            hooks.release()


def pgc_entry(s: Setup, method: str, **kwargs: Any) -> Entry:
    """pytorch-grad-cam's class, used as its README shows (one object, one call); hooks released."""
    import pytorch_grad_cam

    cls = getattr(pytorch_grad_cam, PGC_CLASSES[method])
    extra: Dict[str, Any] = dict(kwargs)
    if method == "ablationcam" and s.arch.tokens:
        extra["ablation_layer"] = pytorch_grad_cam.AblationLayerVit()
    targets = None if method == "finercam" else pgc_targets(s.targets)

    def run() -> Any:
        cam = cls(model=s.model, target_layers=[s.layer], reshape_transform=s.reshape, **extra)
        try:
            return cam(input_tensor=s.x, targets=targets)
        finally:
            pgc_release(cam)
            s.model.zero_grad(set_to_none=True)  # pytorch-grad-cam back-propagates into the parameters
            if hasattr(cam, "ablation_layer"):  # AblationCAM swaps the layer and does not swap it back on errors
                from pytorch_grad_cam.utils.find_layers import replace_layer_recursive

                replace_layer_recursive(s.model, cam.ablation_layer, s.layer)

    return Entry(f"pytorch-grad-cam {PGC_CLASSES[method]}", "pytorch-grad-cam", method, run)


def torchcam_entry(s: Setup, method: str) -> Entry:
    """torchcam's extractor: hooks, the user's forward, then the extractor call; hooks removed."""
    import torchcam.methods as tcm

    cls = getattr(tcm, TORCHCAM_CLASSES[method])
    needs_grad = method not in ("gapcam", "scorecam", "sscam", "iscam")

    def run() -> Any:
        kw: Dict[str, Any] = {"input_shape": tuple(s.x.shape[1:])}
        if s.reshape is not None:
            kw["reshape_transform"] = s.reshape
        ext = cls(s.model, target_layer=s.layer_name, **kw)
        try:
            with torch.set_grad_enabled(needs_grad):
                scores = s.model(s.x)
            return ext(class_idx=list(s.targets), scores=scores)
        finally:
            ext.remove_hooks()
            s.model.zero_grad(set_to_none=True)

    return Entry(f"torchcam {TORCHCAM_CLASSES[method]}", "torchcam", method, run)


def captum_entry(s: Setup, method: str) -> Entry:
    import captum.attr

    cls = getattr(captum.attr, CAPTUM_CLASSES[method])
    cam = cls(s.model, s.layer)
    kw = {"relu_attributions": True} if method == "gradcam" else {}
    label = f"captum {CAPTUM_CLASSES[method]}"
    return Entry(label, "captum", method, lambda: cam.attribute(s.x, target=s.targets, **kw))


def gradient_entries(s: Setup) -> Tuple[Dict[str, Entry], Dict[str, str]]:
    """Every non-perturbation method of the registry and its peers; ``(entries, errors at build)``."""
    from captum_cam_ext import MultiCam
    from captum_cam_ext.registry import method_kind, methods

    def forward() -> Any:
        with torch.no_grad():
            return s.model(s.x)

    entries: Dict[str, Entry] = {"forward (no grad)": Entry("forward (no grad)", "baseline", "forward", forward)}
    errors: Dict[str, str] = {}
    for name, cls in methods().items():
        if method_kind(cls) == "perturbation":
            continue
        builders: List[Callable[[Setup, str], Entry]] = [ours_entry]
        if name in CAPTUM_CLASSES:
            builders.append(captum_entry)
        if name in PGC_CLASSES:
            builders.append(pgc_entry)
        if name in TORCHCAM_CLASSES:
            builders.append(torchcam_entry)
        for build in builders:
            try:
                e = build(s, name)
                entries[e.label] = e
            except Exception as exc:  # noqa: BLE001 - a peer that cannot even be built is reported
                errors[f"{name} ({build.__name__})"] = error_text(exc)
    multi = MultiCam(s.model, s.layer, reshape_transform=s.reshape)
    entries[f"ours {MULTICAM}"] = Entry(
        f"ours {MULTICAM}", "ours", MULTICAM, lambda: multi.attribute(s.x, target=s.targets, relu_attributions=True)
    )
    return entries, errors


def method_kinds() -> Dict[str, str]:
    """``{canonical name: kind}`` of the registry."""
    from captum_cam_ext.registry import method_kind, methods

    return {n: method_kind(c) for n, c in methods().items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: The clock the timings use (set by ``main``): ``time.thread_time`` -- the CPU time of this thread -- on a CPU
#: with one torch thread (every kernel then runs in the calling thread, autograd's CPU backward included), so
#: that the time other processes take from the shared cores is not counted; wall time otherwise.
CLOCK: Callable[[], float] = time.perf_counter


def time_interleaved(
    entries: Dict[str, Entry],
    repeats: int,
    device: torch.device,
    once: Sequence[str] = (),
    baseline: Optional[str] = None,
    pair_every: int = 3,
) -> Tuple[Dict[str, List[float]], Dict[str, List[float]], Dict[str, str]]:
    """Warm-up once, then ``repeats`` round-robin rounds: ``(times, paired ratios, errors)``.

    The ``baseline`` entry (the no-grad forward) is run again before every ``pair_every``-th entry
    of a round, and each entry's time is divided by the latest baseline time: a ratio of two runs
    made seconds apart, which a machine whose speed drifts during a round (other jobs starting and
    stopping) does not bias. Entries that raise are dropped with their error. Entries in ``once``
    (the expensive composite methods, for which no goal is set) are timed in one run after the
    rounds, without a warm-up of their own.
    """
    times: Dict[str, List[float]] = {label: [] for label in entries}
    ratios: Dict[str, List[float]] = {label: [] for label in entries}
    errors: Dict[str, str] = {}
    live = {}
    clock = CLOCK
    for label, e in entries.items():
        if label in once:
            continue
        try:
            e.fn()
            sync(device)
            live[label] = e
        except Exception as exc:  # noqa: BLE001 - a method that fails on an architecture is reported
            errors[label] = error_text(exc)

    def timed(label: str, e: Entry) -> Optional[float]:
        try:
            sync(device)
            t0 = clock()
            e.fn()
            sync(device)
        except Exception as exc:  # noqa: BLE001
            errors[label] = error_text(exc)
            return None
        dt = clock() - t0
        times[label].append(dt)
        return dt

    base_entry = entries.get(baseline) if baseline is not None else None
    last_base: Optional[float] = None
    rounds: List[Tuple[int, Dict[str, Entry]]] = [(repeats, live), (1, {k: entries[k] for k in once if k in entries})]
    for count, group in rounds:
        for _ in range(count):
            for i, (label, e) in enumerate(group.items()):
                if label in errors or label == baseline:
                    continue
                if base_entry is not None and baseline is not None and (last_base is None or i % pair_every == 0):
                    last_base = timed(baseline, base_entry)
                dt = timed(label, e)
                if dt is not None and last_base:
                    ratios[label].append(dt / last_base)
    return (
        {k: v for k, v in times.items() if v},
        {k: v for k, v in ratios.items() if v},
        errors,
    )


# ---------------------------------------------------------------------------------------------
# Machine, load, caches
# ---------------------------------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Wait (up to ``max_wait_s``) until the 1-minute load average is below ``max_load``; return it."""
    start = time.time()
    while True:
        load = load_average()
        if load < max_load or time.time() - start >= max_wait_s:
            return load
        print(f"load average {load:.2f} >= {max_load}: waiting for a quiet machine", flush=True)
        time.sleep(min(60.0, max(1.0, max_wait_s - (time.time() - start))))


class LoadSampler:
    """Samples the 1-minute load average every few seconds while a stage runs."""

    def __init__(self, every_s: float = 5.0) -> None:
        self.every_s = every_s
        self.samples: List[float] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            self.samples.append(load_average())
            self._done.wait(self.every_s)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._done.set()
        self._thread.join()
        self.samples.append(load_average())

    def summary(self) -> Dict[str, float]:
        s = self.samples or [load_average()]
        return {"min": min(s), "median": statistics.median(s), "max": max(s)}


def versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "torchvision", "captum", "grad-cam", "torchcam", "quantus", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs"
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


@dataclass
class Context:
    args: argparse.Namespace
    device: torch.device
    cache: str
    archs: List[str]
    batches: List[int]
    log: List[str] = field(default_factory=list)

    def arch_batches(self, arch: str) -> List[int]:
        """The batch sizes timed on ``arch``: all of ``--batches``, or batch 1 only for an architecture
        left out of ``--big-batch-archs`` (a subsampled run)."""
        big = self.args.big_batch_archs
        if big is None or arch in big.split(","):
            return list(self.batches)
        return [b for b in self.batches if b == 1] or [min(self.batches)]

    def path(self, *parts: str) -> str:
        p = os.path.join(self.cache, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def cached(self, name: str) -> Optional[Dict[str, Any]]:
        p = self.path(name)
        if self.args.force or not os.path.exists(p):
            return None
        with open(p) as f:
            return json.load(f)

    def store(self, name: str, payload: Dict[str, Any]) -> None:
        payload = dict(payload, stored=datetime.datetime.now().isoformat(timespec="seconds"),
                       torch_threads=torch.get_num_threads(), clock=CLOCK.__name__)
        tmp = self.path(name) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=1)
        os.replace(tmp, self.path(name))

    def say(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {load_average():.2f}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Stage: gradient CAMs
# ---------------------------------------------------------------------------------------------


def stage_grad(ctx: Context) -> None:
    for batch in ctx.batches:
        for arch in ctx.archs:
            if batch not in ctx.arch_batches(arch):
                continue
            name = f"grad_{arch}_b{batch}.json"
            if ctx.cached(name) is not None:
                continue
            load = wait_for_quiet(ctx.args.max_load, ctx.args.max_wait)
            ctx.say(f"grad {arch} batch {batch} (load at start {load:.2f})")
            s = make_setup(arch, batch, ctx.device)
            entries, build_errors = gradient_entries(s)
            kinds = method_kinds()
            once = [k for k, e in entries.items() if kinds.get(e.method) == "composite"]
            if ctx.args.quick:  # no goal is set for the composite methods: left out of the quick run
                entries = {k: e for k, e in entries.items() if k not in once}
                once = []
            t0 = time.time()
            with LoadSampler() as sampler:
                times, ratios, errors = time_interleaved(
                    entries, ctx.args.repeats, ctx.device, once, baseline="forward (no grad)"
                )
            errors.update(build_errors)
            ctx.store(
                name,
                {
                    "arch": arch,
                    "batch": batch,
                    "layer": s.layer_name,
                    "times": times,
                    "ratios": ratios,
                    "entries": {k: {"family": e.family, "method": e.method} for k, e in entries.items()},
                    "errors": errors,
                    "load": sampler.summary(),
                    "wall_s": time.time() - t0,
                    "repeats": ctx.args.repeats,
                    "once": once,
                },
            )
            del s, entries
            gc.collect()


# ---------------------------------------------------------------------------------------------
# Stage: peak memory (fresh process per entry)
# ---------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_one(args: argparse.Namespace) -> None:
    """In a fresh process: build the setup, run one entry once, print the peak extra memory (MiB)."""
    device = torch.device(args.device)
    s = make_setup(args.arch, args.batch, device)
    entries, _ = gradient_entries(s)
    fn = entries[args.memory_one].fn
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        print(json.dumps({"peak_mib": (peak - before) / 2**20}))
        return
    before = rss_bytes()
    top = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            top[0] = max(top[0], rss_bytes())
            time.sleep(0.0002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        done.set()
        thread.join()
    top[0] = max(top[0], rss_bytes())
    print(json.dumps({"peak_mib": (top[0] - before) / 2**20}))


def memory_labels(grad_cell: Dict[str, Any], which: str) -> List[str]:
    """The entries whose memory is measured: all, or ``core`` (the forward, ours, and every peer's Grad-CAM)."""
    labels = list(grad_cell["times"])
    if which == "all":
        return labels
    meta = grad_cell["entries"]
    if which == "gradcam":
        return [k for k in labels if meta[k]["method"] == "gradcam" and meta[k]["family"] in ("ours", "captum")]
    if which == "peers":  # the forward and every implementation's Grad-CAM
        return [k for k in labels if meta[k]["family"] == "baseline" or meta[k]["method"] == "gradcam"]
    return [k for k in labels if meta[k]["family"] in ("baseline", "ours") or meta[k]["method"] == "gradcam"]


QUICK_MEMORY_ARCHS = ("resnet50", "efficientnet_lite0")


def stage_memory(ctx: Context) -> None:
    for arch in ctx.archs:
        if ctx.args.quick and arch not in QUICK_MEMORY_ARCHS:
            continue
        batch = max(ctx.arch_batches(arch))
        grad = ctx.cached(f"grad_{arch}_b{batch}.json")
        if grad is None:
            ctx.say(f"memory {arch}: no grad cell for batch {batch} (run the grad stage first); skipped")
            continue
        name = f"memory_{arch}_b{batch}.json"
        got = ctx.cached(name) or {"arch": arch, "batch": batch, "peak_mib": {}, "errors": {}}
        todo = [k for k in memory_labels(grad, ctx.args.memory_entries) if k not in got["peak_mib"]]
        if not todo:
            continue
        ctx.say(f"memory {arch} batch {batch}: {len(todo)} fresh processes")
        for label in todo:
            cmd = [
                sys.executable, __file__, "--memory-one", label, "--arch", arch, "--batch", str(batch),
                "--device", ctx.args.device, "--threads", str(ctx.args.threads),
            ]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                got["errors"][label] = (out.stderr.strip().splitlines() or ["failed"])[-1][:200]
            else:
                got["peak_mib"][label] = float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"])
            ctx.store(name, got)


# ---------------------------------------------------------------------------------------------
# Stage: perturbation methods
# ---------------------------------------------------------------------------------------------


def perturbation_methods() -> List[str]:
    from captum_cam_ext.registry import methods

    return list(methods("perturbation"))


def perturbation_maps(out: Any) -> Tensor:
    """A peer's or our output as ``(N, H, W)`` float tensor."""
    if isinstance(out, list):  # torchcam: one map per layer
        out = out[0]
    t = torch.as_tensor(np.asarray(out)) if not isinstance(out, Tensor) else out.detach().cpu()
    return t.reshape(t.shape[0], *t.shape[-2:]).float()


def error_text(exc: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters)."""
    msg = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {msg}"


def layer_channels(s: Setup) -> Tuple[int, List[int], int]:
    """The layer's channel count, map size and number of constant channels on ``s.x``."""
    acts: List[Tensor] = []
    with torch.no_grad():
        handle = s.layer.register_forward_hook(lambda mod, inp, out: acts.append(out))
        try:
            s.model(s.x)
        finally:
            handle.remove()
    a = acts[-1] if s.reshape is None else s.reshape(acts[-1])
    flat = a.flatten(2)
    return int(a.shape[1]), list(a.shape[2:]), int((flat.amax(2) == flat.amin(2)).sum())


def perturbation_entries(s: Setup, method: str, stats: Dict[str, Any]) -> Tuple[Dict[str, Entry], Dict[str, str]]:
    """Ours (a fresh object per run, defaults) and the peers' defaults for one perturbation method."""
    from captum_cam_ext.cli.methods import build_method

    def ours() -> Any:
        cam = build_method(method, s.model, s.layer, None, s.reshape)
        out = cam.attribute(s.x, target=s.targets, relu_attributions=True, upsample_to_input=True, normalize=True)
        stats.clear()
        stats.update(getattr(cam, "last_run", {}) or {})
        return out

    entries = {f"ours {method}": Entry(f"ours {method}", "ours", method, ours)}
    errors: Dict[str, str] = {}
    peers: List[Tuple[str, Dict[str, str], Callable[[Setup, str], Entry]]] = [
        ("pytorch-grad-cam", PGC_CLASSES, pgc_entry),
        ("torchcam", TORCHCAM_CLASSES, torchcam_entry),
    ]
    for family, table, make in peers:
        if method in table:
            try:
                e = make(s, method)
                entries[e.label] = e
            except Exception as exc:  # noqa: BLE001 - a peer that cannot be built is reported
                errors[family] = error_text(exc)
    return entries, errors


def perturbation_cell(ctx: Context, arch: str, layer_name: str, method: str, repeats: int) -> Dict[str, Any]:
    """Time ours and the peers on one image (interleaved runs); compare the maps with pytorch-grad-cam's."""
    s = make_setup(arch, 1, ctx.device, layer_name)
    stats: Dict[str, Any] = {}
    entries, errors = perturbation_entries(s, method, stats)
    maps: Dict[str, Tensor] = {}
    times: Dict[str, List[float]] = {k: [] for k in entries}
    wall_times: Dict[str, List[float]] = {k: [] for k in entries}
    runs: List[Dict[str, Any]] = []
    t_cell = time.time()
    with LoadSampler() as sampler:
        for r in range(repeats):
            for label, e in entries.items():
                if label in errors:
                    continue
                try:
                    sync(ctx.device)
                    t0, w0 = CLOCK(), time.perf_counter()
                    out = e.fn()
                    sync(ctx.device)
                    times[label].append(CLOCK() - t0)
                    wall_times[label].append(time.perf_counter() - w0)
                except Exception as exc:  # noqa: BLE001 - a method that fails here is reported
                    errors[label] = error_text(exc)
                    continue
                if r == 0:
                    maps[label] = perturbation_maps(out)
                if e.family == "ours":
                    runs.append(dict(stats))
    ours_map = maps.get(f"ours {method}")
    diffs = {
        label: float((m - ours_map).abs().max())
        for label, m in maps.items()
        if ours_map is not None and label != f"ours {method}" and m.shape == ours_map.shape
    }
    channels, size, constant = layer_channels(s)
    return {
        "arch": arch, "layer": layer_name, "method": method, "channels": channels, "map_size": size,
        "constant_channels": constant, "times": times, "wall_times": wall_times,
        "errors": errors, "max_abs_diff_vs": diffs,
        "ours_runs": runs, "repeats": repeats, "load": sampler.summary(), "wall_s": time.time() - t_cell,
        "entries": {k: {"family": e.family, "method": e.method} for k, e in entries.items()},
    }  # fmt: skip


def perturbation_layers(ctx: Context, spec: ArchSpec) -> Tuple[str, ...]:
    """The layers the perturbation methods explain on ``spec`` (``--perturbation-layers`` overrides)."""
    for item in ctx.args.perturbation_layers.split(","):
        arch, _, layers = item.partition("=")
        if arch == spec.name:
            return tuple(x for x in layers.split("+") if x)
    return spec.quick_layers if ctx.args.quick else spec.perturbation_layers


def stage_perturbation(ctx: Context) -> None:
    """Score-CAM and Ablation-CAM on every perturbation layer; the registry's other perturbation
    methods (sampled Score-CAMs: tens of Score-CAMs each) on the small layers only, once."""
    quick = ctx.args.quick
    core = [m for m in ("scorecam", "ablationcam") if m in perturbation_methods()]
    for arch in ctx.archs:
        spec = ARCHS[arch]
        for layer_name in perturbation_layers(ctx, spec):
            small = layer_name in spec.quick_layers
            for method in perturbation_methods():
                if method not in core and not (small and ctx.args.all_perturbation_methods and not quick):
                    continue
                name = f"perturbation_{arch}_{layer_name}_{method}.json"
                if ctx.cached(name) is not None:
                    continue
                heavy = arch in ctx.args.single_run_archs.split(",") or method not in core
                repeats = 1 if heavy or quick else ctx.args.perturbation_repeats
                load = wait_for_quiet(ctx.args.max_load, ctx.args.max_wait)
                ctx.say(f"perturbation {method} {arch} {layer_name}, {repeats} run(s) (load at start {load:.2f})")
                ctx.store(name, perturbation_cell(ctx, arch, layer_name, method, repeats))
                gc.collect()


# ---------------------------------------------------------------------------------------------
# Stage: tuning data for the perturbation defaults
# ---------------------------------------------------------------------------------------------


def stage_tune(ctx: Context) -> None:
    """Milliseconds per masked copy (no-grad forward of the whole model): pytorch-grad-cam's way (contiguous
    inputs, 16 per pass) next to ours (channels_last, BatchNorm folded) at each chunk size.

    Score-CAM is these forwards and little else, so the ratio of the two is the speed-up to expect.
    """
    from captum_cam_ext.attr.perturbation import FoldedForward

    sizes = [int(b) for b in ctx.args.tune_sizes.split(",")]
    for arch in ctx.archs:
        name = f"tune_{arch}.json"
        if ctx.cached(name) is not None:
            continue
        load = wait_for_quiet(ctx.args.max_load, ctx.args.max_wait)
        ctx.say(f"tune {arch} (load at start {load:.2f})")
        s = make_setup(arch, 1, ctx.device)
        folded = FoldedForward(s.model)
        x = s.x.expand(max(sizes + [16]), *s.x.shape[1:]).contiguous()
        cl = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            folded((cl[:16],), None)  # checked against the model once
        fast = folded.folded or s.model
        configs: Dict[str, Tuple[Callable[..., Any], Tensor, int]] = {
            "pytorch-grad-cam: contiguous, 16": (s.model, x, 16),
            "channels_last, 16": (s.model, cl, 16),
        }
        for b in sizes:
            configs[f"ours: channels_last + folded, {b}"] = (fast, cl, b)
        per_copy: Dict[str, List[float]] = {k: [] for k in configs}
        with LoadSampler() as sampler, torch.no_grad():
            for model, inp, b in configs.values():  # warm-up (oneDNN primitive caches)
                model(inp[:b])
            for _ in range(2):
                for label, (model, inp, b) in configs.items():
                    n = max(1, ctx.args.tune_copies // b)
                    sync(ctx.device)
                    t0 = CLOCK()
                    for _ in range(n):
                        model(inp[:b])
                    sync(ctx.device)
                    per_copy[label].append((CLOCK() - t0) / (n * b) * 1000)
        ctx.store(name, {"arch": arch, "ms_per_copy": per_copy, "load": sampler.summary(), "folds": folded.folds})
        del s, folded, fast, configs
        gc.collect()


# ---------------------------------------------------------------------------------------------
# Stage: dataset-scale evaluation
# ---------------------------------------------------------------------------------------------


def fmnist_model_file(ctx: Context) -> str:
    """A Fashion-MNIST ResNet-18-style model saved whole (random weights, seed 0) for the CLI."""
    from captum_cam_ext.training.models import SmallResNet18

    path = ctx.path("fmnist_small_resnet18.pt")
    if not os.path.exists(path):
        torch.manual_seed(0)
        torch.save(SmallResNet18(in_channels=1, num_classes=10).eval(), path)
    return path


def run_evaluate_cli(ctx: Context, model_path: str, n: int, procs: int, out: str) -> Dict[str, Any]:
    """``captum-cam-ext evaluate`` in 1 process (2 threads) or under torchrun (threads split)."""
    env = dict(os.environ)
    threads = max(1, ctx.args.threads // procs)
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    cli = [
        "evaluate", "--dataset", "fashion-mnist", "--limit", str(n), "--model", model_path,
        "--method", "gradcam", "--metrics", "average_drop,average_increase", "--causal",
        "--causal-steps", str(ctx.args.causal_steps), "--batch-size", "16", "--no-progress", "--out", out,
    ]  # fmt: skip
    if procs == 1:
        cmd = [sys.executable, "-m", "captum_cam_ext", *cli]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
               "-m", "captum_cam_ext", *cli]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["failed"])[-1][:300], "cmd": " ".join(cmd)}
    with open(os.path.join(out, "results.json")) as f:
        payload = json.load(f)
    return {"wall_s": wall, "images": n, "images_per_s": n / wall, "means": payload.get("means"),
            "cmd": " ".join(cmd), "threads_per_process": threads}  # fmt: skip


def peer_metrics(ctx: Context, model_path: str, n: int, quantus_n: int) -> Dict[str, Any]:
    """The same metrics with pytorch-grad-cam's metric classes and Quantus 0.6, in this process."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.metrics.cam_mult_image import DropInConfidence, IncreaseInConfidence

    from captum_cam_ext.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, load_fashion_mnist

    torch.set_num_threads(ctx.args.threads)
    model = torch.load(model_path, weights_only=False).eval().to(ctx.device)
    layer = model.layer4 if hasattr(model, "layer4") else list(model.children())[-3]
    images, _ = load_fashion_mnist("test")
    x_all = ((torch.as_tensor(np.asarray(images[:n]), dtype=torch.float32) / 255.0 - FASHION_MNIST_MEAN)
             / FASHION_MNIST_STD)[:, None]  # fmt: skip
    out: Dict[str, Any] = {}
    # ours through the Python API, in this process: Grad-CAM + Average Drop / Increase only (what
    # pytorch-grad-cam's metric classes compute), then with the deletion / insertion AUCs
    from captum_cam_ext.data import fashion_mnist_tensors
    from captum_cam_ext.evaluation import evaluate

    data = fashion_mnist_tensors("test", limit=n)
    for label, metrics in (("ours API: AD, AI", ["average_drop", "average_increase"]),
                           ("ours API: AD, AI, deletion, insertion",
                            ["average_drop", "average_increase", "deletion_auc", "insertion_auc"])):  # fmt: skip
        t0 = time.perf_counter()
        res = evaluate(model, layer, "gradcam", data, batch_size=16, metrics=metrics,
                       causal_steps=ctx.args.causal_steps, device=ctx.device, comparisons=False)  # fmt: skip
        sync(ctx.device)
        wall = time.perf_counter() - t0
        out[label] = {"wall_s": wall, "images": n, "images_per_s": n / wall, "metrics": ", ".join(metrics),
                      "means": res.means}  # fmt: skip
    # pytorch-grad-cam: GradCAM maps + DropInConfidence / IncreaseInConfidence, batches of 16
    t0 = time.perf_counter()
    drops, incs, maps_all = [], [], []
    for i in range(0, n, 16):
        x = x_all[i : i + 16].to(ctx.device)
        with torch.no_grad():
            pred = model(x).argmax(1).tolist()
        targets = pgc_targets(pred)
        with GradCAM(model=model, target_layers=[layer]) as cam:
            maps = cam(input_tensor=x, targets=targets)
        model.zero_grad(set_to_none=True)
        drops.append(DropInConfidence()(x, maps, targets, model))
        incs.append(IncreaseInConfidence()(x, maps, targets, model))
        maps_all.append(maps)
    wall = time.perf_counter() - t0
    out["pytorch-grad-cam"] = {"wall_s": wall, "images": n, "images_per_s": n / wall,
                               "metrics": "Grad-CAM + DropInConfidence + IncreaseInConfidence (no deletion/insertion)",
                               "drop_mean": float(np.concatenate(drops).mean()),
                               "increase_mean": float(np.concatenate(incs).mean())}  # fmt: skip
    # Quantus 0.6: PixelFlipping (the deletion curve) on the same Grad-CAM maps
    try:
        import quantus

        m = min(quantus_n, n)
        a_batch = np.concatenate(maps_all)[:m, None].astype(np.float32)
        x_np = x_all[:m].numpy()
        with torch.no_grad():
            y_np = model(x_all[:m].to(ctx.device)).argmax(1).cpu().numpy()
        # curves only: Quantus 0.6's own AUC calls np.trapz, which numpy 2.4 removed
        metric = quantus.PixelFlipping(
            features_in_step=(28 * 28) // ctx.args.causal_steps, perturb_baseline="black",
            disable_warnings=True, display_progressbar=False, return_auc_per_sample=False,
        )  # fmt: skip
        t0 = time.perf_counter()
        curves = metric(model=model, x_batch=x_np, y_batch=y_np, a_batch=a_batch, device=str(ctx.device),
                        batch_size=16)  # fmt: skip
        scores = [np.trapezoid(c, dx=1.0 / max(1, c.size - 1)) for c in map(np.asarray, curves)]
        wall = time.perf_counter() - t0
        out["quantus"] = {"wall_s": wall, "images": m, "images_per_s": m / wall,
                          "metrics": f"PixelFlipping (deletion), {ctx.args.causal_steps} steps, on precomputed maps",
                          "auc_mean": float(np.mean(scores))}  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        out["quantus"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def evaluate_in_process(ctx: Context, model_path: str, n: int) -> Dict[str, Any]:
    """:func:`captum_cam_ext.evaluation.evaluate` on ``ctx.device`` (the CLI runs on the CPU; on a GPU
    machine one process is timed through the Python API)."""
    from captum_cam_ext.data import fashion_mnist_tensors
    from captum_cam_ext.evaluation import evaluate

    model = torch.load(model_path, weights_only=False).eval()
    data = fashion_mnist_tensors("test", limit=n)
    metrics = ["average_drop", "average_increase", "deletion_auc", "insertion_auc"]
    t0 = time.perf_counter()
    res = evaluate(model, model.layer4, "gradcam", data, batch_size=64, metrics=metrics,
                   causal_steps=ctx.args.causal_steps, device=ctx.device, comparisons=False)  # fmt: skip
    sync(ctx.device)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images": n, "images_per_s": n / wall, "means": res.means, "threads_per_process": 0,
            "cmd": f"evaluate(..., device={ctx.device}, batch_size=64) in process"}  # fmt: skip


def stage_evaluate(ctx: Context) -> None:
    name = "evaluate.json"
    if ctx.cached(name) is not None:
        return
    n = ctx.args.eval_images
    model_path = fmnist_model_file(ctx)
    load = wait_for_quiet(ctx.args.max_load, ctx.args.max_wait)
    ctx.say(f"evaluate on {n} Fashion-MNIST images (load at start {load:.2f})")
    runs: Dict[str, Any] = {}
    with LoadSampler() as sampler:
        if ctx.device.type == "cuda":
            runs["1 (GPU, API)"] = evaluate_in_process(ctx, model_path, n)
        else:
            for procs in (1, 2):
                out = ctx.path(f"evaluate_{procs}proc", "x")[:-2]
                shutil.rmtree(out, ignore_errors=True)
                runs[f"{procs}"] = run_evaluate_cli(ctx, model_path, n, procs, out)
                if not ctx.args.quick:
                    startup = run_evaluate_cli(ctx, model_path, procs, procs, out)  # one image per process
                    if "wall_s" in runs[f"{procs}"] and "wall_s" in startup:
                        runs[f"{procs}"]["startup_s"] = startup["wall_s"]
                ctx.say(f"evaluate {procs} process(es): {runs[f'{procs}']}")
        peers = peer_metrics(ctx, model_path, n, ctx.args.quantus_images)
    ctx.store(name, {"images": n, "runs": runs, "peers": peers, "load": sampler.summary(),
                     "model": "SmallResNet18 (1x28x28, random weights, seed 0)"})  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Stage: profile of the gradient path
# ---------------------------------------------------------------------------------------------


def profile_entries(s: Setup) -> Dict[str, Entry]:
    """The steps of a gradient CAM, each timed as a whole call (see the module docstring)."""
    index = torch.arange(s.x.shape[0], device=s.device)
    target = torch.tensor(s.targets, device=s.device)

    def no_grad() -> Any:
        with torch.no_grad():
            return s.model(s.x)

    def full_graph() -> Any:
        with torch.enable_grad():
            out = s.model(s.x)
        return out.detach()

    clone = [False]  # a model that changes the layer's output in place (DenseNet's F.relu(inplace=True))

    def trimmed_floor() -> Any:
        acts: List[Tensor] = []

        def hook(mod: nn.Module, inp: Any, out: Tensor) -> Tensor:
            torch.set_grad_enabled(True)
            leaf = out.detach().requires_grad_(True)
            acts.append(leaf)
            return leaf.clone() if clone[0] else leaf

        handle = s.layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = s.model(s.x)
                torch.set_grad_enabled(True)
                (grad,) = torch.autograd.grad(out[index, target].sum(), acts[-1])
            return grad
        except RuntimeError as exc:
            if clone[0] or "in-place" not in str(exc):
                raise
            clone[0] = True  # a clone of the leaf from now on (one copy of the layer's output)
        finally:
            handle.remove()
        return trimmed_floor()

    entries = {
        "forward (no grad)": Entry("forward (no grad)", "baseline", "forward", no_grad),
        "forward, autograd records the whole graph": Entry(
            "forward, autograd records the whole graph", "profile", "full graph", full_graph
        ),
        "floor: no-grad forward to the layer + autograd after it + gradient to the layer": Entry(
            "floor: no-grad forward to the layer + autograd after it + gradient to the layer",
            "profile", "trimmed floor", trimmed_floor,
        ),
    }  # fmt: skip
    for e in (ours_entry(s, "gradcam"), captum_entry(s, "gradcam")):
        entries[e.label] = e
    return entries


def stage_profile(ctx: Context) -> None:
    for batch in ctx.batches:
        for arch in ctx.archs:
            if batch not in ctx.arch_batches(arch):
                continue
            name = f"profile_{arch}_b{batch}.json"
            if ctx.cached(name) is not None:
                continue
            load = wait_for_quiet(ctx.args.max_load, ctx.args.max_wait)
            ctx.say(f"profile {arch} batch {batch} (load at start {load:.2f})")
            s = make_setup(arch, batch, ctx.device)
            entries = profile_entries(s)
            t0 = time.time()
            with LoadSampler() as sampler:
                times, ratios, errors = time_interleaved(
                    entries, ctx.args.profile_repeats, ctx.device, baseline="forward (no grad)", pair_every=1
                )
            meta = {k: {"family": e.family, "method": e.method} for k, e in entries.items()}
            ctx.store(name, {"arch": arch, "batch": batch, "layer": s.layer_name, "times": times, "ratios": ratios,
                             "errors": errors, "load": sampler.summary(), "wall_s": time.time() - t0,
                             "repeats": ctx.args.profile_repeats, "entries": meta})  # fmt: skip
            del s, entries
            gc.collect()


# ---------------------------------------------------------------------------------------------
# Stage: report
# ---------------------------------------------------------------------------------------------


def med(v: Sequence[float]) -> float:
    return statistics.median(v) if v else float("nan")


def gradient_methods() -> List[str]:
    """Registered one-pass methods that take gradients (the ones the <= 1.10x goal is about)."""
    from captum_cam_ext.registry import method_kind, methods

    return [n for n, c in methods().items() if method_kind(c) == "shared_pass" and getattr(c, "uses_gradients", False)]


def table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows)]


def lookup(
    cell: Optional[Dict[str, Any]], family: str, method: str, what: str = "times"
) -> Tuple[Optional[str], Optional[float]]:
    """The label of ``family``'s entry for ``method`` in a cell and its median time, or with
    ``what="ratios"`` its median paired ratio to the no-grad forward (NaN if it failed)."""
    if not cell:
        return None, None
    for label, meta in cell["entries"].items():
        if meta["family"] == family and meta["method"] == method:
            values = cell.get(what, {}).get(label)
            if label in cell["errors"] or not values:
                return label, float("nan")
            return label, med(values)
    return None, None


@dataclass
class ArchSummary:
    arch: str
    worst: Dict[int, Tuple[float, str]] = field(default_factory=dict)  # batch -> (ratio, method)
    multi: Dict[int, float] = field(default_factory=dict)
    our_mem: Optional[float] = None
    captum_mem: Optional[float] = None
    mem_batch: int = 1


def report_arch(ctx: Context, arch: str, raw: Dict[str, Any]) -> Tuple[List[str], Optional[ArchSummary]]:
    """One architecture's table: every method, ours and the peers at each batch size, and peak memory."""
    from captum_cam_ext.registry import methods

    cells = {b: ctx.cached(f"grad_{arch}_b{b}.json") for b in ctx.batches}
    if not any(cells.values()):
        return [], None
    mb = max(b for b, c in cells.items() if c)
    mem = ctx.cached(f"memory_{arch}_b{mb}.json") or {"peak_mib": {}, "errors": {}}
    raw["grad"][arch], raw["memory"][arch] = cells, mem
    present = [c for c in cells.values() if c]
    lines = [f"### {arch} — layer `{present[0]['layer']}`", ""]
    lines += [
        "Cells: " + "; ".join(
            f"batch {c['batch']}: {c['repeats']} runs, {c['wall_s']:.0f} s, load average "
            f"{c['load']['min']:.2f}–{c['load']['max']:.2f} (median {c['load']['median']:.2f})" for c in present
        ) + ".",
        "",
    ]  # fmt: skip
    head = ["method"]
    for b in ctx.batches:
        head += [f"b{b} ours", "Captum", "pytorch-grad-cam", "torchcam"]
    head += [f"MiB b{mb}: ours", "Captum", "pytorch-grad-cam", "torchcam"]
    in_cells = {meta["method"] for c in present for meta in c["entries"].values()}
    summary = ArchSummary(arch, mem_batch=mb)
    grad_names = gradient_methods()
    rows = []
    for m in ["forward", *[m for m in methods() if m in in_cells], MULTICAM]:
        ours_family = "baseline" if m == "forward" else "ours"
        row = ["no-grad forward: seconds" if m == "forward" else m]
        for b in ctx.batches:
            for fam in (ours_family, *PEERS):
                label, t = lookup(cells[b], fam, m, "times" if m == "forward" else "ratios")
                if label is None or t is None:
                    row.append("")
                elif t != t:
                    row.append("fails¹")
                elif m == "forward":
                    row.append(f"{t:.3f}")
                else:
                    r = t
                    row.append(f"{r:.2f}×")
                    if fam == "ours" and m in grad_names and (b not in summary.worst or r > summary.worst[b][0]):
                        summary.worst[b] = (r, m)
                    if fam == "ours" and m == MULTICAM:
                        summary.multi[b] = r
        for fam in (ours_family, *PEERS):
            label, _ = lookup(cells[mb], fam, m)
            v = mem["peak_mib"].get(label) if label else None
            row.append("" if v is None else f"{v:.0f}")
        rows.append(row)
    lines += table(head, rows)
    errs: Dict[str, str] = {}
    for c in present:
        for k, v in c["errors"].items():
            errs.setdefault(k, v)
    if errs:
        lines += ["", "¹ Raised on this architecture: " + "; ".join(f"{k}: `{v}`" for k, v in sorted(errs.items()))]
    cap_label, _ = lookup(cells[mb], "captum", "gradcam")
    ours_label, _ = lookup(cells[mb], "ours", "gradcam")
    summary.captum_mem = mem["peak_mib"].get(cap_label) if cap_label else None
    summary.our_mem = mem["peak_mib"].get(ours_label) if ours_label else None
    return lines + [""], summary


def noise_range(cell: Dict[str, Any]) -> Tuple[float, float]:
    """The 2.5-97.5 % range of the ratio of two consecutive no-grad forwards in a cell: the control that says
    how far a ratio can stray from the truth on this machine at this load (an entry that costs exactly one
    forward would show this spread)."""
    t = cell["times"].get("forward (no grad)", [])
    r = [b / a for a, b in zip(t, t[1:]) if a > 0]
    if len(r) < 2:
        return float("nan"), float("nan")
    lo, hi = np.percentile(r, [2.5, 97.5])
    return float(lo), float(hi)


def verdict(value: float, limit: float, lower_is_better: bool = True) -> str:
    if value != value:
        return "—"
    ok = value <= limit if lower_is_better else value >= limit
    return "MET" if ok else "**NOT MET**"


def report_goals(ctx: Context, summaries: List[ArchSummary]) -> List[str]:
    grad_names = gradient_methods()
    rows = []
    for sm in summaries:
        for b in ctx.batches:
            cell = ctx.cached(f"grad_{sm.arch}_b{b}.json")
            if not cell:
                continue
            lo, hi = noise_range(cell)
            label, gc_ratio = lookup(cell, "ours", "gradcam", "ratios")
            spread = cell["ratios"].get(label or "", [])
            _, cap = lookup(cell, "captum", "gradcam", "ratios")
            gc_text = "—" if gc_ratio is None else "fails"
            if gc_ratio is not None and spread:
                gc_text = f"{gc_ratio:.3f}× [{min(spread):.2f}–{max(spread):.2f}] {verdict(gc_ratio, 1.10)}"
            worst = sm.worst.get(b)
            mr = sm.multi.get(b)
            mem = "—"
            if b == sm.mem_batch and sm.our_mem is not None and sm.captum_mem:
                q = sm.our_mem / sm.captum_mem
                mem = f"{sm.our_mem:.0f} / {sm.captum_mem:.0f} MiB = {q:.2f} {verdict(q, 0.5)}"
            n_over = sum(
                1 for m in grad_names
                if (lambda r: r is not None and r == r and r > 1.10)(lookup(cell, "ours", m, "ratios")[1])
            )  # fmt: skip
            rows.append([
                sm.arch, str(b), f"{lo:.2f}–{hi:.2f}", gc_text, "—" if cap is None else f"{cap:.2f}×",
                "—" if worst is None else f"{worst[0]:.3f}× ({worst[1]}) {verdict(worst[0], 1.10)}",
                f"{n_over} of {len(grad_names)}",
                "not run" if mr is None else f"{mr:.3f}× {verdict(mr, 1.25)}", mem,
            ])  # fmt: skip
    head = ["architecture", "batch", "noise: forward / forward (95% range)", "ours Grad-CAM [min–max of runs]",
            "Captum Grad-CAM", "worst gradient CAM", "gradient CAMs > 1.10×", "MultiCam (5)",
            "Grad-CAM peak memory: ours / Captum"]  # fmt: skip
    return [
        "## Goals of the gradient part",
        "",
        f"Gradient CAMs: the registered one-pass methods that take gradients ({', '.join(grad_names)}); "
        "goal <= 1.10x the no-grad forward (median paired ratio). MultiCam (5 methods): <= 1.25x. Grad-CAM peak "
        "memory <= 0.5x Captum's LayerGradCam (fresh process, at the largest batch timed on the architecture). "
        "The noise column is the control: the ratio of two consecutive no-grad forwards of the same cell, whose "
        "true value is 1; a ratio inside that range cannot be told from 1.00x at this load, and a median of a few "
        "runs of an entry is only as good as that range allows. MET / NOT MET compare the median with the goal "
        "and say nothing more than that.",
        "",
        *table(head, rows),
        "",
    ]


def report_profile(ctx: Context, raw: Dict[str, Any]) -> List[str]:
    rows = []
    steps = ["forward, autograd records the whole graph",
             "floor: no-grad forward to the layer + autograd after it + gradient to the layer",
             "ours gradcam", "captum LayerGradCam"]  # fmt: skip
    for b in ctx.batches:
        for arch in ctx.archs:
            cell = ctx.cached(f"profile_{arch}_b{b}.json")
            if not cell:
                continue
            raw.setdefault("profile", {})[f"{arch}/b{b}"] = cell
            lo, hi = noise_range(cell)
            fwd = med(cell["times"].get("forward (no grad)", []))
            cols = [arch, str(b), f"{fwd:.3f}", f"{lo:.2f}–{hi:.2f}"]
            for k in steps:
                v = cell["ratios"].get(k)
                cols.append("fails" if k in cell["errors"] else (f"{med(v):.2f}×" if v else "—"))
            cols += [str(cell["repeats"]), f"{cell['load']['median']:.2f}"]
            rows.append(cols)
    if not rows:
        return []
    head = ["architecture", "batch", "no-grad forward (s)", "noise (95% range)", "forward recording the whole graph",
            "trimmed-graph floor", "ours Grad-CAM", "Captum Grad-CAM", "runs", "load"]  # fmt: skip
    return [
        "## Where a gradient CAM's time goes (profile)",
        "",
        "Each step timed as a whole call, interleaved, each divided by a no-grad forward run just before it "
        "(medians of `--profile-repeats` rounds). *Forward recording the whole graph*: what a CAM that hooks the "
        "layer and calls backward pays before its backward (Captum, torchcam, pytorch-grad-cam). *Trimmed-graph "
        "floor*: a no-grad forward up to the layer, autograd from the layer on, and the gradient of the target "
        "scores to the layer's output, with no CAM arithmetic, no hooks beyond one, no checks: the least an exact "
        "gradient CAM of this layer can cost in eager PyTorch. Ours minus the floor is our own overhead (method "
        "object, checks, hooks, weights and map); the floor minus 1 is the backward of the part after the layer "
        "plus the autograd bookkeeping there.",
        "",
        *table(head, rows),
        "",
    ]


def report_perturbation(ctx: Context, raw: Dict[str, Any]) -> List[str]:
    cells = []
    for arch in ctx.archs:
        spec = ARCHS[arch]
        for layer_name in perturbation_layers(ctx, spec):
            for method in perturbation_methods():
                cell = ctx.cached(f"perturbation_{arch}_{layer_name}_{method}.json")
                if cell:
                    cells.append(cell)
                    raw["perturbation"][f"{arch}/{layer_name}/{method}"] = cell
    if not cells:
        return []
    rows = []
    for c in cells:
        t = {k: med(v) for k, v in c["times"].items() if v}
        ours_label = f"ours {c['method']}"
        ours_t = t.get(ours_label)
        peer_labels = {e["family"]: k for k, e in c["entries"].items() if e["family"] != "ours"}

        def shown(label: Optional[str], c: Dict[str, Any] = c, t: Dict[str, float] = t) -> str:
            if label is None:
                return "—"
            return "fails" if label in c["errors"] else (f"{t[label]:.2f}" if label in t else "—")

        def speedup(label: Optional[str], t: Dict[str, float] = t, ours_t: Optional[float] = ours_t) -> str:
            return f"{t[label] / ours_t:.2f}×" if label in t and ours_t else "—"

        pgc, tc = peer_labels.get("pytorch-grad-cam"), peer_labels.get("torchcam")
        diff = c["max_abs_diff_vs"].get(pgc) if pgc else None
        chunks = sorted({r.get("batch_size") for r in c.get("ours_runs", []) if r.get("batch_size")})
        skipped = max((r.get("skipped", 0) for r in c.get("ours_runs", [])), default=0)
        rows.append([
            c["method"], c["arch"], f"`{c['layer']}` ({c['channels']}, {c['constant_channels']} constant)",
            shown(ours_label), ",".join(map(str, chunks)) + (f"; {skipped} skipped" if skipped else ""),
            shown(pgc), speedup(pgc), shown(tc), speedup(tc), "—" if diff is None else f"{diff:.1e}",
            str(c["repeats"]), f"{c['load']['median']:.2f}",
        ])  # fmt: skip
    head = ["method", "architecture", "layer (channels)", "ours (s)", "ours chunk", "pytorch-grad-cam (s)",
            "speed-up", "torchcam (s)", "speed-up", "max abs diff vs pgc", "runs", "load"]  # fmt: skip
    lines = [
        "## Perturbation methods (one image, every implementation with its defaults)",
        "",
        "Ours: the package defaults, a fresh attribution object per run (the chunk size is measured on the first "
        "run of a model and cached, so the first run includes the measurement). pytorch-grad-cam: ScoreCAM (16 "
        "masked inputs per forward), AblationCAM (32); torchcam: ScoreCAM (32). Maps compared with "
        "pytorch-grad-cam's after the same ReLU, upsampling and min-max normalisation (torchcam's Score-CAM "
        "differs by definition: it upsamples with align_corners=False and scores against the clean score).",
        "",
        *table(head, rows),
    ]
    errs = {f"{c['method']}/{c['arch']}/{k}": v for c in cells for k, v in c["errors"].items()}
    if errs:
        lines += ["", "Failures: " + "; ".join(f"{k}: `{v}`" for k, v in errs.items())]
    return lines + [""]


def report_tune(ctx: Context, raw: Dict[str, Any]) -> List[str]:
    tunes: Dict[str, Dict[str, Any]] = {}
    for arch in ctx.archs:
        cell = ctx.cached(f"tune_{arch}.json")
        if cell:
            tunes[arch] = cell
    if not tunes:
        return []
    raw["tune"] = tunes
    configs = list(next(iter(tunes.values()))["ms_per_copy"])
    rows = []
    for arch, cell in tunes.items():
        vals = {k: min(v) for k, v in cell["ms_per_copy"].items()}
        ours = {k: v for k, v in vals.items() if k.startswith("ours")}
        best = min(ours, key=ours.__getitem__) if ours else None
        ref = vals.get(configs[0])
        cols = [f"**{vals[k]:.1f}**" if k == best else f"{vals.get(k, float('nan')):.1f}" for k in configs]
        pred = f"{ref / ours[best]:.2f}×" if best and ref else "—"
        rows.append([arch, *cols, str(cell.get("folds", "")), pred, f"{cell['load']['median']:.2f}"])
    return [
        "## Where Score-CAM's time goes: milliseconds per masked copy",
        "",
        "A no-grad forward of the whole model per masked copy (best of 2 interleaved passes over "
        f"{ctx.args.tune_copies} copies): pytorch-grad-cam's way (contiguous inputs, 16 per forward), channels_last "
        "alone, and ours (channels_last, BatchNorm folded) at each chunk size. Score-CAM is these forwards and little "
        "else, so `pgc / best ours` is the speed-up to expect from an exact implementation; the bold entry is the "
        "fastest of ours.",
        "",
        *table(["architecture", *configs, "BN folded", "pgc / best ours", "load"], rows),
        "",
    ]


def report_evaluate(ctx: Context, raw: Dict[str, Any]) -> List[str]:
    ev = ctx.cached("evaluate.json")
    if not ev:
        return []
    raw["evaluate"] = ev
    a = ctx.args
    rows = []
    for procs, r in ev["runs"].items():
        if "error" in r:
            rows.append(["captum-cam-ext evaluate", procs, "—", "—", f"fails: `{r['error']}`", ""])
        else:
            up = r.get("startup_s")
            steady = (f"{r['images'] / (r['wall_s'] - up):.1f} without the {up:.0f} s start-up"
                      if up is not None and r["wall_s"] > up else "")  # fmt: skip
            rows.append([f"captum-cam-ext evaluate (CLI{', torchrun' if procs == '2' else ''})",
                         f"{procs} x {r['threads_per_process']}", str(r["images"]), f"{r['wall_s']:.1f}",
                         f"{r['images_per_s']:.1f}" + (f" ({steady})" if steady else ""),
                         "AD, AI, deletion, insertion"])  # fmt: skip
    for peer, r in ev["peers"].items():
        if "error" in r:
            rows.append([peer, f"1 x {a.threads}", "—", "—", f"fails: `{r['error']}`", ""])
        else:
            rows.append([peer, f"1 x {a.threads}", str(r["images"]), f"{r['wall_s']:.1f}",
                         f"{r['images_per_s']:.1f}", r["metrics"]])  # fmt: skip
    png = os.path.splitext(a.out)[0] + ".png"
    plot_scaling(ev, png)
    return [
        f"## Dataset scale: `captum-cam-ext evaluate` on {ev['images']} Fashion-MNIST test images",
        "",
        f"Model: {ev['model']}; Grad-CAM + Average Drop / Increase + deletion / insertion AUC "
        f"({a.causal_steps} steps); load average {ev['load']['min']:.2f}–{ev['load']['max']:.2f}. "
        "Wall time of the whole command (start-up and data loading included).",
        "",
        *table(["implementation", "processes x threads", "images", "wall (s)", "images/s", "metrics"], rows),
        "",
        f"![scaling]({os.path.basename(png)})",
        "",
    ]


def report(ctx: Context) -> str:
    a = ctx.args
    raw: Dict[str, Any] = {"grad": {}, "memory": {}, "perturbation": {}, "tune": {}, "evaluate": None}
    lines = [
        f"# Performance across architectures (issue 12) — "
        f"{'GPU run' if ctx.device.type == 'cuda' else 'quick run' if a.quick else 'full run'}",
        "",
        f"Machine: {machine(ctx.device)}; device {ctx.device}; {a.threads} threads (`torch.set_num_threads`), "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}. "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items())
        + f". Page written {datetime.datetime.now().isoformat(timespec='minutes')} by `benchmarks/matrix.py"
        + (" --quick" if a.quick else "") + "`.",
        "",
        "Settings: torchvision models with random weights (seed 0; nothing can be downloaded here and speed does "
        "not depend on the weights), the bundled pretrained EfficientNet-Lite0; inputs are the bundled photos at "
        "224x224 (cycled and mirrored to fill a batch), targets the predicted classes; `relu_attributions=True`. "
        "All entries run interleaved in one process after a warm-up run; each ratio is the median over the rounds "
        "of the entry's time divided by a no-grad forward of the same batch run just before it (re-measured every "
        "3 entries), so a drift in the machine's speed during a round does not bias it. Composite methods (no goal) "
        "are timed once. Peak memory: extra memory of one call in a fresh process (CPU: resident-set growth "
        "sampled every 0.2 ms).",
        "",
        ("Clock: **CPU time of the timing thread** (`time.thread_time`; with one torch thread every kernel, autograd's "
         "CPU backward included, runs in that thread), so the time other jobs take from the shared cores is not "
         "counted (the perturbation cells keep their wall times too, in the json). Machine load does still "
         "leak in through shared caches and "
         "memory bandwidth: the noise column of the goals table measures how much."
         if CLOCK is time.thread_time else "Clock: wall time (`time.perf_counter`)."),
        "",
    ]  # fmt: skip
    notes = os.path.join(os.path.dirname(a.out), "matrix.notes.md")
    if not a.quick and ctx.device.type == "cpu" and os.path.exists(notes):  # the hand-written reading of the run
        with open(notes) as f:
            lines += [f.read().strip(), ""]
    summaries = []
    body: List[str] = []
    for arch in ctx.archs:
        part, sm = report_arch(ctx, arch, raw)
        body += part
        if sm is not None:
            summaries.append(sm)
    if summaries:
        lines += report_goals(ctx, summaries) + ["## Gradient part, per architecture", ""] + body
    lines += report_profile(ctx, raw)
    lines += report_perturbation(ctx, raw) + report_tune(ctx, raw) + report_evaluate(ctx, raw)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump(raw, f, indent=1, default=str)
    return "\n".join(lines) + "\n"


def plot_scaling(ev: Dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, vals = [], []
    for procs, r in ev["runs"].items():
        if "images_per_s" in r:
            labels.append(f"ours evaluate\n{procs} process(es)")
            vals.append(r["images_per_s"])
    for peer, r in ev["peers"].items():
        if "images_per_s" in r:
            labels.append(peer)
            vals.append(r["images_per_s"])
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(vals)), vals, color=["C0"] * len(ev["runs"]) + ["C1"] * (len(vals) - len(ev["runs"])))
    ax.set_xticks(range(len(vals)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("images / s")
    ax.set_title(f"{ev['images']} Fashion-MNIST images")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="batch 1, 1 run, no composite methods, memory on 2 architectures, Score-/Ablation-CAM on "
                        "2 small layers once, 100 images (< 5 minutes on a quiet 2-core machine)")
    p.add_argument("--stages", default=None,
                   help=f"comma-separated subset of {','.join(STAGES)} (default all; quick: all but tune and profile)")
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--batches", default=None, help="default 1,8 (quick: 1)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved runs per entry (default 5, quick 2)")
    p.add_argument("--perturbation-repeats", type=int, default=3)
    p.add_argument("--perturbation-layers", default="",
                   help="ARCH=LAYER[+LAYER],... instead of the defaults (e.g. vit_b_16=" + VIT_LAYER + ")")
    p.add_argument("--single-run-archs", default="resnet50,densenet121,convnext_tiny,vit_b_16",
                   help="architectures whose perturbation methods run once (each run is thousands of forwards)")
    p.add_argument("--all-perturbation-methods", action=argparse.BooleanOptionalAction, default=False,
                   help="also time the registry's other perturbation methods (sampled Score-CAMs: tens of "
                        "Score-CAMs each) on the small layers, once")
    p.add_argument("--big-batch-archs", default=None,
                   help="comma-separated architectures timed at every batch size of --batches; the others at "
                        "batch 1 only (default: all)")
    p.add_argument("--memory-entries", choices=("gradcam", "peers", "core", "all"), default=None,
                   help="core: the forward, ours and every peer's Grad-CAM (default); all: every entry; "
                        "peers: the forward and every implementation's Grad-CAM; gradcam: ours and Captum's "
                        "Grad-CAM (quick)")
    p.add_argument("--profile-repeats", type=int, default=7)
    p.add_argument("--tune-sizes", default="8,16,32,64")
    p.add_argument("--tune-copies", type=int, default=32)
    p.add_argument("--eval-images", type=int, default=None, help="default 2000 (quick 200)")
    p.add_argument("--quantus-images", type=int, default=None, help="default 500 (quick 100)")
    p.add_argument("--causal-steps", type=int, default=16)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the 2-core machine is shared; the ratios are paired)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                   help="cpu: this thread's CPU time (time.thread_time; only meaningful with --threads 1 on a CPU), "
                        "wall: time.perf_counter; auto (default): cpu on a CPU with 1 thread, else wall")
    p.add_argument("--max-load", type=float, default=0.6, help="wait for a load average below this before a cell")
    p.add_argument("--max-wait", type=float, default=0.0, help="seconds to wait for it (0: do not wait)")
    p.add_argument("--cache", default=None)
    p.add_argument("--force", action="store_true", help="recompute cached cells")
    p.add_argument("--out", default=None)
    p.add_argument("--memory-one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--arch", default=None, help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.batches = a.batches or ("1" if a.quick else "1,8")
    a.stages = a.stages or ",".join(x for x in STAGES if not (a.quick and x in ("tune", "profile")))
    a.repeats = a.repeats or (1 if a.quick else 3)
    a.memory_entries = a.memory_entries or ("gradcam" if a.quick else "core")
    a.eval_images = a.eval_images or (100 if a.quick else 2000)
    a.quantus_images = a.quantus_images or (100 if a.quick else 500)
    suffix = "_quick" if a.quick else ""
    dev = "cpu" if a.device == "cpu" else "cuda"
    a.cache = a.cache or os.path.join(HERE, "cache", f"matrix{suffix}", dev)
    if a.out is None:
        name = "gpu" if dev == "cuda" else ("matrix.quick" if a.quick else "matrix")
        a.out = os.path.join(HERE, "results", f"{name}.md")
    return a


def main(argv: Optional[Sequence[str]] = None) -> None:
    global CLOCK
    a = parse_args(argv)
    torch.set_num_threads(a.threads)
    use_cpu = a.clock == "cpu" or (a.clock == "auto" and a.device == "cpu" and a.threads == 1)
    CLOCK = time.thread_time if use_cpu else time.perf_counter
    if a.memory_one:
        memory_one(a)
        return
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    archs = [x for x in a.archs.split(",") if x]
    bad = [x for x in archs if x not in ARCHS]
    if bad:
        raise SystemExit(f"unknown architecture(s) {bad}; choose from {', '.join(ARCHS)}")
    ctx = Context(a, torch.device(a.device), a.cache, archs, [int(b) for b in a.batches.split(",")])
    t0 = time.time()
    for stage in stages:
        if stage == "report":
            continue
        ts = time.time()
        {"grad": stage_grad, "memory": stage_memory, "perturbation": stage_perturbation, "tune": stage_tune,
         "evaluate": stage_evaluate, "profile": stage_profile}[stage](ctx)  # fmt: skip
        ctx.say(f"stage {stage} done in {time.time() - ts:.0f} s")
    if "report" in stages:
        text = report(ctx)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)
        print(text)
    ctx.say(f"all stages done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
