"""Gradient noise models: each one both *samples* a stochastic gradient and returns its exact covariance.

The discrete engine calls ``noise.grad(problem, theta, key)`` (shape (D,)); the slow-SDE side calls
``noise.covariance(problem, theta)`` (shape (D, D)) or ``covariance_diag`` (shape (D,)). Both come from one
object, so they cannot drift apart. ``covariance_factor(problem, theta)`` gives G (D, K) with G G^T = Sigma
without forming Sigma (K = n or 2n for the per-sample noises): the structured slow-SDE path uses it.

- ``label_noise``: l_i = (f_i - y_i - xi_i)^2 / 2 with xi_i = +-delta (Rademacher) or N(0, delta^2), fresh
  each step, on every label of the full batch, or on a minibatch of B samples drawn with replacement
  (probabilities w_i; every draw gets its own noise). On Gamma, Sigma = alpha H with alpha = delta^2 / n (full batch) or delta^2 / B.
- ``minibatch``: B samples drawn with replacement, Sigma = (1/B) (sum_i w_i g_i g_i^T - g g^T).
- ``gaussian``: grad L + A z, A A^T = Sigma(theta), Sigma a constant matrix or a function of theta.

Every noise model is an ``AbstractNoise`` (an equinox Module) and every concrete one is final: build
them with the factories. Each checks its own fit with a problem (``noise.check(problem)``, raising
``ConfigError``) and declares the fields a sweep may vary (``sweepable``).
"""

import abc
from typing import Any, Callable, ClassVar, Mapping, Optional, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from . import _precision
from ._pattern import forbid_subclassing_final
from ._runtime_checks import user_on_error
from .problems import AbstractLeastSquares, AbstractProblem
from .validation import ConfigError, as_real_array, check_choice, check_int, check_range, show

__all__ = ["AbstractNoise", "LabelNoise", "Minibatch", "Gaussian", "label_noise", "minibatch", "gaussian",
           "psd_sqrt", "NOISES"]


def _batch_weights(key, weights, batch_size):
    """Weights counts_i / B of B indices drawn with replacement with probabilities ``weights``."""
    idx = jax.random.choice(key, weights.shape[0], (batch_size,), replace=True, p=weights)
    return jnp.zeros_like(weights).at[idx].add(1.0 / batch_size)


