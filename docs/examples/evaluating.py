"""Evaluating a saliency method honestly: mask area, matched-area controls, ROAD, sanity checks, intervals."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.evaluation import compare, evaluate, results_markdown
from captum_cam_ext.metrics import (
    area_controls,
    confidence_metrics,
    maps_to_masks,
    paired_comparison,
    parameter_randomization,
    road,
)

torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
).eval()
layer = model[2]
images = torch.randn(24, 3, 16, 16)
dataset = TensorDataset(images, torch.randint(0, 4, (24,)))

# 1. A dataset evaluation with matched-area controls and paired 95% intervals
res = evaluate(model, layer, ["gradcam", "gradcam++"], dataset, batch_size=8,
               metrics=["average_drop", "average_increase", "deletion_auc", "road_combined"],
               controls=True, n_boot=1000)
print(results_markdown(res))          # means (with mask_area), the controls, the comparisons
matched = next(r for r in res.controls if r.endswith("(area of gradcam++)"))
assert abs(res.means[matched]["mask_area"] - res.means["gradcam++"]["mask_area"]) < 2e-3
assert res.means[matched]["deletion_auc"] == res.means["gradcam"]["deletion_auc"]  # same ranking

# 2. One comparison: a method against a control of its base (or two methods)
one = compare(model, layer, "gradcam++", "power", dataset, base="gradcam",
              metrics=["average_drop"], n_boot=1000, verbose=False)
print(one.comparisons[0].mean_diff, (one.comparisons[0].ci_low, one.comparisons[0].ci_high),
      one.comparisons[0].win_rate, one.comparisons[0].verdict)

# 3. The same controls in memory, scored as masks
with torch.no_grad():
    pred = model(images).argmax(1)
maps = LayerGradCam(model, layer).attribute(images, target=pred, relu_attributions=True)
masks = maps_to_masks(maps, images.shape[-2:])     # what Average Drop multiplies into the input
for name, m in area_controls(masks, powers=(0.5,), map_size=maps.shape[-2:]).items():
    r = confidence_metrics(model, images, m, target=pred, normalize="none")
    print(f"{name:28s} AD {r.average_drop:6.2f}  area {r.mean_mask_area:.3f}")

# 4. ROAD (MoRF and LeRF with noisy linear imputation) per example
morf_lerf = road(model, images, maps, target=pred, return_curves=True)
print("ROAD combined", float(morf_lerf.combined.mean()))

# 5. Sanity check: the maps must change when the weights are randomised (the model is restored)
before = [p.clone() for p in model.parameters()]
sanity = parameter_randomization(model, LayerGradCam(model, layer), images[:8],
                                 attribute_kwargs={"relu_attributions": True})
print(sanity.markdown())
assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

# 6. Statistics for a results page: two per-example tensors -> one row
row = paired_comparison(res.per_example["gradcam++"]["deletion_auc"], res.per_example["gradcam"]["deletion_auc"],
                        metric="deletion_auc", a="gradcam++", b="gradcam", higher_is_better=False)
print(row.to_dict())
