"""Sanity checks for saliency maps (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

**Cascading model-parameter randomisation.** The layers of the model are re-initialised one after
the other, from the top (the output layer) down, keeping the earlier randomisations (cascading);
after each step the maps are recomputed for the same inputs and target classes and compared with
the original maps by the Spearman rank correlation and the SSIM, per example. A map that explains
the model must change when the model does: a method that *passes* shows both similarities
falling towards 0 as more layers are randomised; one that keeps a high similarity to the end
reflects the input (edges, the architecture's inductive bias), not the learned function.
``order="independent"`` randomises one layer at a time instead (the others keep their weights).

The randomisation follows Quantus' ``MPRT`` (Hedström et al., JMLR 2023), so the two can be
compared on the same configuration: the layers are the modules with a ``reset_parameters``
method (convolutions, linear layers, normalisation layers), in reverse registration order, and
each one is re-initialised with ``reset_parameters()`` after ``torch.manual_seed(seed + 1)``. The
model is randomised *in place* and restored exactly afterwards (also on errors), so any
attribution object built on it can be used as it is; the global RNG state is left unchanged.

**Data-independence control.** The map of a constant input (all zeros by default, or each
example's mean value) for the same target, compared with the map of the real input: a map that
barely changes when the image is blanked does not depend on the data.

Similarities: :func:`spearman_correlation` (ranks with ties averaged, as ``scipy.stats.spearmanr``)
and :func:`ssim` (the mean SSIM of ``skimage.metrics.structural_similarity`` with a 7x7 uniform
window and sample covariances, data range = the pair's range as in Quantus). Both are NaN when a
map is constant (the correlation is undefined); summaries average the defined values and count
the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_cam_ext._maps import upsample_maps
from captum_cam_ext.metrics._common import (
    TargetType,
    check_batch_size,
    check_inputs,
    check_maps,
    compute_attributions,
    format_args,
    forward,
    index_args,
    resolve_chunk_target,
)
from captum_cam_ext.metrics.statistics import bootstrap_ci

__all__ = [
    "DataIndependenceResult",
    "RandomizationResult",
    "data_independence",
    "parameter_randomization",
    "randomizable_layers",
    "spearman_correlation",
    "ssim",
]

_ORDERS = ("top_down", "bottom_up", "independent")


# --------------------------------------------------------------------------------------------
# similarities
# --------------------------------------------------------------------------------------------


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of each row of ``x`` (B, P), ties sharing their average rank."""
    s = torch.sort(x, dim=1).values
    left = torch.searchsorted(s, x, right=False)
    right = torch.searchsorted(s, x, right=True)
    return (left + right + 1).double() / 2


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    den = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    return torch.where(den > 0, (a * b).sum(1) / torch.where(den > 0, den, 1.0), torch.full_like(den, math.nan))


def spearman_correlation(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation per example of two batches of maps ``(N, ...)``; NaN for a constant map."""
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"need two batches of maps of the same shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    fa, fb = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    return _pearson_rows(_average_ranks(fa), _average_ranks(fb))


def ssim(a: Tensor, b: Tensor, *, win_size: int = 7, data_range: Optional[float] = None) -> Tensor:
    """Mean structural similarity per example of maps ``(N, 1, H, W)`` or ``(N, H, W)``.

    Same definition as ``skimage.metrics.structural_similarity`` with its defaults (uniform
    ``win_size`` window, sample covariances, ``K1 = 0.01``, ``K2 = 0.03``, the mean over the pixels
    whose window lies inside the image). ``data_range`` defaults to each pair's ``max - min``
    (as Quantus); NaN where that range is 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() == 3:
        a, b = a.unsqueeze(1), b.unsqueeze(1)
    if a.dim() != 4 or a.shape[1] != 1:
        raise ValueError(f"ssim needs maps (N, 1, H, W) or (N, H, W), got {tuple(a.shape)}")
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"win_size must be an odd int >= 3, got {win_size!r}")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(
            f"maps of size {tuple(a.shape[-2:])} are smaller than the {win_size}x{win_size} SSIM window; "
            "upsample them to the input size (upsample=True) or pass a smaller odd win_size"
        )
    x, y = a.double(), b.double()
    if data_range is None:
        both = torch.cat([x.flatten(1), y.flatten(1)], dim=1)
        rng = (both.max(1).values - both.min(1).values).view(-1, 1, 1, 1)
    else:
        rng = torch.full((x.shape[0], 1, 1, 1), float(data_range), dtype=torch.float64)
    np_ = win_size * win_size
    cov_norm = np_ / (np_ - 1)

    def mean(t: Tensor) -> Tensor:
        return F.avg_pool2d(t, win_size, stride=1)

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    out = s.flatten(1).mean(1)
    return torch.where(rng.flatten() > 0, out, torch.full_like(out, math.nan))


