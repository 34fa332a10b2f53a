"""Forward hooks that record layer values (always removed), and leaving a model as it was found."""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = ["LayerRecorder", "group_by_device", "has_training_module", "module_path", "preserved_state"]


def module_path(model: Any, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model`` (``"layer4.1.relu"``), or its type name."""
    if isinstance(model, nn.Module):
        for name, m in model.named_modules():
            if m is module:
                return name or type(module).__name__
    return type(module).__name__


@contextlib.contextmanager
def preserved_state(model: Any, training: Optional[bool] = None) -> Iterator[None]:
    """Restore every buffer of ``model`` (e.g. BatchNorm running statistics) after the block.

    Forward passes of a model in ``train()`` mode update its BatchNorm running statistics; a CAM
    must leave the model as it found it. Only models with a submodule in training mode are
    snapshotted (in eval mode nothing changes buffers). ``training``: the result of
    :func:`has_training_module` when the caller already has it (one scan of the modules per call).
    """
    if training is None:
        training = has_training_module(model)
    if not training:
        yield
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


def has_training_module(model: Any) -> bool:
    """Whether ``model`` is an ``nn.Module`` with any submodule in ``train()`` mode."""
    return isinstance(model, nn.Module) and any(m.training for m in model.modules())


def group_by_device(entries: Sequence[Tuple[Any, Tensor]], device_order: Sequence[Any], call: int) -> List[Tensor]:
    """Pick call ``call`` of each device and return them in ``device_order``.

    ``entries`` are ``(device, tensor)`` in call order (a ``DataParallel`` model calls a layer once
    per replica); the result concatenated along the batch is the layer value of the whole batch.
    """
    per_device: Dict[Any, List[Tensor]] = {}
    for dev, t in entries:
        per_device.setdefault(dev, []).append(t)
    order = [d for d in device_order if d in per_device] + [d for d in per_device if d not in device_order]
    return [per_device[d][call] for d in order]


class LayerRecorder:
    """Forward hooks on the target layers that capture their outputs (or inputs), every call.

    With ``grad_root=True`` each captured activation is a tensor that requires grad. When the
    forward runs under ``torch.no_grad()`` (graph trimming), the first hooked layer to run detaches
    its output and switches gradient recording on, so the autograd graph starts at the layer:
    nothing before it is stored. The hooks return a clone, so in-place operations after the layer
    (``ReLU(inplace=True)``, ``out += identity``) cannot modify what was captured. Tuple outputs
    are captured element-wise. Use it as a context manager: the hooks are removed on exit, also
    on exceptions.

    Parameters
    ----------
    layers : sequence of nn.Module
    to_input : bool
        Capture the layer's (first) input instead of its output.
    grad_root : bool
        Make the captured values differentiable graph roots.
    names : sequence of str, optional
        The layers' paths in the model, for error messages.
    """

    def __init__(
        self, layers: Sequence[nn.Module], to_input: bool, grad_root: bool, names: Optional[Sequence[str]] = None
    ) -> None:
        self.layers = list(layers)
        self.to_input = to_input
        self.grad_root = grad_root
        self.names = list(names) if names is not None else [type(m).__name__ for m in self.layers]
        self.captured: List[List[Any]] = [[] for _ in self.layers]  # per layer, per call: Tensor or tuple
        self.handles: List[Any] = []

    def _root(self, value: Tensor) -> Tensor:
        if not value.is_floating_point():
            return value
        if not torch.is_grad_enabled() or not value.requires_grad:
            value = value.detach().requires_grad_(True)
            torch.set_grad_enabled(True)
        return value

    def _capture(self, i: int, value: Any) -> Any:
        where = "input" if self.to_input else "output"
        if isinstance(value, Tensor):
            elems: Tuple[Tensor, ...] = (value,)
        elif isinstance(value, (tuple, list)) and value and all(isinstance(v, Tensor) for v in value):
            elems = tuple(value)
        else:
            raise ValueError(
                f"the {where} of target layer {self.names[i]} is a {type(value).__name__}, not a Tensor or a "
                f"tuple of Tensors; pick a layer with tensor {where}s"
            )
        if self.grad_root:
            roots = tuple(self._root(v) for v in elems)
            self.captured[i].append(roots[0] if isinstance(value, Tensor) else roots)
            clones = tuple(r.clone() for r in roots)
            return clones[0] if isinstance(value, Tensor) else type(value)(clones)
        copies = tuple(v.detach().clone() for v in elems)  # in-place ops later must not alter them
        self.captured[i].append(copies[0] if isinstance(value, Tensor) else copies)
        return value

    def __enter__(self) -> LayerRecorder:
        try:
            for i, layer in enumerate(self.layers):
                if self.to_input:

                    def pre_hook(module: nn.Module, args: Tuple[Any, ...], i: int = i) -> Tuple[Any, ...]:
                        if not args:
                            raise ValueError(f"target layer {self.names[i]} was called without inputs")
                        return (self._capture(i, args[0]), *args[1:])

                    self.handles.append(layer.register_forward_pre_hook(pre_hook))
                else:

                    def hook(module: nn.Module, args: Any, out: Any, i: int = i) -> Any:
                        return self._capture(i, out)

                    self.handles.append(layer.register_forward_hook(hook))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """Remove the hooks (idempotent)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def calls(self, i: int) -> int:
        """How many times layer ``i`` ran."""
        return len(self.captured[i])

    def value(self, i: int, call: int = -1, device_ids: Optional[Sequence[int]] = None) -> Any:
        """The value captured at call ``call`` of layer ``i`` (default: the last call, as Captum).

        With ``device_ids`` (a ``DataParallel`` model), the selected call of each device,
        concatenated along the batch in device order.
        """
        got = self.captured[i]
        if not got:
            raise ValueError(
                f"target layer {self.names[i]} was not called during the forward pass; pass a submodule that "
                "the model actually runs (and, with attribute_to_layer_input, one that receives an input)"
            )
        devices = {(v if isinstance(v, Tensor) else v[0]).device for v in got}
        if len(devices) > 1:
            order = [torch.device("cuda", d) if isinstance(d, int) else torch.device(d) for d in (device_ids or [])]
            entries = [((v if isinstance(v, Tensor) else v[0]).device, v) for v in got]
            picked = group_by_device(entries, order, call)  # type: ignore[arg-type]
            if len(picked) == 1:
                return picked[0]
            if isinstance(picked[0], Tensor):
                return picked  # a list: several graph roots of one batch
            raise ValueError(f"tuple outputs of layer {self.names[i]} across several devices are not supported")
        if not -len(got) <= call < len(got):
            raise ValueError(
                f"layer_call={call} but target layer {self.names[i]} ran {len(got)} time(s) in the forward pass; "
                f"pick a call in {-len(got)}..{len(got) - 1} (-1 is the last call, as in Captum)"
            )
        return got[call]
