"""Joining and leaving a ``torchrun`` process group: one helper for evaluation and training.

Both :func:`captum_cam_ext.evaluation.evaluate` and :func:`captum_cam_ext.training.loops.train`
run unchanged under ``torchrun``: when ``WORLD_SIZE > 1`` is set and no group exists, they join
one for the duration of the call (``nccl`` on CUDA, ``gloo`` on CPU) and leave it afterwards.

Leaving is where things went wrong before: a worker occasionally died with SIGABRT
("terminate called without an active exception") after a successful run. The process group is a
C++ object with its own threads; ``destroy_process_group`` only drops the registry's reference,
so when a ``DistributedDataParallel`` wrapper (its reducer holds the group) is still alive, the
group is destroyed later, at interpreter shutdown, in whatever order the interpreter tears objects
down, while a peer may still be inside the last collective. :func:`process_group` therefore, on a
normal exit, (1) lets the caller drop its wrappers inside the block, (2) collects garbage so that
nothing else holds the group, (3) waits at a barrier so that no rank tears down while its peer is
still communicating, and only then (4) destroys the group. On an exception it skips the barrier
(a failing rank must not wait for peers that will never arrive) and destroys the group at once.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

__all__ = ["DistributedContext", "distributed_env", "process_group"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the (possibly absent) process group.

    Attributes
    ----------
    distributed : bool
        True when more than one process takes part.
    rank, world_size, local_rank : int
        ``0, 1, 0`` when not distributed.
    device : torch.device
        The device this rank should use (``cuda:LOCAL_RANK`` under torchrun with CUDA, unless the
        caller asked for one).
    owns_group : bool
        Whether the group was created by :func:`process_group` (and is destroyed by it).
    """

    distributed: bool
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def backend(self) -> Optional[str]:
        """The group's backend (``"gloo"``/``"nccl"``), None when not distributed."""
        if not self.distributed:
            return None
        import torch.distributed as dist

        return str(dist.get_backend())


def distributed_env() -> tuple:
    """``(world_size, rank, local_rank)`` read from the ``torchrun`` environment variables."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return world, rank, local


def _device_for(device: Any, local_rank: int, distributed: bool) -> torch.device:
    if device is not None:
        return torch.device(device)
    if distributed and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@contextlib.contextmanager
def process_group(device: Any = None, default_device: Any = None) -> Iterator[DistributedContext]:
    """Join the ``torchrun`` process group for the ``with`` block and leave it cleanly.

    Parameters
    ----------
    device : str or torch.device, optional
        The device the caller wants; decides the backend (``nccl`` for CUDA, else ``gloo``).
        Default: ``cuda:LOCAL_RANK`` under torchrun when CUDA is available, else
        ``default_device`` (or the CPU).
    default_device : str or torch.device, optional
        The device to use outside torchrun when ``device`` is None (e.g. the model's device).

    Yields
    ------
    DistributedContext

    Notes
    -----
    An existing group (created by the caller) is used and left alone. A group created here is
    destroyed on exit, after a barrier on a normal exit (see the module docstring for why).
    Drop every ``DistributedDataParallel`` wrapper inside the block.
    """
    import torch.distributed as dist

    world, rank, local = distributed_env()
    if dist.is_available() and dist.is_initialized():
        d = dist.get_world_size() > 1
        dev = _device_for(device, local, d) if (device is not None or d) else torch.device(default_device or "cpu")
        yield DistributedContext(d, dist.get_rank(), dist.get_world_size(), local, dev, owns_group=False)
        return
    if world <= 1:
        dev = torch.device(device) if device is not None else torch.device(default_device or "cpu")
        yield DistributedContext(False, 0, 1, 0, dev, owns_group=False)
        return
    if not dist.is_available():  # pragma: no cover - builds without torch.distributed
        raise RuntimeError("WORLD_SIZE > 1 is set but this torch build has no torch.distributed")
    dev = _device_for(device, local, True)
    backend = "nccl" if dev.type == "cuda" and dist.is_nccl_available() else "gloo"
    if backend == "nccl":  # one GPU per rank; object collectives use the current device
        torch.cuda.set_device(dev)
    dist.init_process_group(backend=backend)
    ok = False
    try:
        yield DistributedContext(True, dist.get_rank(), dist.get_world_size(), local, dev, owns_group=True)
        ok = True
    finally:
        gc.collect()  # wrappers the caller dropped must release the group before it goes
        if ok:
            dist.barrier()  # no rank tears down while a peer is still in a collective
        dist.destroy_process_group()
