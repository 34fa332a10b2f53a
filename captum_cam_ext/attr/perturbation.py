"""The small base shared by the perturbation CAMs (Score-CAM, Ablation-CAM and their variants).

A perturbation CAM weights the channels of a layer by the model's scores on perturbed versions of
each example (masked inputs, ablated channels), computed without gradients. This base owns what
those methods share: it is a Captum ``LayerAttribution`` + ``PerturbationAttribution`` (like
Captum's own ``LayerFeatureAblation``), checks ``batch_size``, runs the per-example loop, scores one
target or several classes ``(N, T)`` from the same perturbed passes, and warns once when the model
is in ``train()`` mode (its BatchNorm layers would mix the perturbed copies).

A method overrides :meth:`PerturbationCamAttribution.example_scores`.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from captum.attr._utils.attribution import PerturbationAttribution
from torch import Tensor, nn

from captum_cam_ext._engine import (
    CamAttribution,
    LayerRecord,
    LayerSpec,
    TargetSpec,
    select_target_scores,
    slice_args,
)

__all__ = ["PerturbationCamAttribution", "check_batch_size", "example_target", "score_dtype", "target_scores"]


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` if it is a positive int (perturbed forward passes per chunk), else a ``ValueError``."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (perturbed forward passes per chunk), got {batch_size!r}")
    return batch_size


def example_target(target: TargetSpec, i: int) -> TargetSpec:
    """The target of example ``i``: an int from an ``(N,)`` index tensor, the row of classes from an
    ``(N, T)`` one (several targets scored from the same passes), an entry of a list; a callable,
    an int or a tuple is kept."""
    if isinstance(target, Tensor):
        return target[i] if target.dim() == 2 else int(target[i])
    if isinstance(target, list):
        return target[i]
    return target


def score_dtype(outputs: Tensor) -> torch.dtype:
    """float64 for float64 outputs, else float32 (half / bfloat16 scores are compared in float32)."""
    return torch.float64 if outputs.dtype == torch.float64 else torch.float32


def target_scores(outputs: Tensor, target: TargetSpec) -> Tensor:
    """Scores ``(b, T)`` of one example's perturbed copies: ``T`` classes, or one column."""
    if isinstance(target, Tensor) and target.dim() == 1:
        return outputs[:, target.to(outputs.device)].to(score_dtype(outputs))
    return select_target_scores(outputs, target).to(score_dtype(outputs))[:, None]


class PerturbationCamAttribution(CamAttribution, PerturbationAttribution):
    """Base of the perturbation CAMs: per-example perturbed passes, no gradients.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    batch_size : int
        Perturbed copies per forward pass.
    """

    uses_gradients = False
    uses_perturbation = True

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        batch_size: int = 32,
        layer_call: int = -1,
    ) -> None:
        CamAttribution.__init__(
            self, forward_func, layer, device_ids, reshape_transform, trim_graph=True, layer_call=layer_call
        )
        PerturbationAttribution.__init__(self, forward_func)
        self.batch_size = check_batch_size(batch_size)
        self._warned_train_mode = False

    @property
    def multiplies_by_inputs(self) -> bool:  # Captum's PerturbationAttribution property
        return False

    # ---- what a method overrides ----------------------------------------------------------

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
        """Scores ``(K, T)`` of one example's ``K`` perturbed copies for ``T`` targets.

        Parameters
        ----------
        unit : int
            Which recorded unit (layer) is perturbed.
        example : tuple of Tensor
            The example's inputs, each with batch size 1.
        args : tuple, optional
            Its additional forward arguments (tensors sliced to the example).
        target : int, (T,) LongTensor, tuple or callable
            Its target(s).
        activations : Tensor
            Its clean activations ``(1, K, *S)``.
        record, to_input :
            The clean pass and whether the layer input is explained.
        """
        raise NotImplementedError

    def scores_to_weights(self, scores: Tensor, clean: Tensor) -> Tensor:
        """Weights ``(N, K, T)`` from the perturbed scores ``(N, K, T)`` and clean scores ``(N, T)``."""
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------------------

    def clean_scores(self, record: LayerRecord, target: TargetSpec) -> Tensor:
        """Target scores ``(N, T)`` of the unperturbed pass."""
        outputs = record.outputs
        if isinstance(target, Tensor) and target.dim() == 2:
            return outputs.gather(1, target.to(outputs.device)).to(score_dtype(outputs))
        return select_target_scores(outputs, target).to(score_dtype(outputs))[:, None]

    def _target_for(self, record: LayerRecord) -> TargetSpec:
        if len(record.targets) == 1:
            index = record.indices[0]
            return index if index is not None else record.targets[0]
        if any(i is None for i in record.indices):
            raise ValueError("several targets per example must be class indices (an (N, T) tensor)")
        return torch.stack([i for i in record.indices if i is not None], dim=1)

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        if record.tuple_output:
            raise ValueError(f"{type(self).__name__} needs a layer with one tensor output, not a tuple")
        self._warn_train_mode_once()
        target = self._target_for(record)
        clean = self.clean_scores(record, target)
        n = inputs[0].shape[0]
        per_unit: List[Tensor] = []
        with torch.no_grad():
            for u, acts in enumerate(record.activations):
                rows = []
                for i in range(n):
                    example = tuple(x[i : i + 1] for x in inputs)
                    rows.append(
                        self.example_scores(
                            u,
                            example,
                            slice_args(args, i, i + 1, n),
                            example_target(target, i),
                            acts[i : i + 1],
                            record,
                            to_input,
                        )  # fmt: skip
                    )
                scores = torch.stack(rows).to(torch.float64 if acts.dtype == torch.float64 else torch.float32)
                per_unit.append(self.scores_to_weights(scores, clean.to(scores.dtype)))
        units = record.activations
        return [
            [
                w[:, :, t].reshape(*w.shape[:2], *([1] * (units[u].dim() - 2))).to(units[u].dtype)
                for u, w in enumerate(per_unit)
            ]
            for t in range(clean.shape[1])
        ]

    def _warn_train_mode_once(self) -> None:
        model = self.forward_func
        if self._warned_train_mode or not isinstance(model, nn.Module):
            return
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()):
            warnings.warn(
                f"{type(self).__name__} runs the model on batches of perturbed copies while it is in train() mode: "
                "its BatchNorm layers normalise each batch with that batch's own statistics, so the copies "
                "influence each other and the weights depend on batch_size. Call model.eval() first for the "
                "method's usual definition (the running statistics are left unchanged either way).",
                UserWarning,
                stacklevel=4,
            )
            self._warned_train_mode = True

    @staticmethod
    def chunks(count: int, size: int) -> Sequence[Tuple[int, int]]:
        """``[(start, stop), ...]`` covering ``range(count)`` in steps of ``size``."""
        return [(s, min(s + size, count)) for s in range(0, count, size)]
