"""Cost of one slow-SDE step against one discrete step, same problem, same paths, same process.

    python benchmarks/bench_sde_step.py [--paths 1024 64] [--d 8 1000] [--n 4 40] [--steps 50]

For each (d, n, paths): a diagonal net with D = 2d parameters and n samples under label noise delta = 0.5,
Adam c = 10, eps = 1e-6, started on Gamma. The slow side is the *general* SDE integrator
(``force_sde=True``: projected Euler-Maruyama with the least-squares sample-space coefficients and the
Gauss-Newton retraction); the discrete side is the discrete engine at eta = 0.01. Both run ``--steps`` steps
after a compile run; the printed ratio is (seconds per SDE step) / (seconds per discrete step).
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

import slowsde_jax as sj
from slowsde_jax import discrete, noise, problems, sde
from _timing import timed



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, nargs="+", default=[8, 1000])
    ap.add_argument("--n", type=int, nargs="+", default=[4, 40])
    ap.add_argument("--paths", type=int, nargs="+", default=[1024, 64])
    ap.add_argument("--steps", type=int, default=50)
    a = ap.parse_args()
    print(f"backend={jax.default_backend()} device={jax.devices()[0]}")
    m = sj.adam(c=10.0, eps=1e-6)
    ln = noise.label_noise(0.5)
    for d, n, P in zip(a.d, a.n, a.paths):
        prob = problems.diagonal_net(d=d, n=n, k=min(3, d), key=0, n_test=10)
        w = np.asarray(prob.w_star)  # a start on Gamma with every coordinate away from 0
        x0 = jnp.asarray(np.concatenate([np.sqrt(np.maximum(w, 0) + 0.3), np.sqrt(np.maximum(-w, 0) + 0.3)]))
        dt = 1e-4
        T = a.steps * dt
        t_sde, _ = timed(lambda: sde.simulate_slow_sde(prob, ln, m, T=T, n_paths=P, n_record=1, dt=dt, theta0=x0,
                                                    force_sde=True, record_state=False))
        eta = 0.01
        t_dis, _ = timed(lambda: discrete.simulate_discrete(prob, ln, m, eta=eta, steps=a.steps, n_paths=P, n_record=1,
                                                         theta0=x0, v0="equilibrium", progress=False,
                                                         record_state=False))
        s, q = t_sde / a.steps, t_dis / a.steps
        print(f"D={2 * d} n={n} paths={P}: SDE step {1e3 * s:.3f} ms, discrete step {1e3 * q:.4f} ms, "
              f"ratio {s / q:.1f}; per unit of SDE time at eta={eta}: SDE {s / dt:.3g} s, discrete "
              f"{q / eta**2:.3g} s (discrete/SDE {q / eta**2 / (s / dt):.2f})", flush=True)


if __name__ == "__main__":
    main()
