"""The see-through-walls audit at the paper's geometry (issue 15), resumable.

Stages (each skips what is already cached under ``benchmarks/cache/``)::

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/walls_paper_bench.py --stage train
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/walls_paper_bench.py --stage audit
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/walls_paper_bench.py --stage real

``real``: every CAM on stacked real photos (the bundled photos and random crops of them) with the
pretrained EfficientNet-Lite0 made blind to rows 160..223 and, as the control, the original
network; cached as ``benchmarks/cache/blind_real_*.pt``.

``train``: the paper's construction at our training resolution (``paper``: a dense-mask wall that
hides input rows 42..55 of a 56x28 stacked Fashion-MNIST pair, the paper's 54 of 224) and the same
network without a wall (``paper-nowall``), 3 seeds each, Adam, 3 epochs on the 60,000 stacked D1
training pairs; weights cached as ``benchmarks/cache/blind_paper*_e3_nall_s<seed>.pt`` with the
wall time.  ``audit``: per-image leakage of every CAM method on stacked test pairs, cached as
``benchmarks/cache/blind_paper_audit_*.pt``.  The report is written by ``benchmarks/walls_bench.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captum_cam_ext.walls.audit import train_blind_model  # noqa: E402

CACHE = ROOT / "benchmarks" / "cache"
SEEDS = (0, 1, 2)
KINDS = ("paper", "paper-nowall")
EPOCHS = 3
N_TEST = 1000
HIDDEN = "42:56"  # the bottom 14 of 56 rows: the paper's 54 of 224
REAL_HIDDEN = "170:224"  # the paper's band on the 224x224 stacked photos
# methods with many masked forwards per image (SS-CAM: ~0.9 s per image here) run on the first
# N_SLOW test images of each dataset only
SLOW_ON_FMNIST = ("sscam", "iscam")
N_SLOW = 200


def train_all(progress: bool) -> None:
    for seed in SEEDS:
        for kind in KINDS:
            t0 = time.perf_counter()
            _, info = train_blind_model(kind, EPOCHS, None, seed=seed, cache_dir=CACHE,
                                        progress=progress)
            state = "cached" if info.get("cached") else "trained"
            print(f"{kind} seed {seed}: {state} ({info.get('train_seconds', 0):.0f} s training, "
                  f"{time.perf_counter() - t0:.0f} s now) -> {info.get('cache_path')}", flush=True)


def _paper_audit_path(kind: str, seed: int, dataset: str) -> Path:
    return CACHE / f"blind_paper_audit_{kind}_s{seed}_{dataset}_n{N_TEST}.pt"


def audit_paper(progress: bool, only_trained: bool = False) -> None:
    """Per-image leakage of every registered CAM on the paper-geometry models (cached).

    ``only_trained``: skip models not trained yet (so that it can run next to ``--stage train``).
    """
    import captum_cam_ext.attr  # noqa: F401  (registers the methods)
    from captum_cam_ext.registry import methods
    from captum_cam_ext.walls.audit import DATASETS
    from captum_cam_ext.walls.blindness import check_blind
    from captum_cam_ext.walls.datasets import stacked_fashion_mnist
    from captum_cam_ext.walls.model_audit import measure_leakage

    every = methods()
    slow = [c for n, c in every.items() if n in SLOW_ON_FMNIST]
    fast = [c for n, c in every.items() if n not in SLOW_ON_FMNIST]
    for seed in SEEDS:
        for kind in KINDS:
            todo = [d for d in DATASETS if not _paper_audit_path(kind, seed, d).is_file()]
            weights = CACHE / f"blind_{kind}_e{EPOCHS}_nall_s{seed}.pt"
            if not todo or (only_trained and not weights.is_file()):
                continue
            model, info = train_blind_model(kind, EPOCHS, None, seed=seed, cache_dir=CACHE,
                                            progress=False)
            layer = model.features
            assert isinstance(layer, torch.nn.Module)
            for name in todo:
                pairs = stacked_fashion_mnist("test", DATASETS[name], n=N_TEST, seed=1)
                t0 = time.perf_counter()
                blind = check_blind(model, pairs.images[:200], HIDDEN)
                audit = measure_leakage(model, layer, pairs.images, HIDDEN, batch=100,
                                        progress=progress, methods=fast,
                                        skip_inapplicable=True)
                few = measure_leakage(model, layer, pairs.images[:N_SLOW], HIDDEN,
                                      batch=100, progress=progress, methods=slow,
                                      skip_inapplicable=True)
                audit.per_image.update(few.per_image)
                audit.seconds.update(few.seconds)
                audit.skipped.update(few.skipped)
                with torch.no_grad():
                    acc = float((model(pairs.images).argmax(1) == pairs.labels).float().mean())
                blob = {"per_image": audit.per_image, "seconds": audit.seconds,
                        "skipped": audit.skipped,
                        "targets": audit.targets, "labels": pairs.labels,
                        "accuracy": acc, "blindness": vars(blind), "train": info,
                        "hidden_share": audit.hidden_share, "wall_seconds": time.perf_counter() - t0}
                torch.save(blob, _paper_audit_path(kind, seed, name))
                print(f"audit {kind} seed {seed} {name}: accuracy {acc:.3f}, blind={blind.blind}, "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)


# ------------------------------------------------------------------ the real-image audit
REAL_SETS = {  # name -> (mode, crops per photo)
    "photos-same": ("same", 0),
    "photos-different": ("different", 0),
    "crops-same": ("same", 8),
    "crops-different": ("different", 8),
}
# Score-CAM and the other methods that run a full forward per masked channel (SS-CAM, IS-CAM):
# ~2 min per image and method on 1 thread, so a few images only
SCORECAM_SUBSET = {"photos-same": 3, "crops-same": 3}


# Not run on EfficientNet-Lite0 at all: tens of Score-CAMs per image (over an hour per image here)
REAL_EXCLUDED = {
    "sscam": "not run on EfficientNet-Lite0: 35 Score-CAMs per image (about 75 min per image on "
             "one thread here); see section 1 for it on the Fashion-MNIST models",
    "iscam": "not run on EfficientNet-Lite0: 10 Score-CAMs per image (about 20 min per image on "
             "one thread here); see section 1 for it on the Fashion-MNIST models",
}


def slow_on_efficientnet(name: str, cls: type) -> bool:
    """Perturbation methods other than Ablation-CAM (which ablates inside the layer hook)."""
    from captum_cam_ext.registry import method_kind

    return method_kind(cls) == "perturbation" and name != "ablationcam"


def real_sets() -> dict:
    from captum_cam_ext.walls.datasets import stacked_photos

    return {name: stacked_photos(mode, crops_per_photo=crops, seed=0)
            for name, (mode, crops) in REAL_SETS.items()}


def _real_path(model: str, dataset: str, method: str) -> Path:
    return CACHE / f"blind_real_{model}_{dataset}_{method}.pt"


def audit_real(progress: bool) -> None:
    """Every CAM on stacked real photos: the blind EfficientNet-Lite0 and the original (control)."""
    import captum_cam_ext.attr  # noqa: F401  (registers the methods)
    from captum_cam_ext.data.efficientnet import load_efficientnet_lite0
    from captum_cam_ext.registry import methods
    from captum_cam_ext.walls.blindness import check_blind
    from captum_cam_ext.walls.model_audit import measure_leakage
    from captum_cam_ext.walls.pretrained import blind_efficientnet_lite0

    base = load_efficientnet_lite0()
    blind = blind_efficientnet_lite0(base=base)
    models: Dict[str, Tuple[torch.nn.Module, Any]] = {
        "blind": (blind, blind.features), "original": (base, base._head_act)}
    sets = real_sets()
    for dataset, pairs in sets.items():
        proof = CACHE / f"blind_real_proof_{dataset}.pt"
        if not proof.is_file():
            torch.save({"blind": vars(check_blind(blind, pairs.images, REAL_HIDDEN)),
                        "original": vars(check_blind(base, pairs.images, REAL_HIDDEN))}, proof)
    order = sorted(methods().items(), key=lambda kv: slow_on_efficientnet(*kv))  # slow ones last
    for name, cls in order:
        if name in REAL_EXCLUDED:
            path = CACHE / f"blind_real_blind_photos-same_{name}.pt"
            if not path.is_file():
                torch.save({"skipped": REAL_EXCLUDED[name]}, path)
            continue
        for dataset, pairs in sets.items():
            images = pairs.images
            if slow_on_efficientnet(name, cls):
                if dataset not in SCORECAM_SUBSET:
                    continue
                images = images[: SCORECAM_SUBSET[dataset]]
            for mname, (model, layer) in models.items():
                path = _real_path(mname, dataset, name)
                if path.is_file():
                    continue
                t0 = time.perf_counter()
                audit = measure_leakage(model, layer, images, REAL_HIDDEN, methods=[cls],
                                        batch=8, method_batch_size=64, skip_inapplicable=True)
                if cls.__name__ in audit.skipped:
                    torch.save({"skipped": audit.skipped[cls.__name__]}, path)
                    print(f"real {mname} {dataset} {name}: skipped ({audit.skipped[cls.__name__]})",
                          flush=True)
                    continue
                torch.save({"per_image": audit.per_image[cls.__name__],
                            "targets": audit.targets, "seconds": time.perf_counter() - t0,
                            "n": int(images.shape[0])}, path)
                print(f"real {mname} {dataset} {name}: {time.perf_counter() - t0:.0f} s", flush=True)


# ------------------------------------------------------------------------------ the report
PAPER_NUMBER = (0.22, 0.12)  # Grad-CAM, STACK-GEN, masked VGG16: mean ± std over the 100 images
PAPER_CONSTANT = (54 / 224) ** 0.5  # 0.491


def _cat(values: list) -> torch.Tensor:
    return torch.cat([v.double().reshape(-1) for v in values])


def _ci(values: torch.Tensor, method: str = "bootstrap") -> tuple:
    from captum_cam_ext.metrics.statistics import bootstrap_ci

    return bootstrap_ci(values, method=method, n_boot=10000, seed=0)


def load_paper() -> dict:
    """``{(kind, seed, dataset): blob}`` for every cached paper-geometry audit."""
    from captum_cam_ext.walls.audit import DATASETS

    out = {}
    for kind in KINDS:
        for seed in SEEDS:
            for d in DATASETS:
                path = _paper_audit_path(kind, seed, d)
                if path.is_file():
                    out[(kind, seed, d)] = torch.load(path, weights_only=False)
    return out


def paper_stats(res: dict, dataset: str, method: str, metric: str = "wall_ratio") -> dict:
    """Blind and control over seeds: pooled mean/std over images, t-CI over the seed means, and
    the paired blind - control difference (per seed over the same images; t over seeds)."""
    from captum_cam_ext.metrics.statistics import paired_comparison

    seeds = [s for s in SEEDS if ("paper", s, dataset) in res and ("paper-nowall", s, dataset) in res]
    if not seeds:
        return {}
    blind = [res[("paper", s, dataset)]["per_image"][method][metric] for s in seeds]
    ctrl = [res[("paper-nowall", s, dataset)]["per_image"][method][metric] for s in seeds]
    n = min(v.numel() for v in blind + ctrl)  # the slow methods ran on the first N_SLOW images
    blind, ctrl = [v[:n] for v in blind], [v[:n] for v in ctrl]
    b_means = torch.tensor([float(v.mean()) for v in blind], dtype=torch.float64)
    c_means = torch.tensor([float(v.mean()) for v in ctrl], dtype=torch.float64)
    out = {"seeds": seeds, "blind_seed_means": b_means.tolist(), "control_seed_means": c_means.tolist(),
           "blind_mean": float(_cat(blind).mean()), "blind_std": float(_cat(blind).std()),
           "control_mean": float(_cat(ctrl).mean()), "control_std": float(_cat(ctrl).std()),
           "n_images": int(blind[0].numel())}
    if len(seeds) > 1:
        out["blind_ci"] = _ci(b_means, "t")
        out["control_ci"] = _ci(c_means, "t")
        row = paired_comparison(b_means, c_means, metric=metric, a="blind", b="control",
                                higher_is_better=False, method="t", unit="seeds")
    else:
        out["blind_ci"] = _ci(blind[0])
        out["control_ci"] = _ci(ctrl[0])
        row = paired_comparison(blind[0], ctrl[0], metric=metric, a="blind", b="control",
                                higher_is_better=False)
    out["diff"] = row.mean_diff
    out["diff_ci"] = (row.ci_low, row.ci_high)
    out["diff_unit"] = row.unit
    out["blind_wins"] = row.win_rate
    return out


def _f(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


def paper_section(res: dict) -> list:
    """Markdown lines: every method at the paper's geometry, blind vs no-wall control."""
    from captum_cam_ext.walls.audit import DATASETS

    if not res:
        return ["(paper-geometry audit not run yet: walls_paper_bench.py --stage audit)", ""]
    methods = list(next(iter(res.values()))["per_image"])
    lines = []
    acc = {k: [res[(k, s, "D1")]["accuracy"] for s in SEEDS if (k, s, "D1") in res] for k in KINDS}
    train_s = {k: [res[(k, s, "D1")]["train"].get("train_seconds") for s in SEEDS
                   if (k, s, "D1") in res] for k in KINDS}
    blind_ok = all(b["blindness"]["blind"] for (k, _, _), b in res.items() if k == "paper")
    lines += [
        f"Models: `paper_wall_net()` (conv8-conv8-pool-conv16-conv16-pool-conv32, 32x14x7 CAM "
        f"layer, dense head masked to feature rows 0..7) and the same network without the wall "
        f"(`paper_wall_net(wall=False)`); seeds {', '.join(map(str, SEEDS))}; Adam lr 1e-3, "
        f"batch 128, {EPOCHS} epochs on the 60,000 stacked D1 training pairs. Test accuracy (top "
        f"image's class, D1): blind {', '.join(f'{100 * a:.1f}%' for a in acc['paper'])}; "
        f"control {', '.join(f'{100 * a:.1f}%' for a in acc['paper-nowall'])}. Training time per "
        f"model (1 thread, shared machine): "
        f"{', '.join(f'{t:.0f} s' for t in train_s['paper'] + train_s['paper-nowall'] if t)}.",
        "",
        f"Blindness of every blind model, checked on 200 test images of each dataset: "
        f"{'bit-identical logits and zero input gradient on rows 42..55' if blind_ok else 'FAILED'}.",
        "",
        "Wall ratio = the paper's ||S[42:56]|| / ||S|| on the min-max normalised map bilinearly "
        "upsampled to 56x28 (a constant map scores sqrt(14/56) = 0.500). Mean ± std over the "
        f"{N_TEST} test images of each seed pooled, [95% CI: Student t over the {len(SEEDS)} seed "
        "means]. Blind − control: the mean paired difference over the same images, per seed, "
        "[95% CI: t over seeds]. Positive mass / images with positive saliency: behind the wall, "
        "blind model, nearest upsampling (exact per feature cell). SS-CAM and IS-CAM (35 and 10 "
        f"Score-CAMs per image) ran on the first {N_SLOW} test images of each seed (blind and "
        "control on the same images).",
        "",
    ]
    c56 = (14 / 56) ** 0.5
    for d, mode in DATASETS.items():
        stack = mode == "same"
        lines += [f"**{d}** ({mode}{': the STACK setting, two objects of the same class' if stack else ''}; "
                  "hidden: the bottom 14 of 56 rows = the paper's bottom 54 of 224)",
                  "",
                  "| method | images per seed | wall ratio, blind | wall ratio, no-wall control | "
                  "blind − control | positive mass behind the wall (blind) | images with positive "
                  "saliency there |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        if stack:
            lines.append(
                f"| **paper**: Grad-CAM, VGG16 with the dense-mask wall trained on ImageNet, "
                f"STACK-GEN (authors' notebook), bottom 54 of 224 rows | 100 (one model) | "
                f"**{PAPER_NUMBER[0]:.2f} ± {PAPER_NUMBER[1]:.2f}** (no interval given) | "
                f"not reported | - | - | - |")
        for m in methods:
            st = paper_stats(res, d, m)
            if not st:
                continue
            pm = paper_stats(res, d, m, "positive_mass")
            ap = paper_stats(res, d, m, "any_positive")
            name = f"**{m}** (ours)" if stack and m == "LayerGradCam" else m
            lines.append(
                f"| {name} | {st['n_images']} | {_f(st['blind_mean'])} ± {_f(st['blind_std'])} "
                f"[{_f(st['blind_ci'][0])}, {_f(st['blind_ci'][1])}] | "
                f"{_f(st['control_mean'])} ± {_f(st['control_std'])} "
                f"[{_f(st['control_ci'][0])}, {_f(st['control_ci'][1])}] | "
                f"{_f(st['diff'])} [{_f(st['diff_ci'][0])}, {_f(st['diff_ci'][1])}] | "
                f"{_f(pm['blind_mean'])} | {100 * ap['blind_mean']:.1f}% |")
        lines.append(f"| constant map (reference: sqrt(14/56); the paper's sqrt(54/224) = "
                     f"{PAPER_CONSTANT:.3f}) | - | {c56:.3f} | {c56:.3f} | 0 | 0.250 | 100% |")
        lines.append("")
    lines += ["Shapley-CAM equals Grad-CAM on these networks (its second-order term vanishes: "
              "everything after the CAM layer is piecewise linear).", ""]
    skipped = {m: r for b in res.values() for m, r in b.get("skipped", {}).items()}
    if skipped:
        lines += ["Not applicable to these models (skipped): " + "; ".join(
            f"{k} ({v})" for k, v in skipped.items()) + ".", ""]
    return lines


def load_real() -> dict:
    """``{(model, dataset, method): blob}`` and the blindness proofs."""
    out: dict = {"proofs": {}, "audits": {}, "skipped": {}}
    for dataset in REAL_SETS:
        proof = CACHE / f"blind_real_proof_{dataset}.pt"
        if proof.is_file():
            out["proofs"][dataset] = torch.load(proof, weights_only=False)
        for path in CACHE.glob(f"blind_real_*_{dataset}_*.pt"):
            model = path.name[len("blind_real_"):].split("_")[0]
            if model not in ("blind", "original"):
                continue
            method = path.stem[len(f"blind_real_{model}_{dataset}_"):]
            blob = torch.load(path, weights_only=False)
            if "skipped" in blob:
                out.setdefault("skipped", {})[method] = blob["skipped"]
                continue
            out["audits"][(model, dataset, method)] = blob
    return out


def real_stats(real: dict, datasets: list, method: str, metric: str = "wall_ratio") -> dict:
    from captum_cam_ext.metrics.statistics import paired_comparison

    b = [real["audits"][("blind", d, method)]["per_image"][metric] for d in datasets
         if ("blind", d, method) in real["audits"]]
    c = [real["audits"][("original", d, method)]["per_image"][metric] for d in datasets
         if ("original", d, method) in real["audits"]]
    if not b or len(b) != len(c):
        return {}
    bb, cc = _cat(b), _cat(c)
    out: Dict[str, Any] = {"n": int(bb.numel()), "blind_mean": float(bb.mean()),
           "blind_std": float(bb.std()) if bb.numel() > 1 else 0.0,
           "control_mean": float(cc.mean()), "control_std": float(cc.std()) if cc.numel() > 1 else 0.0}
    if bb.numel() > 1:
        out["blind_ci"] = _ci(bb)
        row = paired_comparison(bb, cc, metric=metric, a="blind", b="original",
                                higher_is_better=False)
        out["diff"], out["diff_ci"] = row.mean_diff, (row.ci_low, row.ci_high)
    return out


def real_section(real: dict) -> list:
    """Markdown lines: every CAM on stacked real photos, blind EfficientNet vs the original."""
    if not real["audits"]:
        return ["(real-image audit not run yet: walls_paper_bench.py --stage real)", ""]
    lines = []
    for d, p in real["proofs"].items():
        b, o = p["blind"], p["original"]
        lines.append(
            f"- {d}: blind model: bit-identical logits under {b['n_changes']} random changes of "
            f"rows 170..223 of every image and zero input gradient there: **{b['blind']}**; "
            f"the original network: max |logit change| {o['max_output_change']:.3g}, max "
            f"|input gradient| {o['max_input_gradient']:.3g} (it sees the band).")
    lines.append("")
    agree = []
    for d in REAL_SETS:
        kb, ko = ("blind", d, "gradcam"), ("original", d, "gradcam")
        if kb in real["audits"] and ko in real["audits"]:
            tb, to = real["audits"][kb]["targets"], real["audits"][ko]["targets"]
            agree.append(f"{d} {int((tb == to).sum())}/{tb.numel()}")
    if agree:
        lines += ["Top-1 class of the blind model (the pretrained network on the top 160 rows) "
                  "equal to the original network's on the whole stacked image: "
                  + "; ".join(agree) + ". The CAM target is each model's own top class, as in "
                  "the paper.", ""]
    methods = sorted({k[2] for k in real["audits"]},
                     key=lambda m: list(_registry_order()).index(m) if m in _registry_order() else 99)
    groups = {"same (STACK-MIX-like: photos and crops)": ["photos-same", "crops-same"],
              "different": ["photos-different", "crops-different"]}
    for title, sets in groups.items():
        lines += [f"**Stacked photos, {title}**", "",
                  "| method | n | wall ratio, blind [95% CI] | wall ratio, original | blind − original "
                  "[95% CI] | positive mass in rows 170..223 (blind) | images with positive "
                  "saliency there |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for m in methods:
            st = real_stats(real, sets, m)
            if not st:
                continue
            pm = real_stats(real, sets, m, "positive_mass")
            ap = real_stats(real, sets, m, "any_positive")
            ci = st.get("blind_ci", (float("nan"),) * 2)
            dci = st.get("diff_ci", (float("nan"),) * 2)
            shown = _display(m) + (" (artifact, see below)" if m == "fullgrad" else "")
            lines.append(
                f"| {shown} | {st['n']} | {_f(st['blind_mean'])} ± {_f(st['blind_std'])} "
                f"[{_f(ci[0])}, {_f(ci[1])}] | {_f(st['control_mean'])} ± {_f(st['control_std'])} | "
                f"{_f(st.get('diff', float('nan')))} [{_f(dci[0])}, {_f(dci[1])}] | "
                f"{_f(pm['blind_mean'])} | {100 * ap['blind_mean']:.1f}% |")
        lines.append("")
    lines += ["Equal rows are identities, not coincidences: Guided Grad-CAM is Grad-CAM here (the "
              "guided rule acts on the ReLUs between the CAM layer and the logits, and "
              "EfficientNet-Lite0 has none after `_head_act`); GAP-CAM is Grad-CAM up to a "
              "constant factor on a global-average-pooled linear head; Shapley-CAM's second-order "
              "term vanishes on a linear head.", "",
              "FullGrad's numbers on the blind model are an artifact of the construction, not a "
              "leak of the method: FullGrad resizes the bias-gradient map of every call of every "
              "hooked layer to the whole input, but the blind model runs its trunk on the top 160 "
              "rows (and separately on the bottom 64), so the top call's maps are stretched over "
              "all 224 rows, band included (checked on two stacked photos: each of the 49 hooked "
              "layers runs twice per forward, on 80-row and 32-row maps; FullGrad's input-gradient "
              "term is exactly 0 in rows 160..223, yet 23% of its map's mass lies in rows "
              "170..223). On the paper-geometry models (one trunk over the whole image) FullGrad "
              "is exactly 0 behind the wall.", ""]
    if real.get("skipped"):
        lines += ["Not in these tables: " + "; ".join(
            f"{_display(k)} ({v})" for k, v in real["skipped"].items()) + ".", ""]
    return lines


def summary_lines(res: dict, real: dict, half: dict) -> list:
    """The paper's number next to ours (Grad-CAM, the paper's metric, STACK-like data)."""
    c56 = (14 / 56) ** 0.5
    lines = [
        "| | model | data | hidden rows | Grad-CAM wall ratio, mean ± std over images | 95% CI "
        "| constant map |",
        "|---|---|---|---|---:|---|---:|",
        f"| **paper** (Taimeskhanov et al. 2024; authors' notebook) | VGG16 trained on ImageNet "
        f"with the dense-mask wall | STACK-GEN: 100 generated 224x224 images, two objects of the "
        f"same class stacked | bottom 54 of 224 | **{PAPER_NUMBER[0]:.2f} ± {PAPER_NUMBER[1]:.2f}** "
        f"| not given | {PAPER_CONSTANT:.3f} |",
    ]
    st = paper_stats(res, "D2", "LayerGradCam") if res else {}
    if st:
        seeds = ", ".join(_f(v) for v in st["blind_seed_means"])
        lines.append(
            f"| ours, paper geometry | the paper's construction (`paper_wall_net`) trained here, "
            f"{len(st['seeds'])} seeds | stacked Fashion-MNIST D2 (same class), {st['n_images']} "
            f"images per seed | bottom 14 of 56 (= 54 of 224) | **{_f(st['blind_mean'], 2)} ± "
            f"{_f(st['blind_std'], 2)}** (seed means {seeds}) | [{_f(st['blind_ci'][0])}, "
            f"{_f(st['blind_ci'][1])}] (t over seeds) | {c56:.3f} |")
        lines.append(
            f"| ours, control | the same network without the wall | same | none hidden; ratio "
            f"on the same 14 rows | {_f(st['control_mean'], 2)} ± {_f(st['control_std'], 2)} | "
            f"[{_f(st['control_ci'][0])}, {_f(st['control_ci'][1])}]; blind − control "
            f"{_f(st['diff'])} [{_f(st['diff_ci'][0])}, {_f(st['diff_ci'][1])}] | {c56:.3f} |")
    rs = real_stats(real, ["photos-same", "crops-same"], "gradcam") if real["audits"] else {}
    if rs:
        ci = rs.get("blind_ci", (float("nan"),) * 2)
        lines.append(
            f"| ours, real images, no training | pretrained EfficientNet-Lite0 made blind to rows "
            f"160..223 | the 6 bundled photos and 48 crops, each stacked over itself / another "
            f"crop of the same photo ({rs['n']} images) | bottom 54 of 224 (170..223) | "
            f"**{_f(rs['blind_mean'], 2)} ± {_f(rs['blind_std'], 2)}** | [{_f(ci[0])}, "
            f"{_f(ci[1])}] (bootstrap over images) | {PAPER_CONSTANT:.3f} |")
        dci = rs.get("diff_ci", (float("nan"),) * 2)
        lines.append(
            f"| ours, control | the original EfficientNet-Lite0 (sees the band) | same | none "
            f"hidden; ratio on rows 170..223 | {_f(rs['control_mean'], 2)} ± "
            f"{_f(rs['control_std'], 2)} | blind − original {_f(rs.get('diff', float('nan')))} "
            f"[{_f(dci[0])}, {_f(dci[1])}] | {PAPER_CONSTANT:.3f} |")
    for kind, (mean, std, wall) in half.items():
        lines.append(
            f"| ours, half wall (section 3) | {kind} | stacked Fashion-MNIST D2, 1000 images, 1 "
            f"seed | bottom {56 - wall} of 56 | {mean:.2f} ± {std:.2f} | - | "
            f"{((56 - wall) / 56) ** 0.5:.3f} |")
    return lines


def _display(name: str) -> str:
    """The class name of a registered method (the tables' spelling)."""
    import captum_cam_ext.attr  # noqa: F401
    from captum_cam_ext.registry import methods

    cls = methods().get(name)
    return cls.__name__ if cls is not None else name


def _registry_order() -> list:
    import captum_cam_ext.attr  # noqa: F401
    from captum_cam_ext.registry import methods

    return list(methods())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--stage", choices=("train", "audit", "real", "all"), default="all")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--only-trained", action="store_true",
                    help="audit stage: skip models that are not trained yet")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.stage in ("train", "all"):
        train_all(args.progress)
    if args.stage in ("audit", "all"):
        audit_paper(args.progress, only_trained=args.only_trained)
    if args.stage in ("real", "all"):
        audit_real(args.progress)
    print(f"stage {args.stage}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
