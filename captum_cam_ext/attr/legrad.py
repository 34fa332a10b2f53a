"""LeGrad (Bousselham et al., 2024): ViT maps from the gradient of layer-wise scores at the attention maps."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.common import _format_additional_forward_args
from captum.attr._utils.attribution import GradientAttribution, LayerAttribution
from captum.log import log_usage
from torch import Tensor, nn

from captum_cam_ext._engine import (
    TargetSpec,
    format_inputs,
    module_path,
    preserved_state,
    resolve_target,
    run_forward,
    select_target_scores,
    slice_args,
)
from captum_cam_ext._maps import check_interpolate_mode, normalize_maps, upsample_maps
from captum_cam_ext.registry import register_method

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def attention_of(block: nn.Module, name: str) -> nn.MultiheadAttention:
    """The block's ``self_attention`` (a batch-first ``nn.MultiheadAttention``), checked."""
    attention = getattr(block, "self_attention", None)
    if not isinstance(attention, nn.MultiheadAttention):
        raise TypeError(
            f"LeGrad explains transformer blocks with a `self_attention: nn.MultiheadAttention` child "
            f"(torchvision's ViT encoder layers, e.g. model.encoder.layers[-1]); layer {name} is a "
            f"{type(block).__name__}"
        )
    if not attention.batch_first:
        raise ValueError(f"LeGrad needs batch-first attention; {name}.self_attention has batch_first=False")
    same_dims = attention.kdim == attention.embed_dim == attention.vdim and attention.in_proj_weight is not None
    if not same_dims or attention.bias_k is not None or attention.add_zero_attn:
        raise ValueError(f"LeGrad needs plain self-attention (one Q/K/V projection, no added tokens) in {name}")
    return attention


