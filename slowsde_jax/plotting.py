"""Every figure of the package: observables over SDE time, discrete clouds against the slow SDE, weak errors.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``): no pyplot, and the
backend is never switched, so a notebook's inline backend keeps working. Every function returns the Figure
(a notebook displays it as the cell's value) and, given ``path``, also writes it there.

Public: ``plot_observables``, ``plot_cloud``, ``plot_weak_error``, ``plot_sweep``,
``label`` (readable names of observables).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Optional, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike

from ._io import atomic_write
from .comparison import describe_order
from .sharpness import MEASURE_LABELS
from .trajectory import Trajectory

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: A file path to write a figure to (None: do not write).
PathLike = Union[None, str, os.PathLike]

__all__ = ["plot_observables", "plot_cloud", "plot_weak_error", "plot_sweep", "plot_slow_flow", "label",
           "LOSS_NAMES", "BAND_LABEL", "T_LABEL"]

T_LABEL = "SDE time t = kη²"
BAND_LABEL = "10–90 % of paths"
#: Observables that the CLI draws on a log scale (losses and errors span decades).
LOSS_NAMES = ("loss", "train_loss", "test_loss", "test_error")

_LABELS = {**MEASURE_LABELS, "test_loss": "test loss", "train_loss": "train loss", "test_error": "test error",
           "loss": "loss", "w_error": "‖w − w*‖"}
_NOISES = {"LabelNoise": "label noise", "Minibatch": "minibatch noise", "Gaussian": "Gaussian noise"}


def label(name: str) -> str:
    """A readable label for an observable name: ``trace_H`` -> "tr H", ``test_loss`` -> "test loss"."""
    return _LABELS.get(name, name.replace("_", " "))


def mathtext(text: str) -> str:
    """``text`` for a figure: powers written H^{1/2} become matplotlib mathtext, $H^{1/2}$, so that a title
    shows a superscript instead of the braces."""
    return re.sub(r"H\^\{([^}]*)\}", r"$H^{\1}$", text)


def _words(name) -> str:
    """``DiagonalNet`` -> "diagonal net"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", str(name)).lower()


def _figure(nrows=1, ncols=1, figsize=(6.0, 3.8)):
    """A Figure (no pyplot, no backend) with a grid of axes, shape (nrows, ncols)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _finish(fig, path, dpi=110):
    if path is not None:  # written atomically, like every file of the library (the suffix names the format)
        atomic_write(Path(path), lambda p: fig.savefig(p, dpi=dpi))
    return fig


def _common(trajs, key):
    vals = {tr.meta.get(key) for tr in trajs}
    return vals.pop() if len(vals) == 1 else None


def _title(trajs, extra=()) -> str:
    """"problem · noise · η = ..." from what every trajectory's meta agrees on."""
    parts = []
    prob, noise, eta = _common(trajs, "problem"), _common(trajs, "noise"), _common(trajs, "eta")
    if prob:
        parts.append(_words(prob))
    if noise:
        parts.append(_NOISES.get(noise, _words(noise)))
    parts += [e for e in extra if e]
    if eta is not None:
        parts.append(f"η = {float(eta):g}")
    return ", ".join(parts)


def _band(ax, x, y, color, band_label=None, alpha=0.2):
    """Shade the 10-90% quantiles of ``y`` (n_paths, n_t) when they differ (never for one path or an ODE).
    Returns whether a band was drawn."""
    if y.shape[0] < 2:
        return False
    lo, hi = np.quantile(y, 0.1, axis=0), np.quantile(y, 0.9, axis=0)
    scale = np.nanmax(np.abs(y)) if np.isfinite(y).any() else 0.0
    if not np.nanmax(hi - lo) > 1e-12 * max(scale, 1e-300):
        return False
    ax.fill_between(x, lo, hi, color=color, alpha=alpha, lw=0, label=band_label)
    return True


def _use_log(log_y, name) -> bool:
    return bool(log_y) if isinstance(log_y, bool) else name in set(log_y)


LOG_DECADES = 12  # a log panel shows at most this many decades below its top
LINEAR_SPAN = 1.5  # a panel asked to be logarithmic stays linear when its values span less than this factor


