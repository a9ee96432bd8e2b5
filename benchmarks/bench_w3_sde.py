"""W3 for the general slow SDE (Gaussian noise): the wall time of the discrete run at eta = 1e-3 over the wall
time of the slow SDE run that is as accurate, with the same number of paths, both in this process.

    python benchmarks/bench_w3_sde.py [--paths 40000] [--bias-paths 40000] [--timing-paths 2000] [--T 0.5]

Case: the hyperbola u v = 1 under Gaussian noise diag(0.49, 0.09), Adam c = 100, eps = 0, observable E u(T)
(chosen because its discrete weak error is resolved at eta = 0.04 and 0.02: about 0.5 eta; with c = 10 or
for E v it is within the noise of 20 000 paths).

1. Reference: the slow SDE with Richardson extrapolation at dt_ref = T/256 (``--paths`` paths).
2. Discrete weak error: projected discrete Adam at eta = 0.04, 0.02, 0.01 (``--paths`` paths) against the
   reference; a fit e(eta) = C1 eta through the origin (weighted by the standard errors) gives the weak error
   at ``--eta``, e* = |C1| eta: the accuracy to match.
3. Slow-SDE bias: Richardson runs at dt = T/4 ... T/64 on the reference's Brownian grid (``brownian_dt``,
   ``--bias-paths`` paths), paired with the reference. Their bias is at most |b| + 2 s.e.: the weak error
   of the discrete run at eta_match = that bound / |C1|. Plain Euler-Maruyama is shown for comparison.
4. Timing (``--timing-paths`` paths, compile excluded): the slow SDE at each dt with Richardson (on its own
   Brownian grid), and the discrete run at eta_match, from the discrete time per step (measured at
   eta = 0.01) times T / eta_match^2 steps. W3(dt) = their ratio. The line says when the bound is below
   e*, the weak error at ``--eta``: W3 at that accuracy, certified by the bound.
"""
import argparse

import jax
import numpy as np

import slowsde_jax as sj
from slowsde_jax import comparison, discrete, noise, problems, sde
from _timing import timed



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=40000)
    ap.add_argument("--bias-paths", type=int, default=40000)
    ap.add_argument("--timing-paths", type=int, default=2000)
    ap.add_argument("--T", type=float, default=0.5)
    ap.add_argument("--c", type=float, default=100.0)
    ap.add_argument("--eta", type=float, default=1e-3)
    ap.add_argument("--etas", type=float, nargs="+", default=[0.04, 0.02, 0.01])
    a = ap.parse_args()
    print(f"backend={jax.default_backend()} device={jax.devices()[0]}", flush=True)
    prob, nz, m, T = problems.hyperbola(y=1.0), noise.gaussian([0.49, 0.09]), sj.adam(c=a.c, eps=0.0), a.T
    v_end = lambda tr: tr.observables["u"][:, -1]  # noqa: E731
    dt_ref = T / 256

    # 1. reference
    ref = sj.simulate_slow_sde(prob, nz, m, T=T, n_paths=a.paths, n_record=1, key=1, integrator=sj.ProjectedEulerMaruyama(dt=dt_ref, richardson=True, brownian_dt=dt_ref))
    r = v_end(ref)
    print(f"reference: E u(T) = {r.mean():.5f} +- {r.std() / np.sqrt(a.paths):.1e} (Richardson, dt = T/256)")

    # 2. the discrete weak error and its slope
    etas, errs, ses = [], [], []
    for eta in a.etas:
        tr = sj.simulate_discrete(prob, nz, m, eta=eta, T=T, n_paths=a.paths, n_record=1, key=2, start=sj.Start(v0="equilibrium"), execution=sj.Execution(progress=False))
        d = v_end(comparison.project_trajectory(tr, prob, m))
        e, se = d.mean() - r.mean(), np.sqrt(d.var() / a.paths + r.var() / a.paths)
        etas.append(eta), errs.append(e), ses.append(se)
        print(f"  discrete eta = {eta:g}: weak error {e:+.2e} +- {se:.1e}", flush=True)
    etas, errs, ses = map(np.asarray, (etas, errs, ses))
    wts = 1 / ses**2
    C1 = np.sum(wts * errs * etas) / np.sum(wts * etas**2)
    C1_se = 1 / np.sqrt(np.sum(wts * etas**2))
    target = abs(C1) * a.eta
    print(f"  fit e = C1 eta: C1 = {C1:.3f} +- {C1_se:.3f}; weak error to match at eta = {a.eta:g}: {target:.2e}")

    # 3. the slow SDE's own bias at coarse dt (paired with the reference: same Brownian grid, same key)
    ref_small = sj.simulate_slow_sde(prob, nz, m, T=T, n_paths=a.bias_paths, n_record=1, key=1, integrator=sj.ProjectedEulerMaruyama(dt=dt_ref, richardson=True, brownian_dt=dt_ref))
    rs = v_end(ref_small)
    P = a.timing_paths
    t_step, _ = timed(lambda: sj.simulate_discrete(prob, nz, m, eta=0.01, T=T, n_paths=P, n_record=1, key=4, start=sj.Start(v0="equilibrium"), execution=sj.Execution(progress=False)))
    t_step /= round(T / 0.01**2)
    print(f"timing, {P} paths: discrete {1e3 * t_step:.3f} ms per step (eta = 0.01 run)")
    for k in (4, 8, 16, 32, 64):
        dt, line = T / k, f"  dt = T/{k}:"
        for rich in (False, True):
            tr = sj.simulate_slow_sde(prob, nz, m, T=T, n_paths=a.bias_paths, n_record=1, key=1, integrator=sj.ProjectedEulerMaruyama(dt=dt, richardson=rich, brownian_dt=dt_ref))
            d = v_end(tr) - rs
            b, se = d.mean(), d.std() / np.sqrt(a.bias_paths)
            line += f" {'Richardson' if rich else 'Euler'} bias {b:+.1e} +- {se:.0e};"
        bound = abs(b) + 2 * se  # the Richardson run's bias, at most
        eta_match = bound / abs(C1)  # the discrete run is as accurate only for eta <= eta_match
        t_sde, _ = timed(lambda: sj.simulate_slow_sde(prob, nz, m, T=T, n_paths=P, n_record=1, key=3, integrator=sj.ProjectedEulerMaruyama(dt=dt, richardson=True)))
        t_dis = t_step * T / eta_match**2
        line += (f" |bias| <= {bound:.1e} = weak error of eta {eta_match:.2g}; SDE {1e3 * t_sde:.0f} ms, discrete "
                 f"{t_dis:.3g} s ({T / eta_match**2:.3g} steps): W3 = {t_dis / t_sde:.0f}x"
                 + (f" (accuracy of eta = {a.eta:g} reached)" if bound <= target else ""))
        print(line, flush=True)


if __name__ == "__main__":
    main()
