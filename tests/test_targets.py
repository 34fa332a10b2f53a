"""The ready targets (captum_cam_ext.targets) equal pytorch-grad-cam's, value for value and CAM for CAM,
on classification, segmentation (FCN-ResNet50, DeepLabV3-MobileNetV3), detection (Faster R-CNN
MobileNetV3-FPN), embeddings and a ViT (all torchvision, random weights, small inputs)."""

from __future__ import annotations

from typing import Dict

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST as RefReST
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget as RefSoftmax
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget as RefTarget
from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget as RefBox
from pytorch_grad_cam.utils.model_targets import FinerWeightedTarget as RefFiner
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget as RefSeg
from torch import nn

import captum_cam_ext as cce
from captum_cam_ext.reshape import vit_reshape_transform
from captum_cam_ext.targets import (
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FasterRCNNBoxScoreTarget,
    FinerWeightedTarget,
    SemanticSegmentationTarget,
    SimilarityToConceptTarget,
)

ATOL, RTOL = 2e-4, 1e-3


def _pgc_map(model, layer, x, targets, **kw):
    with GradCAM(model=model, target_layers=[layer], **kw) as ref:
        return torch.from_numpy(np.asarray(ref(input_tensor=x, targets=targets)))


def _our_map(model, layer, x, target, **kw):
    cam = cce.LayerGradCam(model, layer, **kw)
    return cam.attribute(x, target=target, relu_attributions=True, upsample_to_input=True, normalize=True)[:, 0]


# ------------------------------------------------------------------------------------ classification


def test_classifier_targets_equal_pytorch_grad_cams_per_example():
    torch.manual_seed(0)
    out = torch.randn(4, 6)
    cats = [0, 5, 2, 2]
    pairs = [(ClassifierOutputTarget, RefTarget), (ClassifierOutputSoftmaxTarget, RefSoftmax),
             (ClassifierOutputReST, RefReST)]  # fmt: skip
    for ours, ref in pairs:
        expected = torch.stack([ref(c)(o) for c, o in zip(cats, out)]).reshape(4)
        torch.testing.assert_close(ours(cats)(out), expected)  # one class per example
        torch.testing.assert_close(ours(3)(out), torch.stack([ref(3)(o) for o in out]).reshape(4))
        torch.testing.assert_close(ours(3)(out[0]), ref(3)(out[0]).reshape(()))  # one example, as theirs
    finer = FinerWeightedTarget(1, [2, 4], alpha=0.7)
    torch.testing.assert_close(finer(out), torch.stack([RefFiner(1, [2, 4], 0.7)(o) for o in out]))
    with pytest.raises(ValueError, match="out of range"):
        ClassifierOutputTarget(6)(out)
    with pytest.raises(ValueError, match="4 examples"):
        ClassifierOutputTarget([1, 2])(out)


def test_similarity_to_concept_target_equals_the_pytorch_grad_cam_tutorials_and_explains_an_embedding():
    torch.manual_seed(1)
    embedder = torchvision.models.resnet18(num_classes=10).eval()
    embedder.fc = nn.Identity()  # (N, 512) embeddings
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        concept = embedder(x[:2]).mean(0)
    target = SimilarityToConceptTarget(concept)

    class RefSimilarity:  # pytorch-grad-cam's tutorial target (not part of its package)
        def __call__(self, model_output):
            return torch.nn.CosineSimilarity(dim=0)(model_output, concept)

    with torch.no_grad():
        emb = embedder(x)
    torch.testing.assert_close(target(emb), torch.stack([RefSimilarity()(e) for e in emb]))
    expected = _pgc_map(embedder, embedder.layer4, x, [RefSimilarity() for _ in range(3)])
    torch.testing.assert_close(_our_map(embedder, embedder.layer4, x, target), expected, atol=ATOL, rtol=RTOL)


# -------------------------------------------------------------------------------------- segmentation


