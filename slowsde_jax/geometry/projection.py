"""The projection onto Gamma: Phi_S(theta), the limit of the preconditioned gradient flow, and the Newton
retraction that finishes it (and retracts the slow SDE's steps).
"""
from __future__ import annotations

from typing import Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int

from .. import _precision
from .._batching import factorized_size, map_paths, safe_batch
from .._structure import LeastSquares
from ..progress import progress_bar
from ..validation import ConfigError, as_float_array, check_int, check_range
from .dense import LossFn, Preconditioner, RankArg, _apply_S, normal_frame
from .least_squares import _ls_gram_solve
from .quadratic import _dual_flow_limit


class ProjectionError(RuntimeError):
    """A point could not be projected onto Gamma; the message says why (see ``PROJECTION_STATUS``)."""


def newton_retraction_step(loss: LossFn, x: Float[Array, "D"], S: Preconditioner, *,
                           least_squares: Optional[LeastSquares] = None,
                           normals: Optional[Float[Array, "D D"]] = None) -> Float[Array, "D"]:
    """One Newton step from x towards Gamma along S * normal directions.

    - Least squares (``least_squares``, residuals r(x) of shape (n,) and weights w (n,)): the
      Gauss-Newton step x - S J_w^T (J_w S J_w^T)^{-1} r_w with J_w = Diag(sqrt w) J, r_w = sqrt(w) r;
      masked samples (w = 0) impose no constraint.
    - Any loss: ``normals`` N (D, D) from ``normal_frame`` (zero columns for tangent directions), taken
      at a point of Gamma or cut at the codimension. The step is x + S N a with (N^T H(x) S N) a = -N^T grad
      L(x): it solves the normal part of grad L = 0 and never inverts H's tangent eigenvalues. (A
      pseudo-inverse of H(x) with a relative cut-off would: off Gamma they are O(distance), and the step then
      moves x tangentially by O(distance), a spurious drift in the slow SDE.)
    """
    if least_squares is not None:
        r, J = least_squares.residuals(x), least_squares.jacobian(x)
        w = least_squares.sample_weights(x)
        sw = jnp.sqrt(w)
        SJt, z = _ls_gram_solve(sw[:, None] * J, w, S, sw * r)
        return x - SJt @ z
    if normals is None:
        raise ConfigError("normals", "a loss without residuals needs normal directions (see normal_frame)")
    SN = _apply_S(S, normals)
    tangent = jnp.all(normals == 0, axis=0).astype(x.dtype)  # zero columns: unknowns fixed at 0
    A = normals.T @ jax.hessian(loss)(x) @ SN + jnp.diag(tangent)
    return x - SN @ jnp.linalg.solve(A, normals.T @ jax.grad(loss)(x))


# Why a projection failed (the ``status`` of ``project_flow``).
PROJECTION_OK = 0
PROJECTION_STATUS = {
    1: "the preconditioner S is not finite (v = 0 with eps = 0?)",
    2: "the state became non-finite",
    3: "the flow's step budget (max_steps) ran out before the point came near Gamma",
    4: "the Newton finish did not settle (no minimizer nearby?)",
}


