"""Plots of Trajectories (matplotlib, no display needed)."""
from __future__ import annotations

import math

import numpy as np


def _axis(trajs):
    """Plot over SDE time when every run shares one eta, else over steps (clocks would not line up)."""
    etas = {tr.meta.get("eta") for items in trajs.values() for tr in items}
    return ("t", "SDE time t = k eta^2") if len(etas) == 1 else ("step", "step k")


def plot_observables(trajs: dict, path=None, names=None):
    """One panel per observable: mean over surviving paths with a 10-90% quantile band, one line per run
    (and per grid point of a sweep). ``trajs``: run name -> Trajectory or list of them. Returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    trajs = {k: (v if isinstance(v, list) else [v]) for k, v in trajs.items()}
    names = names or sorted({n for items in trajs.values() for tr in items for n in tr.observables})
    axis, label = _axis(trajs)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for run, items in trajs.items():
            for tr in items:
                if name not in tr.observables:
                    continue
                x = tr.t if axis == "t" else np.asarray(tr.meta.get("record_steps", tr.t / tr.meta["eta"] ** 2))
                y = tr.observables[name][~tr.diverged]
                if y.shape[0] == 0:
                    continue
                hyp = {k: v for k, v in (tr.meta.get("hypers") or {}).items() if len(items) > 1}
                lab = run + ("" if not hyp else " " + ", ".join(f"{k}={v:g}" for k, v in hyp.items()))
                line, = ax.plot(x, y.mean(0), label=lab)
                if y.shape[0] > 1:
                    ax.fill_between(x, np.quantile(y, 0.1, axis=0), np.quantile(y, 0.9, axis=0), color=line.get_color(), alpha=0.2)
        ys = [tr.observables[name] for items in trajs.values() for tr in items if name in tr.observables]
        allv = np.concatenate([y.ravel() for y in ys]) if ys else np.array([1.0])
        allv = allv[np.isfinite(allv)]
        if allv.size and allv.min() > 0 and allv.max() / allv.min() > 100:
            ax.set_yscale("log")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        ax.set_title(name)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
