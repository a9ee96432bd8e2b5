"""Is a slow flow on Γ the gradient flow of a scalar? A numerical test of closedness.

A vector field F on Γ (tangent to it) with a metric given by an SPD matrix S(ζ) (the preconditioner: the
flow reads dζ/dt = F) is the Riemannian gradient flow of a function φ in the metric S⁻¹ exactly when the
1-form ω = S⁻¹F restricted to the tangent spaces is exact, and locally when it is closed. ``closedness``
checks that in a chart of Γ around a point ζ0: ψ(u) = ζ0 + B u + Jᵀw(u), u ∈ R^m (B an orthonormal basis of
the tangent space at ζ0, w(u) by Newton's method so that the residuals vanish), the pulled-back form
a(u) = Dψ(u)ᵀ S(ψ(u))⁻¹ F(ψ(u)) (m,) is closed at 0 when its Jacobian A = Da(0) (m, m) is symmetric. The
report is the relative asymmetry ‖A − Aᵀ‖ / ‖A‖: rounding for a gradient field, order one for a field
with a rotation. With a candidate φ, a(u) = −κ ∇_u φ(ψ(u)) is fitted at 0 and the misfit reported.

``label_noise_closedness`` applies it to the label-noise ODE's ζ-drift at the equilibrium of the
v-equation, S = S(V(Σ(ζ))) (docs/math.md#label-noise-ode); S may be a full matrix (Shampoo's). For the diagonal AGMs the drift is −(α/4)
times the S⁻¹-gradient of Σ_i G(H_ii) with G' = the preconditioner as a function of H_ii (of the block mean
for Adam-mini and Adalayer): tr(Diag H^{1/2}) for Adam with ε = 0, tr H for SGD.

Least-squares problems only (the chart uses the residuals r(ζ) = 0 that define Γ).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import geometry as geo
from .methods import AbstractMethod
from .noise import AbstractNoise
from .problems import AbstractProblem
from .validation import ConfigError

__all__ = ["Closedness", "closedness", "label_noise_closedness"]

_NEWTON_STEPS = 12


@dataclasses.dataclass(frozen=True)
class Closedness:
    """The result of ``closedness`` at one point ζ0 of Γ.

    - ``asymmetry``: ‖A − Aᵀ‖_F / ‖A‖_F for A = Da(0) (m, m); rounding (≲ 1e-8) for a gradient field;
    - ``A``: the matrix (m, m), m = dim Γ;
    - ``kappa``, ``misfit``: with a candidate φ, the fitted a(0) ≈ −κ ∇_u φ(ψ(0)) and
      ‖a(0) + κ ∇_u φ‖ / ‖a(0)‖ (None without a candidate).
    """

    asymmetry: float
    A: np.ndarray
    kappa: Optional[float] = None
    misfit: Optional[float] = None

    def is_gradient(self, tol: float = 1e-6) -> bool:
        """Whether the asymmetry is below ``tol`` (closed, so locally a gradient field)."""
        return self.asymmetry < tol


def _chart(residuals: Callable, zeta0: Float[Array, "D"], J0: Float[Array, "n D"], B: Float[Array, "D m"]) -> Callable:
    """ψ(u) = ζ0 + B u + J0ᵀ w with r(ψ(u)) = 0 (J0 the residuals' Jacobian at ζ0), w from Newton's method (a
    fixed number of steps, so that forward derivatives go through it; they converge with the iterates)."""

    def psi(u):
        p = zeta0 + B @ u
        w = jnp.zeros(J0.shape[0], zeta0.dtype)
        for _ in range(_NEWTON_STEPS):
            q = p + J0.T @ w
            w = w - jnp.linalg.solve(jax.jacfwd(residuals)(q) @ J0.T, residuals(q))
        return p + J0.T @ w

    return psi


def closedness(residuals: Callable[[Float[Array, "D"]], Float[Array, "n"]], field: Callable, metric: Callable,
               zeta0: Float[Array, "D"], candidate: Optional[Callable] = None, rank_rtol: float = 1e-9) -> Closedness:
    """The closedness test at ``zeta0`` on Γ = {r = 0} (see the module docstring).

    ``residuals``: r(ζ) (n,); ``field``: F(ζ) (D,), tangent to Γ; ``metric``: S(ζ), the diagonal (D,) or an
    SPD matrix (D, D), so that F is tested as an S⁻¹-gradient; ``candidate``: φ(ζ) (scalar), optional."""
    zeta0 = jnp.asarray(zeta0)
    J = jax.jacfwd(residuals)(zeta0)
    _, s, vt = np.linalg.svd(np.asarray(J))
    rank = int(np.sum(s > rank_rtol * s.max())) if s.size else 0
    B = jnp.asarray(vt[rank:].T)  # (D, m): the tangent space at zeta0
    if B.shape[1] == 0:
        raise ConfigError("zeta", "Gamma is a point here (the residual Jacobian has full column rank)")
    psi = _chart(residuals, zeta0, J, B)

    def solve_metric(S, x):
        return x / S if S.ndim == 1 else jnp.linalg.solve(S, x)

    def form(u):
        z = psi(u)
        return jax.jacfwd(psi)(u).T @ solve_metric(jnp.asarray(metric(z)), field(z))

    u0 = jnp.zeros(B.shape[1], zeta0.dtype)
    A = np.asarray(jax.jacfwd(form)(u0))
    asym = float(np.linalg.norm(A - A.T) / max(np.linalg.norm(A), np.finfo(float).tiny))
    kappa = misfit = None
    if candidate is not None:
        a0 = np.asarray(form(u0))
        g = np.asarray(jax.grad(lambda u: candidate(psi(u)))(u0))
        kappa = float(-(a0 @ g) / max(g @ g, np.finfo(float).tiny))
        misfit = float(np.linalg.norm(a0 + kappa * g) / max(np.linalg.norm(a0), np.finfo(float).tiny))
    return Closedness(asymmetry=asym, A=A, kappa=kappa, misfit=misfit)


def label_noise_closedness(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod,
                           zeta0: Float[Array, "D"], candidate: Optional[Callable] = None) -> Closedness:
    """``closedness`` of the label-noise ODE's ζ-drift −(α/4) ∂Φ_S S ∇³L[S] with v at its equilibrium
    V(Σ(ζ)) (S = 1 for SGD), in the metric S⁻¹, at ``zeta0`` on Γ. Needs label noise on least squares."""
    ls = problem.least_squares()
    alpha = noise.label_noise_alpha(problem)
    if ls is None or alpha is None:
        raise ConfigError("noise", "the label-noise ODE needs label noise on a least-squares problem")
    bound = method.for_problem(problem)

    def metric(z):
        if not bound.has_v:
            return jnp.ones_like(z)
        if bound.full_statistic:  # V needs all of Sigma = F F^T (Shampoo); S may be a matrix
            return bound.S_operator(bound.V_of_factor(noise.covariance_factor(problem, z)))
        return bound.S_operator(bound.V(noise.covariance_diag(problem, z)))

    def field(z):
        return geo.label_noise_drift(problem.loss, z, metric(z), alpha, least_squares=ls)

    return closedness(ls.residuals, field, metric, zeta0, candidate)
