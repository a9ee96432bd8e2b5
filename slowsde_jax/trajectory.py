"""The one result type both engines return: a :class:`Trajectory` on the SDE clock t = k eta^2."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np


@dataclasses.dataclass
class Trajectory:
    """Recorded paths of one run (numpy arrays on the host).

    - ``t``: recorded SDE times, shape (n_t,);
    - ``theta``: parameters, shape (n_paths, n_t, D), or None when states were not recorded;
    - ``v``: the optimizer's second moment (flat), shape (n_paths, n_t, D); None for SGD or when not recorded;
    - ``observables``: name -> array of shape (n_paths, n_t);
    - ``diverged_step``: shape (n_paths,), the step at which a path diverged and was frozen, -1 if never
      (for the slow-SDE engines: the index of the recording interval in which it failed);
    - ``meta``: JSON-serializable metadata (engine, method, eta, steps, hyperparameters, ...).
    """

    t: np.ndarray
    theta: Any
    v: Any
    observables: dict
    diverged_step: np.ndarray
    meta: dict = dataclasses.field(default_factory=dict)

    @property
    def n_paths(self) -> int:
        return int(self.diverged_step.shape[0])

    @property
    def diverged(self) -> np.ndarray:
        """Boolean mask of diverged paths, shape (n_paths,)."""
        return self.diverged_step >= 0

    @property
    def diverged_time(self) -> np.ndarray:
        """SDE time at which each path diverged (NaN if it did not), shape (n_paths,)."""
        out = np.full(self.n_paths, np.nan)
        if self.meta.get("engine") != "discrete":  # the SDE engines flag the recording index
            out[self.diverged] = self.t[np.minimum(self.diverged_step[self.diverged], self.t.size - 1)]
        elif self.meta.get("eta") is not None:
            out[self.diverged] = self.diverged_step[self.diverged] * float(self.meta["eta"]) ** 2
        return out

    def mean(self, name: str) -> np.ndarray:
        """Mean of an observable over the paths that did not diverge, shape (n_t,)."""
        return np.mean(self.observables[name][~self.diverged], axis=0)

    def stderr(self, name: str) -> np.ndarray:
        """Standard error of that mean, shape (n_t,)."""
        x = self.observables[name][~self.diverged]
        return np.std(x, axis=0, ddof=1) / np.sqrt(max(x.shape[0], 1)) if x.shape[0] > 1 else np.full(x.shape[1], np.nan)

    # ----- files --------------------------------------------------------------------------------------------
    def to_arrays(self, prefix: str = "") -> dict:
        """Flat dict of arrays for ``np.savez`` (meta as JSON text)."""
        out = {f"{prefix}t": self.t, f"{prefix}diverged_step": self.diverged_step,
               f"{prefix}meta": np.array(json.dumps(self.meta, default=jsonable))}
        if self.theta is not None:
            out[f"{prefix}theta"] = self.theta
        if self.v is not None:
            out[f"{prefix}v"] = self.v
        for k, x in self.observables.items():
            out[f"{prefix}obs.{k}"] = x
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str = "") -> "Trajectory":
        def get(k):
            return np.asarray(arrays[prefix + k]) if prefix + k in arrays else None

        obs = {k[len(prefix) + 4 :]: np.asarray(arrays[k]) for k in arrays if k.startswith(prefix + "obs.")}
        return cls(t=get("t"), theta=get("theta"), v=get("v"), observables=obs,
                   diverged_step=get("diverged_step"), meta=json.loads(str(get("meta"))))

    def save(self, path):
        np.savez(path, **self.to_arrays())

    @classmethod
    def load(cls, path) -> "Trajectory":
        with np.load(path) as f:
            return cls.from_arrays(dict(f))


def jsonable(x):
    """JSON fallback for numpy scalars and arrays (and anything else, as text)."""
    if isinstance(x, np.generic):
        return x.item()
    if hasattr(x, "tolist"):
        return np.asarray(x).tolist()
    return str(x)
