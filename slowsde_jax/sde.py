"""The slow-SDE engine (the slow SDE and its label-noise ODE) on diffrax.

State: the pytree y = (zeta, v), each (D,), on the SDE clock t:

    d zeta = dPhi_S ( Sigma_par^{1/2} dW - 1/2 S grad^3 L[Sigma_diamond] dt ) + Ito correction
    d v    = c ( V(Sigma(zeta)) - v ) dt,        S = S(v)

The problem, noise and method reach the vector fields through diffrax's ``args`` (a :class:`SlowSDEModel`).

- General noise: projected Euler-Maruyama with fixed steps. :class:`SlowSDETerm` returns the drift and the
  diffusion dPhi_S S Sigma^{1/2} (tangent noise only, A A^T = Sigma_par) from one evaluation of the geometry,
  and :class:`RetractingSolver` wraps diffrax's Euler and retracts zeta onto Gamma after every step (Newton
  steps along S * normal directions, :func:`retract_onto_gamma`); the retraction's second-order part
  supplies the Ito correction. Brownian increments come from a
  :class:`~slowsde_jax.brownian.GridBrownianPath`, one key per path. With ``richardson=True`` the SDE is
  solved at steps h and 2 h on the same Brownian path (h <= dt: the step that divides the recording
  interval into an even number of steps) and the observables are extrapolated per path,
  2 f(zeta^{h}) - f(zeta^{2h}): weak error O(h^2) instead of O(h).
- Label noise (Sigma = alpha H on Gamma): no diffusion; the ODE d zeta/dt = -(alpha/4) dPhi_S S grad^3 L[S]
  is integrated with an adaptive solver (Tsit5 by default); on diagonal nets with an AGM in (log|x|, log v),
  where the stiffness near u_j v_j = 0 (S ~ 1/eps) disappears; with an AGM on other problems the field
  reads coordinates below the solver's tolerance as 0, so that coordinates driven to 0 (a factorization's
  dead columns) stop being a stiff mode; the saved states are retracted onto Gamma.

:func:`simulate_slow_sde` validates, schedules the recording grid, runs one ``diffeqsolve`` with
``SaveAt(ts=...)`` per group of paths and segment of records (all records at once unless checkpointing),
and packages a :class:`~slowsde_jax.trajectory.Trajectory`. SGD is the case S = I with v not evolving.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Union

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, PyTree

from . import geometry as geo
from ._io import atomic_write, read_npz
from .brownian import GridBrownianPath
from .validation import ConfigError, check_bool, check_int, check_optional_bool, check_range, suggest
from ._batching import factorized_size, map_paths
from ._runtime_checks import check_time_grid, host_checked
from .inputs import check_path, explain_start_failure, initial_v, parse_inputs, run_meta
from .methods import Method
from .noise import AbstractNoise
from .problems import AbstractProblem, observe_batch
from .trajectory import Trajectory

__all__ = ["simulate_slow_sde", "slow_sde_coefficients", "label_noise_vector_field", "SlowSDEModel", "SlowSDETerm",
           "RetractingSolver", "retract_onto_gamma", "sde_coefficients", "label_noise_ode_field", "SOLVERS"]

State = tuple[Float[Array, "D"], Float[Array, "D"]]  # the slow SDE's state y = (zeta, v)


# ----- the coefficients -----------------------------------------------------------------------------------------
def _v_rate(problem: AbstractProblem, noise: AbstractNoise, method: Method, zeta: Float[Array, "D"],
           v: Float[Array, "D"], c: ArrayLike) -> Float[Array, "D"]:
    """dv/dt = c (V(Sigma(zeta)) - v), shape (D,): v relaxes at the rate c towards its equilibrium at zeta;
    0 for methods without v (SGD)."""
    if not method.has_v:
        return jnp.zeros_like(v)
    return c * (method.for_problem(problem).V(noise.covariance_diag(problem, zeta)) - v)


def slow_sde_coefficients(problem: AbstractProblem, noise: AbstractNoise, method: Method, zeta: Float[Array, "D"],
                          v: Float[Array, "D"], c: ArrayLike, rank: Optional[int] = None,
                          structured: Optional[bool] = None
                          ) -> tuple[Float[Array, "D"], Float[Array, "D"], Float[Array, "D K"]]:
    """Drift of (zeta, v) (each (D,)) and the tangent diffusion factor A (D, K) at a point zeta of Gamma, with
    A A^T = Sigma_par and K the width of the noise's covariance factor G (G G^T = Sigma).

    Least squares (the problem has residuals, r = 0 on Gamma): in sample space, with n x n solves and
    Jacobian-vector products (:func:`slowsde_jax.geometry.ls_slow_sde_coefficients`), no D x D matrix unless
    G is one. Any other loss, or ``structured=False``: dense geometry (Hessian, eigendecompositions), for D
    up to a few hundred. The two agree to rounding (tests/test_structured_geometry.py).
    """
    S = method.S(v)
    G = noise.covariance_factor(problem, zeta)
    residuals, weights = problem.residual_parts()
    if residuals is not None and structured is not False:
        drift, A = geo.ls_slow_sde_coefficients(residuals, weights, zeta, S, G, rank)
    else:
        H = geo.hessian(problem.loss, zeta)
        P = geo.projection_jacobian(H, S, rank)
        X = geo.sigma_diamond(H, G @ G.T, S, rank)
        drift = -0.5 * P @ (S * geo.third_derivative_contraction(problem.loss, zeta, X))
        A = P @ (S[:, None] * G)
    dv = _v_rate(problem, noise, method, zeta, v, c)
    return drift, dv, A


def label_noise_vector_field(problem: AbstractProblem, noise: AbstractNoise, method: Method, zeta: Float[Array, "D"],
                             v: Float[Array, "D"], c: ArrayLike, alpha: ArrayLike) -> State:
    """(d zeta/dt, dv/dt) of the label-noise ODE (docs/math.md#label-noise-ode), structured for least squares."""
    S = method.S(v)
    residuals, weights = problem.residual_parts()
    dz = geo.label_noise_drift(problem.loss, zeta, S, alpha, residuals=residuals, weights=weights)
    dv = _v_rate(problem, noise, method, zeta, v, c)
    return dz, dv


# ----- diffrax pieces ----------------------------------------------------------------------------------------------
class SlowSDEModel(eqx.Module):
    """What the vector fields need, passed to diffrax as ``args``: the problem, noise and method, the rate ``c``
    of the v-equation, ``alpha`` (Sigma = alpha H, label noise; None for the general SDE) and ``rank`` (the
    codimension of Gamma, None for the rank rule)."""

    problem: Any
    noise: Any
    method: Any
    c: Any
    alpha: Any = None
    rank: Optional[int] = eqx.field(static=True, default=None)


def sde_coefficients(t: ArrayLike, y: State, model: SlowSDEModel) -> tuple[State, Float[Array, "D K"]]:
    """((d zeta/dt, dv/dt), A) at y = (zeta, v), zeta on Gamma: the drift pytree and the tangent diffusion A
    (D, K) with A A^T = Sigma_par."""
    zeta, v = y
    b, dv, A = slow_sde_coefficients(model.problem, model.noise, model.method, zeta, v, model.c, model.rank)
    return (b, dv), A


def label_noise_ode_field(t: ArrayLike, y: State, model: SlowSDEModel) -> State:
    """(d zeta/dt, dv/dt) of the label-noise ODE at y = (zeta, v)."""
    zeta, v = y
    return label_noise_vector_field(model.problem, model.noise, model.method, zeta, v, model.c, model.alpha)


class SlowSDETerm(diffrax.AbstractTerm):
    """One term for the whole SDE on the state y = (zeta, v): ``vf`` gives the drift pytree and the diffusion
    A (D, D) from one geometry evaluation (the model comes in ``args``), ``contr`` gives (dt, dW), ``prod``
    combines them into (b_zeta dt + A dW, b_v dt). Saves evaluating the geometry twice per step."""

    brownian: diffrax.AbstractBrownianPath

    def vf(self, t: ArrayLike, y: State, args: SlowSDEModel) -> tuple[State, Float[Array, "D K"]]:
        return sde_coefficients(t, y, args)

    def contr(self, t0: ArrayLike, t1: ArrayLike, **kwargs: Any) -> tuple[ArrayLike, Float[Array, "K"]]:
        return t1 - t0, self.brownian.evaluate(t0, t1)

    def prod(self, vf: tuple[State, Float[Array, "D K"]], control: tuple[ArrayLike, Float[Array, "K"]]) -> State:
        ((b, bv), A), (dt, dW) = vf, control
        return b * dt + A @ dW, bv * dt


def retract_onto_gamma(y0: State, y1: State, model: SlowSDEModel) -> State:
    """y1 = (zeta, v) back onto Gamma by three Newton steps along S(v) * normal directions. Least squares:
    normals from the residual Jacobian (with the sample weights). Any other loss: the normals of Gamma at
    y0's zeta, a point of Gamma (cut at ``model.rank`` or by the rank rule), never the Hessian's eigenvectors
    at y1, whose tangent eigenvalues are O(|y1 - y0|) and would bend the step tangentially."""
    problem = model.problem
    residuals, weights = problem.residual_parts()
    zeta, v = y1
    S = model.method.S(v)
    normals = None if residuals is not None else geo.normal_frame(geo.hessian(problem.loss, y0[0]), S, model.rank)
    for _ in range(3):  # quadratic convergence: a displacement of 1e-2 lands within rounding
        zeta = geo.newton_retraction_step(problem.loss, zeta, S, residuals=residuals, weights=weights, normals=normals)
    return zeta, v


class _AbstractPostStepSolver(diffrax.AbstractWrappedSolver):
    """A solver that runs ``solver``'s step and then post-processes it (``step`` in subclasses); everything
    else is forwarded to ``solver``."""

    solver: diffrax.AbstractSolver

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):
        return self.solver.interpolation_cls

    @property
    def term_compatible_contr_kwargs(self):
        return self.solver.term_compatible_contr_kwargs

    @property
    def root_finder(self):
        """The wrapped implicit solver's root finder: diffrax reads it through the wrapper (a wrapped implicit
        solver is an ``AbstractImplicitSolver`` to ``isinstance``); see :func:`_with_root_tolerances`."""
        return self.solver.root_finder

    def order(self, terms):
        return self.solver.order(terms)

    def strong_order(self, terms):
        return self.solver.strong_order(terms)

    def init(self, terms, t0, t1, y0, args):
        return self.solver.init(terms, t0, t1, y0, args)

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


