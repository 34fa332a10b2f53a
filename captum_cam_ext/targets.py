"""Ready callable targets for the ``target=`` argument of every CAM.

A target is a callable mapping the model's output to **one score per example**, shape ``(N,)``;
the CAM explains that score. The output may be anything the model returns: class scores
``(N, C)``, a segmentation dict ``{"out": (N, C, H, W)}``, the list of per-image dicts of a
torchvision detector, embeddings ``(N, D)``.

Each target here computes the same value as the pytorch-grad-cam target of the same name (whose
targets take one example at a time): called on the whole batch, ours returns the stack of theirs.
Called on a single example (a 1-D class-score vector, a ``(C, H, W)`` segmentation map, one
detection dict), ours returns the scalar theirs returns, so they also work per example.

Examples
--------
>>> from captum_cam_ext import LayerGradCam
>>> from captum_cam_ext.targets import SemanticSegmentationTarget
>>> seg = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None).eval()  # doctest: +SKIP
>>> cam = LayerGradCam(seg, seg.backbone.layer4)                                       # doctest: +SKIP
>>> maps = cam.attribute(images, target=SemanticSegmentationTarget(15, person_mask))   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ClassifierOutputReST",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputTarget",
    "FasterRCNNBoxScoreTarget",
    "FinerWeightedTarget",
    "SemanticSegmentationTarget",
    "SimilarityToConceptTarget",
    "box_iou",
]

Category = Union[int, Sequence[int], Tensor]
ArrayLike = Union[Tensor, np.ndarray, Sequence[Any]]


def _check_category(category: Category, what: str) -> Union[int, Tensor]:
    if isinstance(category, bool):
        raise TypeError(f"{what}: category must be an int or one int per example, got bool")
    if isinstance(category, (int, np.integer)):
        return int(category)
    if isinstance(category, Tensor) or isinstance(category, (list, tuple, np.ndarray)):
        t = torch.as_tensor(category)
        if t.dim() != 1 or t.numel() == 0 or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"{what}: category must be an int or a 1-D sequence of ints (one per example), got {t}")
        return t.long()
    raise TypeError(f"{what}: category must be an int or a sequence of ints, got {type(category).__name__}")


def _pick(scores: Tensor, category: Union[int, Tensor], what: str) -> Tensor:
    """``scores[:, category]`` for a batch ``(N, C)`` (one class per example allowed), or
    ``scores[category]`` for one example ``(C,)``."""
    if not isinstance(scores, Tensor) or scores.dim() not in (1, 2):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{what} needs class scores (N, C) or (C,), got {shape}")
    n_classes = scores.shape[-1]
    if isinstance(category, int):
        if not -n_classes <= category < n_classes:
            raise ValueError(f"{what}: category {category} is out of range for {n_classes} classes")
        return scores[..., category]
    if scores.dim() == 1:
        raise ValueError(f"{what}: one category per example needs a batch (N, C), got a single example")
    if category.shape[0] != scores.shape[0]:
        raise ValueError(f"{what}: {category.shape[0]} categories for a batch of {scores.shape[0]} examples")
    if int(category.max()) >= n_classes or int(category.min()) < -n_classes:
        raise ValueError(f"{what}: categories {category.tolist()} are out of range for {n_classes} classes")
    return scores.gather(1, (category % n_classes).to(scores.device)[:, None]).squeeze(1)


class ClassifierOutputTarget:
    r"""The score of class ``category``: :math:`y_c`.

    Parameters
    ----------
    category : int or sequence of int
        One class for every example, or one per example (length ``N``).

    Examples
    --------
    >>> ClassifierOutputTarget(3)(torch.randn(2, 10)).shape
    torch.Size([2])
    """

    def __init__(self, category: Category) -> None:
        self.category = _check_category(category, type(self).__name__)

    def __call__(self, model_output: Tensor) -> Tensor:
        return _pick(model_output, self.category, type(self).__name__)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.category!r})"


class ClassifierOutputSoftmaxTarget(ClassifierOutputTarget):
    r"""The softmax probability of class ``category``: :math:`e^{y_c} / \sum_j e^{y_j}`."""

    def __call__(self, model_output: Tensor) -> Tensor:
        if not isinstance(model_output, Tensor) or model_output.dim() not in (1, 2):
            return _pick(model_output, self.category, type(self).__name__)  # raises the shape error
        return _pick(torch.softmax(model_output, dim=-1), self.category, type(self).__name__)


class ClassifierOutputReST(ClassifierOutputTarget):
    r"""The logit minus the cross-entropy of class ``category``: :math:`y_c - \mathrm{CE}(y, c)`.

    The "ReST" target proposed with Shapley-CAM (Cai et al., 2025, arXiv:2501.06261): it uses
    both the pre-softmax and the post-softmax score.
    """

    def __call__(self, model_output: Tensor) -> Tensor:
        logit = _pick(model_output, self.category, type(self).__name__)
        batch = model_output if model_output.dim() == 2 else model_output[None]
        n, c = batch.shape
        labels = (
            torch.full((n,), self.category % c, dtype=torch.long, device=batch.device)
            if isinstance(self.category, int)
            else (self.category % c).to(batch.device)
        )
        ce = F.cross_entropy(batch, labels, reduction="none")
        return logit - (ce if model_output.dim() == 2 else ce[0])


def _as_tensor(value: ArrayLike, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be a tensor or an array, got {type(value).__name__}") from err


class SemanticSegmentationTarget:
    r"""The sum of the class-``category`` scores over the pixels of ``mask``:
    :math:`\sum_{p} m(p)\, y_c(p)`.

    Parameters
    ----------
    category : int
        The segmentation class.
    mask : Tensor or numpy array
        ``(H, W)`` weights (usually a binary mask) applied to every example, or ``(N, H, W)``
        one per example; ``H, W`` are the output's spatial size.
    output_key : str, optional
        The key of the score map when the model returns a dict (torchvision's segmentation models
        return ``{"out": (N, C, H, W), "aux": ...}``); default ``"out"``. Ignored for tensor outputs.
    """

    def __init__(self, category: int, mask: ArrayLike, output_key: Optional[str] = "out") -> None:
        if isinstance(category, bool) or not isinstance(category, (int, np.integer)):
            raise TypeError(f"SemanticSegmentationTarget: category must be an int, got {category!r}")
        self.category = int(category)
        self.mask = _as_tensor(mask, "mask")
        if self.mask.dim() not in (2, 3):
            raise ValueError(f"mask must be (H, W) or (N, H, W), got shape {tuple(self.mask.shape)}")
        self.output_key = output_key

    def __call__(self, model_output: Any) -> Tensor:
        out = model_output
        if isinstance(out, dict):
            if self.output_key not in out:
                raise ValueError(f"the model returned a dict without the key {self.output_key!r}: {list(out)}")
            out = out[self.output_key]
        if not isinstance(out, Tensor) or out.dim() not in (3, 4):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"SemanticSegmentationTarget needs scores (N, C, H, W) or (C, H, W), got {shape}")
        if out.shape[-2:] != self.mask.shape[-2:]:
            raise ValueError(
                f"mask has spatial size {tuple(self.mask.shape[-2:])} but the output has {tuple(out.shape[-2:])}; "
                "make the mask at the output's resolution"
            )
        if not -out.shape[-3] <= self.category < out.shape[-3]:
            raise ValueError(f"category {self.category} is out of range for {out.shape[-3]} classes")
        mask = self.mask.to(out.device, out.dtype)
        scores = out[..., self.category, :, :]
        if mask.dim() == 3 and (out.dim() != 4 or mask.shape[0] != out.shape[0]):
            raise ValueError(f"a mask (N, H, W) needs a batch of N = {mask.shape[0]} outputs, got {tuple(out.shape)}")
        return (scores * mask).sum(dim=(-2, -1))

    def __repr__(self) -> str:
        return f"SemanticSegmentationTarget({self.category}, mask={tuple(self.mask.shape)})"


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Intersection over union of boxes ``(A, 4)`` and ``(B, 4)`` in ``(x1, y1, x2, y2)``: ``(A, B)``.

    Differentiable in both arguments (torchvision's ``box_iou`` computes the same).
    """
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _detections(outputs: Any) -> List[Dict[str, Tensor]]:
    if isinstance(outputs, dict):
        return [outputs]
    if isinstance(outputs, (list, tuple)) and all(isinstance(o, dict) for o in outputs):
        return list(outputs)
    raise ValueError(
        "FasterRCNNBoxScoreTarget needs detections: a dict with 'boxes', 'labels', 'scores' per image, or a list "
        f"of them (what torchvision detectors return in eval mode), got {type(outputs).__name__}; pass "
        "output_selector= to extract them from your model's output"
    )


