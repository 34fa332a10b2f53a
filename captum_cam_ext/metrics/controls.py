"""Matched-area controls: what a map's *area* alone buys on the confidence metrics.

Average Drop / Increase / Gain multiply the input by the map (min-max normalised, upsampled), so a
map that is larger everywhere keeps more of the image and scores better whatever its ranking of
the pixels. To read a method's numbers, put them next to controls built from a base map:

* **power** ``mask ** p``: the same pixel ranking, a different area. ``p < 1`` enlarges the mask,
  ``p > 1`` shrinks it. :func:`solve_power` finds the ``p`` whose mean area equals a given area
  (e.g. the area of the method that claims to improve on the base);
* **blur**: a Gaussian blur of the mask (renormalised to [0, 1]): a smoother, larger map with
  almost the same ranking;
* **constant**: every pixel at the same value ``a`` (by default the base's mean area): area and
  nothing else. On the confidence metrics it is the floor "area alone" (for a model that is
  positively homogeneous in its input, ``O = a * Y`` exactly). It carries no ranking: the
  ranking metrics (deletion / insertion / ROAD) see all pixels tied;
* **random**: a seeded smooth random map (uniform noise at the base map's resolution, upsampled
  and normalised), optionally raised to the power that matches the base's area: a ranking that
  carries no information, at the same area.

Every control is returned as *masks*: ``(N, 1, H, W)`` values in [0, 1] at the input size, to be
scored with ``normalize="none"`` (power, blur and random masks already span [0, 1], so the default
normalisation would leave them unchanged; the constant one it would turn into zeros).

For datasets walked in batches (and across processes), :class:`AreaHistogram` accumulates the
distribution of mask values so that ``p`` is solved for the whole dataset from one pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from captum_cam_ext._maps import normalize_maps, upsample_maps
from captum_cam_ext.metrics._common import check_maps, prepare_masks
from captum_cam_ext.metrics.causal import gaussian_blur

__all__ = [
    "CONTROL_KINDS",
    "AreaHistogram",
    "ControlSpec",
    "DatasetControls",
    "area_controls",
    "blur_control",
    "constant_control",
    "mask_area",
    "maps_to_masks",
    "power_area",
    "power_control",
    "random_control",
    "solve_power",
]

#: The kinds of control :func:`area_controls` can build.
CONTROL_KINDS: Tuple[str, ...] = ("power", "blur", "constant", "random")

_P_MIN, _P_MAX = 1e-4, 1e4


def _check_masks(masks: Tensor) -> Tensor:
    if not isinstance(masks, Tensor):
        raise TypeError(f"masks must be a torch.Tensor (N, 1, H, W), got {type(masks).__name__}")
    if masks.dim() != 4 or masks.shape[1] != 1:
        raise ValueError(f"masks must have shape (N, 1, H, W), got {tuple(masks.shape)}")
    if masks.shape[0] == 0:
        raise ValueError("masks is empty (N = 0)")
    if not bool(torch.isfinite(masks).all()):
        raise ValueError("masks contain NaN or Inf values")
    lo, hi = float(masks.min()), float(masks.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise ValueError(
            f"masks must lie in [0, 1] (got values in [{lo:.3g}, {hi:.3g}]); build them with maps_to_masks()"
        )
    return masks.clamp(0.0, 1.0)


def _check_size(size: Sequence[int]) -> Tuple[int, int]:
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0 for s in size):
        raise ValueError(f"size must be (H, W) with positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def maps_to_masks(
    attributions: Tensor,
    size: Sequence[int],
    *,
    normalize: Optional[str] = "after_upsample",
    interpolate_mode: str = "bilinear",
    channel_reduction: Optional[str] = None,
) -> Tensor:
    """The masks ``(N, 1, H, W)`` that :func:`~captum_cam_ext.metrics.confidence_metrics` multiplies
    into the inputs: maps upsampled to ``size`` and min-max normalised (same options)."""
    if not isinstance(attributions, Tensor):
        raise TypeError(f"attributions must be a torch.Tensor, got {type(attributions).__name__}")
    maps = check_maps(attributions, attributions.shape[0], channel_reduction)
    return prepare_masks(maps, _check_size(size), normalize, interpolate_mode)


def mask_area(
    attributions: Tensor,
    size: Sequence[int],
    *,
    normalize: Optional[str] = "after_upsample",
    interpolate_mode: str = "bilinear",
    channel_reduction: Optional[str] = None,
) -> Tensor:
    """Per-example mask area ``(N,)``: the mean of :func:`maps_to_masks` (what AD/AI/AG reward)."""
    masks = maps_to_masks(
        attributions, size, normalize=normalize, interpolate_mode=interpolate_mode,
        channel_reduction=channel_reduction,
    )  # fmt: skip
    return masks.flatten(1).mean(1)


def _check_p(p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
        raise ValueError(f"the power p must be a positive finite number, got {p!r}")
    return float(p)


def power_control(masks: Tensor, p: float) -> Tensor:
    """``masks ** p`` in float64: the same ranking of pixels (zeros stay zero, ones stay one), another area.

    float64 keeps distinct values distinct (in float32 a power can round neighbours together and
    create ties that reorder pixels in the ranking metrics).
    """
    return _check_masks(masks).double().pow(_check_p(p))


def power_area(masks: Tensor, p: float) -> Tensor:
    """Per-example mean of ``masks ** p`` ``(N,)``."""
    return power_control(masks, p).flatten(1).mean(1)


def _bisect_power(area_of: Callable[[float], float], area: float, clamp: bool) -> float:
    if not isinstance(area, (int, float)) or not math.isfinite(area):
        raise ValueError(f"area must be a finite number, got {area!r}")
    hi_area, lo_area = area_of(_P_MIN), area_of(_P_MAX)
    if not lo_area - 1e-12 <= area <= hi_area + 1e-12:
        if not clamp:
            raise ValueError(
                f"no power of these masks has mean area {area:.4f}: powers reach [{lo_area:.4f}, {hi_area:.4f}] "
                "(the shares of pixels equal to 1 and above 0); pass clamp=True for the nearest"
            )
        return _P_MIN if area > hi_area else _P_MAX
    lo, hi = math.log(_P_MIN), math.log(_P_MAX)  # area decreases in p
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if area_of(math.exp(mid)) > area:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return math.exp(0.5 * (lo + hi))


def solve_power(masks: Tensor, area: float, *, clamp: bool = False) -> float:
    """The power ``p`` with ``mean(masks ** p) == area`` (mean over all examples and pixels).

    Parameters
    ----------
    masks : Tensor (N, 1, H, W)
        Masks in [0, 1] (:func:`maps_to_masks`).
    area : float
        Target mean area.
    clamp : bool
        Return the nearest reachable power (``1e-4`` or ``1e4``) instead of raising when ``area``
        is outside what powers can reach (the share of pixels above 0 and the share equal to 1).

    Returns
    -------
    float
        ``p`` to about 1e-10 relative precision in ``log p``.
    """
    values = _check_masks(masks).detach().double().flatten()
    return _bisect_power(lambda p: float(values.pow(p).mean()), float(area), clamp)


class AreaHistogram:
    """Distribution of mask values over a dataset, to solve a power for the dataset's mean area.

    Mask values in [0, 1] are binned (``bins`` equal bins); each bin keeps its count and the sum
    of its values, and ``area(p)`` uses each bin's mean value, so it is exact for ``p = 1`` and
    within ``O(1 / bins^2)`` otherwise. Exact zeros and ones are counted apart (they do not move
    under powers). Counts are plain tensors: sum them across processes with
    :meth:`as_tensor` / :meth:`from_tensor`.
    """

    def __init__(self, bins: int = 4096) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
            raise ValueError(f"bins must be an int >= 2, got {bins!r}")
        self.bins = bins
        self.counts = torch.zeros(bins, dtype=torch.float64)
        self.sums = torch.zeros(bins, dtype=torch.float64)
        self.zeros = 0.0
        self.ones = 0.0

    @property
    def total(self) -> float:
        """Number of pixels seen."""
        return float(self.counts.sum()) + self.zeros + self.ones

    def update(self, masks: Tensor) -> AreaHistogram:
        """Add the values of ``masks`` (N, 1, H, W) in [0, 1]; returns self."""
        v = _check_masks(masks).detach().double().flatten().cpu()
        zero, one = v <= 0, v >= 1
        self.zeros += float(zero.sum())
        self.ones += float(one.sum())
        mid = v[~(zero | one)]
        idx = (mid * self.bins).long().clamp_(0, self.bins - 1)
        self.counts.index_add_(0, idx, torch.ones_like(mid))
        self.sums.index_add_(0, idx, mid)
        return self

    def area(self, p: float) -> float:
        """Mean of ``mask ** p`` over every pixel seen."""
        if self.total == 0:
            raise ValueError("the histogram is empty; update() it with masks first")
        has = self.counts > 0
        means = self.sums[has] / self.counts[has]
        return (float((self.counts[has] * means.pow(_check_p(p))).sum()) + self.ones) / self.total

    def solve_power(self, area: float, *, clamp: bool = False) -> float:
        """The power whose mean area is ``area`` (see :func:`solve_power`)."""
        if self.total == 0:
            raise ValueError("the histogram is empty; update() it with masks first")
        return _bisect_power(self.area, float(area), clamp)

    def as_tensor(self) -> Tensor:
        """``[counts, sums, zeros, ones]`` as one float64 vector (to all-reduce)."""
        return torch.cat([self.counts, self.sums, torch.tensor([self.zeros, self.ones], dtype=torch.float64)])

    @classmethod
    def from_tensor(cls, vec: Tensor) -> AreaHistogram:
        """Inverse of :meth:`as_tensor`."""
        bins = (vec.numel() - 2) // 2
        h = cls(bins)
        h.counts = vec[:bins].double().clone()
        h.sums = vec[bins : 2 * bins].double().clone()
        h.zeros, h.ones = float(vec[-2]), float(vec[-1])
        return h


def blur_control(masks: Tensor, sigma: float) -> Tensor:
    """A Gaussian blur (``sigma`` in pixels, replicate padding) of ``masks``, renormalised to [0, 1]."""
    m = _check_masks(masks)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a positive number of pixels, got {sigma!r}")
    radius = max(1, int(math.ceil(3 * float(sigma))))
    radius = min(radius, max(1, min(m.shape[-2:]) - 1))
    return normalize_maps(gaussian_blur(m, 2 * radius + 1, float(sigma), padding="replicate"), eps=0)


def constant_control(
    n: int, size: Sequence[int], value: float, *, device: Union[str, torch.device, None] = None
) -> Tensor:
    """Masks ``(n, 1, H, W)`` equal to ``value`` in [0, 1] everywhere (area ``value``, no ranking)."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"a constant mask value must be in [0, 1], got {value!r}")
    return torch.full((n, 1, *_check_size(size)), float(value), device=device)