# --------------------------------------------------------------------------------------------
# maps of a batch
# --------------------------------------------------------------------------------------------


def _maps(
    attribution_method: Any,
    x: Tensor,
    target: Tensor,
    args: Optional[Tuple[Any, ...]],
    attribute_kwargs: Optional[Dict[str, Any]],
    channel_reduction: Optional[str],
    batch_size: int,
    take_abs: bool,
    upsample: bool,
    interpolate_mode: str,
) -> Tensor:
    out = []
    n = x.shape[0]
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        cargs = index_args(args, torch.arange(start, stop, device=x.device), n)
        raw = compute_attributions(attribution_method, x[start:stop], target[start:stop], cargs, attribute_kwargs)
        m = check_maps(raw, stop - start, channel_reduction)
        if take_abs:
            m = m.abs()
        if upsample:
            m = upsample_maps(m.to(x.device), x.shape[-2:], interpolate_mode)
        out.append(m.detach().cpu())
    return torch.cat(out)


def _targets(
    model: Callable[..., Tensor], x: Tensor, target: TargetType, args: Optional[Tuple[Any, ...]]
) -> Tensor:
    with torch.no_grad():
        out = forward(model, x, args)
    tgt = resolve_chunk_target(target, out, 0, x.shape[0], x.shape[0])
    if not isinstance(tgt, Tensor):
        raise TypeError("sanity checks need class indices as target (None, int, sequence, LongTensor), not a callable")
    return tgt


# --------------------------------------------------------------------------------------------
# parameter randomisation
# --------------------------------------------------------------------------------------------


def randomizable_layers(model: nn.Module) -> List[str]:
    """Names of the modules that the randomisation re-initialises (those with ``reset_parameters``),
    in registration order (bottom-up)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return [name for name, mod in model.named_modules() if callable(getattr(mod, "reset_parameters", None))]


class _Restore:
    """Exact copies of a model's parameters and buffers, written back on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}

    def restore(self) -> None:
        with torch.no_grad():
            for k, v in self.model.state_dict(keep_vars=True).items():
                v.copy_(self.saved[k])


def _randomized_models(
    model: nn.Module, layers: Sequence[str], order: str, seed: int
) -> Iterator[str]:
    """Randomise ``model`` in place step by step (yielding the layer just randomised)."""
    modules = dict(model.named_modules())
    sequence = list(layers) if order != "top_down" else list(reversed(layers))
    original = _Restore(model)
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    for name in sequence:
        if order == "independent":
            original.restore()
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + 1)
            with torch.no_grad():
                modules[name].reset_parameters()  # type: ignore[operator]
        yield name


