"""Tracing the engines' diffrax solves without host callbacks, so that JAX can cache them on disk.

diffrax checks its inputs at run time with ``equinox.error_if`` (``SaveAt(ts=...)`` increasing and within
[t0, t1]; ``StepTo(ts=...)`` strictly increasing, from t0 to t1), and ``error_if`` compiles to a host
callback. JAX never writes a program with a host callback to its persistent compilation cache
(``slowsde_jax.compile_cache``), so every process compiled the slow-SDE and ODE segments again. The
engines build these time grids themselves and check them on the host before the call
(``check_time_grid``); ``host_checked`` traces their solves with equinox's run-time checks
returning NaN instead of calling the host (``EQX_ON_ERROR=nan``, only while tracing, and only when
``EQX_ON_ERROR`` is left at its default "raise"). The branch taken computes the same numbers: the results
are the same bit for bit. Checks of the user's
input that can fail inside a solve (the covariance check of ``slowsde_jax.noise.psd_sqrt``) keep
raising: they pass ``on_error=user_on_error()``. An ``error_if`` in a user's own loss or noise with the
default ``on_error`` turns the state into NaN inside the slow-SDE engine (the path is frozen and reported
as failed) instead of raising; pass ``on_error="raise"`` to keep the error.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import numpy as np

from .validation import ConfigError

try:  # equinox reads EQX_ON_ERROR once, into this module global, and looks it up while tracing error_if
    from equinox import _errors as _eqx_errors
except ImportError:  # pragma: no cover - another equinox layout: keep the checks (programs just stay uncached)
    _eqx_errors = None

_depth = 0
_lock = threading.RLock()  # the slow engine runs its calls from one thread per device


def user_on_error() -> str:
    """The ``on_error`` of a check that must keep its user-visible behaviour inside ``host_checked``:
    equinox's own setting (EQX_ON_ERROR) as it was outside."""
    return "raise" if _depth else "default"


@contextlib.contextmanager
def host_checked() -> Iterator[None]:
    """Within: ``equinox.error_if`` with the default ``on_error`` traces to a NaN fill instead of a host
    callback. Use only around calls whose run-time checks the caller has made on the host."""
    global _depth
    with _lock:
        if _eqx_errors is None or (not _depth and getattr(_eqx_errors, "EQX_ON_ERROR", None) != "raise"):
            counted = False
        else:
            counted, _depth = True, _depth + 1
            _eqx_errors.EQX_ON_ERROR = "nan"
    try:
        yield
    finally:
        if counted:
            with _lock:
                _depth -= 1
                if not _depth:
                    _eqx_errors.EQX_ON_ERROR = "raise"


def check_time_grid(ts: np.ndarray, t0: float, t1: float, strict: bool, field: str = "T") -> None:
    """The run-time checks of diffrax's ``SaveAt(ts)`` (``strict=False``: non-decreasing, within [t0, t1]) and
    ``StepTo(ts)`` (``strict=True``: strictly increasing, ts[0] = t0, ts[-1] = t1), on the host."""
    ts = np.asarray(ts)
    d = np.diff(ts)
    if np.any(d <= 0 if strict else d < 0) or np.any((ts < t0) | (ts > t1)) or \
            (strict and (ts[0] != t0 or ts[-1] != t1)):
        raise ConfigError(field, f"the time grid from {t0:.6g} to {t1:.6g} is not increasing (T or dt too small "
                                 "for the float precision?)")
