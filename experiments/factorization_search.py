"""Experiment 2: search for a depth-2 matrix-factorization setting where Adam generalizes worse than SGD
because of its implicit bias (the gap must appear with label noise and shrink without it, across seeds).

Every setting runs Adam and SGD with label noise (delta) and without (delta = 0) in one compiled sweep per
method, for several seeds (each seed redraws W*, the observations and the paths). Printed per setting and
method: test error ||W - W*||_F^2 / (d1 d2), tr H and tr(Diag H^{1/2}) (tail averages), and the gap
test_adam - test_sgd with its seed spread, with and without label noise. Writes a JSON with every number.

Usage: python experiments/factorization_search.py [--settings NAME,...] [--seeds 3] [--out FILE.json]
"""
import argparse
import json
import time

import jax.numpy as jnp
import numpy as np

import slowsde_jax as S
from slowsde_jax import noise, paper as X, problems

from factorization_predict import with_spectrum


def aligned(d1, d2, rank, n, key, measurement, scales=None, init_scale=0.1):
    """A coordinate-aligned W* = sum_k s_k e_{i_k} e_{j_k}^T (distinct rows and columns) in place of the
    dense Gaussian one; same observation models."""
    p = problems.matrix_factorization(d1=d1, d2=d2, rank=rank, n=n, key=key, measurement=measurement,
                                      init_scale=init_scale)
    rng = np.random.default_rng(key)
    rows, cols = rng.permutation(d1)[:rank], rng.permutation(d2)[:rank]
    s = np.ones(rank) * 3.0 if scales is None else np.asarray(scales, float)
    W = np.zeros((d1, d2))
    W[rows, cols] = s
    W = jnp.asarray(W)
    y = W[p.rows, p.cols] if p.A is None else jnp.einsum("nij,ij->n", p.A, W)
    return problems.MatrixFactorization(y=y, n_active=p.n_active, W_star=W, rows=p.rows, cols=p.cols, A=p.A,
                                        init_scale=p.init_scale, shape=p.shape)


def spectrum(d1, d2, rank, n, key, measurement, sv, init_scale=0.1):
    """A dense W* = Q1 diag(sv) Q2^T with random orthonormal Q1, Q2 and the given singular values."""
    p = problems.matrix_factorization(d1=d1, d2=d2, rank=rank, n=n, key=key, measurement=measurement,
                                      init_scale=init_scale)
    rng = np.random.default_rng(1000 + key)
    Q1 = np.linalg.qr(rng.standard_normal((d1, rank)))[0]
    Q2 = np.linalg.qr(rng.standard_normal((d2, rank)))[0]
    W = jnp.asarray(Q1 @ np.diag(sv) @ Q2.T)
    y = W[p.rows, p.cols] if p.A is None else jnp.einsum("nij,ij->n", p.A, W)
    return problems.MatrixFactorization(y=y, n_active=p.n_active, W_star=W, rows=p.rows, cols=p.cols, A=p.A,
                                        init_scale=p.init_scale, shape=p.shape)


def covered(d, rank, n, measurement="entries", sv=None):
    """factorization_predict.with_spectrum: the Gaussian W* (or singular values ``sv``), every row and column
    observed."""
    return lambda s: with_spectrum(d, d, rank, n, measurement, sv=sv, key=s)


def gauss(**kw):
    return lambda s: problems.matrix_factorization(key=s, **kw)


