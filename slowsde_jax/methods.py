"""Adaptive gradient methods (AGMs) exactly as in Li, Wen, Lyu (2025), as composable optax blocks.

One step, with g the stochastic gradient (docs/math.md#discrete-methods)::

    m <- beta1 m + (1 - beta1) g
    v <- beta2 v + (1 - beta2) V(g g^T)
    update = -eta S(v) m                      (the fresh m and v; no bias correction by default)

with 1 - beta2 = c eta^2 (or an explicit beta2). ``V`` maps the diagonal of a D x D matrix to a vector of
length D, ``S(v)`` is a diagonal preconditioner returned as its diagonal (length D):

| method | V(M)_i | S(v) |
|---|---|---|
| adam | M_ii | 1 / (sqrt(v) + eps) |
| adam_mini | mean of M_jj over i's block | 1 / (sqrt(v) + eps) |
| adalayer | mean of M_jj over i's leaf (layer) | 1 / (sqrt(v) + eps) |
| adame(lam) | M_ii | 1 / (v^lam + eps) |
| rmsprop | as adam with beta1 = 0 | as adam |
| adafactor | a matrix leaf W (a, b): its row and column sums of M (a + b numbers); other leaves as adam | 1 / (sqrt(R_i C_j / sum_k R_k) + eps) on W; as adam elsewhere |
| shampoo | a matrix leaf W (a, b): L = G Gᵀ and R = Gᵀ G summed over M = Σ g gᵀ (a² + b² numbers; needs all of M); other leaves as adam | (L + eps I)^(-1/4) ⊗ (R + eps I)^(-1/4) on vec(W), a full block; as adam elsewhere |
| sgd | (no v) | 1 (momentum is the EMA form above) |

Adafactor's and Shampoo's statistics v are not shaped like the parameters: K = sum over leaves of (a + b)
(Adafactor) or (a² + b²) (Shampoo) for a matrix leaf and the leaf's size otherwise (``statistic_size``).
Shampoo's S is not diagonal; its block applies it leaf by leaf (``shampoo_apply``).

The optimizer is built from optax blocks, in optax's conventions:

- ``scale_by_agm`` (state ``ScaleByAGMState``: ``count``, ``mu``, ``nu``, pytrees shaped like the
  parameters) maps g to S(v) m; only a block-mean ``V`` (Adam-mini, Adalayer) ravels the parameters.
- ``method.scale_by_agm(eta, v0)`` is that block for an ``AGM`` (for ``SGD``: ``optax.ema(beta1)``), and
  ``method.optax(eta, v0)`` is ``optax.chain(method.scale_by_agm(eta, v0), optax.scale_by_learning_rate(eta))``,
  so clipping, masking or ``optax.multi_transform`` compose around the block as with any optax transform.
- ``scale_by_operator`` is the block for any statistic of the gradient and any S applied to m (Shampoo);
  ``scale_by_statistic`` the one for a statistic of g * g and a diagonal S (Adafactor, ``custom_agm``).
- ``second_moment`` reads v from any optimizer state as a flat vector (D,) (None for SGD).

A method (``AbstractMethod``: final ``AGM`` and ``SGD``) is an equinox Module: its hyperparameters are array leaves, so a method can be vmapped over
(a sweep over lam or c compiles once). Its SDE-side pieces (``V``, ``S``, ``c_at``, ``beta2_at``) act on flat
vectors over the raveled parameters (shape (D,)).
"""


import abc
import dataclasses
import inspect
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, NamedTuple, Optional, Union, final

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import block_diag
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from . import _precision  # noqa: F401  (float64 by default)
from ._matrix_power import spd_power
from ._pattern import forbid_subclassing_final
from .validation import ConfigError, as_real_array, check_range, suggest

if TYPE_CHECKING:  # annotations only
    from .problems import AbstractProblem

__all__ = ["ScaleByAGMState", "scale_by_agm", "scale_by_operator", "scale_by_statistic", "second_moment",
           "initial_second_moment", "precondition", "factored_statistic", "factored_preconditioner",
           "shampoo_statistic", "shampoo_apply", "shampoo_matrix", "AbstractMethod", "AbstractStatisticAGM", "AGM",
           "Adafactor", "CustomAGM", "CustomMatrixAGM", "Shampoo", "SGD", "adam", "adam_mini", "adalayer", "adame", "rmsprop",
           "adafactor", "custom_agm", "shampoo", "sgd", "FACTORIES", "METHOD_NAMES", "make_method"]


def _f(x):
    return None if x is None else jnp.asarray(x, dtype=_precision.default_float())


# ----- the optax block -------------------------------------------------------------------------------------
class ScaleByAGMState(NamedTuple):
    """State of ``scale_by_agm``: step ``count`` (int32, scalar), first moment ``mu`` and second moment
    ``nu`` (pytrees shaped like the parameters), as in ``optax.ScaleByAdamState``."""

    count: Int[Array, ""]
    mu: PyTree
    nu: PyTree


def precondition(v: Float[Array, "..."], lam: ArrayLike, eps: ArrayLike) -> Float[Array, "..."]:
    """S(v) = 1 / (v^lam + eps), elementwise (eps outside the power)."""
    return 1.0 / (jnp.power(v, lam) + eps)


def initial_second_moment(v0: Optional[PyTree[ArrayLike]], params: PyTree) -> PyTree:
    """The initial nu, shaped like ``params``, from ``v0``: None (zeros), a scalar, a flat vector (D,) over
    the raveled parameters (as ``ravel_pytree`` orders them), or a pytree like ``params``."""
    if v0 is None:
        return jax.tree.map(jnp.zeros_like, params)
    if jax.tree_util.tree_structure(v0) == jax.tree_util.tree_structure(params):
        return jax.tree.map(lambda v, p: jnp.broadcast_to(jnp.asarray(v, p.dtype), p.shape), v0, params)
    flat, unravel = ravel_pytree(params)
    return unravel(jnp.broadcast_to(jnp.asarray(v0, flat.dtype), flat.shape))


