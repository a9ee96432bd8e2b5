"""Quadratic residuals r(x) = B (x * x) - y (diagonal nets, the hyperbola) with a diagonal S: closed forms.

The label-noise drift with x factored out, and the exact limit of the preconditioned gradient flow (the
projection onto Gamma) by Newton on its convex dual.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .least_squares import _gram_shift


def quadratic_label_noise_rate(B: Float[Array, "n D"], y: Float[Array, "n"], w: Float[Array, "n"],
                               x: Float[Array, "D"], S: Float[Array, "D"], alpha: ArrayLike) -> Float[Array, "D"]:
    """h with x * h = the label-noise drift -(alpha/4) dPhi_S S grad^3 L[S] for residuals r(x) = B (x * x) - y
    (``LeastSquares.quadratic``), S diagonal (D,); shape (D,).

    With J_w = 2 Diag(sqrt w) B Diag(x): S grad^3 L[S] = 8 x S u with u = S * (w @ B^2), and
        h = -2 alpha S (u - B_w^T c),   c = argmin_c sum_k m_k (u_k - (B_w^T c)_k)^2,   m = S x^2,
    i.e. the weighted least-squares fit of u by the rows of B_w. Factoring x out keeps h exact where x_k is
    tiny (the drift itself is x_k h_k: its relative accuracy is lost there)."""
    sw = jnp.sqrt(w)
    Bw = sw[:, None] * B
    u = S * (w @ (B * B))
    m = S * x * x
    G = (Bw * m) @ Bw.T
    c = jnp.linalg.solve(G + _gram_shift(G, w), Bw @ (m * u))
    return -2.0 * alpha * S * (u - Bw.T @ c)


def _dual_flow_limit(x0, S, B, y, w, tol=1e-10, max_iter=200):
    """The limit of dx/ds = -S grad L for L = sum_i w_i r_i^2 / 2, r(x) = B (x * x) - y, S diagonal (D,).

    Along the flow x(s) = x0 * exp(-2 S * B^T q(s)) with q(s) = int_0^s W r (each coordinate is rescaled,
    never moved across 0), and q(s) is a gradient flow of the strictly convex
        F(q) = sum_k x0_k^2 / (4 S_k) exp(-4 S_k (B^T q)_k) + y^T q      (grad F = -r(x(q))),
    so the limit is x(q*) with q* = argmin F over the active samples (w > 0). Damped Newton on F: its Hessian
    B Diag(4 S x^2) B^T = J S J^T is the Gram matrix of the Gauss-Newton step, whose conditioning does not
    depend on how large S is, so S ~ 1/eps does not make this stiff (about ten Newton steps from a point
    O(1) off Gamma). Converged when a Newton step moves x by at most tol * max(1, |x|) or the residuals are
    at rounding level (1e-13 |y|); at most ``max_iter`` steps. Returns (x, converged)."""
    active = w > 0
    log_c = 2.0 * jnp.log(jnp.abs(x0)) - jnp.log(4.0 * S)  # -inf where x0_k = 0: that coordinate stays 0
    r_floor = 1e-13 * jnp.maximum(1.0, jnp.max(jnp.abs(y)))

    def parts(q):
        e = jnp.exp(log_c - 4.0 * S * (B.T @ q))  # x_k(q)^2 / (4 S_k)
        r = jnp.where(active, B @ (4.0 * S * e) - y, 0.0)  # -grad F
        return jnp.sum(e) + jnp.dot(y, q), r, e

    def body(state):
        q, _, it = state
        F, r, e = parts(q)
        Hm = jnp.where(active[:, None] & active[None, :], (B * (16.0 * S * S * e)) @ B.T, 0.0)  # B Diag(4 S x^2) B^T
        p = jnp.linalg.solve(Hm + _gram_shift(Hm, w), r)  # Newton direction (grad F = -r)
        dec = jnp.dot(r, p)  # Newton decrement squared
        x = jnp.sqrt(4.0 * S * e)
        done = (jnp.linalg.norm(2.0 * S * x * (B.T @ p)) <= tol * jnp.maximum(1.0, jnp.linalg.norm(x))) \
            | (jnp.max(jnp.abs(r)) <= r_floor)

        def bad(t):  # backtracking: accept a finite F that decreases (Armijo) or, once F's decrease is below
            Fn, rn, _ = parts(q + t * p)  # its rounding, a smaller residual
            good = (Fn <= F - 1e-4 * t * dec) | (jnp.linalg.norm(rn) < jnp.linalg.norm(r))
            return (~jnp.isfinite(Fn) | ~good) & (t > 1e-12)

        t = jax.lax.while_loop(bad, lambda t: 0.5 * t, jnp.asarray(1.0, q.dtype))
        return jnp.where(done, q + p, q + t * p), done, it + 1  # the last (tiny) step in full, then stop

    q, done, _ = jax.lax.while_loop(lambda st: ~st[1] & (st[2] < max_iter), body,
                                    (jnp.zeros_like(y), jnp.asarray(False), 0))
    return x0 * jnp.exp(-2.0 * S * (B.T @ q)), done


