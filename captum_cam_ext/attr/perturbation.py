"""The small base shared by the perturbation CAMs (Score-CAM, Ablation-CAM and their variants).

A perturbation CAM weights the channels of a layer by the model's scores on perturbed versions of
each example (masked inputs, ablated channels), computed without gradients. This base owns what
those methods share: it is a Captum ``LayerAttribution`` + ``PerturbationAttribution`` (like
Captum's own ``LayerFeatureAblation``), checks ``batch_size``, runs the per-example loop, scores one
target or several classes ``(N, T)`` from the same perturbed passes, and warns once when the model
is in ``train()`` mode (its BatchNorm layers would mix the perturbed copies).

A method overrides :meth:`PerturbationCamAttribution.example_scores`.

Chunk sizes. A method runs its perturbed copies in chunks of ``batch_size`` forward passes. With
``batch_size="auto"`` (the default of Score-CAM and Ablation-CAM) the chunk size is *measured*:
the first example's own chunks are run at increasing sizes (each size twice, the second run timed,
so that one-off costs such as oneDNN primitive creation for a new shape do not count), the size
with the lowest time per copy is kept, and it is cached per model, layer, input shape, dtype,
device and thread count (:func:`tuned_chunk_sizes`), so later calls -- also from new attribution
objects on the same model -- skip the measurement. No work is wasted: every measured chunk is a
chunk of the real computation. The chunking changes only the order of independent forward
passes, so the maps are those of any fixed ``batch_size`` (up to the float rounding of batched
convolutions). Why measure instead of a fixed number: the best size differs by architecture and
machine (on the project's 2-core CPU, Score-CAM on EfficientNet-Lite0 took 19.8 s with 32 copies
per pass and 8.6 s with 16; the chunk size each architecture ends up with is in
``benchmarks/results/matrix.md``).
"""

from __future__ import annotations

import copy
import time
import warnings
import weakref
from typing import Any, Callable, Dict, Hashable, List, Optional, Sequence, Tuple, Union

import torch
from captum.attr._utils.attribution import PerturbationAttribution
from torch import Tensor, nn

from captum_cam_ext._engine import (
    CamAttribution,
    LayerRecord,
    LayerSpec,
    TargetSpec,
    run_forward,
    select_target_scores,
    slice_args,
)

__all__ = [
    "AUTO",
    "measuring_clock",
    "BatchSize",
    "FoldedForward",
    "PerturbationCamAttribution",
    "check_batch_size",
    "clear_tuned_chunk_sizes",
    "example_target",
    "fold_batchnorm",
    "score_dtype",
    "target_scores",
    "tuned_chunk_sizes",
]

#: ``batch_size="auto"``: the chunk size is measured once per model (see the module docstring).
AUTO = "auto"


def measuring_clock(device: torch.device) -> Callable[[], float]:
    """The timer for choosing a chunk size on ``device``.

    On a CPU with one torch thread every kernel runs on the calling thread, so its CPU time
    (:func:`time.thread_time`) measures the work alone: other processes on a shared machine do not
    make one candidate size look slower than another, as they do with wall time. With several
    threads, or on a GPU, wall time (:func:`time.perf_counter`).
    """
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return time.thread_time
    return time.perf_counter


BatchSize = Union[int, str]
#: The chunk size used by methods that do not measure, when ``batch_size="auto"`` is given.
AUTO_FALLBACK = 32

# model -> {key: chunk size}; weak keys, so a cached size never keeps a model alive
_TUNED: weakref.WeakKeyDictionary[Any, Dict[Hashable, int]] = weakref.WeakKeyDictionary()


def check_batch_size(batch_size: Any, allow_auto: bool = False) -> int:
    """``batch_size`` if it is a positive int (perturbed forward passes per chunk), else a ``ValueError``.

    With ``allow_auto=True`` the string ``"auto"`` is accepted too; it is returned as
    :data:`AUTO_FALLBACK` (the size used where no measurement happens).
    """
    if allow_auto and batch_size == AUTO:
        return AUTO_FALLBACK
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        also = ' or "auto" (measured once per model)' if allow_auto else ""
        raise ValueError(
            f"batch_size must be a positive int (perturbed forward passes per chunk){also}, got {batch_size!r}"
        )
    return batch_size


def tuned_chunk_sizes(model: Any) -> Dict[Hashable, int]:
    """The chunk sizes measured for ``model`` by ``batch_size="auto"``, ``{key: size}`` (a copy)."""
    try:
        return dict(_TUNED.get(model, {}))
    except TypeError:  # not weak-referenceable
        return {}


