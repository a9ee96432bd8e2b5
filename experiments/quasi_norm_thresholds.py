"""Sample-size thresholds of the minimum-l1 and minimum-l_{1/2} interpolators on the diagonal net's data:
the end points that SGD's (tr H) and Adam's (tr(Diag H^{1/2})) label-noise ODEs aim for, computed without
any dynamics (reweighted least squares, ``experiments.min_quasi_norm_interpolator``). A cheap check of
which (d, k) puts the thresholds where the poster has them, before a long GPU run.

Usage: python experiments/quasi_norm_thresholds.py --d 10000 --k 100 --ns 350,420,500,650,800,900 [--seeds 0]
"""
import argparse
import time

import numpy as np

from slowsde_jax import paper as X, problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=10_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--ns", default="350,420,500,650,800,900")
    ap.add_argument("--qs", default="1,0.5")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--iters", type=int, default=40)
    a = ap.parse_args()
    ns = [int(n) for n in a.ns.split(",")]
    for seed in (int(s) for s in a.seeds.split(",")):
        P = problems.diagonal_net(d=a.d, n=max(ns), k=a.k, key=seed, n_test=1)
        Z, y, w_star = np.asarray(P.Z), np.asarray(P.y), np.asarray(P.w_star)
        null = 0.5 * np.sum(w_star**2)
        for q in (float(x) for x in a.qs.split(",")):
            losses = []
            for n in ns:
                t0 = time.perf_counter()
                w = X.min_quasi_norm_interpolator(Z[:n], y[:n], q=q, iters=a.iters)
                losses.append(0.5 * float(np.sum((w - w_star) ** 2)))  # clean test loss for +-1 features
                print(f"seed {seed} q {q:g} n {n}: test loss {losses[-1]:.3g} (null {null:.3g})  "
                      f"{time.perf_counter() - t0:.0f}s", flush=True)
            print(f"seed {seed} q {q:g}: threshold n (test loss < 1) = {X.threshold_n(ns, losses, 1.0):.1f}", flush=True)


if __name__ == "__main__":
    main()
