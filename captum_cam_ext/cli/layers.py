"""Target layers by dotted name, the default layer, and token layouts (``--reshape``)."""

from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from captum_cam_ext.cli._common import CliError, one_line

__all__ = [
    "RESHAPE_CHOICES",
    "TOKEN_LAYOUTS",
    "candidate_layers",
    "choose_reshape",
    "default_layer_name",
    "first_conv_in_channels",
    "is_conv",
    "layer_output_shape",
    "resolve_layer",
    "vit_tokens_to_grid",
]


def vit_tokens_to_grid(tokens: Tensor) -> Tensor:
    """ViT tokens ``(N, 1 + h*w, D)`` (class token first) or ``(N, h*w, D)`` -> ``(N, D, h, w)``.

    Raises
    ------
    ValueError
        If ``tokens`` is not 3-D or its token count is not a square (plus one class token).
    """
    if tokens.dim() != 3:
        raise ValueError(
            f"--reshape vit expects token outputs (N, 1 + h*w, D), got shape {tuple(tokens.shape)}; "
            "pick a layer inside a transformer block (e.g. encoder.layers.encoder_layer_11.ln_1)"
        )
    n, length, dim = tokens.shape
    for skip in (1, 0):
        side = math.isqrt(max(length - skip, 0))
        if side > 0 and side * side == length - skip:
            return tokens[:, skip:, :].reshape(n, side, side, dim).permute(0, 3, 1, 2)
    raise ValueError(f"--reshape vit: {length} tokens are not a square grid (plus a class token)")


#: ``--reshape`` layouts: name -> callable mapping the layer output to ``(N, K, h, w)``.
TOKEN_LAYOUTS: Dict[str, Callable[[Tensor], Tensor]] = {"vit": vit_tokens_to_grid}
RESHAPE_CHOICES: Tuple[str, ...] = ("auto", "none", *TOKEN_LAYOUTS)


def is_conv(module: nn.Module) -> bool:
    """A convolution (TorchScript modules are recognised by their original class name)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return True
    return str(getattr(module, "original_name", "")).startswith("Conv")


def is_conv_like(module: nn.Module) -> bool:
    """The module is or contains a convolution."""
    return any(is_conv(m) for m in module.modules())


def first_conv_in_channels(model: nn.Module) -> int:
    """Input channels of the first 2-D convolution (3 when there is none)."""
    for m in model.modules():
        if is_conv(m):
            w = getattr(m, "weight", None)
            if isinstance(w, Tensor) and w.dim() == 4:
                return int(w.shape[1]) * int(getattr(m, "groups", 1))
    return 3


def candidate_layers(model: nn.Module, limit: int = 40) -> List[str]:
    """Dotted names of conv-like layers (modules containing a convolution), shallow ones first.

    Returns at most ``limit`` names: every top-level and second-level module that contains a
    convolution, in model order, then deeper ones.
    """
    named = [(n, m) for n, m in model.named_modules() if n and is_conv_like(m)]
    shallow = [n for n, _ in named if n.count(".") <= 1]
    deep = [n for n, _ in named if n.count(".") > 1]
    return (shallow + deep)[:limit]


def default_layer_name(model: nn.Module) -> Optional[str]:
    """The last top-level module that contains a convolution (e.g. ``layer4``, ``features``)."""
    last = None
    for n, m in model.named_children():
        if is_conv_like(m):
            last = n
    return last


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` that also works on TorchScript modules."""
    module = model
    for part in name.split("."):
        children = dict(module.named_children())
        if part not in children:
            raise AttributeError(part)
        module = children[part]
    return module


def resolve_layer(model: nn.Module, name: Optional[str], default: Optional[str] = None) -> Tuple[nn.Module, str]:
    """The module at dotted path ``name`` (or the default layer), as ``(module, name)``.

    Raises
    ------
    CliError
        Unknown name; the message lists candidate conv-like layer names.
    """
    if name is None:
        name = default or default_layer_name(model)
        if name is None:
            raise CliError("the model has no convolution; pass --layer NAME")
    try:
        module = get_submodule(model, name)
    except (AttributeError, IndexError, KeyError):
        cands = candidate_layers(model)
        close = difflib.get_close_matches(name, [n for n, _ in model.named_modules() if n], n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise CliError(
            f"unknown layer {name!r} in {type(model).__name__}.{hint} Candidate conv-like layers: "
            + ", ".join(cands)
        ) from None
    return module, name


def layer_output_shape(model: nn.Module, layer: nn.Module, x: Tensor) -> Optional[Tuple[int, ...]]:
    """Shape of the layer's (last) output on input ``x``; None if the output is not a tensor."""
    shapes: List[Any] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        shapes.append(tuple(out.shape) if isinstance(out, Tensor) else None)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return shapes[-1] if shapes else None


def choose_reshape(
    option: str, token_layout: Optional[str], model: nn.Module, layer: nn.Module, layer_name: str, x: Tensor
) -> Optional[str]:
    """The token layout to apply at this layer (None: the output is used as it is).

    ``auto`` uses the model's token layout (``vit`` for torchvision Vision Transformers) when the
    layer outputs tokens ``(N, L, D)``; ``none`` never reshapes; a layout name always applies it
    (checked on one forward pass of ``x``).

    Raises
    ------
    CliError
        Unknown option, or a layout that does not fit the layer's output.
    """
    if option not in RESHAPE_CHOICES:
        raise CliError(f"unknown --reshape {option!r}; choose from {', '.join(RESHAPE_CHOICES)}")
    if option == "none":
        return None
    if option == "auto" and token_layout is None:
        return None
    shape = layer_output_shape(model, layer, x)
    if option == "auto":
        return token_layout if shape is not None and len(shape) == 3 else None
    try:
        TOKEN_LAYOUTS[option](torch.zeros(shape if shape is not None else ()))
    except ValueError as exc:
        raise CliError(f"layer {layer_name}: {one_line(exc)}") from None
    return option
