"""Proving that a model cannot see a region of its input.

:func:`check_blind` changes the hidden region of real inputs at random (noise at the images' scale
and ten times larger, zeros, and another image's content) and requires the outputs to stay
*bit-identical*; it also requires the gradient of a random projection of the outputs with respect
to the hidden pixels to be exactly zero.  :func:`hidden_mask` turns the ways a user can name the
region (rows, ``"170:224"``, a boolean mask) into one boolean ``(H, W)`` mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["BlindnessReport", "Hidden", "NotBlindError", "check_blind", "hidden_mask",
           "parse_rows"]

#: How a hidden region is named: a first row (to the bottom), ``(start, stop)`` rows, a ``slice``
#: or ``range`` of rows, a ``"start:stop"`` string (Python slice syntax, negative rows allowed),
#: or a boolean mask broadcastable to ``(H, W)``.
Hidden = Union[int, Tuple[int, int], slice, range, str, Tensor]


def parse_rows(spec: str, height: Optional[int] = None) -> Tuple[int, int]:
    """``"170:224"`` -> ``(170, 224)``; ``"-54:"`` -> the bottom 54 rows (needs ``height``).

    Raises
    ------
    ValueError
        For anything but ``start:stop`` with integers (either may be empty).
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ValueError(f"hidden rows must look like 'start:stop' (e.g. '170:224'), got {spec!r}")
    a, b = (p.strip() for p in spec.split(":"))
    try:
        start = int(a) if a else 0
        stop = int(b) if b else None
    except ValueError:
        raise ValueError(
            f"hidden rows must look like 'start:stop' with integers (e.g. '170:224'), got {spec!r}"
        ) from None
    if height is None:
        if start < 0 or stop is None or stop < 0:
            raise ValueError(
                f"rows {spec!r} are relative to the image height; give the height or use "
                "non-negative 'start:stop'"
            )
        return start, stop
    first, last, _ = slice(start, stop).indices(height)
    return first, last


def hidden_mask(hidden: Hidden, size: Sequence[int]) -> Tensor:
    """The hidden region as a boolean ``(H, W)`` mask.

    Parameters
    ----------
    hidden : Hidden
        See :data:`Hidden`; rows are input rows.
    size : (H, W)
        The input's spatial size.

    Raises
    ------
    ValueError
        An empty region, the whole image, rows outside ``[0, H]``, or a mask of the wrong shape.
    TypeError
        Any other type.
    """
    h, w = int(size[0]), int(size[1])
    if isinstance(hidden, Tensor):
        if hidden.dtype != torch.bool:
            raise TypeError(f"a hidden mask must be a bool tensor, got {hidden.dtype}")
        m = hidden
        while m.dim() > 2 and m.shape[0] == 1:
            m = m[0]
        try:
            mask = torch.broadcast_to(m.cpu(), (h, w)).clone()
        except RuntimeError:
            raise ValueError(
                f"hidden mask of shape {tuple(hidden.shape)} does not broadcast to the input's "
                f"(H, W) = {(h, w)}"
            ) from None
    else:
        first, stop = _row_range(hidden, h)
        mask = torch.zeros(h, w, dtype=torch.bool)
        mask[first:stop] = True
    n = int(mask.sum())
    if n == 0 or n == h * w:
        raise ValueError(
            f"the hidden region must be neither empty nor the whole {h}x{w} input, got "
            f"{n} hidden pixels from {hidden!r}"
        )
    return mask


def _row_range(hidden: Any, h: int) -> Tuple[int, int]:
    if isinstance(hidden, bool):
        raise TypeError("hidden must be rows or a boolean mask, got a bool")
    if isinstance(hidden, str):
        return parse_rows(hidden, h)
    if isinstance(hidden, int):
        first, stop = hidden, h
    elif isinstance(hidden, (slice, range)):
        if hidden.step not in (None, 1):
            raise ValueError(f"hidden rows must be contiguous (step 1), got {hidden!r}")
        first, stop, _ = slice(hidden.start, hidden.stop).indices(h)
    elif isinstance(hidden, (tuple, list)) and len(hidden) == 2:
        first, stop = int(hidden[0]), int(hidden[1])
    else:
        raise TypeError(
            "hidden must be a first row (int), (start, stop), a slice/range, a 'start:stop' "
            f"string or a boolean mask, got {type(hidden).__name__}"
        )
    if not 0 <= first < stop <= h:
        raise ValueError(f"hidden rows must satisfy 0 <= start < stop <= {h}, got {first}:{stop}")
    return first, stop


