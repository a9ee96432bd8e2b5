"""Cost of one slow-SDE step against one discrete step, same problem, same paths, same process.

    python benchmarks/bench_sde_step.py [--paths 1024 64] [--d 8 1000] [--n 4 40] [--steps 50]

For each (d, n, paths): a diagonal net with D = 2d parameters and n samples under label noise delta = 0.5,
Adam c = 10, eps = 1e-6, started on Gamma. The slow side is the *general* SDE integrator
(``force_sde=True``: projected Euler-Maruyama with the least-squares sample-space coefficients and the
Gauss-Newton retraction); the discrete side is the discrete engine at eta = 0.01. Each side runs ``--steps`` and 2 ``--steps`` steps (after a compile
run, best of ``--repeats``); the time per step is the difference divided by ``--steps``, so the per-call
work (projecting the start, the initial v, the records) is not counted on either side. The printed ratio
is (seconds per SDE step) / (seconds per discrete step).

``--breakdown`` also times the two halves of an SDE step on their own, vmapped over the same paths: the
coefficients (drift and tangent diffusion, of which the n x n eigendecomposition) and the Gauss-Newton
retraction, with one step of the discrete update as the baseline, and prints the arithmetic of each side:
a discrete step is about 4 n D flops per path (the residuals and the gradient), an SDE step about
16 n^2 D (one Gram matrix J S J^T and four products of a (D, n) by an (n, n) matrix for the coefficients,
three Gram matrices for the retraction), so the ratio cannot go below about 4 n where both run at the
same flop rate.
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np

import slowsde_jax as sj
from slowsde_jax import discrete, noise, problems, sde
from slowsde_jax import geometry as geo
from slowsde_jax._batching import map_paths
from _timing import best_time


def breakdown(prob, nz, m, x0, P):
    """Per-step times (s) of the SDE step's parts and of one discrete update, each vmapped over P paths."""
    model = sde.SlowSDEModel(prob, nz, m, jnp.asarray(10.0))
    ls = prob.least_squares()
    w = ls.weights
    X = jnp.tile(x0, (P, 1)) * (1.0 + 1e-3 * jax.random.normal(jax.random.PRNGKey(0), (P, x0.size)))
    V = jnp.full_like(X, 0.5)
    size = sde.coefficients._matrix_size(model)  # vmapped in groups on the CPU, as the engine does (the LAPACK deadlock)
    over_paths = lambda f: jax.jit(lambda X, V: map_paths(lambda a: f(*a), (X, V), size))  # noqa: E731
    coef = over_paths(lambda z, v: sde.sde_coefficients(0.0, (z, v), model))

    def eig(z, v):
        Jw = jnp.sqrt(w)[:, None] * ls.jacobian(z)
        return jnp.linalg.eigh(Jw @ (m.S(v)[:, None] * Jw.T))

    retract = over_paths(lambda z, v: sde.retract_onto_gamma((z, v), (z + 1e-3, v), model))

    def update(z, v, key):  # one discrete step: a stochastic gradient and the Adam update
        g = nz.grad(prob, z, key)
        v = v + 1e-3 * (g * g - v)
        return z - 1e-2 * m.S(v) * g, v

    keys = jax.random.split(jax.random.PRNGKey(1), P)
    out = {"coefficients": best_time(coef, X, V), "  of which eigh": best_time(over_paths(eig), X, V),
           "retraction": best_time(retract, X, V), "discrete update": best_time(jax.jit(jax.vmap(update)), X, V, keys)}
    spd_solve = geo.spd_solve  # the retraction again with LAPACK's LU for its Gram solves (the code before)
    geo.spd_solve = lambda A, b: jnp.linalg.solve(A, b[..., None])[..., 0] if b.ndim == 1 else jnp.linalg.solve(A, b)
    try:
        out["retraction with LU solves"] = best_time(over_paths(
            lambda z, v: sde.retract_onto_gamma((z, v), (z + 1e-3, v), model)), X, V)
    finally:
        geo.spd_solve = spd_solve
    return out

def per_step(run, steps, repeats):
    """Seconds per step of ``run(k)`` (k steps): (time of 2 steps runs - time of steps runs) / steps."""
    t1, t2 = (best_time(lambda k=k: run(k).t, repeats=repeats) for k in (steps, 2 * steps))
    return (t2 - t1) / steps if t2 > t1 else float("nan")  # NaN: the difference drowned in the noise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, nargs="+", default=[8, 1000])
    ap.add_argument("--n", type=int, nargs="+", default=[4, 40])
    ap.add_argument("--paths", type=int, nargs="+", default=[1024, 64])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--breakdown", action="store_true", help="also time the parts of an SDE step")
    a = ap.parse_args()
    print(f"backend={jax.default_backend()} device={jax.devices()[0]}")
    m = sj.adam(c=10.0, eps=1e-6)
    ln = noise.label_noise(0.5)
    for d, n, P in zip(a.d, a.n, a.paths):
        prob = problems.diagonal_net(d=d, n=n, k=min(3, d), key=0, n_test=10)
        w = np.asarray(prob.w_star)  # a start on Gamma with every coordinate away from 0
        x0 = jnp.asarray(np.concatenate([np.sqrt(np.maximum(w, 0) + 0.3), np.sqrt(np.maximum(-w, 0) + 0.3)]))
        dt, eta = 1e-4, 0.01

        def slow(k):
            return sj.simulate_slow_sde(prob, ln, m, T=k * dt, n_paths=P, n_record=1, start=sj.Start(theta0=x0), recording=sj.Recording(record_state=False), integrator=sj.ProjectedEulerMaruyama(dt=dt))

        def fast(k):
            return sj.simulate_discrete(prob, ln, m, eta=eta, steps=k, n_paths=P, n_record=1, start=sj.Start(theta0=x0, v0="equilibrium"), recording=sj.Recording(record_state=False), execution=sj.Execution(progress=False))

        s, q = (per_step(run, a.steps, a.repeats) for run in (slow, fast))
        if not (s > 0 and q > 0):
            print(f"D={2 * d} n={n} paths={P}: a per-step time drowned in the noise; rerun with more --steps")
            continue
        print(f"D={2 * d} n={n} paths={P}: SDE step {1e3 * s:.3f} ms, discrete step {1e3 * q:.4f} ms, "
              f"ratio {s / q:.1f}; per unit of SDE time at eta={eta}: SDE {s / dt:.3g} s, discrete "
              f"{q / eta**2:.3g} s (discrete/SDE {q / eta**2 / (s / dt):.2f})", flush=True)
        if a.breakdown:
            parts = breakdown(prob, ln, m, x0, P)
            base = parts["discrete update"]
            print("  " + ", ".join(f"{k.strip()} {1e3 * v:.3f} ms ({v / base:.1f}x)" for k, v in parts.items())
                  + f"; flops per path: discrete ~{4 * n * 2 * d:.3g}, SDE ~{16 * n * n * 2 * d:.3g} "
                  f"(ratio ~{4 * n})", flush=True)


if __name__ == "__main__":
    main()