class OutOnly(nn.Module):
    """pytorch-grad-cam's segmentation tutorial wrapper: the "out" tensor of the dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


def _segmenter(arch: str) -> nn.Module:
    torch.manual_seed(2)
    fn = getattr(torchvision.models.segmentation, arch)
    return fn(weights=None, weights_backbone=None, num_classes=5, aux_loss=False).eval()


@pytest.mark.parametrize("arch", ["fcn_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_semantic_segmentation_target_on_torchvision_segmenters(arch):
    seg = _segmenter(arch)
    layer = dict(seg.named_modules())["backbone.layer4" if arch == "fcn_resnet50" else "backbone.16"]
    torch.manual_seed(3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = seg(x)["out"]
    category = 2
    mask = (out.argmax(1)[0] == category).float().numpy()  # the pixels of the class in image 0
    if mask.sum() == 0:
        mask[:32] = 1.0
    target = SemanticSegmentationTarget(category, mask)
    torch.testing.assert_close(target({"out": out}), torch.stack([RefSeg(category, mask)(o) for o in out]))
    expected = _pgc_map(OutOnly(seg), layer, x, [RefSeg(category, mask) for _ in range(2)])
    assert expected.flatten(1).amax(1).min() > 0.5
    got = _our_map(seg, layer, x, target)  # the dict output needs no wrapper
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------------------- detection


def _detector() -> nn.Module:
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn

    torch.manual_seed(4)
    det = fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5, min_size=128, max_size=128,
        box_score_thresh=0.0, box_detections_per_img=10,
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random-init heads give every box the same score: make them differ
        for lin in (det.roi_heads.box_predictor.cls_score, det.roi_heads.box_predictor.bbox_pred):
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))
            lin.weight.mul_(20)
    return det


@pytest.fixture(scope="module")
def detector():
    return _detector()


def test_faster_rcnn_box_score_target_equals_pytorch_grad_cams_and_its_cam_too(detector):
    torch.manual_seed(5)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        dets = detector(x)
    boxes = [d["boxes"][:3].numpy() for d in dets]
    labels = [d["labels"][:3].tolist() for d in dets]
    target = FasterRCNNBoxScoreTarget(labels, boxes)  # per image reference boxes
    with torch.no_grad():
        again = detector(x)
    expected_scores = torch.cat([RefBox(lab, b)(d) for lab, b, d in zip(labels, boxes, again)])
    torch.testing.assert_close(target(again), expected_scores)
    assert bool((expected_scores > 0).all())  # every image matched its own detections
    torch.testing.assert_close(FasterRCNNBoxScoreTarget(labels[0], boxes[0])(again[0]), expected_scores[:1])
    layer = dict(detector.named_modules())["backbone.body.16"]
    expected = _pgc_map(detector, layer, x, [RefBox(lab, b) for lab, b in zip(labels, boxes)])
    got = _our_map(detector, layer, x, target)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


def test_detections_depend_on_the_backbone_through_both_boxes_and_scores(detector):
    """What the box-score target can explain: the gradient of the matched IoUs (box regression)
    and of the matched class scores reaches the backbone; the proposals do not carry gradient
    (torchvision detaches them), so the path is the RoI features of the proposals."""
    torch.manual_seed(6)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = detector(x)[0]
    box, label = ref["boxes"][:1] + torch.tensor([2.0, -1.0, 1.0, 2.0]), int(ref["labels"][0])  # IoU < 1
    layer = dict(detector.named_modules())["backbone.body.16"]
    seen: Dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda m, i, o: seen.setdefault("a", o))
    try:
        out = detector(x)[0]
    finally:
        handle.remove()
    ious = cce.targets.box_iou(box, out["boxes"])[0]
    best = int(ious.detach().argmax())
    assert int(out["labels"][best]) == label
    g_box = torch.autograd.grad(ious[best], seen["a"], retain_graph=True)[0]
    g_score = torch.autograd.grad(out["scores"][best], seen["a"])[0]
    assert float(g_box.abs().sum()) > 0 and float(g_score.abs().sum()) > 0
    assert out["boxes"].grad_fn is not None


# ----------------------------------------------------------------------------------------------- ViT


def test_vit_b_16_grad_cam_with_the_token_reshape_equals_pytorch_grad_cams():
    torch.manual_seed(7)
    vit = torchvision.models.vit_b_16(weights=None, image_size=64).eval()  # a 4x4 patch grid
    nn.init.normal_(vit.heads.head.weight, std=0.05)  # torchvision initialises the head to zero
    x = torch.randn(2, 3, 64, 64)
    layer = vit.encoder.layers[-1].ln_1
    expected = _pgc_map(vit, layer, x, [RefTarget(3), RefTarget(8)], reshape_transform=vit_reshape_transform)
    got = _our_map(vit, layer, x, ClassifierOutputTarget([3, 8]), reshape_transform=vit_reshape_transform)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
