"""`make demo`: the figure and the summary are written (offline, bundled model and photo)."""

from __future__ import annotations

import time

import numpy as np
import pytest


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One run of the demo for the tests of this module: (result, CPU seconds, output folder)."""
    pytest.importorskip("skimage.data")
    pytest.importorskip("efficientnet_lite_pytorch")
    from captum_cam_ext.demo import run_demo

    out = tmp_path_factory.mktemp("demo") / "out"
    t0 = time.process_time()  # CPU time: other jobs on a shared machine do not count
    res = run_demo(str(out), verbose=False)
    return res, time.process_time() - t0, out


def test_demo_writes_figure_and_summary(demo):
    from captum_cam_ext.demo import METHOD_LABELS

    res, cpu_seconds, out = demo
    fig = out / "demo_cams.png"
    assert res["figure"] == fig and fig.is_file()
    from PIL import Image

    with Image.open(fig) as im:
        w, h = im.size
        pixels = np.asarray(im.convert("RGB"))
    assert w > 3 * h and h > 200  # one row: input + 4 overlays
    assert pixels.std() > 20  # not a blank figure
    assert sorted(p.name for p in out.iterdir()) == ["demo_cams.png", "summary.txt"]
    summary = (out / "summary.txt").read_text()
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
    assert cpu_seconds < 360  # the demo must stay quick (< 2 min on 2 idle cores)


def _summary_numbers(text: str) -> dict:
    """Top-5 (class, p) and per-method (Avg Drop, Avg Inc, p(masked)) of a demo summary; times left out."""
    top, rows = [], {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].rstrip(".").isdigit() and parts[-3:-1] == ["p", "="]:
            top.append((" ".join(parts[1:-3]), float(parts[-1])))
        elif len(parts) == 5 and parts[0] in ("Grad-CAM", "Grad-CAM++", "Score-CAM", "Conceptor-CAM"):
            rows[parts[0]] = tuple(float(v) for v in parts[2:])
    return {"top5": top, "rows": rows}


def test_the_docs_gallery_stores_what_make_demo_prints(demo):
    """docs/_static/gallery/demo_summary.txt (docs/make_gallery.py) must agree with `make demo`."""
    from pathlib import Path

    stored = Path(__file__).resolve().parents[1] / "docs" / "_static" / "gallery" / "demo_summary.txt"
    if not stored.is_file():
        pytest.skip("no stored gallery summary")
    res = demo[0]
    now = _summary_numbers(Path(res["summary"]).read_text())
    then = _summary_numbers(stored.read_text())
    assert len(now["top5"]) == 5 and len(now["rows"]) == 4
    assert [c for c, _ in then["top5"]] == [c for c, _ in now["top5"]]
    assert [p for _, p in then["top5"]] == pytest.approx([p for _, p in now["top5"]], abs=2e-4)
    for name, (drop, inc, masked) in now["rows"].items():
        s_drop, s_inc, s_masked = then["rows"][name]
        assert (s_drop, s_inc) == pytest.approx((drop, inc), abs=0.02), name
        assert s_masked == pytest.approx(masked, abs=2e-4), (name, "p(masked): regenerate the gallery")
