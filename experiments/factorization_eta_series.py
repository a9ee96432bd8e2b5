"""Experiment 2, Adam: when does a discrete run follow the label-noise ODE? Test error against slow time t for
the ODE and for discrete runs at several eta, all from the same early state (factorization_ode.py's t0 = 2
state of ``with_spectrum(10, 10, 10, 50, "entries", key=seed)``), each discrete record projected onto Gamma.
Also the largest preconditioner entry max S = 1 / (sqrt(v) + eps) per record: the ODE's grows towards 1/eps
where it kills a coordinate, a discrete run's v keeps its own gradient fluctuations.

Usage: python experiments/factorization_eta_series.py [--seed 0] [--etas 0.03,0.015,0.0075,0.00375] [--T 40]
       [--n-record 20] [--paths 8] [--rtol 1e-6]
"""
import argparse
import time

import numpy as np

import slowsde_jax as S
from slowsde_jax import paper as X
from slowsde_jax import discrete, noise, sde

from factorization_predict import with_spectrum


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--etas", default="0.03,0.015,0.0075,0.00375")
    ap.add_argument("--T", type=float, default=40.0)
    ap.add_argument("--n-record", type=int, default=20)
    ap.add_argument("--paths", type=int, default=8)
    ap.add_argument("--rtol", type=float, default=1e-6, help="the ODE's relative tolerance (atol = rtol / 100)")
    a = ap.parse_args()
    P, L = with_spectrum(10, 10, 10, 50, "entries", key=a.seed), noise.label_noise(1.0)
    m = S.adam(c=0.01 / 0.03**2, eps=1e-8)  # beta2 = 0.99 at the reference lr 0.03, as factorization_ode.py
    early = S.simulate_discrete(P, L, m, eta=0.03, T=2.0, key=a.seed, n_record=1, start=S.Start(v0="zeros"), execution=S.Execution(progress=False))
    th0, v0 = early.theta[0, -1], np.maximum(early.v[0, -1], 1e-300)

    t_start = time.perf_counter()
    ode = S.simulate_slow_sde(P, L, m, T=a.T, n_record=a.n_record, start=S.Start(theta0=th0, v0=v0), execution=S.Execution(progress=False), integrator=S.LabelNoiseODE(solver="kencarp4", rtol=a.rtol, atol=a.rtol / 100))
    sv = np.linalg.svd(np.asarray(P.matrix(ode.theta[0, -1])), compute_uv=False)
    print(f"seed {a.seed}, t = {np.round(ode.t, 2).tolist()}\nODE ({time.perf_counter() - t_start:.0f} s)"
          + (f" FAILED {ode.meta['failure_reasons']}" if ode.meta["failure_reasons"] else "")
          + f"\n  test error {np.round(np.asarray(ode.observables['test_error'][0]), 3).tolist()}"
          f"\n  max S      {[f'{s:.0e}' for s in np.asarray(m.S(ode.v[0])).max(-1)]}"
          f"\n  singular values of W at T {np.round(sv, 3).tolist()}", flush=True)
    for eta in (float(e) for e in a.etas.split(",")):
        t_start = time.perf_counter()
        tr = S.simulate_discrete(P, L, m, eta=eta, T=a.T, n_paths=a.paths, key=a.seed + 1000, n_record=a.n_record, start=S.Start(theta0=th0, v0=v0), execution=S.Execution(progress=False))
        test, se = [], []
        for k in range(tr.theta.shape[1]):
            pr = X.states_at_projection(P, m, tr.theta[:, k], tr.v[:, k])
            test.append(float(np.mean(pr["test_error"])))
            se.append(float(np.std(pr["test_error"], ddof=1) / np.sqrt(a.paths)))
        W = np.stack([np.asarray(P.matrix(z)) for z in pr["zeta"]])
        sv = np.linalg.svd(W, compute_uv=False)
        print(f"eta {eta} ({tr.meta['steps']} steps, {time.perf_counter() - t_start:.0f} s)"
              f"\n  test error {np.round(test, 3).tolist()}\n  its se     {np.round(se, 3).tolist()}"
              f"\n  max S      {[f'{s:.0e}' for s in np.asarray(m.S(tr.v)).max(-1).mean(0)]} (mean over paths)"
              f"\n  singular values of W at T, first paths {[np.round(s[:6], 2).tolist() for s in sv[:3]]}",
              flush=True)


if __name__ == "__main__":
    main()
