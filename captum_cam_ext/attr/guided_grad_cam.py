"""Guided Grad-CAM weights: Grad-CAM whose layer gradients come back through guided ReLUs."""

from __future__ import annotations

from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.registry import register_method


@register_method
class LayerGuidedGradCam(LayerGradCam):
    r"""Grad-CAM whose layer gradients are computed with the guided rule at every ReLU.

    The channel weights are :math:`w_k = \frac{1}{hw}\sum_p \partial^G y^c / \partial A_k(p)`,
    where :math:`\partial^G` backpropagates with the guided rule at the ``nn.ReLU`` /
    ``nn.ReLU6`` modules between the output and the layer (:func:`guided_relus`). It is
    :class:`LayerGradCam` with ``backward_rule="guided"`` as the default of :meth:`attribute` and
    :meth:`compute`; ``backward_rule="standard"`` gives plain Grad-CAM back.

    This is *not* Captum's ``GuidedGradCam`` (Grad-CAM map times the guided-backprop input
    gradient); here the guided rule changes the CAM weights only, and the result is a CAM at the
    layer's resolution.

    Examples
    --------
    >>> cam = LayerGuidedGradCam(model, model.layer4)          # doctest: +SKIP
    >>> maps = cam.attribute(images, target=3, relu_attributions=True)  # doctest: +SKIP
    """

    name = "guided_gradcam"
    default_backward_rule = "guided"
