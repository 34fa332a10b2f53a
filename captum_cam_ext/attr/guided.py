"""The guided backward rule at ReLUs as reusable machinery.

Guided backpropagation (Springenberg et al., 2015) changes only the backward pass of the ReLUs.
For ``v = relu(u)`` with upstream gradient ``g = dL/dv``:

- standard rule: ``dL/du = g * 1[u > 0]``
- guided rule:   ``dL/du = relu(g) * 1[u > 0]``

and for ``v = relu6(u)`` the mask is ``1[0 < u < 6]`` with the same ``relu(g)`` clamp on top.

How it is done here
-------------------
:func:`guided_relus` registers a forward hook on every ``nn.ReLU`` / ``nn.ReLU6`` module of the
model (found with ``model.modules()``; the user edits nothing). The hook routes the module's output
through :class:`_RuleGate`, an autograd Function whose forward is a copy and whose backward is
either the identity (standard rule) or ``clamp(g, min=0)`` (guided rule). The module's own
backward then applies the mask, so the composite is exactly the rule above. Because the mask can be
read from the output (``relu(u) > 0`` iff ``u > 0``; ``0 < relu6(u) < 6`` iff ``0 < u < 6``), this
works for ``inplace=True`` modules too, and a module called several times in one forward (the
``self.relu`` of a torchvision ``BasicBlock``) gets one gate per call.

The gate's backward is made of differentiable ops, so gradients computed with
``create_graph=True`` can be differentiated again (double backpropagation).

The rule is read from a shared :class:`BackwardRule` object **when the backward runs**, not when
the forward runs. One forward can therefore serve a guided backward and a standard backward: this
is the "switchable" mode used for training (:func:`switchable_relus`). Hooks are removed when the
``with`` block exits, also on exceptions; the autograd graph built inside keeps working after.

Only module ReLUs are seen: a functional ``F.relu`` / ``torch.relu`` call in ``forward`` cannot
be hooked and keeps the standard rule.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "RULES",
    "BackwardRule",
    "find_relus",
    "guided_relus",
    "switchable_relus",
    "LayerGuidedGradCam",
]

RULES: Tuple[str, ...] = ("standard", "guided")
_RELU_TYPES: Tuple[type, ...] = (nn.ReLU, nn.ReLU6)


class BackwardRule:
    """A switch shared by the hooked ReLUs; read when the backward pass runs.

    Parameters
    ----------
    rule : str
        ``"guided"`` or ``"standard"``.

    Examples
    --------
    >>> with switchable_relus(model) as rule:          # doctest: +SKIP
    ...     out = model(x)
    >>> with rule.use("guided"):                        # doctest: +SKIP
    ...     g_guided, = torch.autograd.grad(out[:, c].sum(), x, retain_graph=True)
    >>> g_standard, = torch.autograd.grad(out[:, c].sum(), x)  # doctest: +SKIP
    """

    __slots__ = ("_rule",)

    def __init__(self, rule: str = "guided") -> None:
        self._rule = _check_rule(rule)

    @property
    def rule(self) -> str:
        """The rule the gates apply in the next backward pass."""
        return self._rule

    @rule.setter
    def rule(self, value: str) -> None:
        self._rule = _check_rule(value)

    @contextlib.contextmanager
    def use(self, rule: str) -> Iterator[BackwardRule]:
        """Apply ``rule`` inside the ``with`` block, then restore the previous rule."""
        old = self._rule
        self.rule = rule
        try:
            yield self
        finally:
            self._rule = old

    def __repr__(self) -> str:
        return f"BackwardRule({self._rule!r})"


def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"backward rule must be one of {RULES}, got {rule!r}")
    return rule


class _RuleGate(torch.autograd.Function):
    """Identity in forward; in backward ``g`` (standard) or ``clamp(g, min=0)`` (guided)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, switch: BackwardRule) -> Tensor:  # type: ignore[override]
        ctx.switch = switch
        # A copy, not a view: later in-place ops (``out += identity``) must be allowed on it.
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], None]:  # type: ignore[override]
        if ctx.switch.rule == "guided":
            # Differentiable op: recorded when the backward runs with create_graph=True.
            return grad.clamp(min=0), None
        return grad, None


