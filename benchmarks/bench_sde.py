"""Cost of the slow-SDE engine against the discrete engine on the same problem and clock, same process.

    python benchmarks/bench_sde.py [--paths 256] [--d 8]

1. Gaussian gradient noise on a small diagonal net (D = 2d): projected Euler-Maruyama (dense geometry per
   step) vs discrete Adam at eta = 0.01 over the same SDE time.
2. Label noise on the diagonal net with d = --d-ode: the adaptive ODE (structured least-squares drift) for
   one path vs discrete Adam for --paths paths.
Times exclude compilation (each is run once first). Ratios are slow side / discrete.
"""
import argparse

import jax.numpy as jnp
import numpy as np

import slowsde_jax as sj
from slowsde_jax import discrete, noise, problems, sde
from _timing import timed



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=256)
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--d-ode", type=int, default=200)
    ap.add_argument("--T", type=float, default=0.05)
    a = ap.parse_args()
    import jax

    print(f"backend={jax.default_backend()} device={jax.devices()[0]} paths={a.paths}")
    m = sj.adam(c=10.0, eps=1e-6)
    prob = problems.diagonal_net(d=a.d, n=3, k=2, key=0, n_test=10)
    D = prob.dim
    gz = noise.gaussian(np.full(D, 0.01))
    theta0 = prob.init(jax.random.PRNGKey(0))
    t_sde, _ = timed(lambda: sj.simulate_slow_sde(prob, gz, m, T=a.T, n_paths=a.paths, n_record=1, start=sj.Start(theta0=theta0), integrator=sj.ProjectedEulerMaruyama(dt=1e-3)))
    t_dis, _ = timed(lambda: sj.simulate_discrete(prob, gz, m, eta=0.01, T=a.T, n_paths=a.paths, n_record=1, start=sj.Start(theta0=theta0, v0="equilibrium"), execution=sj.Execution(progress=False)))
    n_sde, n_dis = a.T / 1e-3, a.T / 1e-4
    print(f"gaussian noise, D={D}: SDE {t_sde:.3f} s ({n_sde:.0f} steps, {1e6 * t_sde / n_sde:.1f} us/step), "
          f"discrete {t_dis:.3f} s ({n_dis:.0f} steps, {1e6 * t_dis / n_dis:.1f} us/step); ratio {t_sde / t_dis:.2f}")
    big = problems.diagonal_net(d=a.d_ode, n=20, k=3, key=0, n_test=10)
    # a start on Gamma with every coordinate away from 0 (near u_j v_j = 0 the Adam ODE is stiff, see README)
    w = np.asarray(big.w_star)
    x0 = jnp.asarray(np.concatenate([np.sqrt(np.maximum(w, 0) + 0.3), np.sqrt(np.maximum(-w, 0) + 0.3)]))
    ln = noise.label_noise(0.5)
    t_ode, ode = timed(lambda: sj.simulate_slow_sde(big, ln, m, T=a.T, n_paths=1, n_record=1, start=sj.Start(theta0=x0)))
    t_dis2, _ = timed(lambda: sj.simulate_discrete(big, ln, m, eta=0.01, T=a.T, n_paths=a.paths, n_record=1, start=sj.Start(theta0=x0, v0="equilibrium"), recording=sj.Recording(record_state=False), execution=sj.Execution(progress=False)))
    print(f"label noise, D={big.dim}: ODE (1 path) {t_ode:.3f} s, discrete ({a.paths} paths, {n_dis:.0f} steps) "
          f"{t_dis2:.3f} s; ratio {t_ode / t_dis2:.2f}; ODE failed paths: {int(ode.diverged.sum())}")


if __name__ == "__main__":
    main()