class AbstractNoise(eqx.Module):
    """A gradient noise model: samples a stochastic gradient and returns its exact covariance.

    ``sweepable`` (class-level) maps the names a sweep may vary to the fields they set.
    """

    sweepable: eqx.AbstractClassVar[Mapping[str, str]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forbid_subclassing_final(cls)

    @abc.abstractmethod
    def grad(self, problem: AbstractProblem, theta: Float[Array, "D"], key: PRNGKeyArray) -> Float[Array, "D"]:
        """One stochastic gradient at theta, shape (D,); its mean is grad L(theta)."""

    @abc.abstractmethod
    def covariance(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D D"]:
        """Sigma(theta), the exact covariance of ``grad``, shape (D, D)."""

    @abc.abstractmethod
    def covariance_diag(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        """diag Sigma(theta), shape (D,)."""

    @abc.abstractmethod
    def covariance_factor(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D K"]:
        """G with G G^T = Sigma(theta), shape (D, K), without forming Sigma where the noise allows."""

    @abc.abstractmethod
    def label_noise_alpha(self, problem: AbstractProblem) -> Optional[Scalar]:
        """alpha with Sigma = alpha H on Gamma (a scalar), or None when the noise is not of that form."""

    @abc.abstractmethod
    def check(self, problem: AbstractProblem) -> None:
        """Raise ``ConfigError`` naming the field when this noise cannot act on ``problem``."""


@final
class LabelNoise(AbstractNoise):
    """Label noise of size ``delta`` (an array: sweepable). ``distribution``: "rademacher" or "gaussian";
    ``batch_size``: None for the full batch, else B samples drawn with replacement. Needs a least-squares
    problem (``AbstractLeastSquares``)."""

    sweepable: ClassVar[Mapping[str, str]] = {"delta": "delta"}

    delta: Float[Array, ""]
    distribution: str = eqx.field(static=True, default="rademacher")
    batch_size: Optional[int] = eqx.field(static=True, default=None)

    def __check_init__(self):
        """However it is built (``label_noise``, ``LabelNoise(...)`` or ``dataclasses.replace`` with a swept
        delta); nothing to check on a jax tracer."""
        check_range("delta", self.delta, low=0.0)
        check_choice("distribution", self.distribution, ("rademacher", "gaussian"))
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, low=1)

    def _xi(self, key, shape, dtype):
        if self.distribution == "rademacher":
            return self.delta * jax.random.rademacher(key, shape, dtype)
        return self.delta * jax.random.normal(key, shape, dtype)

    def grad(self, problem: AbstractLeastSquares, theta: Float[Array, "D"], key: PRNGKeyArray) -> Float[Array, "D"]:
        """grad of sum_i w_i (r_i - xi_i)^2 / 2 (full batch) or of the minibatch version, shape (D,)."""
        k_xi, k_b = jax.random.split(key)
        r, vjp = jax.vjp(problem.residuals, theta)
        w = problem.sample_weights()
        if self.batch_size is None:
            return vjp(w * (r - self._xi(k_xi, r.shape, r.dtype)))[0]
        # B draws with replacement, each with its own fresh label noise
        idx = jax.random.choice(k_b, w.shape[0], (self.batch_size,), replace=True, p=w)
        coef = (r[idx] - self._xi(k_xi, idx.shape, r.dtype)) / self.batch_size
        return vjp(jnp.zeros_like(r).at[idx].add(coef))[0]

    def _parts(self, problem, theta):
        ls = problem.least_squares()
        return ls.residuals(theta), ls.jacobian(theta), ls.sample_weights(theta)

    def covariance(self, problem: AbstractLeastSquares, theta: Float[Array, "D"]) -> Float[Array, "D D"]:
        """delta^2 J^T diag(w^2) J (full batch), or the minibatch covariance; shape (D, D)."""
        r, J, w = self._parts(problem, theta)
        if self.batch_size is None:
            return self.delta**2 * (J.T * w**2) @ J
        g = (w * r) @ J
        return ((J.T * (w * (r**2 + self.delta**2))) @ J - jnp.outer(g, g)) / self.batch_size

    def covariance_diag(self, problem: AbstractLeastSquares, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        r, J, w = self._parts(problem, theta)
        if self.batch_size is None:
            return self.delta**2 * (w**2 @ J**2)
        g = (w * r) @ J
        return ((w * (r**2 + self.delta**2)) @ J**2 - g**2) / self.batch_size

    def covariance_factor(self, problem: AbstractLeastSquares, theta: Float[Array, "D"]) -> Float[Array, "D K"]:
        """G with G G^T = covariance: delta J^T W (D, n) for the full batch; for B draws with replacement,
        [sqrt(w_i/B) (r_i grad r_i - g), delta sqrt(w_i/B) grad r_i] (D, 2n), g = J^T (w r) (weights sum to 1)."""
        r, J, w = self._parts(problem, theta)
        if self.batch_size is None:
            return self.delta * (J.T * w)
        g = (w * r) @ J
        c = jnp.sqrt(w / self.batch_size)
        return jnp.concatenate([((J.T * r) - g[:, None]) * c, self.delta * (J.T * c)], axis=1)

    def label_noise_alpha(self, problem: AbstractLeastSquares) -> Scalar:
        """delta^2 / n for the full batch (n the number of active samples), delta^2 / B for a minibatch."""
        return self.delta**2 / (problem.n_active if self.batch_size is None else self.batch_size)

    def check(self, problem: AbstractProblem) -> None:
        if not isinstance(problem, AbstractLeastSquares):
            raise ConfigError("noise", f"label noise needs per-sample residuals; {type(problem).__name__} has none "
                                       "(build it with from_loss(..., residuals=...))")


@final
class Minibatch(AbstractNoise):
    """Sampling noise: B samples drawn with replacement with probabilities w_i (the problem's weights).
    Needs a problem with per-sample losses."""

    sweepable: ClassVar[Mapping[str, str]] = {}

    batch_size: int = eqx.field(static=True)

    def __check_init__(self):
        check_int("batch_size", self.batch_size, low=1)

    def grad(self, problem: AbstractProblem, theta: Float[Array, "D"], key: PRNGKeyArray) -> Float[Array, "D"]:
        wb = _batch_weights(key, problem.sample_weights(), self.batch_size)
        return jax.grad(lambda th: jnp.sum(wb * problem.per_sample_losses(th)))(theta)

    def covariance(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D D"]:
        """(1/B) (sum_i w_i g_i g_i^T - g g^T), shape (D, D)."""
        G = jax.jacrev(problem.per_sample_losses)(theta)  # (n, D)
        w = problem.sample_weights()
        g = w @ G
        return ((G.T * w) @ G - jnp.outer(g, g)) / self.batch_size

    def covariance_diag(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        """The row sums of squares of ``covariance_factor``, shape (D,): non-negative to the last bit
        (the diagonal of ``covariance`` is a difference of two sums and rounds to -1e-17 where the
        per-sample gradients agree, which made S(v) = 1/(sqrt(v) + eps) NaN)."""
        return jnp.sum(self.covariance_factor(problem, theta) ** 2, axis=1)

    def covariance_factor(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D K"]:
        """G (D, n) with G G^T = covariance: column i is sqrt(w_i / B) (grad l_i - g) (weights sum to 1)."""
        Gs = jax.jacrev(problem.per_sample_losses)(theta)  # (n, D)
        w = problem.sample_weights()
        return (Gs - w @ Gs).T * jnp.sqrt(w / self.batch_size)


    def label_noise_alpha(self, problem: AbstractProblem) -> None:
        return None

    def check(self, problem: AbstractProblem) -> None:
        try:
            jax.eval_shape(problem.per_sample_losses, jnp.zeros(problem.dim))
        except (NotImplementedError, AttributeError):
            raise ConfigError("noise", f"minibatch noise needs per-sample losses; {type(problem).__name__} has none") from None


@final
class Gaussian(AbstractNoise):
    """grad L(theta) + A z with z ~ N(0, I) and A A^T = Sigma. ``cov``: a (D, D) matrix (its factor is
    precomputed) or a function theta -> (D, D)."""

    sweepable: ClassVar[Mapping[str, str]] = {}

    cov: Optional[Float[Array, "D D"]]
    factor: Optional[Float[Array, "D D"]] = None
    cov_fn: Optional[Callable] = None

    def _factor(self, theta):
        if self.factor is not None:
            return self.factor
        return psd_sqrt(self.cov_fn(theta))

    def grad(self, problem: AbstractProblem, theta: Float[Array, "D"], key: PRNGKeyArray) -> Float[Array, "D"]:
        A = self._factor(theta)
        return jax.grad(problem.loss)(theta) + A @ jax.random.normal(key, (A.shape[1],), theta.dtype)

    def covariance(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D D"]:
        return self.cov if self.cov_fn is None else self.cov_fn(theta)

    def covariance_diag(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        return jnp.diag(self.covariance(problem, theta))

    def covariance_factor(self, problem: AbstractProblem, theta: Float[Array, "D"]) -> Float[Array, "D K"]:
        """The factor A (D, D) with A A^T = covariance (precomputed for a constant cov)."""
        return self._factor(theta)


    def label_noise_alpha(self, problem: AbstractProblem) -> None:
        return None

    def check(self, problem: AbstractProblem) -> None:
        """The shape (D, D); a covariance function is also evaluated at the problem's initial point and must
        give a finite, symmetric, positive semi-definite matrix there (later points are checked by
        ``psd_sqrt`` where they are evaluated)."""
        D = problem.dim
        try:
            shape = self.cov.shape if self.cov_fn is None else jax.eval_shape(self.cov_fn, jnp.zeros(D)).shape
        except (TypeError, ValueError, IndexError) as e:
            raise ConfigError("cov", f"the covariance function fails on a point of shape ({D},): {e}") from None
        if shape != (D, D):
            raise ConfigError("cov", f"must be ({D}, {D}) for this problem (D = {D}), got {tuple(shape)}")
        if self.cov_fn is not None:
            theta = problem.init(jax.random.PRNGKey(0))
            c = np.asarray(self.cov_fn(theta), dtype=float)
            where = "at the problem's initial point"
            if not np.all(np.isfinite(c)):
                raise ConfigError("cov", f"the covariance function returned a non-finite matrix {where}")
            if not np.allclose(c, c.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(c).max())):
                raise ConfigError("cov", f"the covariance function returned a matrix that is not symmetric {where}")
            lam_min = np.linalg.eigvalsh(c).min()
            if lam_min < -1e-10 * max(1.0, np.abs(c).max()):
                raise ConfigError("cov", f"the covariance function returned a matrix that is not positive "
                                         f"semi-definite {where} (smallest eigenvalue {lam_min:.3g})")




def psd_sqrt(S: Float[Array, "D D"]) -> Float[Array, "D D"]:
    """A with A A^T = S for a symmetric positive semi-definite S (eigendecomposition; negative eigenvalues
    within rounding (1e-10, or 1e3 ulp, of the largest |eigenvalue|) are clipped to 0). A clearly negative eigenvalue or a
    non-finite S raises an error where it is evaluated (``eqx.error_if``, also inside jit), not clipped."""
    S = jnp.asarray(S)
    lam, Q = jnp.linalg.eigh(S)
    scale = jnp.maximum(jnp.max(jnp.abs(lam), initial=0.0), jnp.finfo(lam.dtype).tiny)
    tol = max(1e3 * float(jnp.finfo(lam.dtype).eps), 1e-10) * scale  # the constant-cov check of gaussian() is 1e-10
    bad = (jnp.min(lam, initial=0.0) < -tol) | ~jnp.all(jnp.isfinite(S))
    lam = eqx.error_if(lam, bad, "cov: the covariance matrix is not finite and positive semi-definite here",
                       on_error=user_on_error())  # raises also inside the engines' host_checked solves
    return Q * jnp.sqrt(jnp.maximum(lam, 0.0))


def label_noise(delta: float = 0.5, distribution: str = "rademacher", batch_size: Optional[int] = None) -> LabelNoise:
    """Label noise: +-delta (Rademacher) or N(0, delta^2) on every label, fresh each step (docs/math.md#noise)."""
    as_real_array("delta", delta)  # a number before it becomes an array (the ranges: LabelNoise.__check_init__)
    return LabelNoise(delta=jnp.asarray(delta, _precision.default_float()), distribution=distribution,
                      batch_size=batch_size)


def minibatch(batch_size: int) -> Minibatch:
    """Minibatch sampling noise with B = ``batch_size`` samples drawn with replacement."""
    return Minibatch(batch_size=batch_size)


class _CovarianceFunction(eqx.Module):
    """A user's theta -> (D, D) covariance, its result made an array (a nested list is accepted)."""

    fn: Callable

    def __call__(self, theta):
        return jnp.asarray(self.fn(theta), theta.dtype)


def gaussian(cov: Any) -> Gaussian:
    """Injected Gaussian gradient noise with covariance ``cov``: a symmetric PSD (D, D) matrix, a vector
    (its diagonal), or a function theta -> (D, D)."""
    if callable(cov):
        return Gaussian(cov=None, cov_fn=_CovarianceFunction(cov))
    try:
        c = np.asarray(cov, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError("cov", f"must be a matrix or a vector of real numbers, or a function, got {show(cov)}") from None
    if c.ndim == 1:
        c = np.diag(c)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ConfigError("cov", f"must be a square matrix or a vector of variances, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ConfigError("cov", "must be finite")
    if not np.allclose(c, c.T, rtol=1e-10, atol=1e-12 * max(1.0, np.abs(c).max())):
        raise ConfigError("cov", "must be symmetric")
    lam_min = np.linalg.eigvalsh(c).min() if c.size else 0.0
    if lam_min < -1e-10 * max(1.0, np.abs(c).max()):
        raise ConfigError("cov", f"must be positive semi-definite (smallest eigenvalue {lam_min:.3g})")
    cj = jnp.asarray(c, _precision.default_float())
    return Gaussian(cov=cj, factor=psd_sqrt(cj))


NOISES = {"label_noise": label_noise, "minibatch": minibatch, "gaussian": gaussian}
