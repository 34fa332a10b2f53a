"""Monte-Carlo reference for CAM maps of the masked CNN at initialization.

Networks are sampled ``batch`` at a time as one :class:`~captum_cam_ext.theory.BatchedMaskedCNN`
and a CAM class of the package is run on them (so the estimate also tests the CAM code).  The
statistics (mean map, standard errors, positive rates, leaked mass) are accumulated in one pass;
where :mod:`captum_cam_ext.theory.closed_form` has a law for the method, it is attached with
z-scores.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from captum_cam_ext.attr.grad_cam import LayerGradCam

from .closed_form import (
    CLOSED_FORM_METHODS,
    CONDITIONAL_METHODS,
    MaskedCnnClosedForm,
    check_n_outputs,
    check_target,
    method_key,
)
from .masked_cnn import BatchedMaskedCNN

__all__ = ["MonteCarloResult", "sample_networks", "run_monte_carlo", "zscore"]

#: ``attribute`` arguments that :func:`run_monte_carlo` sets itself.
RESERVED_ATTRIBUTE_KWARGS = ("target", "relu_attributions", "additional_forward_args")


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


def zscore(mean: Tensor, expected: Tensor, se: Tensor) -> Tensor:
    """``(mean - expected) / se``, and 0 where ``se == 0`` and the deviation is rounding-size."""
    dev = mean - expected
    z = dev / se.clamp_min(1e-300)
    tiny = dev.abs() <= 1e-12 * (1.0 + expected.abs())
    return torch.where((se == 0) & tiny, torch.zeros_like(z), z)


def sample_networks(
    form: MaskedCnnClosedForm,
    n: int,
    generator: Optional[torch.Generator] = None,
    n_outputs: int = 1,
    conv_weight: Optional[Tensor] = None,
    conv_bias: Optional[Tensor] = None,
    hidden: Optional[int] = None,
) -> BatchedMaskedCNN:
    """``n`` independent networks of ``form``'s configuration at initialization (float32).

    The networks have ``form.pool_size`` (a max-pool before the head when ``> 1``).

    With ``conv_weight`` ``(V, C, k, k)`` (and ``conv_bias`` ``(V,)``) the convolution is fixed
    and only the head is drawn.  With ``hidden`` the head is ``Linear(V*r*W', hidden) -> ReLU ->
    Linear(hidden, n_outputs)`` (weights ``N(0, sigma_theta^2)``, biases 0).  Draw order: conv
    weights, conv biases, first head layer, second head layer.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}.")
    if hidden is not None and (not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"hidden must be None or a positive int, got {hidden!r}.")
    wh = form.head_grid[1]
    v, c, k = form.n_filters, form.in_channels, form.kernel_size
    b: Optional[Tensor]
    if conv_weight is None:
        w = torch.randn(n, v, c, k, k, generator=generator) * form.sigma_w
        b = torch.randn(n, v, generator=generator) * form.sigma_w if form.bias else None
    else:
        w = conv_weight.to(torch.float32).expand(n, v, c, k, k)
        b = None if conv_bias is None else conv_bias.to(torch.float32).expand(n, v)
    first = n_outputs if hidden is None else hidden
    th = torch.randn(n, first, v, form.visible_rows, wh, generator=generator) * form.sigma_theta
    out = None
    if hidden is not None:
        out = torch.randn(n, n_outputs, hidden, generator=generator) * form.sigma_theta
    return BatchedMaskedCNN(w, th, form.height, form.width, conv_bias=b, head_out=out,
                            pool_size=form.pool_size)


