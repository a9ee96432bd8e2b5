"""Adafactor in the AGM form (slowsde_jax.methods.Adafactor): a statistic of K = Σ(a + b) numbers for the
matrix leaves, not D; exact against a hand loop and against optax where the two definitions coincide, and
on both engines."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optax._src import factorized

import slowsde_jax as S
from slowsde_jax import methods, noise, problems

RNG = np.random.default_rng(0)
PARAMS = {"W": jnp.asarray(RNG.standard_normal((3, 4))), "b": jnp.asarray(RNG.standard_normal(4))}
GRADS = [jax.tree.map(lambda x: jnp.asarray(RNG.standard_normal(x.shape)), PARAMS) for _ in range(6)]


def test_the_block_is_a_hand_loop_on_a_pytree_with_a_matrix_and_a_vector():
    beta1, beta2, eps = 0.9, 0.95, 1e-8
    tx = methods.adafactor(beta1=beta1, beta2=beta2, eps=eps).scale_by_agm(0.1)
    state = tx.init(PARAMS)
    assert state.nu.shape == (3 + 4 + 4,)  # W's row and column sums, then b (Adam): ravel order W, b
    mu = {k: np.zeros(np.shape(v)) for k, v in PARAMS.items()}
    R, C, vb = np.zeros(3), np.zeros(4), np.zeros(4)
    for g in GRADS:
        out, state = tx.update(g, state)
        G, gb = np.asarray(g["W"]), np.asarray(g["b"])
        mu = {k: beta1 * mu[k] + (1 - beta1) * np.asarray(g[k]) for k in mu}
        vb = beta2 * vb + (1 - beta2) * gb**2
        R, C = beta2 * R + (1 - beta2) * (G**2).sum(1), beta2 * C + (1 - beta2) * (G**2).sum(0)
        vhat = R[:, None] * C[None, :] / R.sum()
        np.testing.assert_allclose(out["W"], mu["W"] / (np.sqrt(vhat) + eps), rtol=1e-14)
        np.testing.assert_allclose(out["b"], mu["b"] / (np.sqrt(vb) + eps), rtol=1e-14)
    np.testing.assert_allclose(methods.second_moment(state), np.concatenate([R, C, vb]), rtol=1e-14)


def test_the_block_is_optax_factored_rms_where_the_definitions_coincide():
    """optax's factored second moment with a constant decay (``decay_rate_fn``), no epsilon and every matrix
    factored equals ours with beta1 = 0 (optax puts momentum after the scaling) and eps = 0 (optax has no eps
    in the denominator): its means give the same R_i C_j / Σ R as our sums."""
    beta2 = 0.95
    ours = methods.adafactor(beta1=0.0, beta2=beta2, eps=0.0).scale_by_agm(0.1)
    theirs = factorized.scale_by_factored_rms(factored=True, decay_rate=0.0, step_offset=0, min_dim_size_to_factor=1,
                                              epsilon=0.0, decay_rate_fn=lambda step, rate: beta2)
    a_state, b_state = ours.init(PARAMS), theirs.init(PARAMS)
    for g in GRADS:
        a, a_state = ours.update(g, a_state)
        b, b_state = theirs.update(g, b_state, PARAMS)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-13)


def test_statistic_and_preconditioner_on_flat_vectors_follow_the_problem_leaves(small_factorization):
    m = methods.adafactor(c=5.0).for_problem(small_factorization)
    d1, d2, r = small_factorization.shape
    assert m.shapes == ((d1, r), (d2, r)) and m.statistic_size() == (d1 + r) + (d2 + r)
    diag = jnp.asarray(RNG.random(small_factorization.dim))
    assert m.V(diag).shape == (m.statistic_size(),) and m.S(m.V(diag)).shape == (small_factorization.dim,)
    with pytest.raises(ValueError, match="for_problem"):
        methods.adafactor().V(diag)
    # V is linear, as the slow SDE's v-equation needs
    other = jnp.asarray(RNG.random(small_factorization.dim))
    np.testing.assert_allclose(m.V(2.0 * diag - other), 2.0 * m.V(diag) - m.V(other), rtol=1e-13)


def test_both_engines_run_adafactor_with_its_statistic_shaped_v(small_factorization):
    m = S.adafactor(c=5.0, eps=1e-6)
    K = m.for_problem(small_factorization).statistic_size()
    nz = noise.label_noise(0.5)
    d = S.simulate_discrete(small_factorization, nz, m, eta=0.05, T=0.05, n_paths=2, key=0, n_record=2,
                            start=S.Start(v0="equilibrium"))
    assert d.v.shape == (2, 3, K) and np.all(np.isfinite(d.theta))
    o = S.simulate_slow_sde(small_factorization, nz, m, T=0.05, n_paths=2, key=0, n_record=2)
    assert o.v.shape == (2, 3, K) and np.all(np.isfinite(o.theta)) and not o.meta["failure_reasons"]
    with pytest.raises(S.ConfigError, match=rf"v0: must have shape \({K},\)"):
        S.simulate_slow_sde(small_factorization, nz, m, T=0.05, start=S.Start(v0=np.ones(small_factorization.dim)))


@pytest.mark.slow
def test_adafactor_label_noise_ode_against_discrete_runs_in_eta(small_factorization):
    """Adafactor's label-noise ODE against its discrete runs at η = 0.04, 0.02, 0.01 (32 paths, start on Γ with
    v at equilibrium, T = 0.5, at Φ_S): the weak error of tr H and tr(Diag H^{1/2}) falls with η, each step
    by more than its standard errors, with a resolved order (0.94 and 0.93 when written)."""
    nz, m = noise.label_noise(0.5), S.adafactor(c=10.0, eps=1e-8)
    start = S.Start(theta0=S.on_gamma(small_factorization), v0="equilibrium")
    ex = S.Execution(progress=False)
    ode = S.simulate_slow_sde(small_factorization, nz, m, T=0.5, n_record=2, start=start, execution=ex,
                              recording=S.Recording(sharpness=True))
    res = S.eta_sweep(small_factorization, nz, m, [0.04, 0.02, 0.01], 0.5, 32, 3, ode,
                      ["trace_H", "trace_sqrt_diag_H"], start=start, execution=ex)
    for name, o in res["observables"].items():
        err, se = np.asarray(o["weak_error"]), np.asarray(o["se"])
        assert np.all(err[:-1] - err[1:] > 2 * np.hypot(se[:-1], se[1:])), (name, err, se)
        assert o["order_resolved"] and 0.6 < o["order"] < 1.4, (name, o["order"])
    assert res["regime"] is None


def _adam_as_custom(eps):
    return S.custom_agm(lambda sq: sq, lambda v: 1.0 / (jnp.sqrt(v) + eps), c=5.0, name="my_adam")


def _one_block_as_custom(eps):  # Adam-mini with a single block: K = 1
    return S.custom_agm(lambda sq: jnp.mean(sq, keepdims=True), lambda v: jnp.full(12, 1.0 / (jnp.sqrt(v[0]) + eps)),
                        c=5.0, name="one_block")


@pytest.mark.parametrize("custom,builtin", [
    (_adam_as_custom(1e-6), S.adam(c=5.0, eps=1e-6)),
    pytest.param(_one_block_as_custom(1e-6), S.adam_mini(blocks=[0] * 12, c=5.0, eps=1e-6),
                 marks=pytest.mark.slow),  # 20 s; K = 1 is covered fast by the Adafactor tests' statistic shapes
], ids=["adam", "one-block"])
def test_a_user_agm_from_its_statistic_and_preconditioner_is_the_builtin_it_restates(small_factorization, custom,
                                                                                    builtin):
    """``custom_agm(V, S)`` restating Adam (K = D) and Adam-mini with one block (K = 1): the discrete runs and
    the label-noise ODE give the built-in's numbers, to rounding and to the ODE solver's tolerance (rtol 1e-8,
    atol 1e-10: the two compute S in different orders), with v of the statistic's shape."""
    nz, start = noise.label_noise(0.5), S.Start(v0="equilibrium")
    kw = dict(eta=0.05, T=0.05, n_paths=2, key=0, n_record=2, start=start)
    a, b = (S.simulate_discrete(small_factorization, nz, m, **kw) for m in (custom, builtin))
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-12, atol=1e-14)
    K = custom.V(jnp.ones(12)).shape[0]
    assert a.v.shape[-1] == K and np.allclose(a.v[..., 0], b.v[..., 0], rtol=1e-12)
    ode_a, ode_b = (S.simulate_slow_sde(small_factorization, nz, m, T=0.05, n_paths=1, key=0, n_record=2,
                                        start=S.Start(theta0=np.asarray(a.theta[0, -1]))) for m in (custom, builtin))
    np.testing.assert_allclose(ode_a.theta, ode_b.theta, rtol=1e-7, atol=1e-10)  # the ODE solver's tolerances
    assert ode_a.v.shape[-1] == K
