"""Problems: what is optimized, behind one protocol.

A :class:`Problem` works on a flat parameter vector ``theta`` of shape (D,) and provides

- ``loss(theta)`` -> scalar, the training loss L;
- ``init(key)`` -> (D,), the initializer;
- ``observables(theta)`` -> dict name -> scalar, what runs record;
- ``hessian_diag(theta)`` -> (D,), the diagonal of the Hessian of L (dense autodiff unless overridden).

Least-squares problems (:class:`LeastSquares`) also give per-sample ``residuals(theta)`` r_i = f_i(theta) - y_i
(shape (n,)) and ``sample_weights()`` w (shape (n,), summing to 1), with L = sum_i w_i r_i^2 / 2. The weights
mask samples beyond ``n_active``, so a sweep over the number of training samples is a sweep over an array
and compiles once.

Instances: :func:`hyperbola`, :func:`diagonal_net`, :func:`matrix_factorization`, :func:`from_loss`.
All problems are equinox Modules (pytrees): pass them to jitted functions as arguments.
"""
from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _precision
from .errors import ConfigError, check_range


def _as_key(key_or_seed):
    if isinstance(key_or_seed, (int, np.integer)):
        return jax.random.PRNGKey(int(key_or_seed))
    return key_or_seed


class Problem(eqx.Module):
    """The protocol every problem follows; see the module docstring."""

    @property
    def dim(self) -> int:
        """D, the number of parameters."""
        raise NotImplementedError

    def loss(self, theta):
        raise NotImplementedError

    def init(self, key):
        raise NotImplementedError

    def hessian_diag(self, theta):
        """diag of the Hessian of L at theta, shape (D,). Dense autodiff: fine for D up to a few thousand."""
        return jnp.diag(jax.hessian(self.loss)(theta))

    def observables(self, theta) -> dict:
        return {"loss": self.loss(theta)}

    def per_sample_losses(self, theta):
        """Per-sample losses l_i (shape (n,)) with L = sum_i w_i l_i; needed for minibatch noise."""
        raise NotImplementedError(f"{type(self).__name__} has no per-sample structure")

    def sample_weights(self):
        raise NotImplementedError(f"{type(self).__name__} has no per-sample structure")

    def residual_parts(self):
        """``(residuals, weights)`` when L = sum_i w_i r_i^2 / 2 (least squares), else ``(None, None)``.

        The geometry's structured paths and label noise use it; the one place that answers "is this a
        least-squares problem?"."""
        return None, None


@eqx.filter_jit
def observe_batch(problem, theta):
    """``problem.observables`` over a batch of parameters (N, D): name -> (N,). Compiled once per problem
    structure (problems are pytrees), not once per call."""
    return jax.vmap(problem.observables)(theta)


def sharpness_observables(hdiag) -> dict:
    """tr H and tr(Diag(H)^{1/2}) from the Hessian diagonal (negative entries, off the manifold, count as 0)."""
    return {"trace_H": jnp.sum(hdiag), "trace_sqrt_diag_H": jnp.sum(jnp.sqrt(jnp.maximum(hdiag, 0.0)))}


class LeastSquares(Problem):
    """Base class for L(theta) = sum_i w_i (f_i(theta) - y_i)^2 / 2 with w_i = 1[i < n_active] / n_active.

    Subclasses define ``predict(theta)`` -> f (shape (n,)); ``y`` holds the (clean) targets.
    """

    y: jax.Array
    n_active: jax.Array

    def predict(self, theta):
        raise NotImplementedError

    @property
    def n_samples(self) -> int:
        return int(self.y.shape[0])

    def sample_weights(self):
        active = (jnp.arange(self.n_samples) < self.n_active).astype(self.y.dtype)
        return active / self.n_active

    def residuals(self, theta):
        return self.predict(theta) - self.y

    def residual_parts(self):
        return self.residuals, self.sample_weights()

    def per_sample_losses(self, theta):
        return 0.5 * self.residuals(theta) ** 2

    def loss(self, theta):
        return jnp.sum(self.sample_weights() * self.per_sample_losses(theta))

    def with_n_train(self, n_train):
        """The same problem using only the first ``n_train`` samples (an array, so sweeps compile once)."""
        check_range("n_train", n_train, low=1, high=self.n_samples)
        return eqx.tree_at(lambda p: p.n_active, self, jnp.asarray(n_train, self.y.dtype))


