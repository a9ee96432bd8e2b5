"""Problems: what is optimized, behind one abstract interface.

Every problem is an ``AbstractProblem`` working on a flat parameter vector ``theta`` of shape (D,):

- ``dim`` -> D; ``loss(theta)`` -> scalar, the training loss L; ``init(key)`` -> (D,), the initializer;
- ``hessian_diag(theta)`` -> (D,), the diagonal of the Hessian of L;
- ``observables(theta)`` -> dict name -> scalar, what runs record;
- ``least_squares()`` -> the declared ``LeastSquares`` structure (residuals, weights, closed forms), or None.

Least-squares problems (``AbstractLeastSquares``) also give per-sample ``residuals(theta)`` (shape (n,)),
``sample_weights()`` w (shape (n,), summing to 1) and ``per_sample_losses(theta)`` = r^2 / 2 (shape (n,)),
with L = sum_i w_i r_i^2 / 2. Being least squares is a type question: ``isinstance(p, AbstractLeastSquares)``,
and each final class declares its structure in ``least_squares()``.

Regressions (``AbstractRegression``) fit predictions f_i(theta) to targets ``y`` with weights that mask
the samples beyond ``n_active``, so a sweep over the number of training samples is a sweep over an array
and compiles once (``sweepable = {"n_train": "n_active"}``).

The hierarchy follows equinox's abstract/final pattern: abstract classes declare abstract methods and
``eqx.AbstractVar`` fields; the concrete classes (``Hyperbola``, ``DiagonalNet``,
``MatrixFactorization``, ``FromLoss``, ``FromResiduals``) are final. Build them with
``hyperbola``, ``diagonal_net``, ``matrix_factorization``, ``from_loss``. All problems are
equinox Modules (pytrees): pass them to jitted functions as arguments.
"""

import abc
from typing import Callable, ClassVar, Mapping, Optional, Union, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree, Scalar

from . import _precision
from ._memory import available_memory
from ._pattern import forbid_subclassing_final
from ._structure import LeastSquares
from .validation import ConfigError, as_float_params, as_key, check_choice, check_int, check_range, show

__all__ = ["AbstractProblem", "AbstractLeastSquares", "AbstractRegression", "Hyperbola", "DiagonalNet",
           "MatrixFactorization", "FromLoss", "FromResiduals", "hyperbola",
           "diagonal_net", "matrix_factorization", "from_loss", "observe_batch", "sharpness_observables",
           "dense_hessian_diag", "PROBLEMS"]


