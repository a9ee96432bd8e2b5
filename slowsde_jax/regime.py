"""The finite-eta regime of a comparison: where the slow flow's preconditioner outruns the discrete runs.

The slow flow's v follows c (V(Sigma) - v) with the noise covariance Sigma at the point of Gamma. Where that
covariance vanishes (coordinates the label-noise flow drives to zero), v goes to zero and S(v) grows towards
1/eps. A discrete run at a finite eta cannot follow: its gradients fluctuate around Gamma at a distance set
by eta, and those fluctuations keep its v above a floor that falls only as eta does. On such coordinates
the discrete S stays below the slow flow's, and quantities that weight them (a method's own sharpness
above all) converge to the slow flow more slowly in eta than the order the theory gives for eta -> 0.

``finite_eta_regime`` measures it from an eta sweep's own runs: for each coordinate, the median over paths
of S at the final record, on the slow side and per eta on the discrete side. It names the coordinates where
the slow flow's S exceeds the discrete one at the smallest eta by more than ``factor``, fits the growth
S_discrete ~ eta^-q on them, and extrapolates the eta at which the discrete S would reach the slow flow's.
Above that eta the comparison may be pre-asymptotic for quantities those coordinates dominate, whose weak
order in eta can then fall below the theory's 1 (measured cases in docs/experiments.md).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .methods import AbstractMethod
from .problems import AbstractProblem
from .trajectory import Trajectory

__all__ = ["finite_eta_regime", "describe_regime", "coordinate_names"]

REGIME_FACTOR = 2.0  # the slow flow's S over the discrete run's, above which a coordinate is reported


def coordinate_names(problem: AbstractProblem) -> list[str]:
    """A name per coordinate of theta (D,): its parameter leaf and its index in that leaf (``theta[3]``,
    ``U[0]``, ``['W1'][5]`` for a user pytree)."""
    names = []
    for leaf, size in zip(problem.leaf_names, problem.leaf_sizes):
        names += [f"{leaf or 'theta'}[{i}]" for i in range(size)]
    return names


def _median_S(method: AbstractMethod, traj: Trajectory) -> np.ndarray:
    """The median over live paths of S(v) at the final record (its diagonal for a full-matrix S), shape (D,)."""
    live = ~np.asarray(traj.diverged)
    v = jnp.asarray(traj.v[live, -1] if live.any() else traj.v[:, -1])
    S = method.S(v) if method.diagonal_S else jnp.diagonal(jax.vmap(method.S_operator)(v), axis1=-2, axis2=-1)
    return np.median(np.asarray(S), axis=0)


def finite_eta_regime(problem: AbstractProblem, method: AbstractMethod, etas: Sequence[float],
                      discrete: Sequence[Trajectory], slow: Trajectory,
                      factor: float = REGIME_FACTOR) -> Optional[dict]:
    """The finite-eta report of an eta sweep (``discrete``: one Trajectory per eta, raw states with v; ``slow``:
    the slow SDE or ODE with v), or None when there is nothing to report: a method without v (SGD), runs
    without recorded v, or no coordinate where the slow flow's S exceeds the discrete S at the smallest eta
    by more than ``factor``.

    Returns a JSON-ready dict: ``coordinates`` (indices into theta), ``names`` (``coordinate_names``),
    ``slow_S`` (per coordinate), ``discrete_S`` (per eta, per coordinate), ``ratio`` (slow over discrete at
    the smallest eta), ``S_growth`` (q of the fit S_discrete ~ eta^-q of the median over those coordinates,
    None with one eta), ``eta_reach`` (the eta at which that growth would reach the slow flow's S, the
    median ratio; None when S does not grow as eta falls), ``etas`` and ``factor``."""
    method = method.for_problem(problem)
    if not method.has_v or slow.v is None or any(tr.v is None for tr in discrete):
        return None
    etas = np.asarray(etas, dtype=float)
    order = np.argsort(etas)
    etas, discrete = etas[order], [discrete[i] for i in order]
    s_slow = _median_S(method, slow)
    s_disc = np.stack([_median_S(method, tr) for tr in discrete])  # (n_eta, D)
    ratio = s_slow / s_disc[0]
    coords = np.flatnonzero(ratio > factor)
    if coords.size == 0:
        return None
    s_coords = s_disc[:, coords]  # (n_eta, k)
    q, eta_reach = None, None
    if etas.size >= 2:  # S_discrete ~ eta^-q on these coordinates (medians over them)
        q = float(-np.polyfit(np.log(etas), np.log(np.median(s_coords, axis=1)), 1)[0])
        if q > 0:  # where that growth would reach the slow flow's S
            eta_reach = float(etas[0] * np.median(ratio[coords]) ** (-1.0 / q))
    names = coordinate_names(problem)
    worst = coords[np.argsort(ratio[coords])[::-1]]
    return {"coordinates": worst.tolist(), "names": [names[k] for k in worst], "slow_S": s_slow[worst].tolist(),
            "discrete_S": s_disc[:, worst].tolist(), "ratio": ratio[worst].tolist(), "S_growth": q,
            "eta_reach": eta_reach,
            "etas": etas.tolist(), "factor": float(factor)}


def describe_regime(report: Optional[dict], dim: Optional[int] = None, shown: int = 5) -> str:
    """One paragraph for a person: which coordinates, by how much, and the order to expect ("" for None)."""
    if not report:
        return ""
    k = len(report["coordinates"])
    listed = ", ".join(f"{n} (S {s:.3g} vs {d:.3g})" for n, s, d in
                       zip(report["names"][:shown], report["slow_S"][:shown], report["discrete_S"][0][:shown]))
    more = f" and {k - shown} more" if k > shown else ""
    q, reach = report["S_growth"], report["eta_reach"]
    trend = (f"the discrete S there grows as eta^-{q:.2f} and would reach the slow flow's near eta = {reach:.2g}"
             if reach is not None else "the discrete S there does not grow as eta falls over these etas")
    expect = (trend + "; until then the comparison may be pre-asymptotic for quantities these coordinates "
              "dominate (a method's own sharpness above all): their weak order in eta can fall below 1")
    return (f"finite-eta regime: on {k}" + (f" of {dim}" if dim else "") + " coordinate(s) the slow flow's S exceeds "
            f"the discrete run's at eta = {report['etas'][0]:g} by more than {report['factor']:g}x: {listed}{more}; "
            + expect + ".")
