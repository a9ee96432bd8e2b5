"""The slow-SDE engine against math §7: the label-noise ODE column, the diffusion, and discrete Adam runs."""
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import comparison, discrete, geometry, noise, problems, sde

HYP = problems.hyperbola(y=1.0)
LABEL = noise.label_noise(0.5)
GAUSS = noise.gaussian([0.7**2, 0.3**2])


@pytest.mark.parametrize("method,ode_value", [
    (S.adam(beta1=0.9, c=10.0, eps=0.0), 0.7327),
    (S.adame(lam=0.25, c=10.0, eps=0.0), 0.7158),
    (S.sgd(momentum=0.9), 0.7020),
])
@pytest.mark.slow
def test_label_noise_ode_reproduces_the_ode_column_of_section_7(method, ode_value):
    traj = S.simulate_slow_sde(HYP, LABEL, method, T=0.5, n_paths=1, n_record=5)
    assert traj.meta["engine"] == "label_noise_ode" and traj.meta["alpha"] == 0.25
    assert abs(traj.theta[0, -1, 1] - ode_value) < 1e-3
    u, v = traj.theta[0, :, 0], traj.theta[0, :, 1]
    np.testing.assert_allclose(u**2 - v**2, 1.0, atol=1e-10)  # retracted onto Gamma at every record
    assert (traj.v is None) == (not method.has_v)


def test_sde_integrator_reduces_to_the_ode_under_label_noise():
    """Forcing the projected Euler-Maruyama scheme on label noise: Sigma_par = 0, so no diffusion, and the
    general drift -1/2 dPhi S grad^3 L[Sigma_diamond] equals the ODE's -(alpha/4) dPhi S grad^3 L[S]."""
    m = S.adam(c=10.0, eps=0.0)
    ode = S.simulate_slow_sde(HYP, LABEL, m, T=0.5, n_record=2)
    forced = S.simulate_slow_sde(HYP, LABEL, m, T=0.5, n_paths=2, n_record=2, integrator=S.ProjectedEulerMaruyama(dt=1e-3))
    assert forced.meta["engine"] == "slow_sde"
    np.testing.assert_allclose(forced.theta[0], forced.theta[1], atol=1e-12)  # no noise at all
    np.testing.assert_allclose(forced.theta[0, -1], ode.theta[0, -1], atol=3e-4)  # Euler, weak order 1 in dt
    np.testing.assert_allclose(forced.v[0, -1], ode.v[0, -1], atol=3e-4)


def test_diffusion_matches_T_sigma_parallel():
    """§7: variance of the tangent coordinate after T = 0.05 against T [Sigma_par]_vv = 0.0396."""
    m = S.adam(c=10.0, eps=0.0)
    T, n = 0.05, 4000
    traj = S.simulate_slow_sde(HYP, GAUSS, m, T=T, n_paths=n, n_record=1, key=3, integrator=S.ProjectedEulerMaruyama(dt=2.5e-4))
    theta0 = jnp.asarray([np.sqrt(2.0), 1.0])
    v0 = m.V(jnp.array([0.49, 0.09]))
    Spar = geometry.sigma_parallel(geometry.hessian(HYP.loss, theta0), GAUSS.covariance(HYP, theta0), m.S(v0))
    want = T * float(Spar[1, 1])
    assert abs(want - 0.0396) < 1e-4
    x = traj.theta[:, -1, 1]
    var, se = x.var(ddof=1), x.var(ddof=1) * np.sqrt(2.0 / (n - 1))
    assert abs(var - want) < 3 * se, (var, want, se)
    np.testing.assert_allclose(traj.theta[:, -1, 0] ** 2 - x**2, 1.0, atol=1e-10)  # on Gamma


