"""See-through-walls audit: blind models, stacked Fashion-MNIST datasets, the leakage audit."""

from captum_cam_ext.walls.audit import (
    audit_markdown,
    audit_model,
    default_methods,
    plot_audit_maps,
    run_audit,
    train_blind_model,
)
from captum_cam_ext.walls.datasets import (
    StackedFashionMNIST,
    StackedPairs,
    stack_pairs,
    stacked_fashion_mnist,
)
from captum_cam_ext.walls.models import (
    DenseWallNet,
    MaskedLinear,
    ReceptiveField,
    SplitTrunkBlindNet,
    invisible_band_start,
    receptive_field,
    vgg_trunk,
    visible_rows_for_band,
)

__all__ = [
    "StackedFashionMNIST",
    "StackedPairs",
    "audit_markdown",
    "audit_model",
    "default_methods",
    "plot_audit_maps",
    "run_audit",
    "stack_pairs",
    "stacked_fashion_mnist",
    "train_blind_model",
    "DenseWallNet",
    "MaskedLinear",
    "ReceptiveField",
    "SplitTrunkBlindNet",
    "invisible_band_start",
    "receptive_field",
    "vgg_trunk",
    "visible_rows_for_band",
]