# ----- the toy hyperbola -----------------------------------------------------------------------------------
class Hyperbola(LeastSquares):
    """theta = (u, v), one sample, L = (u^2 - v^2 - y)^2 / 2; Gamma = {u^2 - v^2 = y} (math §7)."""

    theta0: jax.Array

    @property
    def dim(self) -> int:
        return 2

    def predict(self, theta):
        return jnp.reshape(theta[0] ** 2 - theta[1] ** 2, (1,))

    def init(self, key):
        return self.theta0

    def hessian_diag(self, theta):
        r = self.residuals(theta)[0]
        return jnp.array([4 * theta[0] ** 2 + 2 * r, 4 * theta[1] ** 2 - 2 * r])

    def quadratic_residuals(self):
        """(B, y) with r(x) = B (x * x) - y, B = [1, -1]."""
        return jnp.array([[1.0, -1.0]], self.y.dtype), self.y

    def observables(self, theta):
        return {"loss": self.loss(theta), "u": theta[0], "v": theta[1], **sharpness_observables(self.hessian_diag(theta))}


def hyperbola(y=1.0, theta0=None, key=None) -> Hyperbola:
    """The toy of math §7. Starts at ``theta0``, by default (sqrt(y + 1), 1), on Gamma. ``key`` is unused
    (the problem has no random data) and accepted for a uniform signature."""
    f = _precision.default_float()
    check_range("y", y, low=-1e300)
    if theta0 is None:
        theta0 = [np.sqrt(y + 1.0), 1.0] if y + 1.0 >= 0 else [0.0, np.sqrt(-y)]
    theta0 = jnp.asarray(theta0, f)
    if theta0.shape != (2,):
        raise ConfigError("theta0", f"must have shape (2,) for the hyperbola, got {theta0.shape}")
    return Hyperbola(y=jnp.asarray([y], f), n_active=jnp.asarray(1.0, f), theta0=theta0)


# ----- diagonal linear network (sparse regression, math §6 and §8) -------------------------------------------
class DiagonalNet(LeastSquares):
    """theta = x = [u; v] (D = 2d), w = u*u - v*v, f_i = <w, z_i>. Data: ``Z`` (n, d), ``w_star`` (d,),
    clean test set ``Z_test`` (n_test, d), ``y_test``. Initializer x0 = init_scale [g; g], g ~ N(0, I)."""

    Z: jax.Array
    w_star: jax.Array
    Z_test: jax.Array
    y_test: jax.Array
    init_scale: jax.Array

    @property
    def d(self) -> int:
        return int(self.Z.shape[1])

    @property
    def dim(self) -> int:
        return 2 * self.d

    def weights(self, theta):
        """The regression weights w = u*u - v*v, shape (d,)."""
        u, v = theta[: self.d], theta[self.d :]
        return u * u - v * v

    def predict(self, theta):
        return self.Z @ self.weights(theta)

    def init(self, key):
        g = jax.random.normal(key, (self.d,), self.Z.dtype)
        return self.init_scale * jnp.concatenate([g, g])

    def feature_scales(self):
        """s_j = sum_i w_i z_ij^2 (1 for +-1 features), shape (d,)."""
        return self.sample_weights() @ (self.Z**2)

    def hessian_diag(self, theta):
        """Exact diag of the Hessian: 4 x^2 s_bar + 2 [Z^T w r; -Z^T w r] (the second part vanishes on Gamma)."""
        s = self.feature_scales()
        zr = (self.sample_weights() * self.residuals(theta)) @ self.Z
        return 4 * theta**2 * jnp.concatenate([s, s]) + 2 * jnp.concatenate([zr, -zr])

    def quadratic_residuals(self):
        """(B, y) with r(x) = B (x * x) - y, B = [Z, -Z]: the projection onto Gamma has a closed form."""
        return jnp.concatenate([self.Z, -self.Z], axis=1), self.y

    def test_loss(self, theta):
        """Clean test loss mean_i (<w, z_i> - y_i)^2 / 2 over the test set."""
        return 0.5 * jnp.mean((self.Z_test @ self.weights(theta) - self.y_test) ** 2)

    def observables(self, theta):
        return {"train_loss": self.loss(theta), "test_loss": self.test_loss(theta),
                "w_error": jnp.linalg.norm(self.weights(theta) - self.w_star),
                **sharpness_observables(self.hessian_diag(theta))}


def _features(key, shape, kind, dtype):
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    raise ConfigError("features", f"must be 'rademacher' or 'gaussian', got {kind!r}")


