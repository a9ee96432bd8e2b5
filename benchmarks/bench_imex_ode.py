"""Adam's label-noise ODE on a 5 x 5 factorization through its stiff stretch: Tsit5 with the zero floor (the
default) against KenCarp4 with the structured Jacobian (``solver="kencarp4"``), on the problems of
tests/test_ode_zero_floor.py (full-rank Gaussian W*, 15 entries that cover every row and column; the key
draws W* and the mask). Prints, per solver, how far it got, its wall time with compilation, and the test
error per record; then the largest difference between the two solvers over the records both reached.

With ``--exp2-seed S``: instead, the cost of one KenCarp4 step on experiment 2's 10 x 10 problem (D = 200,
``experiments/factorization_predict.with_spectrum``), from the ODE's state at t = 1 after the t0 = 2 start of
``experiments/factorization_ode.py``: the implicit term's Jacobian, its stiff matrix, the LU factorization
of a stage matrix, one drift, and a compiled solve from t = 1 to 2 (steps and time per step).

Usage: python benchmarks/bench_imex_ode.py [--key 2] [--T 2] [--max-steps 3000]
       python benchmarks/bench_imex_ode.py --exp2-seed 1
"""
import argparse
import os
import sys
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
from _timing import best_time, timed

import slowsde_jax as S
from slowsde_jax import paper as X
from slowsde_jax import discrete, noise, problems, sde


def problem(key):
    """Full-rank Gaussian 5 x 5 W*, 15 entries that cover every row and column (key 1: the tests' problem)."""
    return X.with_covering_entries(problems.matrix_factorization(d1=5, d2=5, rank=5, n=15, key=key, init_scale=0.1),
                                   2000 + key)


def step_cost(seed):
    """Per-step cost of KenCarp4 on experiment 2's problem for ``seed`` (see the module docstring)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments"))
    from factorization_predict import with_spectrum

    P, L, m = with_spectrum(10, 10, 10, 50, "entries", key=seed), noise.label_noise(1.0), S.adam(c=0.01 / 0.03**2, eps=1e-8)
    early = S.simulate_discrete(P, L, m, eta=0.03, T=2.0, key=seed, n_record=1, start=S.Start(v0="zeros"), execution=S.Execution(progress=False))
    r = S.simulate_slow_sde(P, L, m, T=1.0, n_record=1, start=S.Start(theta0=early.theta[0, -1], v0=np.maximum(early.v[0, -1], 1e-300)), execution=S.Execution(progress=False), integrator=S.LabelNoiseODE(solver="kencarp4"))
    y = (jnp.asarray(r.theta[0, -1]), jnp.asarray(r.v[0, -1]))
    model = sde.SlowSDEModel(P, L, m, m.c_at(None), alpha=L.label_noise_alpha(P))
    D = P.dim

    def implicit_flat(yf):
        return jnp.concatenate(sde.ode_devices._label_noise_implicit_drift(0.0, (yf[:D], yf[D:]), model))

    yf = jnp.concatenate(y)
    jac = jax.jit(jax.jacfwd(implicit_flat))
    A = jac(yf)
    parts = {
        "Jacobian of the implicit term (2D x 2D)": (jac, yf),
        "  of which the stiff matrix (D x D)": (jax.jit(lambda z, s: sde.ode_devices._label_noise_stiff_matrix(z, s, model)),
                                                y[0], m.S(y[1])),
        "LU of a stage matrix I - h A (2D x 2D)": (jax.jit(lambda A: jax.scipy.linalg.lu_factor(jnp.eye(2 * D) - 0.01 * A)), A),
        "one evaluation of the implicit term": (jax.jit(implicit_flat), yf),
    }
    for name, (fn, *args) in parts.items():
        print(f"{name:42s} {best_time(fn, *args, repeats=20) * 1e3:7.2f} ms")
    term = diffrax.MultiTerm(diffrax.ODETerm(sde.ode_devices._label_noise_explicit_v), diffrax.ODETerm(sde.ode_devices._label_noise_implicit_drift))
    solve = jax.jit(lambda y0: diffrax.diffeqsolve(
        term, sde.imex_kencarp4(), 1.0, 2.0, None, y0, args=model, max_steps=20000, throw=False,
        stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10), saveat=diffrax.SaveAt(t1=True)))
    seconds, sol = timed(lambda: jax.block_until_ready(solve(y)))
    n = int(sol.stats["num_steps"])
    print(f"KenCarp4 from t = 1 to 2, compiled: {seconds:.2f} s, {n} steps ({int(sol.stats['num_rejected_steps'])} "
          f"rejected), {seconds / n * 1e3:.1f} ms per step; test error at t = 2 {float(P.test_error(sol.ys[0][-1])):.6f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", type=int, default=2)
    ap.add_argument("--T", type=float, default=2.0)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--exp2-seed", type=int, default=None)
    a = ap.parse_args()
    if a.exp2_seed is not None:
        return step_cost(a.exp2_seed)
    P, L, m = problem(a.key), noise.label_noise(1.0), S.adam(c=0.01 / 0.03**2, eps=1e-8)
    early = S.simulate_discrete(P, L, m, eta=0.03, T=1.0, key=0, n_record=1, start=S.Start(v0="zeros"), execution=S.Execution(progress=False))
    th0, v0 = early.theta[0, -1], np.maximum(early.v[0, -1], 1e-300)
    runs = {}
    for solver in ("tsit5", "kencarp4"):
        t0 = time.perf_counter()
        r = runs[solver] = S.simulate_slow_sde(P, L, m, T=a.T, n_record=4, start=S.Start(theta0=th0, v0=v0), execution=S.Execution(progress=False), integrator=S.LabelNoiseODE(solver=solver, max_steps=a.max_steps))
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
