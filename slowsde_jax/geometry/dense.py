"""Dense geometry of Gamma: functions of (H, Sigma, S) at a point of Gamma, and of the loss by autodiff (small D).

dPhi_S, Sigma_par, Sigma_diamond, the rank rule, sharpness measures, the Hessian, grad^3 L[M] and the
normals of Gamma (see the package docstring for the conventions).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Scalar

from ..validation import ConfigError

DEFAULT_RTOL = 1e-8

# Types used in the signatures below.
LossFn = Callable[[Float[Array, "D"]], Scalar]
Preconditioner = Union[Float[Array, "D"], Float[Array, "D D"]]  # S: its diagonal (D,) or an SPD matrix (D, D)
RankArg = Optional[Union[int, Int[Array, ""]]]  # a codimension, possibly traced; None: the rank rule



# ----- preconditioner helpers ------------------------------------------------------------------------------------
def _S_sqrt(S):
    """(S^{1/2}, S^{-1/2}) as dense matrices, for S diagonal (D,) or SPD (D, D)."""
    S = jnp.asarray(S)
    if S.ndim == 1:
        r = jnp.sqrt(S)
        return jnp.diag(r), jnp.diag(1.0 / r)
    lam, Q = jnp.linalg.eigh(S)
    r = jnp.sqrt(lam)
    return (Q * r) @ Q.T, (Q / r) @ Q.T


def _apply_S(S, X):
    """S @ X for S diagonal (D,) or a matrix (D, D), X a vector (D,) or a matrix (D, k)."""
    S = jnp.asarray(S)
    if S.ndim == 2:
        return S @ X
    return S * X if X.ndim == 1 else S[:, None] * X


def _S_matrix(S):
    S = jnp.asarray(S)
    return jnp.diag(S) if S.ndim == 1 else S


def _eig_Hprime(H, S):
    """Eigendecomposition of H' = S^{1/2} H S^{1/2}: (eigenvalues ascending, eigenvectors, S^{1/2}, S^{-1/2})."""
    Sh, Shi = _S_sqrt(S)
    Hp = Sh @ H @ Sh
    lam, U = jnp.linalg.eigh(0.5 * (Hp + Hp.T))
    return lam, U, Sh, Shi


def _normal_mask(lam, rank=None, rtol=DEFAULT_RTOL):
    """Boolean mask (D,) of the eigenvalues (ascending) that span range(H'): the top ``rank`` ones, or those
    above rtol * max."""
    if rank is not None:
        return jnp.arange(lam.shape[0]) >= lam.shape[0] - rank
    return lam > rtol * jnp.max(jnp.abs(lam))


def numerical_rank(H: Float[Array, "D D"], S: Optional[Preconditioner] = None, rtol: float = DEFAULT_RTOL) -> int:
    """rank H by the module's rule (eigenvalues of H' above rtol times the largest)."""
    lam, *_ = _eig_Hprime(H, jnp.ones(H.shape[0], H.dtype) if S is None else S)
    return int(jnp.sum(_normal_mask(lam, None, rtol)))



# ----- matrix level ------------------------------------------------------------------------------------------------
def projection_jacobian(H: Float[Array, "D D"], S: Preconditioner, rank: RankArg = None,
                        rtol: float = DEFAULT_RTOL) -> Float[Array, "D D"]:
    """dPhi_S (D, D): the oblique projection onto ker H along S range(H)."""
    lam, U, Sh, Shi = _eig_Hprime(H, S)
    Ut = U * (~_normal_mask(lam, rank, rtol))  # tangent eigenvectors of H'
    return Sh @ Ut @ U.T @ Shi


def sigma_parallel(H: Float[Array, "D D"], Sigma: Float[Array, "D D"], S: Preconditioner, rank: RankArg = None,
                   rtol: float = DEFAULT_RTOL) -> Float[Array, "D D"]:
    """Sigma_par (D, D) = dPhi_S S Sigma S dPhi_S^T, the covariance of the tangent noise."""
    P = projection_jacobian(H, S, rank, rtol)
    SM = _S_matrix(S)
    return P @ SM @ Sigma @ SM @ P.T


