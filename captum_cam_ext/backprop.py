"""Backpropagation machinery: the guided backward rule at ReLUs, and standard vs guided input gradients.

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
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "RULES",
    "BackwardRule",
    "find_relus",
    "guided_relus",
    "switchable_relus",
    "check_batch",
    "input_gradients",
    "per_example_cosine",
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
# Standard and guided input gradients from one forward pass
# ------------------------------------------------------------------------------------------------


def per_example_cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine between the flattened per-example tensors ``a`` and ``b``.

    Parameters
    ----------
    a, b : Tensor
        ``(N, ...)`` of the same shape.
    eps : float
        Lower bound on ``|a| |b|`` (a zero gradient gives cosine 0).

    Returns
    -------
    Tensor
        ``(N,)``.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a2 = a.reshape(a.shape[0], -1)
    b2 = b.reshape(b.shape[0], -1)
    dot = (a2 * b2).sum(dim=1)
    norms = a2.norm(dim=1) * b2.norm(dim=1)
    return dot / norms.clamp_min(eps)


def check_batch(inputs: Tensor, targets: Tensor) -> None:
    """Raise unless ``inputs`` is a floating ``(N, ...)`` batch and ``targets`` its ``(N,)`` class indices."""
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("inputs and targets must be tensors")
    if not inputs.is_floating_point():
        raise TypeError(f"inputs must be a floating-point tensor, got {inputs.dtype}")
    if targets.dim() != 1 or targets.shape[0] != inputs.shape[0] or targets.dtype != torch.long:
        raise ValueError(
            "targets must be a LongTensor of class indices with shape (N,) matching inputs "
            f"(N={inputs.shape[0]}), got dtype {targets.dtype} and shape {tuple(targets.shape)}"
        )


def input_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    create_graph: bool = False,
    detach_guided: bool = True,
    retain_graph: Optional[bool] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Standard and guided input gradients of the summed cross-entropy, from one forward.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits ``(N, C)``; must contain ``nn.ReLU`` / ``nn.ReLU6`` modules.
    inputs : Tensor
        ``(N, ...)`` floating-point batch.
    targets : Tensor
        ``(N,)`` LongTensor of class indices.
    create_graph : bool
        Keep the graph of the **standard** gradient (for double backprop), and of the guided one
        when ``detach_guided=False``. The forward graph is kept as well (``retain_graph``).
    detach_guided : bool
        Treat the guided gradient as a constant.
    retain_graph : bool, optional
        Keep the forward graph after the two gradients (e.g. to backpropagate the logits
        later); defaults to ``create_graph``.

    Returns
    -------
    logits : Tensor
        ``(N, C)``.
    standard : Tensor
        ``(N, ...)`` ``d sum_i CE_i / d x``.
    guided : Tensor
        ``(N, ...)`` the same with the guided rule at every ReLU.
    """
    check_batch(inputs, targets)
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        with switchable_relus(model) as rule:
            logits = model(x)
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise ValueError("model must return logits of shape (N, num_classes)")
        ce_sum = F.cross_entropy(logits, targets, reduction="sum")
        with rule.use("guided"):
            (guided,) = torch.autograd.grad(
                ce_sum, x, retain_graph=True, create_graph=create_graph and not detach_guided
            )
        keep = create_graph if retain_graph is None else retain_graph
        (standard,) = torch.autograd.grad(ce_sum, x, retain_graph=keep, create_graph=create_graph)
    if detach_guided:
        guided = guided.detach()
    return logits, standard, guided
