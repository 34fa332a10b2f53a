"""Ablation-CAM (Desai & Ramaswamy, 2020): the score drop when a channel is removed."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_cam_ext._engine import LayerRecord, LayerSpec, TargetSpec, repeat_args, run_forward
from captum_cam_ext.attr.perturbation import AUTO, BatchSize, PerturbationCamAttribution, target_scores
from captum_cam_ext.registry import register_method


@register_method
class LayerAblationCam(PerturbationCamAttribution):
    r"""Ablation-CAM: :math:`w_k = (y^c - y^c_{A_k \leftarrow v}) / y^c`.

    (When :math:`y^c = 0` exactly, the raw drop :math:`y^c - y^c_{A_k \leftarrow v}` is used, so the
    weights stay finite.)

    Each channel of the layer is set to ``ablation_value`` (default 0, the paper's choice) and
    the target score is recomputed, ``batch_size`` ablations per forward pass without gradients.
    The layer's input is computed once per example and the ablated copies are made inside the
    layer's hook, so the part of the model before the layer is not repeated (unless the model's
    code needs the input batch size, in which case the input is repeated). For a layer that runs
    several times in one forward, only the explained call (``layer_call``) is ablated.

    Parameters
    ----------
    forward_func, layer, device_ids, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution` (no ``reshape_transform``: the ablation acts
        on the layer's channel dimension 1).
    batch_size : int or "auto"
        Ablated copies per forward pass. ``"auto"`` (default): measured on the first call's own
        chunks and cached per model (see :mod:`captum_cam_ext.attr.perturbation`), from 16 up to
        512 copies but at most 256 MiB of ablated layer values per chunk (larger chunks repeat
        the part of the model before the layer fewer times).
    ablation_value : float
        The value written into the ablated channel.
    channels_last : bool
        Run the ablated passes on image inputs in ``torch.channels_last`` memory format (faster
        convolutions on CPU: 15% less time on ResNet-50 ``layer1``; same values up to float
        rounding). Falls back to the default format by itself if the model's code needs
        contiguous tensors (e.g. ``.view`` on feature maps).

    Channels that already equal ``ablation_value`` everywhere (e.g. dead ReLU channels with the
    default 0) are not run: ablating them changes nothing, so their score is the clean score.
    """

    #: ``batch_size="auto"``: chunk sizes tried, and the memory the ablated copies may take.
    auto_candidates_cpu = (16, 32, 64, 128, 256, 512)
    auto_candidates_cuda = (32, 64, 128, 256, 512, 1024)
    auto_max_bytes = 256 * 2**20

    name = "ablationcam"

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        batch_size: BatchSize = AUTO,
        ablation_value: float = 0.0,
        layer_call: int = -1,
        channels_last: bool = True,
    ) -> None:
        super().__init__(forward_func, layer, device_ids, None, batch_size, layer_call)
        self.ablation_value = float(ablation_value)
        self.channels_last = bool(channels_last)

    def _ablated_scores(
        self,
        layer: nn.Module,
        call: int,
        to_input: bool,
        example: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        channels: Tensor,
    ) -> Tensor:
        b = channels.numel()
        rows = torch.arange(b, device=channels.device)
        ablate_rows = channels >= 0  # channel -1: an unablated copy
        seen = [0]

        def ablate(value: Tensor) -> Tensor:
            this = seen[0]
            seen[0] += 1
            if this != call:
                return value
            copies = value[:1].expand(b, *value.shape[1:]).clone() if value.shape[0] != b else value.clone()
            copies[rows[ablate_rows], channels[ablate_rows].to(value.device)] = self.ablation_value
            return copies

        if to_input:
            handle = layer.register_forward_pre_hook(lambda m, a: (ablate(a[0]), *a[1:]))
        else:
            handle = layer.register_forward_hook(lambda m, a, out: ablate(out))
        try:
            try:
                out: Optional[Tensor] = run_forward(self.forward_func, example, args)
            except RuntimeError:  # the model mixes the layer with earlier batch-1 tensors
                out = None
            if not isinstance(out, Tensor) or out.shape[0] != b:  # fall back: repeat the input itself
                seen[0] = 0
                batch = tuple(x.expand(b, *x.shape[1:]) for x in example)
                out = run_forward(self.forward_func, batch, repeat_args(args, b))
        finally:
            handle.remove()
        return target_scores(out, target)

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
        layer_index = record.units[unit][0]
        calls = record.calls[layer_index]
        call = self.layer_call % calls
        flat = activations.flatten(2)[0]
        unchanged = (flat == self.ablation_value).all(dim=1)  # (K,): ablating these changes nothing
        live = (~unchanged).nonzero().flatten().cpu()
        any_unchanged = bool(unchanged.any())
        # one unablated copy (channel -1) gives the clean score of every unchanged channel
        todo = torch.cat([live, live.new_tensor([-1])]) if any_unchanged else live
        self.last_run["skipped"] = self.last_run.get("skipped", 0) + int(unchanged.sum()) - int(any_unchanged)
        layer = self.layers[layer_index]
        per_copy = max(1, activations[0].numel() * activations.element_size())
        max_size = max(1, self.auto_max_bytes // per_copy)
        vals: Optional[Tensor] = None
        if self.channels_last and example[0].dim() == 4:
            fast = (example[0].contiguous(memory_format=torch.channels_last),) + example[1:]

            def run_fast(start: int, stop: int) -> Tensor:
                return self._ablated_scores(layer, call, to_input, fast, args, target, todo[start:stop])

            key = self.chunk_key(example, unit, to_input, call, "channels_last")
            copies = self.last_run.get("copies", 0)
            try:
                vals = self.run_chunks(todo.numel(), run_fast, key, activations.device, max_size=max_size)
            except RuntimeError:
                self.channels_last = False  # the model needs contiguous inputs: remember it
                self.last_run["copies"] = copies
        if vals is None:

            def run(start: int, stop: int) -> Tensor:
                return self._ablated_scores(layer, call, to_input, example, args, target, todo[start:stop])

            key = self.chunk_key(example, unit, to_input, call)
            vals = self.run_chunks(todo.numel(), run, key, activations.device, max_size=max_size)
        if not any_unchanged:
            return vals
        scores = vals.new_empty(activations.shape[1], vals.shape[1])
        scores[unchanged.to(vals.device)] = vals[-1]
        scores[live.to(vals.device)] = vals[:-1]
        return scores

    def scores_to_weights(self, scores: Tensor, clean: Tensor) -> Tensor:
        # relative drop; a zero clean score (no scale to divide by) keeps the raw drop
        scale = torch.where(clean != 0, clean, torch.ones_like(clean))[:, None, :]
        return (clean[:, None, :] - scores) / scale
