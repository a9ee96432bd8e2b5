"""The least-squares slow-SDE coefficients in sample space (geometry.ls_slow_sde_coefficients) against the
dense path (Hessian, sigma_diamond, projection_jacobian, third_derivative_contraction), and the noise
factors G (G G^T = Sigma) they take."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax  # noqa: F401
from slowsde_jax import geometry as G
from slowsde_jax.geometry.dense import _apply_S
from slowsde_jax import LeastSquares, noise, problems

pytestmark = pytest.mark.slow  # the science tier: pytest -m slow

RTOL = 1e-10


def rel(a, b):
    """max |a - b| / max |b|."""
    a, b = np.asarray(a), np.asarray(b)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def dense_coefficients(loss, x, S, Sigma, rank=None):
    """(drift, Sigma_par) as sde.slow_sde_coefficients computes them (with S diagonal or a matrix)."""
    H = jax.hessian(loss)(x)
    P = G.projection_jacobian(H, S, rank)
    X = G.sigma_diamond(H, Sigma, S, rank)
    t3 = G.third_derivative_contraction(loss, x, X)
    return -0.5 * P @ _apply_S(S, t3), G.sigma_parallel(H, Sigma, S, rank)


def check(loss, ls, x, S, Gm, rank=None):
    w = ls.weights
    Sigma = jnp.diag(Gm**2) if Gm.ndim == 1 else Gm @ Gm.T
    drift_d, Spar_d = dense_coefficients(loss, x, S, Sigma, rank)
    drift, A = G.ls_slow_sde_coefficients(ls, x, S, Gm, rank=rank)
    assert A.shape == (x.size, Gm.shape[-1] if Gm.ndim == 2 else x.size)
    assert rel(drift, drift_d) < RTOL, rel(drift, drift_d)
    assert rel(A @ A.T, Spar_d) < RTOL, rel(A @ A.T, Spar_d)
    # Sigma_diamond J_w^T itself (the derivation), against the dense Sigma_diamond
    J = ls.jacobian(x)
    MJt, _ = G.ls_sigma_diamond_jt(J, w, S, Gm, rank=rank)
    X = G.sigma_diamond(jax.hessian(loss)(x), Sigma, S, rank)
    ref = X @ (jnp.sqrt(w)[:, None] * J).T
    assert rel(MJt, ref) < RTOL, rel(MJt, ref)
    return drift


# ----- problems -----------------------------------------------------------------------------------------------
def diag_net_case(seed, features="gaussian", n_train=None):
    """The diagonal net d = 8, n = 5, k = 2 at a point of Gamma (projected by the loss-only flow)."""
    prob = problems.diagonal_net(d=8, n=5, k=2, key=seed, features=features, n_test=10, n_train=n_train)
    rng = np.random.default_rng(seed)
    th0 = jnp.asarray(0.5 + 0.3 * rng.normal(size=prob.dim))
    x = G.project(prob.loss, th0, jnp.ones(prob.dim))
    assert float(prob.loss(x)) < 1e-26
    return prob, x, rng


def mlp_case(seed, n=5, h=4, weights="random"):
    """A one-hidden-layer tanh net with targets f(theta0), so theta0 lies on Gamma; D = 4h + 1."""
    rng = np.random.default_rng(seed)
    Xin = jnp.asarray(rng.normal(size=(n, 2)))

    def f(t):
        W1, b1, w2, b2 = t[: 2 * h].reshape(h, 2), t[2 * h: 3 * h], t[3 * h: 4 * h], t[4 * h]
        return jnp.tanh(Xin @ W1.T + b1) @ w2 + b2

    x = jnp.asarray(rng.normal(size=4 * h + 1))
    y = f(x)
    w = jnp.asarray(rng.uniform(0.5, 2.0, size=n)) if weights == "random" else jnp.full(n, 1.0 / n)
    if weights == "random":
        w = w.at[1].set(0.0)  # a masked sample

    def residuals(t):
        return f(t) - y

    def loss(t):
        return 0.5 * jnp.sum(w * residuals(t) ** 2)

    return loss, residuals, w, x, rng


def rand_S(rng, D, full=False):
    if full:
        C = rng.normal(size=(D, D))
        return jnp.asarray(C @ C.T / D + 0.5 * np.eye(D))
    return jnp.asarray(rng.uniform(0.3, 3.0, size=D))


# ----- coefficients against the dense path ---------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 2])
@pytest.mark.parametrize("K", [1, 3, 20])
def test_diag_net_matches_dense(seed, K):
    prob, x, rng = diag_net_case(seed)
    check(prob.loss, prob.least_squares(), x, rand_S(rng, prob.dim),
          jnp.asarray(rng.normal(size=(prob.dim, K))))


def test_diag_net_masked_samples_match_dense():
    # a point of Gamma of the 5-sample problem also lies on Gamma of its first 3 samples; w = 0 for the rest
    prob, x, rng = diag_net_case(3)
    small = prob.with_n_train(3)
    assert float(jnp.sum(small.sample_weights() == 0)) == 2
    check(small.loss, small.least_squares(), x, rand_S(rng, prob.dim),
          jnp.asarray(rng.normal(size=(prob.dim, 4))))


def test_rank_deficient_sample_space_matches_dense():
    # +-1 features with seed 1 draw two equal rows: J has rank 4 < n = 5; the rank rule sees it in both paths
    prob, x, rng = diag_net_case(1, features="rademacher")
    Z = np.asarray(prob.Z)
    assert np.linalg.matrix_rank(Z) == 4
    check(prob.loss, prob.least_squares(), x, rand_S(rng, prob.dim),
          jnp.asarray(rng.normal(size=(prob.dim, 3))))
    check(prob.loss, prob.least_squares(), x, rand_S(rng, prob.dim),
          jnp.asarray(rng.normal(size=(prob.dim, 3))), rank=4)


@pytest.mark.parametrize("seed", [0, 1])
def test_mlp_with_masked_and_unequal_weights_matches_dense(seed):
    loss, residuals, w, x, rng = mlp_case(seed)
    check(loss, LeastSquares(residuals, w), x, rand_S(rng, x.size), jnp.asarray(rng.normal(size=(x.size, 3))))


def test_full_spd_preconditioner_matches_dense():
    loss, residuals, w, x, rng = mlp_case(4)
    check(loss, LeastSquares(residuals, w), x, rand_S(rng, x.size, full=True), jnp.asarray(rng.normal(size=(x.size, 2))))
    prob, x, rng = diag_net_case(0)
    check(prob.loss, prob.least_squares(), x, rand_S(rng, prob.dim, full=True),
          jnp.asarray(rng.normal(size=(prob.dim, 3))))


def test_diagonal_noise_factor_matches_dense():
    prob, x, rng = diag_net_case(2)
    check(prob.loss, prob.least_squares(), x, rand_S(rng, prob.dim),
          jnp.asarray(rng.uniform(0.1, 1.0, size=prob.dim)))


def test_label_noise_factor_gives_the_label_noise_ode():
    """Sigma = alpha H (G = delta J^T W): no tangent noise and the drift of math §5, -(alpha/4) dPhi_S S grad^3 L[S]."""
    prob, x, rng = diag_net_case(0)
    w, S, nz = prob.sample_weights(), rand_S(rng, prob.dim), noise.label_noise(0.5)
    drift, A = G.ls_slow_sde_coefficients(prob.least_squares(), x, S, nz.covariance_factor(prob, x))
    alpha = nz.label_noise_alpha(prob)
    ode = G.label_noise_drift(prob.loss, x, S, alpha, least_squares=prob.least_squares())
    assert rel(drift, ode) < RTOL
    assert float(jnp.max(jnp.abs(A))) < 1e-12 * float(jnp.max(jnp.abs(nz.covariance_factor(prob, x))))


def test_jit_and_vmap_over_points():
    prob, x, rng = diag_net_case(0)
    S = jnp.asarray(rng.uniform(0.3, 3.0, size=(3, prob.dim)))
    Gm = jnp.asarray(rng.normal(size=(3, prob.dim, 2)))
    xs = jnp.stack([x, x, x])
    f = jax.jit(jax.vmap(lambda t, s, g: G.ls_slow_sde_coefficients(prob.least_squares(), t, s, g)))
    drift, A = f(xs, S, Gm)
    for i in range(3):
        d_i, A_i = G.ls_slow_sde_coefficients(prob.least_squares(), x, S[i], Gm[i])
        np.testing.assert_allclose(drift[i], d_i, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(A[i], A_i, rtol=1e-12, atol=1e-14)


# ----- noise factors ---------------------------------------------------------------------------------------------
NOISE_PROBLEM = problems.diagonal_net(d=3, n=5, k=1, key=3, features="gaussian", n_test=10)
NOISE_THETA = jnp.asarray([0.7, -0.4, 0.3, 0.2, 0.5, -0.6])  # off the manifold: residuals are nonzero


@pytest.mark.parametrize("nz", [
    noise.label_noise(0.5), noise.label_noise(0.3, distribution="gaussian"),
    noise.label_noise(0.5, batch_size=2), noise.minibatch(2),
    noise.gaussian(np.diag([0.49, 0.09, 0.2, 0.1, 0.05, 0.3]) + 0.02 * (np.eye(6, k=1) + np.eye(6, k=-1))),
    noise.gaussian(lambda th: jnp.diag(0.1 + th**2)),
], ids=["label", "label_gauss", "label_minibatch", "minibatch", "gaussian_const", "gaussian_fn"])
@pytest.mark.parametrize("n_train", [5, 3])
def test_covariance_factor_reproduces_covariance(nz, n_train):
    prob = NOISE_PROBLEM.with_n_train(n_train)
    Gf = nz.covariance_factor(prob, NOISE_THETA)
    C = nz.covariance(prob, NOISE_THETA)
    assert Gf.ndim == 2 and Gf.shape[0] == prob.dim
    np.testing.assert_allclose(Gf @ Gf.T, C, rtol=1e-12, atol=1e-14 * float(jnp.max(jnp.abs(C))))


@pytest.mark.parametrize("name", ["diagonal_net_masked", "hyperbola"])
def test_quadratic_residuals_take_the_closed_form_jacobian_and_third_derivative(name):
    """For r = B (x * x) - y, J = 2 B Diag(x) and Hess r_n = 2 Diag(B_n) replace autodiff; the same numbers
    as autodiff through a plain function (which hides the structure)."""
    if name == "hyperbola":
        prob = problems.hyperbola(y=1.0)
    else:
        prob = problems.diagonal_net(d=6, n=5, k=2, key=1, n_test=10).with_n_train(3)
    declared = prob.least_squares()
    plain = LeastSquares(declared.residuals, declared.weights)  # the same residuals, no closed forms declared
    assert declared.quadratic is not None and plain.quadratic is None
    w = declared.weights
    x = jax.random.normal(jax.random.key(2), (prob.dim,))
    np.testing.assert_allclose(declared.jacobian(x), plain.jacobian(x), rtol=1e-14, atol=1e-14)
    MJt = jax.random.normal(jax.random.key(3), (prob.dim, w.shape[0]))
    np.testing.assert_allclose(G.ls_third_derivative_tangent(declared, w, x, MJt),
                               G.ls_third_derivative_tangent(plain, w, x, MJt), rtol=1e-13, atol=1e-13)