class FasterRCNNBoxScoreTarget:
    r"""How well the detections still match reference boxes: for each reference box :math:`b`
    with label :math:`l`, the detection :math:`d` of largest IoU with :math:`b` adds
    :math:`\mathrm{IoU}(b, d) + s_d` if :math:`\mathrm{IoU}(b, d) > \tau` and its label is
    :math:`l` (else 0); the score of an image is the sum over the reference boxes.

    Both terms are differentiable in the detector's outputs (its box regression and its class
    scores), so the gradient reaches the backbone through the RoI features. In torchvision's
    two-stage detectors the region proposals themselves are detached, and the choice of the
    surviving detections (score threshold, NMS, top-k) is a selection, not a differentiable
    function: the CAM explains the boxes and scores the detector outputs for the proposals it
    made (see ``tests/test_targets.py``, which checks that the gradient at the backbone is
    non-zero).

    Parameters
    ----------
    labels : sequence of int
        The label of each reference box.
    bounding_boxes : Tensor or array ``(B, 4)``
        Reference boxes ``(x1, y1, x2, y2)`` in input pixels (e.g. the detections on the clean
        image), the same for every image of the batch; or a list of ``N`` such arrays (with
        ``labels`` a list of ``N`` label lists), one per image.
    iou_threshold : float
        :math:`\tau` (default 0.5).
    output_selector : callable, optional
        Maps the model's output to the per-image detection dicts (keys ``"boxes"``,
        ``"labels"``, ``"scores"``). Default: the output itself, which is what torchvision
        detectors return in eval mode (a list of dicts).

    Returns (when called)
    ---------------------
    Tensor
        ``(N,)`` for a list of detection dicts, ``(1,)`` for one dict (as pytorch-grad-cam).
    """

    def __init__(
        self,
        labels: Sequence[Any],
        bounding_boxes: Any,
        iou_threshold: float = 0.5,
        output_selector: Optional[Callable[[Any], Any]] = None,
    ) -> None:
        if not 0.0 <= float(iou_threshold) <= 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
        if output_selector is not None and not callable(output_selector):
            raise TypeError("output_selector must be a callable or None")
        per_image = (
            isinstance(bounding_boxes, (list, tuple))
            and len(bounding_boxes) > 0
            and all(_as_tensor(b, "bounding_boxes").dim() == 2 for b in bounding_boxes)
        )
        if per_image:
            boxes = [_as_tensor(b, "bounding_boxes") for b in bounding_boxes]
            labs = [[int(v) for v in lab] for lab in labels]
            if len(labs) != len(boxes):
                raise ValueError(f"{len(boxes)} per-image box arrays but {len(labs)} label lists")
        else:
            boxes = [_as_tensor(bounding_boxes, "bounding_boxes")]
            if boxes[0].numel() == 0:
                boxes = [boxes[0].reshape(0, 4)]
            labs = [[int(v) for v in labels]]
        for b, lab in zip(boxes, labs):
            if b.dim() != 2 or b.shape[1] != 4:
                raise ValueError(f"bounding_boxes must be (B, 4) arrays (x1, y1, x2, y2), got {tuple(b.shape)}")
            if b.shape[0] != len(lab):
                raise ValueError(f"{b.shape[0]} boxes but {len(lab)} labels; pass one label per box")
        self.per_image = per_image
        self.bounding_boxes = boxes
        self.labels = labs
        self.iou_threshold = float(iou_threshold)
        self.output_selector = output_selector

    def _image_score(self, det: Dict[str, Tensor], refs: Tensor, labels: List[int]) -> Tensor:
        for key in ("boxes", "labels", "scores"):
            if key not in det:
                raise ValueError(f"a detection dict needs the key {key!r}, got {list(det)}")
        boxes = det["boxes"]
        score = boxes.new_zeros(())
        if len(boxes) == 0:
            return score
        refs = refs.to(boxes.device, boxes.dtype)
        for box, label in zip(refs, labels):
            ious = box_iou(box[None], boxes)[0]
            best = int(ious.detach().argmax())
            if float(ious[best].detach()) > self.iou_threshold and int(det["labels"][best]) == label:
                score = score + ious[best] + det["scores"][best]
        return score

    def __call__(self, model_outputs: Any) -> Tensor:
        outputs = self.output_selector(model_outputs) if self.output_selector is not None else model_outputs
        single = isinstance(outputs, dict)
        dets = _detections(outputs)
        if self.per_image and len(dets) != len(self.bounding_boxes):
            raise ValueError(f"{len(self.bounding_boxes)} per-image reference boxes for {len(dets)} images")
        scores = [
            self._image_score(
                d, self.bounding_boxes[i if self.per_image else 0], self.labels[i if self.per_image else 0]
            )
            for i, d in enumerate(dets)
        ]
        out = torch.stack(scores)
        return out.reshape(1) if single else out

    def __repr__(self) -> str:
        return f"FasterRCNNBoxScoreTarget(labels={self.labels}, iou_threshold={self.iou_threshold})"


