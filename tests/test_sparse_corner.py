"""Adam near the diagonal net's sparse corner u_j v_j = 0, where S = 1/(sqrt(v) + eps) ~ 1/eps (math §6):
the label-noise ODE and the projection Phi_S run through it at the paper's eps = 1e-6, and the discrete runs
end where the ODE ends."""
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import comparison, discrete, noise, problems, sde
from slowsde_jax.geometry.projection import _flow_end

pytestmark = pytest.mark.slow  # the science tier: pytest -m slow

D_ = 8
PROB = problems.diagonal_net(d=D_, n=4, k=2, key=4, n_test=200)  # w* on {0, 1}; Adam ends on {0, 3}
LABEL = noise.label_noise(0.5)
ADAM = S.adam(c=10.0, eps=1e-6)
T = 3.0


def w_of(x):
    return x[..., :D_] ** 2 - x[..., D_:] ** 2


def early_state(method=ADAM):
    """A discrete state at t = 0.25 from the initializer: off Gamma by the label noise, v off equilibrium."""
    tr = S.simulate_discrete(PROB, LABEL, method, eta=0.02, T=0.25, key=0, n_record=1, start=S.Start(v0="equilibrium"))
    return tr.theta[0, -1], tr.v[0, -1]


@pytest.fixture(scope="module")
def ode_from_early():
    th0, v0 = early_state()
    return th0, v0, S.simulate_slow_sde(PROB, LABEL, ADAM, T=T, n_record=4, start=S.Start(theta0=th0, v0=v0))


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
        tr = S.simulate_discrete(PROB, LABEL, ADAM, eta=eta, T=T, n_paths=256, key=2, n_record=4, start=S.Start(theta0=th0, v0=v0))
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
        tr = S.simulate_discrete(PROB, LABEL, m, eta=0.04, T=T, n_paths=32, key=3, n_record=6, start=S.Start(theta0=th0, v0=v0))
        pr = comparison.project_trajectory(tr, PROB, m)
        assert np.all(np.isfinite(pr.theta)) and np.max(np.abs(pr.observables["train_loss"])) < 1e-25
    ls = PROB.least_squares()
    th, s = jnp.asarray(tr.theta[0, 2]), m.S(jnp.asarray(tr.v[0, 2]))
    flow = _flow_end(PROB.loss, th, s, 200_000, ls, 1e-9)
    np.testing.assert_allclose(geo.project(PROB.loss, th, s, least_squares=ls), flow, atol=1e-7)


@pytest.mark.parametrize("eps", [1e-6, 1e-3])
def test_ode_end_state_does_not_depend_on_n_record(eps):
    m = S.adam(c=10.0, eps=eps)
    th0, v0 = early_state(m)
    ends = []
    for n_record in (1, 3, 8):
        run = S.simulate_slow_sde(PROB, LABEL, m, T=T, n_record=n_record, start=S.Start(theta0=th0, v0=v0), integrator=S.LabelNoiseODE(max_steps=20_000))
        assert not run.diverged[0], run.meta["failure_reasons"]
        ends.append(run.theta[0, -1])
    for e in ends[1:]:
        np.testing.assert_allclose(w_of(e), w_of(ends[0]), atol=1e-8)
        np.testing.assert_allclose(e, ends[0], atol=1e-5)


T_FIXED = 16.0  # the ODE's horizon for the fixed-point tests (one compile for all of them)


def ode_end(prob, lam, T_end):
    """w at the end of AdamE-lam's label-noise ODE, started like experiments/sparse_ode.py (Phi_S of the
    discrete iterate at t = 0.25, eta = 0.02), and the w over time (n_record = 4, as the fixture: one compile)."""
    m = S.adame(lam=lam, c=10.0, eps=1e-6)
    tr = S.simulate_discrete(prob, LABEL, m, eta=0.02, T=0.25, key=0, n_record=1, start=S.Start(v0="equilibrium"))
    run = S.simulate_slow_sde(prob, LABEL, m, T=T_end, n_record=4, start=S.Start(theta0=tr.theta[0, -1], v0=tr.v[0, -1]))
    assert not run.diverged[0], run.meta["failure_reasons"]
    return w_of(run.theta[0, -1]), w_of(run.theta[0])


