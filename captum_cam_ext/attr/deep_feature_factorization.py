"""Deep Feature Factorization (Collins et al., 2018): non-negative matrix factorisation of a layer's activations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import numpy as np
import torch
from captum._utils.common import _format_additional_forward_args
from captum.log import log_usage
from torch import Tensor, nn

from captum_cam_ext._engine import LayerRecorder, format_inputs, module_path, preserved_state, run_forward
from captum_cam_ext._maps import check_interpolate_mode, normalize_maps, upsample_maps

__all__ = ["DeepFeatureFactorization", "Factorization", "nmf"]

TensorOrTuple = Union[Tensor, Tuple[Tensor, ...]]


def nmf(
    x: Tensor, n_components: int, max_iter: int = 200, tol: float = 1e-4, seed: Optional[int] = 0
) -> Tuple[Tensor, Tensor]:
    r"""Non-negative matrix factorisation :math:`X \approx W H` by coordinate descent (HALS).

    Minimises :math:`\tfrac{1}{2}\|X - WH\|_F^2` over :math:`W \ge 0` ``(m, r)`` and
    :math:`H \ge 0` ``(r, n)``, updating one column of :math:`W` at a time (each row's coordinate
    has a closed-form non-negative minimiser), then one row of :math:`H`; stops when the
    projected-gradient violation falls below ``tol`` times the first iteration's, or after
    ``max_iter`` iterations. This is the algorithm of scikit-learn's ``NMF(solver="cd")``; the
    initialisation is its ``init="random"``: :math:`|\mathcal{N}(0, 1)|\sqrt{\bar X / r}`, drawn
    with ``numpy.random.RandomState(seed)`` (``H`` first, then ``W``), so ``seed`` plays the role of
    its ``random_state``.

    Parameters
    ----------
    x : Tensor ``(m, n)``
        Non-negative.
    n_components : int
        :math:`r`.
    max_iter, tol : int, float
        Stopping rule.
    seed : int, optional
        Seed of the initialisation (None: numpy's global random state).

    Returns
    -------
    (Tensor, Tensor)
        ``W (m, r)`` and ``H (r, n)``, in ``x``'s dtype.
    """
    if x.dim() != 2:
        raise ValueError(f"nmf needs a matrix (m, n), got {tuple(x.shape)}")
    if bool((x < 0).any()):
        raise ValueError("nmf needs a non-negative matrix")
    m, n = x.shape
    rng: Any = np.random.RandomState(seed) if seed is not None else np.random  # None: numpy's global state
    scale = float(np.sqrt(max(float(x.double().mean()), 0.0) / n_components))
    h0 = np.abs(scale * rng.standard_normal(size=(n_components, n)))
    w0 = np.abs(scale * rng.standard_normal(size=(m, n_components)))
    xd = x.double()
    w = torch.from_numpy(w0).to(x.device, torch.float64)
    ht = torch.from_numpy(h0.T.copy()).to(x.device, torch.float64)  # H^T (n, r)
    first: Optional[float] = None
    for _ in range(max_iter):
        violation = _hals_sweep(xd, w, ht) + _hals_sweep(xd.T, ht, w)
        if first is None:
            first = violation
            if first == 0:
                break
        elif violation / first <= tol:
            break
    return w.to(x.dtype), ht.T.contiguous().to(x.dtype)


def _hals_sweep(x: Tensor, w: Tensor, ht: Tensor) -> float:
    """One pass over the columns of ``w`` (in place) for ``x ~ w ht^T``; returns the violation."""
    hht = ht.T @ ht  # (r, r)
    xht = x @ ht  # (m, r)
    violation = 0.0
    for t in range(w.shape[1]):
        grad = w @ hht[:, t] - xht[:, t]
        projected = torch.where(w[:, t] == 0, grad.clamp(max=0), grad)
        violation += float(projected.abs().sum())
        if float(hht[t, t]) != 0:
            w[:, t] = (w[:, t] - grad / hht[t, t]).clamp(min=0)
    return violation


@dataclass
class Factorization:
    """The result of :meth:`DeepFeatureFactorization.attribute`.

    Attributes
    ----------
    concepts : Tensor ``(K, r)``
        Each concept's embedding in the layer's ``K`` channels (the NMF basis plus each channel's
        offset).
    maps : Tensor ``(N, r, *S)``
        Where each concept is, per example: the NMF coefficients, each map min-max normalised to
        ``[0, 1]`` (and upsampled to the input with ``upsample_to_input``).
    concept_scores : Tensor ``(r, classes)`` or None
        ``computation_on_concepts`` applied to the concepts (e.g. the classifier head: what
        each concept "means").
    """

    concepts: Tensor
    maps: Tensor
    concept_scores: Optional[Tensor] = None


class DeepFeatureFactorization:
    r"""Deep Feature Factorization: the concepts a layer uses across a batch, and where they are.

    The activations of the batch ``(N, K, *S)`` form a channels-by-positions matrix
    :math:`A \in \mathbb{R}^{K \times N|S|}`; each channel is shifted by its minimum
    :math:`o_k` to be non-negative and factorised, :math:`A - o\mathbf{1}^\top \approx W H`
    (:func:`nmf`, ``r`` components). Column :math:`j` of :math:`W + o` is concept :math:`j` (a
    point in the layer's channel space); row :math:`j` of :math:`H`, reshaped per example, is where
    it appears. Not a class attribution: no target, no gradient, one forward pass.

    Reference: E. Collins, R. Achanta, S. Süsstrunk, "Deep Feature Factorization for Concept
    Discovery", ECCV 2018 (arXiv:1806.10206); pytorch-grad-cam 1.5.7 ``DeepFeatureFactorization``.

    Parameters
    ----------
    forward_func : callable
        The model.
    layer : nn.Module
        The layer whose output is factorised (``(N, K, *S)`` after ``reshape_transform``).
    reshape_transform : callable, optional
        As in :class:`~captum_cam_ext.CamAttribution` (e.g. ViT tokens to a grid).
    computation_on_concepts : callable, optional
        Applied to the concepts ``(r, K)`` (e.g. ``model.fc``) to label them.
    max_iter, tol, seed :
        :func:`nmf`'s.

    Examples
    --------
    >>> dff = DeepFeatureFactorization(model, model.layer4, computation_on_concepts=model.fc)  # doctest: +SKIP
    >>> res = dff.attribute(images, n_components=4, upsample_to_input=True)                    # doctest: +SKIP
    >>> res.maps.shape, res.concept_scores.softmax(-1).argmax(-1)                            # doctest: +SKIP
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: nn.Module,
        reshape_transform: Optional[Callable[[Tensor], Tensor]] = None,
        computation_on_concepts: Optional[Callable[[Tensor], Tensor]] = None,
        max_iter: int = 200,
        tol: float = 1e-4,
        seed: Optional[int] = 0,
    ) -> None:
        if not callable(forward_func):
            raise TypeError(
                f"forward_func must be a callable (usually an nn.Module), got {type(forward_func).__name__}"
            )
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be an nn.Module, got {type(layer).__name__}")
        if isinstance(forward_func, nn.Module) and not any(layer is m for m in forward_func.modules()):
            raise ValueError("layer is not a submodule of the model; pass a module taken from the model itself")
        for name, fn in (
            ("reshape_transform", reshape_transform),
            ("computation_on_concepts", computation_on_concepts),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be a callable or None")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
        if not isinstance(tol, (int, float)) or tol < 0:
            raise ValueError(f"tol must be a non-negative number, got {tol!r}")
        self.forward_func = forward_func
        self.layer = layer
        self.layer_name = module_path(forward_func, layer)
        self.reshape_transform = reshape_transform
        self.computation_on_concepts = computation_on_concepts
        self.max_iter = max_iter
        self.tol = float(tol)
        self.seed = seed

    def activations(self, inputs: TensorOrTuple, additional_forward_args: Any = None) -> Tensor:
        """The layer's activations ``(N, K, *S)`` (one forward pass without gradients)."""
        tup = format_inputs(inputs)
        args = _format_additional_forward_args(additional_forward_args)
        rec = LayerRecorder([self.layer], to_input=False, grad_root=False, names=[self.layer_name])
        with preserved_state(self.forward_func), torch.no_grad(), rec:
            run_forward(self.forward_func, tup, args)
        value = rec.value(0)
        if not isinstance(value, Tensor):
            raise ValueError(f"layer {self.layer_name} returns a tuple; factorise a layer with one tensor output")
        if self.reshape_transform is not None:
            value = self.reshape_transform(value)
        if not isinstance(value, Tensor) or not 3 <= value.dim() <= 5:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"DFF needs activations (N, K, *S) with 1 to 3 spatial dimensions, got {shape}")
        return value

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        n_components: int = 16,
        additional_forward_args: Any = None,
        upsample_to_input: bool = False,
        interpolate_mode: str = "bilinear",
    ) -> Factorization:
        """Factorise the layer's activations of ``inputs`` into ``n_components`` concepts.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            The batch ``(N, C, *S_in)``; the factorisation is shared by the whole batch.
        n_components : int
            ``r``, the number of concepts.
        additional_forward_args : Any, optional
            Extra model arguments.
        upsample_to_input : bool
            Resize the maps to the input's spatial size (pytorch-grad-cam's output).
        interpolate_mode : str
            The resize mode (default bilinear).

        Returns
        -------
        Factorization
        """
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        check_interpolate_mode(interpolate_mode)
        acts = self.activations(inputs, additional_forward_args)
        n, k = acts.shape[:2]
        spatial = tuple(acts.shape[2:])
        a = torch.nan_to_num(acts.transpose(0, 1).reshape(k, -1).double())
        offset = a.amin(dim=1, keepdim=True)
        w, h = nmf(a - offset, n_components, self.max_iter, self.tol, self.seed)
        concepts = (w + offset).to(acts.dtype)
        maps = h.reshape(n_components, n, *spatial).transpose(0, 1).to(acts.dtype)  # (N, r, *S)
        maps = normalize_maps(maps.reshape(n * n_components, 1, *spatial)).reshape(n, n_components, *spatial)
        if upsample_to_input:
            x0 = format_inputs(inputs)[0]
            if x0.dim() != acts.dim():
                raise ValueError(f"cannot upsample {len(spatial)}-D maps to inputs of shape {tuple(x0.shape)}")
            maps = upsample_maps(maps, tuple(x0.shape[2:]), interpolate_mode)
        scores = None
        if self.computation_on_concepts is not None:
            with torch.no_grad():
                scores = self.computation_on_concepts(concepts.T.contiguous())
        return Factorization(concepts, maps, scores)