def _flow_end(loss, theta, S, max_steps, least_squares, flow_tol, restarts=8):
    """End of the flow dx/ds = -S grad L (Tsit5), stopped once the point is within flow_tol of Gamma as the
    Newton finish measures it: the Gauss-Newton step's length for least squares, |S grad L| otherwise.
    (Stopping on |grad L| alone left points whose Newton step, S times larger, failed the finish's check.)

    For least squares the Gauss-Newton step S J^T (J S J^T)^{-1} r needs J, n reverse passes: checked at every
    step it cost more than the flow itself. The flow is therefore stopped by the same step with J frozen at
    the segment's start, P r(x) with P = S J0^T (J0 S J0^T)^{-1} (one forward pass per step); the true gap is
    measured at the segment's end, and the flow goes on from there with J refreshed until it is below
    2 flow_tol (a few segments: near Gamma J hardly changes). ``max_steps`` bounds the steps of all segments."""
    grad = jax.grad(loss)
    term = diffrax.ODETerm(lambda s, x, args: -_apply_S(S, grad(x)))
    controller = diffrax.PIDController(rtol=1e-9, atol=1e-12)

    def segment(x0, gap, budget):
        sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), t0=0.0, t1=jnp.inf, dt0=None, y0=x0,
                                  stepsize_controller=controller,
                                  event=diffrax.Event(lambda s, x, args, **kw: gap(x) < flow_tol),
                                  saveat=diffrax.SaveAt(t1=True), max_steps=budget, throw=False)
        return sol.ys[-1], sol.stats["num_steps"]

    if least_squares is None:
        return segment(theta, lambda x: jnp.linalg.norm(_apply_S(S, grad(x))), max_steps)[0]
    w = least_squares.sample_weights(theta)
    sw = jnp.sqrt(w)

    def gn_map(x):  # P (D, n): the Gauss-Newton step at x is P r(x)
        Jw = sw[:, None] * least_squares.jacobian(x)
        SJt, Z = _ls_gram_solve(Jw, w, S, jnp.diag(sw))
        return SJt @ Z

    def true_gap(x):
        return jnp.linalg.norm(gn_map(x) @ least_squares.residuals(x))

    def body(carry):
        x, used, k, _ = carry
        P = gn_map(x)
        budget = max(1, max_steps // restarts)
        x, n = segment(x, lambda y: jnp.linalg.norm(P @ least_squares.residuals(y)), budget)
        return x, used + n, k + 1, true_gap(x)

    def cond(carry):
        _, used, k, gap = carry
        return (gap >= 2.0 * flow_tol) & (k < restarts) & (used < max_steps)

    x, _, _, _ = jax.lax.while_loop(cond, body, (theta, jnp.asarray(0), jnp.asarray(0), true_gap(theta)))
    return x


def project_flow(loss: LossFn, theta: Float[Array, "D"], S: Preconditioner, tol: float = 1e-10,
                 max_steps: int = 100_000, *, least_squares: Optional[LeastSquares] = None,
                 rank: RankArg = None, flow_tol: float = 1e-7,
                 newton_steps: int = 3) -> tuple[Float[Array, "D"], Int[Array, ""]]:
    """Phi_S(theta): the limit of the preconditioned gradient flow dx/ds = -S grad L(x), x(0) = theta.

    ``S``: diagonal (shape (D,)) or a symmetric positive-definite matrix (D, D). Residuals of the form
    r(x) = B (x * x) - y (diagonal nets, the hyperbola: ``least_squares.quadratic``) with S diagonal: the
    flow's limit is computed exactly by damped Newton on its convex dual (``_dual_flow_limit``; S ~ 1/eps
    makes the flow itself stiff, not the dual). Otherwise the flow is integrated with an adaptive Tsit5
    solver until the point is within flow_tol of Gamma (the Gauss-Newton step's length for least squares,
    |S grad L| for other losses) or ``max_steps`` run out. Either way it is finished with Newton
    steps along S * normal directions (``newton_retraction_step``; for a loss without residuals the
    normals come from the Hessian at the current point, cut at ``rank``, else at the largest spectral gap
    for the first step and by the rank rule after it).

    Convergence is decided by the Newton finish, independently of the scale of L and S: the last step moved
    x by at most tol * max(1, |x|), and the first one (the distance d from the flow's end to Gamma, to which
    the end point's error is O(d^2)) by at most sqrt(tol * max(1, |x|)); without residuals, also
    |grad L| <= tol * max(1, |x|) * |H|_2 at the end. Returns ``(x, status)``: status 0
    when converged, else a key of ``PROJECTION_STATUS`` saying why not. jit/vmap-able.
    """
    quad = least_squares.quadratic if least_squares is not None and jnp.ndim(S) == 1 else None
    if quad is not None:  # the exact limit; no Newton finish (near the sparse corner it would add rounding noise)
        w = least_squares.sample_weights(theta)
        x, done = _dual_flow_limit(theta, jnp.asarray(S, theta.dtype), quad[0], quad[1], w, tol, max_steps)
        status = jnp.where(~jnp.all(jnp.isfinite(jnp.asarray(S))), 1,
                           jnp.where(~jnp.all(jnp.isfinite(x)), 2, jnp.where(~done, 3, PROJECTION_OK)))
        return x, status
    x = _flow_end(loss, theta, S, max_steps, least_squares, flow_tol)
    steps = []
    for i in range(newton_steps):
        # without residuals: normals at the current point, by the spectral gap at the flow's end (tangent
        # eigenvalues O(flow_tol) there), then by the rank rule once the point sits on Gamma to rounding
        normals = None if least_squares is not None else normal_frame(jax.hessian(loss)(x), S, rank, gap=i == 0)
        x_prev, x = x, newton_retraction_step(loss, x, S, least_squares=least_squares, normals=normals)
        steps.append(jnp.linalg.norm(x - x_prev))
    scale = jnp.maximum(1.0, jnp.linalg.norm(x))
    settled = steps[-1] <= tol * scale
    if least_squares is None:  # the normals may be empty (H = 0): also ask for a stationary point, |g| / |H| small
        H = jax.hessian(loss)(x)
        settled &= jnp.linalg.norm(jax.grad(loss)(x)) <= tol * scale * jnp.max(jnp.abs(jnp.linalg.eigvalsh(H)))
    near = steps[0] <= jnp.sqrt(tol * scale)
    status = jnp.where(~jnp.all(jnp.isfinite(jnp.asarray(S))), 1,
                       jnp.where(~jnp.all(jnp.isfinite(x)), 2,
                                 jnp.where(~near, 3, jnp.where(~settled, 4, PROJECTION_OK))))
    return x, status


@eqx.filter_jit
def _project_batch(loss, theta, S, tol, max_steps, least_squares, rank):
    """project_flow over a batch (N, D). Compiled once per loss: methods of problems (equinox Modules) are
    pytrees, so a new problem with the same structure reuses the compiled function."""
    return map_paths(lambda a: project_flow(loss, a[0], a[1], tol, max_steps, least_squares=least_squares,
                                            rank=rank), (theta, S), factorized_size(theta[0], least_squares))


def _project_in_groups(loss, theta, S, tol, max_steps, least_squares, rank, progress):
    """``_project_batch`` over (N, D) points in groups, with a progress bar over the points. On the CPU a group
    holds ``safe_batch`` points (what ``map_paths`` would vmap at once), and a last, smaller group is padded
    with copies of its first point up to a power of two, so that a few compiled sizes serve every N."""
    n = theta.shape[0]
    group = safe_batch(factorized_size(theta[0], least_squares)) if jax.default_backend() == "cpu" else n
    bar = progress_bar(n, "projection onto Gamma", progress=progress, unit="point")
    xs, statuses = [], []
    for i in range(0, n, group):
        k = min(group, n - i)
        size = k if n <= group else min(group, 1 << (k - 1).bit_length())
        take = np.concatenate([np.arange(i, i + k), np.full(size - k, i)])
        x, status = _project_batch(loss, theta[take], S[take], tol, max_steps, least_squares, rank)
        xs.append(np.asarray(x)[:k])
        statuses.append(np.asarray(status)[:k])
        bar.update(k)
    bar.close()
    return np.concatenate(xs), np.concatenate(statuses)


def projection_failure_message(status: ArrayLike, max_steps: int) -> str:
    """One line naming how many points failed and why, from an array of project_flow statuses."""
    status = np.asarray(status).ravel()
    parts = []
    for code, why in PROJECTION_STATUS.items():
        k = int(np.sum(status == code))
        if k:
            parts.append(f"{k} point(s): {why}" + (f" [max_steps={max_steps}]" if code == 3 else ""))
    return "; ".join(parts)


def _check_project_args(loss, theta, S, least_squares, dim):
    """theta and S as float arrays, checked against the loss: ConfigError for non-numbers, a scalar theta, a
    last axis that is not ``dim`` (when given), or a loss that is not a scalar."""
    theta = as_float_array("theta", theta, None)
    theta = theta.astype(_precision.default_float()) if not jnp.issubdtype(theta.dtype, jnp.floating) else theta
    S = as_float_array("S", S, theta.dtype)
    if theta.ndim == 0 or theta.shape[-1] == 0:
        raise ConfigError("theta", f"must be a vector (D,) or a batch (..., D), got shape {tuple(theta.shape)}")
    D = theta.shape[-1]
    if dim is not None and dim != D:
        raise ConfigError("theta", f"the last axis must have the problem's dimension D = {dim}, got shape "
                                   f"{tuple(theta.shape)}")
    try:
        out = jax.eval_shape(loss, jax.ShapeDtypeStruct((D,), theta.dtype))
    except (TypeError, ValueError, IndexError) as e:
        raise ConfigError("theta", f"the loss cannot be evaluated at a point of shape ({D},): {e}") from None
    if getattr(out, "shape", None) != ():
        raise ConfigError("loss", f"must return a scalar, got {getattr(out, 'shape', type(out).__name__)}")
    if least_squares is not None and least_squares.weights is not None:
        n = jax.eval_shape(least_squares.residuals, jax.ShapeDtypeStruct((D,), theta.dtype)).shape
        if jnp.shape(least_squares.weights) != n:
            raise ConfigError("least_squares", f"its weights must have the residuals' shape {n}, got "
                                               f"{jnp.shape(least_squares.weights)}")
    return theta, S


def project(loss: LossFn, theta: Float[ArrayLike, "*batch D"], S: ArrayLike, tol: float = 1e-10,
            max_steps: int = 100_000, *, least_squares: Optional[LeastSquares] = None, rank: RankArg = None,
            dim: Optional[int] = None, progress: Optional[bool] = None) -> Float[Array, "*batch D"]:
    """Phi_S(theta) (see ``project_flow``); raises ``ProjectionError`` naming the cause when a point
    does not converge.

    ``theta`` may carry leading batch axes (..., D); ``S`` is then either shared ((D,) or (D, D)) or given per
    point (shape (..., D) or (..., D, D)). ``least_squares``: the declared structure (``problem.least_squares()``);
    ``rank``: the codimension of Gamma for a loss without residuals; ``max_steps``: the flow's step budget per
    point; ``dim``: the problem's D, checked against theta's last axis (``observables.at_projection`` passes it);
    ``progress``: a bar over the points (None: shown in a terminal or notebook, see ``slowsde_jax.progress``).
    """
    theta, S = _check_project_args(loss, theta, S, least_squares, dim)
    check_range("tol", tol, low=0.0, low_open=True)
    check_int("max_steps", max_steps, 1)
    if S.shape[-1:] == theta.shape[-1:] and not (S.ndim >= 2 and S.shape[-2:] == (theta.shape[-1],) * 2) \
            and np.any(np.asarray(S) <= 0):
        raise ConfigError("S", "a diagonal preconditioner must be positive")
    batch, D = theta.shape[:-1], theta.shape[-1]
    if rank is not None:
        check_int("rank", rank, 1)
        if rank > D:
            raise ConfigError("rank", f"the codimension of Gamma is at most D = {D}, got {rank}")
    th = theta.reshape(-1, D)
    if S.shape in (theta.shape, theta.shape + (D,)):  # one S per point (diagonal or matrix)
        s = S.reshape((th.shape[0],) + S.shape[len(batch):])
    elif S.shape in ((D,), (D, D)):  # one shared S
        s = jnp.broadcast_to(S, (th.shape[0],) + S.shape)
    else:
        raise ConfigError("S", f"must have shape ({D},), ({D}, {D}), {tuple(theta.shape)} or "
                               f"{tuple(theta.shape) + (D,)} for theta of shape {tuple(theta.shape)}, got {tuple(S.shape)}")
    x, status = _project_in_groups(loss, th, s, tol, max_steps, least_squares, rank, progress)
    x, status = x.reshape(theta.shape), np.asarray(status).reshape(batch)
    if np.any(status != PROJECTION_OK):
        raise ProjectionError(f"the projection onto Gamma did not converge (tolerance {tol}) for "
                              + projection_failure_message(status, max_steps))
    return jnp.asarray(x)
