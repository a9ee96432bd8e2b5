"""Discrete runs against the slow SDE on the same clock t = k eta^2: weak errors and eta-sweeps."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import numpy as np
from jaxtyping import ArrayLike, PRNGKeyArray

from .validation import ConfigError
from .methods import AbstractMethod
from .noise import AbstractNoise
from .problems import AbstractProblem
from .discrete import simulate_discrete
from .observables import project_trajectory
from .regime import finite_eta_regime
from .options import Recording
from .sharpness import SHARPNESS_NAMES
from .trajectory import Trajectory

__all__ = ["Comparison", "compare", "describe_order", "eta_sweep", "fit_order", "weak_order", "NOT_RESOLVED",
           "NOT_RESOLVED_ROUNDING", "ROUNDING_ULPS"]

NOT_RESOLVED = "order: not resolved (errors within noise)"
NOT_RESOLVED_ROUNDING = "order: not resolved (errors at rounding level)"
# An error within this many units in the last place of the observable's scale is rounding, not a weak error.
ROUNDING_ULPS = 1e3


@dataclasses.dataclass
class Comparison:
    """Weak errors per observable on the common time grid ``t`` (n_t,): ``mean_discrete``, ``mean_sde``, their
    standard errors, ``weak_error`` = |mean_discrete - mean_sde| and its standard error ``se``."""

    t: np.ndarray
    mean_discrete: dict
    mean_sde: dict
    se_discrete: dict
    se_sde: dict
    weak_error: dict
    se: dict

    def summary(self) -> dict:
        """JSON-ready: per observable, the weak error at the last time and its maximum over t."""
        return {k: {"final_weak_error": float(self.weak_error[k][-1]), "final_se": float(self.se[k][-1]),
                    "max_weak_error": float(np.max(self.weak_error[k])),
                    "final_mean_discrete": float(self.mean_discrete[k][-1]), "final_mean_sde": float(self.mean_sde[k][-1])}
                for k in self.weak_error}


def compare(discrete: Trajectory, continuous: Trajectory, observables: Optional[Sequence[str]] = None) -> Comparison:
    """Weak errors |E g(discrete) - E g(SDE)| per recorded time for each observable g (default: all shared).

    Both trajectories must be recorded on the same times, up to one discrete step eta^2 (the discrete
    recording steps are round(t / eta^2)). Compare a projected discrete trajectory (see
    ``project_trajectory``, for quantities defined on Gamma)."""
    eta = discrete.meta.get("eta")
    atol = 1e-12 + (float(eta) ** 2 if eta else 0.0)  # a discrete clock is rounded to whole steps
    if discrete.t.shape != continuous.t.shape or not np.allclose(discrete.t, continuous.t, rtol=0, atol=atol):
        raise ConfigError("t", "the two trajectories are not recorded on the same times")
    names = observables or sorted(set(discrete.observables) & set(continuous.observables))
    out = {k: {} for k in ("mean_discrete", "mean_sde", "se_discrete", "se_sde", "weak_error", "se")}
    for n in names:
        for traj, tag in ((discrete, "discrete"), (continuous, "sde")):
            if n not in traj.observables:
                hint = (" (record the sharpness measures with Recording(sharpness=True), or see a discrete run on "
                        "Gamma with at_projection)" if n in SHARPNESS_NAMES else "")
                raise ConfigError("observables", f"'{n}' is not recorded by the {tag} trajectory{hint}")
        md, sd = discrete.mean(n), discrete.stderr(n)
        ms, ss = continuous.mean(n), continuous.stderr(n)
        out["mean_discrete"][n], out["se_discrete"][n] = md, sd
        out["mean_sde"][n], out["se_sde"][n] = ms, ss
        out["weak_error"][n], out["se"][n] = np.abs(md - ms), np.hypot(sd, ss)
    return Comparison(t=discrete.t, **out)


def fit_order(etas: ArrayLike, errors: ArrayLike) -> tuple[float, float]:
    """Least-squares slope and intercept of log(error) against log(eta): error ~ C eta^order."""
    x, y = np.log(np.asarray(etas, float)), np.log(np.asarray(errors, float))
    order, logc = np.polyfit(x, y, 1)
    return float(order), float(np.exp(logc))


def weak_order(etas: ArrayLike, errors: ArrayLike, se: ArrayLike, scale: Optional[float] = None,
               eps: float = float(np.finfo(np.float64).eps)) -> dict[str, Any]:
    """The order of the weak error in eta, fitted only where it is resolved: above the noise (error > 2
    standard errors) and above rounding (error > ``ROUNDING_ULPS`` * ``eps`` * ``scale``).

    ``scale``: the size of the observable (its largest |mean| over the runs compared; ``eta_sweep`` passes
    it), so that an error of 1e-33 in a loss that is 1e-3 off Gamma and 0 on it is not read as a weak
    error; None checks the noise only. ``eps``: the machine epsilon of the runs' dtype.

    Returns ``order`` and ``constant`` (None when fewer than two etas are resolved), ``order_se`` (the
    standard error of the order from the errors' standard errors, s.e.(log error) ~ se/error, propagated
    through the fit), ``order_resolved``, ``resolved`` (per eta) and ``unresolved`` (per eta: None,
    "noise" or "rounding"). With fewer than two resolved etas the data say nothing about the order."""
    etas, errors, se = (np.asarray(a, float) for a in (etas, errors, se))
    rounding = np.abs(errors) <= (0.0 if scale is None else ROUNDING_ULPS * eps * abs(float(scale)))
    noise = ~rounding & ~(errors > 2 * se)
    resolved = ~rounding & ~noise
    why = [None if r else ("rounding" if ro else "noise") for r, ro in zip(resolved, rounding)]
    if resolved.sum() < 2:
        return {"order": None, "constant": None, "order_se": None, "order_resolved": False,
                "resolved": resolved.tolist(), "unresolved": why}
    order, const = fit_order(etas[resolved], errors[resolved])
    x = np.log(etas[resolved]) - np.log(etas[resolved]).mean()
    order_se = float(np.sqrt(np.sum(x**2 * (se[resolved] / errors[resolved]) ** 2)) / np.sum(x**2))
    return {"order": order, "constant": const, "order_se": order_se, "order_resolved": True,
            "resolved": resolved.tolist(), "unresolved": why}


def describe_order(entry: dict) -> str:
    """"order 1.02 ± 0.05", or "order: not resolved (errors within noise)" or "(errors at rounding level)"
    (whichever holds for most etas) for an ``eta_sweep`` observable entry."""
    if not entry.get("order_resolved"):
        why = [w for w in entry.get("unresolved", []) if w]
        return NOT_RESOLVED_ROUNDING if why and why.count("rounding") * 2 >= len(why) else NOT_RESOLVED
    se = entry.get("order_se")
    return f"order {entry['order']:.2f}" + (f" ± {se:.2f}" if se is not None else "")


def eta_sweep(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, etas: Sequence[float], T: float,
              n_paths: int, key: Union[int, PRNGKeyArray], sde_traj: Trajectory,
              observables: Union[str, Sequence[str]], project: bool = True, **discrete_kw: Any) -> dict[str, Any]:
    """Run the discrete method at every eta in ``etas`` (one compiled sweep, recorded on ``sde_traj``'s
    times), compare each with ``sde_traj``, and fit the order of the weak error at the final time in eta
    (see ``weak_order``: only etas whose error exceeds 2 s.e. and the rounding level of the observable's
    scale over the runs, before and after projection, enter the fit).

    ``observables``: a name or a list of names (plot the result with ``slowsde_jax.plotting.plot_sweep``):
    the problem's observables or the sharpness measures (``slowsde_jax.sharpness``; record them on
    ``sde_traj`` with ``Recording(sharpness=True)``).
    Returns a dict: ``etas``, ``method``, ``T``,
    ``observables`` (name -> ``weak_error``, ``se``, ``order``, ``constant``, ``order_resolved``,
    ``resolved``, ``unresolved``; ``order`` and ``constant`` are None when not resolved), ``regime`` (the
    finite-eta report of ``slowsde_jax.regime.finite_eta_regime``, None when the sweep is not in that regime),
    ``comparisons`` and ``trajectories`` (one per eta)."""
    names = [observables] if isinstance(observables, str) else list(observables)
    sharp = any(n in SHARPNESS_NAMES for n in names)
    if sharp and not project:  # compared at the states themselves: record the measures there
        discrete_kw["recording"] = dataclasses.replace(discrete_kw.get("recording") or Recording(), sharpness=True)
    runs = simulate_discrete(problem, noise, method, T=T, n_paths=n_paths, key=key, sweep={"eta": list(etas)},
                             n_record=sde_traj.t.size - 1, **discrete_kw)
    ex = discrete_kw.get("execution")
    progress = None if ex is None else ex.progress
    trajs = [project_trajectory(tr, problem, method, sharpness=sharp, progress=progress) for tr in runs] \
        if project else runs
    comps = [compare(tr, sde_traj, names) for tr in trajs]
    per = {}
    for name in names:
        err = np.array([c.weak_error[name][-1] for c in comps])
        se = np.array([c.se[name][-1] for c in comps])
        scale, eps = _observable_scale(name, [*runs, *trajs, sde_traj])
        per[name] = {"weak_error": err.tolist(), "se": se.tolist(), **weak_order(etas, err, se, scale, eps)}
    out = {"etas": list(map(float, etas)), "method": method.name, "T": float(T), "observables": per,
           "regime": finite_eta_regime(problem, method, etas, runs, sde_traj),
           "comparisons": comps, "trajectories": trajs}
    return out


def _observable_scale(name: str, trajs: Sequence[Trajectory]) -> tuple[float, float]:
    """(scale, eps): the largest |mean over paths| of observable ``name`` over the recorded times of ``trajs``
    (those that record it), against which a weak error is rounding, and the machine epsilon of the
    coarsest dtype it was recorded in."""
    recorded = [tr for tr in trajs if name in tr.observables]
    means = [np.abs(tr.mean(name)) for tr in recorded]
    finite = [m[np.isfinite(m)] for m in means]
    dtypes = [np.asarray(tr.observables[name]).dtype for tr in recorded]
    eps = max((float(np.finfo(d).eps) for d in dtypes if np.issubdtype(d, np.floating)),
              default=float(np.finfo(np.float64).eps))
    return float(max((np.max(m) for m in finite if m.size), default=0.0)), eps
