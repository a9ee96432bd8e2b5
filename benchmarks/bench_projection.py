"""Phi_S of a run's recorded states against the compiled discrete run that recorded them, same process.

    python benchmarks/bench_projection.py [--paths 32] [--records 5] [--problem mlp|diagonal_net] [--reference 4]

The user's case of issue 25: a 2-layer tanh MLP regression {W1, b1, W2, b2} (2 -> 30 -> 1, D = 121) on n = 12
points, from_loss with residuals, +-0.5 label noise, Adam (c = 10, eps = 1e-8) at eta = 0.04 to T = 2 (1 250
steps), ``--paths`` paths with ``--records`` records. Prints the discrete run's wall time, the projection's
(``at_projection`` of every recorded state), their ratio, and the largest relative distance between the
projected states and a stiff reference (Kvaerno5 on the flow, rtol 1e-12, then Newton) on ``--reference``
states. Both timings exclude compilation (each is called once before).
"""
import argparse
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import slowsde_jax as sj
from slowsde_jax import geometry as geo, noise, problems


def mlp_problem(n=12, width=30, key=0):
    kx, k1, k2 = jax.random.split(jax.random.PRNGKey(key), 3)
    X = jax.random.normal(kx, (n, 2))
    y = jnp.sin(2.0 * X[:, 0]) * jnp.cos(X[:, 1])
    params = {"W1": jax.random.normal(k1, (width, 2)) / np.sqrt(2.0), "b1": jnp.zeros(width),
              "W2": jax.random.normal(k2, (1, width)) / np.sqrt(width), "b2": jnp.zeros(1)}

    def residuals(p):
        return (jnp.tanh(X @ p["W1"].T + p["b1"]) @ p["W2"].T + p["b2"])[:, 0] - y

    return problems.from_loss(lambda p: 0.5 * jnp.mean(residuals(p) ** 2), params, residuals=residuals)


def stiff_reference(problem, theta, S):
    """Phi_S(theta) by Kvaerno5 (L-stable, implicit) on dx/ds = -S grad L to s = inf, then three Newton steps."""
    ls = problem.least_squares()
    grad = jax.grad(problem.loss)

    @jax.jit
    def one(th, s):
        term = diffrax.ODETerm(lambda t, x, args: -s * grad(x))
        sol = diffrax.diffeqsolve(term, diffrax.Kvaerno5(), 0.0, 1e12, None, th,
                                  stepsize_controller=diffrax.PIDController(rtol=1e-12, atol=1e-14, dtmin=None),
                                  saveat=diffrax.SaveAt(t1=True), max_steps=200_000, throw=False,
                                  event=diffrax.Event(lambda t, x, args, **kw: jnp.linalg.norm(s * grad(x)) < 1e-12 * jnp.max(s)))
        x = sol.ys[-1]
        for _ in range(3):
            x = geo.newton_retraction_step(problem.loss, x, s, least_squares=ls)
        return x, sol.stats["num_steps"], sol.result == diffrax.RESULTS.event_occurred

    out = [one(t, s_) for t, s_ in zip(theta, S)]
    return np.stack([np.asarray(x) for x, _, _ in out]), [int(k) for _, k, _ in out], [bool(ok) for _, _, ok in out]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--problem", default="mlp", choices=["mlp", "diagonal_net"])
    ap.add_argument("--paths", type=int, default=32)
    ap.add_argument("--records", type=int, default=5)
    ap.add_argument("--reference", type=int, default=4)
    a = ap.parse_args()
    if a.problem == "mlp":
        prob, eta, T = mlp_problem(), 0.04, 2.0
    else:
        prob, eta, T = problems.diagonal_net(d=50, n=20, k=3, key=0, n_test=100), 0.04, 2.0
    nz, method = noise.label_noise(0.5), sj.adam(c=10.0, eps=1e-8)
    ex = sj.Execution(progress=False)

    def run():
        return sj.simulate_discrete(prob, nz, method, eta=eta, T=T, n_paths=a.paths, key=3, n_record=a.records,
                                    execution=ex)

    run()
    t0 = time.perf_counter()
    traj = run()
    t_run = time.perf_counter() - t0
    sj.at_projection(traj, prob, method)
    t0 = time.perf_counter()
    proj = sj.at_projection(traj, prob, method)
    t_proj = time.perf_counter() - t0
    n_states = traj.theta.shape[0] * traj.theta.shape[1]
    print(f"{a.problem}: D = {prob.dim}, {a.paths} paths x {traj.t.size} records = {n_states} states, "
          f"{int(round(T / eta**2))} steps per path")
    print(f"discrete run (compiled)   {t_run:9.3f} s")
    print(f"at_projection (compiled)  {t_proj:9.3f} s   ratio {t_proj / t_run:8.2f}")
    th = traj.theta.reshape(-1, prob.dim)
    S = np.asarray(method.S(jnp.asarray(traj.v.reshape(-1, prob.dim))))
    later = np.flatnonzero(np.arange(th.shape[0]) % traj.t.size > 0)  # records after t = 0 (there v = 0, S = 1/eps)
    pick = later[np.linspace(0, later.size - 1, a.reference).astype(int)]
    ref, steps, ok = stiff_reference(prob, jnp.asarray(th[pick]), jnp.asarray(S[pick]))
    got = proj.theta.reshape(-1, prob.dim)[pick]
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    for i, k in enumerate(pick):
        print(f"state {k}: S in [{S[k].min():.3g}, {S[k].max():.3g}], reference {steps[i]} Kvaerno5 steps "
              f"({'converged' if ok[i] else 'NOT converged'}), relative distance {rel[i]:.2e}")


if __name__ == "__main__":
    main()
