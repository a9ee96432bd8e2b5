"""Each noise model's exact covariance (and mean) against the empirical moments of its samples."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax  # noqa: F401
from slowsde_jax import noise, problems

N_SAMPLES = 200_000
PROBLEM = problems.diagonal_net(d=3, n=5, k=1, key=3, features="gaussian", n_test=10)
THETA = jnp.asarray([0.7, -0.4, 0.3, 0.2, 0.5, -0.6])  # off the manifold: residuals are nonzero


def _assert_moments(nz, problem=PROBLEM, theta=THETA, n=N_SAMPLES, z_max=5.0):
    keys = jax.random.split(jax.random.PRNGKey(42), n)
    G = np.asarray(jax.jit(jax.vmap(lambda k: nz.grad(problem, theta, k)))(keys))
    mean_want = np.asarray(jax.grad(problem.loss)(theta))
    cov_want = np.asarray(nz.covariance(problem, theta))
    # mean: z-scores from the exact covariance
    se_mean = np.sqrt(np.maximum(np.diag(cov_want), 1e-300) / n)
    assert np.all(np.abs(G.mean(0) - mean_want) <= z_max * se_mean + 1e-10)
    # covariance: z-scores from the empirical variance of the centred products
    C = G - mean_want
    prods = C[:, :, None] * C[:, None, :]
    emp, se = prods.mean(0), prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(emp - cov_want) <= z_max * se + 1e-10), np.max(np.abs(emp - cov_want) / (se + 1e-300))
    np.testing.assert_allclose(np.asarray(nz.covariance_diag(problem, theta)), np.diag(cov_want), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(cov_want, cov_want.T, atol=1e-15)
    return cov_want


@pytest.mark.parametrize("nz", [
    noise.label_noise(0.5), noise.label_noise(0.3, distribution="gaussian"),
    noise.label_noise(0.5, batch_size=2), noise.minibatch(2),
    noise.gaussian(np.array([[0.49, 0.1, 0, 0, 0, 0], [0.1, 0.09, 0, 0, 0, 0], [0, 0, 0.2, 0, 0, 0],
                             [0, 0, 0, 0.1, 0, 0], [0, 0, 0, 0, 0.0, 0], [0, 0, 0, 0, 0, 0.3]])),
    noise.gaussian(lambda th: jnp.diag(0.1 + th**2)),
], ids=["label", "label_gauss", "label_minibatch", "minibatch", "gaussian_const", "gaussian_fn"])
@pytest.mark.slow
def test_covariance_matches_samples(nz):
    _assert_moments(nz)


def test_label_noise_covariance_is_alpha_H_on_the_manifold():
    prob = problems.diagonal_net(d=4, n=3, k=2, key=0, n_test=10)
    # a point on Gamma: w = w* (x = [sqrt(w+ + a); sqrt(w- + a)])
    w = np.asarray(prob.w_star)
    a = 0.3
    theta = jnp.asarray(np.concatenate([np.sqrt(np.maximum(w, 0) + a), np.sqrt(np.maximum(-w, 0) + a)]))
    assert float(prob.loss(theta)) < 1e-28
    H = np.asarray(jax.hessian(prob.loss)(theta))
    for nz, alpha in ((noise.label_noise(0.5), 0.25 / 3), (noise.label_noise(0.5, batch_size=2), 0.25 / 2)):
        np.testing.assert_allclose(float(nz.label_noise_alpha(prob)), alpha, rtol=1e-14)
        np.testing.assert_allclose(np.asarray(nz.covariance(prob, theta)), alpha * H, rtol=1e-10, atol=1e-13)


def test_gaussian_covariance_must_be_symmetric_psd():
    with pytest.raises(slowsde_jax.ConfigError, match="cov: must be symmetric"):
        noise.gaussian([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(slowsde_jax.ConfigError, match="positive semi-definite"):
        noise.gaussian([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(slowsde_jax.ConfigError, match="delta"):
        noise.label_noise(-1.0)


def test_each_noise_checks_its_problem():
    from slowsde_jax.inputs import check_compatible

    plain = problems.from_loss(lambda t: jnp.sum(t**2), jnp.ones(2))
    with pytest.raises(slowsde_jax.ConfigError, match="noise: label noise needs per-sample residuals"):
        noise.label_noise(0.5).check(plain)
    with pytest.raises(slowsde_jax.ConfigError, match="noise: minibatch noise needs per-sample losses"):
        noise.minibatch(2).check(plain)
    with pytest.raises(slowsde_jax.ConfigError, match="cov: must be \\(2, 2\\)"):
        noise.gaussian([1.0, 1.0, 1.0]).check(plain)
    noise.gaussian([1.0, 1.0]).check(plain)
    with pytest.raises(slowsde_jax.ConfigError, match="blocks"):
        check_compatible(plain, noise.gaussian([1.0, 1.0]), slowsde_jax.adam_mini(blocks=[0, 1, 2]))
    with pytest.raises(TypeError, match="final"):
        class _Sub(noise.LabelNoise):
            pass
    with pytest.raises(TypeError):
        noise.AbstractNoise()


def test_minibatch_covariance_diagonal_is_never_negative():
    """Where the per-sample gradients agree on a coordinate, the diagonal is exactly 0, not -1e-17 (which
    made S(v) NaN at the slow SDE's start)."""
    import jax

    from slowsde_jax import problems

    p = problems.diagonal_net(d=6, n=3, k=1, n_test=20)
    nz = noise.minibatch(1)
    for seed in range(5):
        th = p.init(jax.random.PRNGKey(seed))
        diag = np.asarray(nz.covariance_diag(p, th))
        assert np.all(diag >= 0)
        np.testing.assert_allclose(diag, np.diag(np.asarray(nz.covariance(p, th))), atol=1e-15)


def test_a_noise_cannot_be_built_invalid():
    """The invariants live in the classes: built directly or by dataclasses.replace (how a swept delta is
    checked), a noise is checked as the factories check it."""
    import dataclasses

    from slowsde_jax import ConfigError

    with pytest.raises(ConfigError, match="^delta:"):
        dataclasses.replace(noise.label_noise(0.5), delta=jnp.asarray(-0.1))
    with pytest.raises(ConfigError, match="^distribution:"):
        noise.LabelNoise(delta=jnp.asarray(0.5), distribution="laplace")
    with pytest.raises(ConfigError, match="^batch_size:"):
        noise.Minibatch(batch_size=0)


def test_a_regression_cannot_be_built_with_a_bad_n_train():
    import dataclasses

    from slowsde_jax import ConfigError

    prob = problems.diagonal_net(d=4, n=3, k=1, n_test=5)
    for bad in (0.0, 2.5, 4.0, float("nan")):
        with pytest.raises(ConfigError, match=r"^n_train: must be a whole number of samples in \[1, 3\]"):
            dataclasses.replace(prob, n_active=jnp.asarray(bad))
    assert float(dataclasses.replace(prob, n_active=jnp.asarray(2.0)).n_active) == 2.0
