"""The masked CNN of the see-through-walls theory, as ordinary ``nn.Module`` s.

Model (one image ``x`` of shape ``(C, H, W)``)::

    z_v(p) = <W_v, x_p> (+ b_v)            valid convolution, stride 1, V filters of size k x k
    B_v(p) = ReLU(z_v(p))                   the CAM layer (``model.features``)
    y      = sum_v sum_{p in S} Theta_{v,p} B_v(p)

where ``S`` is the set of the top ``visible_rows`` rows of the ``H' x W'`` feature grid
(``H' = H - k + 1``, ``W' = W - k + 1``).  The head *slices* the visible rows before reading
them, so the output is exactly (bit for bit) independent of the masked feature rows and of every
input pixel outside the receptive fields of ``S``.

With ``pool_size=s > 1`` (the model of the authors' MNIST notebook: conv -> ReLU -> s x s
max-pool -> masked dense) the head reads the top ``visible_rows`` rows of the *pooled* grid
``(H' // s) x (W' // s)``: ``y = sum_v sum_{c in S} Theta_{v,c} max_{p in window(c)} B_v(p)``.
The CAM layer is still the ReLU before the pool (its map is on the conv grid); the input rows the
output cannot see are ``>= s * visible_rows + k - 1``.

At initialization all weights are i.i.d. Gaussian: ``W ~ N(0, sigma_w^2)``, ``b ~ N(0, sigma_w^2)``
(when ``bias=True``; a bias is an extra input channel that is constantly one) and
``Theta ~ N(0, sigma_theta^2)``.

Two classes:

* :class:`MaskedCNN` -- one network (built by :func:`masked_cnn`).
* :class:`BatchedMaskedCNN` -- ``B`` independent networks evaluated at once (grouped convolution):
  row ``i`` of a batch is processed by network ``net_index[i]`` (by default network ``i``).  It is a
  normal model for a CAM method (one example per network), which is what makes Monte-Carlo over
  thousands of sampled networks take seconds.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MaskedCNN", "BatchedMaskedCNN", "masked_cnn", "feature_grid", "check_config"]


def feature_grid(height: int, width: int, kernel_size: int) -> Tuple[int, int]:
    """Size ``(H', W')`` of the feature grid of a valid, stride-1 ``k x k`` convolution."""
    hp, wp = height - kernel_size + 1, width - kernel_size + 1
    if hp < 1 or wp < 1:
        raise ValueError(
            f"kernel_size={kernel_size} does not fit an input of size {height}x{width}: "
            "use a kernel no larger than the input."
        )
    return hp, wp


def check_config(
    in_channels: int,
    height: int,
    width: int,
    kernel_size: int,
    n_filters: int,
    visible_rows: int,
    sigma_w: float = 1.0,
    sigma_theta: float = 1.0,
    pool_size: int = 1,
) -> Tuple[int, int]:
    """Validate a masked-CNN configuration and return its feature grid ``(H', W')``.

    Parameters
    ----------
    in_channels, height, width, kernel_size, n_filters : int
        Positive ints (see :class:`MaskedCNN`).
    visible_rows : int
        In ``[0, H' // pool_size]`` (rows of the pooled grid; of the conv grid without pooling).
    sigma_w, sigma_theta : float
        Initialization standard deviations, both ``> 0``.
    pool_size : int
        Max-pool window and stride ``s >= 1`` (1: no pooling); the pooled grid must not be empty.

    Returns
    -------
    (int, int)
        ``(H', W')`` of the valid, stride-1 convolution.

    Raises
    ------
    ValueError
        Naming the offending value and the allowed range.
    """
    for name, val in [
        ("in_channels", in_channels),
        ("height", height),
        ("width", width),
        ("kernel_size", kernel_size),
        ("n_filters", n_filters),
        ("pool_size", pool_size),
    ]:
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}.")
    hp, wp = feature_grid(height, width, kernel_size)
    if hp // pool_size < 1 or wp // pool_size < 1:
        raise ValueError(
            f"pool_size={pool_size} does not fit the {hp}x{wp} feature grid of a {height}x{width} "
            f"input and kernel {kernel_size}: use a pool no larger than the feature grid."
        )
    rows = hp // pool_size
    if not isinstance(visible_rows, int) or not 0 <= visible_rows <= rows:
        grid = "feature grid" if pool_size == 1 else f"{pool_size}x{pool_size}-pooled feature grid"
        raise ValueError(
            f"visible_rows must be an int in [0, {rows}] (the {grid} has {rows} rows for a "
            f"{height}x{width} input and kernel {kernel_size}), got {visible_rows!r}."
        )
    if not (sigma_w > 0 and sigma_theta > 0):
        raise ValueError(
            f"sigma_w and sigma_theta must be > 0, got sigma_w={sigma_w}, "
            f"sigma_theta={sigma_theta}."
        )
    return hp, wp


class MaskedCNN(nn.Module):
    """Conv (valid, stride 1) -> ReLU (``.features``, the CAM layer) -> head on the visible rows.

    Parameters
    ----------
    in_channels, height, width : int
        Input shape ``(C, H, W)``.
    kernel_size : int
        Convolution kernel ``k``.
    n_filters : int
        Number of filters ``V``.
    visible_rows : int
        Number of top feature rows the head reads (``|S| = visible_rows * W'``); rows of the
        pooled grid with ``pool_size > 1`` (``|S| = visible_rows * (W' // s)``).
    bias : bool
        Whether the convolution has a bias.
    hidden : int or None
        When given, the head is ``Linear(V*visible_rows*W', hidden) -> ReLU -> Linear(hidden,
        n_outputs)``; otherwise a single linear map ``Theta`` (the theory's model).
    n_outputs : int
        Number of logits; the output has shape ``(N, n_outputs)``.
    pool_size : int
        ``s``: an ``s x s`` max-pool (stride ``s``) between the CAM layer and the head (1: none).

    Notes
    -----
    Attributes: ``conv`` (``nn.Conv2d``), ``features`` (``nn.ReLU``, the CAM layer, output
    ``(N, V, H', W')``), ``pool`` (``nn.MaxPool2d`` or ``nn.Identity``), ``theta``
    (``(n_outputs, V, visible_rows, W' // s)``, linear head only) or ``head`` (``nn.Sequential``,
    hidden head); ``head_grid`` = ``(H' // s, W' // s)``, the grid the head reads.
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        kernel_size: int,
        n_filters: int,
        visible_rows: int,
        bias: bool = False,
        hidden: Optional[int] = None,
        n_outputs: int = 1,
        pool_size: int = 1,
    ) -> None:
        super().__init__()
        hp, wp = check_config(
            in_channels, height, width, kernel_size, n_filters, visible_rows, 1.0, 1.0, pool_size
        )
        if not isinstance(n_outputs, int) or n_outputs < 1:
            raise ValueError(f"n_outputs must be a positive int, got {n_outputs!r}.")
        if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"hidden must be None or a positive int, got {hidden!r}.")
        self.in_channels, self.height, self.width = in_channels, height, width
        self.kernel_size, self.n_filters, self.visible_rows = kernel_size, n_filters, visible_rows
        self.feature_size = (hp, wp)
        self.pool_size = pool_size
        self.head_grid = (hp // pool_size, wp // pool_size)
        wh = self.head_grid[1]
        self.conv = nn.Conv2d(in_channels, n_filters, kernel_size, bias=bias)
        self.features = nn.ReLU()
        self.pool: nn.Module = nn.MaxPool2d(pool_size) if pool_size > 1 else nn.Identity()
        self.hidden = hidden
        n_in = n_filters * visible_rows * wh
        self.theta: Optional[nn.Parameter]
        self.head: Optional[nn.Sequential]
        if hidden is None:
            self.theta = nn.Parameter(torch.zeros(n_outputs, n_filters, visible_rows, wh))
            self.head = None
        else:
            self.theta = None
            self.head = nn.Sequential(
                nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs)
            )

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(N, C, H, W)`` -> logits ``(N, n_outputs)``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.height, self.width):
            raise ValueError(
                f"MaskedCNN expects inputs of shape (N, {self.in_channels}, {self.height}, "
                f"{self.width}), got {tuple(x.shape)}."
            )
        b = self.pool(self.features(self.conv(x)))
        visible = b[:, :, : self.visible_rows, :]
        if self.head is None:
            assert self.theta is not None
            return torch.einsum("nvrw,ovrw->no", visible, self.theta)
        return self.head(visible.flatten(1))


def masked_cnn(
    in_channels: int,
    height: int,
    width: int,
    kernel_size: int,
    n_filters: int,
    visible_rows: int,
    bias: bool = False,
    hidden: Optional[int] = None,
    sigma_w: float = 1.0,
    sigma_theta: float = 1.0,
    generator: Optional[torch.Generator] = None,
    n_outputs: int = 1,
    pool_size: int = 1,
) -> MaskedCNN:
    """Build a :class:`MaskedCNN` at the theory's Gaussian initialization.

    Parameters
    ----------
    in_channels, height, width, kernel_size, n_filters, visible_rows
        See :class:`MaskedCNN`.
    bias, hidden, n_outputs, pool_size
        See :class:`MaskedCNN`.
    sigma_w : float
        Standard deviation of the convolution weights (and bias).
    sigma_theta : float
        Standard deviation of the head weights (every layer of a hidden head; hidden biases are 0).
    generator : torch.Generator, optional
        Source of randomness (for reproducible draws).

    Returns
    -------
    MaskedCNN
        In eval mode; output ``(N, n_outputs)``.

    Examples
    --------
    >>> net = masked_cnn(1, 8, 8, 3, 5, visible_rows=3, sigma_w=0.7, sigma_theta=1.3)
    >>> net(torch.randn(2, 1, 8, 8)).shape
    torch.Size([2, 1])
    """
    check_config(
        in_channels, height, width, kernel_size, n_filters, visible_rows, sigma_w, sigma_theta,
        pool_size,
    )
    net = MaskedCNN(
        in_channels, height, width, kernel_size, n_filters, visible_rows, bias, hidden, n_outputs,
        pool_size,
    )
    with torch.no_grad():
        net.conv.weight.copy_(torch.randn(net.conv.weight.shape, generator=generator) * sigma_w)
        if net.conv.bias is not None:
            net.conv.bias.copy_(torch.randn(net.conv.bias.shape, generator=generator) * sigma_w)
        if net.theta is not None:
            net.theta.copy_(torch.randn(net.theta.shape, generator=generator) * sigma_theta)
        else:
            assert net.head is not None
            for mod in net.head:
                if isinstance(mod, nn.Linear):
                    draw = torch.randn(mod.weight.shape, generator=generator)
                    mod.weight.copy_(draw * sigma_theta)
                    mod.bias.zero_()
    return net.eval()


class BatchedMaskedCNN(nn.Module):
    """``B`` independent linear-head masked CNNs evaluated in one grouped convolution.

    Parameters
    ----------
    conv_weight : Tensor
        ``(B, V, C, k, k)``.
    theta : Tensor
        ``(B, n_outputs, V, visible_rows, W' // s)``.
    height, width : int
        Input size.
    conv_bias : Tensor, optional
        ``(B, V)``.
    head_out : Tensor, optional
        ``(B, n_outputs, hidden)``: a hidden head.  ``theta`` is then the first layer,
        ``(B, hidden, V, r, W')``, and the output is ``head_out @ ReLU(theta . B)`` (biases 0, as in
        :func:`masked_cnn` with ``hidden=``).
    pool_size : int
        ``s``: an ``s x s`` max-pool between the CAM layer and the head (1: none), as
        ``masked_cnn(..., pool_size=s)``.

    Notes
    -----
    ``forward(x, net_index=None)``: ``x`` is ``(N, C, H, W)``; row ``i`` is processed by network
    ``net_index[i]`` (``net_index`` a LongTensor ``(N,)``), by default by network ``i`` (then
    ``N == B``).  ``features`` (``nn.ReLU``) is the CAM layer, output ``(N, V, H', W')``.
    """

    conv_weight: Tensor
    theta: Tensor

    def __init__(
        self,
        conv_weight: Tensor,
        theta: Tensor,
        height: int,
        width: int,
        conv_bias: Optional[Tensor] = None,
        head_out: Optional[Tensor] = None,
        pool_size: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}.")
        if conv_weight.dim() != 5 or theta.dim() != 5 or theta.shape[0] != conv_weight.shape[0]:
            raise ValueError(
                "conv_weight must be (B, V, C, k, k) and theta (B, n_outputs, V, r, W'), got "
                f"{tuple(conv_weight.shape)} and {tuple(theta.shape)}."
            )
        nb, v, c, k, _ = conv_weight.shape
        hp, wp = feature_grid(height, width, k)
        hh, wh = hp // pool_size, wp // pool_size
        if theta.shape[2] != v or theta.shape[4] != wh or theta.shape[3] > hh:
            raise ValueError(
                f"theta of shape {tuple(theta.shape)} does not fit conv_weight "
                f"{tuple(conv_weight.shape)} on a {height}x{width} input with pool_size "
                f"{pool_size} (expected ({nb}, n_outputs, {v}, r<= {hh}, {wh}))."
            )
        self.n_networks, self.n_filters, self.in_channels, self.kernel_size = nb, v, c, k
        self.height, self.width, self.visible_rows = height, width, int(theta.shape[3])
        self.feature_size = (hp, wp)
        self.pool_size = pool_size
        self.head_grid = (hh, wh)
        self.register_buffer("conv_weight", conv_weight.detach().clone())
        self.register_buffer("theta", theta.detach().clone())
        self.conv_bias: Optional[Tensor]
        if conv_bias is not None:
            self.register_buffer("conv_bias", conv_bias.detach().clone().reshape(nb, v))
        else:
            self.conv_bias = None
        self.head_out: Optional[Tensor]
        if head_out is not None:
            if head_out.dim() != 3 or head_out.shape[0] != nb or head_out.shape[2] != theta.shape[1]:
                raise ValueError(
                    f"head_out must be (B, n_outputs, hidden) = ({nb}, n_outputs, "
                    f"{theta.shape[1]}), got {tuple(head_out.shape)}."
                )
            self.register_buffer("head_out", head_out.detach().clone())
        else:
            self.head_out = None
        self.features = nn.ReLU()

    def forward(self, x: Tensor, net_index: Optional[Tensor] = None) -> Tensor:
        n = x.shape[0]
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, self.height, self.width):
            raise ValueError(
                f"BatchedMaskedCNN expects (N, {self.in_channels}, {self.height}, {self.width}), "
                f"got {tuple(x.shape)}."
            )
        if net_index is None:
            if n != self.n_networks:
                raise ValueError(
                    f"without net_index the batch size ({n}) must equal the number of networks "
                    f"({self.n_networks})."
                )
            w, th, bias, out = self.conv_weight, self.theta, self.conv_bias, self.head_out
        else:
            idx = net_index.reshape(-1).long()
            if idx.numel() != n:
                raise ValueError(f"net_index has {idx.numel()} entries for a batch of {n}.")
            w, th = self.conv_weight[idx], self.theta[idx]
            bias = None if self.conv_bias is None else self.conv_bias[idx]
            out = None if self.head_out is None else self.head_out[idx]
        z = F.conv2d(
            x.reshape(1, n * self.in_channels, self.height, self.width),
            w.reshape(n * self.n_filters, self.in_channels, self.kernel_size, self.kernel_size),
            None if bias is None else bias.reshape(-1),
            groups=n,
        )
        z = z.reshape(n, self.n_filters, z.shape[-2], z.shape[-1])
        b = self.features(z)
        if self.pool_size > 1:
            b = F.max_pool2d(b, self.pool_size)
        y = torch.einsum("nvrw,novrw->no", b[:, :, : self.visible_rows, :], th)
        if out is None:
            return y
        return torch.einsum("nh,noh->no", F.relu(y), out)
