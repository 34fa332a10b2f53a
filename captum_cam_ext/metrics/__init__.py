"""Faithfulness metrics for saliency maps (captum.metrics conventions).

Each metric module defines ``__all__``; to add one, append an import line and its names below.
"""

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
]
