"""Mapping a per-path function over a batch of paths without deadlocking XLA:CPU.

jaxlib 0.10's CPU LAPACK kernels (syevd, getrf, potrf, trsm, ...) split a batched call over XLA's intra-op
thread pool once batch * cost >= 200 000 (cost 5 m^3 for an m x m eigh, m^3 for a solve) and block the
calling thread, itself usually a worker of that pool, until the pieces finish. When every worker of the
pool sits in such a call at once, the pieces can never run and the program hangs with no CPU use, at a
time that depends on thread scheduling. ``benchmarks/repro_cpu_lapack_deadlock.py`` reproduces it in pure
JAX. ``map_paths`` keeps each batched linear-algebra call below that size on the CPU by mapping over
groups of paths (``jax.lax.map`` with ``batch_size``); on other backends it is a plain ``jax.vmap``.
"""
from __future__ import annotations

import jax

_SPLIT_COST = 200_000  # jaxlib's threshold for splitting a batched LAPACK call


def safe_batch(matrix_size: int) -> int:
    """The most paths per batched LAPACK call on m x m matrices (m = ``matrix_size``) that stays inline."""
    return max(1, (_SPLIT_COST - 1) // (5 * max(1, int(matrix_size)) ** 3))


def factorized_size(theta, least_squares=None) -> int:
    """The largest matrix the geometry factorizes per point theta (D,): the n x n Gram matrix for least squares
    (``least_squares``, a ``LeastSquares`` with residuals r(theta) -> (n,)), else the D x D Hessian."""
    return theta.shape[-1] if least_squares is None else jax.eval_shape(least_squares.residuals, theta).shape[0]


def map_paths(f, xs, matrix_size: int):
    """``jax.vmap(f)(xs)`` over the leading axis of the pytree ``xs``; on the CPU in groups of at most
    ``safe_batch`` (``matrix_size``) paths (sequential groups, each vmapped)."""
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    b = safe_batch(matrix_size)
    if jax.default_backend() != "cpu" or n <= b:
        return jax.vmap(f)(xs)
    return jax.lax.map(f, xs, batch_size=b)
