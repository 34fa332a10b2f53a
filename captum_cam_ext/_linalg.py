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
