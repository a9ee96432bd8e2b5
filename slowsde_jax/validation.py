"""Checks that a problem, a noise model and a method fit together, run by both engines before compiling."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from .errors import ConfigError


def check_compatible(problem, noise, method):
    """Raise :class:`ConfigError` naming the field when the three inputs do not fit together."""
    from .noise import Gaussian, LabelNoise, Minibatch

    D = problem.dim
    theta = jnp.zeros(D)
    if method.blocks is not None:
        method.block_ids(theta)  # raises ConfigError("blocks", ...) on a length mismatch
    if isinstance(noise, Gaussian):
        shape = noise.cov.shape if noise.cov_fn is None else jax.eval_shape(noise.cov_fn, theta).shape
        if shape != (D, D):
            raise ConfigError("cov", f"must be ({D}, {D}) for this problem (D = {D}), got {tuple(shape)}")
    if isinstance(noise, LabelNoise) and problem.residual_parts()[0] is None:
        raise ConfigError("noise", f"label noise needs per-sample residuals; {type(problem).__name__} has none "
                                   "(build it with from_loss(..., residuals=...))")
    if isinstance(noise, Minibatch):
        try:
            jax.eval_shape(problem.per_sample_losses, theta)
        except (NotImplementedError, AttributeError):
            raise ConfigError("noise", f"minibatch noise needs per-sample losses; {type(problem).__name__} has none") from None
