"""Geometry of the minimizer manifold Gamma (math §3).

This module owns Phi_S, the preconditioned projection onto Gamma.
"""
from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .errors import ConfigError


class ProjectionError(RuntimeError):
    """The preconditioned gradient flow did not reach Gamma within the step budget."""


def _as_matrix_apply(S):
    S = jnp.asarray(S)
    return (lambda g: S * g) if S.ndim == 1 else (lambda g: S @ g)


def _newton_step(loss, x, S, residuals=None):
    """One Newton step onto Gamma along S * normal directions: x - S H (H S H)^+ grad L(x), or its
    least-squares form x - S J^T (J S J^T)^{-1} r when ``residuals`` (r(x), shape (n,)) are given."""
    apply_S = _as_matrix_apply(S)
    if residuals is not None:
        r, J = residuals(x), jax.jacfwd(residuals)(x)
        SJt = jax.vmap(apply_S)(J).T  # (D, n)
        return x - SJt @ jnp.linalg.solve(J @ SJt, r)
    H = jax.hessian(loss)(x)
    SH = jax.vmap(apply_S, in_axes=1, out_axes=1)(H)  # S @ H
    return x - SH @ (jnp.linalg.pinv(H @ SH, hermitian=True, rtol=1e-10) @ jax.grad(loss)(x))


def project_flow(loss, theta, S, tol=1e-10, max_steps=100_000, residuals=None, flow_tol=1e-7):
    """Phi_S(theta): the limit of the preconditioned gradient flow dx/ds = -S grad L(x), x(0) = theta.

    ``S``: diagonal (shape (D,)) or a symmetric positive-definite matrix (D, D). The flow is integrated with
    an adaptive Tsit5 solver until |S grad L| < flow_tol (an explicit solver cannot go much further: its
    local errors at the stability limit keep the residual near its tolerance), then finished with three
    Newton steps along S * normal directions (see :func:`_newton_step`), whose end point differs from the
    flow's limit by O(flow_tol^2). Returns ``(x, converged)`` with converged = |S grad L(x)| < tol;
    jit/vmap-able.
    """
    apply_S = _as_matrix_apply(S)
    grad = jax.grad(loss)
    term = diffrax.ODETerm(lambda s, x, args: -apply_S(grad(x)))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=0.0, t1=jnp.inf, dt0=None, y0=theta,
        stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-12),
        event=diffrax.Event(diffrax.steady_state_event(rtol=0.0, atol=flow_tol, norm=jnp.linalg.norm)),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
    x = sol.ys[-1]
    for _ in range(3):
        x = _newton_step(loss, x, S, residuals)
    converged = (sol.result == diffrax.RESULTS.event_occurred) & (jnp.linalg.norm(apply_S(grad(x))) < tol)
    return x, converged & jnp.all(jnp.isfinite(x))


def project(loss, theta, S, tol=1e-10, max_steps=100_000, residuals=None):
    """Phi_S(theta) (see :func:`project_flow`); raises :class:`ProjectionError` if the flow does not converge.

    ``theta`` may carry leading batch axes (..., D); ``S`` is then either shared ((D,) or (D, D)) or given per
    point (shape (..., D) or (..., D, D)).
    """
    theta = jnp.asarray(theta)
    S = jnp.asarray(S, theta.dtype)
    if theta.ndim == 0:
        raise ConfigError("theta", "must be a vector (D,) or a batch (..., D)")
    f = lambda th, s: project_flow(loss, th, s, tol, max_steps, residuals)
    batch, D = theta.shape[:-1], theta.shape[-1]
    if batch:
        th = theta.reshape(-1, D)
        if S.shape in (theta.shape, theta.shape + (D,)):  # one S per point (diagonal or matrix)
            s = S.reshape((th.shape[0],) + S.shape[len(batch):])
        else:  # one shared S, (D,) or (D, D)
            s = jnp.broadcast_to(S, (th.shape[0],) + S.shape)
        x, ok = jax.jit(jax.vmap(f))(th, s)
        x, ok = x.reshape(theta.shape), ok.reshape(batch)
    else:
        x, ok = jax.jit(f)(theta, S)
    if not bool(np.all(np.asarray(ok))):
        bad = int(np.sum(~np.asarray(ok)))
        raise ProjectionError(f"preconditioned gradient flow did not reach |S grad L| < {tol} for {bad} point(s) "
                              f"within {max_steps} solver steps")
    return x
