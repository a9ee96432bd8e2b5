"""The slow SDE's coefficients and vector fields on the state y = (zeta, v), and their diffrax term."""
from __future__ import annotations

from typing import Any, Optional

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .. import geometry as geo
from .._batching import factorized_size
from ..methods import AbstractMethod
from ..noise import AbstractNoise
from ..problems import AbstractProblem


State = tuple[Float[Array, "D"], Float[Array, "D"]]  # the slow SDE's state y = (zeta, v)


# ----- the coefficients -----------------------------------------------------------------------------------------
def _v_rate(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, zeta: Float[Array, "D"],
           v: Float[Array, "D"], c: ArrayLike) -> Float[Array, "D"]:
    """dv/dt = c (V(Sigma(zeta)) - v), shape (D,): v relaxes at the rate c towards its equilibrium at zeta;
    0 for methods without v (SGD)."""
    if not method.has_v:
        return jnp.zeros_like(v)
    bound = method.for_problem(problem)
    if bound.full_statistic:  # V needs all of Sigma (Shampoo): from its factor, Sigma = G G^T
        return c * (bound.V_of_factor(noise.covariance_factor(problem, zeta)) - v)
    return c * (bound.V(noise.covariance_diag(problem, zeta)) - v)


def slow_sde_coefficients(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, zeta: Float[Array, "D"],
                          v: Float[Array, "D"], c: ArrayLike, rank: Optional[int] = None,
                          structured: Optional[bool] = None
                          ) -> tuple[Float[Array, "D"], Float[Array, "D"], Float[Array, "D K"]]:
    """Drift of (zeta, v) (each (D,)) and the tangent diffusion factor A (D, K) at a point zeta of Gamma, with
    A A^T = Sigma_par and K the width of the noise's covariance factor G (G G^T = Sigma).

    Least squares (the problem has residuals, r = 0 on Gamma): in sample space, with n x n solves and
    Jacobian-vector products (``slowsde_jax.geometry.ls_slow_sde_coefficients``), no D x D matrix unless
    G is one. Any other loss, or ``structured=False``: dense geometry (Hessian, eigendecompositions), for D
    up to a few hundred. The two agree to rounding (tests/test_structured_geometry.py). S may be a full
    matrix (``method.S_operator``, Shampoo's).
    """
    S = method.S_operator(v)
    G = noise.covariance_factor(problem, zeta)
    ls = problem.least_squares()
    if ls is not None and structured is not False:
        drift, A = geo.ls_slow_sde_coefficients(ls, zeta, S, G, rank)
    else:
        H = geo.hessian(problem.loss, zeta)
        P = geo.projection_jacobian(H, S, rank)
        X = geo.sigma_diamond(H, G @ G.T, S, rank)
        t3 = geo.third_derivative_contraction(problem.loss, zeta, X)
        drift = -0.5 * P @ (S @ t3 if S.ndim == 2 else S * t3)
        A = P @ (S @ G if S.ndim == 2 else S[:, None] * G)
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


def _finite_records(zeta, v):
    """(P, m) bool: the records (P, m, D) of zeta and v whose entries are all finite."""
    return np.all(np.isfinite(zeta), axis=2) & np.all(np.isfinite(v), axis=2)


def _matrix_size(model) -> int:
    """The largest matrix factorized per path and step (``slowsde_jax._batching.factorized_size``); D x D
    when the noise factor is recomputed from a covariance function."""
    theta = jnp.zeros(model.problem.dim)
    if getattr(model.noise, "cov_fn", None) is not None:
        return model.problem.dim
    return factorized_size(theta, model.problem.least_squares())