def global_min_weighted(prob, q):
    """argmin sum_j |s_j w_j|^q on {Z w = y} (s_j = mean_i z_ij^2: tr(Diag H^{1-lam}) at u_j v_j = 0 is
    4^q times this, math §6), by enumerating basic solutions: no ODE involved."""
    from slowsde_jax import paper as X

    Z, y = np.asarray(prob.Z), np.asarray(prob.y)
    s = np.mean(Z * Z, axis=0)
    return X.min_quasi_norm_by_supports(Z / s, y, q) / s, s


def test_adame_ode_ends_at_the_global_minimizer_after_a_slow_saddle_for_small_lam():
    """PROB's columns 1, 3 and 6 are equal up to sign, so Sum |w|^q is minimized by putting w_1 + w_3 - w_6 on one
    of them (three tied global minimizers) and the symmetric split is a saddle on Gamma. The early state sits
    near it; AdamE-lam leaves it at the rate lam (4 alpha)^{1-2 lam} |w_j|^{-2 lam} (0.32 for lam = 1/4, 3.3
    for Adam): lam = 1/2 reaches a minimizer by t = 3, lam = 1/4 is still on the face at t = 4 and at a global
    minimizer of Sum |w|^{3/4} by T = 12."""
    from slowsde_jax import paper as X

    Z, y = np.asarray(PROB.Z), np.asarray(PROB.y)
    for lam in (0.5, 0.25):
        q = 1.0 - lam
        w, w_t = ode_end(PROB, lam, T_FIXED)  # records at t = 4, 8, 12, 16
        g, _ = global_min_weighted(PROB, q)
        assert np.sum(np.abs(w) ** q) == pytest.approx(np.sum(np.abs(g) ** q), rel=1e-9)
        np.testing.assert_allclose(w, w_t[-2], atol=1e-10)  # at rest from t = 12
        # IRLS started at the ODE's end stays (up to its eps floor, 4e-8 here): a stationary point
        np.testing.assert_allclose(X.min_quasi_norm_interpolator(Z, y, q=q, w0=w, eps0=1e-10), w, atol=1e-6)
        if lam == 0.5:
            np.testing.assert_allclose(w_t[1], w, atol=1e-10)  # Adam: there by t = 4
        else:
            w4 = w_t[1]  # lam = 1/4: at t = 4 still on the face, above the minimum
            assert np.sum(np.abs(w4) > 0.05) == 4 and np.sum(np.abs(w4) ** q) > np.sum(np.abs(g) ** q) + 0.1


def test_adame_ode_ends_at_the_minimizer_of_its_own_quasi_norm():
    """A 4 x 8 Gaussian problem where argmin sum |s w|^{1/4} and argmin sum |s w|^{3/4} are different vertices
    of {Z w = y}, and AdamE-3/4's and AdamE-1/4's ODE (same start rule) each end at the one of its own
    sharpness tr(Diag H^{1-lam}) = 4^{1-lam} sum |s w|^{1-lam}, strictly above the minimum of the other's.
    (Chosen by a search: the ODE ends at a vertex, a local minimizer, and which one depends on the start;
    docs/experiments.md gives the frequency.)"""
    prob = problems.diagonal_net(d=D_, n=4, k=3, key=51, features="gaussian", n_test=200)
    ends = {}
    for lam in (0.75, 0.25):
        w, w_t = ode_end(prob, lam, T_FIXED)
        assert np.abs(w_t[-1] - w_t[-2]).max() < 1e-10  # at rest
        g, s = global_min_weighted(prob, 1.0 - lam)
        np.testing.assert_allclose(w, g, atol=1e-8)
        ends[lam] = (w, s)
    (w_a, s), (w_b, _) = ends[0.75], ends[0.25]
    assert np.abs(w_a - w_b).max() > 0.1
    assert np.sum(np.abs(s * w_a) ** 0.75) > 1.01 * np.sum(np.abs(s * w_b) ** 0.75)
    assert np.sum(np.abs(s * w_b) ** 0.25) > 1.01 * np.sum(np.abs(s * w_a) ** 0.25)
