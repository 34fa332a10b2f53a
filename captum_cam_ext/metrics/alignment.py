"""Gradient alignment: cosine between the standard and the guided input gradient, per example.

This is the quantity the interpretable-gradient regularizer (Figueroa et al., VISAPP 2024) pushes
towards 1 during training (``L_R = mean(1 - cos)`` with the cosine error). Values near 1 mean the
plain gradient already looks like guided backpropagation.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import Tensor, nn

from captum_cam_ext.backprop import input_gradients, per_example_cosine, switchable_relus

__all__ = ["gradient_alignment"]

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