class MapMoments:
    """Running sums of per-draw maps: mean, standard error, positive rate, leaked and total mass.

    Parameters
    ----------
    masked : Tensor
        Boolean ``(H', W')``, True on the masked rows.
    """

    def __init__(self, masked: Tensor) -> None:
        self.masked = masked
        shape = tuple(masked.shape)
        self.s1 = torch.zeros(shape, dtype=torch.float64)
        self.s2 = torch.zeros(shape, dtype=torch.float64)
        self.npos = torch.zeros(shape, dtype=torch.float64)
        self.leak = [0.0, 0.0]
        self.total = [0.0, 0.0]
        self.n = 0
        self.n_nonfinite = 0

    def add(self, maps: Tensor) -> None:
        """Add draws ``(n, H', W')``; non-finite draws are counted and left out."""
        m = maps.detach().to(torch.float64)
        ok = torch.isfinite(m).flatten(1).all(1)
        if not bool(ok.all()):  # e.g. Ablation-CAM's 0/0 when the target score is 0
            self.n_nonfinite += int((~ok).sum())
            m = m[ok]
        self.s1 += m.sum(0)
        self.s2 += m.pow(2).sum(0)
        self.npos += (m > 0).to(torch.float64).sum(0)
        for acc, per_draw in ((self.leak, (m * self.masked).flatten(1).sum(1)),
                              (self.total, m.flatten(1).sum(1))):
            acc[0] += float(per_draw.sum())
            acc[1] += float(per_draw.pow(2).sum())
        self.n += int(m.shape[0])

    @staticmethod
    def _scalar(sums: Tuple[float, float], n: float) -> Tuple[float, float]:
        mean = sums[0] / n
        var = max((sums[1] - n * mean**2) / (n - 1), 0.0)
        return mean, math.sqrt(var / n)

    def result(self, method: str, n_samples: int) -> MonteCarloResult:
        """The statistics so far as a :class:`MonteCarloResult` (no closed form attached)."""
        n = float(self.n)
        if n < 2:
            raise ValueError(
                f"{method} gave non-finite maps on {self.n_nonfinite} of {n_samples} networks; "
                "fewer than 2 draws are left"
            )
        mean = self.s1 / n
        var = ((self.s2 - n * mean.pow(2)) / (n - 1)).clamp_min(0)
        leak_mean, leak_se = self._scalar((self.leak[0], self.leak[1]), n)
        tot_mean, tot_se = self._scalar((self.total[0], self.total[1]), n)
        return MonteCarloResult(
            method=method,
            n_samples=n_samples,
            mean=mean,
            stderr=(var / n).sqrt(),
            positive_rate=self.npos / n,
            leak_mean=leak_mean,
            leak_stderr=leak_se,
            extra={"n_nonfinite": self.n_nonfinite, "total_mean": tot_mean,
                   "total_stderr": tot_se},
        )


def _check_arguments(
    method: type,
    n_samples: int,
    batch: int,
    attribute_kwargs: Dict[str, Any],
    target: Union[int, str],
    n_outputs: int,
) -> None:
    check_target(target)
    check_n_outputs(n_outputs)
    if isinstance(target, int) and target >= n_outputs:
        raise ValueError(f"target={target} is not one of the n_outputs={n_outputs} logits.")
    if not isinstance(method, type):
        raise TypeError(f"method must be a CAM class, got {method!r}.")
    if not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an int >= 2, got {n_samples!r}.")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}.")
    for key in RESERVED_ATTRIBUTE_KWARGS:
        if key in attribute_kwargs:
            raise ValueError(f"attribute_kwargs may not set {key!r} (monte_carlo sets it).")


def _one_image(form: MaskedCnnClosedForm, x: Tensor) -> Tensor:
    xb = form.input_batch(x)
    if xb.shape[0] != 1:
        raise ValueError(
            f"monte_carlo takes one image, got a batch of shape {tuple(x.shape)}; call it "
            "once per image."
        )
    return xb


def _fixed_conv(
    form: MaskedCnnClosedForm, conv_weight: Optional[Union[Tensor, nn.Module]]
) -> Tuple[Optional[Tensor], Optional[Tensor]]:
    if conv_weight is None:
        return None, None
    w, b = form.conv_parameters(conv_weight)
    if (b is not None) != form.bias:
        raise ValueError(
            f"the given convolution has bias={b is not None} but the analyzer has "
            f"bias={form.bias}."
        )
    return w, b


def _chunk_maps(
    method: type,
    net: BatchedMaskedCNN,
    x32: Tensor,
    target: Union[int, str],
    cam_kwargs: Dict[str, Any],
    attribute_kwargs: Dict[str, Any],
) -> Tensor:
    """One chunk: the CAM of every network on the same image, ``(n, H', W')``."""
    n = net.n_networks
    cam = method(net, net.features, **cam_kwargs)
    inputs = x32.expand(n, -1, -1, -1).contiguous()
    tgt: Union[int, Tensor]
    if target == "argmax":
        with torch.no_grad():
            tgt = net(inputs).argmax(1)
    else:
        assert isinstance(target, int)
        tgt = target
    idx = (torch.arange(n),)
    if "relu_attributions" in inspect.signature(cam.attribute).parameters:
        maps = cam.attribute(inputs, target=tgt, relu_attributions=True,
                             additional_forward_args=idx, **attribute_kwargs)
    else:  # methods without the option (FullGrad, LeGrad): the same positive part
        maps = cam.attribute(inputs, target=tgt, additional_forward_args=idx,
                             **attribute_kwargs).clamp_min(0)
    if tuple(maps.shape[-2:]) != tuple(net.feature_size) or maps[0].numel() != maps.shape[-1] * maps.shape[-2]:
        raise ValueError(
            f"{method.__name__} gives maps of shape {tuple(maps.shape[1:])}, not one map on the CAM "
            f"layer's {net.feature_size[0]}x{net.feature_size[1]} grid"
        )
    return maps.detach().reshape(n, *net.feature_size)


