"""A new CAM in 20 lines: register it, and MultiCam, evaluate and the command line know it."""

import torch
import torchvision

from captum_cam_ext import GradientCamAttribution, MultiCam, register_method
from captum_cam_ext.registry import unregister_method


@register_method(aliases=("max-grad-cam",))
class LayerMaxGradCam(GradientCamAttribution):
    """Channel weights: the largest gradient of each channel, ``w_k = max_p dy^c/dA_k(p)``."""

    name = "maxgradcam"

    def cam_weights(self, activations, gradients):  # (N, K, h, w) each -> (N, K, 1, 1)
        return gradients.amax(dim=(2, 3), keepdim=True)


model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
images = torch.randn(2, 3, 64, 64)
maps = LayerMaxGradCam(model, model.layer4).attribute(images, target=[3, 7])  # (2, 1, 2, 2)
both = MultiCam(model, model.layer4, methods=["gradcam", "maxgradcam"]).attribute(images, target=[3, 7])
assert torch.allclose(both["maxgradcam"], maps)
# the command line offers it too:  captum-cam-ext explain photo.jpg --method maxgradcam
unregister_method("maxgradcam")  # (only so that this example can run twice in one process)
