"""Sweeps: what may be swept, who owns each name, the grid, and the checks of a swept value.

A sweep varies hyperparameters that the classes declare sweepable (``type(x).sweepable``: sweep name ->
field), plus the engine's own ``eta``. ``sweep_grid`` builds their Cartesian grid as arrays (so a sweep
compiles once), ``apply_hypers`` puts one grid point into (problem, noise, method), and
``check_sweep_value`` checks a swept value with the factory that owns its name, before any work.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Optional

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike

from . import methods, noise, problems
from .methods import AbstractMethod
from .noise import AbstractNoise
from .problems import AbstractProblem
from .validation import ConfigError, as_real_array, suggest

__all__ = ["SWEEP_OWNERS", "OWNER", "SWEEPABLE", "apply_hypers", "sweep_grid", "check_sweep_value"]

# What a sweep may vary, as the classes declare it (``sweepable``: sweep name -> field), and which of
# (problem, noise, method) owns each name. ``eta`` is the engine's own.
SWEEP_OWNERS = {"method": methods.AGM, "noise": noise.LabelNoise, "problem": problems.AbstractRegression}
OWNER = {name: owner for owner, cls in SWEEP_OWNERS.items() for name in cls.sweepable}
SWEEPABLE = ("eta", *OWNER)


def apply_hypers(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod,
                 hypers: dict) -> tuple[AbstractProblem, AbstractNoise, AbstractMethod]:
    """Return (problem, noise, method) with the hyperparameters in ``hypers`` (arrays) substituted into the
    fields their classes declare sweepable (``type(x).sweepable``: sweep name -> field name)."""
    objs = {"problem": problem, "noise": noise, "method": method}
    for name, value in hypers.items():
        if name == "eta":
            continue
        if name not in OWNER:
            raise ConfigError("sweep", f"cannot sweep '{name}'; sweepable: {', '.join(SWEEPABLE)}")
        owner = OWNER[name]
        obj = objs[owner]
        field = type(obj).sweepable.get(name)
        if field is None or getattr(obj, field) is None:
            what = method.name if owner == "method" else type(obj).__name__
            raise ConfigError(name, f"{owner} {what} has no '{name}' to sweep")
        objs[owner] = eqx.tree_at(lambda o: getattr(o, field), obj, value)
    return objs["problem"], objs["noise"], objs["method"]


def sweep_grid(eta: Optional[ArrayLike], sweep: Optional[dict], dtype: Any) -> tuple[dict[str, Array], list[dict[str, float]]]:
    """Cartesian grid of hyperparameters: dict name -> array (n_cfg,), and the list of per-config dicts."""
    sweep = dict(sweep or {})
    if "eta" not in sweep:
        sweep["eta"] = [eta]
    for k in sweep:
        if k not in SWEEPABLE:
            raise ConfigError(f"sweep.{k}", f"not sweepable{suggest(k, SWEEPABLE)}; sweepable: {', '.join(SWEEPABLE)}")
    names = list(sweep)
    values = []
    for k in names:
        try:
            values.append(np.atleast_1d(np.asarray(sweep[k], dtype=float)))
        except (TypeError, ValueError):
            raise ConfigError(f"sweep.{k}", f"must be a list of numbers, got {sweep[k]!r}") from None
    for k, v in zip(names, values):
        if v.ndim != 1 or v.size == 0:
            raise ConfigError(f"sweep.{k}", "must be a non-empty list of numbers")
    combos = list(itertools.product(*values))
    grid = {k: jnp.asarray([c[i] for c in combos], dtype) for i, k in enumerate(names)}
    return grid, [dict(zip(names, map(float, c))) for c in combos]


def check_sweep_value(problem: AbstractProblem, nz: AbstractNoise, method: AbstractMethod, k: str, v: ArrayLike,
                      field: str | None = None) -> None:
    """ConfigError naming ``field`` (default ``sweep.<k>``) unless the value ``v`` of sweep ``k`` passes the
    checks of the class that owns ``k`` (its ``__check_init__``, run by ``dataclasses.replace`` with the value:
    ``AGM`` for ``beta1``, ``beta2``, ``c``, ``eps``, ``lam``; ``LabelNoise`` for ``delta``; a regression's
    whole number of samples in [1, n] for ``n_train``), and the object it sets has that field. ``eta`` is checked by the caller (> 0 and
    c*eta^2 in (0, 1) with the method's c)."""
    field = field or f"sweep.{k}"

    owner = OWNER.get(k)
    if owner == "method":
        own = type(method).sweepable.get(k)
        if own is None or getattr(method, own) is None:
            raise ConfigError(field, f"method {method.name} has no '{k}' to sweep")
        try:  # the method checks itself (its __check_init__)
            dataclasses.replace(method, **{own: jnp.asarray(as_real_array(k, v), method.beta1.dtype)})
        except ConfigError as e:
            raise ConfigError(field if e.field == k else f"{field} ({e.field})", e.reason) from None
    elif owner in ("noise", "problem"):  # the noise or the problem checks itself (its __check_init__)
        obj = nz if owner == "noise" else problem
        own = type(obj).sweepable.get(k)
        if own is None:
            raise ConfigError(field, f"{owner} {type(obj).__name__} has no '{k}' to sweep")
        try:
            dataclasses.replace(obj, **{own: jnp.asarray(as_real_array(k, v), getattr(obj, own).dtype)})
        except ConfigError as e:
            raise ConfigError(field, e.reason) from None
