"""A short training / evaluation helper for the interpretable-gradient regularizer.

``train`` runs unchanged under ``torchrun``: when ``WORLD_SIZE > 1`` is set in the environment it
initialises the process group (``nccl`` on CUDA, ``gloo`` on CPU) unless one exists, wraps the
model in ``DistributedDataParallel``, shards the loader with a ``DistributedSampler``, all-reduces
the logged numbers, and at the end broadcasts rank 0's buffers (BatchNorm running statistics) so
that every rank holds the same model. The process group is destroyed again if ``train`` created it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from captum_cam_ext._distributed import DistributedContext, distributed_env, process_group
from captum_cam_ext.training.loss import BN_MODES, ERRORS, REDUCTIONS, InterpretableGradientLoss

__all__ = ["train", "evaluate", "distributed_env"]


def _shard_loader(loader: DataLoader, world: int, rank: int, seed: int) -> DataLoader:
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_size is None:
        raise ValueError(
            "under torchrun the loader needs a batch_size (a batch_sampler cannot be sharded)"
        )
    sampler: DistributedSampler = DistributedSampler(
        loader.dataset,  # type: ignore[arg-type]
        num_replicas=world,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def _all_mean(
    values: Dict[str, float], weight: float, distributed: bool, device: torch.device
) -> Dict[str, float]:
    """Weighted mean of each value over ranks (identity when not distributed)."""
    if not distributed:
        return values
    keys = sorted(values)
    buf = torch.tensor(
        [values[k] * weight for k in keys] + [weight], dtype=torch.float64, device=device
    )
    dist.all_reduce(buf)
    total = float(buf[-1])
    return {k: float(buf[i]) / max(total, 1e-12) for i, k in enumerate(keys)}


def train(
    model: nn.Module,
    loader: DataLoader,
    epochs: int = 1,
    lam: float = 7.5e-3,
    error: str = "cosine",
    detach_guided: bool = True,
    optimizer: Optional[torch.optim.Optimizer] = None,
    lr: float = 1e-3,
    device: Optional[Any] = None,
    max_steps: Optional[int] = None,
    track_alignment: bool = True,
    progress: bool = True,
    seed: int = 0,
    bn_mode: str = "train",
    reduction: str = "mean",
    scheduler: Optional[Any] = None,
    input_transform: Optional[Any] = None,
) -> List[Dict[str, float]]:
    """Train ``model`` with ``CE + lam * L_R`` (or plain CE) and log both terms.

    Parameters
    ----------
    model : nn.Module
        Classifier returning logits ``(N, C)``, with ReLU / ReLU6 modules. Trained in place (and
        moved to ``device``); left in train mode afterwards.
    loader : DataLoader
        Yields ``(inputs (N, ...), targets (N,))``.
    epochs : int
    lam : float
        Regularizer weight (>= 0). ``lam == 0`` trains with plain cross-entropy.
    error : str
        ``"cosine"``, ``"mse"`` or ``"mae"``.
    detach_guided : bool
        Stop-gradient on the guided gradient.
    optimizer : torch.optim.Optimizer, optional
        Defaults to ``Adam(model.parameters(), lr=lr)``. Under torchrun, build it on the
        parameters of ``model`` (DDP shares them).
    lr : float
        Learning rate of the default optimizer.
    device : str or torch.device, optional
        Defaults to ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
    max_steps : int, optional
        Stop after this many optimizer steps in total.
    track_alignment : bool
        With ``lam == 0``, still compute (without graph) the regularizer and the cosine between
        the two gradients for the log; ``False`` makes a baseline step a plain CE step.
    progress : bool
        Show a tqdm progress bar (rank 0 only).
    seed : int
        Seed of the ``DistributedSampler`` shuffling (distributed runs only).
    bn_mode : str
        BatchNorm statistics for the regularizer's input gradients, ``"train"`` or ``"eval"``
        (see :class:`~captum_cam_ext.training.loss.InterpretableGradientLoss`).
    reduction : str
        ``"mean"`` or ``"sum"`` of the per-example errors over the batch.
    scheduler : torch.optim.lr_scheduler.LRScheduler, optional
        Stepped after every optimizer step (e.g. ``OneCycleLR``).
    input_transform : callable, optional
        Applied to each input batch on the device before the step (e.g. data augmentation,
        ``Tensor (N, ...) -> Tensor (N, ...)``).

    Returns
    -------
    list of dict
        One dict per epoch, averaged over steps (and ranks): ``epoch``, ``steps``, ``ce``,
        ``reg``, ``total``, ``cosine`` (mean cosine between standard and guided input gradients;
        NaN when not tracked), ``acc`` (training accuracy of the batches seen),
        ``step_seconds`` (mean wall time of an optimizer step).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(loader, DataLoader):
        raise TypeError(f"loader must be a torch DataLoader, got {type(loader).__name__}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if max_steps is not None and int(max_steps) < 1:
        raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
    if error not in ERRORS:
        raise ValueError(f"error must be one of {ERRORS}, got {error!r}")
    if not float(lam) >= 0.0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if bn_mode not in BN_MODES:
        raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if input_transform is not None and not callable(input_transform):
        raise TypeError(f"input_transform must be callable, got {type(input_transform).__name__}")

    with process_group(device, default_device="cuda" if torch.cuda.is_available() else "cpu") as ctx:
        model.to(ctx.device)
        model.train()
        if optimizer is None:
            optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        net: nn.Module = model
        if ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            net = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
            loader = _shard_loader(loader, ctx.world_size, ctx.rank, seed)
        try:
            loss_fn = (
                InterpretableGradientLoss(
                    net, lam=float(lam), error=error, detach_guided=detach_guided,
                    bn_mode=bn_mode, reduction=reduction,
                )  # fmt: skip
                if float(lam) > 0.0 or track_alignment
                else None
            )
            history = _run_epochs(
                net, loader, optimizer, ctx, int(epochs), loss_fn, max_steps, progress,
                scheduler, input_transform,
            )  # fmt: skip
        finally:
            del net  # the DDP wrapper holds the process group: release it before the group goes
        if ctx.distributed:
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        return history


def _run_epochs(
    net: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    ctx: DistributedContext,
    epochs: int,
    reg_loss: Optional[InterpretableGradientLoss],
    max_steps: Optional[int],
    progress: bool,
    scheduler: Optional[Any],
    input_transform: Optional[Any],
) -> List[Dict[str, float]]:
    dev = ctx.device
    lam = reg_loss.lam if reg_loss is not None else 0.0
    history: List[Dict[str, float]] = []
    steps = 0
    for epoch in range(epochs):
        sampler = getattr(loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        sums = {"ce": 0.0, "reg": 0.0, "total": 0.0, "cosine": 0.0, "acc": 0.0, "step_seconds": 0.0}
        n_steps = 0
        bar = _progress(loader, progress and ctx.rank == 0, f"epoch {epoch + 1}/{epochs} lam={lam:g}")
        for batch in bar:
            inputs, targets = batch[0].to(dev), batch[1].to(dev)
            if input_transform is not None:
                inputs = input_transform(inputs)
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            if reg_loss is not None:
                total, ce, reg = reg_loss(inputs, targets)
                logits = reg_loss.last_logits
                cos = float(reg_loss.last_cosine.mean())  # type: ignore[union-attr]
            else:
                logits = net(inputs)
                total = ce = F.cross_entropy(logits, targets)
                reg = torch.tensor(math.nan)
                cos = math.nan
            total.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            dt = time.perf_counter() - t0
            acc = float((logits.argmax(1) == targets).float().mean())  # type: ignore[union-attr]
            for k, v in (("ce", ce), ("reg", reg), ("total", total)):
                sums[k] += float(v.detach())
            sums["cosine"] += cos
            sums["acc"] += acc
            sums["step_seconds"] += dt
            n_steps += 1
            steps += 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(ce=f"{float(ce):.3f}", reg=f"{float(reg):.3f}", cos=f"{cos:.3f}")
            if max_steps is not None and steps >= int(max_steps):
                break
        if hasattr(bar, "close"):
            bar.close()
        means = {k: v / max(n_steps, 1) for k, v in sums.items()}
        means = _all_mean(means, float(n_steps), ctx.distributed, dev)
        history.append({"epoch": float(epoch + 1), "steps": float(n_steps), **means})
        if max_steps is not None and steps >= int(max_steps):
            break
    return history


def _progress(loader: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return loader
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a test/demo dependency
        return loader
    return tqdm(loader, desc=desc, leave=False)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: Optional[Any] = None,
    alignment: bool = True,
    max_batches: Optional[int] = None,
) -> Dict[str, float]:
    """Accuracy, mean CE and mean gradient alignment of ``model`` (in eval mode) on ``loader``.

    Parameters
    ----------
    model : nn.Module
        Classifier; its train/eval mode is restored afterwards.
    loader : DataLoader
        Yields ``(inputs, targets)``.
    device : str or torch.device, optional
        Defaults to the device of the model's first parameter.
    alignment : bool
        Also compute the mean cosine between the standard and guided input gradients of the
        per-example cross-entropy (:func:`captum_cam_ext.metrics.alignment.gradient_alignment`).
    max_batches : int, optional
        Evaluate on the first batches only.

    Returns
    -------
    dict
        ``acc``, ``ce``, ``n`` and, with ``alignment=True``, ``cosine``.
    """
    from captum_cam_ext.metrics.alignment import gradient_alignment

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if device is None:
        p = next(model.parameters(), None)
        dev = p.device if p is not None else torch.device("cpu")
    else:
        dev = torch.device(device)
    was_training = model.training
    model.eval()
    correct = 0.0
    ce_sum = 0.0
    cos_sum = 0.0
    n = 0
    try:
        for b, batch in enumerate(loader):
            if max_batches is not None and b >= max_batches:
                break
            inputs, targets = batch[0].to(dev), batch[1].to(dev)
            with torch.no_grad():
                logits = model(inputs)
            correct += float((logits.argmax(1) == targets).sum())
            ce_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            if alignment:
                cos_sum += float(gradient_alignment(model, inputs, targets).sum())
            n += inputs.shape[0]
    finally:
        model.train(was_training)
    out = {"acc": correct / max(n, 1), "ce": ce_sum / max(n, 1), "n": float(n)}
    if alignment:
        out["cosine"] = cos_sum / max(n, 1)
    return out
