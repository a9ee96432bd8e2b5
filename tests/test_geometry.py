"""Geometry: identities of dPhi_S, Sigma_par, Sigma_diamond; third derivatives; projection; §6 closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.linalg import expm

import slowsde_jax  # noqa: F401
from slowsde_jax import geometry as G
from slowsde_jax import problems

D = 6
TOL = 1e-10


def random_case(seed, m, full_S):
    """H = A A^T of rank m (rows of J = A^T span range H), an SPD Sigma, and S diagonal or SPD."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(D, m))
    B = rng.normal(size=(D, D))
    Sigma = B @ B.T / D + 0.1 * np.eye(D)
    if full_S:
        C = rng.normal(size=(D, D))
        S = C @ C.T / D + 0.5 * np.eye(D)
    else:
        S = rng.uniform(0.3, 3.0, size=D)
    return jnp.asarray(A @ A.T), jnp.asarray(A.T), jnp.asarray(Sigma), jnp.asarray(S)


CASES = [(seed, m, full) for seed, m in ((0, 1), (1, 2), (2, 4)) for full in (False, True)]


def Smat(S):
    return jnp.diag(S) if S.ndim == 1 else S


@pytest.mark.parametrize("seed,m,full_S", CASES)
def test_projection_jacobian_identities(seed, m, full_S):
    H, J, _, S = random_case(seed, m, full_S)
    P = G.projection_jacobian(H, S)
    SM = Smat(S)
    assert G.numerical_rank(H, S) == m
    np.testing.assert_allclose(P @ P, P, atol=TOL)
    np.testing.assert_allclose(J @ P, 0, atol=TOL)
    np.testing.assert_allclose(P @ SM @ J.T, 0, atol=TOL)
    # the two other closed forms and the least-squares form
    np.testing.assert_allclose(P, jnp.eye(D) - SM @ H @ jnp.linalg.pinv(H @ SM @ H, hermitian=True) @ H, atol=TOL)
    np.testing.assert_allclose(P, G.ls_projection_jacobian(J, jnp.ones(m), S), atol=TOL)
    np.testing.assert_allclose(P, jnp.eye(D) - SM @ J.T @ jnp.linalg.solve(J @ SM @ J.T, J), atol=TOL)
    # the long-time limit of exp(-t S H): the slowest normal mode has decayed by e^-60
    lam = np.linalg.eigvals(np.asarray(SM @ H)).real
    t = 60.0 / np.min(lam[lam > 1e-8 * lam.max()])
    np.testing.assert_allclose(P, expm(-t * SM @ H), atol=1e-9)
    np.testing.assert_allclose(G.projection_jacobian(H, S, rank=m), P, atol=TOL)


@pytest.mark.parametrize("seed,m,full_S", CASES)
def test_sigma_diamond_solves_the_lyapunov_equation(seed, m, full_S):
    H, J, Sigma, S = random_case(seed, m, full_S)
    P, SM = G.projection_jacobian(H, S), Smat(S)
    Spar = G.sigma_parallel(H, Sigma, S)
    X = G.sigma_diamond(H, Sigma, S)
    np.testing.assert_allclose(Spar, P @ SM @ Sigma @ SM @ P.T, atol=TOL)
    np.testing.assert_allclose(X, X.T, atol=TOL)
    np.testing.assert_allclose(SM @ H @ X + X @ H @ SM, SM @ Sigma @ SM - Spar, atol=1e-9)
    np.testing.assert_allclose(P @ X @ P.T, 0, atol=TOL)


@pytest.mark.parametrize("seed,m,full_S", CASES)
def test_label_noise_covariance_objects(seed, m, full_S):
    H, _, _, S = random_case(seed, m, full_S)
    alpha = 0.37
    P, SM = G.projection_jacobian(H, S), Smat(S)
    np.testing.assert_allclose(G.sigma_parallel(H, alpha * H, S), 0, atol=TOL)
    X = G.sigma_diamond(H, alpha * H, S)
    np.testing.assert_allclose(X, alpha / 2 * (SM - P @ SM), atol=TOL)
    np.testing.assert_allclose(jnp.vdot(H, X), alpha / 2 * jnp.trace(SM @ H), rtol=1e-10)


