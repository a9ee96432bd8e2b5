"""Validation, in one place: the error type, the value checkers, and the problem/noise/method fit.

Every mistake in a config or an API argument raises ``ConfigError`` (a ``ValueError``) whose message
names the offending field and says why, so that the CLI can print one line and exit with status 2.

- ``check_range``: finite numbers (scalars or arrays) in an interval; silent on jax tracers.
- ``check_int``: a Python or numpy integer (not a bool), optionally ``>= low``.
- ``check_number``: a Python int or float (not a bool, as YAML gives them), then ``check_range``.
- ``check_choice``: one of a few names.
- ``suggest``: the " (did you mean 'x'?)" hint for misspelled names.
- ``as_key``, ``as_float_params``, ``as_real_array``: coerce a seed, a parameter pytree, an
  array of real numbers.
- ``check_bool``, ``check_file_name``: true/false flags and names that become file names.
- ``within``: re-raise the ConfigErrors of a block with a path prefix (``runs.adam.`` + ``beta1``).
- ``show``: a value as a message prints it (``1.5``, not ``Array(1.5, dtype=float64)``).
"""
from __future__ import annotations

import contextlib
import difflib
import os
from typing import Any, Iterable, Iterator, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

from . import _precision

__all__ = ["ConfigError", "suggest", "check_range", "check_int", "check_number", "check_choice",
           "as_key", "as_float_params", "as_real_array", "as_float_array", "check_optional_bool", "check_bool", "check_file_name", "within", "show"]


class ConfigError(ValueError):
    """An invalid configuration value or API argument. ``field`` names it, ``reason`` says what is wrong."""

    def __init__(self, field: str, reason: str):
        self.field = " ".join(str(field).split())
        self.reason = " ".join(str(reason).split())  # one line, whatever a caller passes
        super().__init__(f"{self.field}: {self.reason}")


