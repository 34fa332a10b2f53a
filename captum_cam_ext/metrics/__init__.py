"""Faithfulness metrics for saliency maps (captum.metrics conventions).

Each metric module defines ``__all__``; to add one, append an import line and its names below.
Modules that :func:`~captum_cam_ext.evaluation.evaluate` can report register their metrics in
:mod:`captum_cam_ext.metrics.registry` when imported (importing this package registers them all).
"""

from captum_cam_ext.metrics.alignment import gradient_alignment
from captum_cam_ext.metrics.causal import (
    CausalResult,
    deletion_auc,
    gaussian_blur,
    insertion_auc,
    normalized_auc,
    perturbation_counts,
)
from captum_cam_ext.metrics.confidence import (
    ConfidenceResult,
    average_drop,
    average_gain,
    average_increase,
    confidence_metrics,
)
from captum_cam_ext.metrics.leakage import (
    band_mask,
    leakage_metrics,
    unseen_any_positive,
    unseen_positive_mass,
    unseen_seen_mean_ratio,
    wall_ratio,
)

__all__ = [
    "ConfidenceResult",
    "confidence_metrics",
    "average_drop",
    "average_increase",
    "average_gain",
    "CausalResult",
    "insertion_auc",
    "deletion_auc",
    "gaussian_blur",
    "perturbation_counts",
    "normalized_auc",
    "band_mask",
    "wall_ratio",
    "unseen_positive_mass",
    "unseen_any_positive",
    "unseen_seen_mean_ratio",
    "leakage_metrics",
    "gradient_alignment",
]
