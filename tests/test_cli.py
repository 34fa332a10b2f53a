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
    # a bad value is reported by the walls CLI itself (proves the arguments reach it) as exit 2,
    # under the name the user typed
    assert main(["walls", "audit", "--n-test", "0"]) == 2
    assert "captum-cam-ext walls audit: error: argument --n-test: must be >= 1" in capsys.readouterr().err


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


# ---------------------------------------------------------------------------------------------
# Issue 10: the command line and packaging
# ---------------------------------------------------------------------------------------------


def _one_line_error(err: str) -> str:
    """The stderr of a user error: exactly one 'error: ...' line (warnings aside), no escape codes."""
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "\x1b" not in err and "Traceback" not in err
    return lines[0]


def _fmnist_or_skip():
    from captum_cam_ext.data import fashion_mnist_available, load_fashion_mnist

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST files not installed")
    return load_fashion_mnist("test")


def test_evaluate_fashion_mnist_works_with_a_torchvision_model_and_states_the_conversion(tmp_path, capsys):
    import torch.nn.functional as F
    import torchvision

    from captum_cam_ext.metrics import confidence_metrics

    images, labels = _fmnist_or_skip()
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    weights = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "ev"
    assert main(["evaluate", "--dataset", "fashion-mnist", "--model", "resnet18", "--weights", str(weights),
                 "--size", "64", "--limit", "3", "--target", "label", "--out", str(out), "--no-progress",
                 "--per-example"]) == 0
    stated = ("Fashion-MNIST 28x28 grayscale -> model input 3x64x64: grayscale replicated to 3 channels, "
              "bilinear resize 28x28 -> 64x64, ImageNet mean/std")
    assert f"input: {stated}" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert data["n"] == 3 and data["input"] == stated and stated in (out / "results.md").read_text()
    # the same numbers from the stated conversion, done by hand
    gray = torch.from_numpy(images[:3]).float().div(255)[:, None]
    x = F.interpolate(gray, size=(64, 64), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])  # ImageNet
    x = (x.expand(-1, 3, -1, -1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    target = torch.from_numpy(labels[:3])
    maps = LayerGradCam(model, model.layer4).attribute(x, target=target, relu_attributions=True)
    drop = confidence_metrics(model, x, maps, target=target).drop
    assert data["per_example"]["gradcam"]["average_drop"] == pytest.approx(drop.tolist(), abs=1e-3)


def test_preprocessing_fashion_mnist_is_honoured_for_torchvision_models():
    from captum_cam_ext.cli import load_model
    from captum_cam_ext.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD

    img = np.arange(28 * 28, dtype=np.int64).reshape(28, 28).__mod__(256).astype(np.uint8)
    lm = load_model("resnet18", size=28, preprocessing="fashion-mnist", quiet=True)
    expected = ((torch.from_numpy(img).float() / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD)
    torch.testing.assert_close(lm.preprocess(img), expected.expand(1, 3, 28, 28))
    # and back: the display is the image itself
    assert np.array_equal(lm.display(lm.preprocess(img))[..., 0], img)


def test_out_naming_an_existing_file_is_a_one_line_error(photo_dir, tmp_path, capsys):
    afile = tmp_path / "results.txt"
    afile.write_text("keep me")
    assert main(["explain", str(photo_dir / "chelsea.png"), "--out", str(afile)]) == 2
    assert "is an existing file" in _one_line_error(capsys.readouterr().err)
    assert main(["evaluate", str(photo_dir), "--out", str(afile / "sub")]) == 2
    assert "is an existing file" in _one_line_error(capsys.readouterr().err)
    assert afile.read_text() == "keep me"


def test_a_whole_model_pickle_given_as_weights_says_to_pass_it_as_model(photo_dir, tmp_path, capsys):
    whole = tmp_path / "whole.pt"
    torch.save(_tiny_model(in_ch=3), whole)
    assert main(["explain", str(photo_dir), "--model", "resnet18", "--weights", str(whole),
                 "--out", str(tmp_path / "o")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "not a state_dict" in line and f"--model {whole}" in line and "torch.nn.modules" in line
    # following the advice works
    assert main(["explain", str(photo_dir / "chelsea.png"), "--model", str(whole), "--out", str(tmp_path / "o")]) == 0


def test_weights_of_another_architecture_name_the_mismatch_in_one_line(photo_dir, tmp_path, capsys):
    import torchvision

    path = tmp_path / "sq.pth"
    torch.save({"state_dict": torchvision.models.squeezenet1_1().state_dict()}, path)
    assert main(["explain", str(photo_dir), "--model", "resnet18", "--weights", str(path),
                 "--out", str(tmp_path / "o")]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "does not fit resnet18" in line and "missing" in line and "conv1.weight" in line


def test_size_is_refused_for_efficientnet_lite0_and_honoured_for_torchvision(photo_dir, tmp_path, capsys):
    from captum_cam_ext.cli import load_model, read_image

    assert main(["explain", str(photo_dir), "--model", "efficientnet_lite0", "--size", "160",
                 "--out", str(tmp_path / "o")]) == 2
    assert "224x224 inputs only" in _one_line_error(capsys.readouterr().err)
    lm = load_model("resnet18", size=96, quiet=True)
    assert lm.preprocess(read_image(photo_dir / "chelsea.png")).shape == (1, 3, 96, 96)
    assert main(["explain", str(photo_dir), "--model", "resnet18", "--size", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--size must be a positive integer" in _one_line_error(capsys.readouterr().err)


def _tiny_vit() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=5).eval()
    nn.init.normal_(vit.heads.head.weight)  # torchvision starts the head at zero: no gradient at all
    return vit


def test_vit_defaults_to_the_last_blocks_layernorm_with_tokens_as_a_grid(photo_dir, tmp_path, capsys):
    from captum_cam_ext.cli import load_model, read_image

    model = _tiny_vit()
    path = tmp_path / "vit.pt"
    torch.save(model, path)
    out = tmp_path / "o"
    assert main(["explain", str(photo_dir / "chelsea.png"), "--model", str(path), "--target", "3",
                 "--method", "gradcam,scorecam", "--out", str(out)]) == 0
    assert "--reshape vit" in capsys.readouterr().out
    saved = torch.load(out / "maps.pt", weights_only=False)
    assert saved["layer"] == "encoder.layers.encoder_layer_1.ln_1" and saved["reshape"] == "vit"
    x = load_model(str(path)).preprocess(read_image(photo_dir / "chelsea.png"))

    def grid(t):  # (1, 1 + 16, 16) -> (1, 16, 4, 4), the class token dropped
        return t[:, 1:, :].reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2)

    ref = LayerGradCam(model, model.encoder.layers.encoder_layer_1.ln_1, reshape_transform=grid).attribute(
        x, target=3, relu_attributions=True)
    assert saved["images"]["chelsea"]["maps"]["gradcam"].shape == (1, 4, 4)
    torch.testing.assert_close(saved["images"]["chelsea"]["maps"]["gradcam"], ref[0])
    assert float(ref.abs().max()) > 0
    # a method without token layouts, and a token layout on a non-token layer: one-line errors
    assert main(["explain", str(photo_dir), "--model", str(path), "--method", "ablationcam", "--reshape", "vit",
                 "--out", str(out)]) == 2
    assert "does not support token layouts" in _one_line_error(capsys.readouterr().err)
    assert main(["explain", str(photo_dir), "--model", str(path), "--method", "ablationcam",
                 "--out", str(out), "--no-progress"]) == 2  # auto: tokens would be taken as channels
    assert "not (N, 1, h, w) image maps" in _one_line_error(capsys.readouterr().err)
    assert main(["explain", str(photo_dir), "--model", str(path), "--layer", "conv_proj", "--reshape", "vit",
                 "--out", str(out)]) == 2
    assert "expects token outputs" in _one_line_error(capsys.readouterr().err)
    assert main(["explain", str(photo_dir), "--model", str(path), "--size", "64", "--out", str(out)]) == 2
    assert "32x32 inputs only" in _one_line_error(capsys.readouterr().err)


def test_torchvision_vit_b_16_gets_the_token_layout_and_its_default_layer():
    from captum_cam_ext.cli import CliError, load_model, resolve_layer

    lm = load_model("vit_b_16", quiet=True)
    assert (lm.default_layer, lm.token_layout) == ("encoder.layers.encoder_layer_11.ln_1", "vit")
    assert resolve_layer(lm.model, None, lm.default_layer)[0] is lm.model.encoder.layers[-1].ln_1
    assert lm.preprocessing.size == 224
    with pytest.raises(CliError, match="224x224 inputs only"):
        load_model("vit_b_16", size=160, quiet=True)


def test_user_errors_are_one_line_with_exit_status_2(photo_dir, tmp_path, capsys):
    model_file = tmp_path / "tiny.pt"
    torch.save(_tiny_model(in_ch=3), model_file)
    cases = [
        (["explain", str(photo_dir), "--model", "resnet181"], "Did you mean"),
        (["explain", str(photo_dir), "--model", str(model_file), "--layer", "9"], "unknown layer"),
        (["explain", str(photo_dir), "--model", str(model_file), "--method", "gradcam,foo"], "unknown method"),
        (["explain", str(photo_dir), "--model", str(model_file), "--target", "99"], "out of range"),
        (["evaluate", str(photo_dir), "--model", str(model_file), "--metrics", "accuracy"], "unknown metric"),
        (["evaluate", str(photo_dir), "--model", str(model_file), "--target", "label"], "--target label"),
        (["bench", "--model", str(model_file), "--repeats", "0"], "positive"),
    ]
    for argv, msg in cases:
        extra = [] if argv[0] == "bench" else ["--out", str(tmp_path / "o"), "--no-progress"]
        assert main(argv + extra) == 2, argv
        assert msg in _one_line_error(capsys.readouterr().err), argv


def test_explain_help_says_torchscript_files_are_refused(capsys, tmp_path, photo_dir):
    from captum_cam_ext.cli import build_parser

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["explain"].format_help().split())
    assert "TorchScript / torch.save" not in help_text  # the old claim
    assert "TorchScript files are refused" in help_text
    import warnings

    with warnings.catch_warnings():  # and the claim holds: a TorchScript file is refused
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_tiny_model(in_ch=3)), str(tmp_path / "ts.pt"))
    assert main(["explain", str(photo_dir), "--model", str(tmp_path / "ts.pt"), "--out", str(tmp_path)]) == 2
    assert "do not support the forward hooks" in _one_line_error(capsys.readouterr().err)


def test_the_wheel_ships_py_typed(tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(ROOT / "captum_cam_ext", src / "captum_cam_ext",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "captum_cam_ext/py.typed" in names and "captum_cam_ext/cli/__init__.py" in names
    entry = [n for n in names if n.endswith("entry_points.txt")]
    assert "captum-cam-ext = captum_cam_ext.cli:main" in zipfile.ZipFile(wheel).read(entry[0]).decode()


def test_evaluate_metrics_come_from_the_metric_registry_and_controls_add_rows(photo_dir, tmp_path, capsys):
    from captum_cam_ext.cli import build_parser
    from captum_cam_ext.metrics.registry import metric_specs

    help_text = " ".join(build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help().split())
    for name, spec in metric_specs().items():
        assert name in help_text
        if spec.higher_is_better is not None:
            assert f"{name} ({spec.direction} is better)" in help_text
    path = tmp_path / "tiny.pt"
    torch.save(_tiny_model(in_ch=3), path)
    out = tmp_path / "ev"
    assert main(["evaluate", str(photo_dir), "--model", str(path), "--size", "32", "--layer", "2",
                 "--metrics", "average_drop", "--controls", "--out", str(out), "--no-progress"]) == 0
    data = json.loads((out / "results.json").read_text())
    rows = list(data["means"])
    assert rows[0] == "gradcam" and len(rows) > 1 and any(r.startswith("constant") for r in rows)
    assert set(data["controls"]) == set(rows[1:])
    assert set(data["means"]["gradcam"]) >= {"average_drop", "mask_area"}  # the area comes with AD


def test_all_skips_the_methods_that_do_not_apply_but_a_named_one_is_an_error(photo_dir, tmp_path, capsys):
    from captum_cam_ext.registry import methods

    path = tmp_path / "tiny.pt"
    torch.save(_tiny_model(in_ch=3), path)
    out = tmp_path / "o"
    assert main(["explain", str(photo_dir / "chelsea.png"), "--model", str(path), "--size", "16", "--layer", "2",
                 "--method", "all", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    saved = torch.load(out / "maps.pt", weights_only=False)["images"]["chelsea"]["maps"]
    skipped = {line.split()[2].rstrip(":") for line in err.splitlines() if line.startswith("warning: skipping")}
    assert "legrad" in skipped  # a method for transformer blocks, on a CNN
    assert set(saved) | skipped == set(methods()) and not set(saved) & skipped
    assert {"gradcam", "scorecam", "fullgrad"} <= set(saved)  # fullgrad: no relu_attributions argument
    for name, m in saved.items():
        assert m.dim() == 3 and m.shape[0] == 1 and torch.isfinite(m).all(), name
    assert main(["explain", str(photo_dir), "--model", str(path), "--method", "gradcam,legrad", "--out", str(out),
                 "--no-progress"]) == 2
    assert _one_line_error(capsys.readouterr().err).startswith("error: legrad: LeGrad explains transformer blocks")


def test_compare_a_method_with_its_matched_area_power_control(tmp_path, capsys):
    from captum_cam_ext.data import fashion_mnist_available

    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST files not installed")
    path = tmp_path / "fm.pt"
    torch.save(_tiny_model(in_ch=1), path)
    out = tmp_path / "cmp"
    args = ["compare", "gradcam", "power:0.5", "--dataset", "fashion-mnist", "--limit", "10", "--model", str(path),
            "--layer", "3", "--n-boot", "300", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    data = json.loads((out / "compare.json").read_text())
    assert data["a"] == "gradcam" and data["b"] == "power:0.5" and data["n"] == 10
    rows = {(c["a"], c["b"], c["metric"]): c for c in data["comparisons"]}
    drop = rows[("gradcam", "gradcam**0.5", "average_drop")]
    assert drop["mean_diff"] == pytest.approx(drop["mean_a"] - drop["mean_b"], abs=1e-9)
    assert drop["ci_low"] <= drop["mean_diff"] <= drop["ci_high"]
    area = rows[("gradcam", "gradcam**0.5", "mask_area")]
    assert area["mean_b"] > area["mean_a"]  # the square root of a [0, 1] map covers more
    assert "Paired comparisons" in (out / "compare.md").read_text()
    assert main(["compare", "gradcam", "powr", "--dataset", "fashion-mnist", "--model", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'powr'" in err and "a control: power" in err and len(err.strip().splitlines()) == 1
