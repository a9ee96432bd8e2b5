"""Least squares on Gamma: H = J^T W J from a problem's declared ``LeastSquares``, in sample space.

dPhi_S = I - S J^T (J S J^T)^{-1} J with n x n solves, grad^3 L contracted through Jacobian-vector products,
and the slow SDE's coefficients from one n x n eigendecomposition: O(n^2 D + n^3), never D x D.
"""
from __future__ import annotations

from typing import Optional, Union

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from .._small_linalg import spd_solve
from .._structure import LeastSquares
from .dense import (DEFAULT_RTOL, LossFn, Preconditioner, RankArg, _apply_S, _normal_mask, _S_matrix, hessian,
                    projection_jacobian, third_derivative_contraction)


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


def ls_sigma_diamond_jt(J: Float[Array, "n D"], w: Float[Array, "n"], S: Preconditioner,
                        noise_factor: Union[Float[Array, "D K"], Float[Array, "D"]], rank: RankArg = None,
                        rtol: float = DEFAULT_RTOL) -> tuple[Float[Array, "D n"], Float[Array, "D K"]]:
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


def ls_slow_sde_coefficients(ls: LeastSquares, theta: Float[Array, "D"], S: Preconditioner,
                             noise_factor: Union[Float[Array, "D K"], Float[Array, "D"]], rank: RankArg = None,
                             rtol: float = DEFAULT_RTOL) -> tuple[Float[Array, "D"], Float[Array, "D K"]]:
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


