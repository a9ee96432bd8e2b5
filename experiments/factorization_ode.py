"""Experiment 2 against the slow ODE: does the label-noise ODE predict where Adam and SGD end on the
full-rank factorization (docs/experiments.md, section 2), and Adam's worse test error?

For each seed (the problems of factorization_predict.py / factorization_search.py's ``entries10_r10_n50``:
a 10x10 Gaussian W*, 50 observed entries covering every row and column, label noise delta) and each method
(Adam, beta2 = 1 - c eta^2 with c fixed at the reference lr's value; SGD):

1. run the discrete method from the problem's init at its reference lr to an early time t0 (train loss small);
2. start the label-noise ODE at Phi_S of that state (v0 from the discrete run) and integrate it to T,
   recording when its test error stops moving;
3. run the discrete method from the same early state at several eta on the slow clock t = k eta^2 (one
   compiled eta sweep, many paths), project the end points onto Gamma (Phi_S) and compare with the ODE's
   end: test error, tr H, tr(Diag H^{1/2}), and W = U V^T (max entry of |E W - W_ode|), with standard errors
   over paths, and the fitted order of the weak error in eta (``comparison.weak_order``);
4. wall-clock cost: ODE against the discrete sweep, compiled (a warm-up call first) and with compilation.

Usage: python experiments/factorization_ode.py [--seeds 0,1,2] [--methods adam,sgd] [--paths 16]
       [--adam-etas 0.06,0.042,0.03] [--sgd-etas 0.4,0.28,0.2] [--adam-t0 2 --adam-T 40] [--sgd-t0 20 --sgd-T 4000]
       [--d 10 --rank 10 --n 50] [--solver tsit5|kencarp4|kvaerno5] [--rtol 1e-8] [--out FILE.json]
"""
import argparse
import json
import time

import numpy as np

import slowsde_jax as S
from slowsde_jax import paper as X
from slowsde_jax import comparison, discrete, noise, sde

from factorization_predict import with_spectrum

QUANTITIES = ("test_error", "trace_H", "trace_sqrt_diag_H")


def matrices(P, theta):
    """W = U V^T of parameter vectors theta (..., D) -> (..., d1, d2)."""
    theta = np.asarray(theta)
    flat = theta.reshape(-1, theta.shape[-1])
    W = np.stack([np.asarray(P.matrix(th)) for th in flat])
    return W.reshape(theta.shape[:-1] + W.shape[1:])


