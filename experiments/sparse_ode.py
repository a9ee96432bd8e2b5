"""Experiment 3 on the diagonal net: the label-noise ODE predicts where the discrete runs end.

1. Start the ODE of AdamE-lam (Adam: lam = 1/2) at Phi_S of an early discrete iterate (t = t_early) and
   integrate it to the plateau T.
2. Run the discrete method from that same early state at several eta (one compiled eta sweep, many paths),
   project the end points onto Gamma, and compare with the ODE's end point: support of w, test loss,
   tr H, tr(Diag H^{1-lam}); weak errors with standard errors and their fitted order in eta.
3. Wall-clock cost of the ODE against the discrete sweep.
4. Fixed points: the ODE's end w (at T_fixed: AdamE-1/4 leaves a saddle slowly, see docs/experiments.md) for
   several lam against minimum-l_{1-lam} quasi-norm interpolators found without the ODE (at u_j v_j = 0,
   tr(Diag H^{1-lam}) = 4^{1-lam} sum_j s_j^{1-lam} |w_j|^{1-lam}: exponent 1 - lam in w, 2 - 2 lam in (u, v)): the global one by enumerating basic solutions (``experiments.min_quasi_norm_by_supports``,
   small d), reweighted least squares from the minimum-l2 start, and reweighted least squares started at the
   ODE's end (it stays there iff the end point is a stationary point of the quasi-norm on {Z w = y}).

Usage: python experiments/sparse_ode.py [--d 8 --n 4 --k 2 --key 4] [--etas 0.04,0.028,0.02] [--paths 128]
       [--T 3] [--T-fixed 16] [--lams 0.25,0.5,0.75] [--fixed-points-only] [--out FILE.json]
"""
import argparse
import json
import time

import numpy as np

import slowsde_jax as S
from slowsde_jax import paper as X
from slowsde_jax import comparison, discrete, geometry as geo, noise, problems, sde


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--key", type=int, default=4)
    ap.add_argument("--delta", type=float, default=0.5)
    ap.add_argument("--c", type=float, default=10.0)
    ap.add_argument("--eps", type=float, default=1e-6)
    ap.add_argument("--etas", default="0.04,0.028,0.02")
    ap.add_argument("--paths", type=int, default=128)
    ap.add_argument("--T", type=float, default=3.0)
    ap.add_argument("--t-early", type=float, default=0.25)
    ap.add_argument("--lams", default="0.25,0.5,0.75")
    ap.add_argument("--T-fixed", type=float, default=16.0, help="ODE horizon for the fixed-point comparison")
    ap.add_argument("--fixed-points-only", action="store_true", help="skip parts 1-3 (the discrete sweep)")
    ap.add_argument("--out", default="sparse_ode.json")
    a = ap.parse_args()
    P = problems.diagonal_net(d=a.d, n=a.n, k=a.k, key=a.key, n_test=2000)
    L = noise.label_noise(a.delta)
    out = {"args": vars(a), "w_star": np.asarray(P.w_star).tolist()}
    sharp = lambda th, lam: {"trace_H": float(geo.sharpness(P.hessian_diag(th), "trace")),
                             "trace_diag_pow": float(geo.sharpness(P.hessian_diag(th), "trace_diag_pow", lam=lam))}

    if not a.fixed_points_only:
        ode_vs_discrete(a, P, L, sharp, out)
    out["fixed_points"] = fixed_points(a, P, L)
    with open(a.out, "w") as fh:
        json.dump(out, fh, indent=1)


