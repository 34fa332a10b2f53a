"""Grad-CAM of the masked CNN at initialization: closed forms and a Monte-Carlo reference.

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
``||x_p||^2 + 1``.  Other methods (Grad-CAM++, Score-CAM, Ablation-CAM, Eigen-CAM, ...) have no
closed form here; :meth:`GradCamAtInitAnalyzer.monte_carlo` estimates them by running the package's
own CAM classes on thousands of sampled networks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masked_cnn import BatchedMaskedCNN, _check_config

__all__ = [
    "GradCamAtInitAnalyzer",
    "MonteCarloResult",
    "chi_mean_binomial",
    "CLOSED_FORM_METHODS",
]

_SQRT_2PI = math.sqrt(2.0 * math.pi)

#: CAM class name -> key of the closed form (unconditional expectation) this module knows.
CLOSED_FORM_METHODS: Dict[str, str] = {
    "LayerGradCam": "gradcam",
    "LayerHiResCam": "hirescam",
    "LayerCam": "layercam",
}
_CONDITIONAL_METHODS = ("gradcam", "hirescam", "layercam", "xgradcam")
_CLASS_TO_KEY = {**CLOSED_FORM_METHODS, "LayerXGradCam": "xgradcam"}
#: CAM classes whose maps come from masked forwards (the batch rows are expanded by the engine).
_PERTURBATION = ("LayerScoreCam", "LayerAblationCam")


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


def _method_key(method: Union[str, type]) -> str:
    if isinstance(method, str):
        key = method.lower().replace("-", "").replace("_", "")
        aliases = {"layergradcam": "gradcam", "layerhirescam": "hirescam", "layercam": "layercam",
                   "layerxgradcam": "xgradcam"}
        return aliases.get(key, key)
    return _CLASS_TO_KEY.get(method.__name__, method.__name__)


@dataclass
class MonteCarloResult:
    """Monte-Carlo estimate of a CAM map over networks sampled at initialization.

    Attributes
    ----------
    method : str
        CAM class name.
    n_samples : int
        Number of sampled networks (draws whose map is not finite, e.g. Ablation-CAM's ``0/0``
        when the target score is exactly 0, are left out and counted in
        ``extra["n_nonfinite"]``; the statistics use the others).
    mean, stderr : Tensor
        ``(H', W')`` mean map and its standard error (float64).
    positive_rate : Tensor
        ``(H', W')`` share of draws with a strictly positive map value.
    expected : Tensor or None
        ``(H', W')`` closed form, when the method has one (Grad-CAM, HiResCAM, LayerCAM).
    z : Tensor or None
        ``(mean - expected) / stderr`` (0 where both the error and the deviation are 0).
    leak_mean, leak_stderr : float
        Mean and standard error of the per-draw map mass on the masked rows ``M``.
    leak_expected, leak_z : float or None
        Closed-form leaked mass and its z-score.
    positive_probability : Tensor or None
        ``(H', W')`` closed-form ``P(map > 0)``.
    extra : dict
        ``n_nonfinite``; ``total_mean``, ``total_stderr`` (per-draw mass of the whole map) and,
        with a closed form, ``total_expected`` and ``total_z``.
    """

    method: str
    n_samples: int
    mean: Tensor
    stderr: Tensor
    positive_rate: Tensor
    leak_mean: float
    leak_stderr: float
    expected: Optional[Tensor] = None
    z: Optional[Tensor] = None
    leak_expected: Optional[float] = None
    leak_z: Optional[float] = None
    positive_probability: Optional[Tensor] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def max_abs_z(self) -> Optional[float]:
        """Largest ``|z|`` over positions (``None`` without a closed form)."""
        return None if self.z is None else float(self.z.abs().max())


class GradCamAtInitAnalyzer:
    """Closed forms and Monte-Carlo for CAM maps of the masked CNN at initialization.

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

    Examples
    --------
    >>> an = GradCamAtInitAnalyzer(1, 8, 8, 3, 5, 3, sigma_w=0.7, sigma_theta=1.3)
    >>> x = torch.ones(1, 8, 8)
    >>> an.expected_map(x).shape
    torch.Size([1, 1, 6, 6])
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
    ) -> None:
        hp, wp = _check_config(
            in_channels, height, width, kernel_size, n_filters, visible_rows, sigma_w, sigma_theta
        )
        self.in_channels, self.height, self.width = in_channels, height, width
        self.kernel_size, self.n_filters, self.visible_rows = kernel_size, n_filters, visible_rows
        self.sigma_w, self.sigma_theta, self.bias = float(sigma_w), float(sigma_theta), bool(bias)
        self.feature_size: Tuple[int, int] = (hp, wp)
        self.n_positions = hp * wp
        self.n_visible = visible_rows * wp

    # ------------------------------------------------------------------ helpers
    def __repr__(self) -> str:
        return (
            f"GradCamAtInitAnalyzer(C={self.in_channels}, H={self.height}, W={self.width}, "
            f"k={self.kernel_size}, V={self.n_filters}, visible_rows={self.visible_rows}, "
            f"sigma_w={self.sigma_w}, sigma_theta={self.sigma_theta}, bias={self.bias})"
        )

    @property
    def masked_mask(self) -> Tensor:
        """Boolean ``(H', W')``: True on the masked rows ``M``."""
        m = torch.zeros(self.feature_size, dtype=torch.bool)
        m[self.visible_rows :] = True
        return m

    def _as_batch(self, x: Tensor) -> Tensor:
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
        xb = self._as_batch(x)
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

    # ------------------------------------------------------------- closed forms
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
        key = _method_key(method)
        norms = self.patch_norms(x)
        sw, st, v = self.sigma_w, self.sigma_theta, self.n_filters
        if key == "gradcam":
            coef = st * math.sqrt(self.n_visible) / self.n_positions * sw * chi_mean_binomial(v)
            coef /= _SQRT_2PI
        elif key == "hirescam":
            coef = st * sw * chi_mean_binomial(v) / _SQRT_2PI
        elif key == "layercam":
            coef = v * st * sw / (2.0 * math.pi)
        else:
            raise ValueError(
                f"no unconditional closed form for method {method!r}: use one of 'gradcam', "
                "'hirescam', 'layercam' (or conditional_expected_map / monte_carlo)."
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
        key = _method_key(method)
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

    def _check_conv(self, conv_weight: Union[Tensor, nn.Module]) -> Tuple[Tensor, Optional[Tensor]]:
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
            got = (model.in_channels, model.height, model.width, model.visible_rows)
            exp = (self.in_channels, self.height, self.width, self.visible_rows)
            if got != exp:
                raise ValueError(
                    f"model input/visible rows (C, H, W, visible_rows) = {got} do not fit the "
                    f"analyzer's configuration {exp}."
                )
        if (conv.bias is not None) != self.bias:
            raise ValueError(
                f"model conv bias={conv.bias is not None} but the analyzer has bias={self.bias}."
            )

    def features(self, x: Tensor, conv_weight: Union[Tensor, nn.Module]) -> Tensor:
        """``B = ReLU(conv(x, W) + b)``: ``(N, V, H', W')`` float64 for a given weight."""
        w, b = self._check_conv(conv_weight)
        return F.relu(F.conv2d(self._as_batch(x), w, b))

    def conditional_expected_map(
        self,
        x: Tensor,
        conv_weight: Union[Tensor, nn.Module],
        method: Union[str, type] = "gradcam",
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

        Returns
        -------
        Tensor
            ``(N, 1, H', W')``, float64.
        """
        key = _method_key(method)
        b = self.features(x, conv_weight)
        st = self.sigma_theta
        vis = ~self.masked_mask
        if key == "gradcam":
            coef = st * math.sqrt(self.n_visible) / self.n_positions / _SQRT_2PI
            out = coef * b.pow(2).sum(1, keepdim=True).sqrt()
        elif key == "xgradcam":
            num = (b.pow(2) * vis.to(b.dtype)).flatten(2).sum(2)  # (N, V)
            den = b.flatten(2).sum(2).pow(2)
            r = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num))
            out = st * (b.pow(2) * r[:, :, None, None]).sum(1, keepdim=True).sqrt() / _SQRT_2PI
        elif key == "hirescam":
            out = st * b.pow(2).sum(1, keepdim=True).sqrt() / _SQRT_2PI * vis.to(b.dtype)
        elif key == "layercam":
            out = st / _SQRT_2PI * b.sum(1, keepdim=True) * vis.to(b.dtype)
        else:
            raise ValueError(
                f"no conditional closed form for method {method!r}: use one of "
                f"{list(_CONDITIONAL_METHODS)}."
            )
        return out

    # --------------------------------------------------------------- sampling
    def sample_networks(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        n_outputs: int = 1,
        conv_weight: Optional[Tensor] = None,
        conv_bias: Optional[Tensor] = None,
        hidden: Optional[int] = None,
    ) -> BatchedMaskedCNN:
        """``n`` independent networks at initialization, as one module (float32).

        With ``conv_weight`` ``(V, C, k, k)`` (and ``conv_bias`` ``(V,)``) the convolution is fixed
        and only the head is drawn (the setting of :meth:`conditional_expected_map`).  With
        ``hidden`` the head is ``Linear(V*r*W', hidden) -> ReLU -> Linear(hidden, n_outputs)``
        (weights ``N(0, sigma_theta^2)``, biases 0), as ``masked_cnn(..., hidden=hidden)``.
        """
        hp, wp = self.feature_size
        v, c, k = self.n_filters, self.in_channels, self.kernel_size
        b: Optional[Tensor]
        if conv_weight is None:
            w = torch.randn(n, v, c, k, k, generator=generator) * self.sigma_w
            b = torch.randn(n, v, generator=generator) * self.sigma_w if self.bias else None
        else:
            w = conv_weight.to(torch.float32).expand(n, v, c, k, k)
            b = None if conv_bias is None else conv_bias.to(torch.float32).expand(n, v)
        if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"hidden must be None or a positive int, got {hidden!r}.")
        first = n_outputs if hidden is None else hidden
        th = torch.randn(n, first, v, self.visible_rows, wp, generator=generator)
        th = th * self.sigma_theta
        out = None
        if hidden is not None:
            out = torch.randn(n, n_outputs, hidden, generator=generator) * self.sigma_theta
        return BatchedMaskedCNN(w, th, self.height, self.width, conv_bias=b, head_out=out)

    def monte_carlo(
        self,
        x: Tensor,
        n_samples: int = 20000,
        seed: int = 0,
        method: Optional[type] = None,
        batch: int = 4096,
        cam_kwargs: Optional[Dict[str, Any]] = None,
        attribute_kwargs: Optional[Dict[str, Any]] = None,
        conv_weight: Optional[Union[Tensor, nn.Module]] = None,
        hidden: Optional[int] = None,
    ) -> MonteCarloResult:
        """Run a CAM class of this package on ``n_samples`` networks sampled at initialization.

        Networks are drawn ``batch`` at a time as one :class:`BatchedMaskedCNN` and the CAM is
        called once per chunk with the image repeated (row ``i`` = network ``i``; the network index
        also travels as ``additional_forward_args`` so that perturbation methods, which expand the
        batch, keep each masked copy on its own network).

        Parameters
        ----------
        x : Tensor
            One image, ``(C, H, W)`` or ``(1, C, H, W)``.
        n_samples : int
            Number of networks.
        seed : int
            Seed of the draws.
        method : CAM class, optional
            ``captum_cam_ext.LayerGradCam`` (default) or any other CAM class of the package
            (constructor ``method(forward_func, layer, **cam_kwargs)``).  Always called with
            ``target=0`` and ``relu_attributions=True``.
        batch : int
            Networks per chunk.
        cam_kwargs, attribute_kwargs : dict, optional
            Extra arguments of the CAM constructor / of ``attribute``.
        conv_weight : Tensor or nn.Module, optional
            Fix the convolution (``(V, C, k, k)`` or a model with ``.conv``) and draw only the
            head: the estimate is then compared with :meth:`conditional_expected_map` (Grad-CAM,
            XGrad-CAM, HiResCAM, LayerCAM).
        hidden : int, optional
            Sample networks with a hidden dense layer (see :meth:`sample_networks`).  No closed
            form then (``expected``/``z`` are None); the wall still holds exactly.

        Returns
        -------
        MonteCarloResult
        """
        if method is None:
            from captum_cam_ext import LayerGradCam

            method = LayerGradCam
        if not isinstance(method, type):
            raise TypeError(f"method must be a CAM class, got {method!r}.")
        if not isinstance(n_samples, int) or n_samples < 2:
            raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}.")
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be a positive int, got {batch!r}.")
        xb = self._as_batch(x)
        if xb.shape[0] != 1:
            raise ValueError(
                f"monte_carlo takes one image, got a batch of shape {tuple(x.shape)}; call it "
                "once per image."
            )
        x32 = xb.to(torch.float32)
        fixed_w: Optional[Tensor] = None
        fixed_b: Optional[Tensor] = None
        if conv_weight is not None:
            fixed_w, fixed_b = self._check_conv(conv_weight)
            if (fixed_b is not None) != self.bias:
                raise ValueError(
                    f"the given convolution has bias={fixed_b is not None} but the analyzer has "
                    f"bias={self.bias}."
                )
        gen = torch.Generator().manual_seed(int(seed))
        hp, wp = self.feature_size
        s1 = torch.zeros(hp, wp, dtype=torch.float64)
        s2 = torch.zeros(hp, wp, dtype=torch.float64)
        npos = torch.zeros(hp, wp, dtype=torch.float64)
        l1 = l2 = t1 = t2 = 0.0
        n_bad = 0
        mask = self.masked_mask
        done = 0
        ckw = dict(cam_kwargs or {})
        akw = dict(attribute_kwargs or {})
        for key in ("target", "relu_attributions", "additional_forward_args"):
            if key in akw:
                raise ValueError(f"attribute_kwargs may not set {key!r} (monte_carlo sets it).")
        while done < n_samples:
            n = min(batch, n_samples - done)
            net = self.sample_networks(n, gen, conv_weight=fixed_w, conv_bias=fixed_b,
                                       hidden=hidden)
            cam = method(net, net.features, **ckw)
            inputs = x32.expand(n, -1, -1, -1).contiguous()
            idx = torch.arange(n)
            maps = cam.attribute(
                inputs, target=0, relu_attributions=True, additional_forward_args=(idx,), **akw
            )
            m = maps.detach().to(torch.float64).reshape(n, hp, wp)
            ok = torch.isfinite(m).flatten(1).all(1)
            if not bool(ok.all()):  # e.g. Ablation-CAM's 0/0 when the target score is 0
                n_bad += int((~ok).sum())
                m = m[ok]
            s1 += m.sum(0)
            s2 += m.pow(2).sum(0)
            npos += (m > 0).to(torch.float64).sum(0)
            leak = (m * mask).flatten(1).sum(1)
            l1 += float(leak.sum())
            l2 += float(leak.pow(2).sum())
            tot = m.flatten(1).sum(1)
            t1 += float(tot.sum())
            t2 += float(tot.pow(2).sum())
            done += n
        n_tot = float(n_samples - n_bad)
        if n_tot < 2:
            raise ValueError(
                f"{method.__name__} gave non-finite maps on {n_bad} of {n_samples} networks; "
                "fewer than 2 draws are left"
            )
        mean = s1 / n_tot
        var = ((s2 - n_tot * mean.pow(2)) / (n_tot - 1)).clamp_min(0)
        se = (var / n_tot).sqrt()
        leak_mean = l1 / n_tot
        leak_var = max((l2 - n_tot * leak_mean**2) / (n_tot - 1), 0.0)
        leak_se = math.sqrt(leak_var / n_tot)
        tot_mean = t1 / n_tot
        tot_se = math.sqrt(max((t2 - n_tot * tot_mean**2) / (n_tot - 1), 0.0) / n_tot)
        res = MonteCarloResult(
            method=method.__name__,
            n_samples=n_samples,
            mean=mean,
            stderr=se,
            positive_rate=npos / n_tot,
            leak_mean=leak_mean,
            leak_stderr=leak_se,
            extra={"n_nonfinite": n_bad, "total_mean": tot_mean, "total_stderr": tot_se},
        )
        key = _method_key(method)
        if hidden is not None:
            res.extra["hidden"] = hidden
        elif fixed_w is not None and key in _CONDITIONAL_METHODS:
            conv = nn.Conv2d(self.in_channels, self.n_filters, self.kernel_size,
                             bias=fixed_b is not None).double()
            with torch.no_grad():
                conv.weight.copy_(fixed_w)
                if fixed_b is not None:
                    assert conv.bias is not None
                    conv.bias.copy_(fixed_b)
            exp = self.conditional_expected_map(xb, conv, key)[0, 0]
            res.expected = exp
            res.z = _zscore(mean, exp, se)
            res.leak_expected = float((exp * mask).sum())
            res.leak_z = float(
                _zscore(torch.tensor(leak_mean), torch.tensor(res.leak_expected),
                        torch.tensor(leak_se))
            )
        elif fixed_w is None and key in ("gradcam", "hirescam", "layercam"):
            exp = self.expected_map(xb, key)[0, 0]
            res.expected = exp
            res.z = _zscore(mean, exp, se)
            res.positive_probability = self.positive_probability(xb, key)[0, 0]
            res.leak_expected = float(self.expected_leak(xb, key)[0])
            res.leak_z = float(
                _zscore(torch.tensor(leak_mean), torch.tensor(res.leak_expected),
                        torch.tensor(leak_se))
            )
        if res.expected is not None:
            tot_exp = float(res.expected.sum())
            res.extra["total_expected"] = tot_exp
            res.extra["total_z"] = float(
                _zscore(torch.tensor(tot_mean), torch.tensor(tot_exp), torch.tensor(tot_se))
            )
        return res


def _zscore(mean: Tensor, expected: Tensor, se: Tensor) -> Tensor:
    dev = mean - expected
    z = dev / se.clamp_min(1e-300)
    tiny = dev.abs() <= 1e-12 * (1.0 + expected.abs())
    return torch.where((se == 0) & tiny, torch.zeros_like(z), z)