def random_control(
    indices: Union[Sequence[int], Tensor],
    size: Sequence[int],
    *,
    map_size: Optional[Sequence[int]] = None,
    seed: int = 0,
    interpolate_mode: str = "bilinear",
    device: Union[str, torch.device, None] = None,
) -> Tensor:
    """Seeded random masks ``(len(indices), 1, H, W)``: uniform noise at ``map_size``, upsampled, normalised.

    Example ``i`` of a dataset always gets the same mask (its generator is seeded with
    ``(seed, i)``), whatever the batch it falls in and however many processes share the work.
    ``map_size`` (default: ``size``) sets the smoothness: use the base map's resolution.
    """
    idx = indices.tolist() if isinstance(indices, Tensor) else list(indices)
    if not idx:
        raise ValueError("indices is empty")
    out_size = _check_size(size)
    h, w = _check_size(map_size) if map_size is not None else out_size
    noise = torch.empty(len(idx), 1, h, w, dtype=torch.float32)
    for k, i in enumerate(idx):
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + int(i)) % (2**63 - 1))
        noise[k] = torch.rand(1, h, w, generator=g)
    return normalize_maps(upsample_maps(noise, out_size, interpolate_mode), eps=0).to(device)


def area_controls(
    base_masks: Tensor,
    *,
    areas: Optional[Mapping[str, float]] = None,
    powers: Sequence[float] = (),
    blur_sigma: Optional[float] = None,
    constant: bool = True,
    random: bool = True,
    match_random_area: bool = True,
    map_size: Optional[Sequence[int]] = None,
    indices: Optional[Sequence[int]] = None,
    seed: int = 0,
    base_name: str = "base",
    clamp: bool = True,
) -> Dict[str, Tensor]:
    """Control masks built from a base method's masks (in memory, for the examples given).

    Parameters
    ----------
    base_masks : Tensor (N, 1, H, W)
        The base method's masks (:func:`maps_to_masks`).
    areas : dict name -> float, optional
        For each entry, the power of the base whose mean area equals that area (e.g.
        ``{"conceptor": 0.375}``), named ``"{base}**{p:.2f} (area of {name})"``.
    powers : sequence of float
        Fixed powers, named ``"{base}**{p:g}"`` (e.g. ``(0.5,)``).
    blur_sigma : float, optional
        Gaussian blur of the base (in pixels); default: one cell of ``map_size`` (``H / h``),
        or ``H / 7`` without ``map_size``. ``0`` leaves the blur out.
    constant : bool
        A constant mask at the base's mean area.
    random : bool
        A seeded random mask, at the base's mean area when ``match_random_area``.
    map_size : (h, w), optional
        The base map's resolution (smoothness of the random control, default blur width).
    indices : sequence of int, optional
        Dataset indices of the examples (seeds of the random masks); default ``0..N-1``.
    seed : int
        Seed of the random control.
    base_name : str
        Name of the base in the control names.
    clamp : bool
        Use the nearest reachable power when an area cannot be matched (see :func:`solve_power`);
        the masks' own areas show what was reached.

    Returns
    -------
    dict name -> Tensor (N, 1, H, W)
        In the order: matched powers, fixed powers, blur, constant, random.
    """
    m = _check_masks(base_masks)
    n, _, big_h, big_w = m.shape
    out: Dict[str, Tensor] = {}
    for name, a in (areas or {}).items():
        p = solve_power(m, float(a), clamp=clamp)
        out[f"{base_name}**{p:.2f} (area of {name})"] = power_control(m, p)
    for p in powers:
        out[f"{base_name}**{_check_p(p):g}"] = power_control(m, float(p))
    if blur_sigma is None:
        blur_sigma = big_h / map_size[0] if map_size is not None else big_h / 7
    if blur_sigma:
        out[f"blur({base_name}, {blur_sigma:g}px)"] = blur_control(m, blur_sigma)
    base_area = float(m.double().mean())
    if constant:
        out[f"constant {base_area:.3f}"] = constant_control(n, (big_h, big_w), base_area, device=m.device)
    if random:
        idx: List[int] = list(indices) if indices is not None else list(range(n))
        if len(idx) != n:
            raise ValueError(f"indices has {len(idx)} entries for {n} masks")
        r = random_control(idx, (big_h, big_w), map_size=map_size, seed=seed).to(m.device)
        if match_random_area:
            r = power_control(r, solve_power(r, base_area, clamp=True))
        out[f"random (seed {seed})"] = r
    return out


