"""Experiment 2, predicted without dynamics: where does Adam's label-noise target generalize worse than SGD's?

The label-noise slow ODE drives SGD to a minimizer of tr H on Gamma = {interpolating factorizations} and Adam
to a minimizer of tr(Diag H^{1/2}). For each setting and seed this script starts from one interpolating point
(L-BFGS on the clean loss from the problem's small init, then Gauss-Newton onto Gamma) and finds a minimizer of each sharpness
on Gamma directly (`slowsde_jax.paper.min_sharpness_on_manifold`). Printed and saved: the test
error ||W - W*||_F^2 / (d1 d2) of the start and of each minimizer, tr H and tr(Diag H^{1/2}) at each, the
singular values of each minimizer's W, and the "predict zero off the observations" baseline.

What the two targets are (depth 2, W = U V^T, columns u_k, v_k; n observations, weights 1/n):
- all entries observed: tr H = (d1 ||V||_F^2 + d2 ||U||_F^2) / n, whose minimum over factorizations of W is
  2 sqrt(d1 d2) ||W||_* / n (nuclear norm); tr(Diag H^{1/2}) = sum_k (d1 ||v_k|| + d2 ||u_k||) / sqrt(n), whose
  minimum is 2 sqrt(d1 d2 / n) sum_k sigma_k(W)^{1/2} (Schatten-1/2 quasi-norm, by AM-GM and Rotfel'd's
  inequality). Gaussian sensing concentrates to the same two for large n.
- observed entries Omega: tr H = (sum_a n_a |U_a|^2 + sum_b m_b |V_b|^2) / n (row/column counts n_a, m_b: a
  weighted nuclear norm); tr(Diag H^{1/2}) = sum_k [sum_a ||v_k restricted to Omega_a|| + sum_b ||u_k on
  Omega^b||] / sqrt(n), a Schatten-1/2-like quasi-norm that also prefers sparse factors.
So Adam's target is the stronger low-rank prior (as l_{1/2} against l_1 in the diagonal net): it helps when
W* is low rank and the data nearly determine it, and should hurt when the interpolating W it picks has a lower
rank than W* (W* of high rank, or too few observations), since a lower-rank interpolant extrapolates more.

Usage: python experiments/factorization_predict.py [--settings NAME,...] [--seeds 3] [--out FILE.json]
"""
import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from slowsde_jax import paper as X, problems

jax.config.update("jax_enable_x64", True)


def with_spectrum(d1, d2, rank, n, measurement, sv=None, key=0, init_scale=0.1):
    """A factorization problem whose W* = Q1 diag(sv) Q2^T (random orthonormal Q1, Q2, dense singular vectors);
    ``sv`` None keeps matrix_factorization's Gaussian W* (rank ``rank``)."""
    p = problems.matrix_factorization(d1=d1, d2=d2, rank=rank, n=n, key=key, measurement=measurement,
                                      init_scale=init_scale)
    if sv is not None:
        rng = np.random.default_rng(1000 + key)
        Q1 = np.linalg.qr(rng.standard_normal((d1, len(sv))))[0]
        Q2 = np.linalg.qr(rng.standard_normal((d2, len(sv))))[0]
        W = jnp.asarray(Q1 @ np.diag(sv) @ Q2.T)
        y = p.y if p.A is None else jnp.einsum("nij,ij->n", p.A, W)  # entries: relabelled just below
        p = dataclasses.replace(p, W_star=W, y=y)
    return X.with_covering_entries(p, 2000 + key) if p.A is None else p

# name -> problem_fn(seed)
SETTINGS = {
    # the low-rank settings of factorization_search.py (claim not reproduced there)
    "entries10_r2_n50": lambda s: with_spectrum(10, 10, 2, 50, "entries", key=s),
    "gauss10_r1_n40": lambda s: with_spectrum(10, 10, 1, 40, "gaussian", key=s),
    # W* of higher rank than the observations can pin down
    "entries10_r5_n50": lambda s: with_spectrum(10, 10, 5, 50, "entries", key=s),
    "entries10_r10_n50": lambda s: with_spectrum(10, 10, 10, 50, "entries", key=s),
    "gauss10_r5_n40": lambda s: with_spectrum(10, 10, 5, 40, "gaussian", key=s),
    "gauss10_r10_n40": lambda s: with_spectrum(10, 10, 10, 40, "gaussian", key=s),
    # flat vs decaying spectrum of rank 5 (Frobenius norm 10 x 10 / sqrt(10 x 10) scale as the Gaussian W*)
    "entries10_flat5_n50": lambda s: with_spectrum(10, 10, 5, 50, "entries", sv=[4.5] * 5, key=s),
    "entries10_decay5_n50": lambda s: with_spectrum(10, 10, 5, 50, "entries", sv=[8.0, 4.0, 2.0, 1.0, 0.5], key=s),
}


