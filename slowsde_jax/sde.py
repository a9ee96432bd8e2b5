"""The slow SDE and its label-noise ODE on diffrax: coefficients, vector fields, solvers and segments.

State: the pytree y = (zeta, v), each (D,), on the SDE clock t:

    d zeta = dPhi_S ( Sigma_par^{1/2} dW - 1/2 S grad^3 L[Sigma_diamond] dt ) + Ito correction
    d v    = c ( V(Sigma(zeta)) - v ) dt,        S = S(v)

The problem, noise and method reach the vector fields through diffrax's ``args`` (a ``SlowSDEModel``).

- General noise: projected Euler-Maruyama with fixed steps. ``SlowSDETerm`` returns the drift and the
  diffusion dPhi_S S Sigma^{1/2} (tangent noise only, A A^T = Sigma_par) from one evaluation of the geometry,
  and ``RetractingSolver`` wraps diffrax's Euler and retracts zeta onto Gamma after every step (Newton
  steps along S * normal directions, ``retract_onto_gamma``); the retraction's second-order part
  supplies the Ito correction. Brownian increments come from a
  ``GridBrownianPath``, one key per path. With ``richardson=True`` the SDE is
  solved at steps h and 2 h on the same Brownian path (h <= dt: the step that divides the recording
  interval into an even number of steps) and the observables are extrapolated per path,
  2 f(zeta^{h}) - f(zeta^{2h}): weak error O(h^2) instead of O(h).
- Label noise (Sigma = alpha H on Gamma): no diffusion; the ODE d zeta/dt = -(alpha/4) dPhi_S S grad^3 L[S]
  is integrated with an adaptive solver (Tsit5 by default); on diagonal nets with an AGM in (log|x|, log v),
  where the stiffness near u_j v_j = 0 (S ~ 1/eps) disappears; with an AGM on other problems the field
  reads coordinates below the solver's tolerance as 0, so that coordinates driven to 0 (a factorization's
  dead columns) stop being a stiff mode; the saved states are retracted onto Gamma.

A segment (``_sde_segment``, ``_ode_call``) is one ``diffeqsolve`` with ``SaveAt(ts=...)`` for a group
of paths and records; the integrators (``slowsde_jax.integrators``) lay them out and the engine
(``slowsde_jax.slow_engine``) runs them. SGD is the case S = I with v not evolving.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float, PyTree

from . import geometry as geo
from .brownian import GridBrownianPath
from ._batching import factorized_size, map_paths
from ._runtime_checks import host_checked
from .inputs import initial_v
from .methods import AbstractMethod
from .noise import AbstractNoise
from .problems import AbstractProblem

__all__ = ["slow_sde_coefficients", "label_noise_vector_field", "SlowSDEModel", "SlowSDETerm",
           "RetractingSolver", "retract_onto_gamma", "sde_coefficients", "label_noise_ode_field", "imex_kencarp4"]

State = tuple[Float[Array, "D"], Float[Array, "D"]]  # the slow SDE's state y = (zeta, v)


# ----- the coefficients -----------------------------------------------------------------------------------------
def _v_rate(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, zeta: Float[Array, "D"],
           v: Float[Array, "D"], c: ArrayLike) -> Float[Array, "D"]:
    """dv/dt = c (V(Sigma(zeta)) - v), shape (D,): v relaxes at the rate c towards its equilibrium at zeta;
    0 for methods without v (SGD)."""
    if not method.has_v:
        return jnp.zeros_like(v)
    return c * (method.for_problem(problem).V(noise.covariance_diag(problem, zeta)) - v)


def slow_sde_coefficients(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, zeta: Float[Array, "D"],
                          v: Float[Array, "D"], c: ArrayLike, rank: Optional[int] = None,
                          structured: Optional[bool] = None
                          ) -> tuple[Float[Array, "D"], Float[Array, "D"], Float[Array, "D K"]]:
    """Drift of (zeta, v) (each (D,)) and the tangent diffusion factor A (D, K) at a point zeta of Gamma, with
    A A^T = Sigma_par and K the width of the noise's covariance factor G (G G^T = Sigma).

    Least squares (the problem has residuals, r = 0 on Gamma): in sample space, with n x n solves and
    Jacobian-vector products (``slowsde_jax.geometry.ls_slow_sde_coefficients``), no D x D matrix unless
    G is one. Any other loss, or ``structured=False``: dense geometry (Hessian, eigendecompositions), for D
    up to a few hundred. The two agree to rounding (tests/test_structured_geometry.py).
    """
    S = method.S(v)
    G = noise.covariance_factor(problem, zeta)
    ls = problem.least_squares()
    if ls is not None and structured is not False:
        drift, A = geo.ls_slow_sde_coefficients(ls, zeta, S, G, rank)
    else:
        H = geo.hessian(problem.loss, zeta)
        P = geo.projection_jacobian(H, S, rank)
        X = geo.sigma_diamond(H, G @ G.T, S, rank)
        drift = -0.5 * P @ (S * geo.third_derivative_contraction(problem.loss, zeta, X))
        A = P @ (S[:, None] * G)
    dv = _v_rate(problem, noise, method, zeta, v, c)
    return drift, dv, A


def label_noise_vector_field(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, zeta: Float[Array, "D"],
                             v: Float[Array, "D"], c: ArrayLike, alpha: ArrayLike) -> State:
    """(d zeta/dt, dv/dt) of the label-noise ODE (docs/math.md#label-noise-ode), structured for least squares."""
    S = method.S(v)
    dz = geo.label_noise_drift(problem.loss, zeta, S, alpha, least_squares=problem.least_squares())
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
    ls = problem.least_squares()
    zeta, v = y1
    S = model.method.S(v)
    normals = None if ls is not None else geo.normal_frame(geo.hessian(problem.loss, y0[0]), S, model.rank)
    for _ in range(3):  # quadratic convergence: a displacement of 1e-2 lands within rounding
        zeta = geo.newton_retraction_step(problem.loss, zeta, S, least_squares=ls, normals=normals)
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
        solver is an ``AbstractImplicitSolver`` to ``isinstance``); see ``_with_root_tolerances``."""
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
    (``GridBrownianPath``; a step covers ``substeps`` grid intervals), so a run cut
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
    are r(x) = B (x * x) - y (diagonal nets: ``LeastSquares.quadratic``) and v > 0 evolves (AGMs).

    Why: there every term of the drift carries a factor x_k, dx/dt = x * h(x, v), so x_k never changes sign
    and log|x_k| moves at the rate h_k. Near u_j v_j = 0, S_k ~ 1/eps and x_k decays at a rate up to
    ~ 1/eps^2: a stiff mode in x (explicit solvers stall, implicit ones need Jacobians of the whole drift),
    a straight line in log|x_k|; v_k decays at the rate c. The error is controlled in x (see _ErrorInX)."""
    ls = problem.least_squares()
    return method.has_v and ls is not None and ls.quadratic is not None


