"""Solves with small symmetric positive definite matrices without LAPACK.

The slow-SDE step solves with the n x n Gram matrix J S J^T of the residuals several times per path and
step (three Gauss-Newton retraction steps). For the few samples of the toy problems (n <= 8) a batched
LAPACK call costs far more than its arithmetic on the CPU (getrf plus two trsm calls per solve, each a
loop over the batch), and it is one of the calls that can deadlock XLA:CPU (see ``_batching``).
``spd_solve`` unrolls the Cholesky factorization and the two triangular solves into scalar arithmetic
instead, which ``vmap`` turns into a few fused elementwise loops over the paths; larger systems go to
``jnp.linalg.solve``.
"""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

SMALL_N = 8  # the largest n solved by the unrolled Cholesky factorization


def spd_solve(A: Float[Array, "n n"], b: Float[Array, "n *k"]) -> Float[Array, "n *k"]:
    """x with A x = b for a symmetric positive definite A (n, n); b is (n,) or (n, k).

    n <= ``SMALL_N``: unrolled Cholesky A = L L^T and two substitutions (n^3/6 multiply-adds, no
    pivoting, which a positive definite A does not need). A matrix that is not positive definite to
    rounding gives NaN (the square root of a negative pivot), never a silent wrong answer. Otherwise
    ``jnp.linalg.solve`` (LU with partial pivoting).
    """
    n = A.shape[-1]
    if n > SMALL_N:
        return jnp.linalg.solve(A, b[..., None])[..., 0] if b.ndim == 1 else jnp.linalg.solve(A, b)
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        s = A[j, j] - sum(L[j][k] * L[j][k] for k in range(j))
        L[j][j] = jnp.sqrt(s)
        for i in range(j + 1, n):
            L[i][j] = (A[i, j] - sum(L[i][k] * L[j][k] for k in range(j))) / L[j][j]
    y = [None] * n
    for i in range(n):  # L y = b
        y[i] = (b[i] - sum(L[i][k] * y[k] for k in range(i))) / L[i][i]
    x = [None] * n
    for i in reversed(range(n)):  # L^T x = y
        x[i] = (y[i] - sum(L[k][i] * x[k] for k in range(i + 1, n))) / L[i][i]
    return jnp.stack(x)
