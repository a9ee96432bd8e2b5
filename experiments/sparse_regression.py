"""Experiment 1: clean test loss against n_train for Adam, AdamE-lam and SGD on the diagonal net, several
seeds per point (each seed redraws w*, the data and the noise paths), thresholds and sharpness on Gamma.

Reads a ``slowsde run`` config (``configs/exp1_sparse_*.yaml``): its problem, noise and runs; each run's
sweep (n_train, and lam or delta) compiles once and is reused for every seed. For every grid point the last
and the half-way states are projected onto Gamma along the grid point's preconditioner (Phi_S, with the
grid point's lam), where the test loss, tr H and the method's own sharpness (tr(Diag H^{1-lam})) are measured; the plateau check compares the projected test loss at T/2
and T (``--at-t 50,100,200`` adds the thresholds at the records nearest those slow times, so one long run gives
the whole curve). The threshold is the n from which the test loss stays below ``--level`` (absolute, or relative to the
null loss |w*|^2 / 2 with ``--relative``). Writes ``results.json`` and ``test_loss_vs_n.png`` (symlog) to --out.

Usage: python experiments/sparse_regression.py configs/exp1_sparse_cpu.yaml --seeds 0,1,2,3 --out OUT
       [--set key=value ...] [--level 0.1 --relative] [--runs adam,sgd] [--at-t 50,100,200]
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np

from slowsde_jax import Start, config as cfgmod, paper as X
from slowsde_jax.observables import own_sharpness


def label(name, hyp):
    extra = {k: v for k, v in hyp.items() if k not in ("eta", "n_train")}
    return name + "".join(f" {k}={v:g}" for k, v in extra.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--level", type=float, default=1.0)
    ap.add_argument("--relative", action="store_true")
    ap.add_argument("--runs", default=None, help="comma-separated subset of the config's runs")
    ap.add_argument("--out", default="exp1_out")
    ap.add_argument("--at-t", default=None,
                    help="comma-separated slow times t: also the projected-state threshold at the record nearest each "
                         "(plateau curve from one run; keeps the trajectories)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from OUT/results.json")
    a = ap.parse_args()
    if a.plot_only:
        plot(json.loads((Path(a.out) / "results.json").read_text()), Path(a.out) / "test_loss_vs_n.png")
        return
    cfg = cfgmod.apply_overrides(cfgmod.load_config(a.config), a.set)
    seeds = [int(s) for s in a.seeds.split(",")]
    noise = cfgmod.build_noise(cfg)
    make = lambda s: cfgmod.build_problem({**cfg, "seed": s})
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    null = np.array([0.5 * float(np.sum(np.asarray(make(s).w_star) ** 2)) for s in seeds])
    results = {"config": cfg, "seeds": seeds, "level": a.level, "relative": a.relative, "null_loss": null.tolist(),
               "curves": {}}
    wanted = None if a.runs is None else set(a.runs.split(","))
    for name, method, kw in cfgmod.build_runs(cfg):
        if wanted is not None and name not in wanted:
            continue
        kw = dict(kw)
        kw.pop("record_state", None)
        if "v0" in kw:
            kw["start"] = Start(v0=kw.pop("v0"))
        t0 = time.perf_counter()
        at_t = [] if a.at_t is None else [float(x) for x in a.at_t.split(",")]
        g = X.run_seed_grid(make, noise, method, seeds, record_state=True, tail_fraction=0.1,
                            keep_trajectories=bool(at_t), **kw)
        # group grid points by everything but n_train: one curve each
        curves = {}
        for i, h in enumerate(g.hypers):
            curves.setdefault(label(name, h), []).append(i)
        for lab, idx in curves.items():
            n_grid = [g.hypers[i]["n_train"] for i in idx]
            lam = g.hypers[idx[0]].get("lam", None if method.lam is None else float(method.lam))
            proj = {"end": [], "half": [], **{("t", t): [] for t in at_t}}
            for si, s in enumerate(seeds):
                rows, P = {tag: [] for tag in proj}, make(s)
                for i in idx:  # each grid point projected and measured with its own problem and method (swept lam)
                    Pi, _, mi = X.grid_point(P, noise, method, g.hypers[i])
                    for tag, th, v in (("end", g.final_theta, g.final_v), ("half", g.half_theta, g.half_v)):
                        rows[tag].append(X.states_at_projection(Pi, mi, th[si, i], None if v is None else v[si, i],
                                                                diverged=g.diverged[si, i]))
                    for t in at_t:  # the record nearest t
                        tr = g.trajectories[si][i]
                        j = int(np.argmin(np.abs(np.asarray(tr.t) - t)))
                        rows[("t", t)].append(X.states_at_projection(
                            Pi, mi, tr.theta[:, j], None if tr.v is None else tr.v[:, j], diverged=g.diverged[si, i]))
                for tag in proj:
                    proj[tag].append(rows[tag])
            measure, measure_label = own_sharpness(mi)
            pick = lambda tag, key: np.array([[r[key].mean() for r in row] for row in proj[tag]])
            test_end, test_half = pick("end", "test_loss"), pick("half", "test_loss")
            scale = null[:, None] if a.relative else 1.0
            tail = g.tail["test_loss"][:, idx]
            c = {"n_train": n_grid, "eta": g.hypers[idx[0]]["eta"], "t_end": float(g.t_end[idx[0]]),
                 "steps": int(round(g.t_end[idx[0]] / g.hypers[idx[0]]["eta"] ** 2)), "lam": lam,
                 "test_loss_proj": test_end.tolist(), "test_loss_proj_half": test_half.tolist(),
                 "test_loss_tail": tail.tolist(), "trace_H_proj": pick("end", "trace_H").tolist(),
                 "own_measure": measure, "own_measure_label": measure_label,
                 "own_sharpness_proj": pick("end", measure).tolist(),
                 "power": 1.0 if lam is None else 1.0 - lam,
                 "threshold_proj": X.threshold_summary(n_grid, test_end / scale, a.level),
                 "threshold_proj_half": X.threshold_summary(n_grid, test_half / scale, a.level),
                 "threshold_tail": X.threshold_summary(n_grid, tail / scale, a.level),
                 "seconds_per_seed": g.seconds}
            if at_t:
                tr0 = g.trajectories[0][idx[0]]
                c["threshold_proj_at_t"] = [
                    {"t": float(tr0.t[int(np.argmin(np.abs(np.asarray(tr0.t) - t)))]),
                     **X.threshold_summary(n_grid, pick(("t", t), "test_loss") / scale, a.level)} for t in at_t]
            results["curves"][lab] = c
            th, thh = c["threshold_proj"], c["threshold_proj_half"]
            print(f"{lab:22s} eta {c['eta']:<6g} t_end {c['t_end']:<8.4g} threshold n {th['mean']:.1f} ± {th['std']:.1f} "
                  f"(seeds {np.round(th['per_seed'], 1)}; at T/2: {thh['mean']:.1f}; raw tail: "
                  f"{c['threshold_tail']['mean']:.1f})", flush=True)
            for r in c.get("threshold_proj_at_t", []):
                print(f"    at t = {r['t']:<8.4g} threshold n {r['mean']:.1f} ± {r['std']:.1f} "
                      f"(seeds {np.round(r['per_seed'], 1)})", flush=True)
        print(f"  [{name}: {time.perf_counter() - t0:.0f}s, per seed {np.round(g.seconds, 1)}]", flush=True)
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out_dir / "test_loss_vs_n.png")


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for lab, c in results["curves"].items():
        y = np.asarray(c["test_loss_proj"])
        line, = ax.plot(c["n_train"], y.mean(0), marker="o", ms=3, label=f"{lab} (lr {c['eta']:g}, t {c['t_end']:g})")
        ax.fill_between(c["n_train"], y.min(0), y.max(0), color=line.get_color(), alpha=0.15, lw=0)
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.set_ylim(bottom=0)
    ax.axhline(results["level"], color="gray", ls=":", lw=1)
    ax.set(xlabel="n_train", ylabel="clean test loss at Φ_S(θ_end)",
           title=f"diagonal net, {len(results['seeds'])} seeds (mean; band: min to max)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
