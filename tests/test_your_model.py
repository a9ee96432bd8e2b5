"""A user's own model end to end: a point of Gamma to start from (``on_gamma``), and weak errors that are
rounding refused by ``eta_sweep``."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import noise, problems


def test_on_gamma_puts_a_least_squares_model_on_gamma_by_minimum_norm_gauss_newton(small_mlp):
    """Residuals vanish at the result; from a point already on Gamma it does not move; the first step is the
    minimum-norm Gauss-Newton step (the pseudo-inverse of J_w)."""
    theta0 = small_mlp.init(None)
    ls = small_mlp.least_squares()
    assert np.max(np.abs(ls.residuals(theta0))) > 1e-2  # starts off Gamma
    zeta = S.on_gamma(small_mlp, theta0)
    assert zeta.shape == (small_mlp.dim,) and np.max(np.abs(ls.residuals(zeta))) < 1e-12
    np.testing.assert_allclose(S.on_gamma(small_mlp, zeta), zeta, atol=1e-13)
    one = S.on_gamma(small_mlp, theta0, max_steps=1, tol=1.0)  # a single step, accepted by the loose tol
    Jw = jnp.sqrt(ls.weights)[:, None] * ls.jacobian(theta0)
    want = theta0 - jnp.linalg.pinv(Jw) @ (jnp.sqrt(ls.weights) * ls.residuals(theta0))
    np.testing.assert_allclose(one, want, rtol=1e-10, atol=1e-12)
    # the parameter pytree and a batch give the same points
    params = small_mlp.unravel(theta0)
    np.testing.assert_allclose(S.on_gamma(small_mlp, params), zeta, atol=1e-12)
    batch = S.on_gamma(small_mlp, jnp.stack([theta0, zeta]))
    np.testing.assert_allclose(batch[0], zeta, atol=1e-12)


def test_on_gamma_without_residuals_is_the_gradient_flows_limit():
    """A loss that is not least squares: Phi_I, the limit of plain gradient flow, for the hyperbola's loss
    given as a plain function (u^2 - v^2 = 1 at the result, and equal to geometry.project with S = I)."""
    plain = problems.from_loss(lambda t: 0.5 * (t[0] ** 2 - t[1] ** 2 - 1.0) ** 2, jnp.array([1.8, 0.9]))
    zeta = S.on_gamma(plain)
    assert abs(float(zeta[0] ** 2 - zeta[1] ** 2) - 1.0) < 1e-9
    np.testing.assert_allclose(zeta, S.geometry.project(plain.loss, jnp.array([1.8, 0.9]), jnp.ones(2)), atol=1e-10)


def test_on_gamma_names_bad_input_and_non_convergence(small_mlp):
    with pytest.raises(S.ConfigError, match="^theta:"):
        S.on_gamma(small_mlp, {"W1": jnp.ones((3, 2))})
    with pytest.raises(S.ConfigError, match="^max_steps:"):
        S.on_gamma(small_mlp, max_steps=0)
    unreachable = problems.from_loss(lambda t: 0.5 * jnp.mean(jnp.array([t[0] ** 2 + 1.0]) ** 2), jnp.ones(1),
                                     residuals=lambda t: jnp.array([t[0] ** 2 + 1.0]))  # r >= 1: no zero
    with pytest.raises(S.ProjectionError, match="Gauss-Newton"):
        S.on_gamma(unreachable, max_steps=20)


@pytest.mark.slow
def test_eta_sweep_of_the_loss_at_phi_s_is_rounding_not_a_weak_error(small_mlp):
    """The loss of an interpolating model at Phi_S is rounding (about 1e-32) at every eta: eta_sweep must not
    fit an order to it, and says why; the same sweep resolves nothing it should not."""
    nz, sgd = noise.label_noise(0.5), S.sgd()
    start = S.Start(theta0=S.on_gamma(small_mlp))
    ode = S.simulate_slow_sde(small_mlp, nz, sgd, T=0.1, n_record=2, start=start, execution=S.Execution(progress=False))
    res = S.eta_sweep(small_mlp, nz, sgd, [0.04, 0.02], 0.1, 16, 0, ode, "loss", start=start,
                      execution=S.Execution(progress=False))
    entry = res["observables"]["loss"]
    assert max(entry["weak_error"]) < 1e-20
    assert entry["order_resolved"] is False and set(entry["unresolved"]) == {"rounding"}
    assert S.comparison.describe_order(entry) == "order: not resolved (errors at rounding level)"


def test_both_engines_record_the_sharpness_measures_by_the_same_names(hyperbola):
    """Recording(sharpness=True): tr H, tr(Diag H^{1/2}) and the method's own measure at every recorded state,
    by name, in both engines; equal to sharpness_values at the recorded states; compare takes them by name."""
    nz, adam = noise.label_noise(0.5), S.adam(c=10.0, eps=0.0)
    rec, quiet = S.Recording(sharpness=True), S.Execution(progress=False)
    slow = S.simulate_slow_sde(hyperbola, nz, adam, T=0.1, n_record=2, recording=rec, execution=quiet,
                               start=S.Start(v0="equilibrium"))
    disc = S.simulate_discrete(hyperbola, nz, adam, eta=0.05, T=0.1, n_paths=8, key=1, n_record=2, recording=rec,
                               execution=quiet, start=S.Start(v0="equilibrium"))
    for traj in (slow, disc):
        assert {"trace_H", "trace_sqrt_diag_H"} <= set(traj.observables)
        want = S.sharpness_values(hyperbola, traj.theta, adam)
        for name in ("trace_H", "trace_sqrt_diag_H"):
            np.testing.assert_allclose(traj.observables[name], want[name], rtol=1e-13)
    seen = S.at_projection(disc, hyperbola, adam)  # the discrete states seen on Gamma: recomputed there
    np.testing.assert_allclose(seen.observables["trace_sqrt_diag_H"],
                               S.sharpness_values(hyperbola, seen.theta, adam)["trace_sqrt_diag_H"], rtol=1e-13)
    comp = S.compare(seen, slow, ["trace_sqrt_diag_H"])
    assert comp.weak_error["trace_sqrt_diag_H"].shape == (3,)
    plain = S.simulate_discrete(hyperbola, nz, S.sgd(), eta=0.05, T=0.1, n_paths=2, key=1, n_record=2, execution=quiet)
    with pytest.raises(S.ConfigError, match=r"^observables: 'trace_diag_H_pow' is not recorded .*Recording\(sharpness=True\)"):
        S.compare(plain, slow, ["trace_diag_H_pow"])


def test_a_swept_lam_and_per_leaf_blocks_record_their_own_measure(small_mlp):
    """AdamE under a lam sweep records tr(Diag H^{1-lam}) with each configuration's lam; Adalayer with per-leaf
    ids (a dict keyed like the parameters) records the block sharpness over the problem's leaves."""
    quiet, rec = S.Execution(progress=False), S.Recording(sharpness=True)
    nz = noise.label_noise(0.3)
    runs = S.simulate_discrete(small_mlp, nz, S.adame(lam=0.3, c=10.0), eta=0.05, T=0.01, n_paths=2, key=0, n_record=1,
                               sweep={"lam": [0.3, 0.7]}, recording=rec, execution=quiet)
    for lam, tr in zip((0.3, 0.7), runs):
        want = S.sharpness_values(small_mlp, tr.theta, S.adame(lam=lam))["trace_diag_H_pow"]
        np.testing.assert_allclose(tr.observables["trace_diag_H_pow"], want, rtol=1e-12)
    blocks = {"W1": 0, "b1": 0, "w2": 1}
    tr = S.simulate_discrete(small_mlp, nz, S.adalayer(blocks=blocks), eta=0.05, T=0.01, n_paths=2, key=0,
                             n_record=1, recording=rec, execution=quiet)
    want = S.sharpness_values(small_mlp, tr.theta, S.adalayer(blocks=blocks))["block_sharpness"]
    np.testing.assert_allclose(tr.observables["block_sharpness"], want, rtol=1e-12)
    slow = S.simulate_slow_sde(small_mlp, nz, S.sgd(), T=0.01, n_record=1, recording=rec, execution=quiet,
                               start=S.Start(theta0=S.on_gamma(small_mlp)))
    assert set(slow.observables) == {"loss", "trace_H", "trace_sqrt_diag_H"}  # the MLP itself records only its loss
    np.testing.assert_allclose(slow.observables["trace_H"], S.sharpness_values(small_mlp, slow.theta)["trace_H"],
                               rtol=1e-13)


