"""The slow-SDE engine (math §4-§5) on diffrax.

State (zeta, v), flattened to one vector y = [zeta; v] of length 2D, on the SDE clock t:

    d zeta = dPhi_S ( Sigma_par^{1/2} dW - 1/2 S grad^3 L[Sigma_diamond] dt ) + Ito correction
    d v    = c ( V(Sigma(zeta)) - v ) dt,        S = S(v)

- General noise: projected Euler-Maruyama with fixed steps. :class:`SlowSDETerm` returns the drift and the
  diffusion dPhi_S S Sigma^{1/2} (tangent noise only, A A^T = Sigma_par) from one evaluation of the geometry,
  and :class:`RetractingSolver` wraps diffrax's Euler and retracts zeta onto Gamma after every step (Newton
  steps along S * normal directions); the retraction's second-order part supplies the Ito correction.
  Brownian increments come from ``UnsafeBrownianPath`` (forward mode only), one key per path and chunk.
- Label noise (Sigma = alpha H on Gamma): no diffusion; the ODE d zeta/dt = -(alpha/4) dPhi_S S grad^3 L[S]
  is integrated with an adaptive solver (Tsit5, or Kvaerno5 for the stiff regime near u_j v_j = 0 where eps
  takes over) and retracted at every recording time.

Both integrate chunk by chunk between recording times (the same loop shape as the discrete engine) and
return a :class:`~slowsde_jax.trajectory.Trajectory`. SGD is the case S = I with v not evolving.
"""
from __future__ import annotations

from typing import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _precision
from . import geometry as geo
from .errors import ConfigError, check_range
from .noise import psd_sqrt
from .problems import observe_batch
from .trajectory import Trajectory
from .validation import check_compatible


# ----- the coefficients -----------------------------------------------------------------------------------------
def slow_sde_coefficients(problem, noise, method, zeta, v, c, rank=None):
    """Drift of (zeta, v) (each (D,)) and the diffusion of zeta (D, D) at a point zeta of Gamma.

    Dense geometry (Hessian, eigendecompositions): for D up to a few hundred per path.
    """
    S = method.S(v)
    loss = problem.loss
    H = geo.hessian(loss, zeta)
    Sigma = noise.covariance(problem, zeta)
    P = geo.projection_jacobian(H, S, rank)
    X = geo.sigma_diamond(H, Sigma, S, rank)
    t3 = geo.third_derivative_contraction(loss, zeta, X)
    drift = -0.5 * P @ (S * t3)
    A = P @ (S[:, None] * psd_sqrt(Sigma))
    dv = c * (method.V(jnp.diag(Sigma)) - v) if method.has_v else jnp.zeros_like(v)
    return drift, dv, A


def label_noise_vector_field(problem, noise, method, zeta, v, c, alpha):
    """(d zeta/dt, dv/dt) of the label-noise ODE (math §5), structured for least squares."""
    S = method.S(v)
    residuals, weights = problem.residual_parts()
    dz = geo.label_noise_drift(problem.loss, zeta, S, alpha, residuals=residuals, weights=weights)
    dv = c * (method.V(noise.covariance_diag(problem, zeta)) - v) if method.has_v else jnp.zeros_like(v)
    return dz, dv


# ----- diffrax pieces ----------------------------------------------------------------------------------------------
class SlowSDETerm(diffrax.AbstractTerm):
    """One term for the whole SDE: ``vf`` gives (drift (2D,), diffusion (2D, D)) from one geometry evaluation,
    ``contr`` gives (dt, dW), ``prod`` combines them. Saves evaluating the geometry twice per step."""

    coefficients: Callable
    brownian: diffrax.AbstractBrownianPath

    def vf(self, t, y, args):
        return self.coefficients(y)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0, self.brownian.evaluate(t0, t1)

    def prod(self, vf, control):
        (b, A), (dt, dW) = vf, control
        return b * dt + A @ dW