class AbstractProblem(eqx.Module):
    """What is optimized; see the module docstring. ``sweepable`` (class-level) maps the names a sweep may
    vary to the fields they set."""

    sweepable: eqx.AbstractClassVar[Mapping[str, str]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forbid_subclassing_final(cls)

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """D, the number of parameters."""

    @abc.abstractmethod
    def loss(self, theta: Float[Array, "D"]) -> Scalar:
        """The training loss L(theta)."""

    @abc.abstractmethod
    def init(self, key: Optional[PRNGKeyArray]) -> Float[Array, "D"]:
        """The initial parameters, shape (D,)."""

    @property
    def leaf_sizes(self) -> tuple[int, ...]:
        """The sizes of the parameter pytree's leaves, in ravel order (they sum to D): the layers that
        Adalayer and ``blocks="leaf"`` average over; from ``leaf_shapes``."""
        return tuple(int(np.prod(s)) for s in self.leaf_shapes)

    @property
    def leaf_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shapes of the parameter leaves, in ravel order: the layers of Adalayer, the matrices that
        Adafactor factors. One leaf, the flat theta (D,), unless a problem declares more."""
        return ((self.dim,),)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """A name per parameter leaf, in ravel order (``jax.tree_util.keystr`` of its path for a user pytree)."""
        return ("theta",) if len(self.leaf_sizes) == 1 else tuple(f"leaf{i}" for i in range(len(self.leaf_sizes)))

    @abc.abstractmethod
    def hessian_diag(self, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        """diag of the Hessian of L at theta, shape (D,)."""

    @abc.abstractmethod
    def observables(self, theta: Float[Array, "D"]) -> dict[str, Scalar]:
        """The scalars a run records at theta (always includes the loss)."""

    @abc.abstractmethod
    def least_squares(self) -> Optional[LeastSquares]:
        """The declared least-squares structure when L = sum_i w_i r_i^2 / 2 (residuals, weights and the closed
        forms the problem knows), else None. The geometry's structured paths and label noise take it."""


def dense_hessian_diag(loss: Callable, theta: Float[Array, "D"]) -> Float[Array, "D"]:
    """diag of the Hessian of ``loss`` at theta, shape (D,), by dense autodiff: fine for D up to a few thousand."""
    return jnp.diag(jax.hessian(loss)(theta))


@eqx.filter_jit
def observe_batch(problem, theta):
    """``problem.observables`` over a batch of parameters (N, D): name -> (N,). Compiled once per problem
    structure (problems are pytrees), not once per call."""
    return jax.vmap(problem.observables)(theta)


def sharpness_observables(hdiag: Float[Array, "D"]) -> dict[str, Scalar]:
    """tr H and tr(Diag(H)^{1/2}) from the Hessian diagonal (negative entries, off the manifold, count as 0)."""
    return {"trace_H": jnp.sum(hdiag), "trace_sqrt_diag_H": jnp.sum(jnp.sqrt(jnp.maximum(hdiag, 0.0)))}


class AbstractLeastSquares(AbstractProblem):
    """L(theta) = sum_i w_i r_i(theta)^2 / 2 over n samples, with weights w = ``sample_weights()`` summing to 1
    and ``n_active`` (a scalar array) samples of nonzero weight."""

    n_active: eqx.AbstractVar[Float[Array, ""]]

    @abc.abstractmethod
    def residuals(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        """Per-sample residuals r_i(theta), shape (n,)."""

    @abc.abstractmethod
    def sample_weights(self) -> Float[Array, "n"]:
        """Sample weights w_i, shape (n,), summing to 1."""

    def per_sample_losses(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        """Per-sample losses l_i = r_i^2 / 2 (shape (n,)) with L = sum_i w_i l_i; used by minibatch noise."""
        return 0.5 * self.residuals(theta) ** 2


class AbstractRegression(AbstractLeastSquares):
    """L(theta) = sum_i w_i (f_i(theta) - y_i)^2 / 2 with w_i = 1[i < n_active] / n_active.

    Subclasses define ``predict(theta)`` -> f (shape (n,)) and the fields ``y`` (the clean targets, shape
    (n,)) and ``n_active``. ``n_train`` sweeps set ``n_active``.
    """

    sweepable: ClassVar[Mapping[str, str]] = {"n_train": "n_active"}

    y: eqx.AbstractVar[Float[Array, "n"]]

    @abc.abstractmethod
    def predict(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        """The predictions f_i(theta), shape (n,)."""

    @property
    def n_samples(self) -> int:
        """n, the number of samples (active or not)."""
        return int(self.y.shape[0])

    def sample_weights(self) -> Float[Array, "n"]:
        active = (jnp.arange(self.n_samples) < self.n_active).astype(self.y.dtype)
        return active / self.n_active

    def residuals(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        return self.predict(theta) - self.y

    def loss(self, theta: Float[Array, "D"]) -> Scalar:
        return jnp.sum(self.sample_weights() * self.per_sample_losses(theta))

    def __check_init__(self):
        """n_active (how many of the n samples train) is a whole number in [1, n], however the problem is
        built (a factory, the class, or ``dataclasses.replace`` with a swept n_train)."""
        a = None if isinstance(self.n_active, jax.core.Tracer) else np.asarray(self.n_active)
        if a is not None and not (np.all(np.isfinite(a)) and np.all(a == np.round(a)) and np.all((1 <= a) & (a <= self.n_samples))):
            raise ConfigError("n_train", f"must be a whole number of samples in [1, {self.n_samples}] "
                                         f"(n = {self.n_samples}), got {show(self.n_active)}")

    def with_n_train(self, n_train: ArrayLike) -> "AbstractRegression":
        """The same problem using only the first ``n_train`` samples (an array, so sweeps compile once)."""
        check_range("n_train", n_train, low=1, high=self.n_samples)
        return eqx.tree_at(lambda p: p.n_active, self, jnp.asarray(n_train, self.y.dtype))


# ----- the toy hyperbola -----------------------------------------------------------------------------------
@final
class Hyperbola(AbstractRegression):
    """theta = (u, v), one sample, L = (u^2 - v^2 - y)^2 / 2; Gamma = {u^2 - v^2 = y} (docs/math.md#validation)."""

    y: Float[Array, "1"]
    n_active: Float[Array, ""]
    theta0: Float[Array, "2"]

    @property
    def dim(self) -> int:
        return 2

    def predict(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        return jnp.reshape(theta[0] ** 2 - theta[1] ** 2, (1,))

    def init(self, key: Optional[PRNGKeyArray]) -> Float[Array, "D"]:
        return self.theta0

    def hessian_diag(self, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        r = self.residuals(theta)[0]
        return jnp.array([4 * theta[0] ** 2 + 2 * r, 4 * theta[1] ** 2 - 2 * r])

    def least_squares(self) -> LeastSquares:
        """Quadratic residuals r(x) = B (x * x) - y with B = [1, -1]."""
        return LeastSquares(self.residuals, self.sample_weights(), quadratic=(jnp.array([[1.0, -1.0]], self.y.dtype), self.y))

    def observables(self, theta: Float[Array, "D"]) -> dict[str, Scalar]:
        return {"loss": self.loss(theta), "u": theta[0], "v": theta[1], **sharpness_observables(self.hessian_diag(theta))}


def hyperbola(y: float = 1.0, theta0: Optional[ArrayLike] = None,
              key: Union[int, PRNGKeyArray, None] = None) -> Hyperbola:
    """The toy of docs/math.md#validation. Starts at ``theta0``, by default (sqrt(y + 1), 1), on Gamma. ``key`` is unused
    (the problem has no random data) and accepted for a uniform signature."""
    f = _precision.default_float()
    check_range("y", y, low=-1e300)
    if np.ndim(y) != 0:
        raise ConfigError("y", f"must be a number, got {y!r}")
    if theta0 is None:
        theta0 = [np.sqrt(y + 1.0), 1.0] if y + 1.0 >= 0 else [0.0, np.sqrt(-y)]
    check_range("theta0", theta0)  # numbers, finite
    theta0 = jnp.asarray(theta0, f)
    if theta0.shape != (2,):
        raise ConfigError("theta0", f"must have shape (2,) for the hyperbola, got {theta0.shape}")
    return Hyperbola(y=jnp.asarray([y], f), n_active=jnp.asarray(1.0, f), theta0=theta0)


# ----- diagonal linear network (sparse regression, docs/math.md#diagonal-net) -------------------------------------------
@final
class DiagonalNet(AbstractRegression):
    """theta = x = [u; v] (D = 2d), w = u*u - v*v, f_i = <w, z_i>. Data: ``Z`` (n, d), ``w_star`` (d,),
    clean test set ``Z_test`` (n_test, d), ``y_test``. Initializer x0 = init_scale [g; g], g ~ N(0, I)."""

    y: Float[Array, "n"]
    n_active: Float[Array, ""]
    Z: Float[Array, "n d"]
    w_star: Float[Array, "d"]
    Z_test: Float[Array, "n_test d"]
    y_test: Float[Array, "n_test"]
    init_scale: Float[Array, ""]

    @property
    def d(self) -> int:
        return int(self.Z.shape[1])

    @property
    def dim(self) -> int:
        return 2 * self.d

    def weights(self, theta: Float[Array, "D"]) -> Float[Array, "d"]:
        """The regression weights w = u*u - v*v, shape (d,)."""
        u, v = theta[: self.d], theta[self.d :]
        return u * u - v * v

    def predict(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        return self.Z @ self.weights(theta)

    def init(self, key: Optional[PRNGKeyArray]) -> Float[Array, "D"]:
        g = jax.random.normal(key, (self.d,), self.Z.dtype)
        return self.init_scale * jnp.concatenate([g, g])

    def feature_scales(self) -> Float[Array, "d"]:
        """s_j = sum_i w_i z_ij^2 (1 for +-1 features), shape (d,)."""
        return self.sample_weights() @ (self.Z**2)

    def hessian_diag(self, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        """Exact diag of the Hessian: 4 x^2 s_bar + 2 [Z^T w r; -Z^T w r] (the second part vanishes on Gamma)."""
        s = self.feature_scales()
        zr = (self.sample_weights() * self.residuals(theta)) @ self.Z
        return 4 * theta**2 * jnp.concatenate([s, s]) + 2 * jnp.concatenate([zr, -zr])

    def least_squares(self) -> LeastSquares:
        """Quadratic residuals r(x) = B (x * x) - y with B = [Z, -Z]: the projection onto Gamma has a closed form."""
        return LeastSquares(self.residuals, self.sample_weights(),
                            quadratic=(jnp.concatenate([self.Z, -self.Z], axis=1), self.y))

    def test_loss(self, theta: Float[Array, "D"]) -> Scalar:
        """Clean test loss mean_i (<w, z_i> - y_i)^2 / 2 over the test set."""
        return 0.5 * jnp.mean((self.Z_test @ self.weights(theta) - self.y_test) ** 2)

    def observables(self, theta: Float[Array, "D"]) -> dict[str, Scalar]:
        return {"train_loss": self.loss(theta), "test_loss": self.test_loss(theta),
                "w_error": jnp.linalg.norm(self.weights(theta) - self.w_star),
                **sharpness_observables(self.hessian_diag(theta))}


def _check_data_size(sizes: dict[str, int], n_entries: int) -> None:
    """ConfigError naming the largest of ``sizes`` (field -> value) when the problem's data arrays
    (``n_entries`` float64 numbers) would not fit in the memory that is free, before anything is allocated."""
    need, have = 8.0 * n_entries, available_memory()["host"]
    if need > 0.5 * have:
        field = max(sizes, key=sizes.get)
        raise ConfigError(field, f"the problem's data would need {need / 2**30:.3g} GiB, and {have / 2**30:.3g} GiB "
                                 "are free")


def _features(key, shape, kind, dtype):
    check_choice("features", kind, ("rademacher", "gaussian"))
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


def diagonal_net(d: int = 100, n: int = 40, k: int = 3, key: Union[int, PRNGKeyArray] = 0,
                 features: str = "rademacher", n_test: int = 10_000, init_scale: float = 0.1,
                 n_train: Optional[int] = None) -> DiagonalNet:
    """Sparse regression with a diagonal net (docs/math.md#the-papers-experiments-in-small). ``key``: a jax PRNG key or an int seed.

    w* has ``k`` random support entries uniform in (-1, 1), redrawn while any |w*_j| < 0.01; labels are clean
    (y = <w*, z>); label noise is added by the noise model. ``n`` samples are drawn; ``n_train`` <= n uses the
    first n_train of them (default all).
    """
    for name, val, low in (("d", d, 1), ("n", n, 1), ("k", k, 0), ("n_test", n_test, 1)):
        check_int(name, val, low)
    if k > d:
        raise ConfigError("k", f"must be <= d = {d}, got {k}")
    check_range("init_scale", init_scale, low=0.0, low_open=True)
    _check_data_size({"d": d, "n": n, "n_test": n_test}, (n + n_test) * d)
    f = _precision.default_float()
    k_supp, k_val, k_z, k_test = jax.random.split(as_key(key), 4)
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
@final
class MatrixFactorization(AbstractRegression):
    """theta = (U, V) raveled (D = (d1 + d2) r), W = U V^T. Observations are entries W[rows_i, cols_i]
    (``A`` None) or Gaussian measurements <A_i, W> (``A`` shape (n, d1, d2)). Ground truth ``W_star``."""

    y: Float[Array, "n"]
    n_active: Float[Array, ""]
    W_star: Float[Array, "d1 d2"]
    rows: Int[Array, "n"]
    cols: Int[Array, "n"]
    A: Optional[Float[Array, "n d1 d2"]]
    init_scale: Float[Array, ""]
    shape: tuple = eqx.field(static=True)  # (d1, d2, r)

    @property
    def dim(self) -> int:
        d1, d2, r = self.shape
        return (d1 + d2) * r

    @property
    def leaf_shapes(self) -> tuple[tuple[int, ...], ...]:
        """U (d1, r) and V (d2, r)."""
        d1, d2, r = self.shape
        return ((d1, r), (d2, r))

    @property
    def leaf_names(self) -> tuple[str, ...]:
        return ("U", "V")

    def factors(self, theta: Float[Array, "D"]) -> tuple[Float[Array, "d1 r"], Float[Array, "d2 r"]]:
        d1, d2, r = self.shape
        return theta[: d1 * r].reshape(d1, r), theta[d1 * r :].reshape(d2, r)

    def matrix(self, theta: Float[Array, "D"]) -> Float[Array, "d1 d2"]:
        """W = U V^T, shape (d1, d2)."""
        U, V = self.factors(theta)
        return U @ V.T

    def predict(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        if self.A is None:
            U, V = self.factors(theta)
            return jnp.sum(U[self.rows] * V[self.cols], axis=-1)
        return jnp.einsum("nij,ij->n", self.A, self.matrix(theta))

    def init(self, key: Optional[PRNGKeyArray]) -> Float[Array, "D"]:
        return self.init_scale * jax.random.normal(key, (self.dim,), self.y.dtype)

    def least_squares(self) -> LeastSquares:
        """The residuals with their Jacobian, Hessian sum and Gauss-Newton trace Hessian in closed form."""
        return LeastSquares(self.residuals, self.sample_weights(), jacobian_fn=self.residual_jacobian,
                            hessian_sum_fn=self.residual_hessian_sum, gn_trace_hessian_fn=self.gn_trace_hessian)

    def residual_jacobian(self, theta: Float[Array, "D"]) -> Float[Array, "n D"]:
        """d r / d theta in closed form, (n, D): d r_i / dU = A_i V and d r_i / dV = A_i^T U (for entries, A_i
        is the indicator of (rows_i, cols_i)). Declared in ``least_squares()``, in place of
        n reverse passes, which matters where the Jacobian is itself differentiated (the IMEX ODE solver)."""
        d1, d2, r = self.shape
        U, V = self.factors(theta)
        n = self.y.shape[0]
        if self.A is None:
            i = jnp.arange(n)
            dU = jnp.zeros((n, d1, r), theta.dtype).at[i, self.rows].set(V[self.cols])
            dV = jnp.zeros((n, d2, r), theta.dtype).at[i, self.cols].set(U[self.rows])
        else:
            dU, dV = jnp.einsum("nij,jk->nik", self.A, V), jnp.einsum("nij,ik->njk", self.A, U)
        return jnp.concatenate([dU.reshape(n, d1 * r), dV.reshape(n, d2 * r)], axis=1)

    def _entry_sums(self, to_rows: Float[Array, "r n"], to_cols: Float[Array, "r n"]) -> Float[Array, "D"]:
        """(U, V) raveled, (D,): U[rows_i] += to_rows[:, i] and V[cols_i] += to_cols[:, i] over the observed
        entries i, the sums both closed forms below take for entry observations."""
        d1, d2, r = self.shape
        U = jnp.zeros((d1, r), to_rows.dtype).at[self.rows].add(to_rows.T)
        V = jnp.zeros((d2, r), to_cols.dtype).at[self.cols].add(to_cols.T)
        return jnp.concatenate([U.ravel(), V.ravel()])

    def residual_hessian_sum(self, theta: Float[Array, "D"], w: Float[Array, "n"], a: Float[Array, "D n"]
                             ) -> Float[Array, "D"]:
        """sum_i w_i Hess r_i a_i in closed form, (D,), for directions a (D, n) (column i for residual i); used
        by ``slowsde_jax.geometry.ls_third_derivative_tangent`` (declared in ``least_squares()``). r_i is bilinear, so Hess r_i maps
        (a_U, a_V) to (A_i a_V, A_i^T a_U), whatever theta."""
        d1, d2, r = self.shape
        aU, aV = a[: d1 * r].T.reshape(-1, d1, r), a[d1 * r:].T.reshape(-1, d2, r)  # (n, d1, r), (n, d2, r)
        if self.A is None:
            i = jnp.arange(w.shape[0])
            return self._entry_sums(w * aV[i, self.cols].T, w * aU[i, self.rows].T)
        U, V = jnp.einsum("n,nij,njk->ik", w, self.A, aV), jnp.einsum("n,nij,nik->jk", w, self.A, aU)
        return jnp.concatenate([U.ravel(), V.ravel()])

    def gn_trace_hessian(self, theta: Float[Array, "D"], S: Float[Array, "D"], w: Float[Array, "n"]
                         ) -> Float[Array, "D D"]:
        """grad^2 of phi = sum_i w_i sum_k S_k (d r_i / d theta_k)^2 at fixed S (D,), in closed form, (D, D); used
        by ``slowsde_jax.geometry.ls_gn_trace_hessian`` (declared in ``least_squares()``). The residuals are bilinear in (U, V), so phi is
        quadratic and this does not depend on theta: the U-block is 2 sum_i w_i A_i Diag(S_V[:, k]) A_i^T in
        every column k of U (and the V-block likewise), with no U-V coupling; for entries (A_i an indicator)
        it is diagonal, 2 sum_i w_i S_partner."""
        d1, d2, r = self.shape
        SU, SV = S[: d1 * r].reshape(d1, r), S[d1 * r:].reshape(d2, r)
        if self.A is None:
            return jnp.diag(2.0 * self._entry_sums(w * SV[self.cols].T, w * SU[self.rows].T))
        eye = jnp.eye(r, dtype=S.dtype)
        HU = 2.0 * jnp.einsum("n,nij,jk,nlj,km->iklm", w, self.A, SV, self.A, eye).reshape(d1 * r, d1 * r)
        HV = 2.0 * jnp.einsum("n,nij,ik,nil,km->jklm", w, self.A, SU, self.A, eye).reshape(d2 * r, d2 * r)
        zero = jnp.zeros((d1 * r, d2 * r), S.dtype)
        return jnp.block([[HU, zero], [zero.T, HV]])

    def hessian_diag(self, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        """Exact: f is linear in each single coordinate, so diag H = sum_i w_i (d f_i / d theta_k)^2."""
        J = jax.jacfwd(self.predict)(theta)
        return self.sample_weights() @ (J**2)

    def test_error(self, theta: Float[Array, "D"]) -> Scalar:
        """Mean squared error over all entries, ||W - W*||_F^2 / (d1 d2)."""
        return jnp.mean((self.matrix(theta) - self.W_star) ** 2)

    def observables(self, theta: Float[Array, "D"]) -> dict[str, Scalar]:
        return {"train_loss": self.loss(theta), "test_error": self.test_error(theta),
                **sharpness_observables(self.hessian_diag(theta))}


def matrix_factorization(d1: int = 10, d2: int = 10, rank: int = 2, n: int = 60, key: Union[int, PRNGKeyArray] = 0,
                         measurement: str = "entries", model_rank: Optional[int] = None, init_scale: float = 0.1,
                         n_train: Optional[int] = None) -> MatrixFactorization:
    """Depth-2 factorization of W* = U* V*^T / sqrt(rank) (U*, V* standard normal, rank ``rank``) from ``n``
    observed entries drawn without replacement (``measurement="entries"``) or n Gaussian measurements
    <A_i, W*> with A_i standard normal (``"gaussian"``). The model has rank ``model_rank`` (default
    min(d1, d2), overparametrized) and starts at init_scale * N(0, I)."""
    for name, val in (("d1", d1), ("d2", d2), ("rank", rank), ("n", n)):
        check_int(name, val, 1)
    model_rank = min(d1, d2) if model_rank is None else check_int("model_rank", model_rank, 1)
    check_choice("measurement", measurement, ("entries", "gaussian"))
    check_range("init_scale", init_scale, low=0.0, low_open=True)
    _check_data_size({"d1": d1, "d2": d2, "rank": rank, "model_rank": model_rank, "n": n},
                     d1 * d2 * (n if measurement == "gaussian" else 2) + (d1 + d2) * (rank + model_rank))
    if measurement == "entries" and n > d1 * d2:
        raise ConfigError("n", f"at most d1*d2 = {d1 * d2} entries can be observed, got {n}")
    f = _precision.default_float()
    ku, kv, ko, ki = jax.random.split(as_key(key), 4)
    W_star = (jax.random.normal(ku, (d1, rank), f) @ jax.random.normal(kv, (d2, rank), f).T) / np.sqrt(rank)
    if measurement == "entries":
        idx = jax.random.permutation(ko, d1 * d2)[:n]
        rows, cols, A = idx // d2, idx % d2, None
        y = W_star[rows, cols]
    else:  # "gaussian"
        A = jax.random.normal(ko, (n, d1, d2), f)
        rows = cols = jnp.zeros(n, jnp.int32)
        y = jnp.einsum("nij,ij->n", A, W_star)
    prob = MatrixFactorization(y=y, n_active=jnp.asarray(float(n), f), W_star=W_star, rows=rows, cols=cols, A=A,
                               init_scale=jnp.asarray(init_scale, f), shape=(d1, d2, model_rank))
    return prob if n_train is None else prob.with_n_train(n_train)


# ----- any user loss ---------------------------------------------------------------------------------------------
class _AbstractUserLoss(AbstractProblem):
    """A user loss over a pytree of parameters, seen through its raveled vector theta (shape (D,))."""

    loss_fn: eqx.AbstractVar[Callable]
    theta0: eqx.AbstractVar[Float[Array, "D"]]
    unravel: eqx.AbstractVar[Callable]
    observables_fn: eqx.AbstractVar[Optional[Callable]]
    param_names: eqx.AbstractVar[tuple]
    param_shapes: eqx.AbstractVar[tuple]

    @property
    def dim(self) -> int:
        return int(self.theta0.shape[0])

    @property
    def leaf_shapes(self) -> tuple[tuple[int, ...], ...]:
        """The shapes of the user's parameter leaves (``params0``), in ravel order."""
        return self.param_shapes or ((self.dim,),)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        """``jax.tree_util.keystr`` of each leaf's path in ``params0`` ("" for a bare array)."""
        return self.param_names or ("",) * len(self.leaf_sizes)

    def loss(self, theta: Float[Array, "D"]) -> Scalar:
        return self.loss_fn(self.unravel(theta))

    def init(self, key: Optional[PRNGKeyArray]) -> Float[Array, "D"]:
        return self.theta0

    def hessian_diag(self, theta: Float[Array, "D"]) -> Float[Array, "D"]:
        """Dense autodiff (``dense_hessian_diag``)."""
        return dense_hessian_diag(self.loss, theta)

    def observables(self, theta: Float[Array, "D"]) -> dict[str, Scalar]:
        obs = {"loss": self.loss(theta)}
        if self.observables_fn is not None:
            obs.update(self.observables_fn(self.unravel(theta)))
        return obs


@final
class FromLoss(_AbstractUserLoss):
    """A user loss without residuals, optionally with per-sample losses (``per_sample_fn``, n of them,
    with L their mean): those enable minibatch noise. Built by ``from_loss``."""

    sweepable: ClassVar[Mapping[str, str]] = {}

    loss_fn: Callable
    theta0: Float[Array, "D"]
    unravel: Callable
    observables_fn: Optional[Callable]
    per_sample_fn: Optional[Callable] = None
    n: int = eqx.field(static=True, default=0)
    param_names: tuple = eqx.field(static=True, default=())
    param_shapes: tuple = eqx.field(static=True, default=())

    def per_sample_losses(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        """Per-sample losses l_i (shape (n,)) with L = sum_i w_i l_i; needed for minibatch noise."""
        if self.per_sample_fn is None:
            raise NotImplementedError("this problem was built without per-sample losses")
        return self.per_sample_fn(self.unravel(theta))

    def sample_weights(self) -> Float[Array, "n"]:
        """1/n each, shape (n,)."""
        if self.n == 0:
            raise NotImplementedError("this problem was built without per-sample losses")
        return jnp.full((self.n,), 1.0 / self.n, self.theta0.dtype)

    def least_squares(self) -> None:
        """None: a loss that is not declared least squares."""
        return None


@final
class FromResiduals(_AbstractUserLoss, AbstractLeastSquares):
    """A user loss that is sum_i r_i^2 / (2n) for user residuals r (shape (n,)): a least-squares problem, so
    label noise, minibatch noise and the structured geometry apply. Built by ``from_loss``."""

    sweepable: ClassVar[Mapping[str, str]] = {}

    loss_fn: Callable
    theta0: Float[Array, "D"]
    unravel: Callable
    observables_fn: Optional[Callable]
    residuals_fn: Callable
    n: int = eqx.field(static=True)
    param_names: tuple = eqx.field(static=True, default=())
    param_shapes: tuple = eqx.field(static=True, default=())

    @property
    def n_active(self) -> Float[Array, ""]:
        """n, every sample is active."""
        return jnp.asarray(float(self.n), self.theta0.dtype)

    def residuals(self, theta: Float[Array, "D"]) -> Float[Array, "n"]:
        return self.residuals_fn(self.unravel(theta))

    def sample_weights(self) -> Float[Array, "n"]:
        """1/n each, shape (n,)."""
        return jnp.full((self.n,), 1.0 / self.n, self.theta0.dtype)

    def least_squares(self) -> LeastSquares:
        """The user's residuals (through the ravel) with weights 1/n; Jacobians by autodiff."""
        return LeastSquares(self.residuals, self.sample_weights())


def from_loss(loss: Callable[[PyTree], Scalar], params0: PyTree, residuals: Optional[Callable] = None,
              per_sample_losses: Optional[Callable] = None,
              observables: Optional[Callable] = None) -> FromLoss | FromResiduals:
    """Wrap a JAX loss ``loss(params) -> scalar`` over any pytree ``params0`` as a problem.

    Optional: ``residuals(params) -> (n,)`` when ``loss`` is sum_i r_i^2 / (2n): gives a
    ``FromResiduals`` (least squares: enables label noise and minibatch noise); otherwise
    ``per_sample_losses(params) -> (n,)`` when ``loss`` is their mean (enables minibatch noise) gives a
    ``FromLoss``, as does a plain loss. ``observables(params) -> dict`` of extra scalars to record.

    **Ravel order.** The engines work on the flat vector theta = ``jax.flatten_util.ravel_pytree(params0)[0]``
    (length D): the leaves in ``jax.tree_util.tree_leaves`` order (dict keys sorted), each leaf raveled in
    row-major (C) order. Everything flat follows it: ``theta0`` and ``v0`` arrays, ``Trajectory.theta`` and
    ``.v``, the (D, D) covariance of ``noise.gaussian(cov)`` and explicit Adam-mini block ids. For
    ``params0 = {"b": (2,), "w": (2, 3)}``, theta = [b0, b1, w00, w01, w02, w10, w11, w12].
    """
    params0 = as_float_params(params0)
    for name, fn in (("loss", loss), ("residuals", residuals), ("per_sample_losses", per_sample_losses),
                     ("observables", observables)):
        if fn is not None and not callable(fn):
            raise ConfigError(name, f"must be a function of the parameters, got {type(fn).__name__}")
    flat, unravel = ravel_pytree(params0)
    flat = flat.astype(_precision.default_float())
    with_paths = jax.tree_util.tree_leaves_with_path(params0)
    shapes = tuple(tuple(int(n) for n in np.shape(x)) for _, x in with_paths)
    names = tuple(jax.tree_util.keystr(path) for path, _ in with_paths)
    _check_user_output("loss", loss, params0, scalar=True)
    if residuals is not None:
        if per_sample_losses is not None:
            raise ConfigError("per_sample_losses", "give residuals or per_sample_losses, not both (with residuals "
                                                   "the per-sample losses are r_i^2 / 2)")
        n = _check_user_output("residuals", residuals, params0, scalar=False)
        return FromResiduals(loss_fn=loss, theta0=flat, unravel=unravel, residuals_fn=residuals, n=n,
                             observables_fn=observables, param_names=names, param_shapes=shapes)
    n = 0 if per_sample_losses is None else _check_user_output("per_sample_losses", per_sample_losses, params0,
                                                                scalar=False)
    return FromLoss(loss_fn=loss, theta0=flat, unravel=unravel, observables_fn=observables,
                    per_sample_fn=per_sample_losses, n=n, param_names=names, param_shapes=shapes)


def _check_user_output(field: str, fn: Callable, params0: PyTree, *, scalar: bool) -> int:
    """ConfigError naming ``field`` unless ``fn(params0)`` is a real float scalar (``scalar``) or a real float
    vector of shape (n,) with n >= 1, finite at ``params0``; returns n (0 for a scalar). ``fn`` is traced
    once for the shape and evaluated once for the value."""
    want = "a real scalar" if scalar else "a real vector of shape (n,), one entry per sample"
    try:
        out = jax.eval_shape(fn, params0)
    except Exception as e:  # noqa: BLE001 - any failure of the user's function is reported, not raised raw
        raise ConfigError(field, f"failed on params0 with {type(e).__name__}: {e}") from None
    shape, dtype = getattr(out, "shape", None), getattr(out, "dtype", None)
    if shape is None or dtype is None:
        raise ConfigError(field, f"must return {want}, got {type(out).__name__}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ConfigError(field, f"must return {want} of a float dtype, got dtype {dtype}")
    if scalar and shape != ():
        raise ConfigError(field, f"must return {want}, got shape {shape}")
    if not scalar and (len(shape) != 1 or shape[0] < 1):
        raise ConfigError(field, f"must return {want}, got shape {shape}")
    value = np.asarray(fn(params0))
    if not np.all(np.isfinite(value)):
        raise ConfigError(field, f"is not finite at params0 (got {value.ravel()[~np.isfinite(value.ravel())][0]})")
    return 0 if scalar else int(shape[0])


PROBLEMS = {"hyperbola": hyperbola, "diagonal_net": diagonal_net, "matrix_factorization": matrix_factorization}