def ode_vs_discrete(a, P, L, sharp, out):
    """Parts 1-3: Adam's ODE against the discrete eta sweep, and their cost."""
    m = S.adam(c=a.c, eps=a.eps)
    early = S.simulate_discrete(P, L, m, eta=0.02, T=a.t_early, key=0, n_record=1, start=S.Start(v0="equilibrium"))
    th0, v0 = early.theta[0, -1], early.v[0, -1]
    t0 = time.perf_counter()
    ode = S.simulate_slow_sde(P, L, m, T=a.T, n_record=8, start=S.Start(theta0=th0, v0=v0))
    t_ode_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    S.simulate_slow_sde(P, L, m, T=a.T, n_record=8, start=S.Start(theta0=th0, v0=v0))  # compiled: the solve alone
    t_ode = time.perf_counter() - t0
    x = ode.theta[0, -1]
    w_ode = X.diagonal_net_weights(x)
    supp = np.abs(w_ode) > 0.05
    ode_end = {"w": w_ode.tolist(), "support": np.flatnonzero(supp).tolist(),
               "test_loss": float(ode.observables["test_loss"][0, -1]), **sharp(x, 0.5),
               "w_by_time": X.diagonal_net_weights(ode.theta[0]).tolist(), "t": ode.t.tolist(), "seconds": t_ode}
    out["ode"] = ode_end
    print(f"w*      {np.round(np.asarray(P.w_star), 4)}\nODE end {np.round(w_ode, 4)}  test {ode_end['test_loss']:.3e}  "
          f"trH {ode_end['trace_H']:.4f}  trDiagH^1/2 {ode_end['trace_diag_pow']:.4f}   ({t_ode:.1f}s)")
    print("ODE plateau: max_j |w_j(t) - w_j(T)| at t =", ", ".join(
        f"{t:.2f}: {np.abs(np.asarray(ode_end['w_by_time'][i]) - w_ode).max():.1e}" for i, t in enumerate(ode.t)))
    etas = [float(e) for e in a.etas.split(",")]
    run = lambda: S.simulate_discrete(P, L, m, T=a.T, n_paths=a.paths, key=2, n_record=8, sweep={"eta": etas}, start=S.Start(theta0=th0, v0=v0), execution=S.Execution(progress=False))
    t0 = time.perf_counter()
    trs = run()
    t_disc_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    run()
    t_disc = time.perf_counter() - t0
    rows = []
    for eta, tr in zip(etas, trs):
        pr = X.states_at_projection(P, m, tr.theta[:, -1], tr.v[:, -1], diverged=tr.diverged)
        ok = ~tr.diverged
        w = X.diagonal_net_weights(pr["zeta"][ok])
        row = {"eta": eta, "steps": tr.meta["steps"],
               "support_match": float(np.mean(np.all((np.abs(w) > 0.05) == supp, axis=1))),
               "w_err": float(np.abs(w.mean(0) - w_ode).max()),
               "w_se": float(w.std(0, ddof=1)[np.argmax(np.abs(w.mean(0) - w_ode))] / np.sqrt(ok.sum())),
               "diverged": int(tr.diverged.sum())}
        for name, vals, ref in (("test_loss", pr["test_loss"], ode_end["test_loss"]),
                                ("trace_H", pr["trace_H"], ode_end["trace_H"]),
                                ("trace_diag_pow", pr["trace_sqrt_diag_H"], ode_end["trace_diag_pow"])):
            vals = vals[ok]
            row[name] = float(vals.mean())
            row[name + "_err"] = float(abs(vals.mean() - ref))
            row[name + "_se"] = float(vals.std(ddof=1) / np.sqrt(ok.sum()))
        rows.append(row)
        print(f"eta {eta:<6} steps {row['steps']:>7}  support match {row['support_match']:.2f}  "
              f"max|E w - w_ode| {row['w_err']:.2e} (se {row['w_se']:.1e})  "
              + "  ".join(f"{k} {row[k]:.4g} err {row[k + '_err']:.1e} (se {row[k + '_se']:.1e})"
                          for k in ("test_loss", "trace_H", "trace_diag_pow")))
    out["discrete"] = rows
    orders = {}
    for name in ("w", "test_loss", "trace_H", "trace_diag_pow"):
        err = [r[name + "_err"] for r in rows]
        se = [r[name + "_se"] for r in rows]
        o = comparison.weak_order(etas, err, se)
        orders[name] = o
        print(f"weak error of {name}: {comparison.describe_order(o)}")
    out["orders"] = orders
    steps_total = sum(r["steps"] for r in rows) * a.paths
    out["cost"] = {"ode_s": t_ode, "discrete_s": t_disc, "ode_cold_s": t_ode_cold, "discrete_cold_s": t_disc_cold,
                   "discrete_path_steps": steps_total}
    print(f"cost (compiled; with compilation in brackets): ODE {t_ode:.2f}s ({t_ode_cold:.1f}s), one deterministic "
          f"solve, vs discrete {t_disc:.2f}s ({t_disc_cold:.1f}s) for {len(etas)} etas x {a.paths} paths "
          f"({steps_total:.2e} path-steps); discrete / ODE = {t_disc / t_ode:.1f}")



