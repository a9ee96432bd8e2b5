"""The label-noise ODE of a method whose preconditioner is a full matrix (Shampoo), on dense geometry.

    dζ/dt = −(α/4) ∂Φ_S S ∇³L(ζ)[S],      dv/dt = c (V(Σ(ζ)) − v),      S = S(v), a (D, D) matrix

(docs/math.md#label-noise-ode; the reduction Σ_◇ = (α/2)(S − ∂Φ_S S) under Σ = αH holds for any S ≻ 0).
The drift is ``geometry.label_noise_drift`` with the matrix S (its least-squares path: n x n solves), V(Σ)
comes from the noise's covariance factor (``AbstractMethod.V_of_factor``), and the start is
ζ(0) = Φ_{S(v0)}(θ0) with S as a matrix. One diffrax solve per path (Tsit5, or Kvaerno5 for a stiff flow, with the
integrator's tolerances; no IMEX fallback, no retraction of the saved states). S is formed as a D x D matrix at every stage: for
small D.
"""
from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import geometry as geo
from ..inputs import initial_v

__all__ = ["full_S_start", "full_S_solve", "full_S_failures"]


@eqx.filter_jit
def full_S_start(problem, noise, method, theta0, v0_mode, v0, keys, max_steps):
    """(ζ(0), v(0)) per path and the projection's status, by the rule of ``sde.start._initial_state`` with S
    a matrix: v at θ0, ζ = Φ_{S(v)}(θ0), then v again at ζ for the equilibrium start."""
    ls = problem.least_squares()

    def one(key):
        th = problem.init(jax.random.split(key)[0]) if theta0 is None else theta0
        v = initial_v(problem, noise, method, th, v0_mode, v0)
        zeta, status = geo.project_flow(problem.loss, th, method.S_operator(v), max_steps=max_steps, least_squares=ls)
        if v0_mode == "equilibrium":
            v = initial_v(problem, noise, method, zeta, v0_mode)
        return (zeta, v), status

    return jax.vmap(one)(keys)


@eqx.filter_jit
def _solve(problem, noise, method, c, alpha, zeta0, v0, t_grid, rtol, atol, max_steps, solver):
    ls = problem.least_squares()

    def field(t, y, args):
        z, v = y
        dz = geo.label_noise_drift(problem.loss, z, method.S_operator(v), alpha, least_squares=ls)
        return dz, c * (method.V_of_factor(noise.covariance_factor(problem, z)) - v)

    def one(z0, v0_):
        sol = diffrax.diffeqsolve(diffrax.ODETerm(field), solver, t_grid[0], t_grid[-1], None, (z0, v0_),
                                  saveat=diffrax.SaveAt(ts=t_grid),
                                  stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                                  max_steps=max_steps, throw=False)
        return sol.ys, sol.result == diffrax.RESULTS.successful

    return jax.vmap(one)(zeta0, v0)


def full_S_solve(problem, noise, method, c, alpha, zeta0, v0, t_grid, rtol, atol, max_steps, solver=None):
    """ζ (P, n_t, D), v (P, n_t, K) on ``t_grid`` from (ζ0, v0) (P, D), (P, K), and whether each path's solve
    succeeded (P,), as numpy. ``max_steps``: the solver's budget per recording interval; ``solver``: a diffrax
    ODE solver (default Tsit5; Kvaerno5 for a stiff flow)."""
    solver = diffrax.Tsit5() if solver is None else solver
    (zeta, v), ok = _solve(problem, noise, method, c, alpha, jnp.asarray(zeta0), jnp.asarray(v0),
                           jnp.asarray(t_grid), rtol, atol, max_steps * (len(t_grid) - 1), solver)
    return (np.array(zeta), np.array(v)), np.asarray(ok)


def full_S_failures(zeta, v, ok, t_grid):
    """Freeze every failed path (a solve that stopped, or a non-finite state) at its last finite record, from
    the next record on (in place); returns the time each path failed (NaN if none) and the reason (None)."""
    failed = np.full(zeta.shape[0], np.nan)
    reasons = [None] * zeta.shape[0]
    for i in range(zeta.shape[0]):
        finite = np.all(np.isfinite(zeta[i]), axis=1) & np.all(np.isfinite(v[i]), axis=1)
        if ok[i] and finite.all():
            continue
        j = max(int(np.argmin(finite)) if not finite.all() else len(t_grid) - 1, 1)
        zeta[i, j:], v[i, j:] = zeta[i, j - 1], v[i, j - 1]
        failed[i] = t_grid[j]
        reasons[i] = (f"the solver stopped (max_steps per record interval, or a non-finite state) before "
                      f"t = {t_grid[j]:.6g}; a stiff flow may need LabelNoiseODE(solver='kvaerno5')")
    return failed, reasons