def sigma_diamond(H: Float[Array, "D D"], Sigma: Float[Array, "D D"], S: Preconditioner, rank: RankArg = None,
                  rtol: float = DEFAULT_RTOL) -> Float[Array, "D D"]:
    """Sigma_diamond (D, D) by the eigen formula in S^{1/2} coordinates (docs/math.md#geometry):
    Sigma'_dia = sum_{i,j not both tangent} <Sigma', u_i u_j^T> / (lam_i + lam_j) u_i u_j^T, then
    Sigma_dia = S^{1/2} Sigma'_dia S^{1/2}. Tangent eigenvalues are treated as exactly 0."""
    lam, U, Sh, Shi = _eig_Hprime(H, S)
    normal = _normal_mask(lam, rank, rtol)
    lam = jnp.where(normal, lam, 0.0)
    Sp = U.T @ (Sh @ Sigma @ Sh) @ U  # Sigma' in the eigenbasis
    denom = lam[:, None] + lam[None, :]
    keep = normal[:, None] | normal[None, :]
    Xp = jnp.where(keep, Sp / jnp.where(keep, denom, 1.0), 0.0)
    return Sh @ U @ Xp @ U.T @ Sh


def sharpness(H: Union[Float[Array, "*batch D"], Float[Array, "*batch D D"]], kind: str = "trace",
              lam: Optional[ArrayLike] = None, blocks: Optional[ArrayLike] = None, *,
              diagonal: Optional[bool] = None) -> Float[Array, "*batch"]:
    """Sharpness of a Hessian H ((D, D), or its diagonal (D,)), or of a batch of them:

    - ``"trace"``: tr H (SGD's);
    - ``"trace_sqrt_diag"``: tr(Diag(H)^{1/2}) (Adam's);
    - ``"trace_diag_pow"``: tr(Diag(H)^{1-lam}) (AdamE-lam's), needs ``lam``;
    - ``"block"``: sum_B sqrt(|B| tr H_BB) (Adam-mini's / Adalayer's), needs ``blocks`` (block id per coordinate).

    Negative diagonal entries (off Gamma) count as 0 under fractional powers.

    ``diagonal``: None reads a 1-d H as a diagonal and a 2-d H as a matrix; True reads H as diagonals of
    shape (..., D) (e.g. (n_paths, n_t, D)), False as matrices (..., D, D). Returns shape (...).
    """
    H = jnp.asarray(H)
    if diagonal is None:
        diagonal = H.ndim == 1
    d = H if diagonal else jnp.diagonal(H, axis1=-2, axis2=-1)
    if kind == "trace":
        return jnp.sum(d, axis=-1)
    if kind == "trace_sqrt_diag":
        return jnp.sum(jnp.sqrt(jnp.maximum(d, 0.0)), axis=-1)
    if kind == "trace_diag_pow":
        if lam is None:
            raise ConfigError("lam", "sharpness 'trace_diag_pow' needs lam")
        return jnp.sum(jnp.maximum(d, 0.0) ** (1.0 - lam), axis=-1)
    if kind == "block":
        if blocks is None:
            raise ConfigError("blocks", "sharpness 'block' needs a block id per coordinate")
        ids, inv = np.unique(np.asarray(blocks), return_inverse=True)
        onehot = jnp.asarray(inv.reshape(-1)[:, None] == np.arange(len(ids)), d.dtype)  # (D, n_blocks)
        tr, size = d @ onehot, jnp.sum(onehot, axis=0)
        return jnp.sum(jnp.sqrt(jnp.maximum(size * tr, 0.0)), axis=-1)
    raise ConfigError("kind", f"unknown sharpness '{kind}'; choose from trace, trace_sqrt_diag, trace_diag_pow, block")



