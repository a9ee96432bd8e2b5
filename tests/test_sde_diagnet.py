"""Discrete AGMs on a small diagonal net follow the label-noise ODE (math §5-§6)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import comparison, discrete, geometry, noise, problems, sde

pytestmark = pytest.mark.slow  # the science tier: pytest -m slow

PROB = problems.diagonal_net(d=5, n=3, k=2, key=0, features="gaussian", n_test=100)
LABEL = noise.label_noise(0.5)


def start_on_gamma():
    Z = np.asarray(PROB.Z)
    null = np.linalg.svd(Z)[2][3:].T
    w = np.asarray(PROB.w_star) + 0.5 * null @ np.random.default_rng(0).normal(size=null.shape[1])
    a = 0.3
    return jnp.asarray(np.concatenate([np.sqrt(np.maximum(w, 0) + a), np.sqrt(np.maximum(-w, 0) + a)]))


X0 = start_on_gamma()


@pytest.mark.parametrize("method", [S.adam(c=10.0, eps=1e-6), S.sgd()], ids=["adam", "sgd"])
def test_discrete_runs_track_the_ode_with_an_error_shrinking_in_eta(method):
    T = 0.5
    ode = S.simulate_slow_sde(PROB, LABEL, method, T=T, n_record=10, start=S.Start(theta0=X0))
    displacement = np.abs(ode.theta[0, -1] - ode.theta[0, 0]).max()
    rel = []
    for eta in (0.02, 0.01):
        tr = S.simulate_discrete(PROB, LABEL, method, T=T, eta=eta, n_paths=400, key=1, n_record=10, start=S.Start(theta0=X0, v0="equilibrium"))
        zeta = comparison.project_trajectory(tr, PROB, method).theta
        rel.append(np.abs(zeta.mean(0) - ode.theta[0]).max() / displacement)
    assert rel[1] < 0.07, rel  # a small fraction of the displacement ...
    assert rel[1] < 0.7 * rel[0], rel  # ... shrinking with eta (about halving: weak order 1)


@pytest.mark.parametrize("name,blocks", [("adam_mini", [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]), ("adalayer", [0] * 5 + [1] * 5)])
def test_block_methods_descend_their_block_sharpness_like_the_ode(name, blocks):
    """Adam-mini / Adalayer drift towards stationary points of sum_B sqrt(|B| tr H_BB) (math §5)."""
    method = S.make_method(name, blocks=blocks, c=10.0, eps=1e-6)
    sharp = jax.jit(jax.vmap(lambda x: geometry.sharpness(PROB.hessian_diag(x), "block", blocks=blocks)))
    T = 0.5
    ode = S.simulate_slow_sde(PROB, LABEL, method, T=T, n_record=5, start=S.Start(theta0=X0))
    s_ode = np.asarray(sharp(jnp.asarray(ode.theta[0])))
    assert np.all(np.diff(s_ode) < 0) and s_ode[-1] < 0.8 * s_ode[0]
    tr = S.simulate_discrete(PROB, LABEL, method, T=T, eta=0.01, n_paths=300, key=1, n_record=5, start=S.Start(theta0=X0, v0="equilibrium"))
    zeta = comparison.project_trajectory(tr, PROB, method).theta
    s_disc = np.asarray(sharp(jnp.asarray(zeta.reshape(-1, zeta.shape[-1])))).reshape(zeta.shape[:2]).mean(0)
    assert np.all(np.abs(s_disc - s_ode) < 0.05 * (s_ode[0] - s_ode[-1])), (s_disc, s_ode)


@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_ode_integrates_into_the_sparse_corner(eps):
    """Adam's flow drives u_j v_j -> 0, where S ~ 1/eps: integrated in log|x| (see sde.ode_devices._label_noise_log_field) the ODE
    runs through at the paper's eps = 1e-6 as at 1e-3, on a small step budget, and reaches the corner."""
    run = S.simulate_slow_sde(PROB, LABEL, S.adam(c=10.0, eps=eps), T=3.0, n_record=6, start=S.Start(theta0=X0), integrator=S.LabelNoiseODE(max_steps=3000))
    assert not run.diverged[0] and np.all(np.isfinite(run.theta)) and np.all(np.isfinite(run.v))
    u, v = run.theta[0, -1, :5], run.theta[0, -1, 5:]
    assert np.all(np.abs(u * v) < 1e-6)  # every coordinate pair has reached u_j v_j = 0


def test_masked_samples_drop_out_of_the_geometry():
    """n_train = 2 of n = 4 samples: the ODE (retraction included) equals the one on the 2-sample problem."""
    import equinox as eqx

    masked = problems.diagonal_net(d=6, n=4, k=1, n_test=10, n_train=2)
    small = eqx.tree_at(lambda p: (p.Z, p.y, p.n_active), masked, (masked.Z[:2], masked.y[:2], masked.n_active))
    runs = [S.simulate_slow_sde(p, noise.label_noise(0.5), S.sgd(), T=0.2, n_record=2) for p in (masked, small)]
    assert all(not r.diverged.any() for r in runs)
    np.testing.assert_allclose(runs[0].theta, runs[1].theta, atol=1e-10)
    np.testing.assert_allclose(masked.residuals(jnp.asarray(runs[0].theta[0, -1]))[:2], 0.0, atol=1e-12)


@pytest.mark.parametrize("lam", [0.25, 0.5, 0.75])
def test_adame_drift_is_the_preconditioned_gradient_of_trace_diag_h_pow(lam):
    """With v at its quasi-static value V(alpha H) and eps = 0, the label-noise drift of AdamE-lam is
    -alpha^{1-lam} / (4 (1 - lam)) dPhi_S S grad tr(Diag H^{1-lam}) (math §5): its fixed points are the
    stationary points of tr(Diag H^{1-lam}) on Gamma. The right side is built independently: H from
    jax.hessian of the loss, the gradient of tr(Diag H^{1-lam}) by autodiff (S not frozen), dPhi_S from the
    Jacobian of the residuals. Checked for the structured drift and for x * h of the log-coordinate field."""
    m = S.adame(lam=lam, c=10.0, eps=0.0)
    alpha = float(LABEL.label_noise_alpha(PROB))
    x = X0
    F = lambda t: jnp.sum(jnp.diagonal(jax.hessian(PROB.loss)(t)) ** (1.0 - lam))  # noqa: E731
    H = jax.hessian(PROB.loss)(x)
    v = alpha * jnp.diagonal(H)
    s = m.S(v)
    np.testing.assert_allclose(s, (alpha * jnp.diagonal(H)) ** -lam, rtol=1e-12)
    J = jax.jacfwd(PROB.residuals)(x)
    P = jnp.eye(x.size) - (s[:, None] * J.T) @ jnp.linalg.solve((J * s) @ J.T, J)
    want = -alpha ** (1.0 - lam) / (4.0 * (1.0 - lam)) * P @ (s * jax.grad(F)(x))
    dz, dv = sde.label_noise_vector_field(PROB, LABEL, m, x, v, 10.0, alpha)
    np.testing.assert_allclose(dv, 0.0, atol=1e-14)
    np.testing.assert_allclose(dz, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    ls = PROB.least_squares()
    (B, y), w = ls.quadratic, ls.weights
    h = geometry.quadratic_label_noise_rate(B, y, w, x, s, alpha)
    np.testing.assert_allclose(x * h, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
