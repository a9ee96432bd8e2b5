"""Problems: losses, Hessian diagonals and observables against closed forms (math §6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax
from slowsde_jax import LeastSquares, geometry, problems


def point_on_manifold(prob, key, a=0.2):
    """x = [sqrt(w+ + a); sqrt(w- + a)] with w = w* + a random null-space vector of Z: on Gamma."""
    Z = np.asarray(prob.Z)
    _, _, Vt = np.linalg.svd(Z)
    null = Vt[Z.shape[0]:].T
    w = np.asarray(prob.w_star) + null @ np.asarray(jax.random.normal(key, (null.shape[1],)))
    u = np.sqrt(np.maximum(w, 0) + a) * np.sign(np.asarray(jax.random.normal(jax.random.fold_in(key, 1), w.shape)))
    v = np.sqrt(np.maximum(-w, 0) + a)
    return jnp.asarray(np.concatenate([u, v]))


def test_diagonal_net_data_follows_the_paper():
    prob = problems.diagonal_net(d=50, n=20, k=5, key=7, n_test=10_000)
    w = np.asarray(prob.w_star)
    assert np.count_nonzero(w) == 5 and np.all(np.abs(w[w != 0]) >= 0.01) and np.all(np.abs(w) < 1)
    assert set(np.unique(np.asarray(prob.Z))) == {-1.0, 1.0}
    assert prob.Z_test.shape == (10_000, 50) and prob.dim == 100
    np.testing.assert_allclose(prob.y, prob.Z @ prob.w_star)
    x0 = np.asarray(prob.init(jax.random.PRNGKey(0)))
    np.testing.assert_allclose(x0[:50], x0[50:])  # x0 = 0.1 [g; g], so w0 = 0
    assert 0.05 < np.std(x0) / 0.1 < 2
    assert prob.Z.dtype == jnp.float64


def test_diagonal_net_closed_forms_on_the_manifold():
    prob = problems.diagonal_net(d=6, n=3, k=2, key=1, features="gaussian", n_test=100)
    x = point_on_manifold(prob, jax.random.PRNGKey(2))
    assert float(prob.loss(x)) < 1e-26
    u, v = np.asarray(x[:6]), np.asarray(x[6:])
    s = np.mean(np.asarray(prob.Z) ** 2, axis=0)
    H = np.asarray(jax.hessian(prob.loss)(x))
    np.testing.assert_allclose(np.diag(H), 4 * np.asarray(x) ** 2 * np.concatenate([s, s]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(prob.hessian_diag(x)), np.diag(H), rtol=1e-12, atol=1e-14)
    obs = prob.observables(x)
    np.testing.assert_allclose(float(obs["trace_H"]), 4 * np.sum(s * (u**2 + v**2)), rtol=1e-12)
    np.testing.assert_allclose(float(obs["trace_sqrt_diag_H"]), 2 * np.sum(np.sqrt(s) * (np.abs(u) + np.abs(v))), rtol=1e-12)
    w = u**2 - v**2
    np.testing.assert_allclose(float(obs["w_error"]), np.linalg.norm(w - np.asarray(prob.w_star)), rtol=1e-12)
    Zt = np.asarray(prob.Z_test)
    np.testing.assert_allclose(float(obs["test_loss"]), 0.5 * np.mean((Zt @ w - Zt @ np.asarray(prob.w_star)) ** 2), rtol=1e-12)


def test_diagonal_net_hessian_diag_off_the_manifold():
    prob = problems.diagonal_net(d=5, n=4, k=2, key=3, n_test=10)
    x = jax.random.normal(jax.random.PRNGKey(0), (10,))
    np.testing.assert_allclose(prob.hessian_diag(x), jnp.diag(jax.hessian(prob.loss)(x)), rtol=1e-12, atol=1e-14)


def test_n_train_masks_samples():
    prob = problems.diagonal_net(d=5, n=8, k=2, key=3, n_test=10)
    x = jax.random.normal(jax.random.PRNGKey(0), (10,))
    small = prob.with_n_train(5)
    r = np.asarray(prob.residuals(x))
    np.testing.assert_allclose(float(small.loss(x)), 0.5 * np.mean(r[:5] ** 2), rtol=1e-13)
    np.testing.assert_allclose(float(prob.loss(x)), 0.5 * np.mean(r**2), rtol=1e-13)
    with pytest.raises(slowsde_jax.ConfigError, match="n_train"):
        prob.with_n_train(9)


def test_hyperbola():
    prob = problems.hyperbola(y=1.0)
    th = prob.init(None)
    np.testing.assert_allclose(th, [np.sqrt(2), 1.0])
    assert float(prob.loss(th)) < 1e-30
    x = jnp.array([1.3, 0.4])
    np.testing.assert_allclose(float(prob.loss(x)), 0.5 * (1.3**2 - 0.4**2 - 1) ** 2)
    np.testing.assert_allclose(prob.hessian_diag(x), jnp.diag(jax.hessian(prob.loss)(x)), rtol=1e-13)


@pytest.mark.slow
@pytest.mark.parametrize("measurement", ["entries", "gaussian"])
def test_matrix_factorization(measurement):
    prob = problems.matrix_factorization(d1=4, d2=3, rank=1, n=8, key=0, measurement=measurement)
    assert prob.dim == (4 + 3) * 3
    th = prob.init(jax.random.PRNGKey(1))
    U, V = prob.factors(th)
    np.testing.assert_allclose(prob.matrix(th), U @ V.T)
    np.testing.assert_allclose(prob.hessian_diag(th), jnp.diag(jax.hessian(prob.loss)(th)), rtol=1e-12, atol=1e-14)
    assert np.linalg.matrix_rank(np.asarray(prob.W_star)) == 1
    # the ground truth's factors interpolate the observations
    Ws = np.asarray(prob.W_star)
    if measurement == "entries":
        np.testing.assert_allclose(np.asarray(prob.y), Ws[np.asarray(prob.rows), np.asarray(prob.cols)])
    obs = prob.observables(th)
    np.testing.assert_allclose(float(obs["test_error"]), np.mean((U @ V.T - Ws) ** 2))


def test_from_loss_on_a_pytree():
    X = jnp.asarray(np.random.default_rng(0).normal(size=(5, 3)))
    y = jnp.arange(5.0)

    def residuals(p):
        return X @ p["w"] + p["b"] - y

    prob = problems.from_loss(lambda p: 0.5 * jnp.mean(residuals(p) ** 2), {"w": jnp.zeros(3), "b": jnp.zeros(())},
                              residuals=residuals, observables=lambda p: {"b": p["b"]})
    assert prob.dim == 4
    th = jnp.array([0.1, 0.2, 0.3, 0.5])  # ravel order: b, w
    np.testing.assert_allclose(float(prob.loss(th)), 0.5 * np.mean((X @ th[1:] + th[0] - y) ** 2))
    np.testing.assert_allclose(prob.sample_weights(), np.full(5, 0.2))
    assert set(prob.observables(th)) == {"loss", "b"}


def test_abstract_final_hierarchy():
    """Abstract classes cannot be built, final classes cannot be subclassed, least squares is a type question."""
    with pytest.raises(TypeError):
        problems.AbstractProblem()
    with pytest.raises(TypeError, match="final"):
        class _Sub(problems.DiagonalNet):
            pass
    hyp = problems.hyperbola()
    assert isinstance(hyp, problems.AbstractRegression) and isinstance(hyp, problems.AbstractLeastSquares)
    plain = problems.from_loss(lambda t: jnp.sum(t**2), jnp.ones(2))
    per_sample = problems.from_loss(lambda t: jnp.mean(t**2), jnp.ones(2), per_sample_losses=lambda t: t**2)
    lsq = problems.from_loss(lambda t: 0.5 * jnp.mean(t**2), jnp.ones(2), residuals=lambda t: t)
    assert type(plain) is type(per_sample) is problems.FromLoss and type(lsq) is problems.FromResiduals
    assert not isinstance(plain, problems.AbstractLeastSquares) and isinstance(lsq, problems.AbstractLeastSquares)
    assert plain.least_squares() is None and per_sample.least_squares() is None
    ls = lsq.least_squares()
    assert isinstance(ls, slowsde_jax.LeastSquares) and ls.quadratic is None and ls.jacobian_fn is None
    np.testing.assert_allclose(ls.residuals(jnp.array([1.0, 2.0])), [1.0, 2.0])
    np.testing.assert_allclose(ls.weights, [0.5, 0.5])
    assert hyp.least_squares().quadratic is not None  # declared: r = B (x * x) - y
    assert problems.matrix_factorization(d1=3, d2=3, n=4).least_squares().jacobian_fn is not None
    np.testing.assert_allclose(per_sample.per_sample_losses(jnp.array([1.0, 2.0])), [1.0, 4.0])
    with pytest.raises(slowsde_jax.ConfigError, match="per_sample_losses"):
        problems.from_loss(lambda t: 0.0, jnp.ones(2), residuals=lambda t: t, per_sample_losses=lambda t: t)


@pytest.mark.parametrize("measurement", ["entries", "gaussian"])
def test_factorization_residual_jacobian_is_the_autodiff_one(measurement):
    p = problems.matrix_factorization(d1=4, d2=3, rank=2, n=7, key=0, measurement=measurement)
    theta = p.init(jax.random.PRNGKey(1))
    np.testing.assert_allclose(p.residual_jacobian(theta), jax.jacrev(p.residuals)(theta), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(p.least_squares().jacobian(theta), p.residual_jacobian(theta))


def _gn_trace_hessian_by_autodiff(residuals, w, theta, S):
    """grad^2 of sum_n w_n sum_i S_i (d_i r_n)^2 at fixed S, by jax.hessian through jacrev."""
    def phi(t):
        J = jax.jacrev(residuals)(t)
        return jnp.sum(w[:, None] * J * J * S[None, :])
    return jax.jit(jax.hessian(phi))(theta)


@pytest.mark.parametrize("measurement", ["entries", "gaussian"])
def test_factorization_gn_trace_hessian_is_the_autodiff_one(measurement):
    """The closed form (block diagonal in the factor columns; diagonal for entries), with unequal weights and
    a masked sample, against jax.hessian; geometry.ls_gn_trace_hessian uses it."""
    p = problems.matrix_factorization(d1=4, d2=3, rank=2, n=7, key=0, measurement=measurement, n_train=6)
    theta = p.init(jax.random.PRNGKey(1))
    S = jnp.exp(jax.random.normal(jax.random.PRNGKey(2), theta.shape))
    w = p.sample_weights() * jnp.linspace(0.5, 1.5, 7)
    expected = _gn_trace_hessian_by_autodiff(p.residuals, w, theta, S)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(p.gn_trace_hessian(theta, S, w), expected, rtol=0, atol=1e-13)
    np.testing.assert_array_equal(geometry.ls_gn_trace_hessian(p.least_squares(), w, theta, S), p.gn_trace_hessian(theta, S, w))


@pytest.mark.parametrize("measurement", ["entries", "gaussian"])
def test_factorization_residual_hessian_sum_is_the_autodiff_one(measurement):
    """sum_i w_i Hess r_i a_i in closed form against jax's residual Hessians; ls_third_derivative_tangent
    (the label-noise drift's t3) uses it and equals its autodiff path."""
    p = problems.matrix_factorization(d1=4, d2=3, rank=2, n=7, key=0, measurement=measurement, n_train=6)
    theta = p.init(jax.random.PRNGKey(1))
    w = p.sample_weights() * jnp.linspace(0.5, 1.5, 7)
    a = jax.random.normal(jax.random.PRNGKey(2), (p.dim, 7))
    expected = jnp.einsum("n,nij,jn->i", w, jax.jit(jax.jacfwd(jax.jacrev(p.residuals)))(theta), a)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(p.residual_hessian_sum(theta, w, a), expected, rtol=0, atol=1e-14)
    generic = geometry.ls_third_derivative_tangent(LeastSquares(p.residuals), w, theta, a)  # no closed forms
    np.testing.assert_allclose(geometry.ls_third_derivative_tangent(p.least_squares(), w, theta, a), generic,
                               rtol=0, atol=1e-14)


def test_gn_trace_hessian_of_quadratic_and_generic_residuals():
    """The quadratic-residual branch (diagonal net) and the autodiff branch (any residuals; cubic here, where
    phi's Hessian has the third-derivative term too) against jax.hessian."""
    p = problems.diagonal_net(d=5, n=3, k=1, key=0)
    theta = p.init(jax.random.PRNGKey(1)) + 0.3
    S = jnp.exp(jax.random.normal(jax.random.PRNGKey(2), theta.shape))
    w = jnp.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(jax.jit(lambda *a: geometry.ls_gn_trace_hessian(p.least_squares(), *a))(w, theta, S),
                               _gn_trace_hessian_by_autodiff(p.residuals, w, theta, S), rtol=1e-13, atol=1e-13)

    def cubic(t):
        return jnp.array([t[0] * t[1] * t[2] - 1.0, t[0] ** 3 + t[1] - 2.0])

    theta = jnp.array([1.1, 0.7, -0.4])
    S = jnp.array([0.5, 2.0, 1.5])
    w = jnp.array([0.5, 1.5])
    np.testing.assert_allclose(jax.jit(lambda *a: geometry.ls_gn_trace_hessian(LeastSquares(cubic), *a))(w, theta, S),
                               _gn_trace_hessian_by_autodiff(cubic, w, theta, S), rtol=1e-13, atol=1e-13)