def scale_by_agm(beta1: ArrayLike, beta2: ArrayLike, eps: ArrayLike, lam: ArrayLike, *,
                 V: Optional[Callable[[PyTree], PyTree]] = None, bias_correction: bool = False,
                 v0: Optional[PyTree[ArrayLike]] = None) -> optax.GradientTransformation:
    """Scale updates g by the AGM preconditioner: returns S(v) m (no learning rate, no sign flip), with

        mu <- beta1 mu + (1 - beta1) g,   nu <- beta2 nu + (1 - beta2) V(g * g),   S(v) = 1/(v^lam + eps)

    on the fresh moments (bias-corrected by 1 - beta^count if ``bias_correction``).

    - ``V``: maps the pytree of squared gradients to a pytree like it; None is the identity (Adam).
      ``AbstractMethod.V_tree`` is the block mean of Adam-mini/Adalayer.
    - ``v0``: initial nu, see ``initial_second_moment``; mu starts at zero.
    - Hyperparameters may be arrays (also traced: vmap over them compiles once).
    """

    def init(params):
        mu = jax.tree.map(jnp.zeros_like, params)
        return ScaleByAGMState(count=jnp.zeros((), jnp.int32), mu=mu, nu=initial_second_moment(v0, params))

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        # the moments keep their own dtype (as optax.adam's do): float64 hyperparameters must not promote
        # float32 moments, or a jitted float32 step recompiles and lax.cond over the state fails
        mu = jax.tree.map(lambda m, g: (beta1 * m + (1.0 - beta1) * g).astype(m.dtype), state.mu, updates)
        sq = jax.tree.map(lambda g: g * g, updates)
        nu = jax.tree.map(lambda v, s: (beta2 * v + (1.0 - beta2) * s).astype(v.dtype), state.nu,
                          sq if V is None else V(sq))
        mu_hat, nu_hat = mu, nu
        if bias_correction:
            mu_hat = jax.tree.map(lambda m: m / (1.0 - beta1**count), mu)
            nu_hat = jax.tree.map(lambda v: v / (1.0 - beta2**count), nu)
        out = jax.tree.map(lambda m, v, g: (precondition(v, lam, eps) * m).astype(g.dtype), mu_hat, nu_hat, updates)
        return out, ScaleByAGMState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def scale_by_operator(beta1: ArrayLike, beta2: ArrayLike, statistic: Callable, apply_S: Callable, *,
                      v0: Optional[ArrayLike] = None) -> optax.GradientTransformation:
    """Scale updates g by an AGM with any linear statistic and any preconditioner: returns S(v) m, with

        mu <- beta1 mu + (1 - beta1) g,   nu <- beta2 nu + (1 - beta2) statistic(g, shapes),   apply_S(nu, m, shapes)

    on the raveled parameters (``ravel_pytree`` order): ``statistic(g, shapes)`` maps the gradient (D,) to
    the statistic (K,), quadratically (V(g gᵀ) for a linear V); ``apply_S(nu, m, shapes)`` is S(nu) m (D,);
    ``shapes`` are the shapes of the gradient pytree's leaves. ``nu`` is a flat (K,) array; ``v0``: None
    (zeros), a scalar or a (K,) array. No bias correction."""

    def init(params):
        flat, _ = ravel_pytree(params)
        K = jax.eval_shape(lambda x: statistic(x, _leaf_shapes(params)), flat).shape[0]
        nu = jnp.zeros((K,), flat.dtype) if v0 is None else jnp.broadcast_to(jnp.asarray(v0, flat.dtype), (K,))
        return ScaleByAGMState(count=jnp.zeros((), jnp.int32), mu=jax.tree.map(jnp.zeros_like, params), nu=nu)

    def update(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = jax.tree.map(lambda m, g: (beta1 * m + (1.0 - beta1) * g).astype(m.dtype), state.mu, updates)
        shapes = _leaf_shapes(updates)
        g, _ = ravel_pytree(updates)
        nu = (beta2 * state.nu + (1.0 - beta2) * statistic(g, shapes)).astype(state.nu.dtype)
        m_flat, unravel = ravel_pytree(mu)
        out = unravel(apply_S(nu, m_flat, shapes))
        out = jax.tree.map(lambda o, u: o.astype(u.dtype), out, updates)
        return out, ScaleByAGMState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def scale_by_statistic(beta1: ArrayLike, beta2: ArrayLike, V: Callable, S: Callable, *,
                       v0: Optional[ArrayLike] = None) -> optax.GradientTransformation:
    """``scale_by_operator`` for a statistic of the squared gradient and a diagonal preconditioner:
    ``V(sq, shapes)`` maps g * g (D,) to the statistic (K,), ``S(nu, shapes)`` the statistic to the
    preconditioner's diagonal (D,)."""
    return scale_by_operator(beta1, beta2, lambda g, shapes: V(g * g, shapes),
                             lambda nu, m, shapes: S(nu, shapes) * m, v0=v0)


def factored_statistic(sq: Float[Array, "D"], shapes: tuple) -> Float[Array, "K"]:
    """Adafactor's statistic of the squared gradient ``sq`` (D,), raveled over leaves of ``shapes``: for a
    matrix leaf (a, b) its row sums (a,) then its column sums (b,); any other leaf unchanged. Linear."""
    out, i = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        x = sq[i: i + n]
        i += n
        if len(shape) == 2:
            X = x.reshape(shape)
            out += [X.sum(axis=1), X.sum(axis=0)]
        else:
            out.append(x)
    return jnp.concatenate(out)


def factored_preconditioner(v: Float[Array, "K"], shapes: tuple, eps: ArrayLike) -> Float[Array, "D"]:
    """Adafactor's preconditioner's diagonal (D,) from its statistic ``v`` (K,): on a matrix leaf with row and
    column statistics R (a,), C (b,), 1 / (sqrt(R_i C_j / sum_k R_k) + eps) in row-major order; elsewhere
    1 / (sqrt(v) + eps) (Adam). A matrix whose statistic is all zero gets 1 / eps."""
    out, k = [], 0
    for shape in shapes:
        if len(shape) == 2:
            a, b = shape
            R, C = v[k: k + a], v[k + a: k + a + b]
            k += a + b
            total = jnp.sum(R)
            vhat = R[:, None] * C[None, :] / jnp.where(total > 0, total, 1.0)
            out.append(precondition(vhat, 0.5, eps).reshape(-1))
        else:
            n = int(np.prod(shape))
            out.append(precondition(v[k: k + n], 0.5, eps))
            k += n
    return jnp.concatenate(out)


def shampoo_statistic(F: Float[Array, "D k"], shapes: tuple) -> Float[Array, "K"]:
    """Shampoo's statistic of M = F Fᵀ (a gradient g is F = g[:, None]), raveled over leaves of ``shapes``:
    for a matrix leaf (a, b), with G_j the leaf's part of column j of F as an (a, b) matrix,
    L = Σ_j G_j G_jᵀ (a, a) then R = Σ_j G_jᵀ G_j (b, b), each raveled row-major; any other leaf the
    diagonal of M there (Adam's statistic). Linear in M."""
    out, i = [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        X = F[i: i + n]
        i += n
        if len(shape) == 2:
            G = X.reshape(tuple(shape) + (F.shape[1],))
            out += [jnp.einsum("ijk,ljk->il", G, G).reshape(-1), jnp.einsum("ijk,ilk->jl", G, G).reshape(-1)]
        else:
            out.append(jnp.sum(X * X, axis=1))
    return jnp.concatenate(out)


def _shampoo_blocks(v: Float[Array, "K"], shapes: tuple, eps: ArrayLike) -> list:
    """Per leaf: ((L + eps I)^(-1/4), (R + eps I)^(-1/4)) for a matrix leaf, else the diagonal 1/(sqrt(v) + eps)."""
    out, k = [], 0
    for shape in shapes:
        if len(shape) == 2:
            a, b = shape
            L, R = v[k: k + a * a].reshape(a, a), v[k + a * a: k + a * a + b * b].reshape(b, b)
            k += a * a + b * b
            out.append((spd_power(L + eps * jnp.eye(a, dtype=v.dtype), -0.25),
                        spd_power(R + eps * jnp.eye(b, dtype=v.dtype), -0.25)))
        else:
            n = int(np.prod(shape))
            out.append(precondition(v[k: k + n], 0.5, eps))
            k += n
    return out


def shampoo_apply(v: Float[Array, "K"], m: Float[Array, "D"], shapes: tuple, eps: ArrayLike) -> Float[Array, "D"]:
    """S(v) m for Shampoo, without forming S: on a matrix leaf (L + eps I)^(-1/4) M (R + eps I)^(-1/4) (M the
    leaf's part of ``m`` as an (a, b) matrix), elsewhere m / (sqrt(v) + eps)."""
    out, i = [], 0
    for shape, block in zip(shapes, _shampoo_blocks(v, shapes, eps)):
        n = int(np.prod(shape))
        x = m[i: i + n]
        i += n
        out.append((block[0] @ x.reshape(shape) @ block[1]).reshape(-1) if len(shape) == 2 else block * x)
    return jnp.concatenate(out)


def shampoo_matrix(v: Float[Array, "K"], shapes: tuple, eps: ArrayLike) -> Float[Array, "D D"]:
    """Shampoo's S(v) as a (D, D) matrix: block diagonal over the leaves, (L + eps I)^(-1/4) ⊗ (R + eps I)^(-1/4)
    on a matrix leaf (row-major vec), the diagonal 1/(sqrt(v) + eps) elsewhere. For small D (the geometry's
    dense path and the potential test)."""
    blocks = [jnp.kron(b[0], b[1]) if len(shape) == 2 else jnp.diag(b)
              for shape, b in zip(shapes, _shampoo_blocks(v, shapes, eps))]
    return block_diag(*blocks)


def second_moment(opt_state: PyTree, batch_ndim: int = 0) -> Optional[Float[Array, "*batch D"]]:
    """The second moment v held by an optimizer state (a ``ScaleByAGMState`` anywhere inside it, e.g.
    in a chain) as a flat vector, raveled like ``ravel_pytree(params)``; None when there is none (SGD).

    ``batch_ndim``: number of leading batch axes on every leaf (2 for the engine's (n_cfg, n_paths, ...)
    states); the result has shape batch + (D,).
    """
    is_agm = lambda x: isinstance(x, ScaleByAGMState)
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=is_agm) if is_agm(s)]
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"the optimizer state holds {len(found)} AGM blocks; read their .nu directly")
    leaves = jax.tree_util.tree_leaves(found[0].nu)
    return jnp.concatenate([jnp.reshape(x, x.shape[:batch_ndim] + (-1,)) for x in leaves], axis=-1)


