"""What both engines take in: one argument check, one initial-state rule, one metadata layout.

``parse_inputs`` validates the arguments that ``simulate_discrete`` and ``simulate_slow_sde`` share (key,
number of paths and records, start, initial second moment, dtype, compatibility of problem, noise and
method) before any work is done, and ``initial_v`` is the single rule for the optimizer's second moment
at the start. ``run_meta`` builds the ``Trajectory.meta`` dict with the same keys for every engine.
``check_memory`` refuses a run whose arrays would not fit, with the estimate, before anything is
allocated; ``explain_start_failure`` says why a slow-SDE start could not be projected onto Gamma.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from . import _precision
from ._memory import available_memory
from .options import check_dtype
from .validation import ConfigError, as_float_array, as_key, check_int, show

from . import geometry as geo
from .methods import AbstractMethod
from .noise import AbstractNoise
from .problems import AbstractProblem

__all__ = ["Inputs", "check_compatible", "parse_inputs", "initial_v", "run_meta", "META_KEYS", "memory_estimate",
           "check_memory", "explain_start_failure",
           "check_step_count", "MAX_STEPS"]

V0_MODES = ("zeros", "equilibrium")


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


def parse_inputs(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, *, key: Union[int, PRNGKeyArray],
                 n_paths: int, n_record: int, theta0: Optional[ArrayLike], v0: Union[str, ArrayLike],
                 dtype: Optional[DTypeLike], v0_modes: tuple[str, ...] = V0_MODES) -> Inputs:
    """Check the shared arguments of both engines (ConfigError naming the field) and return them parsed.

    ``v0_modes``: the string modes this engine accepts (the slow SDE cannot start at v = 0).
    """
    dtype = check_dtype(dtype) or np.dtype(_precision.default_float())
    key = as_key(key)
    n_paths = check_int("n_paths", n_paths, 1)
    n_record = check_int("n_record", n_record, 1)
    check_compatible(problem, noise, method)
    D = problem.dim
    check_memory("n_paths", dim=D, n_cfg=1, n_paths=n_paths, n_record=0, record_state=False, has_v=method.has_v,
                 itemsize=np.dtype(dtype).itemsize)
    if theta0 is not None:
        theta0 = as_float_array("theta0", theta0, dtype)
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
        v0_mode, v0_arr = "given", as_float_array("v0", v0, dtype)
        K = _statistic_size(problem, method)
        if v0_arr.shape not in ((K,), ()):
            raise ConfigError("v0", f"must have shape ({K},), got {v0_arr.shape}")
        if not bool(jnp.all(jnp.isfinite(v0_arr))):
            raise ConfigError("v0", f"must be finite, got {show(v0)}")
        lowest = "zeros" in v0_modes
        bound = method.for_problem(problem)
        if bound.full_statistic:  # matrices (Shampoo's L and R, often singular): positive semidefinite
            if v0_arr.shape != (K,):
                raise ConfigError("v0", f"must be {method.name}'s whole statistic, an array of shape ({K},) (a "
                                        "scalar would fill its matrices entry by entry)")
            if not bound.statistic_ok(v0_arr):
                raise ConfigError("v0", f"must hold {method.name}'s statistic: positive semidefinite matrices "
                                        f"(and non-negative entries elsewhere), got {show(v0)}")
        elif not bool(jnp.all(v0_arr >= 0 if lowest else v0_arr > 0)):
            raise ConfigError("v0", ("must be non-negative" if lowest else
                                     "must be positive (the slow SDE cannot start at v = 0)") + f", got {show(v0)}")
    return Inputs(key=key, n_paths=n_paths, n_record=n_record, theta0=theta0, v0_mode=v0_mode, v0=v0_arr,
                  dtype=dtype)


# ----- memory ------------------------------------------------------------------------------------------------
def memory_estimate(*, dim: int, n_cfg: int, n_paths: int, n_record: int, record_state: bool, has_v: bool,
                    itemsize: int = 8, n_observables: int = 8) -> dict:
    """Bytes a discrete run holds: ``device``, the path states (theta, m, v per configuration and path, with
    room for the loop's copies), and ``host``, the records (theta and v at n_record + 1 times when
    ``record_state``, and the observables), held twice while they are stacked."""
    lanes = float(n_cfg) * float(n_paths)
    state = lanes * dim * itemsize * (2 + bool(has_v))
    per_record = lanes * ((dim * (1 + bool(has_v)) if record_state else 0) * itemsize + n_observables * 8)
    return {"device": 4.0 * state, "host": 2.0 * per_record * (n_record + 1) + state}


def check_memory(field: str, **sizes) -> None:
    """ConfigError naming ``field`` (the setting to lower) when ``memory_estimate`` of ``sizes`` exceeds
    90% of ``available_memory`` on the host or the device; the message gives both figures."""
    need, have = memory_estimate(**sizes), available_memory()
    gib = 2.0**30
    for where in ("device", "host"):
        if need[where] > 0.9 * have[where]:
            what = "path states" if where == "device" else "recorded states and observables"
            raise ConfigError(field, f"the run would need about {need[where] / gib:.3g} GiB of {where} memory for its "
                                     f"{what}, and {have[where] / gib:.3g} GiB are free; lower n_paths, n_record, "
                                     "the sweep, or set record_state: false")


def explain_start_failure(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod,
                          theta0: Optional[Float[Array, "D"]], v0_mode: str, v0: Optional[ArrayLike],
                          keys: PRNGKeyArray, status: ArrayLike, max_steps: int) -> Exception:
    """Why the slow SDE could not start, from the projection statuses (one per path): a ConfigError for a
    non-finite start, a NaN loss or v <= 0 with eps = 0 (S infinite), a ProjectionError otherwise (budget
    ``project_max_steps`` exhausted, no minimizer nearby). ``keys``: the per-path keys of the start (the
    start is ``problem.init(split(key)[0])`` as in the engine)."""
    status = np.asarray(status).reshape(-1)
    bad = np.flatnonzero(status != geo.PROJECTION_OK)
    n = f"{bad.size} of {status.size} path(s)"
    ths = np.stack([np.asarray(problem.init(jax.random.split(keys[i])[0]) if theta0 is None else theta0) for i in bad])
    src = "theta0" if theta0 is not None else "the problem's initializer"
    if not np.all(np.isfinite(ths)):
        return ConfigError("theta0", f"the start from {src} is not finite for {n}")
    losses = np.array([float(problem.loss(jnp.asarray(t))) for t in ths])
    if not np.all(np.isfinite(losses)):
        return ConfigError("loss", f"the loss is not finite (got {show(losses[~np.isfinite(losses)][0])}) at the start "
                                   f"of {n}: check the loss function and theta0")
    if method.has_v and not method.full_statistic:  # S = 1/(v^lam + eps): infinite at v <= 0 with eps = 0
        vs = [np.asarray(initial_v(problem, noise, method, jnp.asarray(t), v0_mode, v0)) for t in ths]
        low = [v for v in vs if not np.all(np.isfinite(v)) or np.any(v <= 0)]
        if low and float(method.eps) == 0.0:
            field = "v0" if v0_mode == "given" else "v0 (equilibrium)"
            return ConfigError(field, f"the start's second moment v has entries <= 0 (or not finite) on {n} and "
                                      "eps = 0, so S(v) = 1/(v^lam + eps) is infinite there; give eps > 0 or a "
                                      "positive v0")
    codes = set(status[bad].tolist())
    if codes == {3}:
        return geo.ProjectionError(f"project_max_steps: the gradient flow's step budget ({max_steps}) ran out "
                                   f"before the start of {n} came near Gamma; raise project_max_steps")
    return geo.ProjectionError("the initial point could not be projected onto Gamma: "
                               + geo.projection_failure_message(status, max_steps))


MAX_STEPS = 2**62  # the engines count steps in int64; a schedule past this would overflow
DEFAULT_STEP_LIMIT = 10**10  # steps per path a run may take unless SLOWSDE_MAX_STEPS raises it
STEP_LIMIT_ENV = "SLOWSDE_MAX_STEPS"


def step_limit() -> int:
    """The most steps per path a discrete run may take: ``$SLOWSDE_MAX_STEPS`` if set (the explicit opt-in
    to longer runs, at most 2**62), else ``DEFAULT_STEP_LIMIT`` (10^10: hours per path even at the
    fastest rates measured; more is a mistyped eta far more often than a plan)."""
    raw = os.environ.get(STEP_LIMIT_ENV)
    if raw is None:
        return DEFAULT_STEP_LIMIT
    try:
        value = int(float(raw))
    except ValueError:
        raise ConfigError(STEP_LIMIT_ENV, f"must be a whole number of steps, got {raw!r}") from None
    if not 1 <= value <= MAX_STEPS:
        raise ConfigError(STEP_LIMIT_ENV, f"must lie in [1, 2**62], got {raw!r}")
    return value


def check_steps(steps: float, field: str, how: str) -> None:
    """ConfigError naming ``field`` when a run of ``steps`` steps per path (``how`` says where the number
    comes from) is beyond ``step_limit``."""
    limit = step_limit()
    if not steps <= limit:
        raise ConfigError(field, f"{how} = {steps:.3g} steps per path, more than the limit of {limit:.3g}; check eta "
                                 f"and T, or set {STEP_LIMIT_ENV} to a larger number of steps to run it anyway")


def check_step_count(T: ArrayLike, eta: ArrayLike, field: str = "eta", T_field: str = "T") -> None:
    """ConfigError naming ``field`` when T / eta^2 steps round to no step at all, or exceed the step limit
    (``step_limit``, below the engines' 64-bit step counter)."""
    steps = float(T) / float(eta) ** 2
    if steps < 0.5:
        raise ConfigError(field, f"T / eta^2 = {steps:.3g} rounds to 0 steps at eta = {show(eta)}; lower eta or raise "
                                 f"{T_field}")
    check_steps(steps, field, f"T / eta^2 at eta = {show(eta)}")


def initial_v(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, theta: Float[Array, "D"], v0_mode: str,
              v0: Optional[ArrayLike] = None) -> Optional[Float[Array, "D"]]:
    """The second moment at the start, flat (K,) (K = D except for a statistic of another shape, Adafactor's):
    zeros, the equilibrium V(Sigma(theta)) of the v-equation at ``theta``, or the given array; None for SGD
    (no second moment). jit/vmap-able."""
    if not method.has_v:
        return None
    bound = method.for_problem(problem)
    if v0_mode == "equilibrium":
        if bound.full_statistic:  # V needs all of Sigma (Shampoo): from its factor, Sigma = F F^T
            return bound.V_of_factor(noise.covariance_factor(problem, theta))
        return bound.V(noise.covariance_diag(problem, theta))
    shape = (_statistic_size(problem, bound),)  # (K,): (D,) unless the statistic is shaped otherwise
    if v0_mode == "zeros":
        return jnp.zeros(shape, theta.dtype)
    return jnp.broadcast_to(jnp.asarray(v0, theta.dtype), shape)


def _statistic_size(problem: AbstractProblem, method: AbstractMethod) -> int:
    """K, the length of the method's second moment v on ``problem`` (D for the diagonal AGMs and SGD)."""
    if not method.has_v:
        return problem.dim
    bound = method.for_problem(problem)
    if bound.full_statistic:
        return int(jax.eval_shape(bound.V_of_factor, jax.ShapeDtypeStruct((problem.dim, 1), jnp.float64)).shape[0])
    return int(jax.eval_shape(bound.V, jax.ShapeDtypeStruct((problem.dim,), jnp.float64)).shape[0])


# The keys of Trajectory.meta, the same for every engine (None where a key does not apply).
META_KEYS = ("engine", "method", "noise", "problem", "eta", "T", "n_paths", "v0", "hypers", "steps", "record_steps",
             "dt", "steps_per_record", "c", "alpha", "solver", "imex_fallback_solves", "richardson", "failure_reasons")


def run_meta(engine: str, problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod,
             **fields: Any) -> dict[str, Any]:
    """``Trajectory.meta`` for a run of ``engine`` ("discrete", "slow_sde" or "label_noise_ode"): every key of
    ``META_KEYS``, those not given set to None."""
    unknown = set(fields) - set(META_KEYS)
    if unknown:
        raise KeyError(f"not meta keys: {sorted(unknown)}")
    meta = dict.fromkeys(META_KEYS)
    meta.update(engine=engine, method=method.name, noise=type(noise).__name__, problem=type(problem).__name__)
    meta.update(fields)
    return meta


def check_compatible(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod) -> None:
    """Raise ``ConfigError`` naming the field when the three inputs do not fit together."""
    method.check(problem)
    noise.check(problem)
