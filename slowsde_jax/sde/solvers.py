"""The diffrax adapters: the Newton retraction onto Gamma after every step (``RetractingSolver``), the
error measured in x for log coordinates (``_ErrorInX``), and one compiled segment of projected Euler-Maruyama."""
from __future__ import annotations

from typing import Any, Callable, Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import ArrayLike, PyTree

from .. import geometry as geo
from ..brownian import GridBrownianPath
from .._batching import map_paths
from .coefficients import SlowSDEModel, SlowSDETerm, State, _matrix_size


def retract_onto_gamma(y0: State, y1: State, model: SlowSDEModel) -> State:
    """y1 = (zeta, v) back onto Gamma by three Newton steps along S(v) * normal directions. Least squares:
    normals from the residual Jacobian (with the sample weights). Any other loss: the normals of Gamma at
    y0's zeta, a point of Gamma (cut at ``model.rank`` or by the rank rule), never the Hessian's eigenvectors
    at y1, whose tangent eigenvalues are O(|y1 - y0|) and would bend the step tangentially."""
    problem = model.problem
    ls = problem.least_squares()
    zeta, v = y1
    S = model.method.S_operator(v)  # its diagonal, or a matrix (Shampoo)
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


