"""Shapley-CAM (Cai et al., 2025): gradient minus half the Hessian-vector product."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import torch
from torch import Tensor

from captum_cam_ext._engine import GradientCamAttribution, LayerRecord, spatial_dims
from captum_cam_ext.registry import register_method


@register_method(aliases=("shapley",))
class LayerShapleyCam(GradientCamAttribution):
    r"""Shapley-CAM: channel weights from a second-order expansion of the target score.

    .. math::

        w_k = \frac{1}{|S|} \sum_p \Big(g - \tfrac{1}{2} H A\Big)_k(p), \qquad
        g = \frac{\partial y^c}{\partial A}, \quad H = \frac{\partial^2 y^c}{\partial A^2},

    :math:`L = \sum_k w_k A_k`. Cai et al. read the CAM weight of a channel as its Shapley value
    in a second-order Taylor expansion of :math:`y^c` around 0; :math:`HA` is one
    Hessian-vector product (a double backward), so Shapley-CAM costs about two Grad-CAMs. For
    a network that is piecewise linear between the layer and the score (ReLU layers and logits)
    the Hessian is zero almost everywhere and Shapley-CAM equals Grad-CAM; the paper pairs it with
    a softmax-based target (:class:`captum_cam_ext.targets.ClassifierOutputReST`).

    Reference: H. Cai, Y. Yang, Y. Tang, Z. Sun, W. Zhang, "Shapley value-based class activation
    mapping for improving explainability of neural networks", arXiv:2501.06261 (2025);
    pytorch-grad-cam 1.5.7 ``ShapleyCAM``.

    Shapes as :class:`~captum_cam_ext.CamAttribution`: activations and gradients ``(N, K, *S)``,
    weights ``(N, K, 1, ...)``, map ``(N, 1, *S)``. The record keeps the backward graph
    (``needs_graph``), so the memory is about that of a double backward; a ``DataParallel``
    model (``device_ids``) is not supported.
    """

    name = "shapleycam"
    needs_graph = True
    #: The Hessian-vector product needs the backward graph, which MultiCam's shared pass does not keep.
    method_kind = "composite"

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        if len(record.roots) != len(record.activations):
            raise ValueError("Shapley-CAM needs one graph root per layer; device_ids (DataParallel) is not supported")
        out = []
        for t in range(len(record.targets)):
            row = []
            for u, (a, g) in enumerate(zip(record.activations, record.gradients[t])):
                root, grad = record.roots[u], record.graph_gradients[t][u]
                hvp: Optional[Tensor] = None
                if grad.requires_grad:
                    (hvp,) = torch.autograd.grad(
                        grad, root, grad_outputs=root.detach(), retain_graph=True, allow_unused=True
                    )
                layer = self.layers[record.units[u][0]]
                h = torch.zeros_like(a) if hvp is None else self.to_maps(hvp.detach(), layer).to(a.dtype)
                row.append((g - 0.5 * h).mean(dim=spatial_dims(a), keepdim=True))
            out.append(row)
        return out
