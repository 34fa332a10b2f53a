"""Our CAM classes inside Captum's tools: NoiseTunnel, sensitivity_max, infidelity, visualize_image_attr."""

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402
import torchvision  # noqa: E402
from captum.attr import NoiseTunnel  # noqa: E402
from captum.attr import visualization as viz  # noqa: E402
from captum.metrics import infidelity, sensitivity_max  # noqa: E402

from captum_cam_ext import LayerGradCam  # noqa: E402

torch.manual_seed(0)
model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
cam = LayerGradCam(model, model.layer4)


def input_shaped(x, target):
    """The map upsampled to the input and repeated over its channels: what captum.metrics expect."""
    maps = cam.attribute(x, target=target, relu_attributions=True, upsample_to_input=True)  # (N, 1, H, W)
    return maps.expand_as(x).contiguous()  # (N, C, H, W)


def explain(inputs, target):  # captum.metrics pass a tuple of inputs and expect a tuple back
    (x,) = inputs if isinstance(inputs, tuple) else (inputs,)
    return (input_shaped(x, target),)


def perturb(inputs):
    noise = torch.randn_like(inputs) * 0.05
    return noise, inputs - noise


for batch in (1, 4):
    images = torch.randn(batch, 3, 64, 64)
    target = torch.tensor([3])  # one class for every example, as Captum broadcasts it
    smooth = NoiseTunnel(cam).attribute(images, nt_type="smoothgrad", nt_samples=4, stdevs=0.1, target=target)
    assert smooth.shape == (batch, 1, 2, 2)
    sens = sensitivity_max(explain, images, target=target, n_perturb_samples=3)
    infid = infidelity(model, perturb, images, input_shaped(images, target), target=target)
    assert sens.shape == infid.shape == (batch,)
    # Captum's visualisation takes an (H, W, C) numpy map
    attr = input_shaped(images[:1], target)[0].permute(1, 2, 0).detach().numpy()
    fig, _ = viz.visualize_image_attr(attr, method="heat_map", sign="positive", use_pyplot=False)
    print(f"batch {batch}: sensitivity {sens.mean():.4f}, infidelity {infid.mean():.4g}")
