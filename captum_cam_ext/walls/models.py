"""Models that provably cannot see part of their input ("walls").

Two constructions:

* :class:`SplitTrunkBlindNet` (ours, see ``docs/see_through_walls.md``): one VGG-like convolutional
  trunk with shared weights runs *separately* on the top rows and on the bottom rows of the image;
  the two feature maps are concatenated along the height, so the CAM layer (``model.features``, a
  ReLU) covers the whole image, and the head reads only the top feature rows.  No information can
  cross the wall: the logits are bit-identical whatever the bottom rows contain and their gradient
  with respect to the bottom rows is exactly zero.
* :class:`DenseWallNet` (the construction of the paper's public code): an ordinary VGG-like CNN over
  the full image whose first dense layer has its weights on the lower feature rows masked to zero
  (:class:`MaskedLinear`, the mask is applied in ``forward`` so it survives any optimizer).  Only
  input rows outside the receptive fields of the visible feature rows are invisible; that band is
  computed by :func:`receptive_field` / :func:`invisible_band_start`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "SplitTrunkBlindNet",
    "DenseWallNet",
    "MaskedLinear",
    "ReceptiveField",
    "receptive_field",
    "invisible_band_start",
    "visible_rows_for_band",
    "vgg_trunk",
    "PAPER_HIDDEN_ROWS",
    "paper_hidden_rows",
    "paper_wall_net",
]


def vgg_trunk(
    in_channels: int,
    channels: Sequence[int],
    final_relu: bool = False,
    convs_per_block: int = 1,
) -> nn.Sequential:
    """A small VGG-like trunk: ``convs_per_block x [conv3x3(pad 1) -> ReLU]`` then a 2x2 max-pool
    per entry of ``channels`` except the last, which is a single ``conv3x3(pad 1)`` (followed by a
    ReLU when ``final_relu``).

    Parameters
    ----------
    in_channels : int
        Input channels.
    channels : sequence of int
        Output channels of each block (at least one).
    final_relu : bool
        Append a ReLU after the last convolution.
    convs_per_block : int
        Convolutions per pooled block (VGG16 has 2 or 3); ``1`` keeps the layer indices of
        earlier versions, so their state dicts still load.
    """
    if len(channels) < 1 or any(int(c) < 1 for c in channels):
        raise ValueError(
            f"channels must be a non-empty sequence of positive ints, got {channels!r}"
        )
    if not isinstance(convs_per_block, int) or convs_per_block < 1:
        raise ValueError(f"convs_per_block must be a positive int, got {convs_per_block!r}")
    layers: List[nn.Module] = []
    c_in = in_channels
    for c in channels[:-1]:
        for _ in range(convs_per_block):
            layers += [nn.Conv2d(c_in, int(c), 3, padding=1), nn.ReLU()]
            c_in = int(c)
        layers.append(nn.MaxPool2d(2))
    layers.append(nn.Conv2d(c_in, int(channels[-1]), 3, padding=1))
    if final_relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _out_size(size: int, n_pools: int) -> int:
    for _ in range(n_pools):
        size = size // 2
    return size


class SplitTrunkBlindNet(nn.Module):
    """VGG-like classifier blind to the input rows ``split_row ..  height - 1``.

    Parameters
    ----------
    in_channels, height, width : int
        Input shape (default ``1 x 56 x 28``: two stacked Fashion-MNIST images).
    split_row : int
        First input row the model cannot see (default ``height // 2``).
    channels : sequence of int
        Trunk convolutions (a 2x2 max-pool between consecutive ones); must leave at least one
        feature row for both parts.
    hidden : int
        Width of the hidden dense layer.
    n_classes : int
        Number of logits.

    Attributes
    ----------
    trunk : nn.Sequential
        Shared convolutional trunk (ends with a convolution).
    features : nn.ReLU
        The CAM target layer; its output ``(N, K, h_top + h_bottom, w)`` covers the whole input.
    visible_feature_rows : int
        Feature rows read by the head (``h_top``); rows ``>= visible_feature_rows`` are computed
        from the unseen input rows only.

    Examples
    --------
    >>> net = SplitTrunkBlindNet()
    >>> net(torch.randn(2, 1, 56, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        height: int = 56,
        width: int = 28,
        split_row: Optional[int] = None,
        channels: Sequence[int] = (16, 32, 32),
        hidden: int = 64,
        n_classes: int = 10,
    ) -> None:
        super().__init__()
        split_row = height // 2 if split_row is None else int(split_row)
        if not 0 < split_row < height:
            raise ValueError(f"split_row must be in (0, {height}), got {split_row}")
        n_pools = len(channels) - 1
        h_top, h_bot = _out_size(split_row, n_pools), _out_size(height - split_row, n_pools)
        w_feat = _out_size(width, n_pools)
        if min(h_top, h_bot, w_feat) < 1:
            raise ValueError(
                f"{n_pools} max-pools leave no feature rows for the parts {split_row} and "
                f"{height - split_row} rows x {width} columns: use fewer channels entries."
            )
        self.in_channels, self.height, self.width, self.split_row = (
            in_channels, height, width, split_row
        )
        self.trunk = vgg_trunk(in_channels, channels)
        self.features = nn.ReLU()
        self.visible_feature_rows = h_top
        self.feature_shape = (int(channels[-1]), h_top + h_bot, w_feat)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(int(channels[-1]) * h_top * w_feat, hidden),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    @property
    def unseen_input_rows(self) -> Tuple[int, int]:
        """``(first, stop)``: the input rows the output cannot depend on."""
        return self.split_row, self.height

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, H, W)`` -> logits ``(N, n_classes)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.height, self.width):
            raise ValueError(
                f"SplitTrunkBlindNet expects (N, {self.in_channels}, {self.height}, {self.width}), "
                f"got {tuple(x.shape)}"
            )
        top = self.trunk(x[:, :, : self.split_row])
        bottom = self.trunk(x[:, :, self.split_row :])
        feats = self.features(torch.cat([top, bottom], dim=2))
        return self.head(feats[:, :, : self.visible_feature_rows])

    def forward_visible(self, x: Tensor) -> Tensor:
        """The same logits computed from the top rows only (half the cost; for training)."""
        top = self.features(self.trunk(x[:, :, : self.split_row]))
        return self.head(top)


