"""The ``captum-cam-ext`` command (also ``python -m captum_cam_ext``).

Subcommands
-----------
``explain IMAGE_OR_FOLDER``
    CAM overlays (PNG), maps (``.npy`` upsampled to the model input, and one ``maps.pt`` with the
    layer-resolution maps) for one image or every image of a folder (:mod:`.explain`).
``evaluate``
    The package's CAM metrics (Average Drop / Increase / Gain, optionally deletion / insertion
    AUC) over an image folder or Fashion-MNIST; writes ``results.md`` and ``results.json``
    (:mod:`.evaluate`).
``walls audit``
    The see-through-walls audit (:mod:`captum_cam_ext.walls`).
``bench``
    A quick built-in timing of the CAM methods, or ``--script`` to run
    ``benchmarks/cam_speed.py`` (:mod:`.bench`).

Models (``--model``, :mod:`.models`): a torchvision classification architecture by name
(``resnet18``, ``vit_b_16``, ...; ``--weights FILE`` loads a local state_dict, otherwise the weights
are random and the command says so), ``efficientnet_lite0`` (bundled ImageNet weights), or the path
of a ``torch.save(model)`` file (TorchScript files are refused: no forward hooks). Layers
(``--layer``, :mod:`.layers`) are dotted module names (``layer4``, ``features.7``, ``_blocks.15``);
``--reshape vit`` (automatic for torchvision ViTs) maps token outputs to a grid. Methods
(``--method``) are the registered ones (:func:`captum_cam_ext.registry.methods`). Preprocessing
(:mod:`.preprocessing`) is stated in the output.

Errors the user can fix (missing file, unknown layer / method / model, unreadable image, weights
that do not fit, an input size the model cannot take, ``--out`` naming a file) print
``error: ...`` on one line and exit with status 2, without a traceback.
"""

from captum_cam_ext.cli._common import CliError
from captum_cam_ext.cli.images import list_images, read_image
from captum_cam_ext.cli.layers import candidate_layers, default_layer_name, resolve_layer
from captum_cam_ext.cli.methods import resolve_methods
from captum_cam_ext.cli.models import LoadedModel, load_model
from captum_cam_ext.cli.parser import build_parser, main

__all__ = [
    "CliError",
    "LoadedModel",
    "build_parser",
    "candidate_layers",
    "default_layer_name",
    "list_images",
    "load_model",
    "main",
    "read_image",
    "resolve_layer",
    "resolve_methods",
]
