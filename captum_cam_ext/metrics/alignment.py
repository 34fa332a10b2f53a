"""Gradient alignment and gradient noise, per example.

- :func:`gradient_alignment`: cosine between the standard and the guided input gradient, the
  quantity the interpretable-gradient regularizer (Figueroa et al., VISAPP 2024) pushes towards 1
  during training (``L_R = mean(1 - cos)`` with the cosine error). Values near 1 mean the plain
  gradient already looks like guided backpropagation.
- :func:`total_variation`, :func:`sparseness`, :func:`complexity` (and :func:`gradient_noise`,
  all three): how noisy a saliency map (e.g. ``|d y_c / d x|``) is. Sparseness and Complexity
  follow Quantus 0.6 (Chalasani et al. 2020: Gini index of the absolute attributions; Bhatt et
  al. 2020: entropy of the fractional contributions), with Quantus' defaults (absolute values,
  scaled by their maximum). Total variation is taken of the map scaled to unit sum, so that it
  does not depend on the gradient's magnitude.
"""

from __future__ import annotations

from typing import Dict, Sequence, Union

import torch
from torch import Tensor, nn

from captum_cam_ext.backprop import input_gradients, per_example_cosine, switchable_relus

__all__ = ["gradient_alignment", "gradient_noise", "total_variation", "sparseness", "complexity"]

_OBJECTIVES = ("loss", "score")


def _target_tensor(
    target: Union[int, Sequence[int], Tensor], n: int, device: torch.device
) -> Tensor:
    if isinstance(target, bool):
        raise TypeError("target must be an int, a sequence of int or a LongTensor, not bool")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=device)
    t = torch.as_tensor(target, device=device)
    if t.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() != n:
        raise ValueError(f"target must have one class per example (N={n}), got {t.numel()}")
    return t


def gradient_alignment(
    model: nn.Module,
    inputs: Tensor,
    target: Union[int, Sequence[int], Tensor],
    objective: str = "loss",
) -> Tensor:
    """Per-example cosine between the standard and the guided input gradient.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits ``(N, C)``, with ``nn.ReLU`` / ``nn.ReLU6`` modules. It runs
        in its current train/eval mode (call ``model.eval()`` first for inference statistics)
        and is left unchanged (hooks removed).
    inputs : Tensor
        ``(N, ...)`` floating-point batch.
    target : int, sequence of int or LongTensor ``(N,)``
        Class per example (the label for ``objective="loss"``).
    objective : str
        ``"loss"`` (default): gradients of the per-example cross-entropy with respect to
        ``target``, as in the paper's training objective. ``"score"``: gradients of the logit
        ``y_target`` (what Captum's ``GuidedBackprop(target=...)`` explains).

    Returns
    -------
    Tensor
        ``(N,)`` cosines in ``[-1, 1]`` (0 for an all-zero gradient).

    Raises
    ------
    ValueError
        Unknown ``objective``, target of the wrong length, or a model without ReLU modules.
    """
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be one of {_OBJECTIVES}, got {objective!r}")
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
        raise TypeError("inputs must be a floating-point tensor (N, ...)")
    t = _target_tensor(target, inputs.shape[0], inputs.device)
    if objective == "loss":
        _, standard, guided = input_gradients(model, inputs, t)
    else:
        x = inputs.detach().requires_grad_(True)
        with torch.enable_grad():
            with switchable_relus(model) as rule:
                out = model(x)
            if not isinstance(out, Tensor) or out.dim() != 2:
                raise ValueError("model must return logits of shape (N, num_classes)")
            score = out.gather(1, t[:, None]).sum()
            with rule.use("guided"):
                (guided,) = torch.autograd.grad(score, x, retain_graph=True)
            (standard,) = torch.autograd.grad(score, x)
    return per_example_cosine(standard.detach(), guided.detach())


# ------------------------------------------------------------------------------------------------
# Gradient noise
# ------------------------------------------------------------------------------------------------