class RetractingSolver(diffrax.AbstractWrappedSolver):
    """Wraps a diffrax solver (Euler for the Ito SDE) and retracts the state onto Gamma after every step;
    ``retract(y0, y1)`` sees the step's start y0 (on Gamma) and its end y1."""

    solver: diffrax.AbstractSolver
    retract: Callable

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return diffrax.LocalLinearInterpolation

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, err, _, state, result = self.solver.step(terms, t0, t1, y0, args, solver_state, made_jump)
        y1 = self.retract(y0, y1)
        return y1, err, dict(y0=y0, y1=y1), state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def _retraction(problem, method, D, rank=None):
    """retract(y0, y1): y1 = [zeta; v] back onto Gamma by three Newton steps along S(v) * normal directions.
    Least squares: normals from the residual Jacobian (with the sample weights). Any other loss: the normals
    of Gamma at zeta0 = y0[:D], a point of Gamma (cut at ``rank`` or by the rank rule), never the Hessian's
    eigenvectors at y1, whose tangent eigenvalues are O(|y1 - y0|) and would bend the step tangentially."""
    residuals, weights = problem.residual_parts()

    def retract(y0, y1):
        zeta, v = y1[:D], y1[D:]
        S = method.S(v)
        normals = None if residuals is not None else geo.normal_frame(geo.hessian(problem.loss, y0[:D]), S, rank)
        for _ in range(3):  # quadratic convergence: a displacement of 1e-2 lands within rounding
            zeta = geo.newton_retraction_step(problem.loss, zeta, S, residuals=residuals, weights=weights,
                                              normals=normals)
        return jnp.concatenate([zeta, v])

    return retract


# ----- chunks (jitted, vmapped over paths) ---------------------------------------------------------------------------
@eqx.filter_jit
def _sde_chunk(problem, noise, method, c, rank, y, keys, t0, t1, n_steps):
    D = problem.dim
    retract = _retraction(problem, method, D, rank)

    def coefficients(y):
        b, dv, A = slow_sde_coefficients(problem, noise, method, y[:D], y[D:], c, rank)
        return jnp.concatenate([b, dv]), jnp.concatenate([A, jnp.zeros_like(A)])

    def one(y0, key):
        bm = diffrax.UnsafeBrownianPath(shape=(D,), key=key)
        sol = diffrax.diffeqsolve(
            SlowSDETerm(coefficients, bm), RetractingSolver(diffrax.Euler(), retract), t0=t0, t1=t1,
            dt0=(t1 - t0) / n_steps, y0=y0, saveat=diffrax.SaveAt(t1=True), adjoint=diffrax.ForwardMode(),
            max_steps=None, throw=False)
        return sol.ys[-1], sol.result == diffrax.RESULTS.successful

    return jax.vmap(one)(y, keys)


class _ErrorInX(diffrax.AbstractWrappedSolver):
    """Wraps the solver of the label-noise ODE in log coordinates z = log|x| (and log v): reports the step's
    error as the error of x = exp(z), rescaled so that the controller's test
    |err| <= atol + rtol |z| becomes |x| |dz| <= atol + rtol |x|. A coordinate that has decayed to 1e-40
    then no longer limits the step through the rounding noise of its rate."""

    solver: diffrax.AbstractSolver
    rtol: float
    atol: float

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        y1, err, dense, state, result = self.solver.step(terms, t0, t1, y0, args, solver_state, made_jump)
        z = jnp.maximum(y0, y1)
        m = jnp.exp(jnp.minimum(z, 700.0))
        scale = m * (self.atol + self.rtol * jnp.maximum(jnp.abs(y0), jnp.abs(y1))) / (self.atol + self.rtol * m)
        err = err * scale
        # a stage that left the domain (v = exp(z) overflowing): a large finite error makes the controller
        # shrink the step; a NaN would poison its step-size factor and stall it
        err = jnp.where(jnp.isfinite(err) & jnp.all(jnp.isfinite(y1)), err, 1e10)
        return y1, err, dense, state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def _ode_in_log_coordinates(problem, method):
    """The label-noise ODE is integrated in z = (log|x|, log v) with the signs of x fixed when the residuals
    are r(x) = B (x * x) - y (diagonal nets; ``problem.quadratic_residuals()``) and v > 0 evolves (AGMs).

    Why: there every term of the drift carries a factor x_k, dx/dt = x * h(x, v), so x_k never changes sign
    and log|x_k| moves at the rate h_k. Near u_j v_j = 0, S_k ~ 1/eps and x_k decays at a rate up to
    ~ 1/eps^2: a stiff mode in x (explicit solvers stall, implicit ones need Jacobians of the whole drift),
    a straight line in log|x_k|; v_k decays at the rate c. The error is controlled in x (see _ErrorInX)."""
    residuals, _ = problem.residual_parts()
    return method.has_v and residuals is not None and geo.quadratic_structure(residuals) is not None


_LOG_FLOOR, _TINY = -230.0, 1e-300  # log|x| is evaluated at >= log(1e-100): x_k^2 then drops out of the rest