def vit_score_projection(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """torchvision ``VisionTransformer``: tokens ``(N, T, C)`` -> class scores through the final
    LayerNorm and head, applied to the mean token (torchcam's default)."""
    encoder = getattr(model, "encoder", None)
    norm, heads = getattr(encoder, "ln", None), getattr(model, "heads", None)
    if not isinstance(norm, nn.Module) or not isinstance(heads, nn.Module):
        raise ValueError(
            "pass score_projection= (tokens (N, T, C) -> class scores (N, classes)) for models other than "
            "torchvision's VisionTransformer"
        )

    def project(tokens: Tensor) -> Tensor:
        return heads(norm(tokens.mean(dim=1)))

    return project


class _AttentionProbe:
    """Hooks that make each block's attention probabilities a differentiable tensor of the graph."""

    def __init__(self, blocks: Sequence[nn.Module], attentions: Sequence[nn.MultiheadAttention]) -> None:
        self.blocks = list(blocks)
        self.attentions = list(attentions)
        self.tokens: List[Optional[Tensor]] = [None] * len(self.blocks)
        self.probs: List[Optional[Tensor]] = [None] * len(self.blocks)
        self.options: List[Tuple[bool, bool]] = [(True, True)] * len(self.blocks)
        self.handles: List[Any] = []

    def __enter__(self) -> _AttentionProbe:
        try:
            for i, (block, attn) in enumerate(zip(self.blocks, self.attentions)):
                self.handles.append(attn.register_forward_pre_hook(self._make_pre(i), with_kwargs=True))
                self.handles.append(attn.register_forward_hook(self._make_post(i), with_kwargs=True))
                self.handles.append(block.register_forward_hook(self._make_block(i)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def _make_pre(self, i: int) -> Callable[..., Any]:
        def pre(
            module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]
        ) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            if module.training and float(getattr(module, "dropout", 0.0)) > 0:
                raise ValueError("LeGrad needs the attention without dropout: call model.eval() first")
            new = list(args)
            if len(new) < 3 or not (new[0] is new[1] is new[2]):
                raise ValueError("LeGrad needs self-attention, called as attention(x, x, x, ...)")
            if not new[0].requires_grad:  # frozen model and plain inputs: make the attention differentiable
                query = new[0].detach().requires_grad_(True)
                new[:3] = [query, query, query]
            kw = dict(kwargs)
            # what the caller asked for (positions as in nn.MultiheadAttention.forward)
            self.options[i] = (
                bool(new[4] if len(new) > 4 else kw.get("need_weights", True)),
                bool(new[6] if len(new) > 6 else kw.get("average_attn_weights", True)),
            )
            if len(new) > 4:
                new[4] = True
            else:
                kw["need_weights"] = True
            if len(new) > 6:
                new[6] = False
            else:
                kw["average_attn_weights"] = False
            return tuple(new), kw

        return pre

    def _make_post(self, i: int) -> Callable[..., Any]:
        def post(module: nn.MultiheadAttention, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Any:
            probs = output[1]  # (N, heads, queries, keys)
            value = args[2]
            n, length, dim = value.shape
            heads = module.num_heads
            w = module.in_proj_weight[2 * dim :]
            b = None if module.in_proj_bias is None else module.in_proj_bias[2 * dim :]
            v = F.linear(value, w, b).reshape(n, length, heads, dim // heads).transpose(1, 2)
            # the output recomputed from the returned probabilities, so that they are in the graph
            out = (probs @ v).transpose(1, 2).reshape(n, probs.shape[2], dim)
            out = module.out_proj(out)
            self.probs[i] = probs
            need_weights, average = self.options[i]
            if not need_weights:
                return out, None
            return out, probs.mean(dim=1) if average else probs

        return post

    def _make_block(self, i: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not isinstance(output, Tensor) or output.dim() != 3:
                raise ValueError("LeGrad's target blocks must return tokens (N, T, C)")
            self.tokens[i] = output

        return hook


@register_method(aliases=("le-grad",))
class LayerLeGrad(LayerAttribution, GradientAttribution):
    r"""LeGrad: how the layer-wise class score changes with each block's attention.

    For each explained block :math:`l` with attention probabilities :math:`P^l` (heads
    :math:`h`, queries :math:`q`, keys :math:`k`) and output tokens :math:`Z^l`, the block's own
    class score is :math:`s^l = f(Z^l)_c` (``score_projection``; for torchvision's ViT the final
    LayerNorm and head applied to the mean token). Then

    .. math::

        E^l_k = \frac{1}{H\,Q} \sum_{h, q} \mathrm{ReLU}\Big(\frac{\partial s^l}{\partial P^l_{h,q,k}}\Big),
        \qquad L = \frac{1}{|\mathcal{L}|}\sum_{l \in \mathcal{L}} E^l,

    keeping the patch keys (prefix tokens dropped) on the patch grid. One forward and one backward
    pass per block.

    Reference: W. Bousselham, A. Boggust, S. Chaybouti, H. Strobelt, H. Kuehne, "LeGrad: An
    Explainability Method for Vision Transformers via Feature Formation Sensitivity",
    arXiv:2404.03214 (2024); torchcam 0.5 ``LeGrad``.

    Parameters
    ----------
    forward_func : nn.Module
        The vision transformer (in eval mode: no attention dropout).
    layer : nn.Module or list of nn.Module
        Transformer blocks with a ``self_attention: nn.MultiheadAttention`` child (batch-first),
        e.g. ``model.encoder.layers[-4:]``; each returns tokens ``(N, T, C)``.
    score_projection : callable, optional
        Tokens ``(N, T, C)`` -> class scores ``(N, classes)``. Default: torchvision's
        ``VisionTransformer`` head (:func:`vit_score_projection`).
    prefix_tokens : int
        Tokens before the patches (default 1, the class token).
    grid_shape : (int, int), optional
        The patch grid; default a square grid.

    Notes
    -----
    ``target``: class indices (an int, a list, a tensor, or None for the arg-max of the model's
    output), or a callable, which is applied to each block's projected scores ``(N, classes)``.
    Maps: ``(N, 1, h, w)`` on the patch grid, non-negative.
    """

    name = "legrad"
    method_kind = "composite"

    def __init__(
        self,
        forward_func: Callable,
        layer: Union[nn.Module, Sequence[nn.Module]],
        score_projection: Optional[Callable[[Tensor], Tensor]] = None,
        prefix_tokens: int = 1,
        grid_shape: Optional[Tuple[int, int]] = None,
    ) -> None:
        if not isinstance(forward_func, nn.Module):
            raise TypeError(f"LeGrad needs an nn.Module (its attention is hooked), got {type(forward_func).__name__}")
        blocks: List[nn.Module] = list(layer) if isinstance(layer, (list, tuple, nn.ModuleList)) else [layer]  # type: ignore[list-item]
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise TypeError("layer must be a transformer block (nn.Module) or a non-empty list of them")
        modules = list(forward_func.modules())
        names = [module_path(forward_func, b) for b in blocks]
        for b, name in zip(blocks, names):
            if not any(b is m for m in modules):
                raise ValueError(f"layer {name} is not a submodule of the model")
        self.attentions = [attention_of(b, name) for b, name in zip(blocks, names)]
        if isinstance(prefix_tokens, bool) or not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be a non-negative int, got {prefix_tokens!r}")
        if grid_shape is not None and (
            len(tuple(grid_shape)) != 2 or not all(isinstance(s, int) and s > 0 for s in grid_shape)
        ):
            raise ValueError(f"grid_shape must be two positive ints (h, w), got {grid_shape!r}")
        if score_projection is not None and not callable(score_projection):
            raise TypeError("score_projection must be a callable (tokens -> class scores) or None")
        LayerAttribution.__init__(self, forward_func, blocks[0] if len(blocks) == 1 else blocks)  # type: ignore[arg-type]
        GradientAttribution.__init__(self, forward_func)
        self.blocks = blocks
        self.layer_names = names
        self.score_projection = score_projection or vit_score_projection(forward_func)
        self.prefix_tokens = prefix_tokens
        self.grid_shape = tuple(grid_shape) if grid_shape is not None else None

    def grid(self, patches: int) -> Tuple[int, int]:
        """The patch grid ``(h, w)`` of ``patches`` patch tokens."""
        if self.grid_shape is not None:
            h, w = self.grid_shape
            if h * w != patches:
                raise ValueError(f"grid_shape {self.grid_shape} has {h * w} cells, the blocks have {patches} patches")
            return h, w
        side = math.isqrt(patches)
        if side * side != patches:
            raise ValueError(f"{patches} patch tokens do not form a square grid; pass grid_shape=(h, w)")
        return side, side

    def layer_maps(
        self, inputs: Tuple[Tensor, ...], target: TargetSpec, args: Optional[Tuple[Any, ...]]
    ) -> List[Tensor]:
        """The map :math:`E^l` of each block, ``(n, 1, h, w)``, for one chunk of examples."""
        model = self.forward_func
        with preserved_state(model), torch.enable_grad(), _AttentionProbe(self.blocks, self.attentions) as probe:
            outputs = run_forward(model, inputs, args)
            if not (callable(target) and not isinstance(target, Tensor)):
                index = resolve_target(outputs.detach() if isinstance(outputs, Tensor) else outputs, target)
                if index is None:
                    raise ValueError("LeGrad needs class indices or a callable target, not a tuple target")
                target = index
            maps = []
            for i, (tokens, probs) in enumerate(zip(probe.tokens, probe.probs)):
                if tokens is None or probs is None:
                    raise ValueError(f"block {self.layer_names[i]} did not run its self-attention in the forward pass")
                scores = select_target_scores(self.score_projection(tokens), target)
                (grad,) = torch.autograd.grad(scores.sum(), probs, retain_graph=i < len(self.blocks) - 1)
                relevance = grad.detach().clamp(min=0).mean(dim=(1, 2))[:, self.prefix_tokens :]
                h, w = self.grid(relevance.shape[1])
                maps.append(relevance.reshape(relevance.shape[0], 1, h, w))
        return maps

    @log_usage()
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTuple,
        target: TargetSpec = None,
        additional_forward_args: Any = None,
        upsample_to_input: bool = False,
        interpolate_mode: str = "bilinear",
        normalize: bool = False,
        internal_batch_size: Optional[int] = None,
        relu_attributions: bool = False,
    ) -> Tensor:
        """The LeGrad map of each example, ``(N, 1, h, w)`` (``(N, 1, H, W)`` with ``upsample_to_input``).

        Same arguments as :meth:`captum_cam_ext.CamAttribution.attribute` (without the ones that
        concern channels or the backward rule); ``relu_attributions`` changes nothing (the map is
        non-negative by construction).
        """
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        check_interpolate_mode(interpolate_mode)
        if internal_batch_size is not None and (
            isinstance(internal_batch_size, bool) or not isinstance(internal_batch_size, int) or internal_batch_size < 1
        ):
            raise ValueError(f"internal_batch_size must be a positive int or None, got {internal_batch_size!r}")
        if torch.is_inference_mode_enabled():
            raise ValueError("LeGrad needs gradients: call attribute() outside torch.inference_mode()")
        n = tup[0].shape[0]
        step = n if internal_batch_size is None else internal_batch_size
        out = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            chunk_target = target
            if isinstance(target, Tensor) and target.dim() == 1 and target.shape[0] == n:
                chunk_target = target[start:stop]
            elif isinstance(target, list) and len(target) == n:
                chunk_target = target[start:stop]
            maps = self.layer_maps(tuple(x[start:stop] for x in tup), chunk_target, slice_args(args, start, stop, n))
            out.append(torch.stack(maps).mean(dim=0))
        cam = torch.cat(out) if len(out) > 1 else out[0]
        if upsample_to_input:
            if tup[0].dim() != 4:
                raise ValueError(f"upsample_to_input needs images (N, C, H, W), got {tuple(tup[0].shape)}")
            cam = upsample_maps(normalize_maps(cam) if normalize else cam, tuple(tup[0].shape[2:]), interpolate_mode)
        return normalize_maps(cam) if normalize else cam
