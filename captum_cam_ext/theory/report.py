"""Theory vs Monte-Carlo over a sweep of the number of filters ``V`` and of the mask size."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from captum_cam_ext.attr.grad_cam import LayerGradCam
from captum_cam_ext.registry import method_kind, methods
from captum_cam_ext.theory.analyzer import GradCamAtInitAnalyzer
from captum_cam_ext.theory.closed_form import method_key
from captum_cam_ext.theory.masked_cnn import masked_cnn

__all__ = ["theory_sweep", "methods_at_init", "registered_cams", "sweep_markdown",
           "methods_markdown", "plot_sweep", "theory_report"]


def _default_input(c: int, h: int, w: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(c, h, w, generator=g)


def theory_sweep(
    n_filters: Sequence[int] = (1, 2, 4, 8, 16, 32),
    visible_rows: Sequence[int] = (2, 4, 6),
    in_channels: int = 1,
    height: int = 10,
    width: int = 10,
    kernel_size: int = 3,
    sigma_w: float = 0.7,
    sigma_theta: float = 1.3,
    n_samples: int = 20000,
    seed: int = 0,
    x: Optional[torch.Tensor] = None,
    pool_size: int = 1,
    argmax: bool = True,
    n_outputs: int = 10,
) -> List[Dict[str, Any]]:
    """Grad-CAM closed form vs Monte-Carlo (the package's ``LayerGradCam``) for each ``(V, rows)``,
    for a fixed target and for the predicted class.

    Parameters
    ----------
    n_filters, visible_rows : sequences of int
        The sweep.  ``visible_rows`` are rows of the grid the head reads (the conv grid of
        ``height - kernel_size + 1`` rows, or the pooled grid with ``pool_size > 1``).
    in_channels, height, width, kernel_size, sigma_w, sigma_theta, pool_size :
        The masked CNN (see :class:`GradCamAtInitAnalyzer`).
    n_samples, seed :
        Monte-Carlo draws per configuration and the seed.
    x : Tensor, optional
        ``(C, H, W)`` input; default uniform ``[0, 1)`` noise drawn from ``seed``.
    argmax : bool
        Also run the predicted-class target (``target="argmax"`` over ``n_outputs`` logits): its
        unconditional leak against the fixed-target closed form (there is no closed form over
        ``W`` for it), and its exact conditional law given one sampled convolution against a
        Monte-Carlo over heads with that convolution.
    n_outputs : int
        Number of logits for the predicted-class target.

    Returns
    -------
    list of dict
        One row per configuration: ``V``, ``visible_rows``, ``masked_rows`` (conv rows),
        ``leak_theory``, ``leak_mc``, ``leak_se``, ``leak_z``, ``max_abs_z`` (per position),
        ``p_pos_theory``, ``p_pos_mc`` (mean over masked positions), ``n_samples``; with
        ``argmax``: ``argmax_leak_mc``, ``argmax_leak_se``, ``argmax_ratio`` (MC leak / fixed-target
        closed form), ``argmax_p_pos_mc``, ``argmax_cond_leak_theory``, ``argmax_cond_leak_mc``,
        ``argmax_cond_leak_z``, ``argmax_cond_max_abs_z``.
    """
    if x is None:
        x = _default_input(in_channels, height, width, seed)
    rows = []
    for v in n_filters:
        for r in visible_rows:
            an = GradCamAtInitAnalyzer(in_channels, height, width, kernel_size, v, r,
                                       sigma_w, sigma_theta, pool_size=pool_size)
            row = _fixed_target_row(an, x, n_samples, seed + 1000 * v + r)
            if argmax:
                row.update(_argmax_row(an, x, n_samples, seed + 1000 * v + r + 500, n_outputs,
                                       row["leak_theory"]))
            rows.append(row)
    return rows


def _fixed_target_row(an: GradCamAtInitAnalyzer, x: torch.Tensor, n: int, seed: int
                      ) -> Dict[str, Any]:
    res = an.monte_carlo(x, n, seed=seed, method=LayerGradCam)
    m = an.masked_mask
    assert res.positive_probability is not None and res.z is not None
    return dict(
        V=an.n_filters,
        visible_rows=an.visible_rows,
        masked_rows=int(m[:, 0].sum()),
        leak_theory=res.leak_expected,
        leak_mc=res.leak_mean,
        leak_se=res.leak_stderr,
        leak_z=res.leak_z,
        max_abs_z=res.max_abs_z(),
        p_pos_theory=float(res.positive_probability[m].mean()) if m.any() else 0.0,
        p_pos_mc=float(res.positive_rate[m].mean()) if m.any() else 0.0,
        n_samples=n,
    )


def _argmax_row(an: GradCamAtInitAnalyzer, x: torch.Tensor, n: int, seed: int, n_outputs: int,
                fixed_theory: Optional[float]) -> Dict[str, Any]:
    m = an.masked_mask
    res = an.monte_carlo(x, n, seed=seed, method=LayerGradCam, target="argmax",
                         n_outputs=n_outputs)
    conv = masked_cnn(an.in_channels, an.height, an.width, an.kernel_size, an.n_filters,
                      an.visible_rows, bias=an.bias, sigma_w=an.sigma_w, pool_size=an.pool_size,
                      generator=torch.Generator().manual_seed(seed + 1))
    cond = an.monte_carlo(x, n, seed=seed + 2, method=LayerGradCam, target="argmax",
                          n_outputs=n_outputs, conv_weight=conv)
    ratio = res.leak_mean / fixed_theory if fixed_theory else None
    return dict(
        n_outputs=n_outputs,
        argmax_leak_mc=res.leak_mean,
        argmax_leak_se=res.leak_stderr,
        argmax_ratio=ratio,
        argmax_p_pos_mc=float(res.positive_rate[m].mean()) if m.any() else 0.0,
        argmax_cond_leak_theory=cond.leak_expected,
        argmax_cond_leak_mc=cond.leak_mean,
        argmax_cond_leak_z=cond.leak_z,
        argmax_cond_max_abs_z=cond.max_abs_z(),
    )


def registered_cams() -> List[type]:
    """Every CAM class in the method registry, in registration order.

    Importing :mod:`captum_cam_ext.attr` registers the package's own classes; classes registered
    later (:func:`captum_cam_ext.registry.register_method`) are included too.
    """
    import captum_cam_ext.attr  # noqa: F401  (importing it registers every CAM class of the package)

    return list(methods().values())


def methods_at_init(
    methods: Optional[Sequence[type]] = None,
    n_filters: int = 8,
    visible_rows: int = 4,
    in_channels: int = 1,
    height: int = 10,
    width: int = 10,
    kernel_size: int = 3,
    sigma_w: float = 0.7,
    sigma_theta: float = 1.3,
    n_samples: int = 20000,
    n_samples_perturbation: int = 2000,
    seed: int = 0,
    x: Optional[torch.Tensor] = None,
    cam_kwargs: Optional[Dict[str, Dict[str, Any]]] = None,
    skip_inapplicable: Optional[bool] = None,
) -> List[Dict[str, Any]]:
    """Monte-Carlo leak of every registered CAM class on one masked-CNN configuration.

    ``methods`` defaults to every class of the method registry (:func:`registered_cams`);
    Conceptor-CAM runs with ``negatives="channels"`` (the masked CNN has a single output, so there
    are no competitor classes).  ``cam_kwargs`` maps a method (canonical name, alias or class
    name) to extra constructor arguments.  Methods that are not of the ``"shared_pass"`` kind
    (perturbation and composite methods, see :func:`captum_cam_ext.registry.method_kind`) use
    ``n_samples_perturbation`` draws.  ``skip_inapplicable``: a method that does not apply to the
    masked CNN (it raises a ``ValueError`` / ``TypeError`` / ``NotImplementedError`` /
    ``RuntimeError`` while built or run, e.g. a method that needs an ``nn.Linear`` head, or
    Finer-CAM, which needs a class besides the target while the masked CNN has one output) gets a
    row with ``skipped`` (the reason) instead of numbers; default True when ``methods`` is None
    (every registered method), else False (the error is raised), as in
    :func:`captum_cam_ext.walls.model_audit.measure_leakage`.

    Returns
    -------
    list of dict
        ``method``, ``leak_mc``, ``leak_se``, ``leak_theory`` (or None), ``p_pos_mc`` (mean share
        of draws with a positive value on the masked rows), ``n_samples``; a skipped method's
        row has ``method``, ``skipped`` (exception type and first line of its message) and
        ``n_samples`` = 0.
    """
    skip = methods is None if skip_inapplicable is None else bool(skip_inapplicable)
    if methods is None:
        methods = registered_cams()
    kwargs = {"conceptor": {"negatives": "channels"}}
    kwargs.update({method_key(k): v for k, v in (cam_kwargs or {}).items()})
    if x is None:
        x = _default_input(in_channels, height, width, seed)
    an = GradCamAtInitAnalyzer(in_channels, height, width, kernel_size, n_filters, visible_rows,
                               sigma_w, sigma_theta)
    out = []
    for i, meth in enumerate(methods):
        n = n_samples if method_kind(meth) == "shared_pass" else n_samples_perturbation
        try:
            res = an.monte_carlo(x, n, seed=seed + 17 * i, method=meth,
                                 cam_kwargs=kwargs.get(method_key(meth)))
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
            if not skip:
                raise
            lines = str(exc).strip().splitlines()
            out.append(dict(method=meth.__name__, skipped=f"{type(exc).__name__}: "
                            f"{lines[0] if lines else ''}", n_samples=0))
            continue
        m = an.masked_mask
        out.append(dict(method=meth.__name__, leak_mc=res.leak_mean, leak_se=res.leak_stderr,
                        leak_theory=res.leak_expected, p_pos_mc=float(res.positive_rate[m].mean()),
                        n_samples=n))
    return out


def _f(v: Optional[float], nd: int = 4) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def sweep_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of :func:`theory_sweep` rows (predicted-class columns when present)."""
    argmax = bool(rows) and "argmax_leak_mc" in rows[0]
    head = ("| V | visible rows | masked rows | E[leak] theory | leak MC ± SE | z (leak) | max abs z "
            "(per position) | P(>0) theory | P(>0) MC |")
    rule = "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if argmax:
        head += (" argmax: leak MC ± SE | argmax / fixed theory | argmax: P(>0) MC | argmax given W: "
                 "theory vs MC (z, max abs z) |")
        rule += "---:|---:|---:|---:|"
    lines = [head, rule]
    for r in rows:
        line = (
            f"| {r['V']} | {r['visible_rows']} | {r['masked_rows']} | {_f(r['leak_theory'])} | "
            f"{_f(r['leak_mc'])} ± {_f(r['leak_se'])} | {_f(r['leak_z'], 2)} | "
            f"{_f(r['max_abs_z'], 2)} | {_f(r['p_pos_theory'])} | {_f(r['p_pos_mc'])} |"
        )
        if argmax:
            line += (
                f" {_f(r['argmax_leak_mc'])} ± {_f(r['argmax_leak_se'])} | "
                f"{_f(r['argmax_ratio'], 2)} | {_f(r['argmax_p_pos_mc'])} | "
                f"{_f(r['argmax_cond_leak_theory'])} vs {_f(r['argmax_cond_leak_mc'])} "
                f"({_f(r['argmax_cond_leak_z'], 2)}, {_f(r['argmax_cond_max_abs_z'], 2)}) |"
            )
        lines.append(line)
    return "\n".join(lines)


def methods_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    """Markdown table of :func:`methods_at_init` rows."""
    lines = ["| method | draws | leak MC ± SE | leak theory | P(>0) on masked rows, MC |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['method']} | - | not applicable: {r['skipped']} | - | - |")
            continue
        lines.append(f"| {r['method']} | {r['n_samples']} | {_f(r['leak_mc'])} ± "
                     f"{_f(r['leak_se'])} | {_f(r['leak_theory'])} | {_f(r['p_pos_mc'], 3)} |")
    return "\n".join(lines)


def plot_sweep(rows: Sequence[Dict[str, Any]]) -> Any:
    """Matplotlib figure: expected leak and ``P(>0)`` vs ``V``, theory (lines) vs MC (points).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for r_vis in sorted({r["visible_rows"] for r in rows}):
        sub = sorted((r for r in rows if r["visible_rows"] == r_vis), key=lambda r: r["V"])
        vs = [r["V"] for r in sub]
        line = ax1.plot(vs, [r["leak_theory"] for r in sub], "-",
                        label=f"theory, {r_vis} visible / {sub[0]['masked_rows']} masked rows")
        ax1.errorbar(vs, [r["leak_mc"] for r in sub], yerr=[2 * r["leak_se"] for r in sub],
                     fmt="o", color=line[0].get_color(), ms=4, capsize=2)
        ax2.plot(vs, [r["p_pos_theory"] for r in sub], "-", color=line[0].get_color())
        ax2.plot(vs, [r["p_pos_mc"] for r in sub], "o", color=line[0].get_color(), ms=4)
        if "argmax_leak_mc" in sub[0]:
            ax1.errorbar(vs, [r["argmax_leak_mc"] for r in sub],
                         yerr=[2 * r["argmax_leak_se"] for r in sub], fmt="^",
                         color=line[0].get_color(), ms=4, capsize=2, mfc="none")
            ax2.plot(vs, [r["argmax_p_pos_mc"] for r in sub], "^", color=line[0].get_color(),
                     ms=4, mfc="none")
    argmax = bool(rows) and "argmax_leak_mc" in rows[0]
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of filters V")
    ax1.set_ylabel("expected Grad-CAM mass on the masked rows")
    ax1.set_title("leak: closed form (lines) vs Monte-Carlo ±2 SE (points)"
                  + ("\ntriangles: predicted-class target (Monte-Carlo)" if argmax else ""),
                  fontsize=9)
    ax2.set_ylabel("P(Grad-CAM(p) > 0), masked p")
    ax2.set_title("(1 - 2^-V)/2 (lines) vs Monte-Carlo (points)"
                  + ("\ntriangles: predicted-class target" if argmax else ""), fontsize=9)
    ax1.legend(fontsize=7)
    fig.tight_layout()
    return fig


def theory_report(**sweep_kwargs: Any) -> Tuple[str, Any]:
    """Run :func:`theory_sweep` and return ``(markdown_table, matplotlib_figure)``."""
    rows = theory_sweep(**sweep_kwargs)
    return sweep_markdown(rows), plot_sweep(rows)
