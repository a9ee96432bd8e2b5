"""Cost of each geometric object against one gradient evaluation, on the diagonal net at a point of Gamma.

    python benchmarks/bench_geometry.py [--sizes 100 1000 10000] [--n 20]

D = 2d parameters, n samples. Dense objects (Hessian, dPhi_S, Sigma_diamond, dense grad^3 L[M]) run where
D is small enough; the least-squares structured path and the low-rank contraction run at every size.
Each entry is the best of 5 runs after compiling; the ratio column is time / time of one gradient.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

import slowsde_jax  # noqa: F401
from slowsde_jax import geometry as G
from slowsde_jax import problems
from _timing import best_time



def point_on_gamma(prob, n):
    Z = np.asarray(prob.Z)
    null = np.linalg.svd(Z, full_matrices=True)[2][n:].T
    w = np.asarray(prob.w_star) + 0.1 * null @ np.random.default_rng(0).normal(size=null.shape[1])
    a = 0.05
    return jnp.asarray(np.concatenate([np.sqrt(np.maximum(w, 0) + a), np.sqrt(np.maximum(-w, 0) + a)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--dense-max", type=int, default=2000, help="largest D for dense Hessian-based objects")
    ap.add_argument("--dense3-max", type=int, default=200, help="largest D for the dense grad^3 L[M]")
    a = ap.parse_args()
    print(f"backend={jax.default_backend()} device={jax.devices()[0]} n={a.n}")
    print(f"{'D':>6}  {'object':<42} {'time [ms]':>10} {'x gradient':>11}")
    for D in a.sizes:
        prob = problems.diagonal_net(d=D // 2, n=a.n, k=3, key=0, n_test=10)
        x = point_on_gamma(prob, a.n)
        w = prob.sample_weights()
        S = 1.0 / (jnp.abs(x) + 0.1)
        alpha = 0.25 / a.n
        rng = np.random.default_rng(1)
        Gm = jnp.asarray(rng.normal(size=(D, 8)))
        jobs = {"gradient": (jax.jit(jax.grad(prob.loss)), x)}
        jobs["ls Jacobian J (n x D)"] = (jax.jit(lambda t: prob.least_squares().jacobian(t)), x)
        J = prob.least_squares().jacobian(x)
        jobs["ls dPhi_S x (structured)"] = (jax.jit(lambda J, v: G.ls_apply_projection(J, w, S, v)), J, x)
        jobs["ls tangent grad^3 L[S] (structured)"] = (
            jax.jit(lambda t, J: G.ls_third_derivative_tangent(prob.least_squares(), w, t, S[:, None] * J.T)), x, J)
        jobs["label-noise drift (structured, incl. J)"] = (
            jax.jit(lambda t: G.label_noise_drift(prob.loss, t, S, alpha, least_squares=prob.least_squares())), x)
        jobs["grad^3 L[G G^T], rank 8 (low-rank)"] = (jax.jit(lambda t: G.third_derivative_contraction(prob.loss, t, G=Gm)), x)
        if D <= a.dense_max:
            H = jax.jit(jax.hessian(prob.loss))(x)
            Sigma = alpha * H
            jobs["Hessian (dense)"] = (jax.jit(jax.hessian(prob.loss)), x)
            jobs["dPhi_S (dense eigh)"] = (jax.jit(lambda H: G.projection_jacobian(H, S, rank=a.n)), H)
            jobs["Sigma_diamond (dense eigh)"] = (jax.jit(lambda H, Sg: G.sigma_diamond(H, Sg, S, rank=a.n)), H, Sigma)
        if D <= a.dense3_max:
            jobs["grad^3 L[M] (dense, Hessian in grad)"] = (jax.jit(lambda t: G.third_derivative_contraction(prob.loss, t, jnp.diag(S))), x)
            jobs["label-noise drift (dense)"] = (jax.jit(lambda t: G.label_noise_drift(prob.loss, t, S, alpha)), x)
        t_grad = None
        for name, (fn, *args) in jobs.items():
            t = best_time(fn, *args)
            t_grad = t if t_grad is None else t_grad
            print(f"{D:>6}  {name:<42} {1e3 * t:>10.3f} {t / t_grad:>11.1f}")


if __name__ == "__main__":
    main()
