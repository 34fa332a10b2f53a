"""Score-CAM (Wang et al., 2020): channel weights from masked forward passes, no gradients."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_cam_ext._engine import (
    CamAttribution,
    LayerSpec,
    TargetSpec,
    repeat_args,
    run_forward,
    select_target_scores,
    slice_args,
)
from captum_cam_ext.registry import register_method


def _check_batch_size(batch_size: int) -> int:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (masked forward passes per chunk), got {batch_size!r}")
    return batch_size


def example_target(target: TargetSpec, i: int) -> TargetSpec:
    """The target of example ``i``: an int from an ``(N,)`` index tensor, the row of classes
    from an ``(N, T)`` one (several targets scored from the same passes); a callable is kept."""
    if isinstance(target, Tensor):
        return target[i] if target.dim() == 2 else int(target[i])
    return target


def target_scores(outputs: Tensor, target: TargetSpec) -> Tensor:
    """Scores ``(b, T)`` of one example's perturbed copies: ``T`` classes, or one column."""
    if isinstance(target, Tensor) and target.dim() == 1:
        return outputs[:, target.to(outputs.device)].float()
    return select_target_scores(outputs, target).float()[:, None]


def per_target_weights(weights: Tensor, target: TargetSpec) -> Tensor:
    """``(N, K, T)`` weights to ``(N, K, 1, 1)``, or ``(T, N, K, 1, 1)`` for ``(N, T)`` targets."""
    if isinstance(target, Tensor) and target.dim() == 2:
        return weights.permute(2, 0, 1)[..., None, None]
    return weights[:, :, 0, None, None]


@register_method
class LayerScoreCam(CamAttribution):
    r"""Score-CAM: each channel's weight is the model's score on the input masked by that channel.

    Every activation channel is upsampled to the input size (bilinear, ``align_corners=True``),
    min-max normalised to ``[0, 1]`` and multiplied with ``inputs[0]`` (other inputs are
    repeated unchanged); the target logits of the masked inputs are turned into weights with a
    softmax over channels (the pytorch-grad-cam convention). Runs under ``torch.no_grad()`` in
    chunks of ``batch_size`` masked inputs, so memory is bounded.

    Channels whose activation map is constant give an all-zero mask, hence the same score: that
    score is computed once per example instead of once per channel (the maps are unchanged).

    Parameters
    ----------
    forward_func, layer, reshape_transform :
        As in :class:`~captum_cam_ext.CamAttribution`.
    batch_size : int
        Masked inputs per forward pass (default 32).
    channels_last : bool
        Feed the masked images in ``torch.channels_last`` memory format (faster convolutions on
        CPU, same values up to float rounding). Falls back to the default format by itself if
        the model's code needs contiguous tensors (e.g. ``.view`` on feature maps).
    """

    name = "scorecam"
    uses_gradients = False
    uses_perturbation = True

    def __init__(
        self,
        forward_func: Any,
        layer: LayerSpec,
        reshape_transform: Any = None,
        batch_size: int = 32,
        channels_last: bool = True,
    ) -> None:
        super().__init__(forward_func, layer, reshape_transform=reshape_transform)
        self.batch_size = _check_batch_size(batch_size)
        self.channels_last = bool(channels_last)

    def _forward_masked(self, batch: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]]) -> Tensor:
        if self.channels_last:
            try:
                fast = (batch[0].contiguous(memory_format=torch.channels_last),) + batch[1:]
                return run_forward(self.forward_func, fast, args)
            except RuntimeError:
                self.channels_last = False  # the model needs contiguous inputs: remember it
        return run_forward(self.forward_func, batch, args)

    def masks(self, activations: Tensor, size: Tuple[int, int]) -> Tensor:
        """Upsampled, per-channel min-max normalised masks ``(N, K, H, W)``."""
        up = F.interpolate(activations, size=size, mode="bilinear", align_corners=True)
        flat = up.flatten(2)
        lo = flat.min(dim=2).values[:, :, None, None]
        hi = flat.max(dim=2).values[:, :, None, None]
        return (up - lo) / (hi - lo + 1e-8)

    def _perturbation_weights(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        activations: List[Tensor],
        outputs: Tensor,
        to_input: bool = False,
    ) -> List[Tensor]:
        x0 = inputs[0]
        if x0.dim() != 4:
            raise ValueError(f"Score-CAM masks image inputs (N, C, H, W); inputs[0] has shape {tuple(x0.shape)}")
        n = x0.shape[0]
        result = []
        with torch.inference_mode():
            for acts in activations:
                masks = self.masks(acts, (x0.shape[-2], x0.shape[-1]))
                constant = acts.flatten(2).amax(2) == acts.flatten(2).amin(2)  # (N, K)
                n_targets = target.shape[1] if isinstance(target, Tensor) and target.dim() == 2 else 1
                scores = torch.empty(*acts.shape[:2], n_targets, dtype=torch.float32, device=acts.device)
                for i in range(n):
                    rest = tuple(x[i : i + 1] for x in inputs[1:])
                    args_i = slice_args(args, i, i + 1, n)
                    tgt = example_target(target, i)
                    live = (~constant[i]).nonzero().flatten()
                    todo = torch.cat([live, live.new_tensor([-1])]) if bool(constant[i].any()) else live
                    got = []
                    for s in range(0, todo.numel(), self.batch_size):
                        idx = todo[s : s + self.batch_size]
                        m = masks[i, idx.clamp(min=0)] * (idx >= 0)[:, None, None].to(masks.dtype)
                        batch = (x0[i : i + 1] * m[:, None].to(x0.dtype),) + tuple(
                            r.expand(idx.numel(), *r.shape[1:]) for r in rest
                        )
                        out = self._forward_masked(batch, repeat_args(args_i, idx.numel()))
                        got.append(target_scores(out, tgt))
                    vals = torch.cat(got)
                    if bool(constant[i].any()):
                        scores[i, constant[i]] = vals[-1]
                        scores[i, live] = vals[:-1]
                    else:
                        scores[i] = vals
                result.append(per_target_weights(torch.softmax(scores, dim=1), target))
        return result
