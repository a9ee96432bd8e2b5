"""Throughput of the discrete engine against a hand-written jit(vmap(lax.scan)) Adam loop, same process.

    python benchmarks/bench_discrete.py [--d 1000] [--n 400] [--paths 1024] [--steps 2000] [--dtype float64] [--ablate]

Prints path-steps per second for both and their ratio (engine / hand loop; 1.0 = no engine overhead).
The engine adds: per-lane targets, the optax transform, the label-noise model and the divergence check,
and per call the argument checks, the initial state and the records. ``simulate_discrete`` runs as a user
calls it for the final state (``n_record=1``, ``record_state=False``): the problem's observables at t = 0
and at the end, about one step's work per path each; "no observables" (``record_observables=False``) does
the hand loop's work only.
Compile time is excluded (each is run once to warm up); the variants are timed in turn, best of --repeats.
``--ablate`` also times the engine's plain path (a masked, checked step at a time, ``block_steps=1``) with
Adam's exponent as a constant and as a traced array (the engine as it was before the fast path).
``--breakdown`` also prints the per-call pieces: a 1-step call, the initial state, one record's
observables (with the copy to the host), and ``_advance`` over 0 and 1 steps (its dispatch).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import slowsde_jax as sj
from slowsde_jax import discrete, noise, problems, sweep


def hand_loop(prob, delta, eta, beta1, beta2, eps, steps, n_paths, dtype):
    """The reference: Adam without bias correction on the diagonal net with full-batch label noise."""
    Z, y, n = prob.Z.astype(dtype), prob.y.astype(dtype), prob.Z.shape[0]
    d = Z.shape[1]

    def grad(x, key):
        u, v = x[:d], x[d:]
        r = Z @ (u * u - v * v) - y - delta * jax.random.rademacher(key, (n,), dtype)
        gw = Z.T @ r / n
        return jnp.concatenate([2 * u * gw, -2 * v * gw])

    def step(carry, _):
        x, m, v, key = carry
        key, sub = jax.random.split(key)
        g = grad(x, sub)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        return (x - eta * m / (jnp.sqrt(v) + eps), m, v, key), None

    @jax.jit
    def run(x0, keys):
        def one(x, k):
            z = jnp.zeros_like(x)
            return jax.lax.scan(step, (x, z, z, k), None, length=steps)[0][0]
        return jax.vmap(one)(x0, keys)

    # the same initial points and noise keys as simulate_discrete(key=0): values matter on CPUs, where
    # coordinates that decay towards 0 become subnormal and slow
    k_init, keys = jax.vmap(jax.random.split, out_axes=1)(jax.random.split(jax.random.PRNGKey(0), n_paths))
    x0 = jax.vmap(prob.init)(k_init).astype(dtype)
    return lambda: run(x0, keys).block_until_ready()


def timed_interleaved(fns, repeats=5):
    """Best wall time of each function, the functions run in turn (so a busy machine slows all alike)."""
    for f in fns.values():
        f()  # compile / warm up
    best = dict.fromkeys(fns, np.inf)
    for _ in range(repeats):
        for name, f in fns.items():
            t0 = time.perf_counter()
            f()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def breakdown(prob, nz, method, eta, n_paths, dtype, repeats):
    """Milliseconds of the per-call pieces of ``simulate_discrete`` (best of ``repeats``, after a warm-up)."""
    from _timing import best_time

    m = discrete._static_sqrt(method, {})
    grid, _ = sweep.sweep_grid(eta, None, dtype)
    key, bound = jax.random.PRNGKey(0), np.asarray(1e10, dtype)
    state = discrete._init_all(prob, nz, m, grid, None, "zeros", None, key, n_paths, n_paths)
    advance = lambda k: discrete._advance(prob, nz, m, grid, bound, state, np.asarray([k], np.int64),
                                          np.asarray(k, np.int64), block=32)
    call = lambda obs: sj.simulate_discrete(prob, nz, method, eta=eta, steps=1, n_paths=n_paths, key=0, n_record=1, recording=sj.Recording(record_state=False, record_observables=obs), execution=sj.Execution(progress=False, dtype=dtype)).t
    pieces = {"simulate_discrete, 1 step": lambda: call(True), "the same, no observables": lambda: call(False),
              "initial state": lambda: discrete._init_all(prob, nz, m, grid, None, "zeros", None, key, n_paths, n_paths),
              "observables of one record, to host":
                  lambda: jax.tree_util.tree_map(np.asarray, discrete._observe(prob, nz, m, grid, state)),
              "_advance, 0 steps": lambda: advance(0), "_advance, 1 step": lambda: advance(1)}
    return "per call (ms): " + ", ".join(f"{k} {1e3 * best_time(f, repeats=repeats):.1f}" for k, f in pieces.items())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=1000)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--paths", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--dtype", default="float64")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ablate", action="store_true",
                    help="also time the plain path (block_steps=1) with and without a traced Adam exponent")
    ap.add_argument("--breakdown", action="store_true", help="also time the per-call pieces of simulate_discrete")
    a = ap.parse_args()
    dtype = jnp.float64 if a.dtype == "float64" else jnp.float32
    prob = problems.diagonal_net(d=a.d, n=a.n, k=3, key=0, n_test=100)
    eta, beta1, beta2, eps, delta = 0.1, 0.9, 0.95, 1e-6, 0.5
    nz = noise.label_noise(delta)

    def engine(block_steps=32, traced_lam=False, observables=True):
        # traced_lam: lam = 1/2 passed as a swept array, so S(v) is a power with a traced exponent (the engine
        # before the sqrt specialization); sweeping one value changes nothing else
        method = sj.adame(lam=0.5, beta1=beta1, beta2=beta2, eps=eps) if traced_lam else \
            sj.adam(beta1=beta1, beta2=beta2, eps=eps)
        kw = dict(sweep={"lam": [0.5]}) if traced_lam else {}

        def run():
            out = sj.simulate_discrete(prob, nz, method, eta=eta, steps=a.steps, n_paths=a.paths, key=0, n_record=1, **kw, recording=sj.Recording(record_state=False, record_observables=observables), execution=sj.Execution(progress=False, dtype=dtype, block_steps=block_steps))
            return out

        return run

    if a.breakdown:
        print(breakdown(prob, nz, sj.adam(beta1=beta1, beta2=beta2, eps=eps), eta, a.paths, dtype, a.repeats))
    fns = {"hand jit(vmap(scan)) loop": hand_loop(prob, delta, eta, beta1, beta2, eps, a.steps, a.paths, dtype),
           "simulate_discrete": engine(),
           "simulate_discrete, no observables": engine(observables=False)}
    if a.ablate:
        fns["plain path, sqrt"] = engine(block_steps=1)
        fns["plain path, traced lam (old)"] = engine(block_steps=1, traced_lam=True)
    t = timed_interleaved(fns, a.repeats)
    ps = a.paths * a.steps
    base = t["hand jit(vmap(scan)) loop"]
    print(f"backend={jax.default_backend()} device={jax.devices()[0]} d={a.d} n={a.n} paths={a.paths} "
          f"steps={a.steps} dtype={a.dtype} repeats={a.repeats} date={time.strftime('%Y-%m-%d %H:%M')}")
    for name, sec in t.items():
        print(f"{name:34s} {sec:8.3f} s  {ps / sec:.3e} path-steps/s  time / hand loop {sec / base:.2f}")


if __name__ == "__main__":
    main()
