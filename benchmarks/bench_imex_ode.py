"""Adam's label-noise ODE on a 5 x 5 factorization through its stiff stretch: Tsit5 with the zero floor (the
default) against KenCarp4 with the structured Jacobian (``solver="kencarp4"``), on the problems of
tests/test_ode_zero_floor.py (full-rank Gaussian W*, 15 entries that cover every row and column; the key
draws W* and the mask). Prints, per solver, how far it got, its wall time with compilation, and the test
error per record; then the largest difference between the two solvers over the records both reached.

Usage: python benchmarks/bench_imex_ode.py [--key 2] [--T 2] [--max-steps 3000]
"""
import argparse
import time

import numpy as np

import slowsde_jax as S
from slowsde_jax import discrete, experiments as X, noise, problems, sde


def problem(key):
    """Full-rank Gaussian 5 x 5 W*, 15 entries that cover every row and column (key 1: the tests' problem)."""
    return X.with_covering_entries(problems.matrix_factorization(d1=5, d2=5, rank=5, n=15, key=key, init_scale=0.1),
                                   2000 + key)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", type=int, default=2)
    ap.add_argument("--T", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=3000)
    a = ap.parse_args()
    P, L, m = problem(a.key), noise.label_noise(1.0), S.adam(c=0.01 / 0.03**2, eps=1e-8)
    early = discrete.simulate_discrete(P, L, m, eta=0.03, T=1.0, v0="zeros", key=0, n_record=1, progress=False)
    th0, v0 = early.theta[0, -1], np.maximum(early.v[0, -1], 1e-300)
    runs = {}
    for solver in ("tsit5", "kencarp4"):
        t0 = time.perf_counter()
        r = runs[solver] = sde.simulate_slow_sde(P, L, m, T=a.T, theta0=th0, v0=v0, n_record=4, solver=solver,
                                                 max_steps=a.max_steps, progress=False)
        dt = time.perf_counter() - t0
        status = r.meta["failure_reasons"][0] if r.meta["failure_reasons"] else f"reached T = {a.T:g}"
        print(f"{solver:9s} {dt:.1f} s (with compilation), {status}\n          test error per record "
              f"{np.round(np.asarray(r.observables['test_error'][0]), 6)}", flush=True)
    ok = min(np.searchsorted(r.t, r.diverged_time[0]) if r.meta["failure_reasons"] else len(r.t)
             for r in runs.values())  # records before the interval where a solver stopped
    gap = np.abs(np.asarray(runs["tsit5"].theta[0, :ok]) - np.asarray(runs["kencarp4"].theta[0, :ok])).max()
    print(f"max |zeta_tsit5 - zeta_kencarp4| over the records both reached before either stopped: {gap:.1e}")


if __name__ == "__main__":
    main()