@dataclass
class RandomizationResult:
    """Similarity of the maps of a progressively randomised model to the original maps.

    Attributes
    ----------
    layers : list of str
        Step ``k`` randomised ``layers[k]`` (and, cascading, every earlier entry).
    spearman, ssim : Tensor (S, N)
        Per step and example (NaN where a map is constant).
    order : str
        ``"top_down"`` (cascading from the output), ``"bottom_up"`` or ``"independent"``.
    seed : int
    original_maps : Tensor (N, 1, H, W)
        The maps of the original model that were compared.
    """

    layers: List[str]
    spearman: Tensor
    ssim: Tensor
    order: str
    seed: int
    original_maps: Tensor = field(repr=False)

    def summary(self, n_boot: int = 2000, confidence: float = 0.95) -> List[Dict[str, Any]]:
        """Per step: the layer, mean Spearman and SSIM over the examples with a bootstrap interval,
        and the number of examples where the similarity is undefined (NaN)."""
        rows = []
        for k, name in enumerate(self.layers):
            row: Dict[str, Any] = {"step": k + 1, "layer": name}
            for key, vals in (("spearman", self.spearman[k]), ("ssim", self.ssim[k])):
                ok = vals[torch.isfinite(vals)]
                row[key] = float(ok.mean()) if ok.numel() else math.nan
                lo, hi = bootstrap_ci(ok, n_boot=n_boot, confidence=confidence) if ok.numel() else (math.nan,) * 2
                row[f"{key}_ci"] = (lo, hi)
                row[f"{key}_undefined"] = int(vals.numel() - ok.numel())
            rows.append(row)
        return rows

    def markdown(self, title: Optional[str] = None) -> str:
        """The summary as a markdown table."""
        lines = [f"### {title}", ""] if title else []
        lines += [
            "| step | randomised layer | Spearman [95% CI] | SSIM [95% CI] | undefined |",
            "|---:|---|---|---|---:|",
        ]
        for r in self.summary():
            sp, ss = r["spearman_ci"], r["ssim_ci"]
            lines.append(
                f"| {r['step']} | {r['layer']} | {r['spearman']:.3f} [{sp[0]:.3f}, {sp[1]:.3f}] | "
                f"{r['ssim']:.3f} [{ss[0]:.3f}, {ss[1]:.3f}] | {r['spearman_undefined']} |"
            )
        kind = {"top_down": "cascading from the output layer", "bottom_up": "cascading from the input layer",
                "independent": "one layer at a time"}[self.order]  # fmt: skip
        lines += ["", f"Randomisation {kind} (seed {self.seed}); similarity to the original maps, "
                  f"{self.spearman.shape[1]} examples. A method that passes falls towards 0."]  # fmt: skip
        return "\n".join(lines)


