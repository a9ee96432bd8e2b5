"""Both engines' groups of paths on 1 and on 4 host CPU devices, in one process (the same numbers, bit for
bit; see docs/howto/devices.md). Prints the wall times and their ratio per engine.

    python benchmarks/bench_devices.py

Discrete: Adam on a diagonal net (d = 100, n = 40), 256 paths x 4 000 steps in groups of 64. Slow: 64 paths
of projected Euler-Maruyama on a diagonal net (d = 20, n = 10) in groups of 16. One device runs the 4
groups one after the other, 4 devices one each, a thread per device. This machine has 2 cores.
"""
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import slowsde_jax as S  # noqa: E402
from slowsde_jax import noise, problems  # noqa: E402


def discrete(devices):
    net = problems.diagonal_net(d=100, n=40, k=3, key=0, n_test=10)
    return S.simulate_discrete(net, noise.label_noise(0.5), S.adam(c=5.0), eta=0.02, steps=4000, n_paths=256,
                               key=1, n_record=2,
                               execution=S.Execution(devices=devices, paths_per_call=64, progress=False))


def slow(devices):
    net = problems.diagonal_net(d=20, n=10, k=2, key=0, n_test=10)
    return S.simulate_slow_sde(net, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.5, n_paths=64, key=1,
                               n_record=2, integrator=S.ProjectedEulerMaruyama(dt=1e-3),
                               execution=S.Execution(devices=devices, paths_per_call=16, progress=False))


def main():
    for name, run in (("discrete", discrete), ("slow", slow)):
        times, thetas = {}, {}
        for n in (1, 4):
            devs = jax.devices()[:n]
            run(devs)  # compile
            best = np.inf
            for _ in range(3):
                t = time.perf_counter()
                thetas[n] = run(devs).theta
                best = min(best, time.perf_counter() - t)
            times[n] = best
            print(f"{name}: {n} device(s): {best:.2f} s (best of 3)")
        print(f"{name}: ratio 1 device / 4 devices: {times[1] / times[4]:.2f}; "
              f"same numbers: {np.array_equal(thetas[1], thetas[4])}")


if __name__ == "__main__":
    main()
