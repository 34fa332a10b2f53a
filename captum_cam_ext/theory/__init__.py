"""Theory of the see-through-walls effect: the masked CNN at initialization.

* :func:`masked_cnn` / :class:`MaskedCNN`: the model (conv -> ReLU (CAM layer) -> head on the top
  feature rows); :class:`BatchedMaskedCNN`: many sampled networks evaluated at once.
* :class:`GradCamAtInitAnalyzer`: closed forms (``expected_map``, ``positive_probability``,
  ``expected_leak``, ``conditional_expected_map``) and ``monte_carlo`` with the package's own CAMs.
* :func:`theory_sweep`, :func:`sweep_markdown`, :func:`plot_sweep`, :func:`theory_report`: theory
  vs Monte-Carlo over a sweep of ``V`` and of the mask size.
"""

from captum_cam_ext.theory.analyzer import (
    CLOSED_FORM_METHODS,
    GradCamAtInitAnalyzer,
    MonteCarloResult,
    chi_mean_binomial,
)
from captum_cam_ext.theory.masked_cnn import BatchedMaskedCNN, MaskedCNN, feature_grid, masked_cnn
from captum_cam_ext.theory.report import (
    methods_at_init,
    methods_markdown,
    plot_sweep,
    sweep_markdown,
    theory_report,
    theory_sweep,
)

__all__ = [
    "BatchedMaskedCNN",
    "CLOSED_FORM_METHODS",
    "GradCamAtInitAnalyzer",
    "MaskedCNN",
    "MonteCarloResult",
    "chi_mean_binomial",
    "feature_grid",
    "masked_cnn",
    "methods_at_init",
    "methods_markdown",
    "plot_sweep",
    "sweep_markdown",
    "theory_report",
    "theory_sweep",
]
