"""Loading the model named by ``--model``: one small loader per model family.

* :func:`load_efficientnet` -- the bundled ImageNet EfficientNet-Lite0 (224x224 inputs only);
* :func:`load_torchvision` -- a torchvision classification architecture by name, random weights or
  a local state_dict (``--weights``); Vision Transformers get their token layout and a default
  layer in a token block;
* :func:`load_model_file` -- a whole ``nn.Module`` saved with ``torch.save`` (TorchScript files are
  refused: they do not support the forward hooks CAM methods need).

:func:`load_model` picks the loader, and every loader ends with one trial forward pass so that a
model that cannot run at the chosen input size fails here, with a one-line message.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from captum_cam_ext.cli._common import CliError, one_line, warn
from captum_cam_ext.cli.layers import first_conv_in_channels
from captum_cam_ext.cli.preprocessing import NORMALIZATIONS, Preprocessing, make_preprocessing

__all__ = [
    "EFFICIENTNET_NAMES",
    "LoadedModel",
    "load_efficientnet",
    "load_model",
    "load_model_file",
    "load_torchvision",
    "read_state_dict",
    "torchvision_classifiers",
    "transformer_settings",
]

EFFICIENTNET_NAMES = ("efficientnet_lite0", "efficientnetlite0")
MODEL_FILE_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".bin", ".pkl")


@dataclass
class LoadedModel:
    """A model ready to explain, with its preprocessing.

    Attributes
    ----------
    model : nn.Module
        In eval mode.
    name : str
        For titles and output files.
    preprocessing : Preprocessing
        uint8 image -> ``(1, C, S, S)`` input (and back with ``display``).
    default_layer : str, optional
        The layer used without ``--layer`` (None: the last top-level block with a convolution).
    class_names : sequence of str, optional
        Names of the output classes (ImageNet for 1000-class torchvision models).
    token_layout : str, optional
        ``"vit"`` when the model's blocks output tokens ``(N, 1 + h*w, D)`` (``--reshape auto``).
    num_classes : int, optional
        Width of the model's output, measured by :func:`check_forward`.
    """

    model: nn.Module
    name: str
    preprocessing: Preprocessing
    default_layer: Optional[str] = None
    class_names: Optional[Sequence[str]] = None
    token_layout: Optional[str] = None
    num_classes: Optional[int] = None

    def preprocess(self, image: Any) -> Tensor:
        """uint8 image ``(H, W, 3)`` or ``(H, W)`` -> model input ``(1, C, S, S)``."""
        return self.preprocessing(image)

    def display(self, x: Tensor) -> np.ndarray:
        """Model input ``(1, C, S, S)`` -> uint8 ``(S, S, 3)``, what the model sees."""
        return self.preprocessing.display(x)


def torchvision_classifiers() -> List[str]:
    """Names of torchvision's classification architectures (``resnet18``, ``vit_b_16``, ...)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def load_model(
    spec: str,
    weights: Optional[str] = None,
    size: Optional[int] = None,
    preprocessing: str = "auto",
    quiet: bool = False,
) -> LoadedModel:
    """Load a model by torchvision name, ``efficientnet_lite0``, or file path.

    Parameters
    ----------
    spec : str
        ``efficientnet_lite0``, a torchvision classification architecture name, or the path of a
        ``torch.save`` file holding a whole ``nn.Module``.
    weights : str, optional
        A local state_dict file for a torchvision architecture (random weights otherwise).
    size : int, optional
        Square input side. Default: the model's own (224; 28 for Fashion-MNIST preprocessing;
        a ViT's ``image_size``). Refused where the model takes one size only.
    preprocessing : {"auto", "imagenet", "fashion-mnist", "efficientnet"}
        The normalisation. ``auto``: the model's own (ImageNet for torchvision models,
        ``(x - 0.5) / 0.5`` for EfficientNet-Lite0, Fashion-MNIST for 1-channel model files).
    quiet : bool
        Do not print the random-weights notice.

    Raises
    ------
    CliError
        Unknown name, missing or unreadable file, weights that do not fit, a size the model cannot
        take, or a model that does not return ``(N, classes)`` logits.
    """
    if preprocessing != "auto" and preprocessing not in NORMALIZATIONS:
        raise CliError(f"unknown preprocessing {preprocessing!r}; use auto, {', '.join(NORMALIZATIONS)}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise CliError(f"--size must be a positive integer, got {size!r}")
    if spec.replace("-", "_").lower() in EFFICIENTNET_NAMES:
        lm = load_efficientnet(weights, size, preprocessing)
    else:
        names = torchvision_classifiers()
        path = Path(spec)
        if spec in names and not path.exists():
            lm = load_torchvision(spec, weights, size, preprocessing, quiet=quiet)
        elif path.exists():
            lm = load_model_file(path, weights, size, preprocessing)
        else:
            raise unknown_model_error(spec, names)
    check_forward(lm)
    return lm


def unknown_model_error(spec: str, names: Sequence[str]) -> CliError:
    """The error for a ``--model`` that is neither a known name nor an existing file."""
    if os.sep in spec or Path(spec).suffix in MODEL_FILE_SUFFIXES:
        return CliError(f"model file not found: {spec}")
    close = difflib.get_close_matches(spec, [*names, "efficientnet_lite0"], n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return CliError(
        f"unknown model {spec!r}: not a torchvision architecture, not 'efficientnet_lite0' and "
        f"not an existing file.{hint}"
    )


def load_efficientnet(weights: Optional[str], size: Optional[int], preprocessing: str) -> LoadedModel:
    """The bundled ImageNet EfficientNet-Lite0; its inputs are 224x224 (fixed 'same' padding)."""
    from captum_cam_ext.data import EFFICIENTNET_INPUT_SIZE, IMAGENET_CLASSES, load_efficientnet_lite0

    if weights is not None:
        raise CliError("efficientnet_lite0 uses its bundled ImageNet weights; drop --weights")
    if size is not None and size != EFFICIENTNET_INPUT_SIZE:
        raise CliError(
            f"efficientnet_lite0 takes {EFFICIENTNET_INPUT_SIZE}x{EFFICIENTNET_INPUT_SIZE} inputs only (its "
            f"'same' padding is fixed for that size); drop --size {size}"
        )
    try:
        model = load_efficientnet_lite0()
    except ImportError as exc:
        raise CliError(one_line(exc)) from None
    mode = "efficientnet" if preprocessing == "auto" else preprocessing
    prep = make_preprocessing(mode, 3, EFFICIENTNET_INPUT_SIZE)
    return LoadedModel(model, "efficientnet_lite0", prep, "_head_act", IMAGENET_CLASSES)


def load_torchvision(
    arch: str, weights: Optional[str], size: Optional[int], preprocessing: str, quiet: bool = False
) -> LoadedModel:
    """A torchvision classifier (random weights unless ``weights`` names a local state_dict)."""
    import torchvision

    from captum_cam_ext.data import IMAGENET_CLASSES

    model = torchvision.models.get_model(arch, weights=None)
    if weights is not None:
        load_weights(model, arch, read_state_dict(weights), weights)
    elif not quiet:
        warn(f"{arch}: no --weights given, using RANDOM weights (the maps are not meaningful); "
             "pass --weights FILE with a local state_dict")
    model.eval()
    default_layer, token_layout, size = transformer_settings(model, arch, size)
    mode = "imagenet" if preprocessing == "auto" else preprocessing
    prep = make_preprocessing(mode, 3, size or 224)
    n_out = getattr(getattr(model, "fc", None), "out_features", None)
    names = IMAGENET_CLASSES if n_out in (None, 1000) else None
    return LoadedModel(model, arch, prep, default_layer, names, token_layout)


def transformer_settings(
    model: nn.Module, name: str, size: Optional[int]
) -> Tuple[Optional[str], Optional[str], Optional[int]]:
    """``(default layer, token layout, input size)`` of a torchvision Vision Transformer.

    The default layer is the last encoder block's first LayerNorm (as in pytorch-grad-cam's ViT
    example), its tokens are laid out as a grid (``vit``), and the input size is the model's
    ``image_size`` (its position embeddings fix it). Other models: ``(None, None, size)``.

    Raises
    ------
    CliError
        A ``size`` other than the ViT's ``image_size``.
    """
    import torchvision

    if not isinstance(model, torchvision.models.VisionTransformer):
        return None, None, size
    native = int(model.image_size)
    if size is not None and size != native:
        raise CliError(f"{name} takes {native}x{native} inputs only (its position embeddings are fixed); "
                       f"drop --size {size}")
    last_block = list(model.encoder.layers.named_children())[-1][0]
    return f"encoder.layers.{last_block}.ln_1", "vit", native


def read_state_dict(path: str) -> Dict[str, Tensor]:
    """The tensors of a state_dict file, read with ``weights_only=True`` (no code runs).

    Raises
    ------
    CliError
        Missing file, a file that pickles objects (a whole model: use it as ``--model``), a
        TorchScript archive, or anything that is not a mapping of names to tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise CliError(f"weights file not found: {path}")
    try:
        state: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported to the user
        text = str(exc)
        if "TorchScript" in text:
            raise CliError(f"{path} is a TorchScript archive, not a state_dict; save model.state_dict() "
                           "of the eager model and pass that file") from None
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found or "weights_only" in text or "Weights only" in text:
            what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
            raise CliError(
                f"{path} holds {what}, not a state_dict: pass a whole saved model as --model {path} "
                "without --weights (only files you trust), or save model.state_dict() instead"
            ) from None
        raise CliError(f"cannot read weights file {path}: {one_line(exc) or type(exc).__name__}") from None
    if isinstance(state, Mapping):
        for key in ("state_dict", "model_state_dict"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CliError(f"{path} holds a {type(state).__name__}, not a state_dict (a mapping of parameter "
                       "names to tensors); save model.state_dict()")
    state = dict(state)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel / DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, arch: str, state: Dict[str, Tensor], path: str) -> None:
    """``model.load_state_dict(state)``, or a one-line error saying what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    problems = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", shapes)):
        if keys:
            problems.append(f"{len(keys)} key(s) {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
    if problems:
        raise CliError(f"{path} does not fit {arch}: {'; '.join(problems)}. Pass the architecture the weights "
                       "were saved from")
    model.load_state_dict(state)


def load_model_file(path: Path, weights: Optional[str], size: Optional[int], preprocessing: str) -> LoadedModel:
    """A whole ``nn.Module`` saved with ``torch.save`` (unpickled: only load files you trust)."""
    if weights is not None:
        raise CliError("--weights applies to torchvision architectures; a model file has its own")
    model: Any = None
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript archive.*")
        try:  # a torch.save'd module (torch.load dispatches TorchScript archives to torch.jit.load)
            model = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - try the next format
            errors.append(f"torch.load: {one_line(exc) or type(exc).__name__}")
        if model is None:
            try:
                model = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # noqa: BLE001 - reported to the user
                errors.append(f"TorchScript: {one_line(exc) or type(exc).__name__}")
    if model is None:
        raise CliError(f"cannot load a model from {path} ({'; '.join(errors)})")
    if isinstance(model, torch.jit.ScriptModule):
        raise CliError(
            f"{path} is a TorchScript model: TorchScript modules do not support the forward hooks "
            "that CAM methods need. Save the eager model instead: torch.save(model, path) "
            "(loaded here with weights_only=False; only load files you trust)."
        )
    if not isinstance(model, nn.Module):
        raise CliError(
            f"{path} holds a {type(model).__name__}, not a model; save the whole module "
            "(torch.save(model, path)), or give --model ARCH --weights FILE for a state_dict"
        )
    model.eval()
    default_layer, token_layout, size = transformer_settings(model, path.name, size)
    channels = first_conv_in_channels(model)
    mode = preprocessing
    if mode == "auto":
        mode = "fashion-mnist" if channels == 1 else "imagenet"
    default_size = 28 if mode == "fashion-mnist" else 224
    prep = make_preprocessing(mode, 1 if channels == 1 else 3, size or default_size)
    return LoadedModel(model, path.name, prep, default_layer, None, token_layout)


def check_forward(lm: LoadedModel) -> None:
    """One forward pass on a zero input of the preprocessing's shape; a clear error if it fails.

    Sets ``lm.num_classes``.
    """
    p = lm.preprocessing
    shape = (1, p.channels, p.size, p.size)
    try:
        with torch.no_grad():
            out = lm.model(torch.zeros(shape))
    except Exception as exc:  # noqa: BLE001 - reported to the user
        raise CliError(
            f"{lm.name} does not run on a {'x'.join(map(str, shape))} input ({type(exc).__name__}: "
            f"{one_line(exc)}); choose another --size or --preprocessing"
        ) from None
    if not isinstance(out, Tensor) or out.dim() != 2:
        what = f"a {tuple(out.shape)} tensor" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise CliError(f"{lm.name} returns {what}, not (N, classes) logits; the command line explains "
                       "classifiers (wrap other models in Python, see the docs)")
    lm.num_classes = int(out.shape[1])
