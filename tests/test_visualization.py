"""Visualization helpers: overlay arithmetic, grids, and Captum's visualizer accepting our maps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from captum.attr import visualization as captum_viz  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from models import SmallCNN  # noqa: E402

from captum_cam_ext import LayerGradCam  # noqa: E402
from captum_cam_ext.visualization import (  # noqa: E402
    cam_grid,
    overlay,
    resize_cam,
    save_figure,
    to_captum_attr,
    to_image,
)


def _photo(h: int = 20, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    h=st.integers(4, 24),
    w=st.integers(4, 24),
    mh=st.integers(2, 8),
    mw=st.integers(2, 8),
    alpha=st.floats(0.0, 1.0),
)
def test_overlay_is_the_alpha_blend_of_image_and_colormap(h, w, mh, mw, alpha):
    img = _photo(h, w, seed=h * 31 + w)
    cam = torch.rand(1, 1, mh, mw, generator=torch.Generator().manual_seed(mh * 7 + mw))
    out = overlay(img, cam[0], colormap="viridis", alpha=alpha)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    up = F.interpolate(cam, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    up = (up - up.min()) / (up.max() - up.min()) if up.max() > up.min() else np.zeros_like(up)
    heat = matplotlib.colormaps["viridis"](up)[..., :3]
    expected = (1 - alpha) * img / 255.0 + alpha * heat
    assert np.abs(out.astype(float) - expected * 255).max() <= 0.5 + 1e-6


def test_overlay_extremes_and_errors():
    img = _photo()
    cam = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(overlay(img, cam, alpha=0.0), img)
    # a constant map is all colormap(0)
    flat = overlay(img, np.ones((3, 4)), colormap="jet", alpha=1.0)
    c0 = np.round(np.array(matplotlib.colormaps["jet"](0.0)[:3]) * 255)
    assert np.all(flat == c0.astype(np.uint8))
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, cam, alpha=1.5)
    with pytest.raises(ValueError, match="colormap"):
        overlay(img, cam, colormap="no-such-map")
    with pytest.raises(ValueError, match="one map"):
        overlay(img, np.zeros((2, 1, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        overlay(img, np.full((3, 4), np.nan))


def test_to_image_layouts():
    img = _photo(6, 5)
    chw = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0
    assert np.abs(to_image(chw).astype(int) - img.astype(int)).max() <= 1
    gray = to_image(np.zeros((6, 5)))
    assert gray.shape == (6, 5, 3)
    norm = to_image(torch.randn(3, 6, 5))  # a normalised input is rescaled to [0, 255]
    assert norm.min() == 0 and norm.max() == 255


def test_resize_cam_matches_interpolate():
    cam = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(0))
    up = resize_cam(cam, (20, 28))
    ref = F.interpolate(cam, size=(20, 28), mode="bilinear", align_corners=False)[0, 0].numpy()
    assert up.shape == (20, 28)
    np.testing.assert_allclose(up, ref, rtol=0, atol=1e-6)


def test_captum_visualize_image_attr_accepts_our_maps():
    torch.manual_seed(0)
    model = SmallCNN(width=4, n_classes=3).eval()
    x = torch.rand(2, 3, 16, 16)
    maps = LayerGradCam(model, model.features).attribute(x, target=1, relu_attributions=True)
    attr = to_captum_attr(maps[0], size=(16, 16))
    assert attr.shape == (16, 16, 1)
    attr3 = to_captum_attr(maps, size=(16, 16), channels=3)
    assert attr3.shape == (2, 16, 16, 3)
    # the values are exactly the upsampled map
    ref = F.interpolate(maps[:1], size=(16, 16), mode="bilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(attr[..., 0], ref.numpy(), atol=1e-6)
    image = x[0].permute(1, 2, 0).numpy()
    for method, a in (("heat_map", attr), ("blended_heat_map", attr3[0])):
        fig, ax = captum_viz.visualize_image_attr(
            a, original_image=image, method=method, sign="positive", use_pyplot=False
        )
        assert fig is not None and ax is not None
        plt.close(fig)


def test_cam_grid_layout_and_save(tmp_path):
    imgs = [_photo(10, 12, s) for s in range(3)]
    maps = {"A": torch.rand(3, 1, 4, 4), "B": [np.random.rand(2, 2) for _ in range(3)]}
    fig = cam_grid(imgs, maps, titles=["x", "y", "z"])
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == 3 * 3  # input row + 2 methods, 3 columns
    assert [ax.get_title() for ax in image_axes[:3]] == ["x", "y", "z"]
    p = save_figure(fig, tmp_path / "sub" / "grid.png")
    assert p.is_file() and p.stat().st_size > 1000
    fig2 = cam_grid(imgs, maps, titles=[str(i) for i in range(6)], show_images=False, colorbar=False)
    assert len(fig2.axes) == 6 and fig2.axes[5].get_title() == "5"
    with pytest.raises(ValueError, match="maps for 3 images"):
        cam_grid(imgs, {"A": torch.rand(2, 1, 4, 4)})
    with pytest.raises(ValueError, match="titles"):
        cam_grid(imgs, maps, titles=["a"])
    with pytest.raises(ValueError, match="empty"):
        cam_grid(imgs, {})
