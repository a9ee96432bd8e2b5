"""The one result type both engines return: a ``Trajectory`` on the SDE clock t = k eta^2."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Union

import numpy as np

from ._io import read_npz

__all__ = ["Trajectory", "mean_se", "jsonable"]


def mean_se(x: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 (paths) and its standard error std(ddof=1)/sqrt(n). With a single path the standard
    error is 0 for a deterministic run (an ODE) and NaN otherwise (unknown). The one place this is computed."""
    x = np.asarray(x)
    n = x.shape[0]
    if n > 1:
        se = np.std(x, axis=0, ddof=1) / np.sqrt(n)
    else:
        se = np.full(x.shape[1:], 0.0 if deterministic else np.nan)
    return np.mean(x, axis=0), se


@dataclasses.dataclass
class Trajectory:
    """Recorded paths of one run (numpy arrays on the host).

    - ``t``: recorded SDE times, shape (n_t,);
    - ``theta``: parameters, shape (n_paths, n_t, D), or None when states were not recorded;
    - ``v``: the optimizer's second moment (flat), shape (n_paths, n_t, D); None for SGD or when not recorded;
    - ``observables``: name -> array of shape (n_paths, n_t);
    - ``diverged_time``: shape (n_paths,), the SDE time at which a path diverged (discrete engine) or failed
      (slow-SDE engines) and was frozen at its last good state; NaN if never. For the discrete engine it is
      derived from ``diverged_step`` when not given;
    - ``diverged_step``: shape (n_paths,), the discrete step of that divergence, -1 if never; None for the
      slow-SDE engines, which have no steps;
    - ``meta``: JSON-serializable metadata with the keys of ``slowsde_jax.inputs.META_KEYS``.
    """

    t: np.ndarray
    theta: Any
    v: Any
    observables: dict
    diverged_step: Any = None
    meta: dict = dataclasses.field(default_factory=dict)
    diverged_time: Any = None

    def __post_init__(self):
        if self.diverged_time is None:
            if self.diverged_step is not None:
                n = len(self.diverged_step)
            else:  # the paths axis of whatever was recorded (observables, or only the states)
                recorded = [*self.observables.values(), self.theta, self.v]
                n = next(np.shape(x)[0] for x in recorded if x is not None)
            out = np.full(n, np.nan)
            if self.diverged_step is not None and self.meta.get("eta") is not None:
                div = np.asarray(self.diverged_step) >= 0
                out[div] = np.asarray(self.diverged_step)[div] * float(self.meta["eta"]) ** 2
            self.diverged_time = out
        self.diverged_time = np.asarray(self.diverged_time, dtype=float)

    @property
    def n_paths(self) -> int:
        return int(self.diverged_time.shape[0])

    @property
    def diverged(self) -> np.ndarray:
        """Boolean mask of diverged (or failed) paths, shape (n_paths,)."""
        return ~np.isnan(self.diverged_time)

    @property
    def deterministic(self) -> bool:
        """True for the label-noise ODE (every path is the same deterministic solution)."""
        return self.meta.get("engine") == "label_noise_ode"

    def mean(self, name: str) -> np.ndarray:
        """Mean of an observable over the paths that did not diverge, shape (n_t,)."""
        return mean_se(self.observables[name][~self.diverged], self.deterministic)[0]

    def stderr(self, name: str) -> np.ndarray:
        """Standard error of that mean, shape (n_t,) (see ``mean_se``)."""
        return mean_se(self.observables[name][~self.diverged], self.deterministic)[1]

    def tail_mean(self, name: str, fraction: float = 0.1) -> tuple[float, float]:
        """Each surviving path's average of observable ``name`` over the last ``fraction`` of the recorded
        times (at least one record, t = 0 excluded), then the mean over paths and its standard error (see
        ``mean_se``; NaN with one stochastic path). The number ``slowsde run`` prints per run.
        Returns ``(mean, se)`` as floats; both NaN when every path diverged."""
        if not 0.0 < fraction <= 1.0:
            from .validation import ConfigError

            raise ConfigError("fraction", f"must be in (0, 1], got {fraction}")
        ok = ~self.diverged
        if not ok.any():
            return float("nan"), float("nan")
        n_tail = max(1, int(round(fraction * (self.t.size - 1))))
        m, se = mean_se(np.asarray(self.observables[name])[ok, -n_tail:].mean(axis=1), self.deterministic)
        return float(m), float(se)

    # ----- files --------------------------------------------------------------------------------------------
    def to_arrays(self, prefix: str = "") -> dict:
        """Flat dict of arrays for ``np.savez`` (meta as JSON text)."""
        out = {f"{prefix}t": self.t, f"{prefix}diverged_time": self.diverged_time,
               f"{prefix}meta": np.array(json.dumps(self.meta, default=jsonable))}
        if self.diverged_step is not None:
            out[f"{prefix}diverged_step"] = self.diverged_step
        if self.theta is not None:
            out[f"{prefix}theta"] = self.theta
        if self.v is not None:
            out[f"{prefix}v"] = self.v
        for k, x in self.observables.items():
            out[f"{prefix}obs.{k}"] = x
        return out

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], prefix: str = "") -> "Trajectory":
        def get(k):
            return np.asarray(arrays[prefix + k]) if prefix + k in arrays else None

        obs = {k[len(prefix) + 4 :]: np.asarray(arrays[k]) for k in arrays if k.startswith(prefix + "obs.")}
        return cls(t=get("t"), theta=get("theta"), v=get("v"), observables=obs,
                   diverged_step=get("diverged_step"), meta=json.loads(str(get("meta"))),
                   diverged_time=get("diverged_time"))

    def save(self, path: Union[str, os.PathLike]) -> None:
        np.savez(path, **self.to_arrays())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Trajectory":
        return cls.from_arrays(read_npz(path, "path", "trajectory"))


def jsonable(x: Any) -> Any:
    """JSON fallback for numpy scalars and arrays (and anything else, as text)."""
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    return str(x)