class MaskedLinear(nn.Module):
    """A dense layer over flattened ``(K, h, w)`` features whose weights on rows ``>= visible_rows``
    are exactly zero (the mask multiplies the weight in every forward).

    Parameters
    ----------
    in_shape : tuple of int
        ``(K, h, w)`` of the features it reads (flattened C-order).
    out_features : int
        Output size.
    visible_rows : int
        Feature rows ``0 .. visible_rows - 1`` are read.
    linear : nn.Linear, optional
        Wrap an existing layer (its weight is shared, not copied) instead of creating one.
    """

    mask: Tensor

    def __init__(
        self,
        in_shape: Tuple[int, int, int],
        out_features: int,
        visible_rows: int,
        linear: Optional[nn.Linear] = None,
    ) -> None:
        super().__init__()
        k, h, w = (int(s) for s in in_shape)
        if not 0 <= visible_rows <= h:
            raise ValueError(f"visible_rows must be in [0, {h}], got {visible_rows}")
        if linear is None:
            linear = nn.Linear(k * h * w, out_features)
        if linear.in_features != k * h * w or linear.out_features != out_features:
            raise ValueError(
                f"linear layer {linear.in_features}->{linear.out_features} does not read features "
                f"of shape {(k, h, w)} into {out_features} outputs"
            )
        self.linear = linear
        self.in_shape = (k, h, w)
        self.visible_rows = visible_rows
        m = torch.zeros(k, h, w)
        m[:, :visible_rows] = 1.0
        self.register_buffer("mask", m.flatten()[None, :])
        with torch.no_grad():
            linear.weight.mul_(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.flatten(1), self.linear.weight * self.mask, self.linear.bias)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive-field bookkeeping of a stack of layers along one axis.

    ``size`` input pixels, ``jump`` input pixels between neighbouring outputs, ``start`` the input
    coordinate of the centre of output 0 (may be a half-integer).  Output ``i`` covers input rows
    ``start + i*jump - (size-1)/2 .. start + i*jump + (size-1)/2``.
    """

    size: float = 1.0
    jump: float = 1.0
    start: float = 0.0

    def last_row(self, i: int) -> int:
        """Last input row that feature row ``i`` depends on."""
        return int(round(self.start + i * self.jump + (self.size - 1) / 2))

    def first_row(self, i: int) -> int:
        """First input row that feature row ``i`` depends on."""
        return int(round(self.start + i * self.jump - (self.size - 1) / 2))


def _pair0(v: Any) -> int:
    return int(v[0]) if isinstance(v, (tuple, list)) else int(v)


def receptive_field(layers: Iterable[nn.Module]) -> ReceptiveField:
    """Receptive field (along the height) of a sequence of layers.

    Conv2d, MaxPool2d and AvgPool2d change it (kernel, stride, padding, dilation); element-wise
    layers (activations, batch norm, dropout, identity) do not; ``nn.Sequential`` is walked.

    Raises
    ------
    TypeError
        For a layer whose effect is unknown (e.g. an adaptive pool, which mixes all rows).
    """
    rf = ReceptiveField()
    neutral = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
               nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity)
    for layer in layers:
        if isinstance(layer, nn.Sequential):
            inner = receptive_field(layer)
            rf = ReceptiveField(
                size=rf.size + (inner.size - 1) * rf.jump,
                jump=rf.jump * inner.jump,
                start=rf.start + inner.start * rf.jump,
            )
            continue
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k = _pair0(layer.kernel_size)
            s = _pair0(layer.stride if layer.stride is not None else k)
            p = _pair0(layer.padding)
            d = _pair0(getattr(layer, "dilation", 1))
            k_eff = d * (k - 1) + 1
            rf = ReceptiveField(
                size=rf.size + (k_eff - 1) * rf.jump,
                jump=rf.jump * s,
                start=rf.start + ((k_eff - 1) / 2 - p) * rf.jump,
            )
        elif isinstance(layer, neutral):
            continue
        else:
            raise TypeError(
                f"receptive_field: unknown effect of layer {type(layer).__name__}; pass only "
                "Conv2d / MaxPool2d / AvgPool2d / element-wise layers"
            )
    return rf


def invisible_band_start(layers: Iterable[nn.Module], visible_rows: int, height: int) -> int:
    """First input row not in the receptive field of feature rows ``0 .. visible_rows - 1``.

    Every input row ``>= invisible_band_start`` cannot change a dense head that reads only those
    feature rows (the result is clipped to ``[0, height]``; ``height`` means nothing is invisible).
    """
    if visible_rows <= 0:
        return 0
    rf = receptive_field(layers)
    return max(0, min(height, rf.last_row(visible_rows - 1) + 1))


def visible_rows_for_band(
    layers: Sequence[nn.Module], unseen_from_row: int, feature_rows: int
) -> int:
    """Largest number of top feature rows whose receptive fields end before ``unseen_from_row``."""
    rf = receptive_field(layers)
    best = 0
    for r in range(1, feature_rows + 1):
        if rf.last_row(r - 1) < unseen_from_row:
            best = r
    return best


class DenseWallNet(nn.Module):
    """VGG-like CNN with the paper's wall: a dense layer masked on the lower feature rows.

    Parameters
    ----------
    in_channels, height, width : int
        Input shape.
    channels : sequence of int
        Trunk convolutions (see :func:`vgg_trunk`); a ReLU after the last one is the CAM layer.
    hidden, n_classes : int
        Dense head ``MaskedLinear -> ReLU -> Linear``.
    unseen_from_row : int
        The wall: the visible feature rows are chosen as the largest set whose receptive fields end
        before this input row (default ``height // 2``).
    visible_feature_rows : int, optional
        Set the visible feature rows directly instead (all of them: no wall, the control model).
    convs_per_block : int
        See :func:`vgg_trunk`.

    Attributes
    ----------
    features : nn.ReLU
        The CAM layer (covers the whole image).
    band_start : int
        First invisible input row (computed from the receptive field; ``<= unseen_from_row``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        height: int = 56,
        width: int = 28,
        channels: Sequence[int] = (16, 32, 32),
        hidden: int = 64,
        n_classes: int = 10,
        unseen_from_row: Optional[int] = None,
        visible_feature_rows: Optional[int] = None,
        convs_per_block: int = 1,
    ) -> None:
        super().__init__()
        self.in_channels, self.height, self.width = in_channels, height, width
        self.trunk = vgg_trunk(in_channels, channels, convs_per_block=convs_per_block)
        self.features = nn.ReLU()
        n_pools = len(channels) - 1
        h, w = _out_size(height, n_pools), _out_size(width, n_pools)
        if visible_feature_rows is None:
            target = height // 2 if unseen_from_row is None else int(unseen_from_row)
            visible_feature_rows = visible_rows_for_band(list(self.trunk), target, h)
            if visible_feature_rows == 0:
                raise ValueError(
                    f"no feature row has a receptive field ending before input row {target}: "
                    "the trunk's receptive field is too large for this wall"
                )
        self.visible_feature_rows = int(visible_feature_rows)
        self.feature_shape = (int(channels[-1]), h, w)
        self.band_start = invisible_band_start(list(self.trunk), self.visible_feature_rows, height)
        self.head = nn.Sequential(
            MaskedLinear(self.feature_shape, hidden, self.visible_feature_rows),
            nn.ReLU(),
            nn.Linear(hidden, n_classes),
        )

    @property
    def unseen_input_rows(self) -> Tuple[int, int]:
        """``(first, stop)``: the input rows the output cannot depend on."""
        return self.band_start, self.height

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.height, self.width):
            raise ValueError(
                f"DenseWallNet expects (N, {self.in_channels}, {self.height}, {self.width}), "
                f"got {tuple(x.shape)}"
            )
        return self.head(self.features(self.trunk(x)))


