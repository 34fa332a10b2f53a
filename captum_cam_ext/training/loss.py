"""The interpretable-gradient regularizer of Figueroa et al. (VISAPP 2024, arXiv 2404.15024).

Training objective (paper): ``L = L_C + lam * L_R`` with

- ``L_C`` the mean cross-entropy,
- ``L_R = (1/n) sum_i E(dx_i, dx'_i)``, where ``dx_i`` is the standard gradient of the loss with
  respect to input ``x_i`` and ``dx'_i`` the guided-backpropagation gradient of the same loss,
  from the same forward pass,
- ``E`` an error function; the paper reports cosine and ``lam = 7.5e-3`` as best.

Our choices (not confirmed from the paper, see ``docs/interpretable_gradients.md``):

- the input gradients are those of the **summed** per-example cross-entropy, so each ``dx_i`` is
  the gradient of example ``i``'s own loss (no ``1/n`` factor; with eval-mode BatchNorm the
  examples are independent; in train mode the batch statistics couple them slightly);
- ``E_cos(a, b) = 1 - <a, b> / max(|a| |b|, eps)`` on the flattened per-example gradients;
  ``E_mse`` and ``E_mae`` are the per-example mean squared / absolute differences;
- the guided gradient is a fixed target (stop-gradient) by default (``detach_guided=True``);
- one forward pass serves both gradients (:func:`captum_cam_ext.backprop.switchable_relus`);
- ``reduction="mean"``: ``L_R`` is the batch mean of ``E`` (``"sum"``, the batch sum, is the
  same objective with ``lam`` multiplied by the batch size);
- ``bn_mode``: BatchNorm during the regularizer. ``"train"`` takes the two input gradients from
  the training forward (batch statistics; the batch-statistics terms of the BatchNorm backward
  couple the examples), ``"eval"`` from a second forward with every BatchNorm module in eval
  mode (running statistics), i.e. the gradients that saliency methods see at test time. The
  cross-entropy always comes from the train-mode forward.

``d L_R / d theta`` needs the derivative of a gradient: the standard input gradient is taken with
``create_graph=True`` (double backpropagation).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from captum_cam_ext.backprop import (
    check_batch,
    find_relus,
    input_gradients,
    per_example_cosine,
    switchable_relus,
)
from captum_cam_ext.training.double_backward import double_backward_ops

__all__ = [
    "ERRORS",
    "BN_MODES",
    "REDUCTIONS",
    "LossTerms",
    "batchnorm_eval",
    "regularizer_gradients",
    "InterpretableGradientLoss",
    "gradient_error",
    "input_gradients",
    "per_example_cosine",
]

ERRORS: Tuple[str, ...] = ("cosine", "mse", "mae")
BN_MODES: Tuple[str, ...] = ("train", "eval")
REDUCTIONS: Tuple[str, ...] = ("mean", "sum")


class LossTerms(NamedTuple):
    """What :class:`InterpretableGradientLoss` returns (all scalars).

    Attributes
    ----------
    total : Tensor
        ``ce + lam * reg``; call ``total.backward()``.
    ce : Tensor
        Mean cross-entropy ``L_C``.
    reg : Tensor
        Regularizer ``L_R`` (detached when ``lam == 0``).
    """

    total: Tensor
    ce: Tensor
    reg: Tensor


def _check_error(error: str) -> str:
    if error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
    return error


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


@contextlib.contextmanager
def batchnorm_eval(model: nn.Module) -> Iterator[List[_BatchNorm]]:
    """Put every BatchNorm module of ``model`` in eval mode inside a ``with`` block.

    Only BatchNorm modules change (dropout etc. keep their mode); each module's previous
    ``training`` flag is restored on exit, also on exceptions.

    Parameters
    ----------
    model : nn.Module

    Yields
    ------
    list of nn.Module
        The BatchNorm modules that were in train mode (and are now in eval mode).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    switched = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.training]
    try:
        for m in switched:
            m.training = False
        yield switched
    finally:
        for m in switched:
            m.training = True


