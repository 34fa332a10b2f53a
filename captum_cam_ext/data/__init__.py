"""Offline assets: a pretrained EfficientNet-Lite0, bundled photos and Fashion-MNIST."""

from captum_cam_ext.data.efficientnet import (
    EFFICIENTNET_INPUT_SIZE,
    IMAGENET_CLASSES,
    default_target_layer,
    load_efficientnet_lite0,
    preprocess_efficientnet,
)
from captum_cam_ext.data.fashion_mnist import (
    DEFAULT_FASHION_MNIST_ROOT,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    fashion_mnist_available,
    fashion_mnist_tensors,
    load_fashion_mnist,
    read_idx,
)
from captum_cam_ext.data.photos import bundled_photos

__all__ = [
    "EFFICIENTNET_INPUT_SIZE",
    "IMAGENET_CLASSES",
    "default_target_layer",
    "load_efficientnet_lite0",
    "preprocess_efficientnet",
    "DEFAULT_FASHION_MNIST_ROOT",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "fashion_mnist_available",
    "fashion_mnist_tensors",
    "load_fashion_mnist",
    "read_idx",
    "bundled_photos",
]