# --------------------------------------------------------------------------------------------
# controls over a dataset walked in batches (evaluate)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ControlSpec:
    """One control row: how to turn a batch of base masks into control masks.

    Attributes
    ----------
    name : str
        Row name, e.g. ``"gradcam**0.52 (area of conceptor)"``.
    kind : str
        One of :data:`CONTROL_KINDS`.
    param : float
        The power ``p`` (power), ``sigma`` in pixels (blur), the value (constant), or the power
        applied to the random masks (random).
    description : str
        One line for reports (what it is, and the area it was matched to).
    """

    name: str
    kind: str
    param: float
    description: str


def _round_power(p: float) -> float:
    """``p`` to 6 significant digits: the histograms summed in another order (another number of
    processes) give the same power, so the control masks are bit-identical."""
    return float(f"{p:.6g}")


class DatasetControls:
    """Matched-area controls for a dataset seen batch by batch (what ``evaluate(controls=True)`` uses).

    Pass 1: :meth:`observe` every method's maps of every batch (the mean mask area of each method,
    and the value distributions of the base's masks and of the random masks). Between the passes:
    sum :meth:`state` across processes and :meth:`load_state` it, then :meth:`specs` solves the
    powers for the whole dataset. Pass 2: :meth:`masks` builds a control's masks for a batch from
    the base's maps of that batch.

    Parameters
    ----------
    base : str
        The row whose maps the controls are built from.
    normalize, interpolate_mode : str
        How maps become masks (those of the confidence metrics).
    match : sequence of str, optional
        Rows whose mean mask area a power of the base is matched to (default: every other row).
    powers : sequence of float
        Fixed powers of the base.
    blur_sigma : float, optional
        In pixels; default one cell of the base map (input height / map height); 0 = no blur.
    constant, random : bool
        Include the constant (base's area) and the seeded random (base's area) controls.
    seed : int
        Seed of the random control (per example: ``(seed, dataset index)``).
    bins : int
        Histogram bins (see :class:`AreaHistogram`).
    """

    def __init__(
        self,
        base: str,
        *,
        normalize: Optional[str] = "after_upsample",
        interpolate_mode: str = "bilinear",
        match: Optional[Sequence[str]] = None,
        powers: Sequence[float] = (),
        blur_sigma: Optional[float] = None,
        constant: bool = True,
        random: bool = True,
        seed: int = 0,
        bins: int = 4096,
    ) -> None:
        self.base = base
        self.normalize = normalize
        self.interpolate_mode = interpolate_mode
        self.match = list(match) if match is not None else None
        self.powers = [_check_p(p) for p in powers]
        self.blur_sigma = blur_sigma
        self.constant = constant
        self.random = random
        self.seed = int(seed)
        self.base_hist = AreaHistogram(bins)
        self.random_hist = AreaHistogram(bins)
        self.area_sums: Dict[str, float] = {}
        self.area_counts: Dict[str, float] = {}
        self.map_size: Optional[Tuple[int, int]] = None
        self.input_size: Optional[Tuple[int, int]] = None

    def base_masks(self, maps: Tensor, size: Sequence[int]) -> Tensor:
        """The base's masks of a batch (as the confidence metrics build them), in float64.

        The maps are upsampled in their own precision (as the ranking metrics rank the base) and
        normalised in float64, so the masks rank the pixels exactly as the base's maps do.
        """
        m = check_maps(maps, maps.shape[0])
        big = _check_size(size)
        if self.normalize == "after_upsample":
            return normalize_maps(upsample_maps(m, big, self.interpolate_mode).double(), eps=0)
        return prepare_masks(m.double(), big, self.normalize, self.interpolate_mode)

    def _random(self, indices: Sequence[int], size: Tuple[int, int]) -> Tensor:
        return random_control(indices, size, map_size=self.map_size, seed=self.seed,
                              interpolate_mode=self.interpolate_mode)  # fmt: skip

    def observe(self, row: str, maps: Tensor, size: Sequence[int], indices: Sequence[int]) -> None:
        """Record a batch of one row's maps (``indices``: the examples' dataset indices)."""
        big = _check_size(size)
        masks = self.base_masks(maps, big)
        self.area_sums[row] = self.area_sums.get(row, 0.0) + float(masks.double().flatten(1).mean(1).sum())
        self.area_counts[row] = self.area_counts.get(row, 0.0) + masks.shape[0]
        if row == self.base:
            self.map_size = (int(maps.shape[-2]), int(maps.shape[-1]))
            self.input_size = big
            self.base_hist.update(masks)
            if self.random:
                self.random_hist.update(self._random(list(indices), big))

    def rows(self) -> List[str]:
        """Rows observed, in order."""
        return list(self.area_sums)

    def state(self) -> Tensor:
        """Everything observed as one float64 vector (sum it across processes)."""
        rows = self.rows()
        areas = [v for r in rows for v in (self.area_sums[r], self.area_counts[r])]
        return torch.cat([self.base_hist.as_tensor(), self.random_hist.as_tensor(),
                          torch.tensor(areas, dtype=torch.float64)])  # fmt: skip

    def load_state(self, vec: Tensor) -> None:
        """Replace the observations by ``vec`` (the sum of every process's :meth:`state`)."""
        k = 2 * self.base_hist.bins + 2
        self.base_hist = AreaHistogram.from_tensor(vec[:k])
        self.random_hist = AreaHistogram.from_tensor(vec[k : 2 * k])
        rest = vec[2 * k :].tolist()
        for i, r in enumerate(self.rows()):
            self.area_sums[r], self.area_counts[r] = rest[2 * i], rest[2 * i + 1]

    def mean_area(self, row: str) -> float:
        """Mean mask area of an observed row."""
        if not self.area_counts.get(row):
            raise ValueError(f"no maps of {row!r} were observed")
        return self.area_sums[row] / self.area_counts[row]

    def specs(self) -> List[ControlSpec]:
        """The control rows, with their powers solved over everything observed."""
        if self.base not in self.area_sums or self.input_size is None or self.map_size is None:
            raise ValueError(f"the base {self.base!r} was not observed; observe() its maps first")
        b, base_area = self.base, self.mean_area(self.base)
        out: List[ControlSpec] = []
        match = self.match if self.match is not None else [r for r in self.rows() if r != b]
        for row in match:
            area = self.mean_area(row)
            p = _round_power(self.base_hist.solve_power(area, clamp=True))
            reached = self.base_hist.area(p)
            note = "" if abs(reached - area) < 1e-3 else f"; not reachable, nearest {reached:.3f}"
            out.append(ControlSpec(f"{b}**{p:.2f} (area of {row})", "power", p,
                                   f"{b} ** {p:.4g}: same ranking as {b}, mean mask area matched to {row}'s "
                                   f"{area:.3f}{note}"))  # fmt: skip
        for p in self.powers:
            out.append(ControlSpec(f"{b}**{p:g}", "power", p,
                                   f"{b} ** {p:g}: same ranking, mean area {self.base_hist.area(p):.3f}"))  # fmt: skip
        sigma = self.blur_sigma if self.blur_sigma is not None else self.input_size[0] / self.map_size[0]
        if sigma:
            out.append(ControlSpec(f"blur({b}, {sigma:g}px)", "blur", float(sigma),
                                   f"Gaussian blur of {b}'s mask, sigma {sigma:g} px, renormalised"))  # fmt: skip
        if self.constant:
            out.append(ControlSpec(f"constant {base_area:.3f}", "constant", base_area,
                                   f"every pixel {base_area:.3f} ({b}'s mean area): area without ranking"))  # fmt: skip
        if self.random:
            pr = _round_power(self.random_hist.solve_power(base_area, clamp=True))
            out.append(ControlSpec(f"random (seed {self.seed})", "random", pr,
                                   f"seeded smooth random map at {self.map_size[0]}x{self.map_size[1]} ** {pr:.3g}, "
                                   f"matched to {b}'s mean area {base_area:.3f}"))  # fmt: skip
        return out

    def masks(self, spec: ControlSpec, base_maps: Tensor, size: Sequence[int], indices: Sequence[int]) -> Tensor:
        """The control's masks ``(B, 1, H, W)`` for a batch whose base maps are ``base_maps``."""
        big = _check_size(size)
        if spec.kind == "power":  # in float64: distinct mask values stay distinct, the ranking stays exact
            return self.base_masks(base_maps, big).pow(spec.param)
        if spec.kind == "blur":
            return blur_control(self.base_masks(base_maps, big), spec.param)
        if spec.kind == "constant":
            return constant_control(base_maps.shape[0], big, spec.param, device=base_maps.device)
        if spec.kind == "random":
            return self._random(list(indices), big).double().pow(spec.param).to(base_maps.device)
        raise ValueError(f"unknown control kind {spec.kind!r}; one of {CONTROL_KINDS}")
