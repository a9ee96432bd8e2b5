"""Validation, in one place: the error type, the value checkers, and the problem/noise/method fit.

Every mistake in a config or an API argument raises :class:`ConfigError` (a ``ValueError``) whose message
names the offending field and says why, so that the CLI can print one line and exit with status 2.

- :func:`check_range`: finite numbers (scalars or arrays) in an interval; silent on jax tracers.
- :func:`check_int`: a Python or numpy integer (not a bool), optionally ``>= low``.
- :func:`check_number`: a Python int or float (not a bool, as YAML gives them), then :func:`check_range`.
- :func:`check_choice`: one of a few names.
- :func:`suggest`: the " (did you mean 'x'?)" hint for misspelled names.
- :func:`check_compatible`: a problem, a noise model and a method fit together; each noise and the method
  check themselves (``noise.check(problem)``, ``method.check(problem)``).

``slowsde_jax.errors`` re-exports the first names for older imports.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional

import jax
import numpy as np

__all__ = ["ConfigError", "suggest", "check_range", "check_int", "check_number", "check_choice",
           "check_compatible"]


class ConfigError(ValueError):
    """An invalid configuration value or API argument. ``field`` names it, ``reason`` says what is wrong."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


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
        raise ConfigError(field, f"must be a number, got {x!r}")
    return a


def check_range(field: str, value: Any, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
    """Raise ConfigError unless every entry of ``value`` (a scalar or an array of any shape) is a finite
    number in the stated interval. Nothing to check on a jax tracer."""
    a = _concrete(field, value)
    if a is None:
        return
    if not np.all(np.isfinite(a)):
        raise ConfigError(field, f"must be finite, got {value!r}")
    if low is not None and (np.any(a <= low) if low_open else np.any(a < low)):
        raise ConfigError(field, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (np.any(a >= high) if high_open else np.any(a > high)):
        raise ConfigError(field, f"must be {'<' if high_open else '<='} {high}, got {value!r}")


def check_int(field: str, value: Any, low: Optional[int] = None) -> int:
    """``value`` as an int; ConfigError unless it is an integer (Python or numpy, not a bool) ``>= low``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not ok or (low is not None and value < low):
        raise ConfigError(field, f"must be an integer{'' if low is None else f' >= {low}'}, got {value!r}")
    return int(value)


def check_number(field: str, value: Any, **interval) -> None:
    """ConfigError unless ``value`` is a Python int or float (not a bool) in the interval of :func:`check_range`."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(field, f"must be a number, got {value!r}")
    check_range(field, value, **interval)


def check_choice(field: str, value: Any, choices: Iterable[str]) -> None:
    """ConfigError unless ``value`` is one of ``choices`` (message: "must be 'a' or 'b', got 'x'")."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        names = [repr(c) for c in choices]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise ConfigError(field, f"must be {listed}, got {value!r}")


def check_compatible(problem, noise, method) -> None:
    """Raise :class:`ConfigError` naming the field when the three inputs do not fit together."""
    method.check(problem)
    noise.check(problem)
