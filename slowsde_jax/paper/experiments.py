"""The paper's two experiments as small pieces: seed grids, sample-size thresholds, sharpness on Gamma, an
independent quasi-norm interpolator for the diagonal net's fixed points, and sharpness minimizers on Gamma.

- ``run_seed_grid``: one method over a grid of hyperparameters (a ``simulate_discrete`` sweep, compiled
  once) for several seeds, each seed redrawing the data (``problem_fn(seed)``) as well as the paths.
  Returns a ``SeedGrid`` with every observable averaged over the tail of the run, shape
  (n_seeds, n_cfg).
- ``threshold_n``: the smallest sample size from which a loss curve stays below a level (interpolated in
  log loss between grid points); ``threshold_summary`` over seeds.
- ``grid_point``: the problem, noise and method of one grid point (its swept hyperparameters substituted),
  the objects to project and measure a grid point's states with.
- ``states_at_projection``: ``slowsde_jax.observables.at_projection`` for bare states (e.g. a
  ``SeedGrid``'s final ones): the problem's observables (test loss, ...) and the sharpness measures at
  Phi_S(theta), the projection onto Gamma along the method's preconditioner, instead of at the jittering iterate.
- ``min_quasi_norm_interpolator``: argmin sum_j |w_j|^q subject to Z w = y (0 < q <= 1) by iteratively
  reweighted least squares with a geometrically decreasing smoothing eps (as in Chartrand and Yin): the point the
  AdamE-lam ODE should reach on a diagonal net, with q = 1 - lam, found without the ODE (a local minimizer);
  ``min_quasi_norm_by_supports``: the global minimizer for small d, by enumerating basic solutions.
- ``min_sharpness_on_manifold``: a minimizer of sum_k (diag H)_k^p on Gamma (p = 1: tr H, SGD's label-noise
  target; p = 1/2: tr(Diag H^{1/2}), Adam's) by Riemannian gradient descent from a given point: where each
  method's label-noise ODE should end, found without the ODE.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from ..discrete import simulate_discrete
from ..methods import AbstractMethod
from ..noise import AbstractNoise
from ..observables import at_projection
from ..options import Execution, Recording
from ..problems import AbstractLeastSquares, AbstractProblem, MatrixFactorization
from ..sweep import apply_hypers
from ..trajectory import Trajectory
from ..validation import ConfigError, check_range

__all__ = ["SeedGrid", "run_seed_grid", "threshold_n", "threshold_summary",
           "grid_point", "states_at_projection", "min_quasi_norm_interpolator", "min_quasi_norm_by_supports",
           "diagonal_net_weights", "covering_entries", "with_covering_entries", "min_sharpness_on_manifold"]


@dataclasses.dataclass
class SeedGrid:
    """Tail-averaged observables of one method over seeds x grid points.

    - ``seeds``: the seeds (each one the problem's data seed and the paths' key);
    - ``hypers``: the grid points, in ``simulate_discrete``'s sweep order (list of dicts, length n_cfg);
    - ``tail``: name -> array (n_seeds, n_cfg), each surviving path's mean over the last ``tail_fraction`` of
      the recorded times, then averaged over the paths that did not diverge
      (``slowsde_jax.Trajectory.tail_mean``; NaN where every path diverged);
    - ``diverged``: (n_seeds, n_cfg, n_paths) bool, the paths that diverged (their states are frozen at the
      last good step);
    - ``final_theta``: (n_seeds, n_cfg, n_paths, D) the last recorded state (None unless states were recorded);
    - ``final_v``: the same for the second moment (None for SGD or without states);
    - ``half_theta``, ``half_v``: the same at the recorded point half way through the run (for plateau checks);
    - ``t_end``: slow time k eta^2 at the end, per grid point (n_cfg,); ``seconds``: wall time per seed;
    - ``trajectories``: per seed, the list of Trajectories (only with ``keep_trajectories=True``).
    """

    seeds: list
    hypers: list
    tail: dict
    final_theta: Optional[np.ndarray]
    final_v: Optional[np.ndarray]
    t_end: np.ndarray
    seconds: list
    half_theta: Optional[np.ndarray] = None
    half_v: Optional[np.ndarray] = None
    diverged: Optional[np.ndarray] = None
    trajectories: Optional[list] = None

    def select(self, **hypers) -> np.ndarray:
        """Indices of the grid points whose hyperparameters match ``hypers`` (e.g. ``lam=0.5``)."""
        return np.array([i for i, h in enumerate(self.hypers)
                         if all(np.isclose(h.get(k, np.nan), v) for k, v in hypers.items())], dtype=int)


def run_seed_grid(problem_fn: Callable[[int], "AbstractProblem"], noise: "AbstractNoise", method: "AbstractMethod",
                  seeds: Sequence[int], *, eta: Optional[float] = None,
                  sweep: Optional[dict] = None, steps: Optional[int] = None, T: Optional[float] = None,
                  n_paths: int = 1, n_record: int = 20, tail_fraction: float = 0.25, record_state: bool = False,
                  keep_trajectories: bool = False, **discrete_kw: Any) -> SeedGrid:
    """Run ``method`` on ``problem_fn(seed)`` for every seed (data and paths redrawn: the seed is also the
    path key) over the grid ``sweep`` (see ``slowsde_jax.simulate_discrete``). The problems of all seeds
    share their shapes, so the sweep compiles once and every seed reuses it."""
    check_range("tail_fraction", tail_fraction, low=0.0, high=1.0, low_open=True)
    if len(seeds) == 0:
        raise ConfigError("seeds", "must be a non-empty list of integers")
    tails, thetas, vs, half_thetas, half_vs, secs, kept, div = {}, [], [], [], [], [], [], []
    hypers = t_end = None
    for seed in seeds:
        problem = problem_fn(int(seed))
        t0 = time.perf_counter()
        trajs = simulate_discrete(problem, noise, method, eta=eta, steps=steps, T=T, n_paths=n_paths,
                                  key=int(seed), sweep=sweep or {"eta": [eta]}, n_record=n_record,
                                  recording=Recording(record_state=record_state),
                                  execution=Execution(progress=False), **discrete_kw)
        secs.append(time.perf_counter() - t0)
        hypers = [tr.meta["hypers"] for tr in trajs]
        t_end = np.array([tr.t[-1] for tr in trajs])
        for name in trajs[0].observables:
            tails.setdefault(name, []).append([tr.tail_mean(name, tail_fraction)[0] for tr in trajs])
        div.append(np.stack([tr.diverged for tr in trajs]))
        if record_state:
            thetas.append(np.stack([tr.theta[:, -1] for tr in trajs]))
            half_thetas.append(np.stack([tr.theta[:, n_record // 2] for tr in trajs]))
            if trajs[0].v is not None:
                vs.append(np.stack([tr.v[:, -1] for tr in trajs]))
                half_vs.append(np.stack([tr.v[:, n_record // 2] for tr in trajs]))
        if keep_trajectories:
            kept.append(trajs)
    return SeedGrid(seeds=[int(s) for s in seeds], hypers=hypers, tail={k: np.asarray(v) for k, v in tails.items()},
                    final_theta=np.stack(thetas) if thetas else None, final_v=np.stack(vs) if vs else None,
                    t_end=t_end, seconds=secs, half_theta=np.stack(half_thetas) if half_thetas else None,
                    half_v=np.stack(half_vs) if half_vs else None, diverged=np.stack(div), trajectories=kept or None)


def threshold_n(n_grid: Sequence[float], loss: Sequence[float], level: float = 1.0) -> float:
    """The sample size at which ``loss`` (one value per ``n_grid`` entry, n increasing) falls below ``level``
    for good: the first n from which every later grid point is below ``level``, interpolated linearly in
    log(loss) between that grid point and the one before it. ``inf`` if the last point is not below,
    ``n_grid[0]`` if all are."""
    n = np.asarray(n_grid, float)
    y = np.asarray(loss, float)
    if n.ndim != 1 or n.shape != y.shape or n.size == 0:
        raise ConfigError("loss", f"needs one value per n_grid entry, got shapes {y.shape} and {n.shape}")
    if np.any(np.diff(n) <= 0):
        raise ConfigError("n_grid", "must be strictly increasing")
    check_range("level", level, low=0.0, low_open=True)
    below = y < level
    if not below[-1]:
        return float("inf")
    i = n.size - 1
    while i > 0 and below[i - 1]:
        i -= 1
    if i == 0:
        return float(n[0])
    ya, yb = np.log(max(y[i - 1], 1e-300)), np.log(max(y[i], 1e-300))
    s = (ya - np.log(level)) / (ya - yb) if ya != yb else 1.0
    return float(n[i - 1] + s * (n[i] - n[i - 1]))


def threshold_summary(n_grid: Sequence[float], losses: ArrayLike, level: float = 1.0) -> dict:
    """Thresholds (``threshold_n``) of each row of ``losses`` (n_seeds, len(n_grid)): ``per_seed``,
    ``mean``, ``std`` (ddof=1; 0 for one seed), ``min``, ``max``. Non-crossing seeds give inf."""
    per = np.array([threshold_n(n_grid, row, level) for row in np.atleast_2d(np.asarray(losses, float))])
    std = float(np.std(per, ddof=1)) if per.size > 1 and np.all(np.isfinite(per)) else (0.0 if per.size == 1 else float("nan"))
    return {"per_seed": per.tolist(), "mean": float(np.mean(per)), "std": std, "min": float(np.min(per)),
            "max": float(np.max(per)), "level": float(level)}


def grid_point(problem: "AbstractProblem", noise: "AbstractNoise", method: "AbstractMethod",
               hypers: dict) -> tuple["AbstractProblem", "AbstractNoise", "AbstractMethod"]:
    """(problem, noise, method) at one grid point: the swept values in ``hypers`` (one entry of
    ``SeedGrid.hypers``, e.g. ``{"eta": 0.1, "lam": 0.001, "n_train": 20}``) substituted as float arrays
    (``slowsde_jax.sweep.apply_hypers``). A swept lam changes the method's preconditioner S, so a
    grid point's states must be projected with this method, not the run's base one."""
    return apply_hypers(problem, noise, method, {k: jnp.asarray(float(v)) for k, v in hypers.items()})


def states_at_projection(problem: "AbstractProblem", method: "AbstractMethod", theta: ArrayLike,
                         v: Optional[ArrayLike] = None, diverged: Optional[ArrayLike] = None,
                         **project_kw: Any) -> dict:
    """Bare states seen on Gamma: ``slowsde_jax.observables.at_projection`` applied to ``theta``
    (N, D) and ``v`` (N, D; None for SGD) as a one-record trajectory.

    Returns name -> array (N,): the problem's observables at zeta = Phi_{S(v)}(theta) (``train_loss``,
    ``test_loss``, ...), the sharpness measures of ``slowsde_jax.observables.sharpness_values`` (``trace_H``,
    ``trace_sqrt_diag_H`` and ``method``'s own, named by ``slowsde_jax.sharpness.own_sharpness``), and
    ``zeta`` (N, D). Paths marked in ``diverged`` (N,) bool are not projected and get NaN everywhere.
    ``method`` (and ``problem``) must be the grid point's (``grid_point``). ``project_kw``: ``tol``,
    ``max_steps``, ``rank``."""
    theta = np.atleast_2d(np.asarray(theta, float))
    n = theta.shape[0]
    v = None if v is None else np.atleast_2d(np.asarray(v, float))
    div = np.zeros(n, bool) if diverged is None else np.asarray(diverged, bool).reshape(n)
    tr = Trajectory(t=np.zeros(1), theta=theta[:, None], v=None if v is None else v[:, None], observables={},
                    diverged_time=np.where(div, 0.0, np.nan), meta={})
    proj = at_projection(tr, problem, method, **project_kw)
    out = {k: np.where(div, np.nan, np.asarray(x)[:, 0]) for k, x in proj.observables.items()}
    out["zeta"] = np.where(div[:, None], np.nan, proj.theta[:, 0])
    return out


def covering_entries(d1: int, d2: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols), each (n,): n distinct entries of a d1 x d2 matrix drawn uniformly (numpy generator
    ``seed``) and redrawn until every row and every column is observed; otherwise a row of W is free on Gamma."""
    if n < max(d1, d2) or n > d1 * d2:
        raise ConfigError("n", f"must be between max(d1, d2) = {max(d1, d2)} and d1 d2 = {d1 * d2}, got {n}")
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.permutation(d1 * d2)[:n]
        if len(set(idx // d2)) == d1 and len(set(idx % d2)) == d2:
            return idx // d2, idx % d2


def with_covering_entries(problem: "MatrixFactorization", seed: int) -> "MatrixFactorization":
    """``problem`` (a factorization observed at entries) observed instead at the same number of entries drawn by
    ``covering_entries`` with ``seed``, which see every row and column; labels y = W*[rows, cols]."""
    if problem.A is not None:
        raise ConfigError("problem", "with_covering_entries redraws an entry mask; this factorization has "
                          "Gaussian measurements")
    d1, d2, _ = problem.shape
    rows, cols = map(jnp.asarray, covering_entries(d1, d2, problem.y.shape[0], seed))
    return dataclasses.replace(problem, y=problem.W_star[rows, cols], rows=rows, cols=cols)


def diagonal_net_weights(theta: ArrayLike) -> np.ndarray:
    """w = u*u - v*v from diagonal-net parameters theta = [u; v] (..., 2d) -> (..., d)."""
    theta = np.asarray(theta)
    d = theta.shape[-1] // 2
    return theta[..., :d] ** 2 - theta[..., d:] ** 2


def min_quasi_norm_interpolator(Z: ArrayLike, y: ArrayLike, q: float, *, iters: int = 60, eps0: float = 1.0,
                                eps_min: float = 1e-12, shrink: float = 0.5,
                                w0: Optional[ArrayLike] = None) -> np.ndarray:
    """argmin_w sum_j |w_j|^q subject to Z w = y, for 0 < q <= 1, by iteratively reweighted least squares.

    Each step solves the weighted minimum-norm problem w = D Z^T (Z D Z^T)^{-1} y with D = diag((w^2 + eps)^{1 - q/2})
    (float64 numpy), and eps shrinks by ``shrink`` each step down to ``eps_min``. ``Z``: (n, d) with n < d,
    ``y``: (n,). Starts at the minimum-l2 interpolator unless ``w0`` is given. For q < 1 the problem is not
    convex: the result is a local minimizer (the sparsest interpolator when the data allow recovery)."""
    check_range("q", q, low=0.0, high=1.0, low_open=True)
    Z, y = np.asarray(Z, float), np.asarray(y, float)
    if Z.ndim != 2 or y.shape != (Z.shape[0],):
        raise ConfigError("Z", f"needs Z (n, d) and y (n,), got {Z.shape} and {y.shape}")
    w = np.linalg.lstsq(Z, y, rcond=None)[0] if w0 is None else np.asarray(w0, float).copy()
    eps = eps0
    for _ in range(iters):
        dw = (w * w + eps) ** (1.0 - q / 2.0)
        G = (Z * dw) @ Z.T
        w = dw * (Z.T @ np.linalg.solve(G, y))
        eps = max(eps * shrink, eps_min)
    return w


def min_quasi_norm_by_supports(Z: ArrayLike, y: ArrayLike, q: float, max_supports: int = 200_000) -> np.ndarray:
    """The global argmin_w sum_j |w_j|^q subject to Z w = y for 0 < q < 1, for small problems.

    sum_j |w_j|^q is concave on each orthant, so its minimum over the polyhedron {Z w = y} within an orthant
    sits at a vertex: a basic solution, supported on n columns of Z that are linearly independent (or fewer).
    Every support of size rank(Z) is tried (``Z``: (n, d), C(d, n) of them, at most ``max_supports``); entries
    below 1e-12 of the largest are rounding and set to 0."""
    import itertools
    import math

    check_range("q", q, low=0.0, high=1.0, low_open=True, high_open=True)
    Z, y = np.asarray(Z, float), np.asarray(y, float)
    n, d = Z.shape
    r = np.linalg.matrix_rank(Z)
    if math.comb(d, r) > max_supports:
        raise ConfigError("Z", f"C({d}, {r}) supports exceed max_supports = {max_supports}; use min_quasi_norm_interpolator")
    best, best_val = None, np.inf
    for S in itertools.combinations(range(d), r):
        A = Z[:, S]
        if np.linalg.matrix_rank(A) < r:
            continue
        wS = np.linalg.lstsq(A, y, rcond=None)[0]
        if np.abs(A @ wS - y).max() > 1e-9 * max(1.0, np.abs(y).max()):
            continue
        wS[np.abs(wS) < 1e-12 * max(1.0, np.abs(wS).max())] = 0.0  # rounding, not support: |1e-16|^q is not small
        val = np.sum(np.abs(wS) ** q)
        if val < best_val - 1e-12:
            best_val, best = val, np.zeros(d)
            best[list(S)] = wS
    if best is None:
        raise ConfigError("y", "no interpolator exists (Z w = y has no solution)")
    return best


def _sharpness_power(problem, theta, power, eps):
    h = jnp.maximum(problem.hessian_diag(theta), 0.0)
    return jnp.sum(h) if power == 1.0 else jnp.sum((h + eps) ** power)


def _constraints(problem, theta):
    return jnp.sqrt(problem.sample_weights()) * problem.residuals(theta)


def _min_norm_solve(J, b):
    """J^T (J J^T + ridge)^{-1} b: the minimum-norm x with J x = b for J (n, D) of full row rank, by a Cholesky
    solve of the (n, n) Gram matrix (ridge 1e-13 of its mean diagonal, for rows that vanish)."""
    G = J @ J.T
    G = G + (1e-13 * jnp.trace(G) / G.shape[0] + 1e-300) * jnp.eye(G.shape[0], dtype=G.dtype)
    return J.T @ jax.scipy.linalg.cho_solve(jax.scipy.linalg.cho_factor(G), b)


def _retract(problem, theta, steps):
    """``steps`` Gauss-Newton minimum-norm steps onto {c = 0}."""
    def gn(_, th):
        J = jax.jacfwd(lambda x: _constraints(problem, x))(th)
        return th - _min_norm_solve(J, _constraints(problem, th))

    return jax.lax.fori_loop(0, steps, gn, theta)


def _riemannian_descent(problem, theta, eps, alpha, power, max_steps, retract_steps):
    """Gradient descent on Gamma: the gradient of s_eps projected on the tangent space (the null space of the
    constraints' Jacobian), a Gauss-Newton retraction, and a step size that grows by 1.5 after an accepted
    (Armijo) step and halves after a rejected one. Returns (theta, alpha, steps taken)."""
    s = lambda x: _sharpness_power(problem, x, power, eps)

    def body(carry):
        th, a, k, _ = carry
        J = jax.jacfwd(lambda x: _constraints(problem, x))(th)
        g = jax.grad(s)(th)
        g = g - _min_norm_solve(J, J @ g)
        trial = _retract(problem, th - a * g, retract_steps)
        ok = (s(trial) <= s(th) - 1e-4 * a * (g @ g)) & jnp.all(jnp.isfinite(trial))
        ok = ok & (jnp.max(jnp.abs(_constraints(problem, trial))) < 1e-8)
        th = jnp.where(ok, trial, th)
        return th, jnp.where(ok, a * 1.5, a * 0.5), k + 1, a * jnp.sqrt(g @ g)

    def cond(carry):
        _, a, k, move = carry
        return (k < max_steps) & (move > 1e-13) & (a > 1e-30)

    th, a, k, _ = jax.lax.while_loop(cond, body, (theta, alpha, jnp.asarray(0), jnp.asarray(1.0, theta.dtype)))
    return th, a, k


_descent = jax.jit(_riemannian_descent, static_argnames=("power", "max_steps", "retract_steps"))


def min_sharpness_on_manifold(problem: "AbstractProblem", theta0: ArrayLike, power: float = 1.0, *,
                              smoothing: Sequence[float] = (1e-3, 1e-5, 1e-7, 1e-9), max_steps: int = 3000,
                              retract_steps: int = 4, alpha0: float = 1e-2) -> tuple[np.ndarray, dict]:
    """A minimizer of the label-noise ODE's sharpness sum_k (diag H)_k^power on Gamma = {residuals = 0},
    found without the ODE, started at ``theta0`` (D,), a point on or near Gamma.

    ``power`` 1 is tr H (SGD's target), 1/2 is tr(Diag H^{1/2}) (Adam's), 1 - lam is AdamE-lam's.
    ``problem`` must be least squares (its ``residuals``, ``sample_weights`` and ``hessian_diag``). AbstractMethod:
    Riemannian gradient descent on Gamma (tangent projection of the gradient, Gauss-Newton retraction onto
    c = sqrt(w) * r = 0, Armijo steps), with the power smoothed as (h + eps)^power for eps running through
    ``smoothing`` (only the last for power 1), at most ``max_steps`` steps per eps. The problem is not convex:
    the result is a stationary point reached by descent from ``theta0`` (a local minimizer in practice),
    which is what the label-noise ODE, a descent flow of the same function on Gamma, is expected to reach too.

    Returns (theta (D,), info) with info: ``sharpness`` (unsmoothed, at theta), ``sharpness_start`` (at
    theta0 after its retraction), ``constraint`` (max |r_i| over samples with weight > 0), ``steps``."""
    if not isinstance(problem, AbstractLeastSquares):
        raise ConfigError("problem", "min_sharpness_on_manifold needs a least-squares problem (residuals)")
    check_range("power", power, low=0.0, high=1.0, low_open=True)
    power = float(power)
    active = np.asarray(problem.sample_weights()) > 0
    theta = _retract(problem, jnp.asarray(theta0, float), 20)
    if not bool(jnp.max(jnp.abs(_constraints(problem, theta))) < 1e-8):
        raise ConfigError("theta0", "is too far from Gamma: Gauss-Newton steps did not reach it")
    start = float(_sharpness_power(problem, theta, power, 0.0))
    alpha, steps = jnp.asarray(alpha0, theta.dtype), 0
    for eps in (smoothing if power != 1.0 else smoothing[-1:]):
        theta, alpha, k = _descent(problem, theta, jnp.asarray(eps, theta.dtype), jnp.maximum(alpha, alpha0),
                                     power=power, max_steps=max_steps, retract_steps=retract_steps)
        steps += int(k)
    viol = float(np.max(np.abs(np.asarray(problem.residuals(theta)))[active]))
    return np.asarray(theta), {"sharpness": float(_sharpness_power(problem, theta, power, 0.0)),
                               "sharpness_start": start, "constraint": viol, "steps": steps}