# ----- the method spec -------------------------------------------------------------------------------------
class AbstractMethod(eqx.Module):
    """A method of the AGM family: m <- beta1 m + (1 - beta1) g, v <- beta2 v + (1 - beta2) V(g g^T),
    theta <- theta - eta S(v) m. The final classes are ``AGM`` (a second moment v and a preconditioner S(v))
    and ``SGD`` (no v, S = I); build them with the factories (``adam``, ..., ``sgd``).

    Declared by each final class: ``has_v`` (whether there is a second moment), ``sweepable`` (sweep name ->
    field), and the methods ``V``, ``S``, ``c_at`` and ``scale_by_agm``. On the SDE side ``V`` and ``S`` act on
    flat vectors over the raveled parameters (shape (D,)).

    Declared structure (class variables): ``full_statistic``, True when V needs the whole matrix M = g gᵀ
    and not only its diagonal (then ``V`` refuses and ``V_of_factor`` is the statistic); ``diagonal_S``,
    False when S(v) is not diagonal (then ``S`` refuses and ``S_operator`` gives the matrix). The slow engine
    and the projections use ``S_operator``.
    """

    has_v: eqx.AbstractClassVar[bool]
    sweepable: eqx.AbstractClassVar[Mapping[str, str]]
    full_statistic: ClassVar[bool] = False
    diagonal_S: ClassVar[bool] = True
    beta1: eqx.AbstractVar[jax.Array]
    name: eqx.AbstractVar[str]
    blocks: eqx.AbstractVar[Any]
    bias_correction: eqx.AbstractVar[bool]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forbid_subclassing_final(cls)

    @abc.abstractmethod
    def V(self, diag: Float[Array, "D"], params: Optional[PyTree] = None) -> Float[Array, "D"]:
        """V(M) from diag(M) (shape (D,))."""

    @abc.abstractmethod
    def S(self, v: Float[Array, "D"]) -> Float[Array, "D"]:
        """Diagonal of the preconditioner S(v), shape (D,)."""

    @abc.abstractmethod
    def c_at(self, eta: Optional[ArrayLike]) -> Optional[Array]:
        """c = (1 - beta2) / eta^2 at learning rate eta (the rate of the v-equation in SDE time); None without v."""

    def V_of_factor(self, F: Float[Array, "D k"]) -> Float[Array, "K"]:
        """V(M) for M = F Fᵀ given by a factor F (D, k) (``noise.covariance_factor``): every method has it."""
        return self.V(jnp.sum(F * F, axis=-1))

    def S_operator(self, v: Float[Array, "K"]) -> Union[Float[Array, "D"], Float[Array, "D D"]]:
        """S(v): its diagonal (D,) when ``diagonal_S``, else the matrix (D, D)."""
        return self.S(v)

    @abc.abstractmethod
    def scale_by_agm(self, eta: ArrayLike, v0: Optional[PyTree[ArrayLike]] = None) -> optax.GradientTransformation:
        """This method's scaling block at learning rate ``eta``: g -> S(v) m."""

    def optax(self, eta: ArrayLike, v0: Optional[PyTree[ArrayLike]] = None) -> optax.GradientTransformation:
        """The discrete method at learning rate ``eta``: ``optax.chain(self.scale_by_agm(eta, v0),
        optax.scale_by_learning_rate(eta))``. ``v0`` as in ``scale_by_agm``; m starts at zero."""
        check_range("eta", eta, low=0.0, low_open=True)
        return optax.chain(self.scale_by_agm(eta, v0=v0), optax.scale_by_learning_rate(eta))

    def V_tree(self, diag: PyTree) -> PyTree:
        """``V`` on a pytree shaped like the parameters (raveled for a block mean, then unraveled)."""
        if self.blocks is None:
            return diag
        flat, unravel = ravel_pytree(diag)
        return unravel(self.V(flat, diag))

    def block_ids(self, params: PyTree) -> tuple[np.ndarray, int]:
        """Block id of every raveled coordinate of ``params`` (numpy int array, shape (D,)) and the number of
        blocks. ``"leaf"`` and per-leaf ids read the leaves of ``params``: pass the parameter pytree, or use
        ``for_problem``, which takes them from the problem."""
        leaves = jax.tree_util.tree_leaves(params)
        return self._ids_from_leaves([int(np.prod(np.shape(x))) for x in leaves], None)

    def _ids_from_leaves(self, sizes, names) -> tuple[np.ndarray, int]:
        if self.blocks == "leaf":
            ids = np.repeat(np.arange(len(sizes)), sizes)
        elif self.blocks[0] == "per_leaf":
            given_names = self.blocks[2] if len(self.blocks) > 2 else None
            if len(self.blocks[1]) != len(sizes):
                raise ConfigError("blocks", f"needs one block id per parameter leaf ({len(sizes)}), got {len(self.blocks[1])}")
            if names is not None and given_names is not None and list(map(_leaf_key, given_names)) != list(map(_leaf_key, names)):
                raise ConfigError("blocks", f"the block ids are given for the leaves {', '.join(given_names)}, but the "
                                            f"problem's parameters have the leaves {', '.join(names)}")
            ids = np.repeat(np.asarray(self.blocks[1]), sizes)
        else:
            ids = np.asarray(self.blocks, dtype=np.int64)
            if ids.shape != (sum(sizes),):
                raise ConfigError("blocks", f"needs one block id per parameter ({sum(sizes)}), got shape {ids.shape}")
        uniq, ids = np.unique(ids, return_inverse=True)
        return ids.reshape(-1), len(uniq)

    def for_problem(self, problem: "AbstractProblem") -> "AbstractMethod":
        """This method with its blocks resolved on ``problem``'s parameters: ``"leaf"`` and per-leaf ids become
        one explicit id per raveled coordinate, from the problem's declared leaves (``problem.leaf_sizes``).
        The engines, the geometry and the observables work on the flat (D,) vector, so they call this first;
        ConfigError("blocks") when the ids do not fit the problem."""
        if self.blocks is None:
            return self
        ids, _ = self._ids_from_leaves(list(problem.leaf_sizes), list(problem.leaf_names))
        if isinstance(self.blocks, tuple) and self.blocks and not isinstance(self.blocks[0], str) \
                and self.blocks == tuple(int(i) for i in ids):
            return self
        return dataclasses.replace(self, blocks=tuple(int(i) for i in ids))

    @property
    def bound(self) -> bool:
        """True when the blocks need no parameter pytree (no blocks, or one explicit id per coordinate)."""
        return self.blocks is None or (self.blocks != "leaf" and self.blocks[0] != "per_leaf")

    def check(self, problem: "AbstractProblem") -> None:
        """Raise ConfigError("blocks", ...) when the block ids do not fit the problem's parameters."""
        self.for_problem(problem)

    def __repr__(self) -> str:
        """``adam(beta1=0.9, c=10, eps=1e-08, lam=0.5)``: the values, not the array shapes; a sweep's array
        values print as lists, explicit block ids as their count."""

        def show(x):
            try:
                a = np.asarray(x)
            except Exception:  # a tracer inside jit/vmap: no value to show
                return f"<traced {getattr(x, 'shape', '')}>"
            return f"{a.item():g}" if a.ndim == 0 else np.array2string(a, separator=", ", threshold=6)

        shown = [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                 if not f.metadata.get("static")]  # the hyperparameters (name, blocks, shapes, functions: static)
        names = {} if self.has_v else {"beta1": "momentum"}
        parts = [f"{names.get(k, k)}={show(x)}" for k, x in shown if x is not None]
        if self.blocks is not None:
            if self.blocks == "leaf":
                parts.append("blocks='leaf'")
            elif self.blocks[0] == "per_leaf":
                parts.append(f"blocks=<one id per leaf, {len(set(self.blocks[1]))} blocks>")
            else:
                parts.append(f"blocks=<{len(self.blocks)} ids, {len(set(self.blocks))} blocks>")
        if self.bias_correction:
            parts.append("bias_correction=True")
        return f"{self.name}({', '.join(parts)})"

    __str__ = __repr__


