"""The project's own error types.

Every mistake in a config or an API argument raises :class:`ConfigError` (a ``ValueError``) whose message
names the offending field and says why, so that the CLI can print one line and exit with status 2.
"""
from __future__ import annotations

import difflib

import jax
import numpy as np


class ConfigError(ValueError):
    """An invalid configuration value or API argument. ``field`` names it, ``reason`` says what is wrong."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


def suggest(name: str, choices) -> str:
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


def check_range(field: str, value, low=None, high=None, low_open=False, high_open=False):
    """Raise ConfigError unless every entry of ``value`` is a finite number in the stated interval."""
    a = _concrete(field, value)
    if a is None:
        return
    if not np.all(np.isfinite(a)):
        raise ConfigError(field, f"must be finite, got {value!r}")
    if low is not None and (np.any(a <= low) if low_open else np.any(a < low)):
        raise ConfigError(field, f"must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (np.any(a >= high) if high_open else np.any(a > high)):
        raise ConfigError(field, f"must be {'<' if high_open else '<='} {high}, got {value!r}")
