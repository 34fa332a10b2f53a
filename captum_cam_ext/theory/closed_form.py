"""Closed forms for CAM maps of the masked CNN at initialization.

The derivation (ours; it reproduces the claim of Taimeskhanov, Sicre & Garreau, "CAM-based methods
can see through walls", arXiv 2404.01964) is in ``docs/see_through_walls.md``.  Summary, for the
model of :mod:`captum_cam_ext.theory.masked_cnn` with ``P = H'W'`` feature positions, ``|S|``
visible ones, ``V`` filters, a fixed target logit and weights i.i.d. ``W ~ N(0, sigma_w^2)``,
``Theta ~ N(0, sigma_theta^2)``:

* Grad-CAM channel weights ``alpha_v = (1/P) sum_{p in S} Theta_{v,p}`` are i.i.d.
  ``N(0, sigma_theta^2 |S| / P^2)`` and independent of ``W``.  Hence, given ``W``, the pre-ReLU map
  at *every* position ``p`` (visible or masked) is ``N(0, s^2(p))`` with
  ``s^2(p) = sigma_theta^2 |S| / P^2 * sum_v B_v(p)^2``, and
  ``E[GradCAM(p) | W] = s(p) / sqrt(2 pi)``.
* ``sum_v B_v(p)^2 = sigma_w^2 ||x_p||^2 chi^2_K`` with ``K ~ Binomial(V, 1/2)``, so
  ``E[GradCAM(p)] = sigma_theta sqrt(|S|) / P * sigma_w ||x_p|| * c_V / sqrt(2 pi)``
  with ``c_V = E[chi_K] = sum_K C(V,K) 2^-V sqrt(2) Gamma((K+1)/2) / Gamma(K/2)``, and
  ``P(GradCAM(p) > 0) = (1 - 2^-V) / 2``.  The visible part has the *same* law as the masked part:
  Grad-CAM does not know where the wall is.
* HiResCAM (map ``sum_v Theta_{v,p} B_v(p)`` on ``S``, exactly 0 on ``M``):
  ``E = sigma_theta sigma_w ||x_p|| c_V / sqrt(2 pi)`` on ``S``, ``P(>0) = (1 - 2^-V)/2`` on ``S``.
* LayerCAM (map ``sum_v ReLU(Theta_{v,p}) B_v(p)`` on ``S``, 0 on ``M``):
  ``E = V sigma_theta sigma_w ||x_p|| / (2 pi)`` on ``S``, ``P(>0) = 1 - (3/4)^V`` on ``S``.
* XGrad-CAM, given ``W`` only: ``alpha_v ~ N(0, sigma_theta^2 sum_{q in S} B_v(q)^2 /
  (sum_q B_v(q))^2)``, so ``E[XGradCAM(p) | W] = sigma_theta sqrt(sum_v B_v(p)^2 r_v) / sqrt(2 pi)``
  with ``r_v = sum_{q in S} B_v(q)^2 / (sum_q B_v(q))^2``.

With a bias (``b_v ~ N(0, sigma_w^2)``) everything holds with ``||x_p||^2`` replaced by
``||x_p||^2 + 1``.

**Max-pooled head** (``pool_size=s``, the authors' notebook model conv -> ReLU -> s x s max-pool ->
masked dense): the gradient of ``y`` reaches ``B_v`` only at the argmax of each pooling window,
with the value ``Theta_{v,c}`` of that window's head weight, so ``alpha_v = (1/P) sum_{c in S}
Theta_{v,c}`` again: the Grad-CAM laws above hold with ``|S|`` = number of visible *pooled* cells
and ``P`` = number of *conv* positions (the map stays on the conv grid).  HiResCAM and LayerCAM
are 0 off the argmax positions and on the masked rows; given ``W`` their expectation is the
no-pool one restricted to the argmax positions (unconditionally the argmax selection has no
closed form here).

**Predicted-class target** (``target="argmax"``, as the authors' code; ``K`` logits): given ``W``
write ``b`` for the visible (pooled) features flattened and ``u_p[v, c] = B_v(p)``.  Then
``y_j = <Theta_j, b>`` are i.i.d. ``N(0, sigma_theta^2 ||b||^2)``; the winner's weights split into
``(y*/||b||^2) b`` plus a part independent of the selection, so the Grad-CAM pre-ReLU map is
``(sigma_theta / P) (a_p M_K + r_p Z)`` with ``M_K`` the maximum of ``K`` standard normals,
``Z ~ N(0, 1)`` independent, ``a_p = <b, u_p> / ||b||`` and ``r_p^2 = ||u_p||^2 - a_p^2``.  Hence
``E[GradCAM(p) | W] = (sigma_theta / P) E[g(a_p M_K, r_p)]`` with
``g(mu, r) = mu Phi(mu / r) + r phi(mu / r)`` (a one-dimensional integral over ``M_K``, done by
quadrature).  Since ``a_p >= 0`` the map is shifted up: larger and more often positive than with
a fixed target.  Methods are named by their canonical names in the method registry
(:func:`captum_cam_ext.registry.canonical_method_name`): a class, an alias or a class name works.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_cam_ext.registry import canonical_method_name, normalize_method_name

from .masked_cnn import check_config

__all__ = [
    "CLOSED_FORM_METHODS",
    "CONDITIONAL_METHODS",
    "MaskedCnnClosedForm",
    "check_n_outputs",
    "check_target",
    "chi_mean_binomial",
    "max_normal_quadrature",
    "method_key",
]

SQRT_2PI = math.sqrt(2.0 * math.pi)

#: Canonical names of the methods with an unconditional closed form (expectation over W and Theta).
CLOSED_FORM_METHODS: Tuple[str, ...] = ("gradcam", "hirescam", "layercam")
#: Canonical names of the methods with a closed form given the convolution (over Theta only).
CONDITIONAL_METHODS: Tuple[str, ...] = ("gradcam", "hirescam", "layercam", "xgradcam")


def method_key(method: Union[str, type]) -> str:
    """The registry's canonical name of a CAM method (class, alias or class name).

    A class or name that is not registered gives its normalised spelling (see
    :func:`captum_cam_ext.registry.normalize_method_name`), which matches no closed form.
    """
    try:
        return canonical_method_name(method)
    except ValueError:
        return normalize_method_name(method.__name__ if isinstance(method, type) else method)


def chi_mean_binomial(n_filters: int) -> float:
    """``c_V = E[chi_K]`` with ``K ~ Binomial(V, 1/2)`` (``chi_0 = 0``).

    Parameters
    ----------
    n_filters : int
        ``V >= 1``.

    Returns
    -------
    float
        ``sum_{K=1..V} C(V,K) 2^-V sqrt(2) Gamma((K+1)/2) / Gamma(K/2)``, computed in log space.
    """
    if not isinstance(n_filters, int) or n_filters < 1:
        raise ValueError(f"n_filters must be a positive int, got {n_filters!r}.")
    v = n_filters
    total = 0.0
    for k in range(1, v + 1):
        log_binom = math.lgamma(v + 1) - math.lgamma(k + 1) - math.lgamma(v - k + 1)
        log_chi = 0.5 * math.log(2.0) + math.lgamma((k + 1) / 2) - math.lgamma(k / 2)
        total += math.exp(log_binom - v * math.log(2.0) + log_chi)
    return total


class MaskedCnnClosedForm:
    """Closed-form laws of CAM maps of the masked CNN at initialization.

    Parameters
    ----------
    in_channels, height, width : int
        Input shape ``(C, H, W)``.
    kernel_size : int
        Convolution kernel ``k`` (valid, stride 1): feature grid ``H' x W'``.
    n_filters : int
        ``V``.
    visible_rows : int
        Number of top feature rows read by the head; the other ``H' - visible_rows`` rows are ``M``.
    sigma_w, sigma_theta : float
        Initialization standard deviations.
    bias : bool
        Whether the convolution has a bias (drawn ``N(0, sigma_w^2)``).
    pool_size : int
        ``s``: an ``s x s`` max-pool between the CAM layer and the dense head (1: none).  Then
        ``visible_rows`` counts rows of the pooled grid ``(H' // s) x (W' // s)`` and every map is
        on the conv grid ``H' x W'``; the masked rows ``M`` are the conv rows ``>= s *
        visible_rows``.
    """

    def __init__(
        self,
        in_channels: int,
        height: int,
        width: int,
        kernel_size: int,
        n_filters: int,
        visible_rows: int,
        sigma_w: float = 1.0,
        sigma_theta: float = 1.0,
        bias: bool = False,
        pool_size: int = 1,
    ) -> None:
        hp, wp = check_config(
            in_channels, height, width, kernel_size, n_filters, visible_rows, sigma_w, sigma_theta,
            pool_size,
        )
        self.in_channels, self.height, self.width = in_channels, height, width
        self.kernel_size, self.n_filters, self.visible_rows = kernel_size, n_filters, visible_rows
        self.sigma_w, self.sigma_theta, self.bias = float(sigma_w), float(sigma_theta), bool(bias)
        self.pool_size = pool_size
        self.feature_size: Tuple[int, int] = (hp, wp)
        #: The grid the head reads: ``(H' // s, W' // s)`` (the conv grid without pooling).
        self.head_grid: Tuple[int, int] = (hp // pool_size, wp // pool_size)
        self.n_positions = hp * wp
        self.n_visible = visible_rows * self.head_grid[1]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(C={self.in_channels}, H={self.height}, W={self.width}, "
            f"k={self.kernel_size}, V={self.n_filters}, visible_rows={self.visible_rows}, "
            f"sigma_w={self.sigma_w}, sigma_theta={self.sigma_theta}, bias={self.bias}"
            + (f", pool_size={self.pool_size})" if self.pool_size > 1 else ")")
        )

    # ------------------------------------------------------------------ geometry and inputs
    @property
    def masked_mask(self) -> Tensor:
        """Boolean ``(H', W')`` on the conv grid: True on the masked rows ``M``.

        These are the conv rows ``>= pool_size * visible_rows`` (no visible pooling window covers
        them); the input rows the model cannot see are ``>= pool_size * visible_rows + k - 1``.
        """
        m = torch.zeros(self.feature_size, dtype=torch.bool)
        m[self.pool_size * self.visible_rows :] = True
        return m

    def input_batch(self, x: Tensor) -> Tensor:
        """``x`` as a float64 batch ``(N, C, H, W)``, after checking it fits the configuration.

        Parameters
        ----------
        x : Tensor
            ``(C, H, W)`` or ``(N, C, H, W)``.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        expected = (self.in_channels, self.height, self.width)
        given = tuple(x.shape)
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"input of shape {given} does not fit the analyzer's configuration: "
                f"expected (C, H, W) = {expected} or (N, {', '.join(map(str, expected))})."
            )
        return x.detach().to(torch.float64)

    def patch_norms(self, x: Tensor) -> Tensor:
        """``||x_p||`` (``sqrt(||x_p||^2 + 1)`` with a bias) at every feature position.

        Parameters
        ----------
        x : Tensor
            ``(C, H, W)`` or ``(N, C, H, W)``.

        Returns
        -------
        Tensor
            ``(N, 1, H', W')``, float64.
        """
        xb = self.input_batch(x)
        ones = torch.ones(1, self.in_channels, self.kernel_size, self.kernel_size,
                          dtype=torch.float64)
        sq = F.conv2d(xb * xb, ones)
        if self.bias:
            sq = sq + 1.0
        return sq.clamp_min(0).sqrt()

    def _region(self, key: str) -> Tensor:
        """``(1, 1, H', W')`` float mask of where ``key``'s map can be non-zero."""
        if key == "gradcam" or key == "xgradcam":
            r = torch.ones(self.feature_size, dtype=torch.float64)
            if self.n_visible == 0:
                r.zero_()
        else:
            r = (~self.masked_mask).to(torch.float64)
        return r[None, None]

    def _check_pooled_law(self, key: str, method: Union[str, type]) -> None:
        if self.pool_size > 1 and key in ("hirescam", "layercam"):
            raise ValueError(
                f"no unconditional closed form for {method!r} with pool_size={self.pool_size} (the "
                "max-pool's argmax selection); use conditional_expected_map or monte_carlo, or "
                "'gradcam'."
            )

    # ------------------------------------------------------------- unconditional closed forms
    def expected_map(self, x: Tensor, method: Union[str, type] = "gradcam") -> Tensor:
        """Closed-form ``E[CAM(p)]`` (with ``relu_attributions=True``) at every feature position.

        Parameters
        ----------
        x : Tensor
            ``(C, H, W)`` or ``(N, C, H, W)``.
        method : str or CAM class
            ``"gradcam"`` (default; the same law on visible and masked positions),
            ``"hirescam"`` or ``"layercam"`` (0 on the masked rows), or the classes
            ``LayerGradCam`` / ``LayerHiResCam`` / ``LayerCam``.

        Returns
        -------
        Tensor
            ``(N, 1, H', W')``, float64.
        """
        key = method_key(method)
        self._check_pooled_law(key, method)
        norms = self.patch_norms(x)
        sw, st, v = self.sigma_w, self.sigma_theta, self.n_filters
        if key == "gradcam":
            coef = st * math.sqrt(self.n_visible) / self.n_positions * sw * chi_mean_binomial(v)
            coef /= SQRT_2PI
        elif key == "hirescam":
            coef = st * sw * chi_mean_binomial(v) / SQRT_2PI
        elif key == "layercam":
            coef = v * st * sw / (2.0 * math.pi)
        else:
            raise ValueError(
                f"no unconditional closed form for method {method!r}: use one of "
                f"{', '.join(repr(m) for m in CLOSED_FORM_METHODS)} (or conditional_expected_map / "
                "monte_carlo)."
            )
        return coef * norms * self._region(key)

    def positive_probability(self, x: Tensor, method: Union[str, type] = "gradcam") -> Tensor:
        """Closed-form ``P(CAM(p) > 0)`` at every feature position.

        ``(1 - 2^-V) / 2`` for Grad-CAM wherever the patch is not zero (everywhere with a bias);
        the same on the visible rows and 0 on the masked rows for HiResCAM; ``1 - (3/4)^V`` on the
        visible rows and 0 on the masked rows for LayerCAM.

        Returns
        -------
        Tensor
            ``(N, 1, H', W')``, float64.
        """
        key = method_key(method)
        self._check_pooled_law(key, method)
        v = self.n_filters
        if key in ("gradcam", "hirescam"):
            prob = (1.0 - 2.0 ** (-v)) / 2.0
        elif key == "layercam":
            prob = 1.0 - 0.75**v
        else:
            raise ValueError(
                f"no closed-form positive probability for method {method!r}: use 'gradcam', "
                "'hirescam' or 'layercam'."
            )
        nonzero = (self.patch_norms(x) > 0).to(torch.float64)
        return prob * nonzero * self._region(key)

    def expected_leak(self, x: Tensor, method: Union[str, type] = "gradcam") -> Tensor:
        """Closed-form expected CAM mass on the masked rows, ``sum_{p in M} E[CAM(p)]``.

        Returns
        -------
        Tensor
            ``(N,)``, float64 (exactly 0 for HiResCAM and LayerCAM).
        """
        em = self.expected_map(x, method)
        return (em * self.masked_mask.to(em.dtype)).flatten(1).sum(1)

    # ------------------------------------------------------------- a fixed convolution
    def conv_parameters(
        self, conv_weight: Union[Tensor, nn.Module]
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """``(weight (V, C, k, k), bias (V,) or None)`` in float64, checked against the configuration.

        Parameters
        ----------
        conv_weight : Tensor or nn.Module
            A weight ``(V, C, k, k)``, an ``nn.Conv2d`` or a model with a ``.conv`` ``nn.Conv2d``
            (then :meth:`check_model` is applied to it).
        """
        bias: Optional[Tensor] = None
        if isinstance(conv_weight, nn.Module):
            conv = getattr(conv_weight, "conv", conv_weight)
            if not isinstance(conv, nn.Conv2d):
                raise TypeError(
                    "conv_weight must be a Tensor (V, C, k, k), an nn.Conv2d or a model with a "
                    f".conv Conv2d attribute, got {type(conv_weight).__name__}."
                )
            if hasattr(conv_weight, "conv"):
                self.check_model(conv_weight)
            bias = None if conv.bias is None else conv.bias.detach().to(torch.float64)
            conv_weight = conv.weight
        expected = (self.n_filters, self.in_channels, self.kernel_size, self.kernel_size)
        if not isinstance(conv_weight, Tensor) or tuple(conv_weight.shape) != expected:
            shape = tuple(conv_weight.shape) if isinstance(conv_weight, Tensor) else None
            raise ValueError(
                f"conv weight of shape {shape} does not fit the analyzer's configuration: "
                f"expected (V, C, k, k) = {expected}."
            )
        return conv_weight.detach().to(torch.float64), bias

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` (naming both shapes) unless ``model`` matches this configuration.

        ``model`` must have a ``conv`` (``nn.Conv2d``) whose weight is ``(V, C, k, k)`` with valid
        padding and stride 1; a :class:`~captum_cam_ext.theory.MaskedCNN` must also have the same
        input size and visible rows.
        """
        conv = getattr(model, "conv", None)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(
                f"model {type(model).__name__} has no .conv nn.Conv2d; expected a masked CNN "
                "built by masked_cnn()."
            )
        expected = (self.n_filters, self.in_channels, self.kernel_size, self.kernel_size)
        if tuple(conv.weight.shape) != expected:
            raise ValueError(
                f"model conv weight has shape {tuple(conv.weight.shape)}, the analyzer expects "
                f"(V, C, k, k) = {expected}."
            )
        if tuple(conv.stride) != (1, 1) or tuple(conv.padding) not in ((0, 0),):
            raise ValueError(
                f"model conv must be valid (padding 0) and stride 1, got padding={conv.padding}, "
                f"stride={conv.stride}."
            )
        if hasattr(model, "height"):
            got: Tuple[Any, ...] = (model.in_channels, model.height, model.width,
                                    model.visible_rows)
            exp: Tuple[Any, ...] = (self.in_channels, self.height, self.width, self.visible_rows)
            names = "(C, H, W, visible_rows)"
            pool = getattr(model, "pool_size", 1)
            if pool != 1 or self.pool_size != 1:
                got, exp, names = (*got, pool), (*exp, self.pool_size), names[:-1] + ", pool_size)"
            if got != exp:
                raise ValueError(
                    f"model input/visible rows {names} = {got} do not fit the analyzer's "
                    f"configuration {exp}."
                )
        if (conv.bias is not None) != self.bias:
            raise ValueError(
                f"model conv bias={conv.bias is not None} but the analyzer has bias={self.bias}."
            )

    def features(self, x: Tensor, conv_weight: Union[Tensor, nn.Module]) -> Tensor:
        """``B = ReLU(conv(x, W) + b)``: ``(N, V, H', W')`` float64 for a given weight."""
        w, b = self.conv_parameters(conv_weight)
        return F.relu(F.conv2d(self.input_batch(x), w, b))

    def head_inputs(self, b: Tensor) -> Tensor:
        """The visible values the head reads, ``(N, V, visible_rows, W' // s)``: ``b``'s top rows,
        max-pooled first when ``pool_size > 1``."""
        pooled = F.max_pool2d(b, self.pool_size) if self.pool_size > 1 else b
        return pooled[:, :, : self.visible_rows]

    def gradient_support(self, b: Tensor) -> Tensor:
        """Float ``(N, V, H', W')``: 1 where ``dy/dB_v(p)`` can be non-zero, else 0.

        Without pooling: the visible rows.  With pooling: the argmax (as chosen by
        ``torch.nn.functional.max_pool2d``) of every visible pooling window, per channel.
        """
        if self.pool_size == 1:
            vis = (~self.masked_mask).to(b.dtype)
            return vis.expand_as(b).clone()
        _, idx = F.max_pool2d(b, self.pool_size, return_indices=True)
        idx = idx[:, :, : self.visible_rows].flatten(2)
        out = torch.zeros_like(b).flatten(2)
        out.scatter_(2, idx, 1.0)
        return out.view_as(b)

    def conditional_expected_map(
        self,
        x: Tensor,
        conv_weight: Union[Tensor, nn.Module],
        method: Union[str, type] = "gradcam",
        target: Union[int, str] = 0,
        n_outputs: int = 1,
    ) -> Tensor:
        """``E[CAM(p) | W]``: expectation over the head ``Theta`` only, for a fixed convolution.

        Parameters
        ----------
        x : Tensor
            ``(C, H, W)`` or ``(N, C, H, W)``.
        conv_weight : Tensor or nn.Module
            ``(V, C, k, k)``, or a model with a ``.conv`` (its bias is used when present).
        method : str or CAM class
            ``"gradcam"`` (``sigma_theta sqrt(|S|)/P sqrt(sum_v B_v(p)^2) / sqrt(2 pi)``),
            ``"xgradcam"``, ``"hirescam"`` or ``"layercam"``.
        target : int or ``"argmax"``
            A fixed logit (any index: the law is the same), or ``"argmax"``: the predicted class
            among ``n_outputs`` logits (Grad-CAM only; see the module documentation).
        n_outputs : int
            Number of logits ``K`` (used with ``target="argmax"``).

        Returns
        -------
        Tensor
            ``(N, 1, H', W')``, float64.
        """
        key = method_key(method)
        b = self.features(x, conv_weight)
        if target == "argmax":
            if key != "gradcam":
                raise ValueError(
                    f"target='argmax' has a conditional closed form for 'gradcam' only, not for "
                    f"{method!r}; use monte_carlo(..., target='argmax')."
                )
            return self._argmax_gradcam(b, check_n_outputs(n_outputs))[0]
        check_target(target)
        st = self.sigma_theta
        if key == "gradcam":
            coef = st * math.sqrt(self.n_visible) / self.n_positions / SQRT_2PI
            out = coef * b.pow(2).sum(1, keepdim=True).sqrt()
        elif key == "xgradcam":
            num = self.head_inputs(b).pow(2).flatten(2).sum(2)  # (N, V)
            den = b.flatten(2).sum(2).pow(2)
            r = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
            out = st * (b.pow(2) * r[:, :, None, None]).sum(1, keepdim=True).sqrt() / SQRT_2PI
        elif key == "hirescam":
            support = self.gradient_support(b)
            out = st * (b.pow(2) * support).sum(1, keepdim=True).sqrt() / SQRT_2PI
        elif key == "layercam":
            out = st / SQRT_2PI * (b * self.gradient_support(b)).sum(1, keepdim=True)
        else:
            raise ValueError(
                f"no conditional closed form for method {method!r}: use one of "
                f"{list(CONDITIONAL_METHODS)}."
            )
        return out

    def conditional_positive_probability(
        self,
        x: Tensor,
        conv_weight: Union[Tensor, nn.Module],
        target: Union[int, str] = 0,
        n_outputs: int = 1,
    ) -> Tensor:
        """``P(GradCAM(p) > 0 | W)`` for a fixed convolution: ``1/2`` wherever ``sum_v B_v(p)^2
        > 0`` with a fixed target, ``E[Phi(a_p M_K / r_p)]`` with ``target="argmax"``.

        Returns
        -------
        Tensor
            ``(N, 1, H', W')``, float64.
        """
        b = self.features(x, conv_weight)
        if target == "argmax":
            return self._argmax_gradcam(b, check_n_outputs(n_outputs))[1]
        check_target(target)
        active = (b.pow(2).sum(1, keepdim=True) > 0).to(b.dtype)
        return 0.5 * active * (1.0 if self.n_visible > 0 else 0.0)

    def argmax_gradcam_given_features(self, b: Tensor, n_outputs: int) -> Tuple[Tensor, Tensor]:
        """``(E[GradCAM | W], P(GradCAM > 0 | W))`` for the predicted-class target, from the CAM
        layer's values ``b`` ``(N, V, H', W')`` (one row per input or per sampled convolution).

        Returns
        -------
        (Tensor, Tensor)
            Both ``(N, 1, H', W')``, float64.
        """
        return self._argmax_gradcam(b.to(torch.float64), check_n_outputs(n_outputs))

    def _argmax_gradcam(self, b: Tensor, n_outputs: int) -> Tuple[Tensor, Tensor]:
        """``(E[GradCAM | W], P(GradCAM > 0 | W))`` for the predicted-class target."""
        hv = self.head_inputs(b)  # (N, V, r, w'')
        norm_b = hv.pow(2).flatten(1).sum(1).sqrt()  # (N,)
        dot = (b * hv.flatten(2).sum(2)[:, :, None, None]).sum(1, keepdim=True)  # <b, u_p>
        a = torch.where(norm_b[:, None, None, None] > 0,
                        dot / norm_b.clamp_min(1e-300)[:, None, None, None], torch.zeros_like(dot))
        u2 = self.n_visible * b.pow(2).sum(1, keepdim=True)
        r = (u2 - a.pow(2)).clamp_min(0).sqrt()
        nodes, weights = max_normal_quadrature(n_outputs)
        mu = a[..., None] * nodes  # (N, 1, H', W', G)
        rr = r[..., None].expand_as(mu)
        safe = rr > 0
        t = torch.where(safe, mu / rr.clamp_min(1e-300), torch.zeros_like(mu))
        phi = torch.exp(-0.5 * t * t) / SQRT_2PI
        cdf = 0.5 * torch.erfc(-t / math.sqrt(2.0))
        g = torch.where(safe, mu * cdf + rr * phi, mu.clamp_min(0))
        p_pos = torch.where(safe, cdf, (mu > 0).to(mu.dtype))
        scale = self.sigma_theta / self.n_positions if self.n_visible > 0 else 0.0
        return scale * (g * weights).sum(-1), (p_pos * weights).sum(-1) * (scale > 0)


def check_n_outputs(n_outputs: int) -> int:
    """``n_outputs`` as a validated int ``>= 1``."""
    if not isinstance(n_outputs, int) or isinstance(n_outputs, bool) or n_outputs < 1:
        raise ValueError(f"n_outputs must be a positive int, got {n_outputs!r}.")
    return n_outputs


def check_target(target: Union[int, str]) -> None:
    """Raise unless ``target`` is a non-negative int or ``"argmax"``."""
    if target == "argmax":
        return
    if not isinstance(target, int) or isinstance(target, bool) or target < 0:
        raise ValueError(f"target must be a non-negative int or 'argmax', got {target!r}.")


def max_normal_quadrature(n: int, points: int = 801) -> Tuple[Tensor, Tensor]:
    """Nodes and weights for ``E[f(M)]``, ``M`` the maximum of ``n`` i.i.d. standard normals.

    Trapezoidal rule on ``[-9, 9]`` (step 0.0225 by default: relative error about 1e-5 even for
    a kinked integrand such as a ReLU) of the density ``n phi(m) Phi(m)^(n-1)``, weights normalised to
    sum to 1 (float64).  ``n = 1`` is the standard normal itself.
    """
    check_n_outputs(n)
    m = torch.linspace(-9.0, 9.0, points, dtype=torch.float64)
    log_cdf = torch.log(0.5 * torch.erfc(-m / math.sqrt(2.0)))
    dens = n * torch.exp(-0.5 * m * m + (n - 1) * log_cdf) / SQRT_2PI
    w = dens * (m[1] - m[0])
    w[0] *= 0.5
    w[-1] *= 0.5
    return m, w / w.sum()
