"""float64 by default.

Importing ``slowsde_jax`` turns on ``jax_enable_x64`` so that everything compared with the slow SDE runs in
float64 (the slow drift per step is ~eta^2, a few float32 ulps). To work in float32, set the environment
variable ``SLOWSDE_JAX_X64=0`` before importing, or pass ``dtype=jnp.float32`` to the engines (x64 stays on,
the arrays are float32).
"""
import os

import jax

if os.environ.get("SLOWSDE_JAX_X64", "1") not in ("0", "false", "False"):
    jax.config.update("jax_enable_x64", True)


def default_float():
    """The default float dtype: float64 when x64 is on, else float32."""
    import jax.numpy as jnp

    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