def plateau_time(t, y, tol):
    """First recorded time from which |y(s) - y(T)| <= tol for every later record s (T: the last)."""
    far = np.abs(np.asarray(y) - y[-1]) > tol
    return float(t[np.flatnonzero(far).max(initial=-1) + 1])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def one(P, L, m, eta_ref, etas, t0, T, paths, key, solver, n_record, max_steps=1_000_000, rtol=1e-8):
    """Steps 1-4 for one problem and method; returns a JSON-able dict."""
    early = S.simulate_discrete(P, L, m, eta=eta_ref, T=t0, key=key, n_record=1, start=S.Start(v0="zeros"), execution=S.Execution(progress=False))
    th0 = early.theta[0, -1]
    kw = {} if early.v is None else {"v0": np.maximum(early.v[0, -1], 1e-300)}
    out = {"t0": t0, "T": T, "eta_ref": eta_ref, "early_train_loss": float(early.observables["train_loss"][0, -1]),
           "early_test_error": float(early.observables["test_error"][0, -1])}

    ode_run = lambda: S.simulate_slow_sde(P, L, m, T=T, n_record=n_record, **kw, start=S.Start(theta0=th0), execution=S.Execution(progress=False), integrator=S.LabelNoiseODE(solver=solver, max_steps=max_steps, rtol=rtol, atol=rtol / 100))
    ode, t_ode_cold = timed(ode_run)
    _, t_ode = timed(ode_run)
    zeta = ode.theta[0]
    W_ode = matrices(P, zeta[-1])
    ob = {k: np.asarray(v[0]) for k, v in ode.observables.items()}
    out["ode"] = {"t": ode.t.tolist(), **{k: ob[k].tolist() for k in QUANTITIES + ("train_loss",)},
                  "W_end": W_ode.tolist(), "failed": ode.meta["failure_reasons"],
                  "diverged_time": float(ode.diverged_time[0]),
                  "plateau_t_test_1e-3": plateau_time(ode.t, ob["test_error"], 1e-3),
                  "W_moves_last_interval": float(np.abs(matrices(P, zeta[-2]) - W_ode).max()),
                  "sv_end": np.linalg.svd(W_ode, compute_uv=False).tolist(),
                  "seconds": t_ode, "seconds_cold": t_ode_cold, "solver": ode.meta["solver"]}
    ode_end = {k: float(ob[k][-1]) for k in QUANTITIES}

    sweep = lambda T_: S.simulate_discrete(P, L, m, T=T_, n_paths=paths, key=key + 1000, n_record=1, sweep={"eta": etas}, **kw, start=S.Start(theta0=th0), execution=S.Execution(progress=False))
    _, t_warm = timed(lambda: sweep(max(etas) ** 2 * 10))  # compiles (10 steps at the largest eta)
    trs, t_disc = timed(lambda: sweep(T))
    rows = []
    for eta, tr in zip(etas, trs):
        ok = ~np.asarray(tr.diverged)
        pr = X.states_at_projection(P, m, tr.theta[:, -1], None if tr.v is None else tr.v[:, -1], diverged=~ok)
        W = matrices(P, pr["zeta"][ok])
        dW = W.mean(0) - W_ode
        j = np.unravel_index(np.argmax(np.abs(dW)), dW.shape)
        n_ok = int(ok.sum())
        row = {"eta": eta, "steps": int(tr.meta["steps"]), "diverged": int((~ok).sum()),
               "W_err": float(np.abs(dW).max()), "W_se": float(W[(slice(None),) + j].std(ddof=1) / np.sqrt(n_ok)),
               "W_rms_err": float(np.sqrt(np.mean(dW**2))),
               "raw_test_error": float(np.mean(np.asarray(tr.observables["test_error"])[ok, -1]))}
        for k in QUANTITIES:
            vals = np.asarray(pr[k])[ok]
            row[k] = float(vals.mean())
            row[k + "_err"] = float(abs(vals.mean() - ode_end[k]))
            row[k + "_se"] = float(vals.std(ddof=1) / np.sqrt(n_ok))
        rows.append(row)
    out["discrete"] = rows
    out["orders"] = {k: comparison.weak_order(etas, [r[k + "_err"] for r in rows], [r[k + "_se"] for r in rows])
                     for k in QUANTITIES + ("W",)}
    steps = sum(r["steps"] for r in rows) * paths
    out["cost"] = {"ode_s": t_ode, "ode_cold_s": t_ode_cold, "discrete_s": t_disc, "discrete_cold_s": t_disc + t_warm,
                   "discrete_path_steps": steps, "ratio_compiled": t_disc / t_ode,
                   "ratio_with_compile": (t_disc + t_warm) / t_ode_cold}
    return out


