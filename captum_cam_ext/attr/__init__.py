"""One module per CAM method; each is mostly a weighting function over the shared engine.

Importing this package registers every method in :mod:`captum_cam_ext.registry`, in the order
below (the order of ``captum_cam_ext.methods()``).
"""

# ruff: noqa: I001  (the import order is the registration order of the methods)
from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.attr.grad_cam_pp import LayerGradCamPlusPlus
from captum_cam_ext.attr.xgrad_cam import LayerXGradCam
from captum_cam_ext.attr.hires_cam import LayerHiResCam
from captum_cam_ext.attr.layer_cam import LayerCam
from captum_cam_ext.attr.eigen_cam import LayerEigenCam, LayerEigenGradCam
from captum_cam_ext.attr.score_cam import LayerScoreCam
from captum_cam_ext.attr.ablation_cam import LayerAblationCam
from captum_cam_ext.attr.guided_grad_cam import LayerGuidedGradCam
from captum_cam_ext.attr.conceptor_cam import LayerConceptorCam
from captum_cam_ext.attr.multi_cam import MultiCam
from captum_cam_ext.attr.perturbation import PerturbationCamAttribution

__all__ = [
    "LayerAblationCam",
    "LayerCam",
    "LayerConceptorCam",
    "LayerEigenCam",
    "LayerEigenGradCam",
    "LayerGradCam",
    "LayerGradCamPlusPlus",
    "LayerGuidedGradCam",
    "LayerHiResCam",
    "LayerScoreCam",
    "LayerXGradCam",
    "MultiCam",
    "PerturbationCamAttribution",
]

# issue 16: the methods of pytorch-grad-cam and torchcam (appended: existing order kept)
from captum_cam_ext.attr.grad_cam_elementwise import LayerGradCamElementWise
from captum_cam_ext.attr.shapley_cam import LayerShapleyCam
from captum_cam_ext.attr.finer_cam import LayerFinerCam
from captum_cam_ext.attr.fem import LayerFem
from captum_cam_ext.attr.kpca_cam import LayerKpcaCam
from captum_cam_ext.attr.gap_cam import LayerGapCam
from captum_cam_ext.attr.random_cam import LayerRandomCam
from captum_cam_ext.attr.smooth_grad_cam_pp import LayerSmoothGradCamPlusPlus
from captum_cam_ext.attr.ss_cam import LayerSsCam
from captum_cam_ext.attr.is_cam import LayerIsCam
from captum_cam_ext.attr.full_grad import FullGrad
from captum_cam_ext.attr.legrad import LayerLeGrad
from captum_cam_ext.attr.refine_cam import LayerRefineCam
from captum_cam_ext.attr.deep_feature_factorization import DeepFeatureFactorization

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
]
