"""Target selection with Captum's target forms (and callables for any model output)."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["TargetSpec", "check_index", "describe", "normalise_target", "resolve_target", "select_target_scores"]

#: What ``target=`` accepts, as in Captum: None, an int, a tuple (multi-dimensional outputs), a
#: list of ints or of tuples (one per example), an integer tensor of one or N elements, or -- ours --
#: a callable mapping the model output to one score per example.
TargetSpec = Union[None, int, Tuple[int, ...], Sequence[Any], Tensor, Callable[[Any], Tensor]]


def describe(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def normalise_target(target: TargetSpec, n: int) -> TargetSpec:
    """Captum's target forms, checked; one-element tensors become ints (broadcast to every example)."""
    if target is None or (callable(target) and not isinstance(target, Tensor)):
        return target
    if isinstance(target, bool):
        raise TypeError("target must be an int, a tuple, a list, an integer tensor or a callable, got bool")
    if isinstance(target, int):
        return target
    if isinstance(target, tuple):
        if not target or not all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            raise ValueError(f"a tuple target must hold ints (an index into each example's output), got {target!r}")
        return target
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"a target tensor must hold integer class indices, got dtype {target.dtype}")
        if target.numel() == 1:
            return int(target.reshape(()).item())  # Captum: one index for every example
        if target.dim() == 1 and target.shape[0] == n:
            return target
        raise ValueError(
            f"a target tensor must have 1 element (the same class for all) or shape ({n},) "
            f"(one class per example), got {tuple(target.shape)}"
        )
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"a target list must hold one entry per example ({n}), got {len(target)}: {target!r}")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            return target
        if all(isinstance(t, tuple) and t and all(isinstance(i, int) for i in t) for t in target):
            return target
        raise ValueError(f"a target list must hold ints or tuples of ints, one per example, got {target!r}")
    raise TypeError(
        "target must be None, an int, a tuple, a list of ints/tuples, an integer tensor or a callable, "
        f"got {type(target).__name__}"
    )


def check_index(index: Tensor, n_classes: int) -> Tensor:
    if index.numel() and (int(index.min()) < -n_classes or int(index.max()) >= n_classes):
        raise ValueError(
            f"target class index out of range: the model has {n_classes} outputs "
            f"(valid indices {-n_classes}..{n_classes - 1}), got {index.tolist()}"
        )
    return torch.where(index < 0, index + n_classes, index)


def resolve_target(outputs: Any, target: TargetSpec) -> Optional[Tensor]:
    """The class index of each example, a LongTensor ``(N,)``, or None when there is none.

    ``None`` selects the arg-max class; ints, lists of ints and integer tensors select classes
    (negative indices count from the end, as in Python). Callable targets and tuple targets
    (positions in multi-dimensional outputs) have no class index: None is returned.
    """
    if callable(target) and not isinstance(target, Tensor):
        return None
    if not isinstance(outputs, Tensor) or outputs.dim() < 2:
        raise ValueError(
            "CAM methods need a model whose output is (batch, classes) to select a target class, got output "
            f"{describe(outputs)}. Wrap the model so it returns (N, C) scores, or pass a callable target "
            "that maps the output to one score per example (see captum_cam_ext.targets)."
        )
    n = outputs.shape[0]
    target = normalise_target(target, n)
    if isinstance(target, tuple) or (isinstance(target, list) and target and isinstance(target[0], tuple)):
        return None
    if outputs.dim() != 2:
        raise ValueError(
            f"the model output has shape {tuple(outputs.shape)}; a class index selects from (N, C) outputs. "
            "Pass a tuple target (an index into each example's output, as in Captum) or a callable target"
        )
    n_classes = outputs.shape[1]
    if target is None:
        return outputs.detach().argmax(dim=1)
    if isinstance(target, int):
        index = torch.full((n,), target, dtype=torch.long, device=outputs.device)
    elif isinstance(target, Tensor):
        index = target.to(outputs.device, torch.long)
    else:
        index = torch.tensor(list(target), dtype=torch.long, device=outputs.device)  # type: ignore[arg-type]
    return check_index(index, n_classes)


def select_target_scores(outputs: Any, target: TargetSpec) -> Tensor:
    """The score of each example's target, shape ``(N,)``.

    ``target`` takes Captum's forms (see :data:`TargetSpec`), or a callable mapping the outputs
    (a tensor, or whatever the model returns: a dict, a tuple) to scores ``(N,)``.
    """
    if callable(target) and not isinstance(target, Tensor):
        scores = target(outputs)
        batch = outputs.shape[0] if isinstance(outputs, Tensor) else None
        if not isinstance(scores, Tensor) or scores.dim() != 1 or (batch is not None and scores.shape[0] != batch):
            want = f"({batch},)" if batch is not None else "(N,)"
            raise ValueError(
                f"a callable target must return one score per example, shape {want}, got {describe(scores)}"
            )
        return scores
    if not isinstance(outputs, Tensor):
        raise ValueError(
            f"the model returned a {type(outputs).__name__}, not a Tensor; pass a callable target that maps "
            "it to one score per example, e.g. target=lambda out: out['out'][:, 3].sum(dim=(1, 2)) "
            "(see captum_cam_ext.targets for segmentation and detection targets)"
        )
    if outputs.dim() == 1 and target is None:
        return outputs
    n = outputs.shape[0]
    normal = normalise_target(target, n)
    if isinstance(normal, tuple):
        if len(normal) > outputs.dim() - 1:
            raise ValueError(f"tuple target {normal} has more indices than the output {tuple(outputs.shape)} has dims")
        return outputs[(slice(None), *normal)]
    if isinstance(normal, list) and normal and isinstance(normal[0], tuple):
        return torch.stack([outputs[(i, *t)] for i, t in enumerate(normal)])
    index = resolve_target(outputs, normal)
    assert index is not None
    return outputs.gather(1, index[:, None]).squeeze(1)