def fixed_points(a, P, L):
    """Part 4: the ODE's end for each lam against the minimum-l_{1-lam} interpolators."""
    d = a.d
    fps = []
    for lam in (float(s) for s in a.lams.split(",")):
        ml = S.adame(lam=lam, c=a.c, eps=a.eps)
        e = S.simulate_discrete(P, L, ml, eta=0.02, T=a.t_early, key=0, n_record=1, start=S.Start(v0="equilibrium"))
        t0 = time.perf_counter()
        o = S.simulate_slow_sde(P, L, ml, T=a.T_fixed, n_record=max(2, int(round(a.T_fixed))), start=S.Start(theta0=e.theta[0, -1], v0=e.v[0, -1]))
        w_t = X.diagonal_net_weights(o.theta[0])
        w_o = w_t[-1]
        at_3 = int(np.argmin(np.abs(o.t - a.T)))  # the end at the horizon of parts 1-3
        q = 1.0 - lam
        # the weighted quasi-norm sum_j |s_j w_j|^q (s_j = mean_i z_ij^2, 1 for +-1 features): in w' = s w the
        # constraint is (Z / s) w' = y and the quasi-norm unweighted
        Z, y = np.asarray(P.Z), np.asarray(P.y)
        s = np.mean(Z * Z, axis=0)
        w_q = X.min_quasi_norm_interpolator(Z / s, y, q=q) / s
        w_loc = X.min_quasi_norm_interpolator(Z / s, y, q=q, w0=s * w_o, eps0=1e-10) / s
        w_g = X.min_quasi_norm_by_supports(Z / s, y, q=q) / s if d <= 24 else None
        obj = lambda w: float(np.sum(np.abs(s * w) ** q))
        fp = {"lam": lam, "q": q, "w_ode": w_o.tolist(), "w_irls": w_q.tolist(), "w_irls_from_ode": w_loc.tolist(),
              "irls_from_ode_moves": float(np.abs(w_loc - w_o).max()), "quasi_norm_ode": obj(w_o),
              "quasi_norm_irls": obj(w_q), "quasi_norm_global": None if w_g is None else obj(w_g),
              "w_global": None if w_g is None else w_g.tolist(), "diverged": bool(o.diverged[0]),
              "seconds": time.perf_counter() - t0, "T_fixed": a.T_fixed,
              "last_unit_moves": float(np.abs(w_t[-1] - w_t[-2]).max()) if o.t[-1] - o.t[-2] <= 1.0 + 1e-9 else None,
              "t_at_rest": float(o.t[np.flatnonzero(np.abs(w_t - w_o).max(1) > 1e-8).max(initial=-1) + 1]),
              "at_T": {"t": float(o.t[at_3]), "w": w_t[at_3].tolist(), "quasi_norm": obj(w_t[at_3])}}
        fps.append(fp)
        print(f"lam {lam}: ODE at t = {fp['at_T']['t']:.2f}: w {np.round(w_t[at_3], 4)}  sum|w|^{q:g} = "
              f"{fp['at_T']['quasi_norm']:.6f}; w constant (1e-8) from t = {fp['t_at_rest']:.2f}")
        print(f"lam {lam}: ODE end (T = {a.T_fixed:g}) w {np.round(w_o, 4)}  sum|w|^{q:g} = {fp['quasi_norm_ode']:.6f}; IRLS from it moves "
              f"{fp['irls_from_ode_moves']:.1e}\n   IRLS from min-l2 {np.round(w_q, 4)}  {fp['quasi_norm_irls']:.6f}"
              + ("" if w_g is None else f"\n   global (supports) {np.round(w_g, 4)}  {fp['quasi_norm_global']:.6f}"))
    return fps


if __name__ == "__main__":
    main()