def find_relus(model: nn.Module) -> List[nn.Module]:
    """Every ``nn.ReLU`` and ``nn.ReLU6`` module of ``model`` (each module object once).

    Parameters
    ----------
    model : nn.Module

    Returns
    -------
    list of nn.Module
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    seen: set = set()
    found: List[nn.Module] = []
    for m in model.modules():
        if isinstance(m, _RELU_TYPES) and id(m) not in seen:
            seen.add(id(m))
            found.append(m)
    return found


def _gate_hook(switch: BackwardRule) -> Any:
    def hook(module: nn.Module, args: Any, out: Any) -> Optional[Tensor]:
        if not isinstance(out, Tensor) or not torch.is_grad_enabled() or not out.requires_grad:
            return None  # no graph is being built: nothing to change
        return _RuleGate.apply(out, switch)

    return hook


@contextlib.contextmanager
def guided_relus(
    model: nn.Module,
    rule: str = "guided",
    modules: Optional[Sequence[nn.Module]] = None,
) -> Iterator[BackwardRule]:
    """Make the model's ReLU / ReLU6 modules apply ``rule`` in backward, inside a ``with`` block.

    Parameters
    ----------
    model : nn.Module
        The model; its ``nn.ReLU`` and ``nn.ReLU6`` modules (inplace or not, reused or not) are
        hooked. A ``DistributedDataParallel`` wrapper works too (its inner modules are found).
    rule : str
        Initial rule, ``"guided"`` (default) or ``"standard"``. The rule in force when the
        **backward** pass runs is the one applied; change it with the yielded object.
    modules : sequence of nn.Module, optional
        Hook only these ReLU / ReLU6 modules instead of all of them.

    Yields
    ------
    BackwardRule
        The switch read by the hooked ReLUs.

    Raises
    ------
    ValueError
        If the model has no ReLU / ReLU6 module (functional ReLUs cannot be hooked), or ``rule``
        is unknown.
    TypeError
        If ``model`` is not an ``nn.Module`` or ``modules`` holds a non-ReLU module.

    Notes
    -----
    Forward passes inside the block that build an autograd graph route every ReLU output through
    a copy (one extra activation-sized tensor per ReLU call). Under ``torch.no_grad()`` nothing is
    changed. The hooks are removed when the block exits, also on exceptions.
    """
    switch = BackwardRule(rule)
    if modules is None:
        targets = find_relus(model)
        if not targets:
            raise ValueError(
                f"{type(model).__name__} has no nn.ReLU / nn.ReLU6 module, so the guided rule has "
                "nothing to act on; functional F.relu calls cannot be hooked, use nn.ReLU modules"
            )
    else:
        targets = list(modules)
        bad = [type(m).__name__ for m in targets if not isinstance(m, _RELU_TYPES)]
        if bad:
            raise TypeError(f"modules must be nn.ReLU / nn.ReLU6 instances, got {bad}")
        if not targets:
            raise ValueError("modules is empty: pass at least one nn.ReLU / nn.ReLU6 module")
    handles = []
    try:
        for m in targets:
            handles.append(m.register_forward_hook(_gate_hook(switch)))
        yield switch
    finally:
        for h in handles:
            h.remove()


def switchable_relus(model: nn.Module, modules: Optional[Sequence[nn.Module]] = None) -> Any:
    """:func:`guided_relus` starting with the standard rule (training: one forward, two rules).

    Parameters
    ----------
    model : nn.Module
    modules : sequence of nn.Module, optional

    Returns
    -------
    context manager yielding :class:`BackwardRule`
    """
    return guided_relus(model, rule="standard", modules=modules)


# ------------------------------------------------------------------------------------------------
# Guided Grad-CAM weights: Grad-CAM whose gradients come back through guided ReLUs
# ------------------------------------------------------------------------------------------------

from captum_cam_ext.attr.grad_cam import LayerGradCam  # noqa: E402  (after the machinery above)


class LayerGuidedGradCam(LayerGradCam):
    r"""Grad-CAM whose layer gradients are computed with the guided rule at every ReLU.

    The channel weights are :math:`w_k = \frac{1}{hw}\sum_p \partial^G y^c / \partial A_k(p)`,
    where :math:`\partial^G` backpropagates with the guided rule at the ``nn.ReLU`` /
    ``nn.ReLU6`` modules between the output and the layer (:func:`guided_relus`). It is
    :class:`LayerGradCam` with ``backward_rule="guided"`` as the default of :meth:`attribute` and
    :meth:`compute`; ``backward_rule="standard"`` gives plain Grad-CAM back.

    This is *not* Captum's ``GuidedGradCam`` (Grad-CAM map times the guided-backprop input
    gradient); here the guided rule changes the CAM weights only, and the result is a CAM at the
    layer's resolution.

    Examples
    --------
    >>> cam = LayerGuidedGradCam(model, model.layer4)          # doctest: +SKIP
    >>> maps = cam.attribute(images, target=3, relu_attributions=True)  # doctest: +SKIP
    """

    name = "guided_gradcam"
    default_backward_rule = "guided"
