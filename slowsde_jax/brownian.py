"""Brownian motion on a fixed time grid, shared between step sizes.

``GridBrownianPath`` draws one standard normal per grid interval [i h, (i + 1) h), keyed by the path's key
and the interval's index i. An increment over [t0, t1], with t0 and t1 on the grid, is the sum of the draws of
the intervals it covers, times sqrt(h). So two fixed-step solves with steps h and 2 h (``substeps`` 1 and 2)
see the same Brownian path: the coupling that the Richardson extrapolation of the slow SDE in
``slowsde_jax.sde.simulate_slow_sde`` needs, where the difference of the two solutions must have a small
variance. A run cut into segments (checkpoints, groups of records) draws the same path as one long call.
"""
from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from typing import Optional

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = ["GridBrownianPath"]


class GridBrownianPath(diffrax.AbstractBrownianPath):
    """Brownian motion W (``shape``) sampled on the grid t = i h, i = 0, 1, ...

    - ``key``: the path's PRNG key;
    - ``h``: the grid spacing (SDE time units), the smallest step any solve of this path may take;
    - ``substeps``: the most grid intervals one ``evaluate(t0, t1)`` may cover (2 for the coarse solve of a
      Richardson pair, else 1).

    ``evaluate(t0, t1)`` needs t0 and t1 on the grid, up to rounding, with t1 - t0 at most ``substeps * h``
    (more raises an error); grid indices are int32, so t1 / h must stay below 2**31.
    For fixed-step solvers in forward mode only (like diffrax's ``UnsafeBrownianPath``), without Levy area.
    """

    shape: tuple[int, ...] = eqx.field(static=True)
    key: PRNGKeyArray
    h: Array
    substeps: int = eqx.field(static=True, default=1)
    levy_area: type = eqx.field(static=True, default=diffrax.BrownianIncrement)

    @property
    def t0(self) -> float:
        return -jnp.inf

    @property
    def t1(self) -> float:
        return jnp.inf

    def evaluate(self, t0: ArrayLike, t1: Optional[ArrayLike] = None, left: bool = True,
                 use_levy: bool = False) -> Float[Array, "*shape"]:
        """W(t1) - W(t0) (or W(t0) - W(0) when t1 is None, for t0 <= substeps * h)."""
        del left
        if use_levy:
            raise ValueError("GridBrownianPath has no Levy area")
        if t1 is None:
            t0, t1 = jnp.zeros_like(t0), t0
        dtype = jnp.result_type(float)
        h = jnp.asarray(self.h, dtype)
        first = jnp.round(jnp.asarray(t0, dtype) / h).astype(jnp.int32)
        count = jnp.round((jnp.asarray(t1, dtype) - jnp.asarray(t0, dtype)) / h).astype(jnp.int32)
        count = eqx.error_if(count, count > self.substeps,
                             "GridBrownianPath: a step covers more grid intervals than `substeps`")
        j = jnp.arange(self.substeps, dtype=jnp.int32)
        draws = jax.vmap(lambda i: jr.normal(jr.fold_in(self.key, i), self.shape, dtype))(first + j)
        mask = (j < count).reshape((-1,) + (1,) * len(self.shape))
        return jnp.sqrt(h) * jnp.sum(jnp.where(mask, draws, 0.0), axis=0)
