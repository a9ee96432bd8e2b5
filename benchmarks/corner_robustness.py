"""The sparse corner on other diagonal nets than the tests': projection and label-noise ODE, case by case.

    python benchmarks/corner_robustness.py [PART]     # PART in 0, 1, 2: every third case (runs in parallel)

Cases: five nets (d, n, k, key) = (20, 10, 2, 0), (30, 8, 3, 1), (12, 6, 1, 2), (40, 15, 3, 3), (10, 5, 2, 7),
eps in {1e-6, 1e-3}, and Adam, AdamE-1/4, AdamE-3/4 (c = 10), label noise 0.5. Each case runs 16 discrete
paths at eta = 0.05 to t = 2 from the initializer (into the corner), projects all 5 records of every path
(``project_trajectory``), then integrates the ODE from the first path's end state for T = 1 with n_record = 1
and 7. It prints whether every projection is finite, whether either ODE flagged its path, and the largest
difference between the two ODE end states (which must not depend on n_record). Compile time dominates:
each new shape compiles for minutes on a busy 2-core CPU; cases that share a shape take about a second.
"""
import sys, time, traceback
import numpy as np, jax
import slowsde_jax as S
from slowsde_jax import comparison, discrete, noise, problems, sde
cases = []
for (d, n, k, key) in [(20, 10, 2, 0), (30, 8, 3, 1), (12, 6, 1, 2), (40, 15, 3, 3), (10, 5, 2, 7)]:
    for eps in (1e-6, 1e-3):
        for meth in ("adam", "adame25", "adame75"):
            cases.append((d, n, k, key, eps, meth))
only = int(sys.argv[1]) if len(sys.argv) > 1 else None
for i, (d, n, k, key, eps, meth) in enumerate(cases):
    if only is not None and i % 3 != only: continue
    t0 = time.time()
    try:
        prob = problems.diagonal_net(d=d, n=n, k=k, key=key, n_test=50)
        m = {"adam": S.adam(c=10.0, eps=eps), "adame25": S.adame(0.25, c=10.0, eps=eps), "adame75": S.adame(0.75, c=10.0, eps=eps)}[meth]
        ln = noise.label_noise(0.5)
        tr = S.simulate_discrete(prob, ln, m, eta=0.05, T=2.0, key=key, n_paths=16, n_record=5, start=S.Start(v0="equilibrium"))
        pr = comparison.project_trajectory(tr, prob, m)
        okp = np.all(np.isfinite(pr.theta))
        th0, v0 = tr.theta[0, -1], tr.v[0, -1]
        res = []
        for nr in (1, 7):
            run = S.simulate_slow_sde(prob, ln, m, T=1.0, n_record=nr, start=S.Start(theta0=th0, v0=v0))
            res.append((bool(run.diverged[0]), run.theta[0, -1]))
        gap = float(np.max(np.abs(res[0][1] - res[1][1])))
        print(f"case {i} d={d} n={n} k={k} key={key} eps={eps} {meth}: proj_ok={okp} ode_div={[r[0] for r in res]} nrec_gap={gap:.2e} "
              f"{time.time()-t0:.0f}s", flush=True)
    except Exception as e:
        print(f"case {i} d={d} n={n} k={k} key={key} eps={eps} {meth}: EXC {type(e).__name__}: {str(e)[:300]} {time.time()-t0:.0f}s", flush=True)
