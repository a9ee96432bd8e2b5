"""Adam near the diagonal net's sparse corner u_j v_j = 0, where S = 1/(sqrt(v) + eps) ~ 1/eps (math §6):
the label-noise ODE and the projection Phi_S run through it at the paper's eps = 1e-6, and the discrete runs
end where the ODE ends."""
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import comparison, discrete, noise, problems, sde

D_ = 8
PROB = problems.diagonal_net(d=D_, n=4, k=2, key=4, n_test=200)  # w* on {0, 1}; Adam ends on {0, 3}
LABEL = noise.label_noise(0.5)
ADAM = S.adam(c=10.0, eps=1e-6)
T = 3.0


def w_of(x):
    return x[..., :D_] ** 2 - x[..., D_:] ** 2


def early_state(method=ADAM):
    """A discrete state at t = 0.25 from the initializer: off Gamma by the label noise, v off equilibrium."""
    tr = discrete.simulate_discrete(PROB, LABEL, method, eta=0.02, T=0.25, v0="equilibrium", key=0, n_record=1)
    return tr.theta[0, -1], tr.v[0, -1]


@pytest.fixture(scope="module")
def ode_from_early():
    th0, v0 = early_state()
    return th0, v0, sde.simulate_slow_sde(PROB, LABEL, ADAM, T=T, theta0=th0, v0=v0, n_record=4)


def test_discrete_runs_end_at_the_odes_corner_with_a_gap_shrinking_in_eta(ode_from_early):
    th0, v0, ode = ode_from_early
    assert not ode.diverged[0]
    x = ode.theta[0, -1]
    w_ode = w_of(x)
    support = np.abs(w_ode) > 0.05
    assert support.sum() == 2 and np.all(np.abs(x[:D_] * x[D_:]) < 1e-8)  # the corner: u_j v_j = 0, 2-sparse
    assert np.all(np.abs(w_ode[~support]) < 1e-8)
    gaps = []
    for eta in (0.028, 0.014):
        tr = discrete.simulate_discrete(PROB, LABEL, ADAM, eta=eta, T=T, theta0=th0, v0=v0, n_paths=256, key=2,
                                        n_record=4)
        z = comparison.project_trajectory(tr, PROB, ADAM).theta  # no ProjectionError at any recorded point
        w = w_of(z[:, -1])
        assert np.mean(np.all((np.abs(w) > 0.05) == support, axis=1)) > 0.8  # the ODE's support, path by path
        gaps.append(np.abs(w.mean(0) - w_ode).max())
    assert gaps[0] < 0.03 and gaps[1] < 0.7 * gaps[0], gaps  # close to the ODE's w, closer at the smaller eta


def test_projection_runs_through_the_corner_at_both_eps():
    """Phi_S of discrete states with S up to ~1e5 (v decayed on the dead coordinates): every point converges,
    and the exact (dual) projection agrees with integrating the flow itself where that is feasible."""
    import jax.numpy as jnp

    from slowsde_jax import geometry as geo

    for eps in (1e-6, 1e-3):
        m = S.adam(c=10.0, eps=eps)
        th0, v0 = early_state(m)
        tr = discrete.simulate_discrete(PROB, LABEL, m, eta=0.04, T=T, theta0=th0, v0=v0, n_paths=32, key=3,
                                        n_record=6)
        pr = comparison.project_trajectory(tr, PROB, m)
        assert np.all(np.isfinite(pr.theta)) and np.max(np.abs(pr.observables["train_loss"])) < 1e-25
    res, wts = PROB.residual_parts()
    th, s = jnp.asarray(tr.theta[0, 2]), m.S(jnp.asarray(tr.v[0, 2]))
    flow = geo._flow_end(PROB.loss, th, s, 200_000, res, wts, 1e-9)
    np.testing.assert_allclose(geo.project(PROB.loss, th, s, residuals=res, weights=wts), flow, atol=1e-7)


@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_ode_end_state_does_not_depend_on_n_record(eps):
    m = S.adam(c=10.0, eps=eps)
    th0, v0 = early_state(m)
    ends = []
    for n_record in (1, 3, 8):
        run = sde.simulate_slow_sde(PROB, LABEL, m, T=T, theta0=th0, v0=v0, n_record=n_record, max_steps=20_000)
        assert not run.diverged[0], run.meta["failure_reasons"]
        ends.append(run.theta[0, -1])
    for e in ends[1:]:
        np.testing.assert_allclose(w_of(e), w_of(ends[0]), atol=1e-8)
        np.testing.assert_allclose(e, ends[0], atol=1e-5)
