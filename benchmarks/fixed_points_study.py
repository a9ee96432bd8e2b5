"""Where each method's label-noise flow ends: docs/experiments.md section 6.

Every method's label-noise ODE (``simulate_slow_sde``; Shampoo's on dense geometry, ``sde.full_S``) from
the same point of Γ, with v at its equilibrium, on a 4 x 4 depth-2 factorization (a rank-1 matrix from 10
observed entries, model rank 2, D = 16) up to SDE time T (SGD's, whose speed is α/4, and Shampoo's, slow from a start far out, to longer ones). Prints, per method, the end point's tr H,
tr(Diag H^{1/2}) and test error (the relative error on the whole matrix), its speed |dζ/dt| over the last
record interval relative to the first (how close to a fixed point it is), and the distance between end
points.

    python benchmarks/fixed_points_study.py [--T 100] [--sgd-T 10000] [--shampoo-T 2000] [--points 3]
"""
import argparse
import time

import jax
import numpy as np

import slowsde_jax as S
from slowsde_jax import noise, problems

METHODS = {"sgd": S.sgd(), "adam": S.adam(c=10.0, eps=1e-8), "adafactor": S.adafactor(c=10.0, eps=1e-8),
           "shampoo": S.shampoo(c=10.0, eps=1e-8)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=float, default=100.0)
    ap.add_argument("--sgd-T", type=float, default=10_000.0, help="SGD's flow is slower (its speed is α/4)")
    ap.add_argument("--shampoo-T", type=float, default=2_000.0, help="Shampoo's flow from point 0 needs longer")
    ap.add_argument("--points", type=int, default=3)
    args = ap.parse_args()
    prob = problems.matrix_factorization(d1=4, d2=4, rank=1, n=10, key=0, model_rank=2)
    nz = noise.label_noise(0.5)
    n_rec = 40
    for point in range(args.points):
        z0 = S.on_gamma(prob, prob.init(jax.random.PRNGKey(point)) * 2)
        start = S.Start(theta0=z0, v0="equilibrium")
        ends = {}
        print(f"point {point}: start tr H {float(S.sharpness_values(prob, z0)['trace_H']):.4f}, test error "
              f"{float(prob.test_error(z0)):.4f}")
        print(f"{'method':>10} {'tr H':>9} {'tr DiagH^1/2':>13} {'test error':>11} {'speed end/start':>16} {'s':>6}")
        for name, m in METHODS.items():
            t0 = time.time()
            T = {"sgd": args.sgd_T, "shampoo": args.shampoo_T}.get(name, args.T)
            ode = S.simulate_slow_sde(prob, nz, m, T=T, n_record=n_rec, start=start,
                                      execution=S.Execution(progress=False), recording=S.Recording(sharpness=True))
            z = ode.theta[0]
            speed = np.linalg.norm(z[-1] - z[-2]) / max(np.linalg.norm(z[1] - z[0]), 1e-300)
            ends[name] = z[-1]
            o = ode.observables
            fail = " FAILED " + "; ".join(ode.meta["failure_reasons"]) if ode.meta["failure_reasons"] else ""
            print(f"{name:>10} {o['trace_H'][0, -1]:9.4f} {o['trace_sqrt_diag_H'][0, -1]:13.4f} "
                  f"{o['test_error'][0, -1]:11.4f} {speed:16.2e} {time.time() - t0:6.0f}{fail}", flush=True)
        names = list(ends)
        dist = {(a, b): float(np.linalg.norm(ends[a] - ends[b])) for i, a in enumerate(names) for b in names[i + 1:]}
        print("  distances between end points: " + ", ".join(f"{a}-{b} {d:.3f}" for (a, b), d in dist.items()))


if __name__ == "__main__":
    main()