@eqx.filter_jit
def _ode_chunk(problem, noise, method, c, alpha, y, t0, t1, rtol, atol, solver_name, max_steps):
    D = problem.dim
    retract = _retraction(problem, method, D)
    solver = {"tsit5": diffrax.Tsit5(), "kvaerno5": diffrax.Kvaerno5()}[solver_name]
    log = _ode_in_log_coordinates(problem, method)
    if log:
        B, y_lab = geo.quadratic_structure(problem.residual_parts()[0])
        w = problem.residual_parts()[1]
        solver = _ErrorInX(solver, rtol, atol)

    def one(y0):
        if not log:
            def f(t, y, args):
                dz, dv = label_noise_vector_field(problem, noise, method, y[:D], y[D:], c, alpha)
                return jnp.concatenate([dz, dv])
            z0 = y0
        else:
            sign = jnp.where(y0[:D] < 0, -1.0, 1.0).astype(y0.dtype)

            def f(t, z, args):
                x, v = sign * jnp.exp(jnp.maximum(z[:D], _LOG_FLOOR)), jnp.exp(z[D:])
                h = geo.quadratic_label_noise_rate(B, y_lab, w, x, method.S(v), alpha)
                return jnp.concatenate([h, c * (method.V(noise.covariance_diag(problem, x)) / v - 1.0)])

            z0 = jnp.log(jnp.maximum(jnp.abs(y0), _TINY))
            z0 = z0.at[:D].set(jnp.maximum(z0[:D], _LOG_FLOOR))
        sol = diffrax.diffeqsolve(diffrax.ODETerm(f), solver, t0=t0, t1=t1, dt0=None, y0=z0,
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                  saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
        y1 = sol.ys[-1] if not log else jnp.concatenate([sign * jnp.exp(sol.ys[-1][:D]), jnp.exp(sol.ys[-1][D:])])
        return retract(y0, y1), sol.result == diffrax.RESULTS.successful

    return jax.vmap(one)(y)


@eqx.filter_jit
def _initial_state(problem, noise, method, theta0, v0_mode, v0, keys, rank, max_steps):
    residuals, weights = problem.residual_parts()

    def one(key):
        th = problem.init(jax.random.split(key)[0]) if theta0 is None else theta0
        v = v0 if v0_mode == "given" else (method.V(noise.covariance_diag(problem, th)) if method.has_v else jnp.ones_like(th))
        zeta, status = geo.project_flow(problem.loss, th, method.S(v), max_steps=max_steps, residuals=residuals,
                                        weights=weights, rank=rank)
        if method.has_v and v0_mode == "equilibrium":
            v = method.V(noise.covariance_diag(problem, zeta))
        elif not method.has_v:
            v = jnp.zeros_like(zeta)
        return jnp.concatenate([zeta, v]), status

    return jax.vmap(one)(keys)


def simulate_slow_sde(problem, noise, method, T, n_paths=1, key=0, *, eta=None, dt=1e-3, n_record=100,
                      theta0=None, v0="equilibrium", rank=None, solver="tsit5", rtol=1e-8, atol=1e-10,
                      max_steps=1_000_000, project_max_steps=100_000, force_sde=False, record_state=True,
                      dtype=None):
    """Integrate the slow SDE of ``method`` under ``noise`` on ``problem`` up to SDE time ``T``.

    - ``eta``: only needed to turn an explicit beta2 into c = (1 - beta2)/eta^2;
    - ``dt``: step of projected Euler-Maruyama (general noise); the label-noise ODE is adaptive with
      ``rtol``/``atol`` and ``solver`` ("tsit5" or "kvaerno5" for stiff cases);
    - ``theta0``: start (D,) (default: the problem's initializer per path), projected: zeta(0) = Phi_{S(v0)}(theta0);
    - ``v0``: "equilibrium" (V(Sigma(zeta(0)))), "zeros" is not allowed (S would be infinite), or an array (D,);
    - ``rank``: the codimension of Gamma (default: the geometry module's rank rule);
    - ``max_steps``: step budget of the adaptive ODE solver per recording interval; ``project_max_steps``:
      step budget of the gradient flow that projects the start onto Gamma;
    - ``force_sde``: use the SDE integrator even for label noise (a check of the ODE reduction).

    Returns a Trajectory on the recording grid t_j = j T / n_record (``theta`` holds zeta).
    """
    key = jax.random.PRNGKey(key) if isinstance(key, (int, np.integer)) else key
    check_range("T", T, low=0.0, low_open=True)
    check_range("dt", dt, low=0.0, low_open=True)
    if not isinstance(n_paths, (int, np.integer)) or n_paths < 1:
        raise ConfigError("n_paths", f"must be an integer >= 1, got {n_paths!r}")
    if not isinstance(n_record, (int, np.integer)) or n_record < 1:
        raise ConfigError("n_record", f"must be an integer >= 1, got {n_record!r}")
    if solver not in ("tsit5", "kvaerno5"):
        raise ConfigError("solver", f"must be 'tsit5' or 'kvaerno5', got {solver!r}")
    dtype = dtype or _precision.default_float()
    check_compatible(problem, noise, method)
    D = problem.dim
    if method.has_v:
        if method.c is None and eta is None:
            raise ConfigError("eta", "needed to convert the method's explicit beta2 into c = (1 - beta2)/eta^2")
        c = method.c_at(eta)
    else:
        c = jnp.asarray(0.0, dtype)
    v0_arr = None
    if isinstance(v0, str):
        if v0 != "equilibrium":
            raise ConfigError("v0", f"the slow SDE starts v at 'equilibrium' or at a given positive array, got {v0!r}")
        v0_mode = v0
    else:
        v0_mode, v0_arr = "given", jnp.asarray(v0, dtype)
        if v0_arr.shape != (D,):
            raise ConfigError("v0", f"must have shape ({D},), got {v0_arr.shape}")
    if theta0 is not None:
        theta0 = jnp.asarray(theta0, dtype)
        if theta0.shape != (D,):
            raise ConfigError("theta0", f"must have shape ({D},), got {theta0.shape}")
    alpha = None if force_sde else noise.label_noise_alpha(problem)

    k_init, k_run = jax.random.split(key)
    y, status = _initial_state(problem, noise, method, theta0, v0_mode, v0_arr, jax.random.split(k_init, n_paths),
                               rank, project_max_steps)
    if np.any(np.asarray(status) != geo.PROJECTION_OK):
        raise geo.ProjectionError("the initial point could not be projected onto Gamma: "
                                  + geo.projection_failure_message(status, project_max_steps))
    t_grid = np.linspace(0.0, float(T), n_record + 1)
    n_sub = max(1, int(np.ceil((t_grid[1] - t_grid[0]) / dt - 1e-9)))
    records = {"zeta": [np.asarray(y[:, :D])], "v": [np.asarray(y[:, D:])]}
    obs = [jax.tree_util.tree_map(np.asarray, observe_batch(problem, y[:, :D]))]
    failed_at = np.full(n_paths, -1, np.int64)
    reasons = [None] * n_paths
    path_keys = jax.random.split(k_run, n_paths)
    for j in range(n_record):
        t0, t1 = jnp.asarray(t_grid[j], dtype), jnp.asarray(t_grid[j + 1], dtype)
        if alpha is None:
            keys = jax.vmap(lambda k: jax.random.fold_in(k, j))(path_keys)
            y_new, ok = _sde_chunk(problem, noise, method, c, rank, y, keys, t0, t1, n_sub)
        else:
            y_new, ok = _ode_chunk(problem, noise, method, c, alpha, y, t0, t1, rtol, atol, solver, max_steps)
        solver_ok = np.asarray(ok)
        finite = np.all(np.isfinite(np.asarray(y_new)), axis=1)
        newly = ~(solver_ok & finite) & (failed_at < 0)
        failed_at[newly] = j + 1
        for i in np.flatnonzero(newly):
            reasons[i] = (f"solver failed between t = {t_grid[j]:.6g} and {t_grid[j + 1]:.6g} (step budget max_steps "
                          "exhausted or step size collapsed: a stiff region; try a larger eps or solver='kvaerno5')"
                          if not solver_ok[i] else
                          f"non-finite state between t = {t_grid[j]:.6g} and {t_grid[j + 1]:.6g} (retraction onto Gamma failed)")
        keep = jnp.asarray(failed_at < 0)[:, None]
        y = jnp.where(keep, y_new, y)  # failed paths stay frozen at their last good state
        records["zeta"].append(np.asarray(y[:, :D]))
        records["v"].append(np.asarray(y[:, D:]))
        obs.append(jax.tree_util.tree_map(np.asarray, observe_batch(problem, y[:, :D])))
    observables = {k: np.stack([o[k] for o in obs], axis=1) for k in obs[0]}
    meta = {"engine": "slow_sde" if alpha is None else "label_noise_ode", "method": method.name,
            "noise": type(noise).__name__, "problem": type(problem).__name__, "T": float(T), "dt": float(dt),
            "steps_per_record": n_sub if alpha is None else None, "c": float(c), "n_paths": int(n_paths),
            "alpha": None if alpha is None else float(alpha), "failed_record": failed_at.tolist(),
            "failure_reasons": reasons,
            "eta": None if eta is None else float(eta)}
    return Trajectory(t=t_grid, theta=np.stack(records["zeta"], axis=1) if record_state else None,
                      v=np.stack(records["v"], axis=1) if (record_state and method.has_v) else None,
                      observables=observables, diverged_step=failed_at, meta=meta)
