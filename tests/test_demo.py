"""`make demo`: the figure and the summary are written (offline, bundled model and photo)."""

from __future__ import annotations

import time

import numpy as np
import pytest


def test_demo_writes_figure_and_summary(tmp_path):
    pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite_pytorch")
    from captum_cam_ext.demo import METHOD_LABELS, run_demo

    t0 = time.perf_counter()
    res = run_demo(str(tmp_path / "out"), verbose=False)
    elapsed = time.perf_counter() - t0
    fig = tmp_path / "out" / "demo_cams.png"
    assert res["figure"] == fig and fig.is_file()
    from PIL import Image

    with Image.open(fig) as im:
        w, h = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert w > 3 * h and h > 200  # one row: input + 4 overlays
    assert pixels.std() > 20  # not a blank figure
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["demo_cams.png", "summary.txt"]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "tiger cat" in summary  # the bundled model's top-1 class for chelsea
    top = res["top5"]
    assert top[0][0] == "tiger cat" and 0.2 < top[0][1] < 0.6
    assert all(a[1] >= b[1] for a, b in zip(top, top[1:]))
    for name in METHOD_LABELS:
        assert name in summary
        s = res["methods"][name]
        assert 0.0 <= s["average_drop"] <= 100.0 and s["average_increase"] in (0.0, 100.0)
        assert res["maps"][name].shape == (1, 1, 7, 7)
        assert float(res["maps"][name].max()) > 0.0  # relu'd maps with some positive evidence
    # the maps of different methods differ (the figure is not four copies of one map)
    g, s = res["maps"]["Grad-CAM"], res["maps"]["Score-CAM"]
    assert not np.allclose(g.numpy() / g.max().item(), s.numpy() / s.max().item(), atol=1e-2)
    assert elapsed < 180  # the demo must stay quick (< 2 min on 2 idle cores)