# ----- autodiff level ------------------------------------------------------------------------------------------------
def hessian(loss: LossFn, theta: Float[Array, "D"]) -> Float[Array, "D D"]:
    """Dense Hessian of ``loss`` at theta, (D, D). Fine for D up to a few thousand."""
    return jax.hessian(loss)(theta)


def _second_directional(loss, theta, g):
    """g^T Hess L(theta) g by forward-over-forward differentiation."""
    return jax.jvp(lambda t: jax.jvp(loss, (t,), (g,))[1], (theta,), (g,))[1]


def third_derivative_contraction(loss: LossFn, theta: Float[Array, "D"], M: Optional[Float[Array, "D D"]] = None, *,
                                 G: Optional[Float[Array, "D K"]] = None, weights: Optional[Float[Array, "K"]] = None,
                                 diag: Optional[Float[Array, "D"]] = None) -> Float[Array, "D"]:
    """grad_theta <Hess L(theta), M> with M held fixed, shape (D,). Give exactly one of:

    - ``M`` (D, D): the dense path (a full Hessian inside a gradient; small D);
    - ``G`` (D, K), optional ``weights`` (K,): M = G Diag(weights) G^T, about K Hessian-vector products;
    - ``diag`` (D,): M = Diag(diag), as the low-rank path with G = I (D passes; use a structured path for
      least squares when D is large).
    """
    if sum(x is not None for x in (M, G, diag)) != 1:
        raise ConfigError("M", "give exactly one of M, G or diag")
    if M is not None:
        return jax.grad(lambda t: jnp.vdot(jax.hessian(loss)(t), M))(theta)
    if diag is not None:
        G, weights = jnp.eye(theta.shape[0], dtype=theta.dtype), diag
    w = jnp.ones(G.shape[1], theta.dtype) if weights is None else weights

    def contracted(t):
        return jnp.sum(w * jax.vmap(lambda g: _second_directional(loss, t, g), in_axes=1)(G))

    return jax.grad(contracted)(theta)


def normal_frame(H: Float[Array, "D D"], S: Preconditioner, rank: RankArg = None, rtol: float = DEFAULT_RTOL, *,
                 gap: bool = False) -> Float[Array, "D D"]:
    """Normal directions of Gamma (D, D) from the Hessian H (D, D) at (or near) a point of Gamma.

    Columns span range(H) = S^{-1/2} range(H'), H' = S^{1/2} H S^{1/2}; the columns of tangent eigenvectors
    are zero, so the shape does not depend on the codimension (jit-friendly, ``rank`` may be traced). The
    codimension is ``rank`` if given, else the rank rule (eigenvalues of H' above ``rtol`` times the largest),
    or with ``gap=True`` the largest spectral gap: use it off Gamma, where the tangent eigenvalues are
    O(distance) rather than rounding-small (see ``newton_retraction_step``).
    """
    lam, U, _, Shi = _eig_Hprime(H, S)
    mask = _normal_mask(lam, rank, rtol) if (rank is not None or not gap) else _normal_mask_by_gap(lam, rtol)
    return Shi @ (U * mask)


def _normal_mask_by_gap(lam, rtol=DEFAULT_RTOL, min_gap=1e3):
    """Normal eigenvalues (ascending ``lam``) as those above the largest ratio gap, when that gap exceeds
    ``min_gap``; otherwise the rtol rule. Off Gamma by a distance delta the tangent eigenvalues are
    O(delta) while the normal ones are O(1), so the gap separates them where a fixed cut-off may not."""
    a = jnp.maximum(jnp.abs(lam), 1e-12 * jnp.max(jnp.abs(lam)))  # rounding-level eigenvalues count as one
    ratio = a[1:] / a[:-1]
    k = jnp.argmax(ratio)
    by_gap = jnp.arange(lam.shape[0]) > k
    return jnp.where(ratio[k] > min_gap, by_gap, _normal_mask(lam, None, rtol))


