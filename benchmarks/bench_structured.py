"""Per-point cost of the slow-SDE coefficients, dense vs structured (sample space), on the diagonal net.

    PYTHONPATH=. python benchmarks/bench_structured.py [--sizes 200 2000] [--n 40] [--points 8] [--dense-max 200]

Both paths give (drift of zeta, drift of v, tangent noise) for Adam (c = 10, v at equilibrium) under full-batch
label noise (delta = 0.5) at points of Gamma, jitted and vmapped over ``--points`` points:

- dense: ``sde.slow_sde_coefficients(..., structured=False)`` (Hessian (D, D), Sigma (D, D), two eigendecompositions of D x D,
  dense grad^3 L[Sigma_diamond] = gradient of a Hessian, dPhi_S S Sigma^{1/2} (D, D));
- structured: ``noise.covariance_factor`` (G = delta J^T W, (D, n)) and ``geometry.ls_slow_sde_coefficients``
  (n x n eigendecomposition, O(n) Jacobian-vector products; tangent factor (D, n)).

The dense path runs only up to ``--dense-max`` (at D = 2000 it takes minutes per point). Each time is the best
of 3 runs after compiling, divided by the number of points. About 30 s on 2 CPU cores with the defaults.

The dense path is mapped over points with ``jax.lax.map``, not ``jax.vmap``: vmapped, its three independent
*batched* eigendecompositions can deadlock XLA:CPU on a machine with few cores (jaxlib's batched LAPACK eigh
splits the batch over the intra-op thread pool from inside a pool thread, ``jax::ParallelBatchMap``; with 2
threads, two such eighs in flight each hold one thread and wait forever for the sub-tasks queued behind them:
seen with jaxlib 0.10.2, all threads idle in gdb). The structured path has a single eigh (n x n) per point and is
timed both vmapped and with lax.map.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

import slowsde_jax  # noqa: F401
from slowsde_jax import geometry as G
from slowsde_jax import methods, noise, problems, sde
from _timing import best_time



def points_on_gamma(prob, n, count, seed=0):
    """``count`` points of Gamma: w = w* + a null-space direction of Z, x = [sqrt(w+ + a); sqrt(w- + a)]."""
    Z = np.asarray(prob.Z)
    null = np.linalg.svd(Z, full_matrices=True)[2][n:].T
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w = np.asarray(prob.w_star) + 0.1 * null @ rng.normal(size=null.shape[1])
        a = rng.uniform(0.02, 0.1)
        out.append(np.concatenate([np.sqrt(np.maximum(w, 0) + a), np.sqrt(np.maximum(-w, 0) + a)]))
    return jnp.asarray(np.stack(out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--points", type=int, default=8)
    ap.add_argument("--dense-max", type=int, default=200)
    a = ap.parse_args()
    nz, method, c = noise.label_noise(0.5), methods.adam(c=10.0, eps=1e-8), 10.0
    print(f"backend={jax.default_backend()} n={a.n} points={a.points} (time per point in ms, best of 3; ratio = dense / structured vmap)")
    print(f"{'D':>6} {'dense [ms]':>11} {'struct vmap':>12} {'struct map':>12} {'ratio':>9}  drift rel. diff")
    for D in a.sizes:
        prob = problems.diagonal_net(d=D // 2, n=a.n, k=3, key=0, n_test=10)
        xs = points_on_gamma(prob, a.n, a.points)
        vs = jax.vmap(lambda x: method.V(nz.covariance_diag(prob, x)))(xs)

        def one(xv):
            x, v = xv
            drift, A = G.ls_slow_sde_coefficients(prob.least_squares(), x, method.S(v), nz.covariance_factor(prob, x))
            return drift, c * (method.V(nz.covariance_diag(prob, x)) - v), A

        structured = jax.jit(jax.vmap(lambda x, v: one((x, v))))
        structured_map = jax.jit(lambda xs, vs: jax.lax.map(one, (xs, vs)))
        t_s = best_time(structured, xs, vs, repeats=3) / a.points
        t_sm = best_time(structured_map, xs, vs, repeats=3) / a.points
        if D <= a.dense_max:
            dense = jax.jit(lambda xs, vs: jax.lax.map(
                lambda xv: sde.slow_sde_coefficients(prob, nz, method, xv[0], xv[1], c, structured=False), (xs, vs)))
            t_d = best_time(dense, xs, vs, repeats=3) / a.points
            (bd, _, Ad), (bs, _, As) = dense(xs, vs), structured(xs, vs)
            diff = float(jnp.max(jnp.abs(bd - bs)) / jnp.max(jnp.abs(bd)))  # label noise: Sigma_par = 0 in both
            print(f"{D:>6} {1e3 * t_d:>11.2f} {1e3 * t_s:>12.3f} {1e3 * t_sm:>12.3f} {t_d / t_s:>9.0f}  {diff:.1e}")
        else:
            print(f"{D:>6} {'-':>11} {1e3 * t_s:>12.3f} {1e3 * t_sm:>12.3f} {'-':>9}  -")


if __name__ == "__main__":
    main()