_LOG_FLOOR, _TINY = -230.0, 1e-300  # log|x| is evaluated at >= log(1e-100): x_k^2 then drops out of the rest


def _label_noise_log_field(t, z, args):
    """The label-noise ODE in z = [log|x|; log v] (2D,) for residuals r = B (x * x) - y: d log|x|/dt = h with
    x * h the drift (``slowsde_jax.geometry.quadratic_label_noise_rate``), d log v/dt = c (V/v - 1).
    ``args`` = (model, sign of x)."""
    model, sign = args
    problem, method, D = model.problem, model.method, model.problem.dim
    ls = problem.least_squares()
    (B, y_lab), w = ls.quadratic, ls.weights
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
    10 atol (``ZERO_FLOOR_ATOLS``) and rel = rtol (see ``simulate_slow_sde``'s ``zero_floor``).
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
    the stiff part only (``_label_noise_stiff_matrix``; the derivatives in S and the model are dropped)."""
    return geo.label_noise_drift(model.problem.loss, zeta, S, model.alpha, least_squares=model.problem.least_squares())


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
    """-(alpha/4) dPhi_S S grad^2 phi (D, D), phi(zeta) = tr(S J^T W J) (``slowsde_jax.geometry.
    ls_gn_trace_hessian``, in closed form where the problem declares one) with dPhi_S and S frozen: the stiff
    part of the derivative of the label-noise drift of an AGM on least squares."""
    ls = model.problem.least_squares()
    J, w = ls.jacobian(zeta), ls.sample_weights(zeta)
    curvature = S[:, None] * geo.ls_gn_trace_hessian(ls, w, zeta, S)
    return -(model.alpha / 4.0) * geo.ls_apply_projection(J, w, S, curvature)


def _label_noise_implicit_drift(t: ArrayLike, y: State, model: SlowSDEModel) -> State:
    """The implicit half of the IMEX split of the label-noise ODE of an AGM on least squares: (d zeta/dt, 0).

    Its value is the exact drift. Its derivative, which diffrax's implicit stages take by ``jacfwd``, is the
    stiff part -(alpha/4) dPhi_S S grad^2 phi with phi(zeta) = tr(S J^T W J), the preconditioned Gauss-Newton
    trace (``_label_noise_stiff_matrix``), with dPhi_S and S frozen at the evaluation point: one (D, D)
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


def _imex_applies(problem: AbstractProblem, method: AbstractMethod) -> bool:
    """Whether the IMEX split applies to the label-noise ODE: an AGM (it has v) on least squares, except the
    diagonal nets, whose ODE runs in log coordinates (``_ode_in_log_coordinates``) that remove the
    stiffness instead."""
    return method.has_v and problem.least_squares() is not None and not _ode_in_log_coordinates(problem, method)


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
    On diagonal nets with an AGM the solve runs in (log|x|, log v) (``_ode_in_log_coordinates``); with
    an AGM elsewhere the field reads coordinates below the solver's tolerance as 0
    (``_label_noise_field_with_floor``; ``floor`` = (floor_abs, rel), two scalars)."""
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
    ``solver`` gets at most ``EXPLICIT_STEPS_BEFORE_IMEX`` steps, and a path whose solve fails is solved
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
    ls = problem.least_squares()

    def one(key):
        th = problem.init(jax.random.split(key)[0]) if theta0 is None else theta0
        v = initial_v(problem, noise, method, th, v0_mode, v0)
        v = jnp.zeros_like(th) if v is None else v  # SGD: S = I, v is a placeholder that never moves
        zeta, status = geo.project_flow(problem.loss, th, method.S(v), max_steps=max_steps, least_squares=ls,
                                        rank=model.rank)
        if method.has_v and v0_mode == "equilibrium":
            v = initial_v(problem, noise, method, zeta, v0_mode)
        return (zeta, v), status

    return map_paths(one, keys, _matrix_size(model))


def _matrix_size(model) -> int:
    """The largest matrix factorized per path and step (``slowsde_jax._batching.factorized_size``); D x D
    when the noise factor is recomputed from a covariance function."""
    theta = jnp.zeros(model.problem.dim)
    if getattr(model.noise, "cov_fn", None) is not None:
        return model.problem.dim
    return factorized_size(theta, model.problem.least_squares())
