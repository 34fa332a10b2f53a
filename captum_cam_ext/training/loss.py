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
- one forward pass serves both gradients (:func:`captum_cam_ext.backprop.switchable_relus`).

``d L_R / d theta`` needs the derivative of a gradient: the standard input gradient is taken with
``create_graph=True`` (double backpropagation).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor, nn

from captum_cam_ext.backprop import find_relus, input_gradients, per_example_cosine

__all__ = [
    "ERRORS",
    "LossTerms",
    "InterpretableGradientLoss",
    "gradient_error",
    "input_gradients",
    "per_example_cosine",
]

ERRORS: Tuple[str, ...] = ("cosine", "mse", "mae")


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


class InterpretableGradientLoss(nn.Module):
    """Cross-entropy plus the guided-gradient alignment regularizer (double backprop).

    ``loss(inputs, targets)`` runs the model once and returns ``LossTerms(total, ce, reg)``;
    ``total.backward()`` then gives ``d(ce + lam * reg)/d theta``. ReLU hooks live only during
    that forward call, so the model is unchanged afterwards (no hooks, same modules), for
    inference and for every attribution method.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits ``(N, C)``, with ``nn.ReLU`` / ``nn.ReLU6`` modules (e.g.
        torchvision ``resnet18`` or ``mobilenet_v2``), possibly wrapped in
        ``DistributedDataParallel``. It is not registered as a submodule of the loss (``.to()``
        / ``.train()`` on the loss do not touch it).
    lam : float
        Weight ``lambda >= 0`` of the regularizer (paper's best: ``7.5e-3``). With ``lam == 0``
        the regularizer is still computed for logging, without graph, and ``total`` is ``ce``.
    error : str
        ``"cosine"`` (default), ``"mse"`` or ``"mae"``.
    detach_guided : bool
        Stop-gradient on the guided gradient (default ``True``, cheaper).

    Attributes
    ----------
    last_cosine : Tensor or None
        ``(N,)`` cosine between the two input gradients of the last batch (detached).
    last_logits : Tensor or None
        ``(N, C)`` logits of the last batch (detached).
    """

    def __init__(
        self,
        model: nn.Module,
        lam: float = 7.5e-3,
        error: str = "cosine",
        detach_guided: bool = True,
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
        if not find_relus(model):
            raise ValueError(
                f"{type(model).__name__} has no nn.ReLU / nn.ReLU6 module: the guided gradient "
                "would equal the standard one; use a model with ReLU modules (not F.relu)"
            )
        self.__dict__["model"] = model  # deliberately not a registered submodule
        self.lam = lam
        self.error = error
        self.detach_guided = bool(detach_guided)
        self.last_cosine: Optional[Tensor] = None
        self.last_logits: Optional[Tensor] = None

    def extra_repr(self) -> str:
        return f"lam={self.lam}, error={self.error!r}, detach_guided={self.detach_guided}"

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
        logits, standard, guided = input_gradients(
            model,
            inputs,
            targets,
            create_graph=with_reg,
            detach_guided=self.detach_guided,
            retain_graph=True,
        )
        n = inputs.shape[0]
        ce = F.cross_entropy(logits, targets)
        reg = gradient_error(standard, guided, self.error).sum() / n
        self.last_cosine = per_example_cosine(standard.detach(), guided.detach())
        self.last_logits = logits.detach()
        if not with_reg:
            # Logged only: the parameter update is exactly the cross-entropy one.
            return LossTerms(ce, ce, reg.detach())
        return LossTerms(ce + self.lam * reg, ce, reg)
