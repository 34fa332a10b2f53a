"""Small dense linear algebra used by Eigen-CAM and the conceptor algebra.

torch's CPU ``eigh`` on batches of small matrices is pathologically slow with several intra-op
threads on some machines (measured here, torch 2.14 CPU, 2 threads: a batch of 8 symmetric
196x196 matrices took 6.3 s, against 24 ms single-threaded; 8 of 49x49: 436 ms against 6 ms). The
matrices CAM methods decompose are small (positions or channels of one layer), so we run these
calls single-threaded on the CPU and restore the caller's thread count afterwards.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

import torch
from torch import Tensor


@contextlib.contextmanager
def single_threaded(device: torch.device) -> Iterator[None]:
    """Run the block with one intra-op thread when ``device`` is the CPU (restored on exit)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def eigh(matrices: Tensor) -> Tuple[Tensor, Tensor]:
    """``torch.linalg.eigh`` (ascending eigenvalues), single-threaded on the CPU."""
    with single_threaded(matrices.device):
        return torch.linalg.eigh(matrices)


def first_component_weights(values: Tensor) -> Tensor:
    """Channel weights ``(N, K, 1, ...)``: the first right singular vector of the centred
    position-by-channel matrix of ``values`` ``(N, K, *S)``, batched.

    Computed from the smaller of the two Gram matrices with one batched ``eigh`` in float64
    (``P x P`` when there are fewer positions ``P`` than channels ``K``, as at CNN heads), which
    is much cheaper than an SVD of the ``P x K`` matrix. The sign of a singular vector is
    arbitrary; we fix it so that the projection's largest absolute value is positive (the map
    highlights the dominant pattern, not its negative).
    """
    n, k = values.shape[:2]
    x = values.reshape(n, k, -1).transpose(1, 2).double()  # (N, P, K)
    x = torch.nan_to_num(x - x.mean(dim=1, keepdim=True))
    if x.shape[1] < k:
        _, vecs = eigh(x @ x.transpose(1, 2))  # (N, P, P), ascending eigenvalues
        v = torch.einsum("npk,np->nk", x, vecs[:, :, -1])
        v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    else:
        _, vecs = eigh(x.transpose(1, 2) @ x)  # (N, K, K)
        v = vecs[:, :, -1]
    proj = torch.einsum("npk,nk->np", x, v)
    idx = proj.abs().argmax(dim=1, keepdim=True)
    sign = torch.sign(proj.gather(1, idx)).clamp_min(0) * 2 - 1
    return (v * sign).to(values.dtype).reshape(n, k, *([1] * (values.dim() - 2)))


def first_component_projection(values: Tensor) -> Tensor:
    """The centred projection of ``values`` ``(N, K, *S)`` on their first principal component, ``(N, 1, *S)``.

    This is pytorch-grad-cam's ``eigen_smooth`` (its ``get_2d_projection``) with the sign fixed as
    in :func:`first_component_weights` (the SVD's sign is arbitrary).
    """
    v = first_component_weights(values)
    weighted = (v * values).sum(dim=1, keepdim=True)
    dims = tuple(range(2, values.dim()))
    return weighted - weighted.mean(dim=dims, keepdim=True)
