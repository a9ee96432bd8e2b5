"""The label-noise ODE's default solver (Tsit5, handing a stiff path to KenCarp4) against KenCarp4 throughout,
on experiment 2's factorization (10 x 10, rank 10, 50 observed entries, D = 200; Adam, label noise 1.0).

    python benchmarks/bench_imex_fallback.py [--seed 0] [--T 40] [--n-record 20] [--records-per-call 20]

The start is the discrete Adam state at t0 = 2 (eta = 0.03), as in ``experiments/factorization_ode.py``.
Each solver runs once in a fresh compile cache of this process, so the times include compilation (each
solver compiles its own programs). For every diffrax solve the script prints its time span, the steps it
took and rejected, and whether it succeeded; then the wall time, the test error at T and the number of
(path, call) solves KenCarp4 made in place of Tsit5. On seed 0 Tsit5 stalls between t = 4 and 6.
"""
import argparse
import sys
import time
import types
from pathlib import Path

import diffrax
import jax
import numpy as np

import slowsde_jax as sj
from slowsde_jax import discrete, noise, sde

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from factorization_ode import with_spectrum  # noqa: E402


def reporting_diffrax():
    """The diffrax namespace with a ``diffeqsolve`` that prints each solve's span and step counts."""
    def diffeqsolve(*args, **kwargs):
        sol = diffrax.diffeqsolve(*args, **kwargs)
        jax.debug.print("  solve t = {t0:.3f} -> {t1:.3f}: {n} steps, {r} rejected, succeeded {ok}",
                        t0=kwargs["t0"], t1=kwargs["t1"], n=sol.stats["num_steps"],
                        r=sol.stats["num_rejected_steps"], ok=sol.result == diffrax.RESULTS.successful)
        return sol

    names = {n: getattr(diffrax, n) for n in dir(diffrax) if not n.startswith("__")}
    return types.SimpleNamespace(**{**names, "diffeqsolve": diffeqsolve})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--T", type=float, default=40.0)
    ap.add_argument("--n-record", type=int, default=20)
    ap.add_argument("--records-per-call", type=int, default=None, help="default: all records in one call")
    ap.add_argument("--rtol", type=float, default=1e-8, help="atol = rtol / 100")
    a = ap.parse_args()
    P = with_spectrum(10, 10, 10, 50, "entries", key=a.seed)
    label, adam = noise.label_noise(1.0), sj.adam(c=(1 - 0.99) / 0.03**2, eps=1e-8)
    early = sj.simulate_discrete(P, label, adam, eta=0.03, T=2.0, key=a.seed, n_record=1, start=sj.Start(v0="zeros"), execution=sj.Execution(progress=False))
    th0, v0 = early.theta[0, -1], np.maximum(early.v[0, -1], 1e-300)
    sde.diffrax = reporting_diffrax()  # (the engine reads diffrax from its module namespace)
    for solver in (None, "kencarp4"):
        print(f"solver={solver or 'default'}:", flush=True)
        t0 = time.perf_counter()
        run = sj.simulate_slow_sde(P, label, adam, T=a.T, n_record=a.n_record, start=sj.Start(theta0=th0, v0=v0), execution=sj.Execution(records_per_call=a.records_per_call, progress=False), integrator=sj.LabelNoiseODE(solver=solver, rtol=a.rtol, atol=a.rtol / 100))
        print(f"  {time.perf_counter() - t0:.1f} s with compilation; test error at T "
              f"{run.observables['test_error'][0, -1]:.6f}; KenCarp4 solves in place of Tsit5 "
              f"{run.meta['imex_fallback_solves']}; failures {run.meta['failure_reasons']}", flush=True)


if __name__ == "__main__":
    main()
