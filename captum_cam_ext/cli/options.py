"""Options shared by several subcommands (model, layer, token layout, size, preprocessing, methods)
and their resolution into a target layer."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from captum_cam_ext.cli.layers import RESHAPE_CHOICES, TOKEN_LAYOUTS, choose_reshape, resolve_layer
from captum_cam_ext.cli.methods import methods_help
from captum_cam_ext.cli.models import LoadedModel
from captum_cam_ext.cli.preprocessing import NORMALIZATIONS

__all__ = ["Target", "add_method_arg", "add_model_args", "target_layer"]

MODEL_HELP = (
    "torchvision classification architecture (resnet18, vgg11_bn, vit_b_16, ...: random weights "
    "unless --weights), efficientnet_lite0 (bundled ImageNet weights), or the path of a whole model "
    "saved with torch.save(model, path) (TorchScript files are refused: they do not support the "
    "forward hooks CAMs need)"
)


def add_model_args(p: argparse.ArgumentParser, default_model: str = "efficientnet_lite0") -> None:
    """``--model --weights --layer --reshape --size --preprocessing``."""
    p.add_argument("--model", default=default_model, help=f"{MODEL_HELP} (default {default_model})")
    p.add_argument("--weights", default=None,
                   help="local state_dict file for a torchvision architecture (read with weights_only=True)")
    p.add_argument("--layer", default=None,
                   help="target layer, dotted name (layer4, features.7, _blocks.15); default: the model's "
                        "last conv block (ViT: the last encoder block's ln_1)")
    p.add_argument("--reshape", choices=RESHAPE_CHOICES, default="auto",
                   help="token layout of the layer output: vit maps (N, 1+h*w, D) tokens to (N, D, h, w); "
                        "auto (default) does so for torchvision ViTs; none never reshapes")
    p.add_argument("--size", type=int, default=None,
                   help="square input size (default: the model's own, 224; 28 with Fashion-MNIST "
                        "preprocessing); refused for models that take one size only (efficientnet_lite0, ViT)")
    p.add_argument("--preprocessing", choices=("auto", *NORMALIZATIONS), default="auto",
                   help="input normalisation (default auto: the model's own; Fashion-MNIST for 1-channel "
                        "model files)")


def add_method_arg(p: argparse.ArgumentParser, default_text: str = "") -> None:
    """``--method`` (repeatable, comma-separated); the help lists the registered methods."""
    p.add_argument("--method", action="append", default=None, help=methods_help() + default_text)


@dataclass
class Target:
    """The resolved target layer and its token layout."""

    layer: nn.Module
    name: str
    reshape: Optional[str]

    @property
    def reshape_transform(self) -> Optional[Callable[[Tensor], Tensor]]:
        return TOKEN_LAYOUTS[self.reshape] if self.reshape is not None else None

    def describe(self) -> str:
        return self.name + (f" (tokens as a grid: --reshape {self.reshape})" if self.reshape else "")


def target_layer(lm: LoadedModel, layer: Optional[str], reshape: str) -> Target:
    """Resolve ``--layer`` and ``--reshape`` for a loaded model."""
    module, name = resolve_layer(lm.model, layer, lm.default_layer)
    p = lm.preprocessing
    probe = torch.zeros(1, p.channels, p.size, p.size)
    return Target(module, name, choose_reshape(reshape, lm.token_layout, lm.model, module, name, probe))