class RetractingSolver(_AbstractPostStepSolver):
    """Wraps a diffrax solver (Euler for the Ito SDE) and retracts the state onto Gamma after every step with
    ``retract(y0, y1, args)``, where y0 (on Gamma) is the step's start and y1 its end. Dense output is linear
    between the retracted points."""

    retract: Callable = retract_onto_gamma

    @property
    def interpolation_cls(self) -> type[diffrax.LocalLinearInterpolation]:
        return diffrax.LocalLinearInterpolation

    def step(self, terms: PyTree[diffrax.AbstractTerm], t0: ArrayLike, t1: ArrayLike, y0: State, args: Any,
             solver_state: Any, made_jump: ArrayLike
             ) -> tuple[State, Optional[State], dict[str, State], Any, diffrax.RESULTS]:
        y1, err, _, state, result = self.solver.step(terms, t0, t1, y0, args, solver_state, made_jump)
        y1 = self.retract(y0, y1, args)
        return y1, err, dict(y0=y0, y1=y1), state, result


# ----- one segment of records (jitted, vmapped over paths) ----------------------------------------------------------
@eqx.filter_jit
def _sde_segment(model, solver, y, keys, t_steps, t_save, h, substeps):
    """Projected Euler-Maruyama over the fixed step times ``t_steps`` (n_steps + 1,) for every path; the
    states at ``t_save`` (step times). The Brownian path of each key lives on the grid of spacing ``h``
    (:class:`~slowsde_jax.brownian.GridBrownianPath`; a step covers ``substeps`` grid intervals), so a run cut
    into segments, or run with twice the step, draws the same path as one fine run in a single call."""

    K = jax.eval_shape(lambda z: model.noise.covariance_factor(model.problem, z), y[0][0]).shape[1]  # dim of W

    def one(y0, key):
        sol = diffrax.diffeqsolve(
            SlowSDETerm(GridBrownianPath((K,), key, h, substeps)), RetractingSolver(solver),
            t0=t_steps[0], t1=t_steps[-1], dt0=None, y0=y0, args=model,
            stepsize_controller=diffrax.StepTo(ts=t_steps), saveat=diffrax.SaveAt(ts=t_save),
            adjoint=diffrax.ForwardMode(), max_steps=t_steps.shape[0] - 1, throw=False)
        return sol.ys, sol.result == diffrax.RESULTS.successful

    return map_paths(lambda a: one(*a), (y, keys), _matrix_size(model))


class _ErrorInX(_AbstractPostStepSolver):
    """Wraps the solver of the label-noise ODE in log coordinates z = log|x| (and log v): reports the step's
    error as the error of x = exp(z), rescaled so that the controller's test
    |err| <= atol + rtol |z| becomes |x| |dz| <= atol + rtol |x|. A coordinate that has decayed to 1e-40
    then no longer limits the step through the rounding noise of its rate."""

    rtol: float
    atol: float

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