def gradient_error(standard: Tensor, guided: Tensor, error: str = "cosine") -> Tensor:
    """Per-example error ``E(dx_i, dx'_i)`` between two input gradients.

    Parameters
    ----------
    standard, guided : Tensor
        ``(N, ...)`` input gradients.
    error : str
        ``"cosine"`` (``1 - cos``), ``"mse"`` (mean squared difference) or ``"mae"`` (mean
        absolute difference).

    Returns
    -------
    Tensor
        ``(N,)``.
    """
    _check_error(error)
    if error == "cosine":
        return 1.0 - per_example_cosine(standard, guided)
    diff = (standard - guided).reshape(standard.shape[0], -1)
    if error == "mse":
        return diff.pow(2).mean(dim=1)
    return diff.abs().mean(dim=1)


def regularizer_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    create_graph: bool = False,
    detach_guided: bool = True,
    fast_ops: bool = True,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Logits, standard and guided input gradients of the summed cross-entropy, from one forward.

    The same quantities as :func:`captum_cam_ext.backprop.input_gradients`, computed for the
    regularizer: with ``fast_ops`` the forward runs under
    :func:`~captum_cam_ext.training.double_backward.double_backward_ops` (same values, a cheaper
    double backward) and the two input-gradient passes skip weight gradients. The forward graph
    is retained (the cross-entropy is backpropagated through it later).

    Parameters
    ----------
    model : nn.Module
        Classifier with ``nn.ReLU`` / ``nn.ReLU6`` modules, in the mode it should run in.
    inputs : Tensor
        ``(N, ...)`` floating-point batch.
    targets : Tensor
        ``(N,)`` LongTensor of class indices.
    create_graph : bool
        Keep the graph of the standard gradient (and of the guided one unless detached).
    detach_guided : bool
        Treat the guided gradient as a constant.
    fast_ops : bool
        Use the rerouted convolution / eval-mode BatchNorm ops.

    Returns
    -------
    logits, standard, guided : Tensor
        ``(N, C)``, ``(N, ...)``, ``(N, ...)``.
    """
    check_batch(inputs, targets)
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        with switchable_relus(model) as rule, double_backward_ops(fast_ops) as scope:
            logits = model(x)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise ValueError("model must return logits of shape (N, num_classes)")
        ce_sum = F.cross_entropy(logits, targets, reduction="sum")
        with scope.input_only():
            with rule.use("guided"):
                (guided,) = torch.autograd.grad(
                    ce_sum, x, retain_graph=True, create_graph=create_graph and not detach_guided
                )
            (standard,) = torch.autograd.grad(ce_sum, x, retain_graph=True, create_graph=create_graph)
    return logits, standard, guided.detach() if detach_guided else guided


class InterpretableGradientLoss(nn.Module):
    """Cross-entropy plus the guided-gradient alignment regularizer (double backprop).

    ``loss(inputs, targets)`` runs the model (once with ``bn_mode="train"``, twice with
    ``bn_mode="eval"``) and returns ``LossTerms(total, ce, reg)``; ``total.backward()`` then
    gives ``d(ce + lam * reg)/d theta``. ReLU hooks live only during the call and BatchNorm modes
    are restored, so the model is unchanged afterwards (no hooks, same modules, same modes), for
    inference and for every attribution method.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits ``(N, C)``, with ``nn.ReLU`` / ``nn.ReLU6`` modules (e.g.
        torchvision ``resnet18`` or ``mobilenet_v2``), possibly wrapped in
        ``DistributedDataParallel``. It is not registered as a submodule of the loss (``.to()``
        / ``.train()`` on the loss do not touch it).
    lam : float
        Weight ``lambda >= 0`` of the regularizer (paper's best: ``7.5e-3``, normalisation not
        stated in the paper). With ``lam == 0`` the regularizer is still computed for logging,
        without graph, and ``total`` is ``ce``.
    error : str
        ``"cosine"`` (default), ``"mse"`` or ``"mae"``.
    detach_guided : bool
        Stop-gradient on the guided gradient (default ``True``, cheaper).
    bn_mode : str
        BatchNorm statistics used for the two input gradients of the regularizer: ``"train"``
        (default: batch statistics, from the training forward itself) or ``"eval"`` (running
        statistics, including this batch's update, from a second forward with the BatchNorm
        modules in eval mode; the cross-entropy and the running-statistics update still come
        from the train-mode forward, once per call). See ``docs/interpretable_gradients.md`` for the ablation.
    reduction : str
        ``"mean"`` (default): ``reg`` is the batch mean of the per-example errors; ``"sum"``: the
        batch sum (the same objective as ``"mean"`` with ``lam * batch_size``).
    fast_ops : bool
        Run the regularizer's forward under
        :func:`~captum_cam_ext.training.double_backward.double_backward_ops` (default ``True``):
        the same loss and gradients up to float rounding, a cheaper double backward.

    Attributes
    ----------
    last_cosine : Tensor or None
        ``(N,)`` cosine between the two input gradients of the last batch (detached), in the
        BatchNorm mode of the regularizer.
    last_logits : Tensor or None
        ``(N, C)`` logits of the last batch (detached), from the train-mode forward.
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float = 7.5e-3,
        error: str = "cosine",
        detach_guided: bool = True,
        bn_mode: str = "train",
        reduction: str = "mean",
        fast_ops: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if isinstance(lam, bool) or not isinstance(lam, (int, float)):
            raise TypeError(f"lam must be a float, got {type(lam).__name__}")
        lam = float(lam)
        if not lam >= 0.0 or lam == float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        _check_error(error)
        _check_choice("bn_mode", bn_mode, BN_MODES)
        _check_choice("reduction", reduction, REDUCTIONS)
        if not find_relus(model):
            raise ValueError(
                f"{type(model).__name__} has no nn.ReLU / nn.ReLU6 module: the guided gradient "
                "would equal the standard one; use a model with ReLU modules (not F.relu)"
            )
        self.__dict__["model"] = model  # deliberately not a registered submodule
        self.lam = lam
        self.error = error
        self.detach_guided = bool(detach_guided)
        self.bn_mode = bn_mode
        self.reduction = reduction
        self.fast_ops = bool(fast_ops)
        self.last_cosine: Optional[Tensor] = None
        self.last_logits: Optional[Tensor] = None

    def extra_repr(self) -> str:
        return (
            f"lam={self.lam}, error={self.error!r}, detach_guided={self.detach_guided}, "
            f"bn_mode={self.bn_mode!r}, reduction={self.reduction!r}, fast_ops={self.fast_ops}"
        )

    def forward(self, inputs: Tensor, targets: Tensor) -> LossTerms:  # type: ignore[override]
        """Compute ``(total, ce, reg)`` for one batch.

        Parameters
        ----------
        inputs : Tensor
            ``(N, ...)`` floating-point batch.
        targets : Tensor
            ``(N,)`` LongTensor of class indices.

        Returns
        -------
        LossTerms
        """
        model: nn.Module = self.__dict__["model"]
        with_reg = self.lam > 0.0
        inner = model.module if isinstance(model, DistributedDataParallel) else model
        second_pass = self.bn_mode == "eval" and any(
            isinstance(m, _BatchNorm) and m.training for m in inner.modules()
        )
        if second_pass:
            check_batch(inputs, targets)
            logits = model(inputs)  # train mode: batch statistics, running-stat update
            # The regularizer's forward runs on the unwrapped module: under DDP the gradient
            # still reaches the shared parameters, and the wrapper sees one forward per step.
            with batchnorm_eval(inner):
                _, standard, guided = regularizer_gradients(
                    inner, inputs, targets, with_reg, self.detach_guided, self.fast_ops
                )
        else:
            logits, standard, guided = regularizer_gradients(
                model, inputs, targets, with_reg, self.detach_guided, self.fast_ops
            )
        ce = F.cross_entropy(logits, targets)
        reg = gradient_error(standard, guided, self.error).sum()
        if self.reduction == "mean":
            reg = reg / inputs.shape[0]
        self.last_cosine = per_example_cosine(standard.detach(), guided.detach())
        self.last_logits = logits.detach()
        if not with_reg:
            # Logged only: the parameter update is exactly the cross-entropy one.
            return LossTerms(ce, ce, reg.detach())
        return LossTerms(ce + self.lam * reg, ce, reg)
