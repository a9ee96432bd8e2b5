"""The quantities the theory speaks about: each method's own sharpness, evaluated where the theory evaluates it.

The slow SDE lives on the minimizer manifold Gamma, so its statements concern zeta = Phi_S(theta), not the
raw iterate theta, which the gradient noise keeps jittering off Gamma (there the Hessian diagonal carries a
residual term, see ``slowsde_jax.problems.DiagonalNet.hessian_diag``). Under label noise the slow flow
decreases one sharpness measure per method; ``slowsde_jax.sharpness`` defines them and names each
method's own.

Public: ``on_gamma`` (a point of Gamma to start from), ``sharpness_values`` (a batch of parameters, any leading shape),
``at_projection`` (a Trajectory seen on Gamma, with every method's measure), ``slow_ode_from_records``
(the label-noise ODE started from a discrete run's recorded states, on the same clock).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpy.typing import ArrayLike

from . import geometry as geo
from .methods import AbstractMethod
from .noise import AbstractNoise
from .problems import AbstractProblem, observe_batch
from .sharpness import SHARPNESS_NAMES, own_sharpness, sharpness_batch
from .options import Execution, Recording, Start
from .slow_engine import simulate_slow_sde
from .trajectory import Trajectory, mean_se
from .validation import ConfigError, as_float_array, check_int, check_range

__all__ = ["on_gamma", "sharpness_values", "at_projection", "slow_ode_from_records", "theory_view",
           "theory_summary", "theory_table"]

def on_gamma(problem: AbstractProblem, theta: Any = None, *, tol: float = 1e-12, max_steps: int = 100) -> jax.Array:
    """A point of Gamma near ``theta``, to start both engines on the manifold (``Start(theta0=...)``).

    ``theta``: flat parameters (D,), a batch (..., D), or the problem's parameter pytree (as given to
    ``from_loss``); default ``problem.init(0)``. Returns flat points, shape (D,) or (..., D).

    - Least squares (``problem.least_squares()``): minimum-norm Gauss-Newton, theta <- theta - J_w^+ r_w with
      J_w = Diag(sqrt w) J, r_w = sqrt(w) r (masked samples impose nothing): the nearest point of Gamma to
      first order in the Euclidean metric, in a few steps, each one n x n solve.
    - Any other loss: Phi_I(theta), the limit of plain gradient flow (``geometry.project`` with S = I).

    Stops when a step moves theta by at most ``tol`` max(1, |theta|); raises ``ProjectionError`` when a
    point does not converge within ``max_steps`` steps (no minimizer nearby, or r cannot vanish)."""
    check_range("tol", tol, low=0.0, low_open=True)
    check_int("max_steps", max_steps, 1)
    D = problem.dim
    if theta is None:
        theta = problem.init(jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves(theta)
    if len(leaves) == 1 and np.ndim(leaves[0]) >= 1 and np.shape(leaves[0])[-1] == D:
        flat = as_float_array("theta", leaves[0], None)
    else:  # a parameter pytree: raveled as from_loss ravels params0
        try:
            flat = ravel_pytree(theta)[0]
        except Exception as e:  # noqa: BLE001  (anything that is not a pytree of arrays)
            raise ConfigError("theta", f"must be flat parameters (..., {D}) or the problem's parameter pytree: {e}") from None
        if flat.shape != (D,):
            raise ConfigError("theta", f"the parameters ravel to {flat.size} numbers; the problem has D = {D}")
    flat = jnp.asarray(flat, dtype=jnp.result_type(float))
    ls = problem.least_squares()
    if ls is None:
        return geo.project(problem.loss, flat, jnp.ones(D, flat.dtype), tol=max(tol, 1e-10), dim=D)
    x, ok = _gauss_newton_to_gamma(problem.loss, ls, flat.reshape(-1, D), tol, max_steps)
    if not np.all(np.asarray(ok)):
        raise geo.ProjectionError(f"minimum-norm Gauss-Newton did not reach Gamma within {max_steps} steps for "
                                  f"{int(np.sum(~np.asarray(ok)))} point(s) (no zero of the residuals nearby?)")
    return x.reshape(flat.shape)


@eqx.filter_jit
def _gauss_newton_to_gamma(loss, ls, theta, tol, max_steps):
    """Minimum-norm Gauss-Newton from each row of theta (N, D): (points (N, D), converged (N,))."""

    def one(x0):
        def unfinished(state):
            x, step, k = state
            return (step > tol * jnp.maximum(1.0, jnp.linalg.norm(x))) & (k < max_steps) & jnp.all(jnp.isfinite(x))

        def gauss_newton(state):
            x, _, k = state
            x_new = geo.newton_retraction_step(loss, x, jnp.ones_like(x), least_squares=ls)
            return x_new, jnp.linalg.norm(x_new - x), k + 1

        x, step, _ = jax.lax.while_loop(unfinished, gauss_newton, (x0, jnp.asarray(jnp.inf, x0.dtype), 0))
        return x, jnp.all(jnp.isfinite(x)) & (step <= tol * jnp.maximum(1.0, jnp.linalg.norm(x)))

    return jax.vmap(one)(theta)


def project_trajectory(traj: Trajectory, problem: AbstractProblem, method: AbstractMethod, tol: float = 1e-10,
                       max_steps: int = 100_000, rank: Optional[int] = None, *, sharpness: bool = False,
                       progress: Optional[bool] = None) -> Trajectory:
    """The discrete trajectory seen on Gamma: theta_k -> Phi_{S(v_k)}(theta_k) at every recorded time, with
    the problem's observables recomputed there, and the sharpness measures (``sharpness_values``) when
    ``sharpness`` or when ``traj`` recorded them at its states (docs/math.md#the-slow-sde: (theta_k, v_k) corresponds to (zeta(k eta^2), v)).
    Needs a trajectory recorded with ``record_state=True``. Diverged paths are left as they are.
    ``max_steps`` and ``rank``: see ``slowsde_jax.geometry.project``; ``progress``: a bar over the states
    (None: shown in a terminal or notebook; False: never)."""
    if traj.theta is None:
        raise ConfigError("record_state", "projecting a trajectory needs its recorded states (record_state=True)")
    P, T, D = traj.theta.shape
    method = method.for_problem(problem)
    theta = np.asarray(traj.theta.reshape(P * T, D))  # numpy: selecting the live rows compiles nothing
    v = jnp.asarray(traj.v.reshape(P * T, -1)) if traj.v is not None else jnp.zeros(theta.shape, theta.dtype)
    S = np.asarray(method.S(v) if method.diagonal_S else jax.vmap(method.S_operator)(v))  # (P T, D) or (P T, D, D)
    ok = np.repeat(~traj.diverged, T)
    zeta = np.array(theta)
    if ok.any():
        zeta[ok] = np.asarray(geo.project(problem.loss, theta[ok], S[ok], tol=tol, max_steps=max_steps,
                                          least_squares=problem.least_squares(), rank=rank, dim=problem.dim,
                                          progress=progress))
    obs = observe_batch(problem, jnp.asarray(zeta))
    observables = {k: np.asarray(x).reshape(P, T) for k, x in obs.items()}
    if sharpness or any(k in traj.observables for k in SHARPNESS_NAMES):  # recorded at the state: recomputed
        observables.update(sharpness_values(problem, zeta.reshape(P, T, D), method))
    return dataclasses.replace(traj, theta=zeta.reshape(P, T, D), observables=observables,
                               meta={**traj.meta, "projected": True})



def sharpness_values(problem: AbstractProblem, theta: ArrayLike, method: Optional[AbstractMethod] = None) -> dict[str, np.ndarray]:
    """tr H and tr(Diag H^{1/2}) at every point of ``theta`` (shape (..., D)), plus ``method``'s own measure
    when it is another one (tr(Diag H^{1-lam}) for AdamE-lam, the block sharpness for Adam-mini/Adalayer).

    Uses ``problem.hessian_diag`` (exact for the built-in problems). Returns name -> array of shape (...)."""
    theta = jnp.asarray(theta)
    if theta.ndim < 1 or theta.shape[-1] != problem.dim:
        raise ConfigError("theta", f"must have shape (..., {problem.dim}), got {tuple(theta.shape)}")
    flat = theta.reshape(-1, problem.dim)
    bound = None if method is None else method.for_problem(problem)
    out = sharpness_batch(problem, bound, flat)
    return {k: np.asarray(x).reshape(theta.shape[:-1]) for k, x in out.items()}


def at_projection(traj: Trajectory, problem: AbstractProblem, method: AbstractMethod, **project_kw: Any) -> Trajectory:
    """``traj`` seen on Gamma: every recorded theta_k replaced by Phi_{S(v_k)}(theta_k)
    (``project_trajectory``), its observables recomputed there, and the sharpness
    measures of ``sharpness_values`` (with ``method``'s own) added. Needs ``record_state=True``.
    ``meta["projected"]`` is True. ``project_kw``: ``tol``, ``max_steps``, ``rank`` of the projection,
    ``progress``."""
    return project_trajectory(traj, problem, method, sharpness=True, **project_kw)


def slow_ode_from_records(traj: Trajectory, problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod,
                          start: int = 0, **sde_kw: Any) -> Trajectory:
    """The slow flow started from each path of a discrete run: path i starts at (theta_i, v_i) recorded at
    ``traj.t[start]`` (projected onto Gamma by the engine) and is integrated up to ``traj.t[-1]``, recorded
    on the discrete run's times from ``start`` on. Returns one Trajectory with ``traj``'s paths (diverged
    discrete paths are skipped and marked diverged at their start), its times shifted to the discrete clock,
    and the sharpness measures, recorded by the engine (``Recording(sharpness=True)``).

    Under label noise this is the deterministic ODE, so the paths differ only by their starting points.
    ``sde_kw`` goes to ``slowsde_jax.simulate_slow_sde`` (``integrator``, ``execution``)."""
    if traj.theta is None:
        raise ConfigError("record_state", "starting the slow flow from a run needs its recorded states (record_state=True)")
    n_t = traj.t.size
    if not 0 <= start < n_t - 1:
        raise ConfigError("start", f"must be a record index in [0, {n_t - 2}], got {start}")
    t0, t1 = float(traj.t[start]), float(traj.t[-1])
    pieces, failed = [], []
    recording = dataclasses.replace(sde_kw.pop("recording", None) or Recording(), sharpness=True)
    for i in range(traj.n_paths):
        if traj.diverged[i]:
            failed.append(i)
            continue
        v0 = "equilibrium" if traj.v is None else traj.v[i, start]
        pieces.append((i, simulate_slow_sde(problem, noise, method, T=t1 - t0, n_record=n_t - 1 - start,
                                            eta=traj.meta.get("eta"), key=i,
                                            start=Start(theta0=traj.theta[i, start], v0=v0), recording=recording,
                                            **sde_kw)))
    if not pieces:
        raise ConfigError("paths", "every path of the discrete run diverged: there is no start for the slow flow")
    first = pieces[0][1]
    P, shape = traj.n_paths, first.t.shape
    obs = {k: np.full((P,) + shape, np.nan) for k in first.observables}
    theta = np.full((P,) + shape + (problem.dim,), np.nan)
    v = None if first.v is None else np.full((P,) + shape + first.v.shape[-1:], np.nan)  # (K,): Adafactor's v
    div = np.full(P, np.nan)
    reasons = []
    for i, tr in pieces:
        for k in obs:
            obs[k][i] = tr.observables[k][0]
        theta[i] = tr.theta[0]
        if v is not None:
            v[i] = tr.v[0]
        div[i] = tr.diverged_time[0] + t0 if tr.diverged[0] else np.nan
        reasons += [f"path {i}: {r.split(': ', 1)[-1]}" for r in (tr.meta.get("failure_reasons") or []) if r]
    div[failed] = t0
    meta = {**first.meta, "n_paths": P, "t_start": t0, "failure_reasons": reasons, "eta": traj.meta.get("eta"),
            "started_from": "discrete records"}
    out = Trajectory(t=first.t + t0, theta=theta, v=v, observables=obs, diverged_time=div, meta=meta)
    return out


def theory_view(trajs: dict, methods: dict, problem: AbstractProblem, noise: AbstractNoise, *, slow_ode: bool = True,
                progress: Optional[bool] = None) -> dict:
    """For every run: its trajectory on Gamma (``at_projection``) and, when ``slow_ode``, the slow flow
    started from its recorded states (``slow_ode_from_records``: from t = 0, or from the first record
    when the run starts at v = 0, where the slow flow is not defined).

    ``trajs``: run name -> Trajectory (or a one-element list); ``methods``: run name -> method. Sweeps
    (several trajectories per run) are skipped. Returns run name -> {"projected": ..., "slow_ode": ...}."""
    out = {}
    for name, items in trajs.items():
        items = items if isinstance(items, list) else [items]
        if len(items) != 1 or items[0].theta is None:
            continue
        tr, method = items[0], methods[name]
        entry = {"projected": at_projection(tr, problem, method, progress=progress)}
        if slow_ode:
            start = 0 if tr.v is None or _startable(method.for_problem(problem), tr.v[:, 0]) else 1
            entry["slow_ode"] = slow_ode_from_records(tr, problem, noise, method, start=start,
                                                      execution=Execution(progress=progress))
        out[name] = entry
    return out


def _startable(method: AbstractMethod, v: np.ndarray) -> bool:
    """Whether the slow flow can start at every path's recorded v (P, K): v > 0 entry by entry, or a full
    statistic (Shampoo's matrices) that the method can hold."""
    if method.full_statistic:
        return all(method.statistic_ok(x) for x in v)
    return bool(np.all(v > 0))


def _value(traj, name, j):
    ok = ~traj.diverged
    x = traj.observables[name][ok, j]
    if x.size == 0:
        return float("nan"), float("nan")
    m, se = mean_se(x, traj.deterministic)
    return float(m), float(se)


def theory_summary(view: dict, methods: dict) -> dict:
    """JSON-ready numbers of ``theory_view``: per run, its own sharpness measure (name, label) at
    Phi_S(theta) at the first and last record (mean and s.e. over paths), the slow flow's value at the end,
    and the test loss (or the training loss) at the end, discrete (raw iterates) and slow flow."""
    out = {}
    for name, entry in view.items():
        proj, ode = entry["projected"], entry.get("slow_ode")
        measure, lab = own_sharpness(methods[name])
        loss = next((k for k in ("test_loss", "test_error", "loss", "train_loss") if k in proj.observables), None)
        row = {"method": methods[name].name, "eta": proj.meta.get("eta"), "measure": measure, "label": lab,
               "t_start": float(proj.t[0]),
               "t_end": float(proj.t[-1]), "start": _value(proj, measure, 0), "end": _value(proj, measure, -1)}
        if loss is not None:
            row.update(loss=loss, loss_end=_value(proj, loss, -1))
        if ode is not None:
            row["ode_start_t"] = float(ode.t[0])
            row["ode_end"] = _value(ode, measure, -1)
            if loss is not None:
                row["ode_loss_end"] = _value(ode, loss, -1)
            row["ode_failed"] = int(ode.diverged.sum())
        out[name] = row
    return out


def _pm(x) -> str:
    m, se = x
    if not np.isfinite(m):
        return "-"
    return f"{m:.4g}" if not np.isfinite(se) or se == 0 else f"{m:.4g}±{se:.2g}"


def theory_table(summary: dict) -> str:
    """The story in a few lines: each run's own sharpness at Phi_S(theta), start -> end, against the slow
    flow's prediction, and the loss at the end (from ``theory_summary``)."""
    head = ["run", "own sharpness", "at Φ_S(θ), t = 0", "at Φ_S(θ), t_end", "slow ODE, t_end", "loss at Φ_S, t_end",
            "slow ODE loss"]
    rows = []
    for name, r in summary.items():
        rows.append([f"{name} ({r['method']})" if r["method"] != name else name, r["label"], _pm(r["start"]),
                     _pm(r["end"]), _pm(r["ode_end"]) if "ode_end" in r else "-",
                     _pm(r["loss_end"]) if "loss_end" in r else "-",
                     _pm(r["ode_loss_end"]) if "ode_loss_end" in r else "-"])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines.append("(each method's own sharpness, the one its slow flow reduces, evaluated at the projection "
                 "Φ_S(θ) onto the minimizer manifold, where the theory speaks; mean over paths ± s.e.)")
    for name, r in summary.items():
        if "ode_end" not in r:
            continue
        (m, se), (o, _) = r["end"], r["ode_end"]
        if np.isfinite(m) and np.isfinite(o) and abs(m - o) > max(3 * (se if np.isfinite(se) else 0), 0.01 * abs(o)):
            gap = f"{abs(m - o) / abs(o):.0%}" if o != 0 else f"{abs(m - o):.3g}"
            lines.append(f"note: {name} at η = {r['eta']:g} ends {gap} "
                         f"{'above' if m > o else 'below'} its slow ODE ({r['label']}). The slow flow is the η → 0 "
                         "limit of the discrete method; the gap is the discretization's, and shrinks as η does "
                         "(see docs/howto/showcase.md).")
    return "\n".join(lines)