def _with_root_tolerances(solver, rtol, atol, norm):
    """An implicit ``solver`` whose root finder takes the controller's ``rtol``/``atol`` where it was left to
    take them from the controller (diffrax fills them in only for an unwrapped solver); others unchanged."""
    if not isinstance(solver, diffrax.AbstractImplicitSolver):
        return solver
    from diffrax._root_finder import use_stepsize_tol

    given = {"rtol": rtol, "atol": atol, "norm": norm}
    for attr, value in given.items():
        if getattr(solver.root_finder, attr) is use_stepsize_tol:
            solver = eqx.tree_at(lambda s: getattr(s.root_finder, attr), solver, value)
    return solver


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


def _label_noise_log_field(t, z, args):
    """The label-noise ODE in z = [log|x|; log v] (2D,) for residuals r = B (x * x) - y: d log|x|/dt = h with
    x * h the drift (:func:`slowsde_jax.geometry.quadratic_label_noise_rate`), d log v/dt = c (V/v - 1).
    ``args`` = (model, sign of x)."""
    model, sign = args
    problem, method, D = model.problem, model.method, model.problem.dim
    B, y_lab = geo.quadratic_structure(problem.residual_parts()[0])
    w = problem.residual_parts()[1]
    x, v = sign * jnp.exp(jnp.maximum(z[:D], _LOG_FLOOR)), jnp.exp(z[D:])
    h = geo.quadratic_label_noise_rate(B, y_lab, w, x, method.S(v), model.alpha)
    return jnp.concatenate([h, model.c * (method.for_problem(problem).V(model.noise.covariance_diag(problem, x)) / v - 1.0)])


ZERO_FLOOR_ATOLS = 10.0  # the label-noise ODE of an AGM reads |zeta_i| below this many atol as 0
# The default ODE solver's step budget per compiled call before it hands a path to the IMEX solver: a stiff
# stretch holds Tsit5 at its stability limit until any budget runs out. (On experiment 2's factorization,
# seed 2, Tsit5 took about 3 000 steps from t = 0 to 40, at most 1 926 in one interval of length 2.)
EXPLICIT_STEPS_BEFORE_IMEX = 20_000


def _label_noise_field_with_floor(t: ArrayLike, y: State, args: tuple[SlowSDEModel, ArrayLike]) -> State:
    """The label-noise ODE field evaluated at zeta with every coordinate |zeta_i| <= floor read as 0, where
    floor = min(floor_abs, rel max_j |zeta_j|); ``args`` = (model, floor_abs, rel). By default floor_abs =
    10 atol (:data:`ZERO_FLOOR_ATOLS`) and rel = rtol (see :func:`simulate_slow_sde`'s ``zero_floor``).
    Used for AGMs on problems without the diagonal net's log coordinates.

    Why: an AGM drives coordinates whose noise vanishes (a factorization's dead column pair u_k = v_k = 0)
    to 0 while their S_i grows towards 1/eps; their linearised decay rate grows like S^2 (1e5 at S ~ 1e3), so
    an explicit solver holds them at its noise level ~ atol and takes steps of 1/rate for ever after. Read as
    0 they drop out of the field exactly (their Jacobian columns vanish, so the set where they are 0 is
    invariant and their rate is exactly 0), and the stiff mode is gone. The field moves by at most the
    Lipschitz constant times the floor, which is within the solver's own tolerance on the rest of the state;
    a coordinate that is small but not held at 0 (one crossing 0, or growing from 0) still
    gets its rate from the rest of the state and moves on."""
    model, floor_abs, rel = args
    zeta, v = y
    floor = jnp.minimum(floor_abs, rel * jnp.max(jnp.abs(zeta)))
    return label_noise_ode_field(t, (jnp.where(jnp.abs(zeta) <= floor, 0.0, zeta), v), model)


@eqx.filter_custom_jvp
def _drift_with_stiff_jvp(zeta: Float[Array, "D"], S: Float[Array, "D"], model: SlowSDEModel) -> Float[Array, "D"]:
    """The label-noise drift -(alpha/4) dPhi_S S grad^3 L[S] at zeta, shape (D,), whose derivative in zeta is
    the stiff part only (:func:`_label_noise_stiff_matrix`; the derivatives in S and the model are dropped)."""
    residuals, weights = model.problem.residual_parts()
    return geo.label_noise_drift(model.problem.loss, zeta, S, model.alpha, residuals=residuals, weights=weights)


@_drift_with_stiff_jvp.def_jvp
def _drift_with_stiff_jvp_jvp(primals, tangents):
    zeta, S, model = primals
    drift = _drift_with_stiff_jvp(zeta, S, model)
    if tangents[0] is None:
        return drift, jnp.zeros_like(drift)
    # The matrix depends on the primals only: under jacfwd or linearize it is formed once, and each tangent
    # costs one matrix-vector product.
    return drift, _label_noise_stiff_matrix(zeta, S, model) @ tangents[0]


def _label_noise_stiff_matrix(zeta: Float[Array, "D"], S: Float[Array, "D"], model: SlowSDEModel
                              ) -> Float[Array, "D D"]:
    """-(alpha/4) dPhi_S S grad^2 phi (D, D), phi(zeta) = tr(S J^T W J) (:func:`slowsde_jax.geometry.
    ls_gn_trace_hessian`, in closed form where the problem declares one) with dPhi_S and S frozen: the stiff
    part of the derivative of the label-noise drift of an AGM on least squares."""
    residuals, weights = model.problem.residual_parts()
    J = geo.ls_jacobian(residuals, zeta)
    curvature = S[:, None] * geo.ls_gn_trace_hessian(residuals, weights, zeta, S)
    return -(model.alpha / 4.0) * geo.ls_apply_projection(J, weights, S, curvature)


def _label_noise_implicit_drift(t: ArrayLike, y: State, model: SlowSDEModel) -> State:
    """The implicit half of the IMEX split of the label-noise ODE of an AGM on least squares: (d zeta/dt, 0).

    Its value is the exact drift. Its derivative, which diffrax's implicit stages take by ``jacfwd``, is the
    stiff part -(alpha/4) dPhi_S S grad^2 phi with phi(zeta) = tr(S J^T W J), the preconditioned Gauss-Newton
    trace (:func:`_label_noise_stiff_matrix`), with dPhi_S and S frozen at the evaluation point: one (D, D)
    matrix per Jacobian, then a product per column (a custom JVP), and nothing for the v half. Its
    eigenvalues grow like S^2 where an AGM drives coordinates towards 0 (S -> 1/eps). The derivative of
    dPhi_S is left out (D more passes through the Gram solve): an inexact Jacobian changes how fast the
    stage's Newton iteration converges, not the root it converges to, since the stage equations use the
    exact drift."""
    zeta, v = y
    return _drift_with_stiff_jvp(zeta, jax.lax.stop_gradient(model.method.S(v)), model), jnp.zeros_like(v)


