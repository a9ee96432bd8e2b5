"""The least-squares structure a problem declares, read from its residual function (a leaf module).

A least-squares problem's ``residuals`` is its bound method, and the problem may declare closed forms next to
it: ``quadratic_residuals()`` (r = B (x * x) - y), ``residual_jacobian(theta)``, ``residual_hessian_sum``,
``gn_trace_hessian``. ``declared`` finds them; ``ls_jacobian`` and ``quadratic_structure`` are the
two every layer above needs (the noise models and the geometry).
"""
from __future__ import annotations

from typing import Callable

import jax
from jaxtyping import Array, Float

__all__ = ["ResidualFn", "declared", "quadratic_structure", "ls_jacobian"]

ResidualFn = Callable[[Float[Array, "D"]], Float[Array, "n"]]


def quadratic_structure(residuals):
    """``(B, y)`` when the residuals are r(x) = B (x * x) - y (diagonal nets, the hyperbola), else None.

    A problem declares it with a method ``quadratic_residuals()`` returning (B, y); ``residuals`` is its bound
    method ``problem.residuals`` (as ``Problem.residual_parts`` returns it)."""
    get = declared(residuals, "quadratic_residuals")
    return None if get is None else get()


def declared(residuals, name):
    """The method ``name`` of the problem whose bound method ``residuals`` is (a structure or closed form the
    problem declares), or None."""
    return getattr(getattr(residuals, "__self__", None), name, None)


def ls_jacobian(residuals: ResidualFn, theta: Float[Array, "D"]) -> Float[Array, "n D"]:
    """J = d r / d theta, (n, D). Quadratic residuals r = B (x * x) - y (``quadratic_structure``):
    J = 2 B Diag(x), O(n D). A problem with a closed form declares it as a method ``residual_jacobian(theta)``
    (``residuals`` is its bound method ``problem.residuals``). Otherwise autodiff: reverse mode when n <= D
    (n passes), forward mode else."""
    quad = quadratic_structure(residuals)
    if quad is not None:
        return 2.0 * quad[0] * theta[None, :]
    closed_form = declared(residuals, "residual_jacobian")
    if closed_form is not None:
        return closed_form(theta)
    n = jax.eval_shape(residuals, theta).shape[0]
    return (jax.jacrev if n <= theta.shape[0] else jax.jacfwd)(residuals)(theta)
