"""Score-CAM (Wang et al., 2020): channel weights from masked forward passes, no gradients."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_cam_ext._engine import LayerRecord, LayerSpec, TargetSpec, repeat_args
from captum_cam_ext.attr.perturbation import AUTO, BatchSize, FoldedForward, PerturbationCamAttribution, target_scores
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
    fold_batchnorm : bool
        Run the masked inputs through a copy of the model with every eval-mode BatchNorm that
        follows a convolution folded into it (:func:`~captum_cam_ext.attr.perturbation.fold_batchnorm`;
        same values up to float rounding, one kernel instead of two). The copy is made per call,
        checked against the model on the first chunk, and dropped if the model cannot be traced
        or the outputs differ (``last_run["folded"]`` says how many BatchNorms were folded).
    autocast_dtype : torch.dtype, optional
        Opt-in mixed precision for the masked forward passes (``torch.bfloat16`` on CPUs with
        AMX / AVX-512 BF16, ``torch.float16`` on GPUs): about 2x faster on such hardware, but
        *not* exact -- the scores carry bfloat16 rounding (~1e-2 relative on ImageNet logits,
        which changes the softmax weights; ``benchmarks/results/matrix.md`` states the map error
        measured per architecture). Default None: full precision.
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
        fold_batchnorm: bool = True,
        autocast_dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, reshape_transform, batch_size, layer_call)
        if autocast_dtype is not None and autocast_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast_dtype must be None, torch.bfloat16 or torch.float16, got {autocast_dtype!r}")
        self.channels_last = bool(channels_last)
        self.fold_batchnorm = bool(fold_batchnorm)
        self.autocast_dtype = autocast_dtype
        self._masked_forward: Optional[FoldedForward] = None

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        self._masked_forward = FoldedForward(self.forward_func, self.fold_batchnorm)
        try:
            return super().layer_weights(record, inputs, args, to_input)
        finally:
            self.last_run["folded"] = self._masked_forward.folds
            self._masked_forward = None  # the folded copy lives for one call only

    def _forward_masked(self, batch: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]]) -> Tensor:
        forward = self._masked_forward or FoldedForward(self.forward_func, enabled=False)
        with contextlib.ExitStack() as stack:
            if self.autocast_dtype is not None:
                stack.enter_context(torch.autocast(batch[0].device.type, dtype=self.autocast_dtype))
            if self.channels_last and batch[0].dim() == 4:
                try:
                    return forward((batch[0].contiguous(memory_format=torch.channels_last),) + batch[1:], args)
                except RuntimeError:
                    self.channels_last = False  # the model needs contiguous inputs: remember it
            return forward(batch, args)

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
