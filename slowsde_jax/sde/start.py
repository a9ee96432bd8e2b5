"""The start of a slow run on Gamma (zeta(0) = Phi_S(theta0), v from the one initial-state rule), the size of
the matrices factorized per path, and the check of saved records."""
from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp

from .. import geometry as geo
from .._batching import map_paths
from ..inputs import initial_v
from .coefficients import _matrix_size


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
        zeta, status = geo.project_flow(problem.loss, th, method.S_operator(v), max_steps=max_steps, least_squares=ls,
                                        rank=model.rank)
        if method.has_v and v0_mode == "equilibrium":
            v = initial_v(problem, noise, method, zeta, v0_mode)
        return (zeta, v), status

    return map_paths(one, keys, _matrix_size(model))