def project_to_gamma(P, theta, steps=30):
    """Gauss-Newton minimum-norm steps onto {residuals = 0}: an interpolating point near theta."""
    cons = lambda th: P.residuals(th)
    jac = jax.jit(jax.jacfwd(cons))
    for _ in range(steps):
        theta = theta - jnp.linalg.lstsq(jac(theta), cons(theta))[0]
    return theta


def measure(P, theta):
    h = np.asarray(P.hessian_diag(jnp.asarray(theta)))
    sv = np.linalg.svd(np.asarray(P.matrix(jnp.asarray(theta))), compute_uv=False)
    return {"test_error": float(P.test_error(jnp.asarray(theta))), "trace_H": float(h.sum()),
            "trace_sqrt_diag_H": float(np.sqrt(np.maximum(h, 0)).sum()),
            "train_max_residual": float(np.abs(np.asarray(P.residuals(jnp.asarray(theta)))).max()),
            "sv": sv.round(4).tolist(), "rank_1e-3": int((sv > 1e-3 * sv[0]).sum())}


def zero_fill_error(P):
    """Test error of W = W* on the observed entries and 0 elsewhere (entries only; NaN for Gaussian)."""
    if P.A is not None:
        return float("nan")
    W = np.zeros(P.W_star.shape)
    W[np.asarray(P.rows), np.asarray(P.cols)] = np.asarray(P.y)
    return float(np.mean((W - np.asarray(P.W_star)) ** 2))


def fit_start(P, seed, steps=500):
    """The interpolating start: L-BFGS on the clean loss from the problem's small init (float64), then
    Gauss-Newton onto Gamma; a stand-in for where small-init gradient descent meets Gamma."""
    f = P.loss
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(f)

    def step(_, c):
        x, st = c
        v, g = vg(x, state=st)
        u, st = opt.update(g, st, x, value=v, grad=g, value_fn=f)
        return optax.apply_updates(x, u), st

    th = P.init(jax.random.PRNGKey(seed))
    th = jax.jit(lambda x: jax.lax.fori_loop(0, steps, step, (x, opt.init(x)))[0])(th)
    return project_to_gamma(P, th)


def predict(P, seed, smoothing, max_steps):
    start = fit_start(P, seed)
    out = {"start": measure(P, start), "zero_fill": zero_fill_error(P),
           "W_star_sv": np.linalg.svd(np.asarray(P.W_star), compute_uv=False).round(4).tolist()}
    for name, power in (("sgd_trH", 1.0), ("adam_trDiagH12", 0.5)):
        t0 = time.time()
        th, info = X.min_sharpness_on_manifold(P, start, power, smoothing=smoothing, max_steps=max_steps)
        out[name] = {**measure(P, th), **info, "seconds": time.time() - t0}
        out[name + "_theta"] = np.asarray(th).tolist()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default="factorization_predict.json")
    ap.add_argument("--smoothing", default="1e-3,1e-6", help="eps levels of (h + eps)^(1/2), comma-separated")
    ap.add_argument("--max-steps", type=int, default=1500, help="Riemannian descent steps per eps level")
    a = ap.parse_args()
    results = {}
    for name in a.settings.split(","):
        results[name] = {}
        for s in range(a.seeds):
            r = predict(SETTINGS[name](s), s, [float(e) for e in a.smoothing.split(",")], a.max_steps)
            results[name][s] = r
            g, m = r["sgd_trH"], r["adam_trDiagH12"]
            print(f"{name} seed {s}: test start {r['start']['test_error']:.3f} zero-fill {r['zero_fill']:.3f} | "
                  f"SGD-target test {g['test_error']:.3f} trH {g['trace_H']:.3g} trDH½ {g['trace_sqrt_diag_H']:.3g} "
                  f"rank {g['rank_1e-3']} | Adam-target test {m['test_error']:.3f} trH {m['trace_H']:.3g} "
                  f"trDH½ {m['trace_sqrt_diag_H']:.3g} rank {m['rank_1e-3']} | gap {m['test_error'] - g['test_error']:+.3f} "
                  f"({g['seconds']:.0f}+{m['seconds']:.0f}s)", flush=True)
        with open(a.out, "w") as fh:
            json.dump(results, fh)


if __name__ == "__main__":
    main()