# name -> (problem_fn(seed), delta, adam eta, sgd eta, steps adam, steps sgd)
SETTINGS = {
    "entries16_r2": (gauss(d1=16, d2=16, rank=2, n=100, measurement="entries"), 1.0, 0.01, 0.05, 100_000, 100_000),
    "entries16_r1": (gauss(d1=16, d2=16, rank=1, n=100, measurement="entries"), 1.0, 0.01, 0.05, 100_000, 100_000),
    "gauss10_r1": (gauss(d1=10, d2=10, rank=1, n=40, measurement="gaussian"), 1.0, 0.01, 0.02, 100_000, 100_000),
    "entries16_aligned_r3": (lambda s: aligned(16, 16, 3, 100, s, "entries"), 1.0, 0.01, 0.05, 100_000, 100_000),
    "gauss10_aligned_r2": (lambda s: aligned(10, 10, 2, 40, s, "gaussian"), 1.0, 0.01, 0.02, 100_000, 100_000),
    "entries16_sv_10_1": (lambda s: spectrum(16, 16, 2, 100, s, "entries", [10.0, 1.0]), 1.0, 0.01, 0.01, 100_000, 100_000),
    "entries16_r2_init1e-3": (gauss(d1=16, d2=16, rank=2, n=100, measurement="entries", init_scale=1e-3), 1.0, 0.01, 0.05,
                              100_000, 100_000),
    "entries16_r2_delta2": (gauss(d1=16, d2=16, rank=2, n=100, measurement="entries"), 2.0, 0.01, 0.02, 100_000, 100_000),
    # predicted by factorization_predict.py (W* of higher rank than n observations pin down; all rows/cols seen)
    "entries10_r5_n50": (covered(10, 5, 50), 1.0, 0.01, 0.2, 100_000, 100_000),
    "entries10_r10_n50": (covered(10, 10, 50), 1.0, 0.01, 0.2, 100_000, 100_000),
    "entries10_r2_n50": (covered(10, 2, 50), 1.0, 0.01, 0.2, 100_000, 100_000),
    "entries10_r5_n50_adam003": (covered(10, 5, 50), 1.0, 0.03, 0.2, 100_000, 100_000),
    "entries10_r10_n50_adam003": (covered(10, 10, 50), 1.0, 0.03, 0.2, 100_000, 100_000),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps-scale", type=float, default=1.0)
    ap.add_argument("--out", default="factorization_search.json")
    a = ap.parse_args()
    results = {}
    for name in a.settings.split(","):
        fn, delta, eta_a, eta_s, st_a, st_s = SETTINGS[name]
        res = {}
        for mname, m, eta, steps in (("adam", S.adam(beta2=0.99, eps=1e-8), eta_a, st_a), ("sgd", S.sgd(), eta_s, st_s)):
            steps = int(steps * a.steps_scale)
            t0 = time.time()
            g = X.run_seed_grid(fn, noise.label_noise(delta), m, range(a.seeds), eta=eta,
                                sweep={"delta": [delta, 0.0]}, steps=steps, n_record=20, tail_fraction=0.1)
            res[mname] = {"eta": eta, "steps": steps, "t_end": g.t_end.tolist(), "seconds": time.time() - t0,
                          **{k: v.tolist() for k, v in g.tail.items()}}  # (n_seeds, [noise, clean])
        te_a, te_s = np.asarray(res["adam"]["test_error"]), np.asarray(res["sgd"]["test_error"])
        gap = te_a - te_s  # (n_seeds, 2)
        res["gap_noise"], res["gap_clean"] = gap[:, 0].tolist(), gap[:, 1].tolist()
        results[name] = res
        print(f"== {name}  (delta {delta}; adam eta {eta_a}, sgd eta {eta_s})")
        for mname in ("adam", "sgd"):
            r = res[mname]
            f = lambda k, j: " ".join(f"{x[j]:.3g}" for x in r[k])
            print(f"  {mname:4s} t_end {r['t_end'][0]:.3g}  {r['seconds']:.0f}s | noise: test [{f('test_error', 0)}] "
                  f"trH [{f('trace_H', 0)}] trDiagH^1/2 [{f('trace_sqrt_diag_H', 0)}] train [{f('train_loss', 0)}] | "
                  f"clean: test [{f('test_error', 1)}] trH [{f('trace_H', 1)}] trDiagH^1/2 [{f('trace_sqrt_diag_H', 1)}]")
        print(f"  gap adam-sgd: noise {np.round(gap[:, 0], 3)}  clean {np.round(gap[:, 1], 3)}", flush=True)
        with open(a.out, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