def clear_tuned_chunk_sizes(model: Any = None) -> None:
    """Forget the measured chunk sizes of ``model`` (or of every model), e.g. after changing threads."""
    if model is None:
        _TUNED.clear()
    else:
        _TUNED.pop(model, None)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_batchnorm(model: nn.Module) -> Tuple[Optional[nn.Module], int]:
    """A copy of ``model`` with each eval-mode BatchNorm that directly follows a convolution folded into it.

    ``BN(conv(x)) = conv'(x)`` with ``W' = W * s``, ``b' = (b - mean) * s + beta``,
    ``s = gamma / sqrt(var + eps)``: one kernel instead of two, for inference only. The model is
    traced with :mod:`torch.fx` (convolutions, subclasses included, and BatchNorms kept as leaves)
    and copied; the original is not touched. A BatchNorm is folded only when it is in eval mode
    with running statistics, its input is the output of a convolution called once in the whole
    graph, and nothing else reads that output.

    Returns
    -------
    (nn.Module or None, int)
        The folded copy and the number of folds, or ``(None, 0)`` when nothing can be folded
        (no BatchNorm in eval mode, a model fx cannot trace, no conv -> BN pair).
    """
    import torch.fx as fx

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not any(not m.training and m.running_mean is not None for m in norms):
        return None, 0

    class ConvBnLeaves(fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, (*_CONVS, nn.modules.batchnorm._BatchNorm)) or super().is_leaf_module(m, qualname)

    try:
        twin = copy.deepcopy(model)
        graph = ConvBnLeaves().trace(twin)
    except Exception:  # noqa: BLE001 - any model fx cannot trace (or copy) is run as it is
        return None, 0
    gm = fx.GraphModule(twin, graph)
    modules = dict(gm.named_modules())
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    folds = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        bn = modules.get(str(node.target))
        src = node.args[0]
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or not isinstance(src, fx.Node):
            continue
        conv = modules.get(str(src.target)) if src.op == "call_module" else None
        if (
            not isinstance(conv, _CONVS)
            or bn.training
            or bn.running_mean is None
            or bn.running_var is None
            or len(src.users) != 1
            or calls[str(src.target)] != 1
            or calls[str(node.target)] != 1
            or conv.out_channels != bn.num_features
            or not conv.weight.is_floating_point()
        ):
            continue
        with torch.no_grad():
            scale = torch.rsqrt(bn.running_var + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight
            shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0.0)
            w = conv.weight * scale.reshape(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype)
            b = shift if conv.bias is None else conv.bias * scale + shift
            conv.weight = nn.Parameter(w, requires_grad=False)
            conv.bias = nn.Parameter(b.to(conv.weight.dtype), requires_grad=False)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folds += 1
    if not folds:
        return None, 0
    gm.recompile()
    return gm.eval(), folds


class FoldedForward:
    """Inference of ``model`` through its BatchNorm-folded copy, checked against the model on first use.

    The first call runs the copy on the whole chunk and the model on its first
    :attr:`check_examples` examples; the copy is used (from this call on) only if the outputs match
    there (``|diff| <= 1e-4 * max|out|`` for float32, ``1e-10`` for float64); otherwise the model
    runs the chunk and every later one. A model whose convolutions do something else with their
    weights (weight standardisation, ...), or whose outputs depend on the rest of the batch
    (BatchNorm in train mode), therefore runs unchanged.

    Parameters
    ----------
    model : callable
        The model (anything else than an ``nn.Module`` is run as it is).
    enabled : bool
        Fold at all.

    Attributes
    ----------
    folds : int
        BatchNorms folded (0 when running the model itself).
    """

    def __init__(self, model: Callable, enabled: bool = True) -> None:
        self.model = model
        folded, folds = fold_batchnorm(model) if enabled and isinstance(model, nn.Module) else (None, 0)
        self.folded: Optional[nn.Module] = folded
        self.folds = folds
        self.checked = False

    #: Examples of the first chunk that the model itself runs for the check.
    check_examples = 2

    def __call__(self, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]]) -> Any:
        if self.folded is None:
            return run_forward(self.model, inputs, args)
        if self.checked:
            return run_forward(self.folded, inputs, args)
        self.checked = True
        try:
            got = run_forward(self.folded, inputs, args)
        except Exception:  # noqa: BLE001 - a traced copy that fails is dropped
            got = None
        n = inputs[0].shape[0]
        k = min(n, self.check_examples)  # the model on a few examples only: the check costs ~k copies, not a chunk
        ref = run_forward(self.model, tuple(x[:k] for x in inputs), slice_args(args, 0, k, n))
        if isinstance(got, Tensor) and got.shape[:1] == (n,) and self._same(ref, got[:k]):
            return got
        self.folded, self.folds = None, 0
        return run_forward(self.model, inputs, args)

    @staticmethod
    def _same(ref: Any, got: Any) -> bool:
        if not isinstance(ref, Tensor) or not isinstance(got, Tensor) or ref.shape != got.shape:
            return False
        if not ref.is_floating_point():
            return bool(torch.equal(ref, got))
        tol = (1e-10 if ref.dtype == torch.float64 else 1e-4) * max(float(ref.abs().max()), 1.0)
        return bool(((ref - got).abs() <= tol).all())