def _label_noise_explicit_v(t: ArrayLike, y: State, model: SlowSDEModel) -> State:
    """The explicit half of the IMEX split: (0, dv/dt). v relaxes at the rate c, which is not stiff."""
    zeta, v = y
    return jnp.zeros_like(zeta), _v_rate(model.problem, model.noise, model.method, zeta, v, model.c)


IMEX_SOLVERS = (diffrax.KenCarp3, diffrax.KenCarp4, diffrax.KenCarp5)


def _imex_applies(problem: AbstractProblem, method: Method) -> bool:
    """Whether the IMEX split applies to the label-noise ODE: an AGM (it has v) on least squares, except the
    diagonal nets, whose ODE runs in log coordinates (:func:`_ode_in_log_coordinates`) that remove the
    stiffness instead."""
    return method.has_v and problem.residual_parts()[0] is not None and not _ode_in_log_coordinates(problem, method)


def imex_kencarp4(rtol: float = 1e-8, atol: float = 1e-10) -> diffrax.KenCarp4:
    """KenCarp4 (IMEX) whose implicit stages each take a fresh Jacobian (optimistix's chord iteration, one
    Jacobian per stage), the solver ``solver="kencarp4"`` names. diffrax's default keeps one Jacobian for a
    whole step; on the label-noise ODE the stiff rates move with the state within a step, and it then fails on
    most steps (749 rejected of 1381 on the 5 x 5 factorization of tests/test_ode_zero_floor.py, t = 0 ...
    0.5, against 6 of 94 with a fresh Jacobian). A full Newton iteration gives the same answers at 1.7 times
    the cost. The iteration's tolerances are ``rtol`` and ``atol`` / 100."""
    return diffrax.KenCarp4(root_finder=optx.Chord(rtol=rtol / 100, atol=atol / 100))


@eqx.filter_jit
def _ode_segment(model, solver, controller, y, t_save, max_steps, floor=(0.0, 0.0)):
    """The label-noise ODE from t_save[0] through t_save[1:] (shape (m + 1,), or (P, m + 1): one grid per
    path, whose repeated leading times save the start) for every path, one adaptive solve; each saved
    state retracted onto Gamma (the exact flow keeps Gamma invariant, so this only removes solver error).
    On diagonal nets with an AGM the solve runs in (log|x|, log v) (:func:`_ode_in_log_coordinates`); with
    an AGM elsewhere the field reads coordinates below the solver's tolerance as 0
    (:func:`_label_noise_field_with_floor`; ``floor`` = (floor_abs, rel), two scalars)."""
    problem, D = model.problem, model.problem.dim
    log = _ode_in_log_coordinates(problem, model.method)
    if log:
        rtol, atol = getattr(controller, "rtol", 1e-8), getattr(controller, "atol", 1e-10)
        norm = getattr(controller, "norm", optx.rms_norm)
        solver = _ErrorInX(_with_root_tolerances(solver, rtol, atol, norm), rtol, atol)

    def one(y0, t_save):
        if log:
            sign = jnp.where(y0[0] < 0, -1.0, 1.0).astype(y0[0].dtype)
            z0 = jnp.log(jnp.maximum(jnp.abs(jnp.concatenate(y0)), _TINY))
            z0 = z0.at[:D].set(jnp.maximum(z0[:D], _LOG_FLOOR))
            term, start, args = diffrax.ODETerm(_label_noise_log_field), z0, (model, sign)
        elif isinstance(solver, IMEX_SOLVERS):
            term, start, args = diffrax.MultiTerm(diffrax.ODETerm(_label_noise_explicit_v),
                                                  diffrax.ODETerm(_label_noise_implicit_drift)), y0, model
        elif model.method.has_v:
            term, start, args = diffrax.ODETerm(_label_noise_field_with_floor), y0, (model, *floor)
        else:
            term, start, args = diffrax.ODETerm(label_noise_ode_field), y0, model
        sol = diffrax.diffeqsolve(term, solver, t0=t_save[0], t1=t_save[-1], dt0=None, y0=start, args=args,
                                  stepsize_controller=controller, saveat=diffrax.SaveAt(ts=t_save[1:]),
                                  max_steps=max_steps, throw=False)
        ys = (sign * jnp.exp(sol.ys[:, :D]), jnp.exp(sol.ys[:, D:])) if log else sol.ys
        ys = jax.vmap(lambda y1: retract_onto_gamma(y1, y1, model))(ys)
        return ys, sol.result == diffrax.RESULTS.successful

    if t_save.ndim == 2:  # a save grid per path
        return map_paths(lambda a: one(*a), (y, t_save), _matrix_size(model))
    return map_paths(lambda y0: one(y0, t_save), y, _matrix_size(model))


def _ode_call(model, solver, fallback, controller, y, t_save, max_steps, floor, on_imex):
    """One compiled call of the label-noise ODE for a group of P paths from the states ``y`` at t_save[0]
    through t_save[1:] (m + 1,), with the default solver's IMEX ``fallback`` (None: ``solver`` alone).
    ``on_imex`` (P,) bool: the paths already handed to the fallback. Returns (((zeta, v) records (P, m, D),
    solved (P,)), the new ``on_imex``, the number of solves the fallback made).

    A group with a path on the fallback runs on it (a stiffness that held Tsit5 does not go away). Otherwise
    ``solver`` gets at most :data:`EXPLICIT_STEPS_BEFORE_IMEX` steps, and a path whose solve fails is solved
    again by the fallback from its last record before the failure (the call's start if there is none): the
    records it reached are kept. A path that did not fail runs only its last interval there (from its record
    m - 1; the result is discarded), so that under ``vmap`` it does not set the solve's length. Every
    fallback solve takes a save grid per path, so the fallback compiles once per number of records."""
    m, steps = len(t_save) - 1, max_steps * (len(t_save) - 1)
    t_save = np.asarray(t_save)
    if fallback is not None and on_imex.any():
        with host_checked():
            seg = _ode_segment(model, fallback, controller, y, jnp.asarray(np.tile(t_save, (len(on_imex), 1))),
                               steps)
        return seg, on_imex, len(on_imex)
    with host_checked():
        seg = _ode_segment(model, solver, controller, y, jnp.asarray(t_save),
                           steps if fallback is None else min(steps, EXPLICIT_STEPS_BEFORE_IMEX), floor)
    (zeta, v), solved = jax.tree_util.tree_map(np.asarray, seg)
    if fallback is None or solved.all():
        return seg, on_imex, 0
    reached = np.argmin(np.concatenate([_finite_records(zeta, v), np.zeros((len(solved), 1), bool)], axis=1),
                        axis=1)  # records before the first non-finite one
    k = np.where(solved, m - 1, np.minimum(reached, m - 1))  # restart from record k - 1 (or the start) at t_k
    start = tuple(np.where((k > 0)[:, None], rec[np.arange(len(k)), np.maximum(k - 1, 0)], np.asarray(y0))
                  for rec, y0 in ((zeta, y[0]), (v, y[1])))
    ts = np.maximum(t_save[None, :], t_save[k][:, None])  # (P, m + 1), from t_k on
    with host_checked():
        (z2, v2), ok2 = jax.tree_util.tree_map(np.asarray, _ode_segment(
            model, fallback, controller, tuple(jnp.asarray(a) for a in start), jnp.asarray(ts), steps))
    redone = ~solved[:, None] & (np.arange(m)[None, :] >= k[:, None])  # (P, m): records taken from the redo
    return (((np.where(redone[..., None], z2, zeta), np.where(redone[..., None], v2, v)), solved | ok2),
            on_imex | ~solved, int(np.sum(~solved)))


