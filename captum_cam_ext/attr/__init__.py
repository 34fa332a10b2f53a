"""One module per CAM method; each is mostly a weighting function over the shared engine."""

from captum_cam_ext.attr.ablation_cam import LayerAblationCam
from captum_cam_ext.attr.eigen_cam import LayerEigenCam, LayerEigenGradCam
from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.attr.grad_cam_pp import LayerGradCamPlusPlus
from captum_cam_ext.attr.hires_cam import LayerHiResCam
from captum_cam_ext.attr.layer_cam import LayerCam
from captum_cam_ext.attr.multi_cam import MULTI_CAM_METHODS, MultiCam
from captum_cam_ext.attr.score_cam import LayerScoreCam
from captum_cam_ext.attr.xgrad_cam import LayerXGradCam

__all__ = [
    "LayerAblationCam",
    "LayerCam",
    "LayerEigenCam",
    "LayerEigenGradCam",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerHiResCam",
    "LayerScoreCam",
    "LayerXGradCam",
    "MULTI_CAM_METHODS",
    "MultiCam",
]
