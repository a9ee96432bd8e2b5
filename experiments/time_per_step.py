"""Measured wall time per discrete step of every run in a config (its whole sweep advancing together), on
this machine: each run is compiled and warmed up with a short run, then timed on two lengths whose
difference gives the time per step without the fixed costs.

Usage: python experiments/time_per_step.py configs/exp1_sparse_paper.yaml [--steps 200] [--set key=value ...]
"""
import argparse
import time

import jax

import slowsde_jax

from slowsde_jax import config as cfgmod
from slowsde_jax.discrete import simulate_discrete


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    cfg = cfgmod.apply_overrides(cfgmod.load_config(a.config), a.set)
    problem, noise = cfgmod.build_problem(cfg), cfgmod.build_noise(cfg)
    print(f"{jax.devices()[0]}  problem D = {problem.dim}")
    for name, method, kw in cfgmod.build_runs(cfg):
        kw = {k: v for k, v in kw.items() if k in ("eta", "sweep", "n_paths")}
        run = lambda steps: simulate_discrete(problem, noise, method, steps=steps, n_record=1, key=0, **kw, recording=slowsde_jax.Recording(record_state=False), execution=slowsde_jax.Execution(progress=False))
        run(a.steps)  # compile and warm up
        secs = []
        for steps in (a.steps, 3 * a.steps):
            t0 = time.perf_counter()
            out = run(steps)
            jax.block_until_ready(jax.numpy.zeros(()))
            secs.append(time.perf_counter() - t0)
        per = (secs[1] - secs[0]) / (2 * a.steps)
        n_cfg = len(out) if isinstance(out, list) else 1
        full = cfg["runs"][name].get("steps", cfg.get("steps"))
        print(f"{name:12s} {n_cfg:3d} grid points x {kw.get('n_paths', 1)} paths: {per * 1e3:.3f} ms per step "
              f"({per / n_cfg * 1e6:.1f} us per lane-step); the config's {full} steps: {per * full / 3600:.2f} h")


if __name__ == "__main__":
    main()