def report(name, seed, r):
    o = r["ode"]
    print(f"== seed {seed} {name}: early state t0 = {r['t0']:g} (eta {r['eta_ref']}), train {r['early_train_loss']:.2e}; "
          f"ODE ({o['solver']}) to T = {r['T']:g}: test {o['test_error'][0]:.4f} -> {o['test_error'][-1]:.4f}, "
          f"trH {o['trace_H'][-1]:.4f}, trDH1/2 {o['trace_sqrt_diag_H'][-1]:.3f}; test within 1e-3 of its end from "
          f"t = {o['plateau_t_test_1e-3']:g}; W moved {o['W_moves_last_interval']:.1e} in the last interval; "
          f"sv {np.round(o['sv_end'], 3)}" + (f"; FAILED {o['failed']}" if o["failed"] else ""))
    for row in r["discrete"]:
        print(f"  eta {row['eta']:<6} steps {row['steps']:>7} div {row['diverged']}  max|E W - W_ode| "
              f"{row['W_err']:.2e} (se {row['W_se']:.1e})  " + "  ".join(
                  f"{k} {row[k]:.4f} err {row[k + '_err']:.1e} (se {row[k + '_se']:.1e})" for k in QUANTITIES)
              + f"  raw test {row['raw_test_error']:.4f}")
    for k, o_ in r["orders"].items():
        print(f"  weak error of {k}: {comparison.describe_order(o_)}")
    c = r["cost"]
    print(f"  cost: ODE {c['ode_s']:.2f}s ({c['ode_cold_s']:.1f}s with compile), discrete sweep {c['discrete_s']:.1f}s "
          f"({c['discrete_cold_s']:.1f}s) for {c['discrete_path_steps']:.2e} path-steps; discrete/ODE "
          f"{c['ratio_compiled']:.1f} compiled, {c['ratio_with_compile']:.2f} with compilation", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default="adam,sgd")
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--rank", type=int, default=10)
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--delta", type=float, default=1.0)
    ap.add_argument("--beta2", type=float, default=0.99, help="Adam's beta2 at --adam-eta-ref; c is kept fixed")
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--adam-eta-ref", type=float, default=0.03)
    ap.add_argument("--sgd-eta-ref", type=float, default=0.2)
    ap.add_argument("--adam-etas", default="0.06,0.042,0.03")
    ap.add_argument("--sgd-etas", default="0.4,0.28,0.2")
    ap.add_argument("--adam-t0", type=float, default=2.0)
    ap.add_argument("--adam-T", type=float, default=40.0)
    ap.add_argument("--sgd-t0", type=float, default=20.0)
    ap.add_argument("--sgd-T", type=float, default=4000.0)
    ap.add_argument("--paths", type=int, default=16)
    ap.add_argument("--n-record", type=int, default=20)
    ap.add_argument("--solver", default=None,
                    help="the ODE's solver (default tsit5; kencarp4: IMEX, structured Jacobian; kvaerno5: implicit)")
    ap.add_argument("--max-steps", type=int, default=1_000_000, help="ODE solver steps per recording interval")
    ap.add_argument("--rtol", type=float, default=1e-8, help="the ODE's relative tolerance (atol = rtol / 100)")
    ap.add_argument("--out", default="factorization_ode.json")
    a = ap.parse_args()
    L = noise.label_noise(a.delta)
    c = (1.0 - a.beta2) / a.adam_eta_ref**2
    methods = {"adam": (S.adam(c=c, eps=a.eps), a.adam_eta_ref, a.adam_etas, a.adam_t0, a.adam_T),
               "sgd": (S.sgd(), a.sgd_eta_ref, a.sgd_etas, a.sgd_t0, a.sgd_T)}
    results = {"args": vars(a), "c": c, "seeds": {}}
    for seed in (int(s) for s in a.seeds.split(",")):
        P = with_spectrum(a.d, a.d, a.rank, a.n, "entries", key=seed)
        res = results["seeds"][seed] = {}
        for name in a.methods.split(","):
            m, eta_ref, etas, t0, T = methods[name]
            res[name] = one(P, L, m, eta_ref, [float(e) for e in etas.split(",")], t0, T, a.paths, seed, a.solver,
                            a.n_record, a.max_steps, a.rtol)
            report(name, seed, res[name])
            with open(a.out, "w") as fh:
                json.dump(results, fh, indent=1)
        if {"adam", "sgd"} <= set(res):
            g_ode = res["adam"]["ode"]["test_error"][-1] - res["sgd"]["ode"]["test_error"][-1]
            g_dis = [ra["test_error"] - rs["test_error"] for ra, rs in zip(res["adam"]["discrete"], res["sgd"]["discrete"])]
            res["gap"] = {"ode": g_ode, "discrete_by_eta_index": g_dis}
            print(f"== seed {seed}: test gap Adam - SGD: ODE {g_ode:+.4f}; discrete (projected, eta index 0..) "
                  + ", ".join(f"{g:+.4f}" for g in g_dis), flush=True)
    with open(a.out, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