def _abs_maps(maps: Tensor) -> Tensor:
    """``(N, C, H, W)`` or ``(N, H, W)`` -> ``(N, H, W)``: absolute values summed over channels."""
    if not isinstance(maps, Tensor) or not maps.is_floating_point():
        raise TypeError("maps must be a floating-point tensor (N, H, W) or (N, C, H, W)")
    if maps.dim() == 4:
        return maps.abs().sum(1)
    if maps.dim() == 3:
        return maps.abs()
    raise ValueError(f"maps must have shape (N, H, W) or (N, C, H, W), got {tuple(maps.shape)}")


def total_variation(maps: Tensor) -> Tensor:
    """Anisotropic total variation of each map scaled to unit sum; lower is smoother.

    ``TV(m) = sum |m[i+1, j] - m[i, j]| + sum |m[i, j+1] - m[i, j]|`` with ``m = |a| / sum |a|``
    (channels summed first). 0 for a constant map; about ``4 / (H W)`` per pixel for white noise.

    Parameters
    ----------
    maps : Tensor
        ``(N, H, W)`` or ``(N, C, H, W)`` saliency maps (e.g. input gradients).

    Returns
    -------
    Tensor
        ``(N,)`` (0 for an all-zero map).
    """
    a = _abs_maps(maps)
    m = a / a.flatten(1).sum(1).clamp_min(torch.finfo(a.dtype).tiny)[:, None, None]
    return (m.diff(dim=1).abs().flatten(1).sum(1) + m.diff(dim=2).abs().flatten(1).sum(1))


def _scaled_by_max(maps: Tensor) -> Tensor:
    a = _abs_maps(maps).flatten(1)
    return a / a.max(1, keepdim=True)[0].clamp_min(torch.finfo(a.dtype).tiny)


def sparseness(maps: Tensor) -> Tensor:
    """Sparseness (Quantus 0.6, Chalasani et al. 2020): Gini index of the absolute map; higher is sparser.

    With ``a`` the absolute map scaled to maximum 1, plus ``1e-7``, sorted ascending
    (``a_1 <= ... <= a_n``): ``G = sum_i (2 i - n - 1) a_i / (n sum_i a_i)``, in ``[0, 1)``
    (0 for a constant map, ``1 - 1/n`` for a single non-zero pixel).

    Parameters
    ----------
    maps : Tensor
        ``(N, H, W)`` or ``(N, C, H, W)``.

    Returns
    -------
    Tensor
        ``(N,)``.
    """
    a = _scaled_by_max(maps).double() + 1e-7
    a = a.sort(dim=1)[0]
    n = a.shape[1]
    w = 2 * torch.arange(1, n + 1, dtype=a.dtype, device=a.device) - n - 1
    return ((a * w).sum(1) / (n * a.sum(1))).to(maps.dtype)


def complexity(maps: Tensor) -> Tensor:
    """Complexity (Quantus 0.6, Bhatt et al. 2020): entropy of the fractional contributions; lower is simpler.

    ``H = -sum_i p_i ln p_i`` with ``p = |a| / sum |a|``: 0 for a single non-zero pixel,
    ``ln(H W)`` for a constant map.

    Parameters
    ----------
    maps : Tensor
        ``(N, H, W)`` or ``(N, C, H, W)``.

    Returns
    -------
    Tensor
        ``(N,)`` in nats (0 for an all-zero map).
    """
    a = _scaled_by_max(maps).double()
    p = a / a.sum(1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return (-(p * torch.log(p.clamp_min(1e-300))).sum(1)).to(maps.dtype)


def gradient_noise(maps: Tensor) -> Dict[str, Tensor]:
    """The three noise measures of each map: ``{"total_variation", "sparseness", "complexity"}``.

    Parameters
    ----------
    maps : Tensor
        ``(N, H, W)`` or ``(N, C, H, W)`` saliency maps.

    Returns
    -------
    dict of str -> Tensor ``(N,)``
        Total variation (lower = smoother), Sparseness (higher = sparser), Complexity (lower =
        simpler).
    """
    return {
        "total_variation": total_variation(maps),
        "sparseness": sparseness(maps),
        "complexity": complexity(maps),
    }