def _log_axis(ax) -> str:
    """Put ``ax`` on a log scale, after its lines and bands are drawn; returns a note for its title.

    Values at or below the floor 10^-LOG_DECADES x top (zeros and negatives included, which a log axis would
    drop and so break the line into gaps) are drawn at the floor, marked by a dotted line. A panel whose
    values are positive and span less than a factor LINEAR_SPAN (a quantity that moves by a few percent)
    keeps its linear axis, where the motion is visible."""
    lines = [ln for ln in ax.lines if ln.get_gid() != "floor"]
    bands = [v for c in ax.collections for path in c.get_paths() for v in [path.vertices]]
    ys = [np.asarray(ln.get_ydata(), float) for ln in lines] + [v[:, 1] for v in bands]
    values = np.concatenate([y[np.isfinite(y)] for y in ys]) if ys else np.zeros(0)
    positive = values[values > 0]
    if positive.size == 0:
        return ""
    top = positive.max()
    if positive.size == values.size and top <= LINEAR_SPAN * positive.min():
        return ""
    floor = 10.0 ** -LOG_DECADES * top
    note = ""
    if np.any(values <= floor):
        for ln in lines:
            ln.set_ydata(np.maximum(np.asarray(ln.get_ydata(), float), floor))
        for v in bands:
            v[:, 1] = np.maximum(v[:, 1], floor)
        ax.axhline(floor, ls=":", color="0.4", lw=1, gid="floor")
        power = str(LOG_DECADES).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
        note = f" (dotted: at or below 10⁻{power} × top)"
    ax.set_yscale("log")
    return note


def plot_observables(trajs: dict, path: PathLike = None, names: Optional[Sequence[str]] = None,
                     log_y: Union[bool, Collection[str]] = False) -> "Figure":
    """One panel per observable over SDE time t = kη²: the mean over surviving paths and, when paths differ,
    their 10-90% quantile band; one line per run (and per grid point of a sweep), labelled with η.

    ``trajs``: run name -> Trajectory or list of them. ``log_y``: False (default, linear axes), True (all
    panels logarithmic) or a collection of observable names to draw on a log scale (e.g. ``LOSS_NAMES``).
    ``path``: write the figure there as well. Returns the Figure."""
    from matplotlib.patches import Patch

    trajs = {k: (v if isinstance(v, list) else [v]) for k, v in trajs.items()}
    every = [tr for items in trajs.values() for tr in items]
    names = names or sorted({n for tr in every for n in tr.observables})
    one_eta = _common(every, "eta") is not None
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = _figure(rows, cols, figsize=(4.6 * cols, 3.4 * rows + 0.6))
    handles, banded = {}, False
    run_colors = {}
    for run, items in trajs.items():
        for i, tr in enumerate(items):
            hyp = {k: v for k, v in (tr.meta.get("hypers") or {}).items() if k != "eta" and len(items) > 1}
            lab = run + (f" ({tr.meta['method']})" if tr.meta.get("method") not in (None, run) else "")
            if tr.meta.get("eta") is not None and not one_eta:
                lab += f", η = {float(tr.meta['eta']):g}"
            if hyp:
                lab += ", " + ", ".join(f"{k} = {v:g}" for k, v in hyp.items())
            run_colors[(run, i)] = (f"C{len(run_colors) % 10}", lab)
    for ax, name in zip(axes.flat, names):
        for run, items in trajs.items():
            for i, tr in enumerate(items):
                if name not in tr.observables:
                    continue
                y = tr.observables[name][~tr.diverged]
                if y.shape[0] == 0:
                    continue
                color, lab = run_colors[(run, i)]
                line, = ax.plot(tr.t, y.mean(0), color=color, label=lab)
                handles.setdefault(lab, line)
                banded |= _band(ax, tr.t, y, color)
        note = _log_axis(ax) if _use_log(log_y, name) else ""
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.set_title(mathtext(label(name) + note))
        ax.set_xlabel(T_LABEL)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    legend = list(handles.values()) + ([Patch(color="0.5", alpha=0.3, label=f"shaded: {BAND_LABEL}")] if banded else [])
    fig.legend(handles=legend, loc="outside lower center", ncols=min(4, len(legend)), fontsize=8)
    title = _title(every)
    fig.suptitle(title + (", " if title else "") + "mean over paths")
    return _finish(fig, path)


