"""Score-CAM (Wang et al., 2020): channel weights from masked forward passes, no gradients."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_cam_ext._engine import LayerRecord, LayerSpec, TargetSpec, repeat_args, run_forward
from captum_cam_ext.attr.perturbation import AUTO, BatchSize, PerturbationCamAttribution, target_scores
from captum_cam_ext.registry import register_method

_LINEAR_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}


@register_method
class LayerScoreCam(PerturbationCamAttribution):
    r"""Score-CAM: each channel's weight is the model's score on the input masked by that channel.

    Every activation channel is upsampled to the input size (linear interpolation in 1 to 3
    dimensions, ``align_corners=True``), min-max normalised to ``[0, 1]`` and multiplied with
    ``inputs[0]`` (other inputs are repeated unchanged); the target scores of the masked inputs are
    turned into weights with a softmax over channels (the pytorch-grad-cam convention). Runs without
    gradients in chunks of ``batch_size`` masked inputs, so memory is bounded (the masks are
    built chunk by chunk too: never ``K`` full-size masks at once).

    Channels whose activation map is constant give an all-zero mask, hence the same score: that
    score is computed once per example instead of once per channel (the maps are unchanged).

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`. The layer's maps must have as many spatial
        dimensions as ``inputs[0]`` (images ``(N, C, H, W)``, signals ``(N, C, L)``, volumes).
    batch_size : int or "auto"
        Masked inputs per forward pass. ``"auto"`` (default): measured on the first call's own
        chunks and cached per model (see :mod:`captum_cam_ext.attr.perturbation`); the size used
        is in ``last_run["batch_size"]``.
    channels_last : bool
        Feed masked images in ``torch.channels_last`` memory format (faster convolutions on CPU,
        same values up to float rounding). Falls back to the default format by itself if the
        model's code needs contiguous tensors (e.g. ``.view`` on feature maps).
    """

    name = "scorecam"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        batch_size: BatchSize = AUTO,
        channels_last: bool = True,
        layer_call: int = -1,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, batch_size, layer_call)
        self.channels_last = bool(channels_last)

    def _forward_masked(self, batch: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]]) -> Tensor:
        if self.channels_last and batch[0].dim() == 4:
            try:
                fast = (batch[0].contiguous(memory_format=torch.channels_last),) + batch[1:]
                return run_forward(self.forward_func, fast, args)
            except RuntimeError:
                self.channels_last = False  # the model needs contiguous inputs: remember it
        return run_forward(self.forward_func, batch, args)

    def masks(self, activations: Tensor, size: Tuple[int, ...]) -> Tensor:
        """Upsampled, per-channel min-max normalised masks ``(N, K, *size)``."""
        mode = _LINEAR_MODES[activations.dim() - 2]
        up = F.interpolate(activations, size=size, mode=mode, align_corners=True)
        flat = up.flatten(2)
        shape = (*up.shape[:2], *([1] * (up.dim() - 2)))
        lo = flat.min(dim=2).values.reshape(shape)
        hi = flat.max(dim=2).values.reshape(shape)
        return (up - lo) / (hi - lo + 1e-8)

    def example_scores(
        self,
        unit: int,
        example: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        activations: Tensor,
        record: LayerRecord,
        to_input: bool,
    ) -> Tensor:
        x0 = example[0]
        spatial = activations.dim() - 2
        if record.flat[unit] or x0.dim() != spatial + 2:
            raise ValueError(
                f"Score-CAM masks inputs[0] with the layer's upsampled maps, so they need the same number of "
                f"spatial dimensions: inputs[0] has shape {tuple(x0.shape)}, the layer's maps "
                f"{tuple(activations.shape)}; pick a convolutional layer (or a reshape_transform to a grid)"
            )
        size = tuple(x0.shape[2:])
        flat = activations.flatten(2)[0]
        constant = flat.amax(1) == flat.amin(1)  # (K,)
        live = (~constant).nonzero().flatten()
        any_constant = bool(constant.any())
        todo = torch.cat([live, live.new_tensor([-1])]) if any_constant else live
        self.last_run["skipped"] = self.last_run.get("skipped", 0) + int(constant.sum()) - int(any_constant)
        rest = example[1:]

        def run(start: int, stop: int) -> Tensor:
            idx = todo[start:stop]
            keep = (idx >= 0).to(activations.dtype).reshape(-1, *([1] * spatial))
            m = self.masks(activations[:, idx.clamp(min=0)], size)[0] * keep  # (b, *S_in), chunk only
            batch = (x0 * m[:, None].to(x0.dtype),) + tuple(r.expand(idx.numel(), *r.shape[1:]) for r in rest)
            return target_scores(self._forward_masked(batch, repeat_args(args, idx.numel())), target)

        key = self.chunk_key(example, "channels_last" if self.channels_last else "contiguous")
        vals = self.run_chunks(todo.numel(), run, key, x0.device)  # (len(todo), T)
        scores = vals.new_empty(activations.shape[1], vals.shape[1])
        if any_constant:
            scores[constant] = vals[-1]
            scores[live] = vals[:-1]
        else:
            scores[:] = vals
        return scores

    def scores_to_weights(self, scores: Tensor, clean: Tensor) -> Tensor:
        return torch.softmax(scores, dim=1)
