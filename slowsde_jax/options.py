"""The engines' options as small objects, shared by both engines, each checking itself when it is built.

In diffrax's style, an engine call keeps the arguments typed in every notebook cell plain (problem, noise,
method, eta, T or steps, n_paths, key, n_record) and takes everything else as one of three objects:

- ``Start``: where the paths start (θ0, v0) and how the slow engine puts the start on Γ;
- ``Recording``: what is kept at every recorded time, and where it is streamed;
- ``Execution``: how the work is cut and placed (dtype, calls, devices, checkpoints, progress).

A field that only one engine uses is refused by the other when it is set, so no option is silently
ignored. An invalid value raises ``ConfigError`` naming the field at construction.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import equinox as eqx
import jax
import numpy as np
from jaxtyping import ArrayLike

from .validation import ConfigError, as_real_array, check_bool, check_bound, check_int, check_optional_bool, \
    check_range, show

__all__ = ["Start", "Recording", "Execution", "engine_options", "V0_MODES", "FLOAT_DTYPES", "check_dtype",
           "check_devices", "check_path"]

V0_MODES = ("zeros", "equilibrium")
FLOAT_DTYPES = ("float64", "float32")


def check_dtype(dtype: Any) -> Optional[np.dtype]:
    """None (the default precision) or float64 / float32 by name or as a dtype, as a numpy dtype;
    ConfigError("dtype") for anything else (an integer dtype would give paths that never move)."""
    if dtype is None:
        return None
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in FLOAT_DTYPES:
        raise ConfigError("dtype", f"must be 'float64' or 'float32', got {show(dtype)}")
    return dt


def check_path(field: str, value: Any) -> Optional[Path]:
    """None, or ``value`` (a str or path-like, not empty) as a Path; ConfigError naming ``field`` otherwise."""
    if value is None:
        return None
    if not isinstance(value, (str, Path)) and not hasattr(value, "__fspath__") or str(value) == "":
        raise ConfigError(field, f"must be a file path (a string or pathlib.Path), got {show(value)}")
    return Path(value)


def check_devices(devices: Any) -> Optional[tuple]:
    """None (every device of ``jax.devices()``) or a non-empty sequence of distinct jax devices, as a tuple."""
    if devices is None:
        return None
    if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):
        raise ConfigError("devices", f"must be a list of jax devices (e.g. jax.devices()[:2]), got {show(devices)}")
    devices = tuple(devices)
    if not devices:
        raise ConfigError("devices", "must hold at least one device, got an empty list")
    for i, d in enumerate(devices):
        if not isinstance(d, jax.Device):
            raise ConfigError(f"devices[{i}]", f"must be a jax device (an entry of jax.devices()), got {show(d)}")
    if len(set(devices)) != len(devices):
        raise ConfigError("devices", "lists a device twice")
    return devices


class Start(eqx.Module):
    """Where the paths start.

    - ``theta0``: the parameters (D,) of every path; None: the problem's initializer, one draw per path.
    - ``v0``: the optimizer's second moment at the start: ``"zeros"``, ``"equilibrium"`` (V(Σ(θ0)), where
      the slow flow can start too) or an array (K,) (K = D but for Adafactor's and Shampoo's statistics) or a
      scalar; None: the engine's default (``"zeros"`` for the discrete engine, ``"equilibrium"`` for the slow
      one, which cannot start at v = 0). The engine checks its sign against the method's statistic.
    - ``project_max_steps``: (slow engine) the step budget of the gradient flow that puts θ0 on Γ.
    """

    theta0: Optional[ArrayLike] = None
    v0: Union[None, str, ArrayLike] = None
    project_max_steps: int = 100_000

    def __check_init__(self):
        if self.theta0 is not None:
            a = as_real_array("theta0", self.theta0)
            if not np.all(np.isfinite(a)):
                raise ConfigError("theta0", "must be finite")
            if a.ndim != 1:
                raise ConfigError("theta0", f"must be a vector (D,), got shape {a.shape}")
        if isinstance(self.v0, str):
            if self.v0 not in V0_MODES:
                raise ConfigError("v0", f"must be {' or '.join(map(repr, V0_MODES))} or an array, got {self.v0!r}")
        elif self.v0 is not None:
            a = as_real_array("v0", self.v0)
            if not np.all(np.isfinite(a)):
                raise ConfigError("v0", f"must be finite, got {show(self.v0)}")
            # its sign is checked by the engines, which know the method: entries of a diagonal statistic
            # must be non-negative, Shampoo's matrices positive semidefinite (with negative entries)
        check_int("project_max_steps", self.project_max_steps, 1)


class Recording(eqx.Module):
    """What a run keeps at every recorded time.

    - ``record_state``: θ and v, shape (n_paths, n_t, D) each, besides the observables.
    - ``record_observables``: (discrete engine) the problem's observables, each about the cost of a step per
      path and record; False leaves them empty, for runs that only need the states.
    - ``record_to``: (discrete engine) a folder to stream the records to as they are taken (one ``.npy`` per
      quantity, read back as memory maps), instead of keeping them in memory. The library claims the
      folder and never overwrites a file it did not write there.
    - ``sharpness``: also record the sharpness measures (``trace_H``, ``trace_sqrt_diag_H`` and the method's
      own, ``slowsde_jax.sharpness``) at every recorded state, by the same names in both engines; each
      costs a Hessian diagonal per path and record. (The slow engine's states lie on Gamma; a discrete run's
      are seen on Gamma by ``at_projection``, which recomputes them there.)
    """

    record_state: bool = True
    record_observables: bool = True
    record_to: Union[None, str, Path] = None
    sharpness: bool = False

    def __check_init__(self):
        check_bool("record_state", self.record_state)
        check_bool("record_observables", self.record_observables)
        check_bool("sharpness", self.sharpness)
        check_path("record_to", self.record_to)


DEFAULT_PATHS_PER_CALL = 1024  # paths per compiled call unless Execution.paths_per_call says otherwise


class Execution(eqx.Module):
    """How a run's work is cut, placed and kept safe. The numbers depend on ``paths_per_call`` (a compiled
    call's batch shape moves them in the last bits), never on the devices, processes or checkpoints.

    Both engines:
    - ``dtype``: float64 (default) or float32;
    - ``progress``: a progress bar (True, False, or None: shown in a terminal or notebook);
    - ``checkpoint``: an .npz path; the run writes its state there and, if the file exists at the start,
      continues from it with the same numbers as an uninterrupted run;
    - ``paths_per_call``: paths per compiled call (default 1024; the discrete engine's call holds those
      paths of every sweep configuration): the groups that go to the devices, one call each (this bounds
      memory);
    - ``devices``: the devices the groups go to, group i on device i mod (number of devices) (default
      ``jax.devices()``, every device of every process).

    Discrete engine:
    - ``checkpoint_every_s``: seconds between checkpoint writes (0: after every record);
    - ``chunk_steps``: at most this many steps per compiled call (progress and checkpoints between calls);
    - ``block_steps``: steps per block of the fast path (1: the plain path, a checked step at a time);
    - ``divergence_bound``: a path whose |θ| exceeds it (or turns non-finite) is frozen and flagged; inf: no
      bound beyond finiteness;
    - ``on_chunk(run)``: called after every recorded point with the run in progress.

    Slow engine:
    - ``records_per_call``: recording intervals per compiled call (default: all in one, or 1 with a
      ``checkpoint``).
    """

    dtype: Any = None
    progress: Optional[bool] = None
    checkpoint: Union[None, str, Path] = None
    checkpoint_every_s: float = 30.0
    chunk_steps: int = 1_000_000
    block_steps: int = 32
    devices: Optional[Sequence[Any]] = eqx.field(default=None, converter=lambda d: tuple(d) if (
        d is not None and not isinstance(d, (str, bytes)) and hasattr(d, "__iter__")) else d)
    divergence_bound: float = 1e10
    on_chunk: Optional[Callable] = None
    paths_per_call: Optional[int] = None
    records_per_call: Optional[int] = None

    def __check_init__(self):
        check_dtype(self.dtype)
        check_optional_bool("progress", self.progress)
        check_path("checkpoint", self.checkpoint)
        check_range("checkpoint_every_s", self.checkpoint_every_s, low=0.0)
        check_int("chunk_steps", self.chunk_steps, 1)
        check_int("block_steps", self.block_steps, 1)
        check_devices(self.devices)
        check_bound("divergence_bound", self.divergence_bound)
        if self.on_chunk is not None and not callable(self.on_chunk):
            raise ConfigError("on_chunk", f"must be a function of the run, got {type(self.on_chunk).__name__}")
        if self.paths_per_call is not None:
            check_int("paths_per_call", self.paths_per_call, 1)
        if self.records_per_call is not None:
            check_int("records_per_call", self.records_per_call, 1)


# the fields only one engine uses: the other refuses them when they are set
DISCRETE_FIELDS = {"execution": ("checkpoint_every_s", "chunk_steps", "block_steps", "divergence_bound", "on_chunk"),
                   "recording": ("record_observables", "record_to")}
SLOW_FIELDS = {"execution": ("records_per_call",), "start": ("project_max_steps",)}


def engine_options(engine: str, start: Optional[Start], recording: Optional[Recording],
                   execution: Optional[Execution]) -> tuple[Start, Recording, Execution]:
    """The options of one engine call (``engine``: "discrete" or "slow"): the defaults for those not given;
    ConfigError for an argument of the wrong type, or for a field only the other engine uses."""
    out = {}
    for name, value, cls in (("start", start, Start), ("recording", recording, Recording),
                             ("execution", execution, Execution)):
        if value is None:
            value = cls()
        elif not isinstance(value, cls):
            raise ConfigError(name, f"must be a slowsde_jax.{cls.__name__}(...), got {type(value).__name__}")
        out[name] = value
    _refuse_foreign(engine, out, SLOW_FIELDS if engine == "discrete" else DISCRETE_FIELDS)
    return out["start"], out["recording"], out["execution"]


def _refuse_foreign(engine: str, options: dict[str, eqx.Module], foreign: dict[str, tuple[str, ...]]) -> None:
    """ConfigError("<option>.<field>") for a field of another engine that is set away from its default."""
    for name, fields in foreign.items():
        obj = options[name]
        default = type(obj)()
        for f in fields:
            value, base = getattr(obj, f), getattr(default, f)
            if value is not base and not (np.ndim(value) == 0 and np.ndim(base) == 0 and value == base):
                raise ConfigError(f"{name}.{f}", f"is an option of the other engine; the {engine} engine does not "
                                                 "use it")
