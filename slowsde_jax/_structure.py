"""The least-squares structure a problem declares (a leaf module).

A least-squares problem has L(theta) = sum_i w_i r_i(theta)^2 / 2 and says so with
``problem.least_squares()``, a ``LeastSquares``: its residuals, its weights and the closed forms it knows.
The noise models and the geometry take that object; nothing is read off bound methods.
"""
from __future__ import annotations

from typing import Callable, Optional, final

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .validation import ConfigError

__all__ = ["ResidualFn", "LeastSquares"]

ResidualFn = Callable[[Float[Array, "D"]], Float[Array, "n"]]


@final
class LeastSquares(eqx.Module):
    """L(theta) = sum_i w_i r_i(theta)^2 / 2, declared.

    - ``residuals``: theta (D,) -> r (n,).
    - ``weights``: w (n,), nonnegative (0 masks a sample); None means ones.
    - ``quadratic``: ``(B (n, D), y (n,))`` when r(x) = B (x * x) - y (diagonal nets, the hyperbola); the
      projection onto Gamma and the label-noise ODE then have closed forms.
    - ``jacobian_fn``: theta -> dr/dtheta (n, D) in closed form (else autodiff).
    - ``hessian_sum_fn``: (theta, w (n,), a (D, n)) -> sum_i w_i Hess r_i a_i (D,) in closed form.
    - ``gn_trace_hessian_fn``: (theta, S (D,), w (n,)) -> grad^2 of sum_i w_i sum_k S_k (d_k r_i)^2 (D, D).

    It is a pytree: the residual function's own arrays (a problem's bound method) are its leaves.
    """

    residuals: ResidualFn
    weights: Optional[Float[Array, "n"]] = None
    quadratic: Optional[tuple[Float[Array, "n D"], Float[Array, "n"]]] = None
    jacobian_fn: Optional[Callable] = None
    hessian_sum_fn: Optional[Callable] = None
    gn_trace_hessian_fn: Optional[Callable] = None

    def __check_init__(self):
        if not callable(self.residuals):
            raise ConfigError("residuals", f"must be a function of theta, got {type(self.residuals).__name__}")

    def sample_weights(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        """w (n,): the declared weights, or ones shaped like r(theta)."""
        if self.weights is not None:
            return self.weights
        return jnp.ones(jax.eval_shape(self.residuals, theta).shape, theta.dtype)

    def jacobian(self, theta: Float[Array, "D"]) -> Float[Array, "n D"]:
        """J = dr/dtheta, (n, D): 2 B Diag(x) for quadratic residuals (O(n D)), the declared closed form,
        else autodiff (reverse mode when n <= D, forward mode else)."""
        if self.quadratic is not None:
            return 2.0 * self.quadratic[0] * theta[None, :]
        if self.jacobian_fn is not None:
            return self.jacobian_fn(theta)
        n = jax.eval_shape(self.residuals, theta).shape[0]
        return (jax.jacrev if n <= theta.shape[0] else jax.jacfwd)(self.residuals)(theta)
