"""Dataset-scale evaluation: exact sharding, per-example values, 2 processes == 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

from captum_cam_ext import LayerGradCam
from captum_cam_ext.attr.grad_cam import LayerGradCam as GradCamBase
from captum_cam_ext.evaluation import (
    ExactDistributedSampler,
    compare,
    evaluate,
    make_method,
    results_markdown,
)
from captum_cam_ext.metrics import confidence_metrics, deletion_auc, maps_to_masks, paired_comparison
from captum_cam_ext.metrics.registry import metric_specs
from captum_cam_ext.registry import methods, register_method, unregister_method

ROOT = Path(__file__).resolve().parents[1]

BUILD = textwrap.dedent(
    """
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        ).eval()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(21, 3, 12, 12, generator=g)
        y = torch.randint(0, 4, (21,), generator=g)
        return model, TensorDataset(x, y)
    """
)
METRICS = ("average_drop", "average_increase", "average_gain", "deletion_auc", "insertion_auc")
METHODS = ["gradcam", "scorecam", "gradcam++"]


def _build():
    ns: dict = {}
    exec(BUILD, ns)  # the same model and data as in the torchrun script
    return ns["build"]()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(n=st.integers(1, 23), world=st.integers(1, 5), shuffle=st.booleans())
def test_exact_sampler_covers_every_example_once(n, world, shuffle):
    ds = TensorDataset(torch.arange(n))
    seen = []
    for rank in range(world):
        s = ExactDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=3)
        idx = list(s)
        assert len(idx) == len(s) == len(range(rank, n, world))
        seen += idx
    assert sorted(seen) == list(range(n))  # no padding duplicates, nothing missing


def test_single_process_matches_the_metrics_on_the_whole_dataset():
    model, ds = _build()
    res = evaluate(model, model[3], ["gradcam"], ds, batch_size=4, metrics=METRICS, causal_steps=6)
    x, _ = ds.tensors
    pred = model(x).argmax(1)
    maps = LayerGradCam(model, model[3]).attribute(x, target=pred, relu_attributions=True)
    conf = confidence_metrics(model, x, maps, target=pred)
    dele = deletion_auc(model, x, maps, target=pred, n_steps=6)
    pe = res.per_example["gradcam"]
    torch.testing.assert_close(pe["average_drop"], conf.drop.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pe["average_increase"], conf.increase.double())
    torch.testing.assert_close(pe["deletion_auc"], dele.double(), rtol=1e-5, atol=1e-6)
    assert res.n == 21 and res.counts["gradcam"]["average_drop"] == 21
    assert res.means["gradcam"]["average_drop"] == pytest.approx(float(conf.drop.mean()), abs=1e-4)
    md = results_markdown(res, title="t")
    assert "| gradcam |" in md and "21 examples" in md


def test_road_in_evaluate_follows_the_example_not_the_batch():
    """ROAD's noise is seeded by the dataset index: evaluate equals one direct call on everything."""
    from captum_cam_ext.metrics import road

    model, ds = _build()
    res = evaluate(model, model[3], ["gradcam"], ds, batch_size=5, metrics=("road_combined", "road_morf"),
                   metric_options={"road": {"percentiles": (30, 70)}})
    x, _ = ds.tensors
    pred = model(x).argmax(1)
    maps = LayerGradCam(model, model[3]).attribute(x, target=pred, relu_attributions=True)
    ref = road(model, x, maps, target=pred, percentiles=(30, 70), return_curves=True)
    pe = res.per_example["gradcam"]
    assert list(pe) == ["road_morf", "road_combined"]  # report order of the registry
    torch.testing.assert_close(pe["road_combined"], ref.combined.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(pe["road_morf"], ref.morf.double(), rtol=0, atol=1e-6)


def test_controls_and_comparisons():
    model, ds = _build()
    x, _ = ds.tensors
    pred = model(x).argmax(1)
    metrics = ("average_drop", "average_increase", "deletion_auc")
    res = evaluate(model, model[3], ["gradcam", "gradcam++"], ds, batch_size=5, metrics=metrics, controls=True,
                   n_boot=500)
    rows = list(res.means)
    assert rows[:2] == ["gradcam", "gradcam++"] and len(rows) == 2 + 4
    matched, blur, const, rand = rows[2:]
    assert matched.startswith("gradcam**") and matched.endswith("(area of gradcam++)")
    assert blur.startswith("blur(gradcam") and const.startswith("constant") and rand == "random (seed 0)"
    assert list(res.per_example["gradcam"]) == ["average_drop", "average_increase", "mask_area", "deletion_auc"]
    # the matched power reaches gradcam++'s mean area (histogram solver: to its binning error)
    assert res.means[matched]["mask_area"] == pytest.approx(res.means["gradcam++"]["mask_area"], abs=2e-3)
    # constant and random controls sit at the base's mean area
    assert res.means[const]["mask_area"] == pytest.approx(res.means["gradcam"]["mask_area"], abs=1e-3)
    assert res.means[rand]["mask_area"] == pytest.approx(res.means["gradcam"]["mask_area"], abs=2e-3)
    # the matched row is exactly the metrics of the base's masks raised to the solved power
    p = float(matched.split("**")[1].split(" ")[0])
    maps = LayerGradCam(model, model[3]).attribute(x, target=pred, relu_attributions=True)
    masks = maps_to_masks(maps, (12, 12))
    got = res.per_example[matched]["average_drop"]
    p_exact = float(res.controls[matched].split("** ")[1].split(":")[0])
    assert p == pytest.approx(p_exact, abs=5e-3)
    ref = confidence_metrics(model, x, masks.pow(p_exact), target=pred, normalize="none")
    torch.testing.assert_close(got, ref.drop.double(), rtol=1e-4, atol=1e-3)
    # comparisons: each method against the base, each method against its matched power,
    # the base against the other controls; on every metric
    pairs = [(c.a, c.b) for c in res.comparisons if c.metric == "average_drop"]
    assert pairs == [("gradcam++", "gradcam"), ("gradcam++", matched), ("gradcam", blur), ("gradcam", const),
                     ("gradcam", rand)]
    row = next(c for c in res.comparisons if c.a == "gradcam++" and c.b == "gradcam" and c.metric == "deletion_auc")
    direct = paired_comparison(res.per_example["gradcam++"]["deletion_auc"], res.per_example["gradcam"]["deletion_auc"],
                               higher_is_better=False, n_boot=500)
    assert (row.ci_low, row.ci_high, row.win_rate) == (direct.ci_low, direct.ci_high, direct.win_rate)
    md = results_markdown(res)
    assert "control: constant" in md and "Paired comparisons" in md and "mask_area (fraction, descriptive)" in md
    d = res.to_dict()
    json.dumps(d)
    assert d["comparisons"][0]["verdict"] in ("gradcam++ better", "gradcam better", "not resolved")
    # the random control follows the example: another batch size gives the same values
    res2 = evaluate(model, model[3], ["gradcam"], ds, batch_size=8, metrics=("average_drop",), controls=True,
                    control_options={"powers": (), "blur_sigma": 0, "constant": False}, comparisons=False)
    assert list(res2.controls) == [rand] and res2.comparisons == []
    single = evaluate(model, model[3], ["gradcam"], ds, batch_size=5, metrics=("average_drop",), controls=True,
                      control_options={"powers": (), "blur_sigma": 0, "constant": False}, comparisons=False)
    torch.testing.assert_close(res2.per_example[rand]["average_drop"], single.per_example[rand]["average_drop"])
    with pytest.raises(ValueError, match="control options"):
        evaluate(model, model[3], ["gradcam"], ds, controls=True, control_options={"sigma": 2})
    with pytest.raises(ValueError, match="control base"):
        evaluate(model, model[3], ["gradcam"], ds, controls=True, control_options={"base": "scorecam"})
    with pytest.raises(ValueError, match="unknown rows"):
        evaluate(model, model[3], ["gradcam"], ds, comparisons=[("gradcam", "scorecam")])


def test_compare_entry_point(capsys):
    model, ds = _build()
    res = compare(model, model[3], "gradcam++", "power", ds, base="gradcam", metrics=("average_drop",), n_boot=500)
    out = capsys.readouterr().out
    first = res.comparisons[0]
    assert first.a == "gradcam++" and first.b.endswith("(area of gradcam++)")
    assert [c.metric for c in res.comparisons] == ["average_drop", "mask_area"]
    assert abs(res.comparisons[1].mean_diff) < 2e-3  # matched area
    assert "Paired comparisons" in out and "| average_drop | gradcam++ |" in out
    res = compare(model, model[3], "gradcam", "power:0.5", ds, metrics=("average_drop",), n_boot=500, verbose=False)
    assert res.comparisons[0].b == "gradcam**0.5"
    assert res.comparisons[1].mean_diff < 0  # gradcam's mask is smaller than its square root's
    res = compare(model, model[3], "gradcam", "scorecam", ds, metrics=("deletion_auc",), n_boot=500, verbose=False)
    assert [(c.a, c.b, c.metric) for c in res.comparisons] == [("gradcam", "scorecam", "deletion_auc")]
    for b in ("constant", "random", "blur:2"):
        res = compare(model, model[3], "gradcam", b, ds, metrics=("average_drop",), n_boot=500, verbose=False)
        assert res.comparisons[0].b in res.controls
    with pytest.raises(ValueError, match="base"):
        compare(model, model[3], "gradcam", "power", ds, verbose=False)
    with pytest.raises(ValueError, match="number"):
        compare(model, model[3], "gradcam", "power:x", ds, verbose=False)
    with pytest.raises(ValueError, match="both"):
        compare(model, model[3], "gradcam", "gradcam", ds, verbose=False)


def test_label_target_and_errors():
    model, ds = _build()
    res = evaluate(model, model[3], {"GC": LayerGradCam(model, model[3])}, ds, target="label",
                   batch_size=8)
    y = ds.tensors[1]
    x = ds.tensors[0]
    maps = LayerGradCam(model, model[3]).attribute(x, target=y, relu_attributions=True)
    conf = confidence_metrics(model, x, maps, target=y)
    torch.testing.assert_close(res.per_example["GC"]["average_drop"], conf.drop.double(),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate(model, model[3], ["gradcam"], ds, metrics=("accuracy",))
    with pytest.raises(ValueError, match="target"):
        evaluate(model, model[3], ["gradcam"], ds, target="best")
    with pytest.raises(ValueError, match="empty"):
        evaluate(model, model[3], ["gradcam"], TensorDataset(torch.zeros(0, 3, 4, 4)))
    with pytest.raises(ValueError, match="label"):
        evaluate(model, model[3], ["gradcam"], TensorDataset(x), target="label")
    with pytest.raises(ValueError, match="(?i)choose from"):
        make_method("gradcam+++", model, model[3])
    with pytest.raises(ValueError, match="(?i)choose from"):
        evaluate(model, model[3], ["no-such-cam"], ds)
    assert type(make_method("Grad-CAM++", model, model[3])).__name__ == "LayerGradCamPlusPlus"
    assert make_method("scorecam", model, model[3], batch_size=5).batch_size == 5


def test_old_metric_lists_are_views_of_the_registry():
    from captum_cam_ext import evaluation

    assert not hasattr(evaluation, "METHOD_NAMES")  # methods: captum_cam_ext.registry.methods()
    assert evaluation.METRIC_NAMES == tuple(metric_specs())
    assert evaluation.METRIC_DIRECTION["average_drop"] == "lower"
    assert evaluation.METRIC_DIRECTION["insertion_auc"] == "higher"


def test_a_method_registered_in_a_test_is_accepted_by_name():
    """A new CAM class registered once is usable by evaluate by name (and by its aliases)."""

    class TopHalfCam(GradCamBase):
        """Grad-CAM with the lower half of the map zeroed: a different, known map."""

        name = "tophalfcam"

        def attribute(self, inputs, target=None, **kwargs):
            maps = super().attribute(inputs, target=target, **kwargs)
            maps = maps.clone()
            maps[..., maps.shape[-2] // 2 :, :] = 0
            return maps

    model, ds = _build()
    register_method(TopHalfCam, aliases=("top-half",))
    try:
        assert "tophalfcam" in methods()
        res = evaluate(model, model[3], ["Top-Half", "gradcam"], ds, batch_size=8)
        x, _ = ds.tensors
        pred = model(x).argmax(1)
        maps = LayerGradCam(model, model[3]).attribute(x, target=pred, relu_attributions=True)
        maps[..., maps.shape[-2] // 2 :, :] = 0
        conf = confidence_metrics(model, x, maps, target=pred)
        torch.testing.assert_close(res.per_example["Top-Half"]["average_drop"], conf.drop.double(),
                                   rtol=1e-5, atol=1e-5)
        assert not torch.allclose(res.per_example["Top-Half"]["average_drop"],
                                  res.per_example["gradcam"]["average_drop"])
    finally:
        unregister_method(TopHalfCam)
    assert "tophalfcam" not in methods()
    with pytest.raises(ValueError, match="(?i)unknown CAM method"):
        evaluate(model, model[3], ["tophalfcam"], ds)


def test_torchrun_two_processes_equal_one_process(tmp_path):
    script = tmp_path / "run_eval.py"
    script.write_text(
        BUILD
        + textwrap.dedent(
            f"""
            import json, os, sys
            torch.set_num_threads(1)
            from captum_cam_ext.evaluation import evaluate

            model, ds = build()
            res = evaluate(model, model[3], {METHODS!r}, ds, batch_size=4,
                           metrics={METRICS!r}, causal_steps=6, controls=True, n_boot=500)
            assert res.world_size == int(os.environ["WORLD_SIZE"])
            with open(sys.argv[1] + os.environ["RANK"], "w") as fh:
                json.dump(res.to_dict(), fh)
            """
        )
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = tmp_path / "two.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--master_port=0", "--rdzv_backend=c10d", "--rdzv_endpoint=localhost:0",
         str(script), str(out)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, ds = _build()
    one = evaluate(model, model[3], METHODS, ds, batch_size=4, metrics=METRICS, causal_steps=6, controls=True,
                   n_boot=500)
    assert len(one.controls) == 5  # 2 matched powers, blur, constant, random
    for rank in (0, 1):
        two = json.loads(Path(f"{out}{rank}").read_text())
        assert two["world_size"] == 2 and two["n"] == 21
        assert list(two["controls"]) == list(one.controls)  # same solved powers from the reduced histograms
        assert [c["ci_low"] for c in two["comparisons"]] == pytest.approx([c.ci_low for c in one.comparisons],
                                                                          abs=1e-6)
        for m in METHODS + list(one.controls):
            for k in METRICS:
                assert two["counts"][m][k] == 21
                assert two["means"][m][k] == pytest.approx(one.means[m][k], abs=1e-6)
                got = torch.tensor(two["per_example"][m][k], dtype=torch.float64)
                torch.testing.assert_close(got, one.per_example[m][k], rtol=0, atol=1e-6)