def test_identity_preconditioner_gives_the_sgd_objects():
    H, _, Sigma, _ = random_case(3, 2, False)
    P = G.projection_jacobian(H, jnp.ones(D))
    np.testing.assert_allclose(P, P.T, atol=TOL)  # orthogonal projection onto ker H
    np.testing.assert_allclose(P, jnp.eye(D) - H @ jnp.linalg.pinv(H, hermitian=True), atol=TOL)
    np.testing.assert_allclose(G.sigma_parallel(H, Sigma, jnp.ones(D)), P @ Sigma @ P, atol=TOL)
    X = G.sigma_diamond(H, Sigma, jnp.ones(D))
    np.testing.assert_allclose(X, G.sigma_diamond(H, Sigma, jnp.eye(D)), atol=TOL)
    np.testing.assert_allclose(H @ X + X @ H, Sigma - P @ Sigma @ P, atol=1e-9)  # Gu et al.'s Sigma_diamond


def nonpoly_loss(theta):
    B = jnp.asarray(np.random.default_rng(5).normal(size=(4, D)))
    return jnp.sum(jnp.log(jnp.cosh(B @ theta))) + jnp.exp(0.3 * jnp.sum(theta)) + jnp.sum(jnp.sin(theta) * theta**2)


@pytest.mark.slow
def test_third_derivative_contraction_against_finite_differences():
    rng = np.random.default_rng(1)
    theta = jnp.asarray(rng.normal(size=D) * 0.5)
    Mh = rng.normal(size=(D, D))
    M = jnp.asarray(Mh + Mh.T)
    got = G.third_derivative_contraction(nonpoly_loss, theta, M)
    hess = jax.jit(jax.hessian(nonpoly_loss))
    h = 1e-5
    fd = np.array([(jnp.vdot(hess(theta + h * e), M) - jnp.vdot(hess(theta - h * e), M)) / (2 * h) for e in jnp.eye(D)])
    np.testing.assert_allclose(got, fd, rtol=1e-7, atol=1e-7)
    # low-rank and diagonal paths agree with the dense one
    Gm = jnp.asarray(rng.normal(size=(D, 3)))
    w = jnp.asarray([0.5, -1.0, 2.0])
    np.testing.assert_allclose(G.third_derivative_contraction(nonpoly_loss, theta, G=Gm, weights=w),
                               G.third_derivative_contraction(nonpoly_loss, theta, Gm @ jnp.diag(w) @ Gm.T), rtol=1e-10)
    dg = jnp.asarray(rng.uniform(0.1, 2.0, size=D))
    np.testing.assert_allclose(G.third_derivative_contraction(nonpoly_loss, theta, diag=dg),
                               G.third_derivative_contraction(nonpoly_loss, theta, jnp.diag(dg)), rtol=1e-10)


def diag_net_on_manifold(d=5, n=3, seed=0, a=0.2):
    prob = problems.diagonal_net(d=d, n=n, k=2, key=seed, features="gaussian", n_test=10)
    Z = np.asarray(prob.Z)
    null = np.linalg.svd(Z)[2][n:].T
    w = np.asarray(prob.w_star) + null @ np.random.default_rng(seed).normal(size=null.shape[1])
    x = np.concatenate([np.sqrt(np.maximum(w, 0) + a), np.sqrt(np.maximum(-w, 0) + a)])
    x[:d] *= np.where(np.arange(d) % 2, -1, 1)
    return prob, jnp.asarray(x)