def show(x: Any) -> str:
    """A value the way an error message prints it: numbers with ``%g`` (``1.5``, ``1e-08``), small arrays as
    lists of those, anything else by ``repr`` (at most 80 characters)."""
    if isinstance(x, (bool, np.bool_, str)) or x is None:
        return repr(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    try:
        a = np.asarray(x)
    except Exception:  # noqa: BLE001 - anything that is not array-like is shown by repr
        a = None
    if a is not None and a.dtype.kind in "iuf" and a.dtype != object:
        if a.ndim == 0:
            return str(int(a)) if a.dtype.kind in "iu" else f"{float(a):g}"
        if a.size <= 8:
            return "[" + ", ".join(show(v) for v in a.tolist()) + "]" if a.ndim == 1 else \
                "[" + ", ".join(show(r) for r in a) + "]"
        return f"an array of shape {a.shape} (min {float(np.nanmin(a)):g}, max {float(np.nanmax(a)):g})"
    r = repr(x)
    return r if len(r) <= 80 else r[:77] + "..."


@contextlib.contextmanager
def within(prefix: str) -> Iterator[None]:
    """Re-raise every ``ConfigError`` of the block with ``prefix`` in front of its field, so a
    factory's ``beta1`` becomes the config's ``runs.adam.beta1`` (``prefix`` = ``"runs.adam."``)."""
    try:
        yield
    except ConfigError as e:
        section = prefix.rstrip(".")
        field = e.field if e.field == section or e.field.startswith(prefix) else prefix + e.field
        raise ConfigError(field, e.reason) from None


def check_bool(field: str, value: Any) -> bool:
    """``value`` unless it is not a bool (YAML ``true``/``false``; the string ``"no"`` is not one)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(field, f"must be true or false, got {show(value)}")
    return bool(value)


def check_optional_bool(field: str, value: Any) -> Optional[bool]:
    """``value`` unless it is neither None nor a bool."""
    return None if value is None else check_bool(field, value)


def check_file_name(field: str, value: Any) -> str:
    """``value`` if it can be used as one file name inside a folder: a non-empty string without path
    separators, not ``.`` or ``..``, without control characters, at most 200 characters."""
    if not isinstance(value, str):
        raise ConfigError(field, f"must be a string (it names files), got {show(value)}")
    seps = {"/", "\\", os.sep} | ({os.altsep} if os.altsep else set())
    if not value.strip():
        raise ConfigError(field, "must not be empty (it names files)")
    if any(c in value for c in seps) or os.path.isabs(value):
        raise ConfigError(field, f"must be a plain file name, without path separators, got {value!r}")
    if value in (".", "..") or value.startswith("."):
        raise ConfigError(field, f"must not start with '.' (it names files), got {value!r}")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise ConfigError(field, f"must not contain control characters, got {value!r}")
    if len(value) > 200:
        raise ConfigError(field, f"must be at most 200 characters, got {len(value)}")
    return value


def suggest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest of ``choices``, or ''."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _concrete(field, x):
    """x as a numpy array if it is concrete, None for a jax tracer (inside jit/vmap: nothing to check)."""
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        raise ConfigError(field, f"must be a number, got {x!r}") from None
    if a.dtype.kind not in "iuf" or a.dtype == object:
        raise ConfigError(field, f"must be a number, got {show(x)}")
    return a


def check_range(field: str, value: Any, low: Optional[float] = None, high: Optional[float] = None,
                low_open: bool = False, high_open: bool = False) -> None:
    """Raise ConfigError unless every entry of ``value`` (a scalar or an array of any shape) is a finite
    number in the stated interval. Nothing to check on a jax tracer."""
    a = _concrete(field, value)
    if a is None:
        return
    if not np.all(np.isfinite(a)):
        raise ConfigError(field, f"must be finite, got {show(value)}")
    if low is not None and (np.any(a <= low) if low_open else np.any(a < low)):
        raise ConfigError(field, f"must be {'>' if low_open else '>='} {show(low)}, got {show(value)}")
    if high is not None and (np.any(a >= high) if high_open else np.any(a > high)):
        raise ConfigError(field, f"must be {'<' if high_open else '<='} {show(high)}, got {show(value)}")


def check_bound(field: str, value: Any) -> None:
    """ConfigError unless ``value`` is a number > 0; +inf is allowed (no bound), NaN is not."""
    a = _concrete(field, value)
    if a is None:
        return
    if a.ndim != 0 or np.isnan(a) or a <= 0:
        raise ConfigError(field, f"must be a number > 0 (inf for no bound), got {show(value)}")


def check_int(field: str, value: Any, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """``value`` as an int; ConfigError unless it is an integer (Python or numpy, not a bool) in [low, high]."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or (low is not None and value < low):
        raise ConfigError(field, f"must be an integer{'' if low is None else f' >= {low}'}, got {show(value)}")
    if high is not None and value > high:
        raise ConfigError(field, f"must be an integer <= {high}, got {show(value)}")
    return int(value)


def check_number(field: str, value: Any, **interval) -> None:
    """ConfigError unless ``value`` is a Python int or float (not a bool) in the interval of ``check_range``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(field, f"must be a number, got {show(value)}")
    check_range(field, value, **interval)


def check_choice(field: str, value: Any, choices: Iterable[str]) -> None:
    """ConfigError unless ``value`` is one of ``choices`` (message: "must be 'a' or 'b', got 'x'")."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        names = [repr(c) for c in choices]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ConfigError(field, f"must be {listed}, got {show(value)}")


# ----- coercers ----------------------------------------------------------------------------------------------
def as_key(key: Union[int, PRNGKeyArray]) -> PRNGKeyArray:
    """A jax PRNG key from an int seed (0 <= seed < 2**64) or a key; ConfigError otherwise."""
    if isinstance(key, (bool, np.bool_)):
        raise ConfigError("key", f"must be an integer seed or a jax PRNG key, got {key!r}")
    if isinstance(key, (int, np.integer)):
        if not 0 <= int(key) < 2**64:
            raise ConfigError("key", f"an integer seed must lie in [0, 2**64), got {key}")
        return jax.random.PRNGKey(int(key) if int(key) < 2**63 else int(key) - 2**64)
    if isinstance(key, jax.core.Tracer):  # inside jit/vmap: the caller's key, checked by shape only
        if key.shape == (2,) or (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key) and key.shape == ()):
            return key
    elif isinstance(key, (jax.Array, np.ndarray)):
        if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
            if key.shape == ():
                return key
            raise ConfigError("key", f"must be a single PRNG key, got a batch of keys of shape {key.shape}")
        if key.shape == (2,) and key.dtype == np.uint32:
            return jnp.asarray(key)
        raise ConfigError("key", f"a raw PRNG key must have shape (2,) and dtype uint32, got shape {key.shape} "
                                 f"and dtype {key.dtype}")
    raise ConfigError("key", f"must be an integer seed or a jax PRNG key (jax.random.key or PRNGKey), got "
                             f"{type(key).__name__} {show(key)}")


def as_float_params(params0: PyTree[ArrayLike], field: str = "params0") -> PyTree[Float[Array, "..."]]:
    """``params0`` (any pytree of arrays) with every leaf a finite float array of the default precision:
    integer and bool leaves are converted (gradients need floats); strings, objects, complex and non-finite
    entries raise ConfigError naming the leaf."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params0)
    if not leaves:
        raise ConfigError(field, "has no array leaves (nothing to optimize)")
    out = []
    for path, x in leaves:
        name = field + jax.tree_util.keystr(path)
        a = as_real_array(name, x)
        if not np.all(np.isfinite(a)):
            raise ConfigError(name, "must be finite")
        out.append(jnp.asarray(a, _precision.default_float() if a.dtype.kind in "biu" else a.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def as_real_array(field: str, x: Any) -> np.ndarray:
    """``x`` as a numpy array of real numbers (bool, int or float); ConfigError for strings, objects, complex
    numbers and ragged lists."""
    try:
        a = np.asarray(x)
    except (ValueError, TypeError):
        raise ConfigError(field, f"must be an array of numbers, got {show(x)}") from None
    if a.dtype.kind not in "biuf":
        raise ConfigError(field, f"must be an array of real numbers, got {show(x)}")
    return a


def as_float_array(field: str, x: Any, dtype: Any) -> Array:
    """``x`` as a float array of ``dtype``; ConfigError for strings, objects and other non-numbers."""
    return jnp.asarray(as_real_array(field, x), dtype)


