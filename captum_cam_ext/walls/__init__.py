"""See-through-walls: blind models, stacked datasets, and the leakage audit of any model.

* Blind models: :class:`SplitTrunkBlindNet`, :class:`DenseWallNet` and the paper-geometry
  :func:`paper_wall_net` (:mod:`~captum_cam_ext.walls.models`); a pretrained ImageNet network made
  blind without training, :func:`blind_efficientnet_lite0` (:mod:`~captum_cam_ext.walls.pretrained`).
* Stacked datasets: Fashion-MNIST pairs and the bundled photos (:mod:`~captum_cam_ext.walls.datasets`).
* :func:`audit_model`: prove a model is blind to a region (:func:`check_blind`), then measure every
  CAM's saliency there (:mod:`~captum_cam_ext.walls.model_audit`); :func:`run_audit`: the
  Fashion-MNIST audit with a trained blind model (:mod:`~captum_cam_ext.walls.audit`).
"""

from captum_cam_ext.walls.audit import (
    DATASETS,
    MODEL_KINDS,
    audit_markdown,
    audit_pairs,
    default_methods,
    plot_audit_maps,
    run_audit,
    train_blind_model,
)
from captum_cam_ext.walls.blindness import (
    BlindnessReport,
    NotBlindError,
    check_blind,
    hidden_mask,
    parse_rows,
)
from captum_cam_ext.walls.cache import walls_cache_dir
from captum_cam_ext.walls.datasets import (
    StackedFashionMNIST,
    StackedPairs,
    photo_tiles,
    stack_pairs,
    stacked_fashion_mnist,
    stacked_photos,
)
from captum_cam_ext.walls.model_audit import (
    LEAKAGE_METRICS,
    WallAudit,
    audit_model,
    measure_leakage,
)
from captum_cam_ext.walls.models import (
    PAPER_HIDDEN_ROWS,
    DenseWallNet,
    MaskedLinear,
    ReceptiveField,
    SplitTrunkBlindNet,
    invisible_band_start,
    paper_hidden_rows,
    paper_wall_net,
    receptive_field,
    vgg_trunk,
    visible_rows_for_band,
)
from captum_cam_ext.walls.pretrained import (
    EFFICIENTNET_SPLIT_ROW,
    TopRowsClassifier,
    blind_efficientnet_lite0,
)

__all__ = [
    "BlindnessReport",
    "DATASETS",
    "DenseWallNet",
    "EFFICIENTNET_SPLIT_ROW",
    "LEAKAGE_METRICS",
    "MODEL_KINDS",
    "MaskedLinear",
    "NotBlindError",
    "PAPER_HIDDEN_ROWS",
    "ReceptiveField",
    "SplitTrunkBlindNet",
    "StackedFashionMNIST",
    "StackedPairs",
    "TopRowsClassifier",
    "WallAudit",
    "audit_markdown",
    "audit_model",
    "audit_pairs",
    "blind_efficientnet_lite0",
    "check_blind",
    "default_methods",
    "hidden_mask",
    "invisible_band_start",
    "measure_leakage",
    "paper_hidden_rows",
    "paper_wall_net",
    "parse_rows",
    "photo_tiles",
    "plot_audit_maps",
    "receptive_field",
    "run_audit",
    "stack_pairs",
    "stacked_fashion_mnist",
    "stacked_photos",
    "train_blind_model",
    "vgg_trunk",
    "visible_rows_for_band",
    "walls_cache_dir",
]