def plot_cloud(discrete: Trajectory, continuous: Trajectory, observable: str, path: PathLike = None,
               n_lines: int = 40, log_y: bool = False) -> "Figure":
    """Up to ``n_lines`` discrete paths, their mean, and the slow SDE's mean and 10-90% band (no band for an
    ODE or a single path), on the SDE clock. ``log_y``: logarithmic y axis (default False). Returns the Figure."""
    fig, ax = _figure(figsize=(6.4, 4.0))
    ax = ax[0, 0]
    x = discrete.observables[observable][~discrete.diverged]
    eta = discrete.meta.get("eta")
    for row in x[:n_lines]:
        ax.plot(discrete.t, row, color="tab:blue", alpha=0.15, lw=0.8)
    shown = min(n_lines, x.shape[0])
    ax.plot(discrete.t, x.mean(0), color="tab:blue", lw=2,
            label=f"discrete{', η = %g' % float(eta) if eta is not None else ''}: mean of {x.shape[0]} paths"
                  f" (thin lines: {shown} paths)")
    y = continuous.observables[observable][~continuous.diverged]
    kind = "ODE" if continuous.meta.get("engine") == "label_noise_ode" else "SDE"
    ax.plot(continuous.t, y.mean(0), "--", color="k", lw=2, label=f"slow {kind}: mean")
    _band(ax, continuous.t, y, "k", band_label=f"slow {kind}: {BAND_LABEL}", alpha=0.15)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel(mathtext(label(observable)))
    ax.set_title(mathtext(_title([discrete], extra=[discrete.meta.get("method")]) or label(observable)), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, path, dpi=120)


