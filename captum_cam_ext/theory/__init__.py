"""Theory of the see-through-walls effect: the masked CNN at initialization.

* :func:`masked_cnn` / :class:`MaskedCNN`: the model (conv -> ReLU (CAM layer) -> head on the top
  feature rows); :class:`BatchedMaskedCNN`: many sampled networks evaluated at once
  (:mod:`~captum_cam_ext.theory.masked_cnn`).
* :class:`MaskedCnnClosedForm` (:mod:`~captum_cam_ext.theory.closed_form`): closed forms
  (``expected_map``, ``positive_probability``, ``expected_leak``, ``conditional_expected_map``).
* :mod:`~captum_cam_ext.theory.monte_carlo`: the Monte-Carlo reference with the package's own CAMs.
* :class:`GradCamAtInitAnalyzer`: both in one object (``monte_carlo`` and the closed forms).
* :func:`theory_sweep`, :func:`sweep_markdown`, :func:`plot_sweep`, :func:`theory_report`: theory
  vs Monte-Carlo over a sweep of ``V`` and of the mask size (:mod:`~captum_cam_ext.theory.report`).
"""

from captum_cam_ext.theory.analyzer import GradCamAtInitAnalyzer
from captum_cam_ext.theory.closed_form import (
    CLOSED_FORM_METHODS,
    CONDITIONAL_METHODS,
    MaskedCnnClosedForm,
    chi_mean_binomial,
    method_key,
)
from captum_cam_ext.theory.masked_cnn import (
    BatchedMaskedCNN,
    MaskedCNN,
    check_config,
    feature_grid,
    masked_cnn,
)
from captum_cam_ext.theory.monte_carlo import MonteCarloResult, run_monte_carlo, sample_networks
from captum_cam_ext.theory.report import (
    methods_at_init,
    methods_markdown,
    plot_sweep,
    registered_cams,
    sweep_markdown,
    theory_report,
    theory_sweep,
)

__all__ = [
    "BatchedMaskedCNN",
    "CLOSED_FORM_METHODS",
    "CONDITIONAL_METHODS",
    "GradCamAtInitAnalyzer",
    "MaskedCNN",
    "MaskedCnnClosedForm",
    "MonteCarloResult",
    "check_config",
    "chi_mean_binomial",
    "feature_grid",
    "masked_cnn",
    "method_key",
    "methods_at_init",
    "methods_markdown",
    "plot_sweep",
    "registered_cams",
    "run_monte_carlo",
    "sample_networks",
    "sweep_markdown",
    "theory_report",
    "theory_sweep",
]
