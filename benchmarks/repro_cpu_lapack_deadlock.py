"""Minimal repro (pure JAX): CPU deadlock in jaxlib 0.10.x batched LAPACK FFI kernels.

jaxlib's lapack_*_ffi kernels (syevd here; also getrf, potrf, ...) split a batched call into chunks on
XLA:CPU's intra-op Eigen pool (jax::ParallelBatchMap) when num_threads >= 2 and batch*cost >= 200000,
and then block the calling thread in absl::BlockingCounter::Wait. The caller itself is usually a worker
of that same pool (the thunk executor runs independent thunks concurrently on it). When every pool
worker is inside such a kernel at once, the chunks they queued can never run -> all threads sleep.

Usage: python3 repro.py [batch=1000] [n=4] [iters=3000] [k=8 independent eighs per iteration]
"""
import sys, time
import jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
B, N, ITERS, K = (int(a) for a in (sys.argv[1:] + ["1000", "4", "3000", "8"][len(sys.argv) - 1:]))

@jax.jit
def run(mats):
    def body(i, ms):
        out = []
        for m in ms:                      # K independent batched eighs -> K concurrent dsyevd thunks
            w, v = jnp.linalg.eigh(m)
            out.append(m + 1e-12 * (v * w[..., None, :]) @ jnp.swapaxes(v, -1, -2))
        return tuple(out)
    return jax.lax.fori_loop(0, ITERS, body, mats)

keys = jax.random.split(jax.random.PRNGKey(0), K)
mats = tuple((lambda x: x + jnp.swapaxes(x, -1, -2))(jax.random.normal(k, (B, N, N))) for k in keys)
t = time.time()
jax.block_until_ready(run(mats))
print(f"ok B={B} N={N} iters={ITERS} K={K} in {time.time()-t:.1f}s", flush=True)