def _finite_records(zeta, v):
    """(P, m) bool: the records (P, m, D) of zeta and v whose entries are all finite."""
    return np.all(np.isfinite(zeta), axis=2) & np.all(np.isfinite(v), axis=2)


@eqx.filter_jit
def _initial_state(model, theta0, v0_mode, v0, keys, max_steps):
    """(zeta(0), v(0)) per path and the projection's status: v from the one initial-state rule at theta0,
    zeta = Phi_{S(v)}(theta0), then v again at zeta for the equilibrium start."""
    problem, noise, method = model.problem, model.noise, model.method
    residuals, weights = problem.residual_parts()

    def one(key):
        th = problem.init(jax.random.split(key)[0]) if theta0 is None else theta0
        v = initial_v(problem, noise, method, th, v0_mode, v0)
        v = jnp.zeros_like(th) if v is None else v  # SGD: S = I, v is a placeholder that never moves
        zeta, status = geo.project_flow(problem.loss, th, method.S(v), max_steps=max_steps, residuals=residuals,
                                        weights=weights, rank=model.rank)
        if method.has_v and v0_mode == "equilibrium":
            v = initial_v(problem, noise, method, zeta, v0_mode)
        return (zeta, v), status

    return map_paths(one, keys, _matrix_size(model))


def _matrix_size(model) -> int:
    """The largest matrix factorized per path and step (:func:`slowsde_jax._batching.factorized_size`); D x D
    when the noise factor is recomputed from a covariance function."""
    theta = jnp.zeros(model.problem.dim)
    if getattr(model.noise, "cov_fn", None) is not None:
        return model.problem.dim
    return factorized_size(theta, model.problem.residual_parts()[0])


# ----- the front end: validate, schedule, loop, package ------------------------------------------------------------
# name -> solver from the ODE's (rtol, atol), which only the IMEX solver's stage iteration uses
SOLVERS = {"euler": lambda rtol, atol: diffrax.Euler(), "tsit5": lambda rtol, atol: diffrax.Tsit5(),
           "kvaerno5": lambda rtol, atol: diffrax.Kvaerno5(), "kencarp4": imex_kencarp4}


SDE_SOLVER_NAMES = ("euler",)  # the general slow SDE: projected Euler-Maruyama only
ODE_SOLVER_NAMES = ("tsit5", "kvaerno5", "kencarp4")  # the label-noise ODE


def _solver(solver, ode: bool, rtol: float, atol: float):
    """A diffrax solver for the general SDE (``ode`` False) or the label-noise ODE, from an instance, a name,
    or None (the engine's default); ConfigError("solver") for anything that does not give that engine's
    scheme.

    The general slow SDE is an Ito SDE integrated by projected Euler-Maruyama: diffrax's ``Euler`` with a
    retraction after each step. Any other diffrax solver would converge to another solution (Runge-Kutta
    stages reuse one Brownian increment: a Stratonovich scheme), so it is refused. The label-noise ODE
    takes an adaptive ODE solver (an error estimate for its step-size controller), not an SDE solver."""
    names = ODE_SOLVER_NAMES if ode else SDE_SOLVER_NAMES
    what = ("the label-noise ODE takes an adaptive diffrax ODE solver (Tsit5, Dopri5, Kvaerno5, KenCarp4, ...) "
            f"or one of {', '.join(repr(n) for n in names)}") if ode else (
            "the general slow SDE is integrated by projected Euler-Maruyama (an Ito scheme): give solver=None, "
            "'euler' or diffrax.Euler(); other solvers, Runge-Kutta ones included, converge to the Stratonovich "
            "solution")
    if solver is None:
        solver = names[0]
    if isinstance(solver, str):
        if solver not in names:
            raise ConfigError("solver", f"unknown or inapplicable solver {solver!r}{suggest(solver, names)}: {what}")
        return SOLVERS[solver](rtol, atol)
    if not isinstance(solver, diffrax.AbstractSolver):
        raise ConfigError("solver", f"must be a diffrax solver or a name, got {type(solver).__name__}: {what}")
    if not ode:
        if type(solver) is not diffrax.Euler:
            raise ConfigError("solver", f"{type(solver).__name__} does not give the slow SDE's scheme: {what}")
        return solver
    sde_only = (diffrax.AbstractSRK, diffrax.AbstractItoSolver, diffrax.SemiImplicitEuler, diffrax.Sil3)
    if isinstance(solver, sde_only) or not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ConfigError("solver", f"{type(solver).__name__} is not an adaptive ODE solver with an error estimate: "
                                    f"{what}")
    return solver


def _controller(controller, rtol, atol):
    """The label-noise ODE's step-size controller: ``controller`` (an adaptive diffrax controller) or
    ``PIDController(rtol, atol)``; ConfigError("stepsize_controller") otherwise."""
    if controller is None:
        return diffrax.PIDController(rtol=rtol, atol=atol)
    if not isinstance(controller, diffrax.AbstractAdaptiveStepSizeController):
        raise ConfigError("stepsize_controller", f"must be an adaptive diffrax step-size controller (e.g. "
                                                 f"diffrax.PIDController(rtol, atol)), got {type(controller).__name__}")
    return controller


