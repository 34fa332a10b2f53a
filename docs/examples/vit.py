"""Grad-CAM on a vision transformer: tokens (N, 1 + 14*14, 768) mapped to a grid with reshape_transform."""

import torch
import torchvision

from captum_cam_ext import LayerGradCam
from captum_cam_ext.reshape import vit_reshape_transform

torch.manual_seed(0)
vit = torchvision.models.vit_b_16(weights=None, num_classes=10).eval()
images = torch.randn(1, 3, 224, 224)
# the last block's first LayerNorm, as pytorch-grad-cam's ViT example uses
layer = vit.encoder.layers[-1].ln_1
cam = LayerGradCam(vit, layer, reshape_transform=vit_reshape_transform)
maps = cam.attribute(images, target=3, relu_attributions=True)  # (1, 1, 14, 14)
up = cam.attribute(images, target=3, relu_attributions=True, upsample_to_input=True, normalize=True)
assert maps.shape == (1, 1, 14, 14) and up.shape == (1, 1, 224, 224)
print("Grad-CAM map:", tuple(maps.shape), "upsampled:", tuple(up.shape))
