"""Adam (eps = 1e-6) on a small diagonal net that reaches the sparse corner: weak error of w and of the test
loss against eta, discrete runs (projected onto Gamma) vs the label-noise ODE, both started from an early
discrete state. Usage: python benchmarks/sparse_corner.py [--etas 0.04,0.028,0.02,0.014,0.01] [--paths 256]"""
import argparse
import time

import numpy as np

import slowsde_jax as S
from slowsde_jax import comparison, discrete, noise, problems, sde

ap = argparse.ArgumentParser()
ap.add_argument("--etas", default="0.04,0.028,0.02,0.014,0.01")
ap.add_argument("--paths", type=int, default=256)
ap.add_argument("--T", type=float, default=3.0)
ap.add_argument("--eps", type=float, default=1e-6)
ap.add_argument("--key", type=int, default=4)
a = ap.parse_args()
d = 8
P = problems.diagonal_net(d=d, n=4, k=2, key=a.key, n_test=500)
L, m = noise.label_noise(0.5), S.adam(c=10.0, eps=a.eps)
early = S.simulate_discrete(P, L, m, eta=0.02, T=0.25, n_paths=1, key=0, n_record=1, start=S.Start(v0="equilibrium"))
th0, v0 = early.theta[0, -1], early.v[0, -1]
t = time.time()
ode = S.simulate_slow_sde(P, L, m, T=a.T, n_record=4, start=S.Start(theta0=th0, v0=v0))
x = ode.theta[0, -1]
w_ode, test_ode = x[:d] ** 2 - x[d:] ** 2, ode.observables["test_loss"][0, -1]
print(f"ODE {time.time() - t:.1f}s  w* = {np.round(np.asarray(P.w_star), 4)}\n    w_ode = {np.round(w_ode, 4)}  test = {test_ode:.2e}")
etas = [float(e) for e in a.etas.split(",")]
rows = []
for eta in etas:
    t = time.time()
    tr = comparison.project_trajectory(S.simulate_discrete(P, L, m, eta=eta, T=a.T, n_paths=a.paths, key=2, n_record=4, start=S.Start(theta0=th0, v0=v0)), P, m)
    z = tr.theta[:, -1]
    w = z[:, :d] ** 2 - z[:, d:] ** 2
    j = np.argmax(np.abs(w.mean(0) - w_ode))
    err_w, se_w = abs(w.mean(0)[j] - w_ode[j]), w.std(0)[j] / np.sqrt(a.paths)
    tl = tr.observables["test_loss"][:, -1]
    err_t, se_t = abs(tl.mean() - test_ode), tl.std() / np.sqrt(a.paths)
    supp = np.mean(np.all((np.abs(w) > 0.05) == (np.abs(w_ode) > 0.05), axis=1))
    rows.append((eta, err_w, se_w, err_t, se_t))
    print(f"eta {eta:<6} max_j |E w_j - w_ode,j| = {err_w:.2e} (se {se_w:.1e}, j={j})   |E test - test_ode| = "
          f"{err_t:.2e} (se {se_t:.1e})   paths on the ODE's support {supp:.2f}   {time.time() - t:.1f}s")
r = np.array(rows)
for name, col in (("w", 1), ("test loss", 3)):
    o = comparison.weak_order(r[:, 0], r[:, col], r[:, col + 1])
    print(f"weak order of {name}: {comparison.describe_order(o)}")
