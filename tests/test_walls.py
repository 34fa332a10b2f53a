"""Tests of the walls: blind models, receptive-field band, datasets, leakage metrics, audit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import captum_cam_ext as cce
from captum_cam_ext.data import fashion_mnist_available
from captum_cam_ext.metrics.leakage import (
    band_mask,
    leakage_metrics,
    unseen_any_positive,
    unseen_positive_mass,
    unseen_seen_mean_ratio,
    wall_ratio,
)
from captum_cam_ext.walls import (
    DenseWallNet,
    MaskedLinear,
    SplitTrunkBlindNet,
    invisible_band_start,
    receptive_field,
    stack_pairs,
)

torch.set_num_threads(1)
FAST = settings(max_examples=6, deadline=None, derandomize=True)
needs_fmnist = pytest.mark.skipif(not fashion_mnist_available(),
                                  reason="Fashion-MNIST not installed (make fashion-mnist)")


# ------------------------------------------------------------------------------ blind models


@FAST
@given(seed=st.integers(0, 1000), split=st.sampled_from([20, 28, 36]))
def test_split_trunk_is_blind_below_the_split(seed, split):
    torch.manual_seed(seed)
    net = SplitTrunkBlindNet(split_row=split).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 1, 56, 28, generator=g)
    x2 = x.clone()
    x2[:, :, split:] = 50 * torch.randn(3, 1, 56 - split, 28, generator=g)
    assert torch.equal(net(x), net(x2))  # bit-identical logits
    xr = x2.clone().requires_grad_(True)
    net(xr).sum().backward()
    assert xr.grad is not None
    assert torch.count_nonzero(xr.grad[:, :, split:]) == 0
    assert torch.count_nonzero(xr.grad[:, :, :split]) > 0
    # ... yet the CAM layer covers the lower part and does change with it
    acts = {}
    h = net.features.register_forward_hook(lambda m, a, o: acts.setdefault(len(acts), o))
    try:
        net(x)
        net(x2)
    finally:
        h.remove()
    assert acts[0].shape[2] > net.visible_feature_rows
    vis = net.visible_feature_rows
    assert torch.equal(acts[0][:, :, :vis], acts[1][:, :, :vis])
    assert not torch.equal(acts[0][:, :, vis:], acts[1][:, :, vis:])


def test_split_trunk_cams_on_it():
    """HiResCAM/LayerCAM give exactly 0 behind the wall; Grad-CAM puts positive mass there."""
    torch.manual_seed(0)
    net = SplitTrunkBlindNet().eval()
    x = torch.randn(4, 1, 56, 28)
    vis = net.visible_feature_rows
    for cls in (cce.LayerHiResCam, cce.LayerCam):
        maps = cls(net, net.features).attribute(x, target=0, relu_attributions=True)
        assert torch.count_nonzero(maps[:, :, vis:]) == 0
    maps = cce.LayerGradCamPlusPlus(net, net.features).attribute(x, target=0,
                                                                  relu_attributions=True)
    assert float(unseen_positive_mass(maps, vis).mean()) > 0


def _ones_stack(kernel, stride, pad, pool):
    layers = []
    c = 1
    for k, s, p, pl in zip(kernel, stride, pad, pool):
        conv = nn.Conv2d(c, 1, k, stride=s, padding=p, bias=False)
        nn.init.ones_(conv.weight)
        layers.append(conv)
        if pl:
            layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(data=st.data())
def test_receptive_field_matches_autograd(data):
    n = data.draw(st.integers(1, 3))
    kernel = data.draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    stride = data.draw(st.lists(st.integers(1, 2), min_size=n, max_size=n))
    pad = [data.draw(st.integers(0, k // 2)) for k in kernel]
    pool = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    trunk = _ones_stack(kernel, stride, pad, pool)
    height = 40
    x = torch.rand(1, 1, height, 48) + 0.5  # positive: max-pool windows pick a unique element
    out = trunk(x)
    h_out = out.shape[2]
    rf = receptive_field(list(trunk))
    for r in sorted({0, h_out // 2, h_out - 1}):
        xr = x.clone().requires_grad_(True)
        trunk(xr)[:, :, r].sum().backward()
        rows = torch.nonzero(xr.grad.abs().sum((0, 1, 3))).flatten()
        # autograd rows lie within the computed field (max-pool may pick a subset)
        assert int(rows.min()) >= rf.first_row(r) and int(rows.max()) <= rf.last_row(r)
        if not any(pool) and all(s_ <= k for s_, k in zip(stride, kernel)):
            # without max-pools or skipped rows the field is tight (clipped to the image)
            assert int(rows.max()) == min(height - 1, rf.last_row(r))
            assert int(rows.min()) == max(0, rf.first_row(r))


@FAST
@given(seed=st.integers(0, 1000), unseen=st.sampled_from([24, 28, 40]))
def test_dense_wall_band_is_exact(seed, unseen):
    torch.manual_seed(seed)
    net = DenseWallNet(unseen_from_row=unseen).eval()
    band = net.band_start
    assert band <= unseen
    assert band == invisible_band_start(list(net.trunk), net.visible_feature_rows, 56)
    x = torch.randn(2, 1, 56, 28)
    x2 = x.clone()
    x2[:, :, band:] = 30 * torch.randn(2, 1, 56 - band, 28)
    assert torch.equal(net(x), net(x2))
    xr = x.clone().requires_grad_(True)
    net(xr).sum().backward()
    assert xr.grad is not None
    assert torch.count_nonzero(xr.grad[:, :, band:]) == 0
    assert torch.count_nonzero(xr.grad[:, :, band - 1]) > 0  # the band is tight


def test_masked_linear_survives_training():
    lin = MaskedLinear((2, 4, 3), 5, visible_rows=1)
    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    for _ in range(3):
        loss = lin(torch.randn(8, 2, 4, 3)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    w = lin.linear.weight.reshape(5, 2, 4, 3)
    assert torch.count_nonzero(w[:, :, 1:]) == 0  # grads there are exactly 0 as well
    with pytest.raises(ValueError):
        MaskedLinear((2, 4, 3), 5, visible_rows=1, linear=nn.Linear(10, 5))


def test_model_errors():
    with pytest.raises(ValueError, match=r"\(2, 1, 50, 28\)"):
        SplitTrunkBlindNet()(torch.zeros(2, 1, 50, 28))
    with pytest.raises(ValueError, match="split_row"):
        SplitTrunkBlindNet(split_row=0)
    with pytest.raises(TypeError):
        receptive_field([nn.AdaptiveAvgPool2d(1)])


# ------------------------------------------------------------------------------- datasets


@pytest.mark.parametrize("mode", ["different", "same"])
def test_stack_pairs_synthetic(mode):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(60, 4, 3), dtype=np.uint8)
    labels = np.arange(60) % 3
    p = stack_pairs(imgs, labels, mode=mode, n=20, seed=1)
    assert p.images.shape == (20, 1, 8, 3) and len(p) == 20
    top, bot = p.top_index, p.bottom_index
    assert torch.allclose(p.images[:, 0, :4], torch.from_numpy(imgs[top.numpy()]).float() / 255)
    assert torch.allclose(p.images[:, 0, 4:], torch.from_numpy(imgs[bot.numpy()]).float() / 255)
    assert torch.equal(p.labels, torch.from_numpy(labels[top.numpy()]))
    if mode == "same":
        assert torch.equal(p.labels, p.bottom_labels) and bool((top != bot).all())
    else:
        assert bool((p.labels != p.bottom_labels).all())
    again = stack_pairs(imgs, labels, mode=mode, n=20, seed=1)
    assert torch.equal(again.images, p.images)
    with pytest.raises(ValueError, match="mode"):
        stack_pairs(imgs, labels, mode="other")


@needs_fmnist
def test_stacked_fashion_mnist():
    from captum_cam_ext.walls import StackedFashionMNIST

    ds = StackedFashionMNIST("test", "same", n=50)
    x, y = ds[0]
    assert x.shape == (1, 56, 28) and 0 <= int(y) < 10 and len(ds) == 50
    assert torch.equal(ds.pairs.labels, ds.pairs.bottom_labels)


# -------------------------------------------------------------------------------- metrics


def test_leakage_metrics_known_values():
    maps = torch.zeros(3, 1, 4, 2)
    maps[0, 0, :2] = 1.0  # all in the seen part
    maps[1] = 1.0  # constant
    maps[2, 0, 3, 1] = 2.0  # all behind the wall
    maps[2, 0, 0, 0] = 2.0
    ratio = wall_ratio(maps, 2, normalize=False)
    assert ratio[0] == 0 and ratio[1] == pytest.approx(math.sqrt(0.5))
    assert ratio[2] == pytest.approx(math.sqrt(0.5))
    mass = unseen_positive_mass(maps, 2)
    assert mass.tolist() == pytest.approx([0.0, 0.5, 0.5])
    assert unseen_any_positive(maps, 2).tolist() == [0.0, 1.0, 1.0]
    assert unseen_seen_mean_ratio(maps, 2).tolist() == pytest.approx([0.0, 1.0, 1.0])
    only_unseen = torch.zeros(1, 1, 4, 2)
    only_unseen[0, 0, 3] = 1.0
    assert math.isinf(float(unseen_seen_mean_ratio(only_unseen, 2)[0]))
    # masks and upsampling: rows >= 4 of an 8-row upsampled map
    up = wall_ratio(maps[:1], 4, input_size=(8, 4), interpolate_mode="nearest")
    assert float(up[0]) == 0.0
    mask = band_mask((4, 2), 2)
    assert torch.equal(unseen_positive_mass(maps, mask), mass)
    out = leakage_metrics(maps, 2)
    assert set(out) == {"wall_ratio", "positive_mass", "any_positive", "mean_ratio"}
    with pytest.raises(ValueError, match="broadcast"):
        unseen_positive_mass(maps, torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(3, 2, 4, 2\)"):
        wall_ratio(torch.zeros(3, 2, 4, 2), 2)


@FAST
@given(seed=st.integers(0, 100))
def test_wall_ratio_invariant_to_map_scale(seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.rand(4, 1, 6, 3, generator=g)
    a = wall_ratio(maps, 3, input_size=(12, 6))
    b = wall_ratio(7.0 * maps + 2.0, 3, input_size=(12, 6))
    torch.testing.assert_close(a, b)
    assert bool(((a >= 0) & (a <= 1)).all())


# ---------------------------------------------------------------------------------- audit


def test_audit_pairs_skips_an_inapplicable_method_only_when_asked():
    from captum_cam_ext.walls.audit import audit_pairs

    class LayerNeedsAHead(cce.LayerGradCam):
        def __init__(self, forward_func, layer, **kw):  # noqa: ANN001, ANN003
            raise ValueError("this model has no single nn.Linear head\nsecond line")

    torch.manual_seed(0)
    net = SplitTrunkBlindNet().eval()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    pairs = stack_pairs(imgs, np.arange(12) % 3, mode="different", n=6, seed=0)
    with pytest.raises(ValueError, match="no single nn.Linear head"):
        audit_pairs(net, pairs, [cce.LayerHiResCam, LayerNeedsAHead], progress=False)
    res = audit_pairs(net, pairs, [cce.LayerHiResCam, LayerNeedsAHead], progress=False,
                      skip_inapplicable=True)
    assert res["skipped"] == {"LayerNeedsAHead": "ValueError: this model has no single nn.Linear head"}
    assert list(res["methods"]) == ["LayerHiResCam"]
    # HiResCAM is exactly 0 behind the split model's wall: the row holds real measurements
    assert res["methods"]["LayerHiResCam"]["positive_mass"]["mean"] == 0.0
    alone = audit_pairs(net, pairs, [cce.LayerHiResCam], progress=False)
    assert alone["methods"]["LayerHiResCam"]["wall_ratio"] == res["methods"]["LayerHiResCam"]["wall_ratio"]


@needs_fmnist
def test_run_audit_smoke(tmp_path):
    from captum_cam_ext.walls import run_audit

    res = run_audit(epochs=1, n_test=12, n_train=600, out=tmp_path / "out",
                    methods=[cce.LayerGradCam, cce.LayerHiResCam], cache_dir=tmp_path / "cache",
                    progress=False, verbose=False)
    assert (tmp_path / "out" / "leakage.md").is_file()
    assert (tmp_path / "out" / "maps.png").is_file()
    assert list((tmp_path / "cache").glob("blind_split_*.pt"))
    for d in ("D1", "D2"):
        hires = res["datasets"][d]["methods"]["LayerHiResCam"]
        assert hires["positive_mass"]["mean"] == 0.0 and hires["any_positive"]["mean"] == 0.0
        assert hires["wall_ratio_nearest"]["mean"] == 0.0
    assert "LayerGradCam" in res["markdown"]
    # the second call loads the cached model
    again = run_audit(epochs=1, n_test=4, n_train=600, out=None, methods=[cce.LayerGradCam],
                      cache_dir=tmp_path / "cache", progress=False, verbose=False)
    assert again["train"]["cached"] is True


@needs_fmnist
def test_cli(tmp_path, capsys):
    from captum_cam_ext.walls.__main__ import main

    rc = main(["audit", "--epochs", "0", "--n-test", "3", "--n-train", "100", "--out",
               str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"), "--no-progress"],
              prog="captum-cam-ext walls")
    assert rc == 0
    assert "wall ratio" in capsys.readouterr().out


# ------------------------------------------------------------------ cache directory, program name


def test_walls_cache_dir_is_a_user_cache_never_the_working_directory(monkeypatch, tmp_path):
    from captum_cam_ext.walls.cache import CACHE_ENV, cache_dir_source, walls_cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert walls_cache_dir() == tmp_path / "home" / ".cache" / "captum-cam-ext" / "walls"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")  # the XDG spec says so
    assert walls_cache_dir() == tmp_path / "home" / ".cache" / "captum-cam-ext" / "walls"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert walls_cache_dir() == tmp_path / "xdg" / "captum-cam-ext" / "walls"
    assert cache_dir_source() == "$XDG_CACHE_HOME"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert walls_cache_dir() == tmp_path / "env" / "walls"
    assert cache_dir_source() == f"${CACHE_ENV}"
    assert walls_cache_dir("flag") == tmp_path / "flag"  # the flag wins, made absolute
    assert walls_cache_dir("flag").is_absolute() and cache_dir_source("flag") == "--cache-dir"


@needs_fmnist
def test_audit_cli_caches_in_the_user_cache_and_says_where(monkeypatch, tmp_path, capsys):
    from captum_cam_ext.walls.__main__ import run_cli
    from captum_cam_ext.walls.cache import CACHE_ENV

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    args = ["audit", "--epochs", "0", "--n-test", "2", "--n-train", "50", "--no-progress",
            "--out", str(tmp_path / "o")]
    assert run_cli(args, prog="captum-cam-ext walls") == 0
    out = capsys.readouterr().out
    cached = list((tmp_path / "cache" / "walls").glob("blind_split_*.pt"))
    assert len(cached) == 1 and f"cached as {cached[0]}" in out and f"${CACHE_ENV}" in out
    assert list(work.iterdir()) == []  # nothing written where the command ran
    assert run_cli(args, prog="captum-cam-ext walls") == 0
    assert f"loaded from the cache {cached[0]}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv0, prog",
    [("/usr/local/bin/captum-cam-ext", "captum-cam-ext walls"),
     ("/x/site-packages/captum_cam_ext/__main__.py", "python -m captum_cam_ext walls"),
     ("/x/site-packages/captum_cam_ext/walls/__main__.py", "python -m captum_cam_ext.walls")],
)
def test_audit_help_names_the_program_the_user_ran(monkeypatch, capsys, argv0, prog):
    from captum_cam_ext.walls.__main__ import run_cli

    monkeypatch.setattr("sys.argv", [argv0, "audit", "--help"])
    with pytest.raises(SystemExit) as exc:
        run_cli(["audit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} audit")
    assert "~/.cache/captum-cam-ext/walls" in out  # the help says where the cache is
    assert run_cli(["audit", "--n-test", "0"], prog="my-tool walls") == 2
    assert "my-tool walls audit: error: argument --n-test: must be >= 1" in capsys.readouterr().err


def test_package_cli_walls_help_names_the_package_command(monkeypatch, capsys):
    """``captum-cam-ext walls audit --help`` shows ``captum-cam-ext walls audit``."""
    from captum_cam_ext.cli import main

    monkeypatch.setattr("sys.argv", ["/usr/bin/captum-cam-ext"])
    with pytest.raises(SystemExit) as exc:
        main(["walls", "audit", "--help"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("usage: captum-cam-ext walls audit")


@needs_fmnist
def test_paper_geometry_models_train_and_cache(tmp_path):
    from captum_cam_ext.walls import check_blind, train_blind_model

    model, info = train_blind_model("paper", epochs=1, n_train=256, cache_dir=tmp_path,
                                    progress=False)
    assert info["cached"] is False and (tmp_path / "blind_paper_e1_n256_s0.pt").is_file()
    assert model.band_start == 42 and not model.training
    x = torch.randn(8, 1, 56, 28)
    assert check_blind(model, x, "42:56").blind
    control, _ = train_blind_model("paper-nowall", epochs=1, n_train=256, cache_dir=tmp_path,
                                   progress=False)
    assert not check_blind(control, x, "42:56").blind
    again, info2 = train_blind_model("paper", epochs=1, n_train=256, cache_dir=tmp_path,
                                     progress=False)
    assert info2["cached"] and all(torch.equal(a, b) for a, b in
                                   zip(model.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="model kind"):
        train_blind_model("vgg", cache_dir=tmp_path)