def _check_rates(method) -> None:
    """The second-moment rate of an adaptive method: exactly one of ``c`` (1 - beta2 = c eta^2, >= 0) and
    ``beta2`` (in [0, 1))."""
    if method.beta2 is not None and method.c is not None:
        raise ConfigError("beta2", "give either beta2 or c (1 - beta2 = c eta^2), not both")
    if method.beta2 is None and method.c is None:
        raise ConfigError("c", "an adaptive method needs c (1 - beta2 = c eta^2) or beta2")
    if method.beta2 is not None:
        check_range("beta2", method.beta2, low=0.0, high=1.0, high_open=True)
    if method.c is not None:
        check_range("c", method.c, low=0.0)


def _beta2_at(method, eta: ArrayLike) -> Array:
    return method.beta2 if method.c is None else 1.0 - method.c * jnp.asarray(eta) ** 2


def _c_at(method, eta: Optional[ArrayLike]) -> Array:
    return method.c if method.c is not None else (1.0 - method.beta2) / jnp.asarray(eta) ** 2


@final
class AGM(AbstractMethod):
    """An adaptive gradient method: V is the identity (``blocks=None``) or the block mean, S(v) = 1/(v^lam + eps).
    Built by ``adam``, ``adam_mini``, ``adalayer``, ``adame`` and ``rmsprop``.

    Fields: ``beta1``; ``c`` (1 - beta2 = c eta^2) or ``beta2`` (exactly one); ``eps``; ``lam`` (the power
    in S); static: ``name``, ``blocks`` (None, "leaf", per-leaf ids, or a tuple of block ids per raveled
    coordinate), ``bias_correction``.
    """

    has_v: ClassVar[bool] = True
    sweepable: ClassVar[Mapping[str, str]] = {"lam": "lam", "c": "c", "beta1": "beta1", "beta2": "beta2", "eps": "eps"}

    beta1: jax.Array
    c: Optional[jax.Array]
    beta2: Optional[jax.Array]
    eps: jax.Array
    lam: jax.Array
    name: str = eqx.field(static=True, default="agm")
    blocks: Any = eqx.field(static=True, default=None)
    bias_correction: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        """The invariants, however the method is built (a factory, ``AGM(...)``, or ``dataclasses.replace``
        with a swept value); nothing to check on jax tracers."""
        check_range("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        check_range("eps", self.eps, low=0.0)
        check_range("lam", self.lam, low=0.0, high=1.0, low_open=True)
        _check_rates(self)

    def beta2_at(self, eta: ArrayLike) -> Array:
        """beta2 used at learning rate eta: 1 - c eta^2, or the explicit beta2."""
        return _beta2_at(self, eta)

    def c_at(self, eta: Optional[ArrayLike]) -> Array:
        return _c_at(self, eta)

    def V(self, diag: Float[Array, "D"], params: Optional[PyTree] = None) -> Float[Array, "D"]:
        """V(M) from diag(M) (shape (D,)): the identity for Adam, the block mean for Adam-mini/Adalayer.

        For ``blocks="leaf"`` or per-leaf ids, ``params`` (a pytree of the parameter shapes) says where the
        leaves are; without it, bind the method first (``for_problem``): a flat vector has no leaves.
        """
        if self.blocks is None:
            return diag
        if params is None and not self.bound:
            raise ValueError(f"{self.name} with blocks={self.blocks[0] if self.blocks[0] == 'per_leaf' else 'leaf'!r} "
                             "needs the parameter leaves: call method.for_problem(problem) first, or pass params")
        ids, n_blocks = self.block_ids(diag if params is None else params)
        ids = jnp.asarray(ids)
        sums = jax.ops.segment_sum(diag, ids, num_segments=n_blocks)
        counts = jax.ops.segment_sum(jnp.ones_like(diag), ids, num_segments=n_blocks)
        return (sums / counts)[ids]

    def S(self, v: Float[Array, "D"]) -> Float[Array, "D"]:
        """1/(v^lam + eps), shape (D,)."""
        return precondition(v, self.lam, self.eps)

    def scale_by_agm(self, eta: ArrayLike, v0: Optional[PyTree[ArrayLike]] = None) -> optax.GradientTransformation:
        """The ``scale_by_agm`` block at learning rate ``eta`` (eta only sets beta2 = 1 - c eta^2).
        ``v0``: initial second moment, a scalar, flat (D,) or a pytree like the params; zeros by default."""
        beta2 = self.beta2_at(eta)
        check_range("beta2", beta2, low=0.0, high=1.0, high_open=True)
        return scale_by_agm(self.beta1, beta2, self.eps, self.lam, V=None if self.blocks is None else self.V_tree,
                            bias_correction=self.bias_correction, v0=v0)


class AbstractStatisticAGM(AbstractMethod):
    """An AGM whose second moment is a statistic v (K,) of the squared gradient, not shaped like the
    parameters, with a diagonal preconditioner: subclasses give ``_statistic(sq, shapes)`` (D,) -> (K,),
    linear, and ``_precondition(v, shapes)`` (K,) -> (D,), ``shapes`` being the parameter leaves' shapes.
    The discrete side is ``scale_by_statistic``; ``V`` and ``S`` map over leading batch axes."""

    has_v: ClassVar[bool] = True
    beta1: eqx.AbstractVar[jax.Array]
    c: eqx.AbstractVar[Optional[jax.Array]]
    beta2: eqx.AbstractVar[Optional[jax.Array]]
    blocks: ClassVar[None] = None
    bias_correction: ClassVar[bool] = False

    @abc.abstractmethod
    def _statistic(self, sq: Float[Array, "D"], shapes: Optional[tuple]) -> Float[Array, "K"]:
        """V on one squared gradient (D,); ``shapes``: the leaves' shapes (None: the method's own)."""

    @abc.abstractmethod
    def _precondition(self, v: Float[Array, "K"], shapes: Optional[tuple]) -> Float[Array, "D"]:
        """S on one statistic (K,)."""

    def beta2_at(self, eta: ArrayLike) -> Array:
        """beta2 used at learning rate eta: 1 - c eta^2, or the explicit beta2."""
        return _beta2_at(self, eta)

    def c_at(self, eta: Optional[ArrayLike]) -> Array:
        return _c_at(self, eta)

    def V(self, diag: Float[Array, "*batch D"], params: Optional[PyTree] = None) -> Float[Array, "*batch K"]:
        """The statistic (K,) of diag(M) (D,); leading batch axes are mapped over. ``params``: a pytree whose
        leaves give the shapes (default: the method's own, see ``for_problem``)."""
        if jnp.ndim(diag) > 1:
            return jax.vmap(lambda d: self.V(d, params))(diag)
        return self._statistic(diag, None if params is None else _leaf_shapes(params))

    def V_tree(self, diag: PyTree) -> Float[Array, "K"]:
        return self.V(ravel_pytree(diag)[0], diag)

    def S(self, v: Float[Array, "*batch K"]) -> Float[Array, "*batch D"]:
        """The preconditioner's diagonal (D,); leading batch axes are mapped over."""
        if jnp.ndim(v) > 1:
            return jax.vmap(self.S)(v)
        return self._precondition(v, None)

    def scale_by_agm(self, eta: ArrayLike, v0: Optional[ArrayLike] = None) -> optax.GradientTransformation:
        """``scale_by_statistic`` with this method's V and S at learning rate ``eta`` (which sets beta2 = 1 -
        c eta^2). ``v0``: None (zeros), a scalar or a flat (K,) array."""
        beta2 = self.beta2_at(eta)
        check_range("beta2", beta2, low=0.0, high=1.0, high_open=True)
        return scale_by_statistic(self.beta1, beta2, self._statistic, self._precondition, v0=v0)


def _leaf_shapes(tree: PyTree) -> tuple:
    return tuple(tuple(np.shape(x)) for x in jax.tree_util.tree_leaves(tree))


def _own_shapes(method, shapes: Optional[tuple]) -> tuple:
    """The parameter leaves' shapes a shape-bound method (Adafactor, Shampoo) uses: its own once
    ``for_problem`` bound it, else ``shapes`` (read from a gradient pytree by the optax block)."""
    if method.shapes is not None:
        return method.shapes
    if shapes is None:
        raise ValueError(f"{method.name} needs the parameter leaves' shapes: call method.for_problem(problem) "
                         "first, or pass params")
    return shapes


def _with_problem_shapes(method, problem: "AbstractProblem"):
    """``method`` bound to the problem's leaf shapes (``problem.leaf_shapes``)."""
    shapes = tuple(tuple(int(n) for n in s) for s in problem.leaf_shapes)
    return method if method.shapes == shapes else dataclasses.replace(method, shapes=shapes)


@final
class Adafactor(AbstractStatisticAGM):
    """Adafactor in the AGM form (no update clipping, no relative step size, EMA momentum m, constant
    beta2 = 1 - c eta^2): on a matrix leaf W (a, b) v holds the row and column sums of G∘G and
    S(v) = 1/(sqrt(R_i C_j / sum_k R_k) + eps); vectors and scalars as Adam (``factored_statistic``,
    ``factored_preconditioner``). v has K = sum (a + b) + (other leaves' sizes) entries, not D.

    Fields: ``beta1``; ``c`` or ``beta2`` (exactly one); ``eps``; static ``shapes``, the parameter leaves'
    shapes in ravel order (None until ``for_problem`` binds the method to a problem; an unbound method's
    optax block reads them from the gradient pytree). Built by ``adafactor``.
    """

    sweepable: ClassVar[Mapping[str, str]] = {"c": "c", "beta1": "beta1", "beta2": "beta2", "eps": "eps"}

    beta1: jax.Array
    c: Optional[jax.Array]
    beta2: Optional[jax.Array]
    eps: jax.Array
    name: str = eqx.field(static=True, default="adafactor")
    shapes: Optional[tuple] = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_range("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        check_range("eps", self.eps, low=0.0)
        _check_rates(self)

    @property
    def bound(self) -> bool:
        return self.shapes is not None

    def _own(self, shapes: Optional[tuple]) -> tuple:
        return _own_shapes(self, shapes)

    def for_problem(self, problem: "AbstractProblem") -> "Adafactor":
        return _with_problem_shapes(self, problem)

    def statistic_size(self, params: Optional[PyTree] = None) -> int:
        """K, the length of v."""
        shapes = self._own(None if params is None else _leaf_shapes(params))
        return sum(s[0] + s[1] if len(s) == 2 else int(np.prod(s)) for s in shapes)

    def _statistic(self, sq, shapes):
        return factored_statistic(sq, self._own(shapes))

    def _precondition(self, v, shapes):
        return factored_preconditioner(v, self._own(shapes), self.eps)


@final
class CustomAGM(AbstractStatisticAGM):
    """A user's AGM from its statistic and preconditioner, on flat vectors in ravel order:

    - ``statistic``: V, the squared gradient (D,) (the diagonal of g gᵀ) -> the statistic (K,), linear;
    - ``preconditioner``: S, the statistic (K,) -> the preconditioner's diagonal (D,), positive.

    Both must be jittable functions of arrays. The discrete side is ``scale_by_statistic``; the slow side
    takes V and S as they are (the v-equation c (V(Σ) − v) in K dimensions). Fields ``beta1``; ``c`` or
    ``beta2``; static ``name``, ``statistic``, ``preconditioner``. Built by ``custom_agm``.
    """

    sweepable: ClassVar[Mapping[str, str]] = {"c": "c", "beta1": "beta1", "beta2": "beta2"}

    beta1: jax.Array
    c: Optional[jax.Array]
    beta2: Optional[jax.Array]
    statistic: Callable = eqx.field(static=True, default=None)
    preconditioner: Callable = eqx.field(static=True, default=None)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field in ("statistic", "preconditioner"):
            if not callable(getattr(self, field)):
                raise ConfigError(field, f"must be a function of a flat array, got {type(getattr(self, field)).__name__}")
        check_range("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        _check_rates(self)

    def _statistic(self, sq, shapes):
        return self.statistic(sq)

    def _precondition(self, v, shapes):
        return self.preconditioner(v)


@final
class Shampoo(AbstractMethod):
    """Shampoo in the AGM form (no grafting, exponent 1/4 on each side, EMA momentum m, constant
    beta2 = 1 - c eta^2): on a matrix leaf W (a, b) v holds L = G Gᵀ (a, a) and R = Gᵀ G (b, b), and
    S(v) = (L + eps I)^(-1/4) ⊗ (R + eps I)^(-1/4), a full matrix on vec(W); vectors, scalars and leaves of
    other ranks as Adam (``shampoo_statistic``, ``shampoo_apply``, ``shampoo_matrix``). v has
    K = sum (a² + b²) + (other leaves' sizes) entries. V needs the whole g gᵀ (``full_statistic``) and S is
    not diagonal (``diagonal_S`` False): its slow flow is the label-noise ODE on dense geometry
    (``slowsde_jax.sde.full_S``), and the SDE form takes the matrix S. ``eps`` must be positive.

    Fields: ``beta1``; ``c`` or ``beta2`` (exactly one); ``eps``; static ``shapes`` as for ``Adafactor``.
    Built by ``shampoo``.
    """

    has_v: ClassVar[bool] = True
    full_statistic: ClassVar[bool] = True
    diagonal_S: ClassVar[bool] = False
    sweepable: ClassVar[Mapping[str, str]] = {"c": "c", "beta1": "beta1", "beta2": "beta2", "eps": "eps"}
    blocks: ClassVar[None] = None
    bias_correction: ClassVar[bool] = False

    beta1: jax.Array
    c: Optional[jax.Array]
    beta2: Optional[jax.Array]
    eps: jax.Array
    name: str = eqx.field(static=True, default="shampoo")
    shapes: Optional[tuple] = eqx.field(static=True, default=None)

    def __check_init__(self):
        check_range("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        # eps > 0: L and R are singular in the first steps (and often on Γ), and (L + 0 I)^(-1/4) is not finite
        check_range("eps", self.eps, low=0.0, low_open=True)
        _check_rates(self)

    @property
    def bound(self) -> bool:
        return self.shapes is not None

    def _own(self, shapes: Optional[tuple]) -> tuple:
        return _own_shapes(self, shapes)

    def for_problem(self, problem: "AbstractProblem") -> "Shampoo":
        return _with_problem_shapes(self, problem)

    def beta2_at(self, eta: ArrayLike) -> Array:
        """beta2 used at learning rate eta: 1 - c eta^2, or the explicit beta2."""
        return _beta2_at(self, eta)

    def c_at(self, eta: Optional[ArrayLike]) -> Array:
        return _c_at(self, eta)

    def V(self, diag: Float[Array, "D"], params: Optional[PyTree] = None) -> Float[Array, "K"]:
        raise ConfigError("method", "shampoo's statistic (G Gᵀ, Gᵀ G) needs the whole g gᵀ, not its diagonal: "
                                    "use V_of_factor(F) with M = F Fᵀ")

    def V_of_factor(self, F: Float[Array, "*batch D k"]) -> Float[Array, "*batch K"]:
        if jnp.ndim(F) > 2:
            return jax.vmap(self.V_of_factor)(F)
        return shampoo_statistic(F, self._own(None))

    def S(self, v: Float[Array, "K"]) -> Float[Array, "D"]:
        raise ConfigError("method", "shampoo's preconditioner is not diagonal: S_operator(v) gives the (D, D) "
                                    "matrix")

    def S_operator(self, v: Float[Array, "K"]) -> Float[Array, "D D"]:
        return shampoo_matrix(v, self._own(None), self.eps)

    def statistic_size(self) -> int:
        """K, the length of v."""
        return sum(s[0] ** 2 + s[1] ** 2 if len(s) == 2 else int(np.prod(s)) for s in self._own(None))

    def statistic_ok(self, v: Float[Array, "K"]) -> bool:
        """Whether ``v`` (K,) is a statistic this method can hold: every L and R symmetric and positive
        semidefinite to rounding (of ``v``'s dtype), the other entries non-negative."""
        rounding = 1e4 * float(np.finfo(np.asarray(v).dtype).eps)  # 2e-12 in float64, 1e-3 in float32
        v, k = np.asarray(v, dtype=float), 0
        for shape in self._own(None):
            if len(shape) == 2:
                for n in shape:
                    M = v[k: k + n * n].reshape(n, n)
                    k += n * n
                    tol = rounding * max(1.0, float(np.abs(M).max()))
                    if np.abs(M - M.T).max() > tol or np.linalg.eigvalsh(0.5 * (M + M.T)).min() < -tol:
                        return False
            else:
                n = int(np.prod(shape))
                if np.any(v[k: k + n] < 0):
                    return False
                k += n
        return True

    def scale_by_agm(self, eta: ArrayLike, v0: Optional[ArrayLike] = None) -> optax.GradientTransformation:
        """``scale_by_operator`` with Shampoo's statistic and preconditioner at learning rate ``eta``."""
        beta2 = self.beta2_at(eta)
        check_range("beta2", beta2, low=0.0, high=1.0, high_open=True)
        return scale_by_operator(self.beta1, beta2, lambda g, shapes: shampoo_statistic(g[:, None], self._own(shapes)),
                                 lambda nu, m, shapes: shampoo_apply(nu, m, self._own(shapes), self.eps), v0=v0)


@final
class CustomMatrixAGM(AbstractMethod):
    """A user's AGM whose statistic needs all of g gᵀ and whose preconditioner is a matrix, on flat vectors:

    - ``statistic``: V of M = F Fᵀ from a factor F (D, k) -> the statistic (K,), linear in M (so quadratic in
      F: for one gradient F = g[:, None]);
    - ``preconditioner``: S, the statistic (K,) -> a symmetric positive definite matrix (D, D).

    Both jittable functions of arrays. The discrete side is ``scale_by_operator`` (S(v) m as a matrix
    product); the slow side is the label-noise ODE on dense geometry (``sde.full_S``). A given v0 is only
    checked to be finite (the statistic's structure is the user's). Fields ``beta1``; ``c`` or ``beta2``;
    static ``name``, ``statistic``, ``preconditioner``. Built by ``custom_agm(..., full_matrix=True)``.
    """

    has_v: ClassVar[bool] = True
    full_statistic: ClassVar[bool] = True
    diagonal_S: ClassVar[bool] = False
    sweepable: ClassVar[Mapping[str, str]] = {"c": "c", "beta1": "beta1", "beta2": "beta2"}
    blocks: ClassVar[None] = None
    bias_correction: ClassVar[bool] = False

    beta1: jax.Array
    c: Optional[jax.Array]
    beta2: Optional[jax.Array]
    statistic: Callable = eqx.field(static=True, default=None)
    preconditioner: Callable = eqx.field(static=True, default=None)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field in ("statistic", "preconditioner"):
            if not callable(getattr(self, field)):
                raise ConfigError(field, f"must be a function of a flat array, got {type(getattr(self, field)).__name__}")
        check_range("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        _check_rates(self)

    def beta2_at(self, eta: ArrayLike) -> Array:
        """beta2 used at learning rate eta: 1 - c eta^2, or the explicit beta2."""
        return _beta2_at(self, eta)

    def c_at(self, eta: Optional[ArrayLike]) -> Array:
        return _c_at(self, eta)

    def V(self, diag: Float[Array, "D"], params: Optional[PyTree] = None) -> Float[Array, "K"]:
        raise ConfigError("method", f"{self.name}'s statistic needs the whole g gᵀ: use V_of_factor(F)")

    def V_of_factor(self, F: Float[Array, "*batch D k"]) -> Float[Array, "*batch K"]:
        if jnp.ndim(F) > 2:
            return jax.vmap(self.V_of_factor)(F)
        return self.statistic(F)

    def S(self, v: Float[Array, "K"]) -> Float[Array, "D"]:
        raise ConfigError("method", f"{self.name}'s preconditioner is a matrix: use S_operator(v)")

    def S_operator(self, v: Float[Array, "K"]) -> Float[Array, "D D"]:
        return self.preconditioner(v)

    def statistic_ok(self, v: Float[Array, "K"]) -> bool:
        """Any finite statistic (its structure is the user's)."""
        return bool(np.all(np.isfinite(np.asarray(v))))

    def scale_by_agm(self, eta: ArrayLike, v0: Optional[ArrayLike] = None) -> optax.GradientTransformation:
        """``scale_by_operator`` with the user's statistic and preconditioner at learning rate ``eta``."""
        beta2 = self.beta2_at(eta)
        check_range("beta2", beta2, low=0.0, high=1.0, high_open=True)
        return scale_by_operator(self.beta1, beta2, lambda g, shapes: self.statistic(g[:, None]),
                                 lambda nu, m, shapes: self.preconditioner(nu) @ m, v0=v0)


@final
class SGD(AbstractMethod):
    """SGD with EMA momentum m <- beta1 m + (1 - beta1) g (the AGM form): no second moment, S = I. Built by ``sgd``."""

    has_v: ClassVar[bool] = False
    sweepable: ClassVar[Mapping[str, str]] = {"beta1": "beta1"}

    beta1: jax.Array
    name: str = eqx.field(static=True, default="sgd")
    bias_correction: bool = eqx.field(static=True, default=False)
    blocks: ClassVar[None] = None

    def __check_init__(self):
        check_range("beta1", self.beta1, low=0.0, high=1.0, high_open=True)

    def c_at(self, eta: Optional[ArrayLike]) -> None:
        return None

    def V(self, diag: Float[Array, "D"], params: Optional[PyTree] = None) -> Float[Array, "D"]:
        """The identity (SGD keeps no second moment; the slow SDE's v is a placeholder that never moves)."""
        return diag

    def S(self, v: Float[Array, "D"]) -> Float[Array, "D"]:
        """Ones, shape (D,)."""
        return jnp.ones_like(v)

    def scale_by_agm(self, eta: ArrayLike, v0: Optional[PyTree[ArrayLike]] = None) -> optax.GradientTransformation:
        """``optax.ema(beta1, debias=bias_correction)``; ``v0`` is ignored (no v)."""
        return optax.ema(decay=self.beta1, debias=self.bias_correction)


# ----- factories -------------------------------------------------------------------------------------------
def _default_rate(beta2, c, **numbers):
    """c, defaulting to 10 (the authors' choice for the slow limit) when neither beta2 nor c is given; every
    given hyperparameter checked to be a number before it becomes an array (the ranges: ``__check_init__``)."""
    if beta2 is not None and c is not None:
        raise ConfigError("beta2", "give either beta2 or c (1 - beta2 = c eta^2), not both")
    if beta2 is None and c is None:
        c = 10.0
    for field, value in {**numbers, "beta2": beta2, "c": c}.items():
        if value is not None:
            as_real_array(field, value)
    return c


def _make(name, beta1, beta2, c, eps, lam, blocks=None, bias_correction=False) -> AGM:
    c = _default_rate(beta2, c, beta1=beta1, eps=eps, lam=lam)
    return AGM(beta1=_f(beta1), c=_f(c), beta2=_f(beta2), eps=_f(eps), lam=_f(lam), name=name,
               blocks=blocks, bias_correction=bool(bias_correction))


def adam(beta1: ArrayLike = 0.9, beta2: Optional[ArrayLike] = None, c: Optional[ArrayLike] = None,
         eps: ArrayLike = 1e-8, bias_correction: bool = False) -> AGM:
    """Adam: V = diag, S = 1/(sqrt(v)+eps). Without beta2 or c, c = 10 (1 - beta2 = 10 eta^2)."""
    return _make("adam", beta1, beta2, c, eps, 0.5, bias_correction=bias_correction)


def adame(lam: ArrayLike = 0.5, beta1: ArrayLike = 0.9, beta2: Optional[ArrayLike] = None,
          c: Optional[ArrayLike] = None, eps: ArrayLike = 1e-8, bias_correction: bool = False) -> AGM:
    """AdamE-lam: S = 1/(v^lam + eps); lam = 1/2 is Adam, lam -> 0 approaches SGD at rate eta/(1+eps)."""
    return _make("adame", beta1, beta2, c, eps, lam, bias_correction=bias_correction)


def rmsprop(beta2: Optional[ArrayLike] = None, c: Optional[ArrayLike] = None, eps: ArrayLike = 1e-8,
            bias_correction: bool = False) -> AGM:
    """RMSProp: Adam with beta1 = 0."""
    return _make("rmsprop", 0.0, beta2, c, eps, 0.5, bias_correction=bias_correction)


def _leaf_key(name: str) -> str:
    """A leaf's name without the brackets and quotes of ``jax.tree_util.keystr`` (``"['W1']"`` -> ``"W1"``)."""
    return name.replace("['", "").replace("']", "/").replace("[", "").replace("]", "/").strip("./")


def _blocks_spec(blocks):
    if blocks is None:
        raise ConfigError("blocks", "adam_mini needs block ids: one per coordinate, or 'leaf'")
    if isinstance(blocks, str):
        if blocks != "leaf":
            raise ConfigError("blocks", f"must be 'leaf' or a list of integer block ids, got {blocks!r}")
        return "leaf"
    if isinstance(blocks, dict) or (isinstance(blocks, (list, tuple)) and any(np.ndim(b) for b in blocks)):
        is_ids = lambda x: isinstance(x, list) and not isinstance(blocks, list)  # a list of ids is one leaf's ids
        with_paths = jax.tree_util.tree_leaves_with_path(blocks, is_leaf=is_ids)
        leaves = [np.asarray(x) for _, x in with_paths]
        if not leaves:
            raise ConfigError("blocks", "holds no block ids")
        if all(x.ndim == 0 for x in leaves):  # one id per parameter leaf, in the params' leaf order
            names = tuple(jax.tree_util.keystr(p) for p, _ in with_paths)
            ids = np.asarray(leaves)
            if ids.dtype.kind not in "iu" and not (ids.dtype.kind == "f" and np.all(ids == np.round(ids))):
                raise ConfigError("blocks", "block ids must be integers")
            return ("per_leaf", tuple(int(x) for x in leaves), names if isinstance(blocks, dict) else None)
        arr = np.concatenate([x.ravel() for x in leaves])  # id arrays per leaf, raveled like the params
    else:
        arr = np.asarray(blocks)
    if arr.size == 0:
        raise ConfigError("blocks", "holds no block ids")
    if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(arr == np.round(arr))):
        raise ConfigError("blocks", "block ids must be integers")
    return tuple(int(i) for i in arr.ravel())


def adam_mini(blocks: Union[str, PyTree[int]], beta1: ArrayLike = 0.9, beta2: Optional[ArrayLike] = None,
              c: Optional[ArrayLike] = None, eps: ArrayLike = 1e-8, bias_correction: bool = False) -> AGM:
    """Adam-mini: v is shared within blocks (V = block mean of diag).

    ``blocks``: integer block id per raveled coordinate (length D), a pytree of ids matching the params
    (raveled in the same order), or ``"leaf"`` for one block per pytree leaf.
    """
    return _make("adam_mini", beta1, beta2, c, eps, 0.5, blocks=_blocks_spec(blocks), bias_correction=bias_correction)


def adalayer(beta1: ArrayLike = 0.9, beta2: Optional[ArrayLike] = None, c: Optional[ArrayLike] = None,
             eps: ArrayLike = 1e-8, bias_correction: bool = False,
             blocks: Union[str, PyTree[int]] = "leaf") -> AGM:
    """Adalayer: one block per layer. Layers are the pytree leaves, or explicit ids via ``blocks``."""
    return _make("adalayer", beta1, beta2, c, eps, 0.5, blocks=_blocks_spec(blocks), bias_correction=bias_correction)


def adafactor(beta1: ArrayLike = 0.9, beta2: Optional[ArrayLike] = None, c: Optional[ArrayLike] = None,
              eps: ArrayLike = 1e-8) -> Adafactor:
    """Adafactor (``Adafactor``): factored second moments on matrix leaves, Adam elsewhere. Without beta2 or c,
    c = 10 (1 - beta2 = 10 eta^2)."""
    c = _default_rate(beta2, c, beta1=beta1, eps=eps)
    return Adafactor(beta1=_f(beta1), c=_f(c), beta2=_f(beta2), eps=_f(eps))


def custom_agm(statistic: Callable, preconditioner: Callable, beta1: ArrayLike = 0.9,
               beta2: Optional[ArrayLike] = None, c: Optional[ArrayLike] = None, name: str = "custom",
               full_matrix: bool = False) -> Union[CustomAGM, CustomMatrixAGM]:
    """An AGM of your own. Without beta2 or c, c = 10.

    - ``full_matrix=False`` (``CustomAGM``): ``statistic`` V maps the squared gradient (D,) linearly to a
      statistic (K,), ``preconditioner`` S maps it to the preconditioner's diagonal (D,). E.g. Adam is
      ``custom_agm(lambda sq: sq, lambda v: 1 / (jnp.sqrt(v) + 1e-8))``.
    - ``full_matrix=True`` (``CustomMatrixAGM``): ``statistic`` maps a factor F (D, k) of M = F Fᵀ to V(M)
      (K,), linear in M; ``preconditioner`` maps the statistic to an SPD matrix (D, D). E.g. Shampoo restated
      is ``custom_agm(lambda F: shampoo_statistic(F, shapes), lambda v: shampoo_matrix(v, shapes, eps),
      full_matrix=True)``; full-matrix preconditioning (M + eps I)^(-1/2) takes ``lambda F: (F @ F.T).ravel()``
      and the inverse square root of ``v.reshape(D, D) + eps I``."""
    c = _default_rate(beta2, c, beta1=beta1)
    cls = CustomMatrixAGM if full_matrix else CustomAGM
    return cls(beta1=_f(beta1), c=_f(c), beta2=_f(beta2), statistic=statistic, preconditioner=preconditioner,
               name=str(name))


def shampoo(beta1: ArrayLike = 0.9, beta2: Optional[ArrayLike] = None, c: Optional[ArrayLike] = None,
            eps: ArrayLike = 1e-8) -> Shampoo:
    """Shampoo (``Shampoo``): (L + eps I)^(-1/4) M (R + eps I)^(-1/4) on matrix leaves, Adam elsewhere. Without
    beta2 or c, c = 10 (1 - beta2 = 10 eta^2)."""
    c = _default_rate(beta2, c, beta1=beta1, eps=eps)
    return Shampoo(beta1=_f(beta1), c=_f(c), beta2=_f(beta2), eps=_f(eps))


def sgd(momentum: ArrayLike = 0.0, bias_correction: bool = False) -> SGD:
    """SGD, S = I, with optional EMA momentum m <- momentum m + (1 - momentum) g (the AGM form)."""
    as_real_array("momentum", momentum)
    try:
        return SGD(beta1=_f(momentum), bias_correction=bool(bias_correction))
    except ConfigError as e:  # SGD's beta1 is its momentum
        raise ConfigError("momentum" if e.field == "beta1" else e.field, e.reason) from None


FACTORIES = {"adam": adam, "adam_mini": adam_mini, "adalayer": adalayer, "adame": adame,
             "rmsprop": rmsprop, "adafactor": adafactor, "shampoo": shampoo, "sgd": sgd}
METHOD_NAMES = tuple(FACTORIES)


def make_method(name: str, **kwargs) -> AbstractMethod:
    """A method by name with keyword hyperparameters (used by configs)."""
    if name not in FACTORIES:
        raise ConfigError("method", f"unknown method '{name}'{suggest(name, FACTORIES)}; choose from {', '.join(METHOD_NAMES)}")
    allowed = set(inspect.signature(FACTORIES[name]).parameters)
    for k in kwargs:
        if k not in allowed:
            raise ConfigError(k, f"not a hyperparameter of {name}{suggest(k, allowed)}; allowed: {', '.join(sorted(allowed))}")
    return FACTORIES[name](**kwargs)