@pytest.mark.slow
def test_structured_least_squares_path_agrees_with_dense():
    prob, x = diag_net_on_manifold()
    w = prob.sample_weights()
    H = jax.hessian(prob.loss)(x)
    J = prob.least_squares().jacobian(x)
    S = jnp.asarray(np.random.default_rng(2).uniform(0.2, 2.0, size=x.size))
    P = G.projection_jacobian(H, S, rank=3)
    np.testing.assert_allclose(G.ls_projection_jacobian(J, w, S), P, atol=TOL)
    for M in (jnp.diag(S), jnp.asarray(np.cov(np.random.default_rng(3).normal(size=(x.size, 30))))):
        dense = P @ (S * G.third_derivative_contraction(prob.loss, x, M))
        structured = P @ (S * G.ls_third_derivative_tangent(prob.least_squares(), w, x, M @ J.T))
        np.testing.assert_allclose(structured, dense, rtol=1e-9, atol=1e-11)
    alpha = 0.25 / 3
    np.testing.assert_allclose(G.label_noise_drift(prob.loss, x, S, alpha, least_squares=prob.least_squares()),
                               G.label_noise_drift(prob.loss, x, S, alpha), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_masked_samples_drop_out_of_the_structured_path():
    prob, x = diag_net_on_manifold(n=3)
    bigger = problems.diagonal_net(d=5, n=3, k=2, key=0, features="gaussian", n_test=10)
    assert np.allclose(bigger.Z, prob.Z)
    # n_train = 2 of 3: the point stays on the smaller manifold; J's third row must not count
    small = prob.with_n_train(2)
    w = small.sample_weights()
    J = small.least_squares().jacobian(x)
    S = jnp.ones(x.size)
    np.testing.assert_allclose(G.ls_projection_jacobian(J, w, S), G.projection_jacobian(jax.hessian(small.loss)(x), S, rank=2), atol=TOL)


def test_diagonal_net_drift_closed_forms():
    """§6: -(alpha/4) dPhi_S S grad^3 L[S] = -1/2 dPhi_S (1/x) at the Adam equilibrium (eps = 0), and
    -2 alpha P_I (x * s_bar) for S = I."""
    prob, x = diag_net_on_manifold(d=6, n=3, seed=4)
    w = prob.sample_weights()
    alpha = 0.25 / 3
    s = np.asarray(prob.feature_scales())
    sbar = jnp.asarray(np.concatenate([s, s]))
    J = prob.least_squares().jacobian(x)
    v_eq = alpha * prob.hessian_diag(x)  # V(alpha H) for Adam
    np.testing.assert_allclose(v_eq, 4 * alpha * x**2 * sbar, rtol=1e-12)
    S_adam = 1.0 / jnp.sqrt(v_eq)
    drift = G.label_noise_drift(prob.loss, x, S_adam, alpha, least_squares=prob.least_squares())
    np.testing.assert_allclose(drift, -0.5 * G.ls_apply_projection(J, w, S_adam, 1.0 / x), rtol=1e-10, atol=1e-12)
    ones = jnp.ones(x.size)
    drift_sgd = G.label_noise_drift(prob.loss, x, ones, alpha, least_squares=prob.least_squares())
    np.testing.assert_allclose(drift_sgd, -2 * alpha * G.ls_apply_projection(J, w, ones, x * sbar), rtol=1e-10, atol=1e-12)
    # sharpness closed forms
    u, v = np.abs(np.asarray(x[:6])), np.abs(np.asarray(x[6:]))
    hd = prob.hessian_diag(x)
    lam = 0.3
    np.testing.assert_allclose(G.sharpness(hd, "trace_diag_pow", lam=lam),
                               4 ** (1 - lam) * np.sum(s ** (1 - lam) * (u ** (2 - 2 * lam) + v ** (2 - 2 * lam))), rtol=1e-12)
    np.testing.assert_allclose(G.sharpness(hd, "trace_sqrt_diag"), 2 * np.sum(np.sqrt(s) * (u + v)), rtol=1e-12)
    np.testing.assert_allclose(G.sharpness(jax.hessian(prob.loss)(x), "trace"), 4 * np.sum(s * (u**2 + v**2)), rtol=1e-12)


def test_block_sharpness():
    H = jnp.asarray(np.diag([1.0, 4.0, 9.0, 16.0]))
    np.testing.assert_allclose(G.sharpness(H, "block", blocks=[0, 1, 2, 3]), G.sharpness(H, "trace_sqrt_diag"))
    np.testing.assert_allclose(G.sharpness(H, "block", blocks=[0, 0, 0, 0]), np.sqrt(4 * 30.0))
    np.testing.assert_allclose(G.sharpness(H, "block", blocks=[0, 0, 1, 1]), np.sqrt(2 * 5.0) + np.sqrt(2 * 25.0))
    with pytest.raises(slowsde_jax.ConfigError, match="kind"):
        G.sharpness(H, "bogus")


@pytest.mark.slow
def test_project_lands_on_gamma_and_matches_a_long_preconditioned_gradient_descent():
    prob, x = diag_net_on_manifold(d=4, n=2, seed=1)
    theta = x + 0.05 * jnp.asarray(np.random.default_rng(0).normal(size=x.size))
    S = jnp.asarray(np.random.default_rng(1).uniform(0.5, 2.0, size=x.size))
    z = G.project(prob.loss, theta, S)
    assert float(jnp.linalg.norm(S * jax.grad(prob.loss)(z))) < 1e-10
    assert float(jnp.max(jnp.abs(prob.residuals(z)))) < 1e-9

    @jax.jit
    def gd(h):
        return jax.lax.fori_loop(0, int(40 / 0.004), lambda i, t: t - h * S * jax.grad(prob.loss)(t), theta)

    # Richardson extrapolation of GD (error O(h)) to the flow limit
    flow = 2 * gd(0.002) - gd(0.004)  # 10^4 steps: both have converged (s = 20 and s = 40)
    np.testing.assert_allclose(z, flow, atol=1e-6)
    np.testing.assert_allclose(G.project(prob.loss, theta, S, least_squares=prob.least_squares()), z, atol=1e-12)
    # batched points with per-point diagonal S
    zb = G.project(prob.loss, jnp.stack([theta, theta]), jnp.stack([S, S]))
    np.testing.assert_allclose(zb[1], z, atol=1e-12)


def test_project_reports_non_convergence():
    with pytest.raises(G.ProjectionError, match="did not converge"):
        G.project(lambda t: jnp.sum(t), jnp.ones(3), jnp.ones(3), max_steps=50)  # no minimizer at all


@pytest.mark.parametrize("with_residuals", [True, False])
def test_project_from_a_far_start_converges_by_the_newton_finish(with_residuals):
    """From (5, 3) on the hyperbola the flow stops short of its gradient target; the Newton finish decides."""
    hyp = problems.hyperbola()
    ls = hyp.least_squares() if with_residuals else None
    z = G.project(hyp.loss, jnp.array([5.0, 3.0]), jnp.ones(2), least_squares=ls, max_steps=2000)
    assert abs(float(z[0] ** 2 - z[1] ** 2) - 1.0) < 1e-12
    ref = G.project(hyp.loss, jnp.array([5.0, 3.0]), jnp.ones(2), least_squares=hyp.least_squares())
    np.testing.assert_allclose(z, ref, atol=1e-9)


def test_projection_error_names_its_cause():
    hyp = problems.hyperbola()
    with pytest.raises(G.ProjectionError, match="preconditioner S is not finite"):
        G.project(hyp.loss, jnp.array([1.5, 1.0]), jnp.array([jnp.inf, 1.0]))
    with pytest.raises(G.ProjectionError, match=r"step budget \(max_steps\) ran out.*max_steps=3"):
        G.project(hyp.loss, jnp.array([50.0, 3.0]), jnp.ones(2), max_steps=3, least_squares=hyp.least_squares())
    with pytest.raises(G.ProjectionError, match="Newton finish did not settle"):
        G.project(lambda t: jnp.sum(t), jnp.ones(3), jnp.ones(3), max_steps=50)
    with pytest.raises(slowsde_jax.ConfigError, match="^S:"):
        G.project(hyp.loss, jnp.array([1.5, 1.0]), jnp.ones(3))


def test_newton_retraction_without_residuals_moves_along_S_normals_only():
    """Off Gamma the Hessian's tangent eigenvalues are O(distance): the step must not invert them. On the
    codimension-1 surface abc = 1, a point displaced along S * normal comes back exactly to where it left."""
    loss = lambda t: 0.5 * (t[0] * t[1] * t[2] - 1.0) ** 2  # noqa: E731
    zeta = jnp.array([1.5, 1.0, 1 / 1.5])
    S = jnp.array([0.5, 2.0, 3.0])
    n = jnp.array([zeta[1] * zeta[2], zeta[0] * zeta[2], zeta[0] * zeta[1]])  # normal of Gamma at zeta
    x = zeta + 1e-2 * S * n
    N = G.normal_frame(G.hessian(loss, zeta), S)
    for _ in range(4):
        x = G.newton_retraction_step(loss, x, S, normals=N)
    np.testing.assert_allclose(x, zeta, atol=1e-13)
