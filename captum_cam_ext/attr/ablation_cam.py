"""Ablation-CAM (Desai & Ramaswamy, 2020): the score drop when a channel is removed."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_cam_ext._engine import (
    CamAttribution,
    LayerSpec,
    TargetSpec,
    repeat_args,
    run_forward,
    select_target_scores,
    slice_args,
)
from captum_cam_ext.attr.score_cam import _check_batch_size, example_target, per_target_weights, target_scores
from captum_cam_ext.registry import register_method


@register_method
class LayerAblationCam(CamAttribution):
    r"""Ablation-CAM: :math:`w_k = (y^c - y^c_{A_k \leftarrow v}) / y^c`.

    (When :math:`y^c = 0` exactly, the raw drop :math:`y^c - y^c_{A_k \leftarrow v}` is used, so the
    weights stay finite.)

    Each channel of the layer is set to ``ablation_value`` (default 0, the paper's choice) and
    the target score is recomputed, ``batch_size`` ablations per forward pass under
    ``torch.no_grad()``. The layer's input is computed once per example and the ablated copies
    are made inside the layer's hook, so the part of the model before the layer is not repeated
    (unless the model's code needs the input batch size, in which case the input is repeated).

    Parameters
    ----------
    forward_func, layer :
        As in :class:`~captum_cam_ext.CamAttribution` (no ``reshape_transform``: the ablation acts
        on the layer's channel dimension 1).
    batch_size : int
        Ablated copies per forward pass (default 32).
    ablation_value : float
        The value written into the ablated channel.
    """

    name = "ablationcam"
    uses_gradients = False
    uses_perturbation = True

    def __init__(
        self,
        forward_func: Any,
        layer: LayerSpec,
        batch_size: int = 32,
        ablation_value: float = 0.0,
    ) -> None:
        super().__init__(forward_func, layer)
        self.batch_size = _check_batch_size(batch_size)
        self.ablation_value = float(ablation_value)

    def _ablated_scores(
        self,
        layer: nn.Module,
        to_input: bool,
        example: Tuple[Tensor, ...],
        args_i: Optional[Tuple[Any, ...]],
        tgt: TargetSpec,
        channels: Tensor,
    ) -> Tensor:
        b = channels.numel()
        rows = torch.arange(b, device=channels.device)

        def ablate(value: Tensor) -> Tensor:
            if value.dim() < 2:
                raise ValueError(f"Ablation-CAM needs a layer value with channels, got shape {tuple(value.shape)}")
            copies = value[:1].expand(b, *value.shape[1:]).clone() if value.shape[0] != b else value.clone()
            copies[rows, channels.to(value.device)] = self.ablation_value
            return copies

        if to_input:
            handle = layer.register_forward_pre_hook(lambda m, a: (ablate(a[0]), *a[1:]))
        else:
            handle = layer.register_forward_hook(lambda m, a, out: ablate(out))
        try:
            try:
                out: Optional[Tensor] = run_forward(self.forward_func, example, args_i)
            except RuntimeError:  # the model mixes the layer with earlier batch-1 tensors
                out = None
            if out is None or out.shape[0] != b:  # fall back: repeat the input itself
                batch = tuple(x.expand(b, *x.shape[1:]) for x in example)
                out = run_forward(self.forward_func, batch, repeat_args(args_i, b))
        finally:
            handle.remove()
        return target_scores(out, tgt)

    def _perturbation_weights(
        self,
        inputs: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        activations: List[Tensor],
        outputs: Tensor,
        to_input: bool = False,
    ) -> List[Tensor]:
        n = inputs[0].shape[0]
        if isinstance(target, Tensor) and target.dim() == 2:  # several classes per example
            clean = outputs.gather(1, target.to(outputs.device)).float()
        else:
            clean = select_target_scores(outputs, target).float()[:, None]
        result = []
        with torch.no_grad():
            for layer, acts in zip(self.layers, activations):
                k = acts.shape[1]
                weights = torch.empty(n, k, clean.shape[1], dtype=torch.float32, device=acts.device)
                for i in range(n):
                    example = tuple(x[i : i + 1] for x in inputs)
                    args_i = slice_args(args, i, i + 1, n)
                    tgt = example_target(target, i)
                    scores = [
                        self._ablated_scores(
                            layer, to_input, example, args_i, tgt, torch.arange(s, min(s + self.batch_size, k))
                        )
                        for s in range(0, k, self.batch_size)
                    ]
                    # relative drop; a zero clean score (no scale to divide by) keeps the raw drop
                    scale = torch.where(clean[i] != 0, clean[i], torch.ones_like(clean[i]))
                    weights[i] = (clean[i] - torch.cat(scores)) / scale
                result.append(per_target_weights(weights, target))
        return result