def _attach_closed_form(
    res: MonteCarloResult,
    form: MaskedCnnClosedForm,
    xb: Tensor,
    key: str,
    fixed: Tuple[Optional[Tensor], Optional[Tensor]],
    target: Union[int, str],
    n_outputs: int,
) -> None:
    """Closed form, z-scores and leak z-score for the methods that have one."""
    fixed_w, fixed_b = fixed
    argmax = target == "argmax"
    pooled_local = form.pool_size > 1 and key in ("hirescam", "layercam")
    if fixed_w is not None and key in (("gradcam",) if argmax else CONDITIONAL_METHODS):
        conv = nn.Conv2d(form.in_channels, form.n_filters, form.kernel_size,
                         bias=fixed_b is not None).double()
        with torch.no_grad():
            conv.weight.copy_(fixed_w)
            if fixed_b is not None:
                assert conv.bias is not None
                conv.bias.copy_(fixed_b)
        exp = form.conditional_expected_map(xb, conv, key, target, n_outputs)[0, 0]
        if key == "gradcam":
            res.positive_probability = form.conditional_positive_probability(
                xb, conv, target, n_outputs)[0, 0]
        leak_expected = float((exp * form.masked_mask).sum())
    elif fixed_w is None and not argmax and not pooled_local and key in CLOSED_FORM_METHODS:
        exp = form.expected_map(xb, key)[0, 0]
        res.positive_probability = form.positive_probability(xb, key)[0, 0]
        leak_expected = float(form.expected_leak(xb, key)[0])
    else:
        return
    res.expected = exp
    res.z = zscore(res.mean, exp, res.stderr)
    res.leak_expected = leak_expected
    res.leak_z = float(zscore(torch.tensor(res.leak_mean), torch.tensor(leak_expected),
                              torch.tensor(res.leak_stderr)))
    tot_exp = float(exp.sum())
    res.extra["total_expected"] = tot_exp
    res.extra["total_z"] = float(zscore(torch.tensor(res.extra["total_mean"]),
                                        torch.tensor(tot_exp),
                                        torch.tensor(res.extra["total_stderr"])))


def run_monte_carlo(
    form: MaskedCnnClosedForm,
    x: Tensor,
    n_samples: int = 20000,
    seed: int = 0,
    method: Optional[type] = None,
    batch: int = 4096,
    cam_kwargs: Optional[Dict[str, Any]] = None,
    attribute_kwargs: Optional[Dict[str, Any]] = None,
    conv_weight: Optional[Union[Tensor, nn.Module]] = None,
    hidden: Optional[int] = None,
    target: Union[int, str] = 0,
    n_outputs: Optional[int] = None,
) -> MonteCarloResult:
    """Run a CAM class of this package on ``n_samples`` networks sampled at initialization.

    See :meth:`captum_cam_ext.theory.GradCamAtInitAnalyzer.monte_carlo` for the parameters.
    """
    method = LayerGradCam if method is None else method
    akw = dict(attribute_kwargs or {})
    if n_outputs is None:
        n_outputs = 10 if target == "argmax" else 1
    _check_arguments(method, n_samples, batch, akw, target, n_outputs)
    xb = _one_image(form, x)
    fixed = _fixed_conv(form, conv_weight)
    gen = torch.Generator().manual_seed(int(seed))
    moments = MapMoments(form.masked_mask)
    done = 0
    while done < n_samples:
        n = min(batch, n_samples - done)
        net = sample_networks(form, n, gen, n_outputs=n_outputs, conv_weight=fixed[0],
                              conv_bias=fixed[1], hidden=hidden)
        moments.add(_chunk_maps(method, net, xb.to(torch.float32), target,
                                dict(cam_kwargs or {}), akw))
        done += n
    res = moments.result(method.__name__, n_samples)
    res.extra.update(target=target, n_outputs=n_outputs, pool_size=form.pool_size)
    if hidden is not None:
        res.extra["hidden"] = hidden
    else:
        _attach_closed_form(res, form, xb, method_key(method), fixed, target, n_outputs)
    return res

