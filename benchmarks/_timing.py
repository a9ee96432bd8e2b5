"""Timing helpers shared by the benchmark scripts (run as ``python benchmarks/<script>.py``, so this folder
is on the import path). Every helper runs the function once first, so compilation is excluded."""
import time

import jax
import numpy as np


def timed(fn):
    """(seconds, result) of the second call of ``fn()``; the first compiles."""
    fn()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best_time(fn, *args, repeats=5):
    """Best wall time over ``repeats`` calls of ``fn(*args)`` (blocked until ready), after a warm-up call."""
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best