@pytest.mark.slow  # a convergence in eta: the science tier (test_diffusion_matches_T_sigma_parallel is the fast check)
def test_gaussian_noise_sde_matches_discrete_adam_and_the_gap_shrinks_with_eta():
    """Drift, diffusion and Ito correction all matter: the mean and variance of v at T = 0.2."""
    m = S.adam(c=10.0, eps=0.0)
    T, n, n_sde = 0.2, 4000, 8000  # E v(T) = 0.933: 10 standard errors need more than 4000 SDE paths
    sde_traj = S.simulate_slow_sde(HYP, GAUSS, m, T=T, n_paths=n_sde, n_record=2, key=1, integrator=S.ProjectedEulerMaruyama(dt=1e-3))
    v_sde = sde_traj.observables["v"][:, -1]
    # the drift and the Ito correction move the mean: without them E v(T) would stay at 1
    assert 1.0 - v_sde.mean() > 10 * v_sde.std() / np.sqrt(n_sde)
    gaps = []
    for eta in (0.04, 0.02):
        tr = comparison.project_trajectory(
            S.simulate_discrete(HYP, GAUSS, m, T=T, n_paths=n, key=2, eta=eta, n_record=2, start=S.Start(v0="equilibrium")), HYP, m)
        c = comparison.compare(tr, sde_traj, ["v"])
        assert c.weak_error["v"][-1] < 3 * c.se["v"][-1] + 0.02  # means agree (bias O(eta) below 0.02 here)
        v_d = tr.observables["v"][:, -1]
        se_var = np.hypot(v_d.var() * np.sqrt(2 / n), v_sde.var() * np.sqrt(2 / n_sde))
        gaps.append((abs(v_d.var() - v_sde.var()), se_var))
    (g1, s1), (g2, s2) = gaps
    assert g2 < g1  # the variance gap shrinks with eta ...
    assert g2 < 0.1 * v_sde.var()  # ... and is within 10% at eta = 0.02
    assert g2 < 0.5 * g1 + 3 * np.hypot(s1, s2)


@pytest.mark.slow
def test_eta_sweep_measures_weak_order_one_on_the_hyperbola(tmp_path):
    """§7: the Adam gap to the ODE halves when eta halves (weak error O(eta))."""
    m = S.adam(beta1=0.9, c=10.0, eps=0.0)
    ode = S.simulate_slow_sde(HYP, LABEL, m, T=0.5, n_record=1)
    res = comparison.eta_sweep(HYP, LABEL, m, [0.04, 0.02, 0.01], T=0.5, n_paths=3000, key=4, sde_traj=ode,
                               observables="v", start=S.Start(v0="equilibrium"))
    S.plotting.plot_sweep(res, "v", tmp_path / "weak.png")
    r = res["observables"]["v"]
    err, se = np.array(r["weak_error"]), np.array(r["se"])
    assert np.all(err > 4 * se)  # the bias is resolved at every eta
    assert 0.7 < r["order"] < 1.3, r
    assert (tmp_path / "weak.png").stat().st_size > 0


@pytest.mark.slow
def test_project_trajectory_on_a_problem_without_residuals():
    """A plain loss (no least-squares structure) is projected with the dense Newton finish."""
    prob = problems.from_loss(lambda t: 0.5 * (t[0] ** 2 - t[1] ** 2 - 1.0) ** 2, jnp.array([1.5, 1.0]))
    m = S.sgd()
    tr = S.simulate_discrete(prob, noise.gaussian([0.01, 0.01]), m, eta=0.1, steps=10, n_paths=2, n_record=1)
    z = comparison.project_trajectory(tr, prob, m).theta
    np.testing.assert_allclose(z[..., 0] ** 2 - z[..., 1] ** 2, 1.0, atol=1e-10)


def test_many_paths_do_not_hang_on_the_cpu():
    """6000 paths on the hyperbola: above jaxlib's split size for a batched 2 x 2 eigh, where XLA:CPU used
    to deadlock (see slowsde_jax._batching). Grouped paths give the numbers of one vmapped call."""
    from slowsde_jax import _batching

    m = S.adam(c=10.0, eps=0.0)
    assert _batching.safe_batch(2) < 6000
    traj = S.simulate_slow_sde(HYP, GAUSS, m, T=0.004, n_paths=6000, n_record=1, key=5, integrator=S.ProjectedEulerMaruyama(dt=1e-3))
    assert not traj.diverged.any()
    small = S.simulate_slow_sde(HYP, GAUSS, m, T=0.004, n_paths=6000, n_record=1, key=5, execution=S.Execution(paths_per_call=3000), integrator=S.ProjectedEulerMaruyama(dt=1e-3))
    np.testing.assert_allclose(traj.theta, small.theta, rtol=0, atol=1e-12)
