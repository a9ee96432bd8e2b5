"""W3: what the slow SDE saves. For each case, the wall time of the discrete run at step size eta (whose
weak error against the slow limit is about C * eta) divided by the wall time of the slow SDE/ODE, both run
in this process after compiling (times exclude compilation).

    python benchmarks/bench_w3.py [--etas 0.02 0.01] [--paths 2000]

Cases:
- hyperbola, label noise delta = 0.5, Adam c = 10, eps = 0, T = 0.5 (the ODE, one path);
- diagonal net d = 20, n = 10, k = 2, label noise 0.5, Adam c = 10, eps = 1e-3, T = 0.5 (the ODE);
- hyperbola, Gaussian noise diag(0.49, 0.09), Adam, T = 0.2 (the SDE, --paths paths, dt = 1e-3).
For each it prints the weak error of E v (or E test loss) at every eta, with its standard error, and the
time ratio discrete / slow. The ratio at the eta that reaches a given weak error is W3 at that accuracy.

For the ODE cases it also prints W3 at the accuracy of eta = --target (default 1e-3): the weak error is
fitted as C * eta^p through the resolved etas (error > 2 s.e., `comparison.weak_order`) and extrapolated
to --target, the discrete run at --target is costed as
the measured time per step times T / target^2 steps (the step cost does not depend on eta), and the ODE's
own error is measured against a solve at rtol 1e-11, atol 1e-13, which must be below C * target^p for the
ODE to count as that accurate.
"""
import argparse

import jax
import numpy as np

import slowsde_jax as sj
from slowsde_jax import comparison, discrete, noise, problems, sde
from _timing import timed



def case(name, prob, nz, m, T, obs, etas, paths, slow_paths, dt=1e-3, theta0=None, target=None):
    t_slow, slow = timed(lambda: sj.simulate_slow_sde(prob, nz, m, T=T, n_paths=slow_paths, n_record=1, key=1, start=sj.Start(theta0=theta0), integrator=sj.ProjectedEulerMaruyama(dt=dt)))
    print(f"{name}: slow {slow.meta['engine']} {t_slow:.3f} s ({slow_paths} path(s))")
    rows = []
    for eta in etas:
        run = lambda: sj.simulate_discrete(prob, nz, m, eta=eta, T=T, n_paths=paths, n_record=1, key=2, start=sj.Start(theta0=theta0, v0="equilibrium"), execution=sj.Execution(progress=False))
        t_d, tr = timed(run)
        c = comparison.compare(comparison.project_trajectory(tr, prob, m), slow, [obs])
        print(f"  eta={eta:g}: discrete {t_d:.3f} s ({paths} paths, {int(round(T / eta**2))} steps), weak error "
              f"{c.weak_error[obs][-1]:.2e} +- {c.se[obs][-1]:.1e}; W3 = {t_d / t_slow:.1f}x", flush=True)
        rows.append((eta, c.weak_error[obs][-1], c.se[obs][-1], t_d / round(T / eta**2)))
    if target is not None:
        w3_at(prob, nz, m, T, obs, slow, t_slow, theta0, rows, target)


def w3_at(prob, nz, m, T, obs, slow, t_slow, theta0, rows, target):
    """W3 at the accuracy of eta = target: the discrete weak error fitted as C * eta^p and extrapolated, the
    discrete run costed from its measured time per step, the ODE's own error against a tight solve."""
    etas, errs, se, per_step = (np.array(r) for r in zip(*rows))
    fit = comparison.weak_order(etas, errs, se)
    if not fit["order_resolved"]:
        print(f"  W3 at eta={target:g}: fewer than two weak errors are resolved; no accuracy target can be set")
        return
    err_target = fit["constant"] * target ** fit["order"]
    tight = sj.simulate_slow_sde(prob, nz, m, T=T, n_record=1, key=1, start=sj.Start(theta0=theta0), integrator=sj.LabelNoiseODE(rtol=1e-11, atol=1e-13))
    self_err = abs(float(np.mean(slow.observables[obs][:, -1]) - np.mean(tight.observables[obs][:, -1])))
    t_dis = float(np.median(per_step)) * T / target**2
    print(f"  W3 at eta={target:g}: discrete weak error ~ C eta^p = {err_target:.1e} (p = {fit['order']:.2f}, C = "
          f"{fit['constant']:.3g}); the ODE's own error {self_err:.1e} "
          f"({'below' if self_err < err_target else 'NOT below'} it); discrete run "
          f"{round(T / target**2)} steps x {1e3 * np.median(per_step):.3f} ms = {t_dis:.0f} s; "
          f"W3 = {t_dis / t_slow:.0f}x", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--etas", type=float, nargs="+", default=[0.02, 0.01])
    ap.add_argument("--paths", type=int, default=2000)
    ap.add_argument("--target", type=float, default=1e-3, help="the eta whose accuracy W3 is priced at (ODEs)")
    a = ap.parse_args()
    print(f"backend={jax.default_backend()} device={jax.devices()[0]}")
    adam = sj.adam(c=10.0, eps=0.0)
    hyp = problems.hyperbola(y=1.0)
    case("hyperbola, label noise (ODE)", hyp, noise.label_noise(0.5), adam, 0.5, "v", a.etas, a.paths, 1,
         target=a.target)
    net = problems.diagonal_net(d=20, n=10, k=2, key=0, n_test=100)
    w = np.asarray(net.w_star)  # a start with every coordinate away from 0, projected onto Gamma
    x0 = np.concatenate([np.sqrt(np.maximum(w, 0) + 0.3), np.sqrt(np.maximum(-w, 0) + 0.3)])
    x0 = sj.geometry.project(net.loss, x0, np.ones(net.dim), residuals=net.residuals)
    case("diagonal net d=20, label noise (ODE)", net, noise.label_noise(0.5), sj.adam(c=10.0, eps=1e-3), 0.5,
         "test_loss", a.etas, a.paths, 1, theta0=x0, target=a.target)
    case("hyperbola, Gaussian noise (SDE)", hyp, noise.gaussian([0.49, 0.09]), adam, 0.2, "v", a.etas, a.paths,
         a.paths)


if __name__ == "__main__":
    main()
