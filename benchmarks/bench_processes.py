"""The same run on 1, 2 and 4 processes of this machine (jax.distributed, one CPU device each, gloo).

    python benchmarks/bench_processes.py [--paths 64] [--steps 2000] [--paths-per-call 16]

Each process runs a discrete Adam sweep (2 step sizes x ``--paths`` paths, diagonal net d = 20, n = 10,
label noise) and the label-noise ODE of the same problem (``--paths`` paths), both in groups of
``--paths-per-call`` paths spread over every device of every process. Prints, per process count, the wall
time of process 0 from the first call to the end of the second (compiled) call of each engine, and whether
its numbers equal the one-process run's bit for bit. On a 2-core machine expect no speed-up: the point is
that it runs, agrees and does not hang.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

WORKER = textwrap.dedent("""
    import json, sys, time
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    pid, nproc, port, out, paths, steps, per_call = sys.argv[1:8]
    pid, nproc, paths, steps, per_call = int(pid), int(nproc), int(paths), int(steps), int(per_call)
    if nproc > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
    import numpy as np
    import slowsde_jax as S
    from slowsde_jax import noise, problems
    net = problems.diagonal_net(d=20, n=10, k=2, key=0, n_test=100)
    ex = S.Execution(progress=False, paths_per_call=per_call)
    times = {}
    for name, run in (
            ("discrete", lambda: S.simulate_discrete(net, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), steps=steps,
                                                     n_paths=paths, key=3, n_record=4, sweep={"eta": [0.02, 0.04]},
                                                     execution=ex)),
            ("slow", lambda: S.simulate_slow_sde(net, noise.label_noise(0.5), S.adam(c=5.0, eps=1e-6), T=0.5,
                                                 n_paths=paths, key=2, n_record=4, execution=ex))):
        t0 = time.perf_counter(); run(); t1 = time.perf_counter(); res = run(); t2 = time.perf_counter()
        times[name] = (t1 - t0, t2 - t1)
        theta = res[0].theta if isinstance(res, list) else res.theta
        if pid == 0:
            np.save(f"{out}.{name}.npy", theta)
    if pid == 0:
        print(json.dumps(times), flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n_proc, out, paths, steps, per_call):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    port = str(free_port())
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(n_proc), port, out, str(paths), str(steps),
                               str(per_call)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for i in range(n_proc)]
    stdout = [p.communicate(timeout=1800)[0].decode() for p in procs]
    wall = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"{n_proc} processes failed")
    line = [ln for ln in stdout[0].splitlines() if ln.startswith("{")][-1]
    return wall, json.loads(line)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--paths-per-call", type=int, default=16)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref = None
        print("processes  wall (launch to exit)  discrete: first call, compiled call  slow ODE: first, compiled  "
              "same numbers as 1 process")
        for n in (1, 2, 4):
            out = os.path.join(tmp, f"p{n}")
            wall, t = launch(n, out, a.paths, a.steps, a.paths_per_call)
            got = {k: np.load(f"{out}.{k}.npy") for k in ("discrete", "slow")}
            ref = ref or got
            same = (np.array_equal(got["discrete"], ref["discrete"]), np.array_equal(got["slow"], ref["slow"]))
            print(f"{n:9d}  {wall:20.1f} s  {t['discrete'][0]:10.2f} s, {t['discrete'][1]:6.2f} s"
                  f"               {t['slow'][0]:6.2f} s, {t['slow'][1]:6.2f} s       discrete {same[0]}, slow {same[1]}")


if __name__ == "__main__":
    main()