def plot_weak_error(etas: ArrayLike, err: ArrayLike, se: ArrayLike, order: Optional[float], const: Optional[float],
                    observable: str, path: PathLike = None, *, method: Optional[str] = None, T: Optional[float] = None,
                    resolved: Optional[ArrayLike] = None, order_se: Optional[float] = None,
                    unresolved: Optional[Sequence[Optional[str]]] = None) -> "Figure":
    """Log-log weak error at time T against η with ±2 s.e. bars, a slope-1 reference line and, when the order
    is resolved, the fitted line through the resolved points only (those whose error exceeds 2 s.e.).

    ``order``/``const``: the fit (None when not resolved: the plot then says so). ``resolved``: per-η
    booleans (default: error > 2 s.e.). ``method``, ``T``: shown in the title. ``order_se``: the fit's
    standard error, shown with the order. ``unresolved``: per-η None, "noise" or "rounding" (``weak_order``),
    for the note shown when the order is not resolved. Returns the Figure."""
    etas, err, se = np.asarray(etas, float), np.asarray(err, float), np.asarray(se, float)
    resolved = err > 2 * se if resolved is None else np.asarray(resolved, bool)
    fig, ax = _figure(figsize=(5.2, 3.9))
    ax = ax[0, 0]
    if resolved.any():
        ax.errorbar(etas[resolved], err[resolved], yerr=2 * se[resolved], fmt="o", capsize=3, color="C0",
                    label="weak error (±2 s.e.)")
    if (~resolved).any():
        ax.errorbar(etas[~resolved], err[~resolved], yerr=2 * se[~resolved], fmt="o", mfc="none", capsize=3,
                    color="C7", label="not resolved (noise or rounding)")
    grid = np.geomspace(etas.min(), etas.max(), 50)
    pos = (err > 0) & (resolved if resolved.any() else True)  # anchor the reference on resolved points
    if pos.any():
        c1 = np.exp(np.mean(np.log(err[pos] / etas[pos])))
        ax.plot(grid, c1 * grid, ":", color="0.4", label="slope 1 (reference)")
    if order is not None and const is not None and resolved.sum() >= 2:
        g = np.geomspace(etas[resolved].min(), etas[resolved].max(), 50)
        pm = f" ± {order_se:.2f}" if order_se is not None else ""
        ax.plot(g, const * g**order, "--", color="C1", label=f"fit: order {order:.2f}{pm} (resolved points)")
    else:
        note = describe_order({"order_resolved": False, "unresolved": list(unresolved or [])})
        ax.text(0.03, 0.95, note, transform=ax.transAxes, va="top", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(etas, [f"{e:g}" for e in etas])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("learning rate η")
    lab = label(observable)
    ax.set_ylabel(mathtext(f"|E {lab} (discrete) − E {lab} (SDE)|"))
    head = f"weak error of {lab}" + (f", {method}" if method else "") + (f", T = {float(T):g}" if T is not None else "")
    ax.set_title(mathtext(head), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _finish(fig, path)


def plot_sweep(result: dict, observable: Optional[str] = None, path: PathLike = None) -> "Figure":
    """The weak-error plot of an ``slowsde_jax.eta_sweep`` result for one observable (default: the first)."""
    observable = observable or next(iter(result["observables"]))
    r = result["observables"][observable]
    return plot_weak_error(result["etas"], r["weak_error"], r["se"], r["order"], r["constant"], observable, path,
                           method=result.get("method"), T=result.get("T"), resolved=r.get("resolved"),
                           order_se=r.get("order_se"), unresolved=r.get("unresolved"))


def plot_slow_flow(view: dict, summary: dict, path: PathLike = None) -> "Figure":
    """The showcase figure of ``slowsde run``: every run seen on the minimizer manifold (its iterates mapped
    to Phi_S(theta); solid: mean over paths, shaded: 10-90 % of paths) against its slow flow started from
    the same states (dashed), on the one clock t = kη². One panel for the loss and one per sharpness measure
    that a run's slow flow reduces (titled with the methods it belongs to).

    ``view``: run name -> {"projected": Trajectory, "slow_ode": Trajectory or absent}, as returned by
    ``slowsde_jax.observables.theory_view``; ``summary``: its ``theory_summary``
    (which measure belongs to which run). Returns the Figure."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    first = next(iter(view.values()))["projected"]
    loss = next((k for k in ("test_loss", "test_error", "loss", "train_loss") if k in first.observables), None)
    measures = []
    for r in summary.values():
        if (r["measure"], r["label"]) not in measures:
            measures.append((r["measure"], r["label"]))
    panels = ([(loss, label(loss) + " at Φ_S(θ)", True)] if loss else []) + [
        (m, f"{lab} at Φ_S(θ): reduced by " + ", ".join(n for n, r in summary.items() if r["measure"] == m), False)
        for m, lab in measures]
    fig, axes = _figure(1, len(panels), figsize=(4.8 * len(panels), 3.9))
    handles = []
    for i, (name, entry) in enumerate(view.items()):
        color = f"C{i % 10}"
        proj, ode = entry["projected"], entry.get("slow_ode")
        eta = proj.meta.get("eta")
        method = proj.meta.get("method")
        tag = name + (f" ({method})" if method and method != name else "")
        handles.append(Line2D([], [], color=color, label=f"{tag}, η = {float(eta):g}: discrete at Φ_S(θ)"))
        if ode is not None:
            handles.append(Line2D([], [], color=color, ls="--", lw=2, label=f"{tag}: slow ODE from the same states"))
        for ax, (obs, _, _) in zip(axes.flat, panels):
            if obs not in proj.observables:
                continue
            y = proj.observables[obs][~proj.diverged]
            ax.plot(proj.t, y.mean(0), color=color, lw=1.5)
            _band(ax, proj.t, y, color, alpha=0.15)
            if ode is not None and obs in ode.observables:
                z = ode.observables[obs][~ode.diverged]
                if z.shape[0]:
                    ax.plot(ode.t, z.mean(0), "--", color=color, lw=2)
    for ax, (obs, title, log) in zip(axes.flat, panels):
        if log:
            title += _log_axis(ax)
        ax.set_title(mathtext(title), fontsize=9)
        ax.set_xlabel(T_LABEL)
        ax.grid(alpha=0.3)
    handles.append(Patch(color="0.5", alpha=0.3, label=f"shaded: {BAND_LABEL} (discrete)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(3, len(handles)), fontsize=8)
    every = [e["projected"] for e in view.values()]
    head = _title(every)
    fig.suptitle((head + ": " if head else "") + "each method on the manifold against its slow flow", fontsize=11)
    return _finish(fig, path)
