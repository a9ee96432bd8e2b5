"""The label-noise ODE's devices: log coordinates on diagonal nets, the zero floor, the custom-JVP IMEX split,
the Tsit5 -> KenCarp4 fallback and per-path save grids, and one compiled ODE segment."""
from __future__ import annotations


import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optimistix as optx
from jaxtyping import Array, ArrayLike, Float

from .. import geometry as geo
from .._batching import map_paths
from .._runtime_checks import host_checked
from ..methods import AbstractMethod
from ..problems import AbstractProblem
from .coefficients import SlowSDEModel, State, _finite_records, _matrix_size, _v_rate, label_noise_ode_field
from .solvers import _ErrorInX, _with_root_tolerances, retract_onto_gamma


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
    ``on_imex`` (P,) bool: the paths already handed to the fallback. Returns ((zeta, v) records (P, m, D),
    solved (P,), the new ``on_imex``, the fallback solves made per path (P,): 1 for every path of a group
    that runs on the fallback, and for a path solved again by it), as host arrays.

    A group with a path on the fallback runs on it (a stiffness that held Tsit5 does not go away). Otherwise
    ``solver`` gets at most ``EXPLICIT_STEPS_BEFORE_IMEX`` steps, and a path whose solve fails is solved
    again by the fallback from its last record before the failure (the call's start if there is none): the
    records it reached are kept. A path that did not fail runs only its last interval there (from its record
    m - 1; the result is discarded), so that under ``vmap`` it does not set the solve's length. Every
    fallback solve takes a save grid per path, so the fallback compiles once per number of records."""
    m, steps = len(t_save) - 1, max_steps * (len(t_save) - 1)
    t_save, none = np.asarray(t_save), np.zeros(len(on_imex), np.int64)
    if fallback is not None and on_imex.any():
        with host_checked():
            (zeta, v), solved = _ode_segment(model, fallback, controller, y,
                                             jnp.asarray(np.tile(t_save, (len(on_imex), 1))), steps)
        return (np.asarray(zeta), np.asarray(v)), np.asarray(solved), on_imex, np.ones(len(on_imex), np.int64)
    with host_checked():
        seg = _ode_segment(model, solver, controller, y, jnp.asarray(t_save),
                           steps if fallback is None else min(steps, EXPLICIT_STEPS_BEFORE_IMEX), floor)
    (zeta, v), solved = jax.tree_util.tree_map(np.asarray, seg)
    if fallback is None or solved.all():
        return (zeta, v), solved, on_imex, none
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
    return ((np.where(redone[..., None], z2, zeta), np.where(redone[..., None], v2, v)), solved | ok2,
            on_imex | ~solved, (~solved).astype(np.int64))


