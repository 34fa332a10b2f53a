"""captum-cam-ext: class-activation-map methods as drop-in Captum attribution classes."""

from captum_cam_ext._engine import (
    CamAttribution,
    CamDetails,
    normalize_maps,
    select_target_scores,
    upsample_maps,
)
from captum_cam_ext.attr import (
    MULTI_CAM_METHODS,
    LayerAblationCam,
    LayerCam,
    LayerEigenCam,
    LayerEigenGradCam,
    LayerGradCam,
    LayerGradCamPlusPlus,
    LayerHiResCam,
    LayerScoreCam,
    LayerXGradCam,
    MultiCam,
)
from captum_cam_ext.attr.conceptor_cam import LayerConceptorCam
from captum_cam_ext.attr.guided import LayerGuidedGradCam

__version__ = "0.1.0"

__all__ = [
    "CamAttribution",
    "CamDetails",
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
    "MULTI_CAM_METHODS",
    "MultiCam",
    "normalize_maps",
    "select_target_scores",
    "upsample_maps",
]
