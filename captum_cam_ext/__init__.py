"""captum-cam-ext: class-activation-map methods as drop-in Captum attribution classes."""

from captum_cam_ext import registry
from captum_cam_ext._engine import (
    CamAttribution,
    CamDetails,
    GradientCamAttribution,
    normalize_maps,
    select_target_scores,
    upsample_maps,
)
from captum_cam_ext.attr import (
    LayerAblationCam,
    LayerCam,
    LayerConceptorCam,
    LayerEigenCam,
    LayerEigenGradCam,
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerGuidedGradCam,
    LayerHiResCam,
    LayerScoreCam,
    LayerXGradCam,
    MultiCam,
    PerturbationCamAttribution,
)
from captum_cam_ext.registry import methods, register_method
from captum_cam_ext.theory import GradCamAtInitAnalyzer, masked_cnn
from captum_cam_ext.training import InterpretableGradientLoss
from captum_cam_ext.walls import DenseWallNet, SplitTrunkBlindNet

__version__ = "0.1.0"

__all__ = [
    "CamAttribution",
    "CamDetails",
    "GradientCamAttribution",
    "DenseWallNet",
    "GradCamAtInitAnalyzer",
    "InterpretableGradientLoss",
    "LayerAblationCam",
    "LayerCam",
    "LayerConceptorCam",
    "LayerGuidedGradCam",
    "LayerEigenCam",
    "LayerEigenGradCam",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerHiResCam",
    "LayerScoreCam",
    "LayerXGradCam",
    "MultiCam",
    "PerturbationCamAttribution",
    "SplitTrunkBlindNet",
    "masked_cnn",
    "methods",
    "register_method",
    "registry",
    "normalize_maps",
    "select_target_scores",
    "upsample_maps",
]

# issue 16: the methods and targets of pytorch-grad-cam and torchcam (appended)
from captum_cam_ext import targets  # noqa: E402
from captum_cam_ext.attr import (  # noqa: E402
    DeepFeatureFactorization,
    FullGrad,
    LayerFem,
    LayerFinerCam,
    LayerGapCam,
    LayerGradCamElementWise,
    LayerIsCam,
    LayerKpcaCam,
    LayerLeGrad,
    LayerRandomCam,
    LayerRefineCam,
    LayerShapleyCam,
    LayerSmoothGradCamPlusPlus,
    LayerSsCam,
)

__all__ += [
    "LayerFem",
    "LayerFinerCam",
    "LayerGapCam",
    "LayerGradCamElementWise",
    "LayerKpcaCam",
    "LayerRandomCam",
    "LayerShapleyCam",
    "LayerSmoothGradCamPlusPlus",
    "LayerSsCam",
    "LayerIsCam",
    "FullGrad",
    "LayerLeGrad",
    "LayerRefineCam",
    "DeepFeatureFactorization",
    "targets",
]
