"""Each method's sharpness measures at a point, one definition for both engines and the analysis.

Under label noise the slow flow decreases one sharpness measure per method (``docs/math.md``,
"Sharpness each method reduces"):

| method | measure | observable name |
|---|---|---|
| sgd | tr H | ``trace_H`` |
| adam, rmsprop | tr(Diag H^{1/2}) | ``trace_sqrt_diag_H`` |
| adame(lam) | tr(Diag H^{1-lam}) | ``trace_diag_H_pow`` |
| adam_mini, adalayer | sum_B sqrt(n_B tr H_BB), n_B the size of block B | ``block_sharpness`` |
| adafactor | none known (``slowsde_jax.potential`` tests whether there is one); Adam's is recorded | ``trace_sqrt_diag_H`` |
| shampoo | none known (its flow is no S⁻¹-gradient flow where tested); Adam's is recorded | ``trace_sqrt_diag_H`` |

``sharpness_measures(problem, method, theta)`` gives tr H, tr(Diag H^{1/2}) and the method's own measure
when it is another one, from ``problem.hessian_diag`` at one point (D,); it is jittable and vmappable (a
swept lam may be traced), so the engines record it with ``Recording(sharpness=True)``.
"""
from __future__ import annotations

from typing import Optional

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float, Scalar

from . import geometry as geo
from .methods import AGM, AbstractMethod
from .problems import AbstractProblem

__all__ = ["MEASURE_LABELS", "SHARPNESS_NAMES", "own_sharpness", "sharpness_measures", "sharpness_batch"]

#: Readable names of the sharpness observables (also used by ``slowsde_jax.plotting.label``).
MEASURE_LABELS = {"trace_H": "tr H", "trace_sqrt_diag_H": "tr(Diag H^{1/2})",
                  "trace_diag_H_pow": "tr(Diag H^{1-λ})", "block_sharpness": "Σ_B √(|B| tr H_BB)"}
SHARPNESS_NAMES = tuple(MEASURE_LABELS)


def _lam_is_half(method: AbstractMethod) -> bool:
    """True when lam is the constant 1/2 (Adam); False when it is another value or traced (a lam sweep)."""
    lam = method.lam
    return not isinstance(lam, jax.core.Tracer) and eqx.is_array_like(lam) and float(np.asarray(lam)) == 0.5


def own_sharpness(method: AbstractMethod) -> tuple[str, str]:
    """The sharpness measure ``method``'s slow flow reduces under label noise: (observable name, label).

    ``adame`` with lam = 1/2 is Adam and gets Adam's name; any other lam gets ``trace_diag_H_pow``
    with the label showing its lam, e.g. ``("trace_diag_H_pow", "tr(Diag H^{0.75})")`` for lam = 0.25."""
    if not method.has_v:
        return "trace_H", MEASURE_LABELS["trace_H"]
    if not isinstance(method, AGM):  # Adafactor, Shampoo, a custom AGM: no measure is known to be reduced; Adam's is shown
        return "trace_sqrt_diag_H", MEASURE_LABELS["trace_sqrt_diag_H"] + " (Adam's; none known for " + method.name + ")"
    if method.blocks is not None:
        return "block_sharpness", MEASURE_LABELS["block_sharpness"]
    if _lam_is_half(method):
        return "trace_sqrt_diag_H", MEASURE_LABELS["trace_sqrt_diag_H"]
    if isinstance(method.lam, jax.core.Tracer):
        return "trace_diag_H_pow", MEASURE_LABELS["trace_diag_H_pow"]
    return "trace_diag_H_pow", f"tr(Diag H^{{{1.0 - float(np.asarray(method.lam)):g}}})"


def sharpness_measures(problem: AbstractProblem, method: Optional[AbstractMethod],
                       theta: Float[Array, "D"]) -> dict[str, Scalar]:
    """tr H and tr(Diag H^{1/2}) at theta (D,), plus ``method``'s own measure when it is another one
    (tr(Diag H^{1-lam}) for AdamE-lam, the block sharpness for Adam-mini/Adalayer: bind the method to the
    problem first, ``method.for_problem(problem)``). Each a scalar; from ``problem.hessian_diag``."""
    hdiag = problem.hessian_diag(theta)
    out = {"trace_H": geo.sharpness(hdiag, "trace", diagonal=True),
           "trace_sqrt_diag_H": geo.sharpness(hdiag, "trace_sqrt_diag", diagonal=True)}
    if method is not None:
        name, _ = own_sharpness(method)
        if name == "trace_diag_H_pow":
            out[name] = geo.sharpness(hdiag, "trace_diag_pow", lam=method.lam, diagonal=True)
        elif name == "block_sharpness":
            out[name] = geo.sharpness(hdiag, "block", blocks=np.asarray(method.blocks), diagonal=True)
    return out


@eqx.filter_jit
def sharpness_batch(problem: AbstractProblem, method: Optional[AbstractMethod],
                    theta: Float[Array, "N D"]) -> dict[str, Float[Array, "N"]]:
    """``sharpness_measures`` at every row of theta (N, D); compiled once per problem structure."""
    return jax.vmap(lambda t: sharpness_measures(problem, method, t))(theta)
