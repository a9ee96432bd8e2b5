"""Geometry of the minimizer manifold Gamma (docs/math.md#geometry to #diagonal-net).

Conventions: theta has shape (D,); H is the Hessian (D, D) at a point zeta of Gamma; Sigma is the noise
covariance (D, D); the preconditioner S is either its diagonal (shape (D,)) or a symmetric positive-definite
matrix (D, D). With H' = S^{1/2} H S^{1/2}:

- ``projection_jacobian(H, S)``: dPhi_S = S^{1/2} (I - H'^+ H') S^{-1/2} = I - S H (H S H)^+ H, the oblique
  projection onto ker H along S range(H);
- ``sigma_parallel(H, Sigma, S)``: Sigma_par = dPhi_S S Sigma S dPhi_S^T;
- ``sigma_diamond(H, Sigma, S)``: the symmetric X with dPhi_S X dPhi_S^T = 0 and S H X + X H S = S Sigma S - Sigma_par;
- ``third_derivative_contraction(loss, theta, M)``: grad_theta <Hess L(theta), M> with M fixed;
- ``project(loss, theta, S)``: Phi_S(theta);
- ``sharpness(H, kind)``: tr H, tr(Diag H^{1/2}), tr(Diag H^{1-lam}), sum_B sqrt(|B| tr H_BB);
- least squares on Gamma (``ls_*``): H = J^T W J from the residual Jacobian J (n, D) and weights W = Diag(w),
  so that dPhi_S = I - S J^T (J S J^T)^{-1} J costs O(n^2 D + n^3) instead of O(D^3);
  ``ls_slow_sde_coefficients`` gives the slow SDE's drift and tangent noise factor the same way, from a noise
  factor G (Sigma = G G^T, see ``Noise.covariance_factor``) and one n x n eigendecomposition.

**Rank rule.** Gamma has codimension m = rank H. Matrix-level functions take ``rank`` (the known codimension,
e.g. the number of active samples of an interpolating least-squares problem) or, when it is None, count the
eigenvalues of H' above ``rtol`` times the largest one (default rtol = 1e-8: in float64, rounding puts the
zero eigenvalues near 1e-16 of the largest, and curvature on Gamma is rarely 1e8 times smaller than the
largest).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, Scalar

from ._batching import factorized_size, map_paths
from ._small_linalg import spd_solve
from ._structure import LeastSquares
from .validation import ConfigError, as_float_array, check_int, check_range

__all__ = ["ProjectionError", "PROJECTION_STATUS", "projection_jacobian", "sigma_parallel", "sigma_diamond",
           "sharpness", "hessian", "third_derivative_contraction", "numerical_rank",
           "ls_apply_projection", "ls_projection_jacobian", "ls_third_derivative_tangent", "ls_gn_trace_hessian",
           "label_noise_drift",
           "normal_frame", "newton_retraction_step", "project_flow", "project", "projection_failure_message"]


class ProjectionError(RuntimeError):
    """A point could not be projected onto Gamma; the message says why (see ``PROJECTION_STATUS``)."""


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


# ----- least squares on Gamma -------------------------------------------------------------------------------------------
def _ls_gram_solve(Jw, w, S, y):
    """(S J_w^T, z) with (J_w S J_w^T) z = y for J_w = Diag(sqrt w) J; masked samples (w = 0) get a unit
    diagonal so that their (zero) rows drop out."""
    SJt = _apply_S(S, Jw.T)
    Gram = Jw @ SJt
    return SJt, spd_solve(Gram + _gram_shift(Gram, w), y)


GRAM_RIDGE = 1e-13


def _gram_shift(Gram, w):
    """Added to a Gram matrix J S J^T before solving: a unit diagonal for masked samples (w = 0; their rows
    drop out), and a ridge of GRAM_RIDGE times its largest diagonal entry. Near a point where Gamma loses
    rank (the diagonal net's sparse corner: fewer than n coordinates with S_k x_k^2 above rounding) the Gram
    matrix is singular to rounding and a plain solve returns rounding noise amplified by 1e16 or more; the
    ridge sets those unseen directions to zero and leaves the others unchanged to ~1e-13."""
    d = jnp.diagonal(Gram)
    return jnp.diag(jnp.where(w == 0, 1.0, GRAM_RIDGE * jnp.max(jnp.abs(d))).astype(Gram.dtype))


def ls_apply_projection(J: Float[Array, "n D"], w: Float[Array, "n"], S: Preconditioner,
                        x: Float[Array, "D *k"]) -> Float[Array, "D *k"]:
    """dPhi_S x for least squares on Gamma: x - S J_w^T (J_w S J_w^T)^{-1} J_w x, O(n D + n^3)."""
    Jw = jnp.sqrt(w)[:, None] * J
    SJt, z = _ls_gram_solve(Jw, w, S, Jw @ x)
    return x - SJt @ z


def ls_projection_jacobian(J: Float[Array, "n D"], w: Float[Array, "n"], S: Preconditioner) -> Float[Array, "D D"]:
    """dPhi_S (D, D) for least squares on Gamma from the residual Jacobian J (n, D) and weights w (n,)."""
    Jw = jnp.sqrt(w)[:, None] * J
    SJt, Z = _ls_gram_solve(Jw, w, S, Jw)
    return jnp.eye(J.shape[1], dtype=J.dtype) - SJt @ Z


def ls_third_derivative_tangent(ls: LeastSquares, w: Float[Array, "n"], theta: Float[Array, "D"],
                                MJt: Float[Array, "D n"]) -> Float[Array, "D"]:
    """The part of grad <Hess L, M> that survives dPhi_S S on Gamma for L = sum_n w_n r_n^2 / 2:
    2 sum_n w_n Hess r_n (M grad r_n), shape (D,). ``MJt`` = M J^T, (D, n) (column n is M grad r_n).

    (The full contraction adds J^T(...), which dPhi_S S annihilates; r = 0 on Gamma removes the rest.)
    Cost: n Jacobian-vector products of r, then one gradient: O(n) passes of r. Quadratic residuals
    r = B (x * x) - y (``ls.quadratic``; Hess r_n = 2 Diag(B_n)): 4 sum_n w_n B_n * (M grad r_n), O(n D);
    or the declared closed form ``ls.hessian_sum_fn``. ``w`` (n,) is passed apart from ``ls.weights``
    because callers fold their own factor into it.
    """
    if ls.quadratic is not None:
        return 4.0 * jnp.sum(ls.quadratic[0] * (w[:, None] * MJt.T), axis=0)
    if ls.hessian_sum_fn is not None:
        return 2.0 * ls.hessian_sum_fn(theta, w, MJt)

    def directional(t):  # sum_n w_n <grad r_n(t), a_n> with a_n = MJt[:, n] fixed
        jvps = jax.vmap(lambda a: jax.jvp(ls.residuals, (t,), (a,))[1], in_axes=1)(MJt)  # (n, n): row k = J(t) a_k
        return jnp.sum(w * jnp.diagonal(jvps))

    return 2.0 * jax.grad(directional)(theta)


def ls_gn_trace_hessian(ls: LeastSquares, w: Float[Array, "n"], theta: Float[Array, "D"],
                        S: Float[Array, "D"]) -> Float[Array, "D D"]:
    """grad^2 phi at theta for phi(theta) = tr(S J^T W J) = sum_n w_n sum_i S_i (d_i r_n)^2 with the diagonal
    S (D,) held fixed, shape (D, D). grad phi is ``ls_third_derivative_tangent`` with M = S, so this is
    the derivative of the label-noise drift's curvature term (the stiff part of Adam's ODE, see
    the slow ODE). Quadratic residuals r = B (x * x) - y: 8 Diag(sum_n w_n B_n^2 S), O(n D); or the declared
    closed form ``ls.gn_trace_hessian_fn``; otherwise autodiff: D forward passes through the gradient of phi."""
    if ls.quadratic is not None:
        return jnp.diag(8.0 * S * (w @ ls.quadratic[0] ** 2))
    if ls.gn_trace_hessian_fn is not None:
        return ls.gn_trace_hessian_fn(theta, S, w)

    def phi(t):
        J = ls.jacobian(t)
        return jnp.sum(w[:, None] * J * J * S[None, :])

    return jax.jacfwd(jax.grad(phi))(theta)


def _ls_sample_eig(Jw, S, rank=None, rtol=DEFAULT_RTOL):
    """The sample-space Gram matrix K = J_w S J_w^T (n, n) = B B^T with B = J_w S^{1/2}, whose nonzero
    eigenvalues are those of H' = B^T B. Returns (S J_w^T (D, n), eigenvalues (n,) with the tangent/masked
    ones set to 0, eigenvectors Q (n, n), normal mask (n,), pseudo-inverse eigenvalues (n,)). The rank rule
    is the module's (top ``rank``, else above rtol times the largest), applied to the same nonzero spectrum
    as the dense path."""
    SJt = _apply_S(S, Jw.T)
    K = Jw @ SJt
    lam, Q = jnp.linalg.eigh(0.5 * (K + K.T))
    normal = _normal_mask(lam, rank, rtol)
    lam = jnp.where(normal, lam, 0.0)
    inv = jnp.where(normal, 1.0 / jnp.where(normal, lam, 1.0), 0.0)
    return SJt, lam, Q, normal, inv


def ls_sigma_diamond_jt(J, w, S, noise_factor, rank=None, rtol=DEFAULT_RTOL):
    """Sigma_diamond J_w^T (D, n) and the tangent noise factor dPhi_S S G (D, K) for least squares on Gamma,
    in sample space: never a (D, D) matrix unless the noise factor itself is (D, D).

    ``J`` (n, D) residual Jacobian, ``w`` (n,) weights (0 masks a sample), J_w = Diag(sqrt w) J, ``S`` (D,)
    or (D, D), ``noise_factor`` G (D, K) with Sigma = G G^T (or its diagonal (D,): G = Diag(g)).

    With K = J_w S J_w^T = Q Diag(lam) Q^T (n x n; H' = B^T B, B = J_w S^{1/2}, has the same nonzero
    spectrum, eigenvectors u_i = B^T q_i / sqrt(lam_i)) and F = J_w S G (n, K):

        dPhi_S S G          = S G - S J_w^T K^+ F                                      (= A, the tangent factor)
        Sigma_diamond J_w^T = S J_w^T Q [C_ij / (lam_i (lam_i + lam_j))] Q^T  +  A F^T K^+,   C = Q^T F F^T Q

    The first term is the normal-normal block sum <Sigma', u_i u_j^T>/(lam_i + lam_j) u_i u_j^T applied to B^T;
    the second is the normal-tangent block P_T Sigma' H'^+ B^T = (dPhi_S S Sigma S J_w^T) K^+ in
    original coordinates (the tangent-normal block dies on B^T, the tangent-tangent block is 0).
    Cost O(n D K + n^3).
    """
    Jw = jnp.sqrt(w)[:, None] * J
    return _ls_diamond(Jw, S, noise_factor, _ls_sample_eig(Jw, S, rank, rtol))


def _ls_diamond(Jw, S, noise_factor, eig):
    SJt, lam, Q, normal, inv = eig
    Gm = jnp.diag(noise_factor) if noise_factor.ndim == 1 else noise_factor
    SG = _apply_S(S, Gm)
    F = Jw @ SG  # (n, K)
    QF = Q.T @ F
    A = SG - SJt @ (Q @ (inv[:, None] * QF))
    both = normal[:, None] & normal[None, :]
    denom = lam[:, None] * (lam[:, None] + lam[None, :])
    Zt = jnp.where(both, (QF @ QF.T) / jnp.where(both, denom, 1.0), 0.0)
    Kplus = (Q * inv) @ Q.T
    MJt = SJt @ (Q @ Zt @ Q.T) + A @ (F.T @ Kplus)
    return MJt, A


def ls_slow_sde_coefficients(ls, theta, S, noise_factor, rank=None, rtol=DEFAULT_RTOL):
    """Slow-SDE coefficients of zeta at a point theta of Gamma for L = sum_i w_i r_i^2 / 2 (docs/math.md#the-slow-sde), in
    sample space (never a (D, D) matrix unless the noise factor is one).

    ``ls``: the problem's ``LeastSquares`` (weights w (n,), 0 masks a sample), ``S`` (D,) or SPD (D, D),
    ``noise_factor`` G (D, K) with Sigma(theta) = G G^T (or a diagonal (D,), G = Diag(g)); ``rank`` the
    codimension (default: the rank rule on the nonzero spectrum of H').

    Returns ``(drift (D,), tangent_factor (D, K))``: drift = -1/2 dPhi_S S grad^3 L[Sigma_diamond] and
    tangent_factor = dPhi_S S G, so that tangent_factor tangent_factor^T = Sigma_par. Cost: n reverse passes
    for J, O(n) passes of r for the third derivative (``ls_third_derivative_tangent``), O(n D K + n^3).
    Valid on Gamma of an interpolating problem (active residuals r_i = 0), like the dense path it replaces.
    """
    S = jnp.asarray(S, theta.dtype)
    J = ls.jacobian(theta)
    sw = jnp.sqrt(ls.sample_weights(theta))
    Jw = sw[:, None] * J
    eig = _ls_sample_eig(Jw, S, rank, rtol)
    MJt, A = _ls_diamond(Jw, S, noise_factor, eig)
    # sum_n w_n Hess r_n (M grad r_n) = sum_n sqrt(w_n) Hess r_n (M sqrt(w_n) grad r_n)
    St3 = _apply_S(S, ls_third_derivative_tangent(ls, sw, theta, MJt))
    SJt, _, Q, _, inv = eig
    drift = -0.5 * (St3 - SJt @ (Q @ (inv * (Q.T @ (Jw @ St3)))))
    return drift, A


def label_noise_drift(loss: LossFn, theta: Float[Array, "D"], S: Preconditioner, alpha: ArrayLike,
                      least_squares: Optional[LeastSquares] = None) -> Float[Array, "D"]:
    """The label-noise slow drift -(alpha/4) dPhi_S S grad^3 L[S] at theta on Gamma (docs/math.md#label-noise-ode), shape (D,).

    With ``least_squares`` (the problem's declared structure) the structured path is used (O(n^2 D + n^3));
    otherwise dense Hessians (small D). ``S`` is the preconditioner's diagonal (D,) or an SPD matrix.
    """
    S = jnp.asarray(S, theta.dtype)
    if least_squares is not None:
        J, w = least_squares.jacobian(theta), least_squares.sample_weights(theta)
        t3 = ls_third_derivative_tangent(least_squares, w, theta, _apply_S(S, J.T))
        return -(alpha / 4.0) * ls_apply_projection(J, w, S, _apply_S(S, t3))
    H = hessian(loss, theta)
    P = projection_jacobian(H, S)
    t3 = third_derivative_contraction(loss, theta, _S_matrix(S))
    return -(alpha / 4.0) * P @ _apply_S(S, t3)


def quadratic_label_noise_rate(B, y, w, x, S, alpha):
    """h with x * h = the label-noise drift -(alpha/4) dPhi_S S grad^3 L[S] for residuals r(x) = B (x * x) - y
    (``LeastSquares.quadratic``), S diagonal (D,); shape (D,).

    With J_w = 2 Diag(sqrt w) B Diag(x): S grad^3 L[S] = 8 x S u with u = S * (w @ B^2), and
        h = -2 alpha S (u - B_w^T c),   c = argmin_c sum_k m_k (u_k - (B_w^T c)_k)^2,   m = S x^2,
    i.e. the weighted least-squares fit of u by the rows of B_w. Factoring x out keeps h exact where x_k is
    tiny (the drift itself is x_k h_k: its relative accuracy is lost there)."""
    sw = jnp.sqrt(w)
    Bw = sw[:, None] * B
    u = S * (w @ (B * B))
    m = S * x * x
    G = (Bw * m) @ Bw.T
    c = jnp.linalg.solve(G + _gram_shift(G, w), Bw @ (m * u))
    return -2.0 * alpha * S * (u - Bw.T @ c)


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


def newton_retraction_step(loss: LossFn, x: Float[Array, "D"], S: Preconditioner, *,
                           least_squares: Optional[LeastSquares] = None,
                           normals: Optional[Float[Array, "D D"]] = None) -> Float[Array, "D"]:
    """One Newton step from x towards Gamma along S * normal directions.

    - Least squares (``least_squares``, residuals r(x) of shape (n,) and weights w (n,)): the
      Gauss-Newton step x - S J_w^T (J_w S J_w^T)^{-1} r_w with J_w = Diag(sqrt w) J, r_w = sqrt(w) r;
      masked samples (w = 0) impose no constraint.
    - Any loss: ``normals`` N (D, D) from ``normal_frame`` (zero columns for tangent directions), taken
      at a point of Gamma or cut at the codimension. The step is x + S N a with (N^T H(x) S N) a = -N^T grad
      L(x): it solves the normal part of grad L = 0 and never inverts H's tangent eigenvalues. (A
      pseudo-inverse of H(x) with a relative cut-off would: off Gamma they are O(distance), and the step then
      moves x tangentially by O(distance), a spurious drift in the slow SDE.)
    """
    if least_squares is not None:
        r, J = least_squares.residuals(x), least_squares.jacobian(x)
        w = least_squares.sample_weights(x)
        sw = jnp.sqrt(w)
        SJt, z = _ls_gram_solve(sw[:, None] * J, w, S, sw * r)
        return x - SJt @ z
    if normals is None:
        raise ConfigError("normals", "a loss without residuals needs normal directions (see normal_frame)")
    SN = _apply_S(S, normals)
    tangent = jnp.all(normals == 0, axis=0).astype(x.dtype)  # zero columns: unknowns fixed at 0
    A = normals.T @ jax.hessian(loss)(x) @ SN + jnp.diag(tangent)
    return x - SN @ jnp.linalg.solve(A, normals.T @ jax.grad(loss)(x))


# Why a projection failed (the ``status`` of ``project_flow``).
PROJECTION_OK = 0
PROJECTION_STATUS = {
    1: "the preconditioner S is not finite (v = 0 with eps = 0?)",
    2: "the state became non-finite",
    3: "the flow's step budget (max_steps) ran out before the point came near Gamma",
    4: "the Newton finish did not settle (no minimizer nearby?)",
}


def _dual_flow_limit(x0, S, B, y, w, tol=1e-10, max_iter=200):
    """The limit of dx/ds = -S grad L for L = sum_i w_i r_i^2 / 2, r(x) = B (x * x) - y, S diagonal (D,).

    Along the flow x(s) = x0 * exp(-2 S * B^T q(s)) with q(s) = int_0^s W r (each coordinate is rescaled,
    never moved across 0), and q(s) is a gradient flow of the strictly convex
        F(q) = sum_k x0_k^2 / (4 S_k) exp(-4 S_k (B^T q)_k) + y^T q      (grad F = -r(x(q))),
    so the limit is x(q*) with q* = argmin F over the active samples (w > 0). Damped Newton on F: its Hessian
    B Diag(4 S x^2) B^T = J S J^T is the Gram matrix of the Gauss-Newton step, whose conditioning does not
    depend on how large S is, so S ~ 1/eps does not make this stiff (about ten Newton steps from a point
    O(1) off Gamma). Converged when a Newton step moves x by at most tol * max(1, |x|) or the residuals are
    at rounding level (1e-13 |y|); at most ``max_iter`` steps. Returns (x, converged)."""
    active = w > 0
    log_c = 2.0 * jnp.log(jnp.abs(x0)) - jnp.log(4.0 * S)  # -inf where x0_k = 0: that coordinate stays 0
    r_floor = 1e-13 * jnp.maximum(1.0, jnp.max(jnp.abs(y)))

    def parts(q):
        e = jnp.exp(log_c - 4.0 * S * (B.T @ q))  # x_k(q)^2 / (4 S_k)
        r = jnp.where(active, B @ (4.0 * S * e) - y, 0.0)  # -grad F
        return jnp.sum(e) + jnp.dot(y, q), r, e

    def body(state):
        q, _, it = state
        F, r, e = parts(q)
        Hm = jnp.where(active[:, None] & active[None, :], (B * (16.0 * S * S * e)) @ B.T, 0.0)  # B Diag(4 S x^2) B^T
        p = jnp.linalg.solve(Hm + _gram_shift(Hm, w), r)  # Newton direction (grad F = -r)
        dec = jnp.dot(r, p)  # Newton decrement squared
        x = jnp.sqrt(4.0 * S * e)
        done = (jnp.linalg.norm(2.0 * S * x * (B.T @ p)) <= tol * jnp.maximum(1.0, jnp.linalg.norm(x))) \
            | (jnp.max(jnp.abs(r)) <= r_floor)

        def bad(t):  # backtracking: accept a finite F that decreases (Armijo) or, once F's decrease is below
            Fn, rn, _ = parts(q + t * p)  # its rounding, a smaller residual
            good = (Fn <= F - 1e-4 * t * dec) | (jnp.linalg.norm(rn) < jnp.linalg.norm(r))
            return (~jnp.isfinite(Fn) | ~good) & (t > 1e-12)

        t = jax.lax.while_loop(bad, lambda t: 0.5 * t, jnp.asarray(1.0, q.dtype))
        return jnp.where(done, q + p, q + t * p), done, it + 1  # the last (tiny) step in full, then stop

    q, done, _ = jax.lax.while_loop(lambda st: ~st[1] & (st[2] < max_iter), body,
                                    (jnp.zeros_like(y), jnp.asarray(False), 0))
    return x0 * jnp.exp(-2.0 * S * (B.T @ q)), done


def _flow_end(loss, theta, S, max_steps, least_squares, flow_tol):
    """End of the flow dx/ds = -S grad L (Tsit5), stopped once the point is within flow_tol of Gamma as the
    Newton finish measures it: the Gauss-Newton step's length for least squares, |S grad L| otherwise.
    (Stopping on |grad L| alone left points whose Newton step, S times larger, failed the finish's check.)"""
    grad = jax.grad(loss)
    if least_squares is not None:
        w = least_squares.sample_weights(theta)
        sw = jnp.sqrt(w)

        def gap(x):
            SJt, z = _ls_gram_solve(sw[:, None] * least_squares.jacobian(x), w, S, sw * least_squares.residuals(x))
            return jnp.linalg.norm(SJt @ z)
    else:
        def gap(x):
            return jnp.linalg.norm(_apply_S(S, grad(x)))
    term = diffrax.ODETerm(lambda s, x, args: -_apply_S(S, grad(x)))
    sol = diffrax.diffeqsolve(
        term, diffrax.Tsit5(), t0=0.0, t1=jnp.inf, dt0=None, y0=theta,
        stepsize_controller=diffrax.PIDController(rtol=1e-9, atol=1e-12),
        event=diffrax.Event(lambda s, x, args, **kw: gap(x) < flow_tol),
        saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
    return sol.ys[-1]


def project_flow(loss: LossFn, theta: Float[Array, "D"], S: Preconditioner, tol: float = 1e-10,
                 max_steps: int = 100_000, *, least_squares: Optional[LeastSquares] = None,
                 rank: RankArg = None, flow_tol: float = 1e-7,
                 newton_steps: int = 3) -> tuple[Float[Array, "D"], Int[Array, ""]]:
    """Phi_S(theta): the limit of the preconditioned gradient flow dx/ds = -S grad L(x), x(0) = theta.

    ``S``: diagonal (shape (D,)) or a symmetric positive-definite matrix (D, D). Residuals of the form
    r(x) = B (x * x) - y (diagonal nets, the hyperbola: ``least_squares.quadratic``) with S diagonal: the
    flow's limit is computed exactly by damped Newton on its convex dual (``_dual_flow_limit``; S ~ 1/eps
    makes the flow itself stiff, not the dual). Otherwise the flow is integrated with an adaptive Tsit5
    solver until the point is within flow_tol of Gamma (the Gauss-Newton step's length for least squares,
    |S grad L| for other losses) or ``max_steps`` run out. Either way it is finished with Newton
    steps along S * normal directions (``newton_retraction_step``; for a loss without residuals the
    normals come from the Hessian at the current point, cut at ``rank``, else at the largest spectral gap
    for the first step and by the rank rule after it).

    Convergence is decided by the Newton finish, independently of the scale of L and S: the last step moved
    x by at most tol * max(1, |x|), and the first one (the distance d from the flow's end to Gamma, to which
    the end point's error is O(d^2)) by at most sqrt(tol * max(1, |x|)); without residuals, also
    |grad L| <= tol * max(1, |x|) * |H|_2 at the end. Returns ``(x, status)``: status 0
    when converged, else a key of ``PROJECTION_STATUS`` saying why not. jit/vmap-able.
    """
    quad = least_squares.quadratic if least_squares is not None and jnp.ndim(S) == 1 else None
    if quad is not None:  # the exact limit; no Newton finish (near the sparse corner it would add rounding noise)
        w = least_squares.sample_weights(theta)
        x, done = _dual_flow_limit(theta, jnp.asarray(S, theta.dtype), quad[0], quad[1], w, tol, max_steps)
        status = jnp.where(~jnp.all(jnp.isfinite(jnp.asarray(S))), 1,
                           jnp.where(~jnp.all(jnp.isfinite(x)), 2, jnp.where(~done, 3, PROJECTION_OK)))
        return x, status
    x = _flow_end(loss, theta, S, max_steps, least_squares, flow_tol)
    steps = []
    for i in range(newton_steps):
        # without residuals: normals at the current point, by the spectral gap at the flow's end (tangent
        # eigenvalues O(flow_tol) there), then by the rank rule once the point sits on Gamma to rounding
        normals = None if least_squares is not None else normal_frame(jax.hessian(loss)(x), S, rank, gap=i == 0)
        x_prev, x = x, newton_retraction_step(loss, x, S, least_squares=least_squares, normals=normals)
        steps.append(jnp.linalg.norm(x - x_prev))
    scale = jnp.maximum(1.0, jnp.linalg.norm(x))
    settled = steps[-1] <= tol * scale
    if least_squares is None:  # the normals may be empty (H = 0): also ask for a stationary point, |g| / |H| small
        H = jax.hessian(loss)(x)
        settled &= jnp.linalg.norm(jax.grad(loss)(x)) <= tol * scale * jnp.max(jnp.abs(jnp.linalg.eigvalsh(H)))
    near = steps[0] <= jnp.sqrt(tol * scale)
    status = jnp.where(~jnp.all(jnp.isfinite(jnp.asarray(S))), 1,
                       jnp.where(~jnp.all(jnp.isfinite(x)), 2,
                                 jnp.where(~near, 3, jnp.where(~settled, 4, PROJECTION_OK))))
    return x, status


@eqx.filter_jit
def _project_batch(loss, theta, S, tol, max_steps, least_squares, rank):
    """project_flow over a batch (N, D). Compiled once per loss: methods of problems (equinox Modules) are
    pytrees, so a new problem with the same structure reuses the compiled function."""
    return map_paths(lambda a: project_flow(loss, a[0], a[1], tol, max_steps, least_squares=least_squares,
                                            rank=rank), (theta, S), factorized_size(theta[0], least_squares))


def projection_failure_message(status: ArrayLike, max_steps: int) -> str:
    """One line naming how many points failed and why, from an array of project_flow statuses."""
    status = np.asarray(status).ravel()
    parts = []
    for code, why in PROJECTION_STATUS.items():
        k = int(np.sum(status == code))
        if k:
            parts.append(f"{k} point(s): {why}" + (f" [max_steps={max_steps}]" if code == 3 else ""))
    return "; ".join(parts)


def _check_project_args(loss, theta, S, least_squares, dim):
    """theta and S as float arrays, checked against the loss: ConfigError for non-numbers, a scalar theta, a
    last axis that is not ``dim`` (when given), or a loss that is not a scalar."""
    from . import _precision

    theta = as_float_array("theta", theta, None)
    theta = theta.astype(_precision.default_float()) if not jnp.issubdtype(theta.dtype, jnp.floating) else theta
    S = as_float_array("S", S, theta.dtype)
    if theta.ndim == 0 or theta.shape[-1] == 0:
        raise ConfigError("theta", f"must be a vector (D,) or a batch (..., D), got shape {tuple(theta.shape)}")
    D = theta.shape[-1]
    if dim is not None and dim != D:
        raise ConfigError("theta", f"the last axis must have the problem's dimension D = {dim}, got shape "
                                   f"{tuple(theta.shape)}")
    try:
        out = jax.eval_shape(loss, jax.ShapeDtypeStruct((D,), theta.dtype))
    except (TypeError, ValueError, IndexError) as e:
        raise ConfigError("theta", f"the loss cannot be evaluated at a point of shape ({D},): {e}") from None
    if getattr(out, "shape", None) != ():
        raise ConfigError("loss", f"must return a scalar, got {getattr(out, 'shape', type(out).__name__)}")
    if least_squares is not None and least_squares.weights is not None:
        n = jax.eval_shape(least_squares.residuals, jax.ShapeDtypeStruct((D,), theta.dtype)).shape
        if jnp.shape(least_squares.weights) != n:
            raise ConfigError("least_squares", f"its weights must have the residuals' shape {n}, got "
                                               f"{jnp.shape(least_squares.weights)}")
    return theta, S


def project(loss: LossFn, theta: Float[ArrayLike, "*batch D"], S: ArrayLike, tol: float = 1e-10,
            max_steps: int = 100_000, *, least_squares: Optional[LeastSquares] = None, rank: RankArg = None,
            dim: Optional[int] = None) -> Float[Array, "*batch D"]:
    """Phi_S(theta) (see ``project_flow``); raises ``ProjectionError`` naming the cause when a point
    does not converge.

    ``theta`` may carry leading batch axes (..., D); ``S`` is then either shared ((D,) or (D, D)) or given per
    point (shape (..., D) or (..., D, D)). ``least_squares``: the declared structure (``problem.least_squares()``);
    ``rank``: the codimension of Gamma for a loss without residuals; ``max_steps``: the flow's step budget per
    point; ``dim``: the problem's D, checked against theta's last axis (``observables.at_projection`` passes it).
    """
    theta, S = _check_project_args(loss, theta, S, least_squares, dim)
    check_range("tol", tol, low=0.0, low_open=True)
    check_int("max_steps", max_steps, 1)
    if S.shape[-1:] == theta.shape[-1:] and not (S.ndim >= 2 and S.shape[-2:] == (theta.shape[-1],) * 2) \
            and np.any(np.asarray(S) <= 0):
        raise ConfigError("S", "a diagonal preconditioner must be positive")
    batch, D = theta.shape[:-1], theta.shape[-1]
    if rank is not None:
        check_int("rank", rank, 1)
        if rank > D:
            raise ConfigError("rank", f"the codimension of Gamma is at most D = {D}, got {rank}")
    th = theta.reshape(-1, D)
    if S.shape in (theta.shape, theta.shape + (D,)):  # one S per point (diagonal or matrix)
        s = S.reshape((th.shape[0],) + S.shape[len(batch):])
    elif S.shape in ((D,), (D, D)):  # one shared S
        s = jnp.broadcast_to(S, (th.shape[0],) + S.shape)
    else:
        raise ConfigError("S", f"must have shape ({D},), ({D}, {D}), {tuple(theta.shape)} or "
                               f"{tuple(theta.shape) + (D,)} for theta of shape {tuple(theta.shape)}, got {tuple(S.shape)}")
    x, status = _project_batch(loss, th, s, tol, max_steps, least_squares, rank)
    x, status = x.reshape(theta.shape), np.asarray(status).reshape(batch)
    if np.any(status != PROJECTION_OK):
        raise ProjectionError(f"the projection onto Gamma did not converge (tolerance {tol}) for "
                              + projection_failure_message(status, max_steps))
    return x
