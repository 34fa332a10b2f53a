"""Training with the interpretable-gradient regularizer (Figueroa et al., VISAPP 2024)."""

from captum_cam_ext.training.loss import (
    ERRORS,
    InterpretableGradientLoss,
    LossTerms,
    gradient_error,
    input_gradients,
    per_example_cosine,
)

__all__ = [
    "ERRORS",
    "InterpretableGradientLoss",
    "LossTerms",
    "gradient_error",
    "input_gradients",
    "per_example_cosine",
]