def example_target(target: TargetSpec, i: int) -> TargetSpec:
    """The target of example ``i``: an int from an ``(N,)`` index tensor, the row of classes from an
    ``(N, T)`` one (several targets scored from the same passes), an entry of a list; a callable,
    an int or a tuple is kept."""
    if isinstance(target, Tensor):
        return target[i] if target.dim() == 2 else int(target[i])
    if isinstance(target, list):
        return target[i]
    return target


def score_dtype(outputs: Tensor) -> torch.dtype:
    """float64 for float64 outputs, else float32 (half / bfloat16 scores are compared in float32)."""
    return torch.float64 if outputs.dtype == torch.float64 else torch.float32


def target_scores(outputs: Tensor, target: TargetSpec) -> Tensor:
    """Scores ``(b, T)`` of one example's perturbed copies: ``T`` classes, or one column."""
    if isinstance(target, Tensor) and target.dim() == 1:
        return outputs[:, target.to(outputs.device)].to(score_dtype(outputs))
    return select_target_scores(outputs, target).to(score_dtype(outputs))[:, None]


class PerturbationCamAttribution(CamAttribution, PerturbationAttribution):
    """Base of the perturbation CAMs: per-example perturbed passes, no gradients.

    Parameters
    ----------
    forward_func, layer, device_ids, reshape_transform, layer_call :
        As in :class:`~captum_cam_ext.CamAttribution`.
    batch_size : int or "auto"
        Perturbed copies per forward pass. ``"auto"``: measured once per model by methods that
        run their chunks through :meth:`run_chunks` (Score-CAM, Ablation-CAM); others use
        :data:`AUTO_FALLBACK`.

    Attributes
    ----------
    batch_size : int
        The fixed chunk size (:data:`AUTO_FALLBACK` with ``"auto"``).
    auto_batch_size : bool
        Whether chunk sizes are measured.
    last_run : dict
        What the last call did: ``batch_size`` (the chunk size used for the bulk of the copies),
        ``copies`` (perturbed forward passes run), ``skipped`` (copies whose score was known
        without a pass), ``measured`` (whether this call measured the chunk size).
    """

    uses_gradients = False
    uses_perturbation = True
    #: Candidate chunk sizes tried by ``batch_size="auto"`` (in order; see :meth:`run_chunks`).
    auto_candidates_cpu: Tuple[int, ...] = (8, 16, 32, 64)
    auto_candidates_cuda: Tuple[int, ...] = (16, 32, 64, 128, 256)
    #: The timer ``batch_size="auto"`` measures chunks with; None: :func:`measuring_clock` (the
    #: calling thread's CPU time where torch computes on that thread alone, else wall time).
    clock: Optional[Callable[[], float]] = None

    def __init__(
        self,
        forward_func: Callable,
        layer: LayerSpec,
        device_ids: Optional[List[int]] = None,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        batch_size: BatchSize = 32,
        layer_call: int = -1,
    ) -> None:
        CamAttribution.__init__(
            self, forward_func, layer, device_ids, reshape_transform, trim_graph=True, layer_call=layer_call
        )
        PerturbationAttribution.__init__(self, forward_func)
        self.batch_size = check_batch_size(batch_size, allow_auto=True)
        self.auto_batch_size = batch_size == AUTO
        self.last_run: Dict[str, Any] = {}
        self._warned_train_mode = False

    @property
    def multiplies_by_inputs(self) -> bool:  # Captum's PerturbationAttribution property
        return False

    # ---- what a method overrides ----------------------------------------------------------

    def example_scores(
        self,
        unit: int,
        example: Tuple[Tensor, ...],
        args: Optional[Tuple[Any, ...]],
        target: TargetSpec,
        activations: Tensor,
        record: LayerRecord,
        to_input: bool,
    ) -> Tensor:
        """Scores ``(K, T)`` of one example's ``K`` perturbed copies for ``T`` targets.

        Parameters
        ----------
        unit : int
            Which recorded unit (layer) is perturbed.
        example : tuple of Tensor
            The example's inputs, each with batch size 1.
        args : tuple, optional
            Its additional forward arguments (tensors sliced to the example).
        target : int, (T,) LongTensor, tuple or callable
            Its target(s).
        activations : Tensor
            Its clean activations ``(1, K, *S)``.
        record, to_input :
            The clean pass and whether the layer input is explained.
        """
        raise NotImplementedError

    def scores_to_weights(self, scores: Tensor, clean: Tensor) -> Tensor:
        """Weights ``(N, K, T)`` from the perturbed scores ``(N, K, T)`` and clean scores ``(N, T)``."""
        raise NotImplementedError

    # ---- shared -----------------------------------------------------------------------------

    def clean_scores(self, record: LayerRecord, target: TargetSpec) -> Tensor:
        """Target scores ``(N, T)`` of the unperturbed pass."""
        outputs = record.outputs
        if isinstance(target, Tensor) and target.dim() == 2:
            return outputs.gather(1, target.to(outputs.device)).to(score_dtype(outputs))
        return select_target_scores(outputs, target).to(score_dtype(outputs))[:, None]

    def record_target(self, record: LayerRecord) -> TargetSpec:
        """The recorded target(s) as the scoring passes take them: one class index / callable per
        example, or an ``(N, T)`` index tensor when several targets share the perturbed passes."""
        if len(record.targets) == 1:
            index = record.indices[0]
            return index if index is not None else record.targets[0]
        if any(i is None for i in record.indices):
            raise ValueError("several targets per example must be class indices (an (N, T) tensor)")
        return torch.stack([i for i in record.indices if i is not None], dim=1)

    def layer_weights(
        self, record: LayerRecord, inputs: Tuple[Tensor, ...], args: Optional[Tuple[Any, ...]], to_input: bool
    ) -> List[List[Tensor]]:
        if record.tuple_output:
            raise ValueError(f"{type(self).__name__} needs a layer with one tensor output, not a tuple")
        self.warn_if_train_mode()
        self.last_run = {"batch_size": self.batch_size, "copies": 0, "skipped": 0, "measured": False}
        target = self.record_target(record)
        clean = self.clean_scores(record, target)
        n = inputs[0].shape[0]
        per_unit: List[Tensor] = []
        with torch.no_grad():
            for u, acts in enumerate(record.activations):
                rows = []
                for i in range(n):
                    example = tuple(x[i : i + 1] for x in inputs)
                    rows.append(
                        self.example_scores(
                            u,
                            example,
                            slice_args(args, i, i + 1, n),
                            example_target(target, i),
                            acts[i : i + 1],
                            record,
                            to_input,
                        )  # fmt: skip
                    )
                scores = torch.stack(rows).to(torch.float64 if acts.dtype == torch.float64 else torch.float32)
                per_unit.append(self.scores_to_weights(scores, clean.to(scores.dtype)))
        units = record.activations
        return [
            [
                w[:, :, t].reshape(*w.shape[:2], *([1] * (units[u].dim() - 2))).to(units[u].dtype)
                for u, w in enumerate(per_unit)
            ]
            for t in range(clean.shape[1])
        ]

    def warn_if_train_mode(self) -> None:
        """Warn once per instance when the model has BatchNorm layers in train mode (the perturbed
        copies would then be normalised with each other's statistics)."""
        model = self.forward_func
        if self._warned_train_mode or not isinstance(model, nn.Module):
            return
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()):
            warnings.warn(
                f"{type(self).__name__} runs the model on batches of perturbed copies while it is in train() mode: "
                "its BatchNorm layers normalise each batch with that batch's own statistics, so the copies "
                "influence each other and the weights depend on batch_size. Call model.eval() first for the "
                "method's usual definition (the running statistics are left unchanged either way).",
                UserWarning,
                stacklevel=4,
            )
            self._warned_train_mode = True

    @staticmethod
    def chunks(count: int, size: int) -> Sequence[Tuple[int, int]]:
        """``[(start, stop), ...]`` covering ``range(count)`` in steps of ``size``."""
        return [(s, min(s + size, count)) for s in range(0, count, size)]

    def chunk_key(self, example: Tuple[Tensor, ...], *extra: Hashable) -> Tuple[Hashable, ...]:
        """What a measured chunk size depends on: method, layers, example shapes, dtype, device, threads."""
        x0 = example[0]
        return (
            type(self).__name__,
            tuple(self.layer_names),
            tuple(tuple(x.shape[1:]) for x in example),
            str(x0.dtype),
            str(x0.device),
            torch.get_num_threads(),
            *extra,
        )

    def run_chunks(
        self,
        count: int,
        run: Callable[[int, int], Tensor],
        key: Tuple[Hashable, ...],
        device: torch.device,
        max_size: Optional[int] = None,
        candidates: Optional[Sequence[int]] = None,
    ) -> Tensor:
        """``torch.cat([run(start, stop) for each chunk])`` over ``range(count)``.

        With a fixed ``batch_size`` the chunks have that size. With ``"auto"`` the size cached for
        ``key`` (and the model) is used; when there is none yet, the first chunks are run at the
        candidate sizes (:attr:`auto_candidates_cpu` / :attr:`auto_candidates_cuda`, at most
        ``max_size``), each twice with the second run timed, while the time per copy keeps
        improving (a size more than 5% slower per copy than the best so far ends the search); the
        best size is cached and used for the rest.

        Parameters
        ----------
        count : int
            Number of perturbed copies (at least 1).
        run : callable
            ``run(start, stop)`` scores copies ``start..stop-1``: a tensor with ``stop - start`` rows.
        key : tuple
            See :meth:`chunk_key`.
        device : torch.device
            Where the copies run (CUDA is synchronised around timed chunks).
        max_size : int, optional
            Largest chunk the method allows (memory).
        candidates : sequence of int, optional
            Sizes to try instead of the class defaults.
        """
        if count < 1:
            raise ValueError(f"run_chunks needs at least one copy to run, got count={count}")
        self.last_run["copies"] = self.last_run.get("copies", 0) + count
        if not self.auto_batch_size:
            return torch.cat([run(s, e) for s, e in self.chunks(count, self.batch_size)])
        model = self.forward_func
        try:
            cache = _TUNED.setdefault(model, {})
        except TypeError:  # a forward_func that cannot be weakly referenced: cache on the object
            cache = self.__dict__.setdefault("_tuned_here", {})
        size = cache.get(key)
        pos = 0
        parts: List[Tensor] = []
        if size is None:
            default = self.auto_candidates_cuda if device.type == "cuda" else self.auto_candidates_cpu
            sizes = [b for b in (candidates or default) if max_size is None or b <= max_size] or [max(1, max_size or 1)]
            best, pos, parts, complete = self._measure(count, run, device, sizes, self.clock or measuring_clock(device))
            if best is not None and complete:
                cache[key] = best
                self.last_run["measured"] = True
            # too few copies to finish the search: nothing cached; the rest in the next size up
            size = best if complete and best is not None else next((b for b in sizes if 2 * b > count - pos), sizes[-1])
        self.last_run["batch_size"] = size
        parts += [run(pos + s, pos + e) for s, e in self.chunks(count - pos, size)]
        return torch.cat(parts)

    @staticmethod
    def _measure(
        count: int,
        run: Callable[[int, int], Tensor],
        device: torch.device,
        sizes: Sequence[int],
        clock: Callable[[], float],
    ) -> Tuple[Optional[int], int, List[Tensor], bool]:
        """Run chunks at the candidate sizes: ``(best size, copies done, their scores, search complete)``."""
        best: Optional[Tuple[float, int]] = None
        pos = 0
        parts: List[Tensor] = []
        for b in sizes:
            if count - pos < 2 * b:
                return (best[1] if best is not None else None), pos, parts, False
            parts.append(run(pos, pos + b))  # warm-up of this shape (real work)
            pos += b
            _sync(device)
            t0 = clock()
            parts.append(run(pos, pos + b))
            _sync(device)
            per_copy = (clock() - t0) / b
            pos += b
            if best is None or per_copy < best[0]:
                best = (per_copy, b)
            elif per_copy > 1.05 * best[0]:
                break
        return (best[1] if best is not None else None), pos, parts, True
