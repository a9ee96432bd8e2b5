"""What both engines take in: one argument check, one initial-state rule, one metadata layout.

:func:`parse_inputs` validates the arguments that ``simulate_discrete`` and ``simulate_slow_sde`` share (key,
number of paths and records, start, initial second moment, dtype, compatibility of problem, noise and
method) before any work is done, and :func:`initial_v` is the single rule for the optimizer's second moment
at the start. :func:`run_meta` builds the ``Trajectory.meta`` dict with the same keys for every engine.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _precision
from .validation import ConfigError, check_compatible, check_int

__all__ = ["Inputs", "as_key", "parse_inputs", "initial_v", "run_meta", "META_KEYS"]

V0_MODES = ("zeros", "equilibrium")


def as_key(key) -> jax.Array:
    """A jax PRNG key from an int seed (0 <= seed < 2**64) or a key; ConfigError otherwise."""
    if isinstance(key, (bool, np.bool_)):
        raise ConfigError("key", f"must be an integer seed or a jax PRNG key, got {key!r}")
    if isinstance(key, (int, np.integer)):
        if not 0 <= int(key) < 2**64:
            raise ConfigError("key", f"an integer seed must lie in [0, 2**64), got {key}")
        return jax.random.PRNGKey(int(key) if int(key) < 2**63 else int(key) - 2**64)
    if isinstance(key, jax.Array) and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                       or (key.shape == (2,) and key.dtype == jnp.uint32)):
        return key
    raise ConfigError("key", f"must be an integer seed or a jax PRNG key (shape (2,), uint32), got {key!r}")


@dataclasses.dataclass(frozen=True)
class Inputs:
    """The validated shared arguments of a run.

    ``theta0``: (D,) or None (the problem's initializer per path); ``v0_mode``: "zeros", "equilibrium" or
    "given" (then ``v0`` is the array, shape (D,) or a scalar).
    """

    key: jax.Array
    n_paths: int
    n_record: int
    theta0: Optional[Float[Array, "D"]]
    v0_mode: str
    v0: Optional[Float[Array, "..."]]
    dtype: Any


def parse_inputs(problem, noise, method, *, key, n_paths, n_record, theta0, v0, dtype,
                 v0_modes=V0_MODES) -> Inputs:
    """Check the shared arguments of both engines (ConfigError naming the field) and return them parsed.

    ``v0_modes``: the string modes this engine accepts (the slow SDE cannot start at v = 0).
    """
    key = as_key(key)
    n_paths = check_int("n_paths", n_paths, 1)
    n_record = check_int("n_record", n_record, 1)
    dtype = dtype or _precision.default_float()
    check_compatible(problem, noise, method)
    D = problem.dim
    if theta0 is not None:
        theta0 = jnp.asarray(theta0, dtype)
        if theta0.shape != (D,):
            raise ConfigError("theta0", f"must have shape ({D},), got {theta0.shape}")
        if not bool(jnp.all(jnp.isfinite(theta0))):
            raise ConfigError("theta0", "must be finite")
    v0_arr = None
    if isinstance(v0, str):
        if v0 not in v0_modes:
            raise ConfigError("v0", f"must be {' or '.join(repr(m) for m in v0_modes)} or an array, got {v0!r}")
        v0_mode = v0
    else:
        v0_mode, v0_arr = "given", jnp.asarray(v0, dtype)
        if v0_arr.shape not in ((D,), ()):
            raise ConfigError("v0", f"must have shape ({D},), got {v0_arr.shape}")
        lowest = "zeros" in v0_modes
        if not bool(jnp.all(v0_arr >= 0 if lowest else v0_arr > 0)) or not bool(jnp.all(jnp.isfinite(v0_arr))):
            raise ConfigError("v0", "must be finite and " + ("non-negative" if lowest else "positive"))
    return Inputs(key=key, n_paths=n_paths, n_record=n_record, theta0=theta0, v0_mode=v0_mode, v0=v0_arr,
                  dtype=dtype)


def initial_v(problem, noise, method, theta: Float[Array, "D"], v0_mode: str, v0=None) -> Optional[Float[Array, "D"]]:
    """The second moment at the start, flat (D,): zeros, the equilibrium V(Sigma(theta)) of the v-equation at
    ``theta``, or the given array; None for SGD (no second moment). jit/vmap-able."""
    if not method.has_v:
        return None
    if v0_mode == "equilibrium":
        return method.V(noise.covariance_diag(problem, theta))
    if v0_mode == "zeros":
        return jnp.zeros_like(theta)
    return jnp.broadcast_to(jnp.asarray(v0, theta.dtype), theta.shape)


# The keys of Trajectory.meta, the same for every engine (None where a key does not apply).
META_KEYS = ("engine", "method", "noise", "problem", "eta", "T", "n_paths", "v0", "hypers", "steps", "record_steps",
             "dt", "steps_per_record", "c", "alpha", "solver", "richardson", "failure_reasons")


def run_meta(engine: str, problem, noise, method, **fields) -> dict:
    """``Trajectory.meta`` for a run of ``engine`` ("discrete", "slow_sde" or "label_noise_ode"): every key of
    :data:`META_KEYS`, those not given set to None."""
    unknown = set(fields) - set(META_KEYS)
    if unknown:
        raise KeyError(f"not meta keys: {sorted(unknown)}")
    meta = dict.fromkeys(META_KEYS)
    meta.update(engine=engine, method=method.name, noise=type(noise).__name__, problem=type(problem).__name__)
    meta.update(fields)
    return meta
