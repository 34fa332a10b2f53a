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
from captum_cam_ext.metrics.controls import (
    AreaHistogram,
    area_controls,
    blur_control,
    constant_control,
    maps_to_masks,
    mask_area,
    power_control,
    random_control,
    solve_power,
)
from captum_cam_ext.metrics.leakage import (
    band_mask,
    leakage_metrics,
    unseen_any_positive,
    unseen_positive_mass,
    unseen_seen_mean_ratio,
    wall_ratio,
)
from captum_cam_ext.metrics.road import RoadResult, impute_linear, road, road_masks
from captum_cam_ext.metrics.sanity import (
    DataIndependenceResult,
    RandomizationResult,
    data_independence,
    parameter_randomization,
    randomizable_layers,
    spearman_correlation,
    ssim,
)
from captum_cam_ext.metrics.statistics import (
    PairedComparison,
    bootstrap_ci,
    compare_per_example,
    comparisons_markdown,
    paired_comparison,
    win_rate,
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
    "mask_area",
    "maps_to_masks",
    "power_control",
    "solve_power",
    "blur_control",
    "constant_control",
    "random_control",
    "area_controls",
    "AreaHistogram",
    "RoadResult",
    "road",
    "road_masks",
    "impute_linear",
    "RandomizationResult",
    "DataIndependenceResult",
    "parameter_randomization",
    "data_independence",
    "randomizable_layers",
    "spearman_correlation",
    "ssim",
    "PairedComparison",
    "paired_comparison",
    "bootstrap_ci",
    "win_rate",
    "compare_per_example",
    "comparisons_markdown",
]
