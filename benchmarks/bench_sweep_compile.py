"""A sweep over eta, lam, c, delta and n_train: how many times the step kernel compiles, and what it costs.

    python benchmarks/bench_sweep_compile.py [--values 2] [--paths 64] [--steps 200]

Runs the Cartesian grid (values^5 configurations) twice with new values of the same shape, and counts the
traces of the engine's step kernel (``eqx.debug.get_num_traces`` on the kernel, which is wrapped in
``eqx.debug.assert_max_traces``). Baseline in the same process: one configuration at a time, each a
separate call (what a loop over the grid would do). Prints traces and wall times (compile included).
"""
import argparse
import itertools
import time

import equinox as eqx

import slowsde_jax as sj
from slowsde_jax import discrete, noise, problems


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--values", type=int, default=2)
    ap.add_argument("--paths", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--d", type=int, default=100)
    ap.add_argument("--n", type=int, default=40)
    a = ap.parse_args()
    prob = problems.diagonal_net(d=a.d, n=a.n, k=3, key=0, n_test=100)
    lin = lambda lo, hi: [lo + (hi - lo) * i / max(1, a.values - 1) for i in range(a.values)]
    grid = {"eta": lin(0.05, 0.1), "lam": lin(0.3, 0.5), "c": lin(2.0, 5.0), "delta": lin(0.1, 0.5),
            "n_train": lin(a.n // 2, a.n)}
    kw = dict(steps=a.steps, n_paths=a.paths, key=0, n_record=1, recording=sj.Recording(record_state=False),
              execution=sj.Execution(progress=False))
    traces = lambda: eqx.debug.get_num_traces(discrete._advance)
    rows = []
    for label, g in [("sweep, first grid", grid), ("sweep, new values", {k: v[::-1] for k, v in grid.items()})]:
        t0, n0 = time.perf_counter(), traces()
        sj.simulate_discrete(prob, noise.label_noise(0.5), sj.adame(lam=0.5, c=5.0), sweep=g, **kw)
        rows.append((label, traces() - n0, time.perf_counter() - t0))
    combos = list(itertools.product(*grid.values()))
    t0, n0 = time.perf_counter(), traces()
    for eta, lam, c, delta, n_train in combos:
        sj.simulate_discrete(prob.with_n_train(n_train), noise.label_noise(delta), sj.adame(lam=lam, c=c),
                                   eta=eta, **kw)
    rows.append((f"baseline: {len(combos)} single runs", traces() - n0, time.perf_counter() - t0))
    print(f"date={time.strftime('%Y-%m-%d %H:%M')} configurations={len(combos)} paths={a.paths} steps={a.steps} "
          f"d={a.d} n={a.n}")
    for label, n, sec in rows:
        print(f"{label:32s} traces {n:3d}  wall {sec:7.2f} s  wall / baseline {sec / rows[-1][2]:.3f}")


if __name__ == "__main__":
    main()
