"""Real powers of symmetric positive semidefinite matrices, with a derivative that survives equal eigenvalues.

Shampoo's preconditioner is (L + eps I)^(-1/4) on each side of a matrix parameter, and the potential test
differentiates it along Γ. ``jnp.linalg.eigh``'s own derivative divides by differences of eigenvalues, so it
is infinite (NaN) for a matrix with a repeated eigenvalue, which a rank-deficient L + eps I always has.
``spd_power`` computes A^p = Q diag(λ^p) Qᵀ and differentiates it by the Daleckii-Krein formula

    d(A^p) = Q (K ∘ (Qᵀ dA Q)) Qᵀ,   K_ij = (λ_i^p − λ_j^p) / (λ_i − λ_j),  K_ii = p λ_i^(p−1),

with the divided difference computed without cancellation for close eigenvalues.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

__all__ = ["spd_power"]


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def spd_power(A: Float[Array, "n n"], p: float) -> Float[Array, "n n"]:
    """A^p for a symmetric positive definite A (n, n) and a real power p (a Python float). Eigenvalues are
    clipped below at the smallest positive normal number, so a singular A gives a finite (huge) result for
    p < 0 instead of inf."""
    lam, Q = jnp.linalg.eigh(A)
    lam = jnp.maximum(lam, jnp.finfo(A.dtype).tiny)
    return (Q * lam**p) @ Q.T


def _divided_difference(lam, p):
    """K (n, n): (λ_i^p − λ_j^p)/(λ_i − λ_j), p λ^(p−1) where they are equal. Written as
    λ_j^p expm1(p log1p(d/λ_j)) / d with d = λ_i − λ_j, which does not cancel when λ_i and λ_j are close (a
    cluster of eigenvalues that eigh returns apart by rounding)."""
    li, lj = lam[:, None], lam[None, :]
    d = li - lj
    same = d == 0
    safe = jnp.where(same, 1.0, d)
    return jnp.where(same, p * lj ** (p - 1.0), lj**p * jnp.expm1(p * jnp.log1p(d / lj)) / safe)


@spd_power.defjvp
def _spd_power_jvp(p, primals, tangents):
    (A,), (dA,) = primals, tangents
    lam, Q = jnp.linalg.eigh(A)
    lam = jnp.maximum(lam, jnp.finfo(A.dtype).tiny)
    out = (Q * lam**p) @ Q.T
    dsym = 0.5 * (dA + dA.T)
    return out, Q @ (_divided_difference(lam, p) * (Q.T @ dsym @ Q)) @ Q.T
