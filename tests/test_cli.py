"""The command line: a real photo and a broken file in a folder, clear errors, evaluate, bench."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from captum_cam_ext import LayerGradCam
from captum_cam_ext.cli import candidate_layers, main, resolve_layer
from captum_cam_ext.registry import methods

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(skimage_data.chelsea()).save(d / "chelsea.png")
    (d / "broken.png").write_bytes(b"this is not a PNG file")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d


def _tiny_model(in_ch: int = 1) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(in_ch, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()


def _run_cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "captum_cam_ext", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_explain_folder_subprocess(photo_dir, tmp_path):
    out = tmp_path / "out"
    proc = _run_cli("--threads", "1", "explain", str(photo_dir), "--model", "efficientnet_lite0",
                    "--layer", "_blocks.15", "--method", "gradcam,gradcam++", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the broken file is skipped with a warning, the text file silently ignored
    assert "warning: skipping broken.png" in proc.stderr and "cannot read image" in proc.stderr
    assert "notes.txt" not in proc.stderr and "Traceback" not in proc.stderr
    for m in ("gradcam", "gradcampp"):
        png = out / f"chelsea_{m}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        npy = np.load(out / f"chelsea_{m}.npy")
        assert npy.shape == (224, 224) and npy.dtype == np.float32
        assert npy.min() == 0.0 and npy.max() == pytest.approx(1.0)
    assert not list(out.glob("broken*"))
    saved = torch.load(out / "maps.pt", weights_only=False)
    entry = saved["images"]["chelsea"]
    assert saved["layer"] == "_blocks.15" and entry["class"] == "tiger cat"
    assert entry["maps"]["gradcam"].shape == (1, 7, 7)
    # the saved map is the package's Grad-CAM of the predicted class
    from skimage.data import chelsea

    from captum_cam_ext.data import load_efficientnet_lite0, preprocess_efficientnet

    model = load_efficientnet_lite0()
    from PIL import Image

    x = preprocess_efficientnet(np.asarray(Image.open(photo_dir / "chelsea.png").convert("RGB")))
    assert np.array_equal(np.asarray(Image.open(photo_dir / "chelsea.png")), chelsea())
    ref = LayerGradCam(model, model._blocks[15]).attribute(x, target=entry["target"],
                                                          relu_attributions=True)
    torch.testing.assert_close(entry["maps"]["gradcam"], ref[0], rtol=1e-4, atol=1e-6)
    records = json.loads((out / "explain.json").read_text())
    assert len(records) == 2 and {r["method"] for r in records} == {"gradcam", "gradcam++"}


def test_single_broken_file_is_an_error(photo_dir, tmp_path, capsys):
    assert main(["explain", str(photo_dir / "broken.png"), "--model", "efficientnet_lite0",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read image") and "broken.png" in err


def test_unknown_layer_lists_candidates(photo_dir, tmp_path, capsys):
    code = main(["explain", str(photo_dir), "--model", "resnet18", "--layer", "layer5",
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "RANDOM weights" in err  # random torchvision weights are announced
    assert "unknown layer 'layer5'" in err and "Candidate conv-like layers" in err
    for name in ("conv1", "layer1", "layer4", "layer4.1"):
        assert f" {name}," in err or err.rstrip().endswith(name)
    assert "fc" not in err.split("Candidate conv-like layers:")[1].split(", ")
    assert "Traceback" not in err


def test_other_user_errors(photo_dir, tmp_path, capsys):
    cases = [
        (["explain", str(photo_dir), "--method", "gradcam,foo"], "unknown method 'foo'"),
        (["explain", str(tmp_path / "missing")], "no such file or folder"),
        (["explain", str(photo_dir), "--model", str(tmp_path / "nope.pt")], "model file not found"),
        (["explain", str(photo_dir), "--model", "resnet181"], "Did you mean: resnet18"),
        (["explain", str(photo_dir), "--model", "resnet18", "--weights", "w.pt"],
         "weights file not found"),
    ]
    for argv, msg in cases:
        assert main(argv + ["--out", str(tmp_path / "o")]) == 2, argv
        err = capsys.readouterr().err
        assert msg in err, (argv, err)
        if "unknown method" in msg:
            assert all(m in err for m in methods())


def test_candidate_layers_and_resolution():
    model = _tiny_model()
    assert candidate_layers(model) == ["0", "2"]
    layer, name = resolve_layer(model, "3")
    assert layer is model[3] and name == "3"
    _, default = resolve_layer(model, None)
    assert default == "2"  # the last top-level module holding a convolution


def test_explain_and_evaluate_with_a_saved_model(photo_dir, tmp_path, capsys):
    model = _tiny_model(in_ch=3)
    path = tmp_path / "tiny.pt"
    torch.save(model, path)
    out = tmp_path / "ev"
    assert main(["evaluate", str(photo_dir), "--model", str(path), "--layer", "3",
                 "--method", "gradcam", "--method", "scorecam", "--causal", "--causal-steps", "4",
                 "--out", str(out), "--no-progress", "--per-example"]) == 0
    captured = capsys.readouterr()
    assert "skipping broken.png" in captured.err
    md = (out / "results.md").read_text()
    assert "| gradcam |" in md and "| scorecam |" in md and "deletion_auc" in md
    data = json.loads((out / "results.json").read_text())
    assert data["n"] == 1 and set(data["means"]) == {"gradcam", "scorecam"}
    # the JSON holds the Average Drop of the package's metric on the same input
    from captum_cam_ext.cli import load_model, read_image
    from captum_cam_ext.metrics import confidence_metrics

    lm = load_model(str(path))
    x = lm.preprocess(read_image(photo_dir / "chelsea.png"))
    maps = LayerGradCam(lm.model, lm.model[3]).attribute(x, target=lm.model(x).argmax(1),
                                                         relu_attributions=True)
    drop = confidence_metrics(lm.model, x, maps).average_drop
    assert data["means"]["gradcam"]["average_drop"] == pytest.approx(drop, abs=1e-4)


def test_evaluate_fashion_mnist(tmp_path, capsys):
    from captum_cam_ext.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST files not installed")
    path = tmp_path / "fm.pt"
    torch.save(_tiny_model(in_ch=1), path)
    out = tmp_path / "fm"
    assert main(["evaluate", "--dataset", "fashion-mnist", "--limit", "12", "--model", str(path),
                 "--layer", "3", "--target", "label", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "results.json").read_text())
    assert data["n"] == 12 and data["counts"]["gradcam"]["average_drop"] == 12
    assert "Fashion-MNIST test (12 images)" in (out / "results.md").read_text()


def test_bench_quick(tmp_path, capsys):
    path = tmp_path / "tiny.pt"
    torch.save(_tiny_model(in_ch=1), path)
    assert main(["bench", "--model", str(path), "--layer", "3", "--method", "gradcam,layercam",
                 "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| forward (no grad) |" in out and "| gradcam |" in out and "| layercam |" in out


def test_walls_audit_delegates(capsys):
    # a bad value is reported by the walls CLI itself (proves the arguments reach it) as exit 2
    assert main(["walls", "audit", "--n-test", "0"]) == 2
    assert "n_test must be a positive int" in capsys.readouterr().err


def test_target_by_class_name_and_torchscript_refusal(photo_dir, tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["explain", str(photo_dir / "chelsea.png"), "--layer", "_blocks.15",
                 "--target", "Egyptian cat", "--out", str(out)]) == 0
    saved = torch.load(out / "maps.pt", weights_only=False)["images"]["chelsea"]
    assert saved["target"] == 285 and saved["class"] == "Egyptian cat"
    assert main(["explain", str(photo_dir), "--target", "egyptian kat", "--out", str(out)]) == 2
    assert "Did you mean: egyptian cat" in capsys.readouterr().err
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(_tiny_model(in_ch=3))
        torch.jit.save(scripted, str(tmp_path / "ts.pt"))
    assert main(["explain", str(photo_dir), "--model", str(tmp_path / "ts.pt"),
                 "--out", str(out)]) == 2
    assert "TorchScript" in capsys.readouterr().err


def test_a_method_registered_in_a_test_is_offered_and_runs_through_explain(photo_dir, tmp_path, capsys):
    from captum_cam_ext import CamAttribution
    from captum_cam_ext.cli import build_parser, load_model, read_image
    from captum_cam_ext.registry import register_method, unregister_method

    class LayerMaxGradCam(CamAttribution):
        """Channel weight = the largest gradient of the channel (a test-only CAM)."""

        name = "maxgradcam"

        def cam_weights(self, activations, gradients):
            return gradients.amax(dim=(2, 3), keepdim=True)

    model = _tiny_model(in_ch=3)
    path = tmp_path / "tiny.pt"
    torch.save(model, path)
    out = tmp_path / "o"
    register_method(LayerMaxGradCam, aliases=("max-grad-cam",))
    try:
        help_text = build_parser()._subparsers._group_actions[0].choices["explain"].format_help()
        assert "maxgradcam" in help_text.replace("\n", " ").replace(" ", "")
        assert main(["explain", str(photo_dir / "chelsea.png"), "--model", str(path), "--layer", "2",
                     "--method", "gradcam,Max-Grad-CAM", "--target", "4", "--out", str(out)]) == 0
        assert main(["explain", str(photo_dir), "--method", "nosuchcam", "--out", str(out)]) == 2
        assert "maxgradcam" in capsys.readouterr().err  # listed among the choices
    finally:
        unregister_method(LayerMaxGradCam)
    assert main(["explain", str(photo_dir), "--method", "maxgradcam", "--out", str(out)]) == 2
    saved = torch.load(out / "maps.pt", weights_only=False)["images"]["chelsea"]["maps"]
    # the hand-computed map: relu(sum_k max_p dy/dA_k(p) * A_k)
    x = load_model(str(path)).preprocess(read_image(photo_dir / "chelsea.png"))
    acts = model[:3](x).detach().requires_grad_(True)  # layer "2": the second convolution
    (grad,) = torch.autograd.grad(model[3:](acts)[0, 4], acts)
    expected = torch.relu((grad.amax(dim=(2, 3), keepdim=True) * acts).sum(1)).detach()
    scale = float(expected.max())
    assert scale > 0
    torch.testing.assert_close(saved["maxgradcam"] / scale, expected / scale, rtol=1e-5, atol=1e-6)
    gradcam = saved["gradcam"] / float(saved["gradcam"].max())
    assert (gradcam - expected / scale).abs().max() > 0.05  # a different method, not Grad-CAM again
    assert (out / "chelsea_maxgradcam.png").is_file()
