"""Discrete runs against the slow SDE on the same clock t = k eta^2: weak errors and eta-sweeps."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from . import geometry as geo
from .errors import ConfigError
from .problems import observe_batch
from .trajectory import Trajectory


def project_trajectory(traj: Trajectory, problem, method, tol=1e-10, max_steps=100_000, rank=None) -> Trajectory:
    """The discrete trajectory seen on Gamma: theta_k -> Phi_{S(v_k)}(theta_k) at every recorded time, with
    the problem's observables recomputed there (math §4: (theta_k, v_k) corresponds to (zeta(k eta^2), v)).
    Needs a trajectory recorded with ``record_state=True``. Diverged paths are left as they are.
    ``max_steps`` and ``rank``: see :func:`slowsde_jax.geometry.project`."""
    if traj.theta is None:
        raise ConfigError("record_state", "projecting a trajectory needs its recorded states (record_state=True)")
    P, T, D = traj.theta.shape
    theta = jnp.asarray(traj.theta.reshape(P * T, D))
    v = jnp.asarray(traj.v.reshape(P * T, D)) if traj.v is not None else jnp.zeros_like(theta)
    S = method.S(v)
    residuals, weights = problem.residual_parts()
    ok = np.repeat(~traj.diverged, T)
    zeta = np.array(theta)
    if ok.any():
        zeta[ok] = np.asarray(geo.project(problem.loss, theta[ok], S[ok], tol=tol, max_steps=max_steps,
                                          residuals=residuals, weights=weights, rank=rank))
    obs = observe_batch(problem, jnp.asarray(zeta))
    observables = {k: np.asarray(x).reshape(P, T) for k, x in obs.items()}
    return dataclasses.replace(traj, theta=zeta.reshape(P, T, D), observables=observables,
                               meta={**traj.meta, "projected": True})


@dataclasses.dataclass
class Comparison:
    """Weak errors per observable on the common time grid ``t`` (n_t,): ``mean_discrete``, ``mean_sde``, their
    standard errors, ``weak_error`` = |mean_discrete - mean_sde| and its standard error ``se``."""

    t: np.ndarray
    mean_discrete: dict
    mean_sde: dict
    se_discrete: dict
    se_sde: dict
    weak_error: dict
    se: dict

    def summary(self) -> dict:
        """JSON-ready: per observable, the weak error at the last time and its maximum over t."""
        return {k: {"final_weak_error": float(self.weak_error[k][-1]), "final_se": float(self.se[k][-1]),
                    "max_weak_error": float(np.max(self.weak_error[k])),
                    "final_mean_discrete": float(self.mean_discrete[k][-1]), "final_mean_sde": float(self.mean_sde[k][-1])}
                for k in self.weak_error}


def _mean_se(traj, name):
    x = traj.observables[name][~traj.diverged]
    se = x.std(axis=0, ddof=1) / np.sqrt(x.shape[0]) if x.shape[0] > 1 else np.zeros(x.shape[1])
    return x.mean(axis=0), se


def compare(discrete: Trajectory, continuous: Trajectory, observables=None) -> Comparison:
    """Weak errors |E g(discrete) - E g(SDE)| per recorded time for each observable g (default: all shared).

    Both trajectories must be recorded on the same times, up to one discrete step eta^2 (the discrete
    recording steps are round(t / eta^2)). Compare a projected discrete trajectory (see
    :func:`project_trajectory`, for quantities defined on Gamma)."""
    eta = discrete.meta.get("eta")
    atol = 1e-12 + (float(eta) ** 2 if eta else 0.0)  # a discrete clock is rounded to whole steps
    if discrete.t.shape != continuous.t.shape or not np.allclose(discrete.t, continuous.t, rtol=0, atol=atol):
        raise ConfigError("t", "the two trajectories are not recorded on the same times")
    names = observables or sorted(set(discrete.observables) & set(continuous.observables))
    out = {k: {} for k in ("mean_discrete", "mean_sde", "se_discrete", "se_sde", "weak_error", "se")}
    for n in names:
        for traj, tag in ((discrete, "discrete"), (continuous, "sde")):
            if n not in traj.observables:
                raise ConfigError("observables", f"'{n}' is not recorded by the {tag} trajectory")
        md, sd = _mean_se(discrete, n)
        ms, ss = _mean_se(continuous, n)
        out["mean_discrete"][n], out["se_discrete"][n] = md, sd
        out["mean_sde"][n], out["se_sde"][n] = ms, ss
        out["weak_error"][n], out["se"][n] = np.abs(md - ms), np.hypot(sd, ss)
    return Comparison(t=discrete.t, **out)


def fit_order(etas, errors):
    """Least-squares slope and intercept of log(error) against log(eta): error ~ C eta^order."""
    x, y = np.log(np.asarray(etas, float)), np.log(np.asarray(errors, float))
    order, logc = np.polyfit(x, y, 1)
    return float(order), float(np.exp(logc))


def eta_sweep(problem, noise, method, etas, T, n_paths, key, sde_traj, observables, project=True, plot_path=None,
              **discrete_kw):
    """Run the discrete method at every eta in ``etas`` (one compiled sweep, recorded on ``sde_traj``'s
    times), compare each with ``sde_traj``, and fit the order of the weak error at the final time in eta.

    ``observables``: a name or a list of names. ``plot_path``: a PNG path, or a format string with
    ``{name}`` for one log-log plot per observable. Returns a dict: ``etas``, ``observables`` (name ->
    ``weak_error``, ``se``, ``order``, ``constant``), ``comparisons`` and ``trajectories`` (one per eta)."""
    from .discrete import simulate_discrete

    names = [observables] if isinstance(observables, str) else list(observables)
    trajs = simulate_discrete(problem, noise, method, T=T, n_paths=n_paths, key=key, sweep={"eta": list(etas)},
                              n_record=sde_traj.t.size - 1, **discrete_kw)
    if project:
        trajs = [project_trajectory(tr, problem, method) for tr in trajs]
    comps = [compare(tr, sde_traj, names) for tr in trajs]
    per = {}
    for name in names:
        err = np.array([c.weak_error[name][-1] for c in comps])
        se = np.array([c.se[name][-1] for c in comps])
        order, const = fit_order(etas, err)
        per[name] = {"weak_error": err.tolist(), "se": se.tolist(), "order": order, "constant": const}
        if plot_path is not None:
            path = str(plot_path).format(name=name) if "{name}" in str(plot_path) else plot_path
            plot_weak_error(etas, err, se, order, const, name, path)
    return {"etas": list(map(float, etas)), "observables": per, "comparisons": comps, "trajectories": trajs}


def plot_cloud(discrete: Trajectory, continuous: Trajectory, observable, path=None, n_lines=40):
    """A discrete trajectory cloud (up to ``n_lines`` paths) and the SDE's mean and 10-90% band on the same
    axes (SDE time). Returns the figure."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    x = discrete.observables[observable][~discrete.diverged]
    for row in x[:n_lines]:
        ax.plot(discrete.t, row, color="tab:blue", alpha=0.15, lw=0.8)
    ax.plot(discrete.t, x.mean(0), color="tab:blue", lw=2, label=f"discrete {discrete.meta.get('method', '')}, "
            f"eta={discrete.meta.get('eta', 0):g}: paths and mean")
    y = continuous.observables[observable][~continuous.diverged]
    ax.plot(continuous.t, y.mean(0), "--", color="k", lw=2, label="slow SDE: mean")
    if y.shape[0] > 1:
        ax.fill_between(continuous.t, np.quantile(y, 0.1, 0), np.quantile(y, 0.9, 0), color="k", alpha=0.15,
                        label="slow SDE: 10-90% band")
    ax.set_xlabel("SDE time t = k eta^2")
    ax.set_ylabel(observable)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return fig


def plot_weak_error(etas, err, se, order, const, observable, path):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    etas = np.asarray(etas, float)
    fig, ax = plt.subplots(figsize=(4.8, 3.6))
    ax.errorbar(etas, err, yerr=2 * np.asarray(se), fmt="o", capsize=3, label="weak error (±2 s.e.)")
    grid = np.geomspace(etas.min(), etas.max(), 50)
    ax.plot(grid, const * grid**order, "--", label=f"fit: slope {order:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("learning rate eta")
    ax.set_ylabel(f"|E {observable}(discrete) - E {observable}(SDE)| at T")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