class SimilarityToConceptTarget:
    r"""The cosine similarity between the model's embedding and a concept embedding:
    :math:`\cos(f(x), e)`.

    Parameters
    ----------
    concept_features : Tensor ``(D,)``
        The concept's embedding (e.g. the mean embedding of images of a concept).
    """

    def __init__(self, concept_features: ArrayLike) -> None:
        emb = _as_tensor(concept_features, "concept_features")
        if emb.dim() != 1 or emb.numel() == 0 or not emb.is_floating_point():
            raise ValueError(f"concept_features must be a float vector (D,), got {emb.dtype} {tuple(emb.shape)}")
        self.concept_features = emb

    def __call__(self, model_output: Tensor) -> Tensor:
        if not isinstance(model_output, Tensor) or model_output.dim() not in (1, 2):
            shape = tuple(model_output.shape) if isinstance(model_output, Tensor) else type(model_output).__name__
            raise ValueError(f"SimilarityToConceptTarget needs embeddings (N, D) or (D,), got {shape}")
        if model_output.shape[-1] != self.concept_features.shape[0]:
            raise ValueError(
                f"the embedding has {model_output.shape[-1]} features, the concept {self.concept_features.shape[0]}"
            )
        emb = self.concept_features.to(model_output.device, model_output.dtype)
        return F.cosine_similarity(model_output, emb.expand_as(model_output), dim=-1)

    def __repr__(self) -> str:
        return f"SimilarityToConceptTarget(D={self.concept_features.shape[0]})"