#: The paper's wall: the masked VGG16 of Taimeskhanov et al. cannot see input rows 170..223 of a
#: 224-row image (the bottom 54 rows, 24.1 %).
PAPER_HIDDEN_ROWS: Tuple[int, int] = (170, 224)


def paper_hidden_rows(height: int) -> int:
    """Number of bottom rows hidden at the paper's fraction ``54 / 224`` of ``height`` (rounded).

    ``paper_hidden_rows(224) == 54``; ``paper_hidden_rows(56) == 14`` (the bottom quarter of a
    stacked Fashion-MNIST pair, i.e. the lower half of the lower image).
    """
    if not isinstance(height, int) or height < 1:
        raise ValueError(f"height must be a positive int, got {height!r}")
    first, stop = PAPER_HIDDEN_ROWS
    return int(math.floor((stop - first) * height / stop + 0.5))


def paper_wall_net(
    wall: bool = True,
    in_channels: int = 1,
    height: int = 56,
    width: int = 28,
    channels: Sequence[int] = (8, 16, 32),
    hidden: int = 64,
    n_classes: int = 10,
) -> DenseWallNet:
    """The paper's construction at the paper's geometry, at our training resolution.

    A :class:`DenseWallNet` whose trunk has VGG-style blocks of two convolutions
    (``conv-conv-pool-conv-conv-pool-conv``), so that the receptive field of the visible feature
    rows ends exactly where the paper's band starts: for the default ``56 x 28`` input the model is
    blind to input rows ``42..55``, the bottom 14 of 56 rows (the paper: the bottom 54 of 224).

    Parameters
    ----------
    wall : bool
        ``False`` gives the control model: the same architecture with the head reading every
        feature row (it can see the band).
    in_channels, height, width, channels, hidden, n_classes :
        See :class:`DenseWallNet`.

    Raises
    ------
    ValueError
        If no set of visible feature rows makes the invisible band exactly the paper's fraction
        (then choose another ``height`` or ``channels``).
    """
    band = height - paper_hidden_rows(height)
    if not wall:
        rows = _out_size(height, len(channels) - 1)
        return DenseWallNet(in_channels, height, width, channels, hidden, n_classes,
                            visible_feature_rows=rows, convs_per_block=2)
    net = DenseWallNet(in_channels, height, width, channels, hidden, n_classes,
                       unseen_from_row=band, convs_per_block=2)
    if net.band_start != band:
        raise ValueError(
            f"with channels={tuple(channels)} the receptive field puts the wall at input row "
            f"{net.band_start}, not at row {band} (the paper's fraction of {height} rows)"
        )
    return net