def simulate_slow_sde(problem: AbstractProblem, noise: AbstractNoise, method: Method, T: float, n_paths: int = 1,
                      key: Union[int, jax.Array] = 0, *, eta: Optional[float] = None, dt: float = 1e-3,
                      n_record: int = 100, theta0: Optional[Float[ArrayLike, "D"]] = None,
                      v0: Union[str, Float[ArrayLike, "D"]] = "equilibrium", rank: Optional[int] = None,
                      solver: Union[None, str, diffrax.AbstractSolver] = None,
                      stepsize_controller: Optional[diffrax.AbstractStepSizeController] = None, rtol: float = 1e-8,
                      atol: float = 1e-10, zero_floor: Optional[float] = None, max_steps: int = 1_000_000,
                      project_max_steps: int = 100_000,
                      force_sde: bool = False, richardson: bool = False, brownian_dt: Optional[float] = None,
                      record_state: bool = True, dtype: Optional[DTypeLike] = None,
                      paths_per_call: Optional[int] = None, records_per_call: Optional[int] = None,
                      checkpoint: Union[None, str, Path] = None, progress: Optional[bool] = None) -> Trajectory:
    """Integrate the slow SDE of ``method`` under ``noise`` on ``problem`` up to SDE time ``T``.

    - ``eta``: only needed to turn an explicit beta2 into c = (1 - beta2)/eta^2;
    - ``dt``: step of projected Euler-Maruyama (general noise); the label-noise ODE is adaptive;
    - ``solver``: a diffrax solver or a name ("euler" for the SDE, the default; "tsit5", the ODE's default;
      "kvaerno5", implicit; "kencarp4" (:func:`imex_kencarp4`) or any diffrax KenCarp solver, IMEX, for the
      label-noise ODE of an AGM on least squares where coordinates are driven to 0 with S -> 1/eps: zeta
      implicit with a structured Jacobian (:func:`_label_noise_implicit_drift`), v explicit, no zero floor
      needed). With the default (None) on such an ODE, Tsit5 gets at most
      :data:`EXPLICIT_STEPS_BEFORE_IMEX` (20 000) steps per compiled call (or ``max_steps`` per interval
      if fewer); a path whose Tsit5 solve fails (a stiff stretch runs out of any budget) is solved again
      with KenCarp4 from its last record before the failure, and its group of ``paths_per_call`` paths
      stays on KenCarp4 for the rest of the run (the stiffness does not go away).
      ``meta["imex_fallback_solves"]`` counts the (path, call) solves made by KenCarp4 in place of Tsit5,
      those before a resume included;
    - ``stepsize_controller``: the ODE's, default ``PIDController(rtol, atol)``;
    - ``zero_floor``: (label-noise ODE of an AGM, except on diagonal nets, which run in log coordinates)
      coordinates of zeta with |zeta_i| at or below it are read as 0 by the vector field, so that
      coordinates the method drives to 0 (a factorization's dead columns, where S grows towards 1/eps) do
      not hold an explicit solver at steps of 1/S^2. Default min(10 atol, rtol max_i |zeta_i|); 0 turns
      it off;
    - ``theta0``: start (D,) (default: the problem's initializer per path), projected: zeta(0) = Phi_{S(v0)}(theta0);
    - ``v0``: "equilibrium" (V(Sigma(zeta(0)))) or a positive array (D,); the slow SDE cannot start at v = 0;
    - ``rank``: the codimension of Gamma (default: the geometry module's rank rule);
    - ``max_steps``: the ODE solver's step budget per recording interval; ``project_max_steps``: the step
      budget of the gradient flow that projects the start onto Gamma;
    - ``force_sde``: use the SDE integrator even for label noise (a check of the ODE reduction);
    - ``richardson``: (general SDE) also solve with step 2 h on the same Brownian path and return, per path,
      the observables 2 f(zeta^{h}) - f(zeta^{2 h}), where h <= dt is the actual step (the recording
      interval cut into an even number of steps; ``meta["dt"]`` holds it). Their mean has weak error
      O(h^2) (Talay-Tubaro extrapolation) instead of O(h), for 1.5 times the work. Means and standard
      errors of these observables estimate E f(zeta_t); their spread across paths is not the law of
      f(zeta_t). ``theta`` and ``v`` hold the step-h run; a path counts as failed when either run fails;
    - ``brownian_dt``: the grid of the Brownian path (default: the step). Runs with the same key and
      ``brownian_dt`` whose steps are multiples of it follow the same Brownian path, so the difference of
      their answers (a step-size study) has a small variance; the steps must be multiples of it;
    - ``paths_per_call``: at most this many paths per compiled call (bounds memory); default all;
    - ``records_per_call``: recording intervals per compiled call (default: all in one ``diffeqsolve``, or 1
      with a ``checkpoint``); ``checkpoint``: an .npz path written after every call; if it exists when the
      run starts, the run continues from it, and gives the same numbers as an uninterrupted run;
    - ``progress``: a bar over SDE time, advanced after every compiled call (True, False, or None: shown in a
      terminal or notebook; see :mod:`slowsde_jax.progress`).

    Returns a Trajectory on the recording grid t_j = j T / n_record (``theta`` holds zeta). A path whose
    solver fails or whose state turns non-finite is frozen at its last good state; ``diverged_time`` says
    when (the end of the recording interval) and ``meta["failure_reasons"]`` why.
    """
    # validate
    inputs = parse_inputs(problem, noise, method, key=key, n_paths=n_paths, n_record=n_record, theta0=theta0,
                          v0=v0, dtype=dtype, v0_modes=("equilibrium",))
    method = method.for_problem(problem)  # block ids from the problem's own parameter leaves
    check_range("T", T, low=0.0, low_open=True)
    check_range("dt", dt, low=0.0, low_open=True)
    check_int("project_max_steps", project_max_steps, 1)
    check_int("max_steps", max_steps, 1)
    if zero_floor is not None:
        check_range("zero_floor", zero_floor, low=0.0)
    check_range("rtol", rtol, low=0.0, low_open=True)
    check_range("atol", atol, low=0.0, low_open=True)
    if eta is not None:
        check_range("eta", eta, low=0.0, low_open=True)
    if rank is not None:
        check_int("rank", rank, 1)
        if rank > problem.dim:
            raise ConfigError("rank", f"the codimension of Gamma is at most D = {problem.dim}, got {rank}")
    check_optional_bool("progress", progress)
    check_path("checkpoint", checkpoint)
    check_bool("force_sde", force_sde)
    check_bool("richardson", richardson)
    check_bool("record_state", record_state)
    alpha = None if force_sde else noise.label_noise_alpha(problem)
    solver_given = solver is not None
    solver = _solver(solver, alpha is not None, rtol, atol)
    if isinstance(solver, IMEX_SOLVERS) and (alpha is None or not _imex_applies(problem, method)):
        raise ConfigError("solver", f"{type(solver).__name__} (IMEX) is for the label-noise ODE of an AGM on a "
                          "least-squares problem other than a diagonal net (those run in log coordinates)")
    if alpha is not None:
        controller = _controller(stepsize_controller, rtol, atol)
        floor = ((ZERO_FLOOR_ATOLS * getattr(controller, "atol", atol), getattr(controller, "rtol", rtol))
                 if zero_floor is None else (zero_floor, np.inf))
        floor = tuple(jnp.asarray(f, inputs.dtype) for f in floor)  # traced: one program for every floor
        # The default solver hands a failed interval to the IMEX solver where that applies (see the docstring).
        fallback = (imex_kencarp4(getattr(controller, "rtol", rtol), getattr(controller, "atol", atol))
                    if not solver_given and _imex_applies(problem, method) else None)
    elif stepsize_controller is not None:
        raise ConfigError("stepsize_controller", "the general slow SDE takes fixed steps dt (projected Euler-Maruyama)")
    if method.has_v:
        if method.c is None and eta is None:
            raise ConfigError("eta", "needed to convert the method's explicit beta2 into c = (1 - beta2)/eta^2")
        c = method.c_at(eta)
    else:
        c = jnp.asarray(0.0, inputs.dtype)
    paths_per_call = inputs.n_paths if paths_per_call is None else check_int("paths_per_call", paths_per_call, 1)
    if records_per_call is None:
        records_per_call = 1 if checkpoint is not None else inputs.n_record
    records_per_call = min(check_int("records_per_call", records_per_call, 1), inputs.n_record)
    model = SlowSDEModel(problem, noise, method, c, alpha, rank)

    # schedule: one fixed-step grid per level (step h <= dt; with Richardson also 2 h), records on step times
    if richardson and alpha is not None:
        raise ConfigError("richardson", "extrapolates the general SDE's fixed steps; the label-noise ODE is "
                          "adaptive (use force_sde=True to extrapolate the SDE form)")
    t_grid = np.linspace(0.0, float(T), inputs.n_record + 1)
    n_sub = max(1, int(np.ceil((t_grid[1] - t_grid[0]) / dt - 1e-9)))
    if richardson and n_sub % 2:
        n_sub += 1  # the coarse level takes two fine steps at a time
    h = (t_grid[1] - t_grid[0]) / n_sub  # the fine step
    if brownian_dt is not None:
        check_range("brownian_dt", brownian_dt, low=0.0, low_open=True)
    grid = h if brownian_dt is None else float(brownian_dt)
    per_step = int(round(h / grid))
    if per_step < 1 or abs(per_step * grid - h) > 1e-9 * h:
        raise ConfigError("brownian_dt", f"the step {h:.6g} (T / n_record / {n_sub}) must be a multiple of it, "
                          f"got {brownian_dt}")
    if T / grid >= 2**31:
        raise ConfigError("brownian_dt" if brownian_dt is not None else "dt",
                          f"T / step = {T / grid:.3g} grid intervals: must be < 2**31 (the Brownian grid's index)")
    # (steps per record, Brownian grid intervals per step)
    levels = [(n_sub, per_step)] + ([(n_sub // 2, 2 * per_step)] if richardson else [])
    level_steps = []
    check_time_grid(t_grid, 0.0, float(T), strict=alpha is not None)
    for per_record, substeps in levels:
        t_steps = np.linspace(0.0, float(T), inputs.n_record * per_record + 1)
        t_steps[::per_record] = t_grid
        if alpha is None:  # the solves' run-time checks, made here (see slowsde_jax._runtime_checks)
            check_time_grid(t_steps, 0.0, float(T), strict=True, field="dt")
            if np.any(np.round(np.diff(t_steps) / grid) > substeps):
                raise ConfigError("brownian_dt", "a step covers more Brownian grid intervals than it should")
        level_steps.append(t_steps)

    # loop
    k_init, k_run = jax.random.split(inputs.key)
    if checkpoint is not None and Path(checkpoint).exists():
        runs = _load_checkpoint(checkpoint, t_grid, inputs.n_paths, problem.dim, len(levels))
    else:
        init_keys = jax.random.split(k_init, inputs.n_paths)
        y, status = _initial_state(model, inputs.theta0, inputs.v0_mode, inputs.v0, init_keys, project_max_steps)
        if np.any(np.asarray(status) != geo.PROJECTION_OK):  # say why: non-finite start, NaN loss, S = inf, budget
            raise explain_start_failure(problem, noise, method, inputs.theta0, inputs.v0_mode, inputs.v0, init_keys,
                                        status, project_max_steps)
        runs = [_SDERun(t_grid) for _ in levels]
        for run in runs:
            run.start(y, inputs.n_paths)
    path_keys = jax.random.split(k_run, inputs.n_paths)
    from .progress import progress_bar

    work = inputs.n_paths * len(levels)  # path-time units per unit of SDE time (x2 with Richardson)
    bar = progress_bar(float(T) * work, f"slow {'SDE' if alpha is None else 'ODE'} ({method.name})",
                       progress=progress, unit="path·t", initial=float(t_grid[runs[0].done]) * work)
    while runs[0].done < inputs.n_record:
        j0, j1 = runs[0].done, min(runs[0].done + records_per_call, inputs.n_record)
        for run, (per_record, substeps), t_steps in zip(runs, levels, level_steps):
            ys, ok = [], []
            for p0 in range(0, inputs.n_paths, paths_per_call):
                sl = slice(p0, min(p0 + paths_per_call, inputs.n_paths))
                y = jax.tree_util.tree_map(lambda x: jnp.asarray(x[sl], inputs.dtype), run.y)
                if alpha is None:
                    with host_checked():
                        seg = _sde_segment(model, solver, y, path_keys[sl],
                                           jnp.asarray(t_steps[j0 * per_record: j1 * per_record + 1]),
                                           jnp.asarray(t_grid[j0 + 1: j1 + 1]), jnp.asarray(grid, inputs.dtype),
                                           substeps)
                else:
                    seg, run.imex[sl], imex_solves = _ode_call(model, solver, fallback, controller, y,
                                                               t_grid[j0: j1 + 1], max_steps, floor, run.imex[sl])
                    run.fallback_solves += imex_solves
                ys.append(jax.tree_util.tree_map(np.asarray, seg[0]))
                ok.append(np.asarray(seg[1]))
                bar.update(float(t_grid[j1] - t_grid[j0]) * (sl.stop - sl.start))
            run.extend(tuple(np.concatenate([y[i] for y in ys]) for i in range(2)), np.concatenate(ok),
                       j0, alpha is None)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, runs)
    bar.close()

    # package
    run = runs[0]
    zeta, v = np.stack(run.zeta, axis=1), np.stack(run.v, axis=1)
    observables = _observe(problem, zeta)
    failed_time, reasons = _flag_non_finite_loss(problem, zeta, t_grid, run.failed_time, run.reasons)
    if richardson:
        coarse = _observe(problem, np.stack(runs[1].zeta, axis=1))
        observables = {k: 2.0 * x - coarse[k] for k, x in observables.items()}
        failed_time = np.fmin(failed_time, runs[1].failed_time)
        reasons = [r or (None if rc is None else f"{rc} (at step 2 dt)") for r, rc in zip(reasons, runs[1].reasons)]
    meta = run_meta("slow_sde" if alpha is None else "label_noise_ode", problem, noise, method,
                    eta=None if eta is None else float(eta), T=float(T), n_paths=inputs.n_paths,
                    v0=v0 if isinstance(v0, str) else "given", dt=float(h) if alpha is None else None,
                    steps_per_record=n_sub if alpha is None else None, c=float(c),
                    alpha=None if alpha is None else float(alpha), solver=type(solver).__name__,
                    imex_fallback_solves=None if alpha is None else sum(r.fallback_solves for r in runs),
                    richardson=bool(richardson),
                    failure_reasons=[f"path {i}: {r}" for i, r in enumerate(reasons) if r])
    return Trajectory(t=t_grid, theta=zeta if record_state else None,
                      v=v if (record_state and method.has_v) else None, observables=observables,
                      diverged_time=failed_time, meta=meta)


def _flag_non_finite_loss(problem, zeta, t_grid, failed_time, reasons):
    """(failed_time, reasons) with every path whose loss is not finite at a record (at a finite state, which
    the solver's checks cannot see) failed at the first such record's time, unless it failed before."""
    loss = np.asarray(_batch_loss(problem, jnp.asarray(zeta.reshape(-1, problem.dim)))).reshape(zeta.shape[:2])
    failed_time, reasons = np.array(failed_time, dtype=float), list(reasons)
    for i in np.flatnonzero(~np.all(np.isfinite(loss), axis=1)):
        j = int(np.argmax(~np.isfinite(loss[i])))
        if not failed_time[i] <= t_grid[j]:
            failed_time[i] = t_grid[j]
            reasons[i] = f"the loss is not finite ({loss[i, j]}) at t = {t_grid[j]:.6g}"
    return failed_time, reasons


@eqx.filter_jit
def _batch_loss(problem, theta):
    return jax.vmap(problem.loss)(theta)


def _observe(problem, zeta) -> dict:
    """The problem's observables of states (n_paths, n_times, D), each (n_paths, n_times)."""
    obs = observe_batch(problem, jnp.asarray(zeta.reshape(-1, problem.dim)))
    return {k: np.asarray(x).reshape(zeta.shape[:2]) for k, x in obs.items()}


class _SDERun:
    """A slow-SDE run in progress: the current state per path, the records so far, failures."""

    def __init__(self, t_grid):
        self.t_grid = t_grid
        self.zeta, self.v, self.reasons = [], [], []
        self.failed_time = None
        self.y = None
        self.fallback_solves = 0  # (path, call) solves the default ODE solver handed to the IMEX solver
        self.imex = None  # (n_paths,) bool: the paths the default ODE solver has handed to the IMEX solver

    @property
    def done(self) -> int:
        """Recording intervals completed."""
        return len(self.zeta) - 1

    def start(self, y, n_paths):
        self.y = tuple(np.asarray(x) for x in y)
        self.zeta, self.v = [self.y[0]], [self.y[1]]
        self.failed_time = np.full(n_paths, np.nan)
        self.reasons = [None] * n_paths
        self.imex = np.zeros(n_paths, bool)

    def extend(self, ys, solver_ok, j0, sde: bool):
        """Append the records ys = (zeta, v), each (n_paths, n_new, D), of intervals j0+1 ... A path whose
        solver failed or whose state turned non-finite stays frozen at its last good record."""
        zeta, v = ys
        n_new = zeta.shape[1]
        finite = _finite_records(zeta, v)  # (n_paths, n_new)
        bad = ~finite
        bad[~solver_ok & finite.all(axis=1), -1] = True  # a failed solve with finite saves: flag its last record
        first_bad = np.where(bad.any(axis=1), bad.argmax(axis=1), n_new)
        alive = np.isnan(self.failed_time)
        for i in np.flatnonzero(alive & (first_bad < n_new)):
            j = j0 + first_bad[i]  # failed in (t_j, t_{j+1}]
            self.failed_time[i] = self.t_grid[j + 1]
            lo, hi = self.t_grid[j], self.t_grid[j + 1]
            self.reasons[i] = (f"non-finite state between t = {lo:.6g} and {hi:.6g} (retraction onto Gamma failed)"
                               if sde or solver_ok[i] else
                               f"solver failed between t = {lo:.6g} and {hi:.6g} (step budget max_steps exhausted or "
                               "step size collapsed: a stiff region; raise max_steps, or try solver='kencarp4' (an AGM "
                               "on least squares; the default solver falls back to it there) or 'kvaerno5')")
        for k in range(n_new):
            frozen = ~np.isnan(self.failed_time) & (~alive | (first_bad <= k))
            self.zeta.append(np.where(frozen[:, None], self.zeta[-1], zeta[:, k]))
            self.v.append(np.where(frozen[:, None], self.v[-1], v[:, k]))
        self.y = (self.zeta[-1], self.v[-1])


def _save_checkpoint(path, runs):
    """The runs' records, states and failures (one run per step-size level) as an npz, written atomically."""
    arrays = {}
    for i, run in enumerate(runs):
        p = "" if i == 0 else f"level{i}_"
        arrays.update({p + "zeta": np.stack(run.zeta), p + "v": np.stack(run.v), p + "failed_time": run.failed_time,
                       p + "reasons": np.array(json.dumps(run.reasons)), p + "fallback_solves": run.fallback_solves,
                       p + "imex": run.imex})
    arrays["t_grid"] = runs[0].t_grid
    atomic_write(Path(path), lambda p: np.savez(p, **arrays))


def _load_checkpoint(path, t_grid, n_paths, D, n_levels) -> list:
    try:
        arrays = read_npz(path, "checkpoint", "checkpoint")
        runs = []
        for i in range(n_levels):
            p = "" if i == 0 else f"level{i}_"
            if p + "zeta" not in arrays:
                raise ConfigError("checkpoint", f"{path} belongs to another run (richardson differs)")
            run = _SDERun(t_grid)
            zeta, v = arrays[p + "zeta"], arrays[p + "v"]
            if not np.array_equal(arrays["t_grid"], t_grid) or zeta.shape[1:] != (n_paths, D):
                raise ConfigError("checkpoint",
                                  f"{path} belongs to another run (T, n_record, n_paths or the problem differ)")
            run.zeta, run.v = list(zeta), list(v)
            run.failed_time, run.reasons = arrays[p + "failed_time"], json.loads(str(arrays[p + "reasons"]))
            run.y = (run.zeta[-1], run.v[-1])
            run.fallback_solves = int(arrays.get(p + "fallback_solves", 0))  # (absent from older checkpoints)
            run.imex = np.asarray(arrays.get(p + "imex", np.zeros(n_paths, bool)), bool)
            runs.append(run)
        if f"level{n_levels}_zeta" in arrays:
            raise ConfigError("checkpoint", f"{path} belongs to another run (richardson differs)")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError("checkpoint", f"{path} is not a readable slow-SDE checkpoint ({type(e).__name__}: {e})") from None
    return runs