WEIGHTINGS = ("softmax", "uniform")


class FinerWeightedTarget:
    r"""Finer-CAM's contrastive target: the class score minus a weighted mean of similar classes.

    .. math::

        s = \frac{\sum_{j \in R} \omega_j\, (y_c - \alpha\, y_j)}{\sum_{j \in R} \omega_j}
          = y_c - \alpha\, \frac{\sum_{j \in R} \omega_j y_j}{\sum_{j \in R} \omega_j},

    with :math:`\omega_j = \mathrm{softmax}(y)_j` (``weighting="softmax"``, pytorch-grad-cam's
    ``FinerWeightedTarget``; the probabilities are differentiated too) or :math:`\omega_j = 1`
    (``"uniform"``, torchcam's ``FinerCAM``, whose :math:`\alpha` is called ``gamma``).

    Parameters
    ----------
    main_category : int, sequence of int or None
        :math:`c`, for every example or one per example; None: each example's arg-max class.
    comparison_categories : sequence of int, or (N, R) integer array, optional
        The reference classes :math:`R` (the same for all examples, or one row per example).
        None: chosen per example as the classes whose scores are closest to :math:`y_c`
        (:math:`|y_j - y_c|` ascending, :math:`c` excluded), at ``comparison_ranks``.
    alpha : float
        The comparison strength :math:`\alpha` (default 1; 0 gives the plain class score).
    comparison_ranks : sequence of int
        1-based ranks among the most similar classes (default ``(1, 2, 3)``, the three closest),
        used when ``comparison_categories`` is None. Ranks beyond the number of other classes are
        dropped.
    weighting : str
        ``"softmax"`` (default) or ``"uniform"``.
    """

    def __init__(
        self,
        main_category: Optional[Category] = None,
        comparison_categories: Optional[Any] = None,
        alpha: float = 1.0,
        comparison_ranks: Sequence[int] = (1, 2, 3),
        weighting: str = "softmax",
    ) -> None:
        self.main_category = None if main_category is None else _check_category(main_category, "FinerWeightedTarget")
        if comparison_categories is not None:
            comp = torch.as_tensor(np.asarray(comparison_categories))
            if comp.dim() not in (1, 2) or comp.numel() == 0 or comp.is_floating_point():
                raise ValueError(
                    f"comparison_categories must be ints (R,) or (N, R), got {tuple(comp.shape)} {comp.dtype}"
                )
            self.comparison_categories: Optional[Tensor] = comp.long()
        else:
            self.comparison_categories = None
        ranks = list(comparison_ranks)
        if not ranks or any(isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1 for r in ranks):
            raise ValueError(f"comparison_ranks must be positive ints (1 = the most similar class), got {ranks!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.alpha = float(alpha)
        self.comparison_ranks = [int(r) for r in ranks]
        self.weighting = weighting

    def references(self, scores: Tensor, main: Tensor) -> Tensor:
        """The reference classes ``(N, R)`` for class scores ``(N, C)`` and main classes ``(N,)``."""
        n, c = scores.shape
        if self.comparison_categories is not None:
            comp = self.comparison_categories.to(scores.device)
            comp = comp.expand(n, -1) if comp.dim() == 1 else comp
            if comp.shape[0] != n:
                raise ValueError(f"{comp.shape[0]} rows of comparison_categories for a batch of {n}")
            if int(comp.max()) >= c or int(comp.min()) < 0:
                raise ValueError(f"comparison_categories are out of range for {c} classes")
            return comp
        ranks = [r for r in self.comparison_ranks if r <= c - 1]
        if not ranks:
            raise ValueError(f"Finer-CAM needs at least one class besides the target; the model has {c}")
        s = scores.detach()
        dist = (s - s.gather(1, main[:, None])).abs()
        dist.scatter_(1, main[:, None], float("inf"))
        order = dist.argsort(dim=1, stable=True)
        return order[:, [r - 1 for r in ranks]]

    def __call__(self, model_output: Tensor) -> Tensor:
        if not isinstance(model_output, Tensor) or model_output.dim() not in (1, 2):
            shape = tuple(model_output.shape) if isinstance(model_output, Tensor) else type(model_output).__name__
            raise ValueError(f"FinerWeightedTarget needs class scores (N, C) or (C,), got {shape}")
        scores = model_output if model_output.dim() == 2 else model_output[None]
        n, c = scores.shape
        if self.main_category is None:
            main = scores.detach().argmax(dim=1)
        elif isinstance(self.main_category, int):
            if not -c <= self.main_category < c:
                raise ValueError(f"main_category {self.main_category} is out of range for {c} classes")
            main = torch.full((n,), self.main_category % c, dtype=torch.long, device=scores.device)
        else:
            main = self.main_category.to(scores.device) % c
            if main.shape[0] != n:
                raise ValueError(f"{main.shape[0]} main categories for a batch of {n}")
        refs = self.references(scores, main)
        target = scores.gather(1, main[:, None])
        others = scores.gather(1, refs)
        if self.weighting == "softmax":
            w = torch.softmax(scores, dim=1).gather(1, refs)
            value = (w * (target - self.alpha * others)).sum(1) / (w.sum(1) + 1e-9)
        else:
            value = target[:, 0] - self.alpha * others.mean(1)
        return value if model_output.dim() == 2 else value[0]

    def __repr__(self) -> str:
        return (
            f"FinerWeightedTarget(main={self.main_category!r}, alpha={self.alpha}, "
            f"ranks={self.comparison_ranks}, weighting={self.weighting!r})"
        )