def diagonal_net(d=100, n=40, k=3, key=0, features="rademacher", n_test=10_000, init_scale=0.1,
                 n_train=None) -> DiagonalNet:
    """Sparse regression with a diagonal net (math §8). ``key``: a jax PRNG key or an int seed.

    w* has ``k`` random support entries uniform in (-1, 1), redrawn while any |w*_j| < 0.01; labels are clean
    (y = <w*, z>); label noise is added by the noise model. ``n`` samples are drawn; ``n_train`` <= n uses the
    first n_train of them (default all).
    """
    for name, val, low in (("d", d, 1), ("n", n, 1), ("k", k, 0), ("n_test", n_test, 1)):
        if not isinstance(val, (int, np.integer)) or val < low:
            raise ConfigError(name, f"must be an integer >= {low}, got {val!r}")
    if k > d:
        raise ConfigError("k", f"must be <= d = {d}, got {k}")
    check_range("init_scale", init_scale, low=0.0, low_open=True)
    f = _precision.default_float()
    k_supp, k_val, k_z, k_test = jax.random.split(_as_key(key), 4)
    support = jax.random.permutation(k_supp, d)[:k]
    vals = jax.random.uniform(k_val, (k,), f, -1.0, 1.0)
    while k and bool(jnp.any(jnp.abs(vals) < 0.01)):
        k_val, sub = jax.random.split(k_val)
        vals = jax.random.uniform(sub, (k,), f, -1.0, 1.0)
    w_star = jnp.zeros(d, f).at[support].set(vals)
    Z = _features(k_z, (n, d), features, f)
    Z_test = _features(k_test, (n_test, d), features, f)
    prob = DiagonalNet(y=Z @ w_star, n_active=jnp.asarray(float(n), f), Z=Z, w_star=w_star, Z_test=Z_test,
                       y_test=Z_test @ w_star, init_scale=jnp.asarray(init_scale, f))
    return prob if n_train is None else prob.with_n_train(n_train)


# ----- matrix factorization (depth 2) ------------------------------------------------------------------------
class MatrixFactorization(LeastSquares):
    """theta = (U, V) raveled (D = (d1 + d2) r), W = U V^T. Observations are entries W[rows_i, cols_i]
    (``A`` None) or Gaussian measurements <A_i, W> (``A`` shape (n, d1, d2)). Ground truth ``W_star``."""

    W_star: jax.Array
    rows: jax.Array
    cols: jax.Array
    A: Any
    init_scale: jax.Array
    shape: tuple = eqx.field(static=True)  # (d1, d2, r)

    @property
    def dim(self) -> int:
        d1, d2, r = self.shape
        return (d1 + d2) * r

    def factors(self, theta):
        d1, d2, r = self.shape
        return theta[: d1 * r].reshape(d1, r), theta[d1 * r :].reshape(d2, r)

    def matrix(self, theta):
        """W = U V^T, shape (d1, d2)."""
        U, V = self.factors(theta)
        return U @ V.T

    def predict(self, theta):
        if self.A is None:
            U, V = self.factors(theta)
            return jnp.sum(U[self.rows] * V[self.cols], axis=-1)
        return jnp.einsum("nij,ij->n", self.A, self.matrix(theta))

    def init(self, key):
        return self.init_scale * jax.random.normal(key, (self.dim,), self.y.dtype)

    def hessian_diag(self, theta):
        """Exact: f is linear in each single coordinate, so diag H = sum_i w_i (d f_i / d theta_k)^2."""
        J = jax.jacfwd(self.predict)(theta)
        return self.sample_weights() @ (J**2)

    def test_error(self, theta):
        """Mean squared error over all entries, ||W - W*||_F^2 / (d1 d2)."""
        return jnp.mean((self.matrix(theta) - self.W_star) ** 2)

    def observables(self, theta):
        return {"train_loss": self.loss(theta), "test_error": self.test_error(theta),
                **sharpness_observables(self.hessian_diag(theta))}