def parameter_randomization(
    model: nn.Module,
    attribution_method: Any,
    inputs: Tensor,
    target: TargetType = None,
    *,
    additional_forward_args: Any = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    layers: Optional[Sequence[str]] = None,
    order: str = "top_down",
    seed: int = 42,
    take_abs: bool = True,
    upsample: bool = True,
    interpolate_mode: str = "bilinear",
    win_size: int = 7,
    channel_reduction: Optional[str] = None,
    max_examples_per_batch: Optional[int] = None,
) -> RandomizationResult:
    """Cascading model-parameter randomisation test (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The model; it is randomised in place during the call and restored exactly afterwards
        (parameters, buffers, mode and ``requires_grad`` flags).
    attribution_method : object with ``.attribute(inputs, target=..., **kwargs)``
        A method that computes through ``model`` (e.g. ``LayerGradCam(model, model.layer4)``).
    inputs : Tensor (N, C, H, W)
    target : None, int, sequence of int or LongTensor (N,)
        Classes to explain, fixed for every step (None: the original model's predictions).
    additional_forward_args : any, optional
    attribute_kwargs : dict, optional
        E.g. ``{"relu_attributions": True}``.
    layers : sequence of str, optional
        Module names to randomise, bottom-up (default: :func:`randomizable_layers`).
    order : {"top_down", "bottom_up", "independent"}
        Cascading from the output (Adebayo et al., Quantus' default), cascading from the input,
        or one layer at a time.
    seed : int
        ``torch.manual_seed(seed + 1)`` before each re-initialisation (Quantus' convention).
    take_abs : bool
        Compare absolute values (Quantus' ``abs=True``; no effect on non-negative CAMs).
    upsample : bool
        Compare the maps upsampled to the input size (needed for SSIM on small maps).
    interpolate_mode : str
    win_size : int
        SSIM window.
    channel_reduction : {"sum", "mean", "abs_sum"} or None
    max_examples_per_batch : int, optional

    Returns
    -------
    RandomizationResult
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module (it is randomised in place), got {type(model).__name__}")
    if order not in _ORDERS:
        raise ValueError(f"order must be one of {_ORDERS}, got {order!r}")
    x = check_inputs(inputs)
    available = randomizable_layers(model)
    names = list(layers) if layers is not None else available
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ValueError(f"layers {unknown or names} cannot be randomised; choose from {available}")
    bs = check_batch_size(max_examples_per_batch, x.shape[0])
    args = format_args(additional_forward_args)
    tgt = _targets(model, x, target, args)

    def maps_now() -> Tensor:
        return _maps(attribution_method, x, tgt, args, attribute_kwargs, channel_reduction, bs, take_abs,
                     upsample, interpolate_mode)  # fmt: skip

    original = maps_now()
    restore = _Restore(model)
    done: List[str] = []
    sp: List[Tensor] = []
    ss: List[Tensor] = []
    try:
        for name in _randomized_models(model, names, order, seed):
            m = maps_now()
            done.append(name)
            sp.append(spearman_correlation(original, m))
            ss.append(ssim(original, m, win_size=win_size))
    finally:
        restore.restore()
    return RandomizationResult(done, torch.stack(sp), torch.stack(ss), order, seed, original)


# --------------------------------------------------------------------------------------------
# data independence
# --------------------------------------------------------------------------------------------


@dataclass
class DataIndependenceResult:
    """Similarity of each example's map to the map of a constant input (same target).

    Attributes
    ----------
    spearman, ssim : Tensor (N,)
        NaN where a map is constant (e.g. an all-zero CAM of a blank input).
    baseline : str
        What the constant input was.
    maps, constant_maps : Tensor (N, 1, H, W)
    """

    spearman: Tensor
    ssim: Tensor
    baseline: str
    maps: Tensor = field(repr=False)
    constant_maps: Tensor = field(repr=False)

    def summary(self) -> Dict[str, float]:
        """Means over the examples where defined, and the share of undefined (constant-map) examples."""
        out: Dict[str, float] = {}
        for key, vals in (("spearman", self.spearman), ("ssim", self.ssim)):
            ok = vals[torch.isfinite(vals)]
            out[key] = float(ok.mean()) if ok.numel() else math.nan
        out["undefined_share"] = float((~torch.isfinite(self.spearman)).double().mean())
        return out


def data_independence(
    model: Callable[..., Tensor],
    attribution_method: Any,
    inputs: Tensor,
    target: TargetType = None,
    *,
    baseline: Union[str, float] = "zeros",
    additional_forward_args: Any = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    take_abs: bool = True,
    upsample: bool = True,
    interpolate_mode: str = "bilinear",
    win_size: int = 7,
    channel_reduction: Optional[str] = None,
    max_examples_per_batch: Optional[int] = None,
) -> DataIndependenceResult:
    """Maps of the inputs versus maps of a constant input, for the same targets.

    ``baseline``: ``"zeros"`` (the all-zero input), ``"mean"`` (each example's mean value per
    channel, spread over the image) or a number. A method whose map of the blank input is close
    to the map of the real one (high similarity) does not depend on the data.
    """
    x = check_inputs(inputs)
    if isinstance(baseline, str):
        if baseline == "zeros":
            x0 = torch.zeros_like(x)
        elif baseline == "mean":
            x0 = x.mean(dim=(2, 3), keepdim=True).expand_as(x).contiguous()
        else:
            raise ValueError(f"baseline must be 'zeros', 'mean' or a number, got {baseline!r}")
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        x0 = torch.full_like(x, float(baseline))
    else:
        raise TypeError(f"baseline must be 'zeros', 'mean' or a number, got {type(baseline).__name__}")
    bs = check_batch_size(max_examples_per_batch, x.shape[0])
    args = format_args(additional_forward_args)
    tgt = _targets(model, x, target, args)
    kw = (args, attribute_kwargs, channel_reduction, bs, take_abs, upsample, interpolate_mode)
    maps = _maps(attribution_method, x, tgt, *kw)
    const = _maps(attribution_method, x0, tgt, *kw)
    return DataIndependenceResult(
        spearman=spearman_correlation(maps, const),
        ssim=ssim(maps, const, win_size=win_size),
        baseline=str(baseline),
        maps=maps,
        constant_maps=const,
    )