@dataclass
class BlindnessReport:
    """What :func:`check_blind` measured.

    Attributes
    ----------
    blind : bool
        Outputs bit-identical under every change and the gradient exactly zero on the region.
    max_output_change : float
        Largest ``|f(x') - f(x)|`` over the changed copies (0.0 when blind).
    max_input_gradient : float
        Largest ``|d <r, f(x)> / d x|`` on the hidden pixels (``r`` a random direction).
    n_changes : int
        Number of changed copies of each image that were compared.
    hidden_pixels, total_pixels : int
        Size of the region and of the image (per channel).
    """

    blind: bool
    max_output_change: float
    max_input_gradient: float
    n_changes: int
    hidden_pixels: int
    total_pixels: int

    def summary(self) -> str:
        """One line for messages and reports."""
        share = 100.0 * self.hidden_pixels / self.total_pixels
        verdict = "blind" if self.blind else "NOT blind"
        return (f"{verdict} to {self.hidden_pixels} of {self.total_pixels} pixels ({share:.1f}%): "
                f"max |output change| = {self.max_output_change:.3g} over {self.n_changes} random "
                f"changes of every image, max |input gradient| there = "
                f"{self.max_input_gradient:.3g}")


class NotBlindError(ValueError):
    """The model can see the region it was said to be blind to; ``.report`` has the numbers."""

    def __init__(self, message: str, report: BlindnessReport) -> None:
        super().__init__(message)
        self.report = report


def _changes(images: Tensor, mask: Tensor, gen: torch.Generator) -> Sequence[Callable[[], Tensor]]:
    scale = float(images.std()) if images.numel() > 1 else 1.0
    scale = scale if math.isfinite(scale) and scale > 0 else 1.0

    def noise(factor: float) -> Callable[[], Tensor]:
        def make() -> Tensor:
            r = torch.randn(images.shape, generator=gen).to(images)
            return torch.where(mask, images + factor * scale * r, images)
        return make

    def zeros() -> Tensor:
        return torch.where(mask, torch.zeros_like(images), images)

    def other_image() -> Tensor:
        return torch.where(mask, images.roll(1, dims=0) if images.shape[0] > 1
                           else images.flip(-2), images)

    return [noise(1.0), noise(10.0), zeros, other_image]


def check_blind(
    model: Callable[..., Tensor],
    images: Tensor,
    hidden: Hidden,
    seed: int = 0,
    additional_forward_args: Optional[Tuple[Any, ...]] = None,
) -> BlindnessReport:
    """Test, on real inputs, that ``model``'s outputs cannot depend on the hidden region.

    Parameters
    ----------
    model : nn.Module or callable
        ``model(images, *additional_forward_args)`` -> a tensor (e.g. logits ``(N, K)``).  Call it
        in the mode you will explain it in (``eval()``); it is not changed here.
    images : Tensor
        ``(N, C, H, W)``.
    hidden : Hidden
        The region (see :func:`hidden_mask`).
    seed : int
        Seed of the random changes and of the gradient direction.
    additional_forward_args : tuple, optional
        Extra arguments of the forward function.

    Returns
    -------
    BlindnessReport
        ``blind`` is True only when every changed copy gives bit-identical outputs *and* the input
        gradient is exactly zero on the region.
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor (N, C, H, W), got {shape}")
    mask = hidden_mask(hidden, images.shape[-2:]).to(images.device)
    extra = tuple(additional_forward_args or ())
    gen = torch.Generator().manual_seed(int(seed))
    x = images.detach()
    with torch.no_grad():
        ref = model(x, *extra)
        worst = 0.0
        identical = True
        changes = _changes(x, mask, gen)
        for make in changes:
            out = model(make(), *extra)
            identical = identical and torch.equal(out, ref)
            worst = max(worst, float((out.double() - ref.double()).abs().max()))
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = model(xr, *extra)
        direction = torch.randn(out.shape, generator=gen).to(out)
        (grad,) = torch.autograd.grad((out * direction).sum(), xr, allow_unused=True)
    gmax = 0.0 if grad is None else float(grad.detach().abs().masked_select(
        mask.expand_as(grad)).max())
    return BlindnessReport(
        blind=identical and gmax == 0.0,
        max_output_change=worst,
        max_input_gradient=gmax,
        n_changes=len(changes),
        hidden_pixels=int(mask.sum()),
        total_pixels=int(mask.numel()),
    )
