"""Many slow-SDE paths on the CPU: Gaussian noise on the hyperbola (cov diag(0.25, 0.64)), Adam c = 10,
eps = 0, T = 0.1, dt = T/400. Before paths were grouped (slowsde_jax._batching) 10 000 paths hung.

    python benchmarks/bench_many_paths.py [--paths 50000]
"""
import argparse
import time

import numpy as np

import slowsde_jax as sj
from slowsde_jax import noise, problems, sde

ap = argparse.ArgumentParser()
ap.add_argument("--paths", type=int, default=50_000)
a = ap.parse_args()
t0 = time.perf_counter()
tr = sj.simulate_slow_sde(problems.hyperbola(), noise.gaussian([0.25, 0.64]), sj.adam(c=10.0, eps=0.0), T=0.1, n_paths=a.paths, n_record=1, key=0, recording=sj.Recording(record_state=False), integrator=sj.ProjectedEulerMaruyama(dt=0.1 / 400))
v = tr.observables["v"][:, -1]
print(f"{a.paths} paths: {time.perf_counter() - t0:.1f} s (compile included); E v(T) = {v.mean():.4f} "
      f"+- {v.std(ddof=1) / np.sqrt(v.size):.4f}; failed paths: {int(tr.diverged.sum())}")