@pytest.mark.slow
def test_the_regime_report_flags_adam_on_an_mlp_and_not_the_hyperbola(hyperbola):
    """The finite-eta report on real sweeps (no projection needed: it reads v). Adam on the issue's MLP
    (2 -> 30 -> 1, 12 points, eps = 1e-8): the label-noise ODE drives entries of W1 (and others) to zero, where its S
    exceeds the discrete S at eta = 0.01 many times over, and the discrete S grows as eta falls. Adam on the
    hyperbola, where the weak order is 1 (math, section 7), gets no report."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from bench_projection import mlp_problem

    nz, method = noise.label_noise(0.5), S.adam(c=10.0, eps=1e-8)
    ex = S.Execution(progress=False)
    for prob, flagged in ((mlp_problem(), True), (hyperbola, False)):
        theta0 = S.on_gamma(prob)
        start = S.Start(theta0=theta0, v0="equilibrium")
        ode = S.simulate_slow_sde(prob, nz, method, T=0.5, n_record=2, start=start, execution=ex)
        res = S.eta_sweep(prob, nz, method, [0.04, 0.02, 0.01], 0.5, 16, 3, ode, ["loss"], project=False,
                          start=start, execution=ex)
        rep = res["regime"]
        assert (rep is not None) == flagged, rep
        if flagged:
            assert any(n.startswith("['W1']") for n in rep["names"]) and min(rep["ratio"]) > 2, rep["names"]
            assert rep["S_growth"] > 0.5 and rep["eta_reach"] < 0.01