def matrix_factorization(d1=10, d2=10, rank=2, n=60, key=0, measurement="entries", model_rank=None,
                         init_scale=0.1, n_train=None) -> MatrixFactorization:
    """Depth-2 factorization of W* = U* V*^T / sqrt(rank) (U*, V* standard normal, rank ``rank``) from ``n``
    observed entries drawn without replacement (``measurement="entries"``) or n Gaussian measurements
    <A_i, W*> with A_i standard normal (``"gaussian"``). The model has rank ``model_rank`` (default
    min(d1, d2), overparametrized) and starts at init_scale * N(0, I)."""
    model_rank = min(d1, d2) if model_rank is None else model_rank
    for name, val in (("d1", d1), ("d2", d2), ("rank", rank), ("n", n), ("model_rank", model_rank)):
        if not isinstance(val, (int, np.integer)) or val < 1:
            raise ConfigError(name, f"must be an integer >= 1, got {val!r}")
    if measurement == "entries" and n > d1 * d2:
        raise ConfigError("n", f"at most d1*d2 = {d1 * d2} entries can be observed, got {n}")
    f = _precision.default_float()
    ku, kv, ko, ki = jax.random.split(_as_key(key), 4)
    W_star = (jax.random.normal(ku, (d1, rank), f) @ jax.random.normal(kv, (d2, rank), f).T) / np.sqrt(rank)
    if measurement == "entries":
        idx = jax.random.permutation(ko, d1 * d2)[:n]
        rows, cols, A = idx // d2, idx % d2, None
        y = W_star[rows, cols]
    elif measurement == "gaussian":
        A = jax.random.normal(ko, (n, d1, d2), f)
        rows = cols = jnp.zeros(n, jnp.int32)
        y = jnp.einsum("nij,ij->n", A, W_star)
    else:
        raise ConfigError("measurement", f"must be 'entries' or 'gaussian', got {measurement!r}")
    prob = MatrixFactorization(y=y, n_active=jnp.asarray(float(n), f), W_star=W_star, rows=rows, cols=cols, A=A,
                               init_scale=jnp.asarray(init_scale, f), shape=(d1, d2, model_rank))
    return prob if n_train is None else prob.with_n_train(n_train)


# ----- any user loss ---------------------------------------------------------------------------------------------
class FromLoss(Problem):
    """A user loss over a pytree of parameters, seen through its raveled vector theta (shape (D,))."""

    loss_fn: Callable
    theta0: jax.Array
    unravel: Callable
    residuals_fn: Any = None
    observables_fn: Any = None
    per_sample_fn: Any = None
    n: int = eqx.field(static=True, default=0)

    @property
    def dim(self) -> int:
        return int(self.theta0.shape[0])

    def loss(self, theta):
        return self.loss_fn(self.unravel(theta))

    def init(self, key):
        return self.theta0

    def residuals(self, theta):
        if self.residuals_fn is None:
            raise NotImplementedError("this problem was built without residuals")
        return self.residuals_fn(self.unravel(theta))

    def residual_parts(self):
        return (None, None) if self.residuals_fn is None else (self.residuals, self.sample_weights())

    def per_sample_losses(self, theta):
        if self.per_sample_fn is not None:
            return self.per_sample_fn(self.unravel(theta))
        if self.residuals_fn is not None:
            return 0.5 * self.residuals(theta) ** 2
        return super().per_sample_losses(theta)

    def sample_weights(self):
        if self.n == 0:
            return super().sample_weights()
        return jnp.full((self.n,), 1.0 / self.n, self.theta0.dtype)

    def observables(self, theta):
        obs = {"loss": self.loss(theta)}
        if self.observables_fn is not None:
            obs.update(self.observables_fn(self.unravel(theta)))
        return obs


def from_loss(loss, params0, residuals=None, per_sample_losses=None, observables=None) -> FromLoss:
    """Wrap a JAX loss ``loss(params) -> scalar`` over any pytree ``params0`` as a Problem.

    Optional: ``residuals(params) -> (n,)`` when ``loss`` is sum_i r_i^2 / (2n) (enables label noise),
    ``per_sample_losses(params) -> (n,)`` when ``loss`` is their mean (enables minibatch noise),
    ``observables(params) -> dict`` of extra scalars to record.
    """
    flat, unravel = ravel_pytree(params0)
    flat = flat.astype(_precision.default_float()) if jnp.issubdtype(flat.dtype, jnp.floating) else flat
    n = 0
    for fn in (residuals, per_sample_losses):
        if fn is not None:
            n = int(jax.eval_shape(fn, params0).shape[0])
    return FromLoss(loss_fn=loss, theta0=flat, unravel=unravel, residuals_fn=residuals, observables_fn=observables,
                    per_sample_fn=per_sample_losses, n=n)


PROBLEMS = {"hyperbola": hyperbola, "diagonal_net": diagonal_net, "matrix_factorization": matrix_factorization}
