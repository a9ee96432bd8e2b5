"""Peak host memory of a discrete run against its number of records: streamed to disk or kept in memory.

    python benchmarks/bench_stream_memory.py [--paths 256] [--d 500] [--n 40] [--records 10 100 400]
                                             [--steps-per-record 2] [--dtype float64]

Every run is a fresh subprocess recording theta and v (record_state=True); its peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) is printed with the size of the records it produced, and on
a GPU the device's peak (``memory_stats()["peak_bytes_in_use"]``); on the CPU the device memory is the host
memory (NaN in that column). A streamed run's peak should not grow with
the number of records; an in-memory run's grows by about the records' size (twice, while they are stacked).
The streamed records are read back at the end (mean of the last theta) to show they are all there.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time

CHILD = """
import json, resource, sys, tempfile
import numpy as np
import jax, jax.numpy as jnp
import slowsde_jax as sj
from slowsde_jax import discrete, noise, problems
a = json.loads(sys.argv[1])
prob = problems.diagonal_net(d=a["d"], n=a["n"], k=3, key=0, n_test=100)
dtype = jnp.float32 if a["dtype"] == "float32" else jnp.float64
tr = sj.simulate_discrete(prob, noise.label_noise(0.5), sj.adam(c=10.0, eps=1e-6), eta=0.05,
                                steps=a["records"] * a["spr"], n_paths=a["paths"], key=0, n_record=a["records"],
                                recording=sj.Recording(record_state=True, record_to=a["record_to"]),
                                execution=sj.Execution(progress=False, dtype=dtype))
last = float(np.mean(tr.theta[:, -1]))
rec_bytes = tr.theta.nbytes + tr.v.nbytes + sum(x.nbytes for x in tr.observables.values())
stats = jax.devices()[0].memory_stats() or {}  # None on the CPU
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "device_peak_mb": stats.get("peak_bytes_in_use", float("nan")) / 2**20,
                  "records_mb": rec_bytes / 2**20, "last_theta_mean": last}))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", type=int, default=256)
    ap.add_argument("--d", type=int, default=500)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--records", type=int, nargs="+", default=[10, 100, 400])
    ap.add_argument("--steps-per-record", type=int, default=2)
    ap.add_argument("--dtype", default="float64")
    a = ap.parse_args()
    print(f"date={time.strftime('%Y-%m-%d %H:%M')} paths={a.paths} d={a.d} n={a.n} dtype={a.dtype} "
          f"steps/record={a.steps_per_record}")
    print(f"{'records':>8s} {'mode':>9s} {'records MB':>11s} {'peak RSS MB':>12s} {'device peak MB':>15s}")
    for records in a.records:
        for mode in ("streamed", "in memory"):
            with tempfile.TemporaryDirectory() as tmp:
                args = dict(paths=a.paths, d=a.d, n=a.n, records=records, spr=a.steps_per_record, dtype=a.dtype,
                            record_to=tmp if mode == "streamed" else None)
                out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], check=True,
                                     capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
            print(f"{records:8d} {mode:>9s} {r['records_mb']:11.1f} {r['peak_mb']:12.1f} {r['device_peak_mb']:15.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
