"""Shampoo in the AGM form: its matrix power, its optax block against a hand loop, both engines, the CLI.

The hand loop is numpy with its own eigendecompositions; the parameters are a pytree with two matrix leaves,
a vector and a scalar (ravel order: the dict's sorted keys).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import fractional_matrix_power

import slowsde_jax as S
from slowsde_jax import methods, noise, problems
from slowsde_jax._matrix_power import spd_power

SHAPES = {"W1": (3, 4), "b": (4,), "W2": (2, 3), "s": ()}


def _params(key):
    ks = jax.random.split(jax.random.PRNGKey(key), len(SHAPES))
    return {name: jax.random.normal(k, shape) for k, (name, shape) in zip(ks, SHAPES.items())}


def _inv_fourth_root(A):
    lam, Q = np.linalg.eigh(A)
    return (Q * lam**-0.25) @ Q.T


def _hand_shampoo(grads, beta1, beta2, eps):
    """Updates S(v) m of a hand-written Shampoo step by step (numpy), leaf by leaf."""
    state = {k: dict(m=np.zeros(s), L=np.zeros((s[0], s[0])), R=np.zeros((s[1], s[1]))) if len(s) == 2
             else dict(m=np.zeros(s), v=np.zeros(s)) for k, s in SHAPES.items()}
    out = []
    for g in grads:
        step = {}
        for k, s in SHAPES.items():
            G, st = np.asarray(g[k]), state[k]
            st["m"] = beta1 * st["m"] + (1 - beta1) * G
            if len(s) == 2:
                st["L"] = beta2 * st["L"] + (1 - beta2) * G @ G.T
                st["R"] = beta2 * st["R"] + (1 - beta2) * G.T @ G
                step[k] = _inv_fourth_root(st["L"] + eps * np.eye(s[0])) @ st["m"] @ _inv_fourth_root(
                    st["R"] + eps * np.eye(s[1]))
            else:
                st["v"] = beta2 * st["v"] + (1 - beta2) * G * G
                step[k] = st["m"] / (np.sqrt(st["v"]) + eps)
        out.append(step)
    return out


def test_spd_power_and_its_derivative_with_a_cluster_of_equal_eigenvalues():
    """A^(-1/4) against scipy; its JVP against central differences at a rank-one matrix plus eps I, whose
    three equal eigenvalues make eigh's own derivative divide by zero."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 6))
    A = X @ X.T + 0.1 * np.eye(4)
    np.testing.assert_allclose(spd_power(jnp.asarray(A), -0.25), fractional_matrix_power(A, -0.25), rtol=1e-13)
    u = rng.normal(size=4)
    B = np.outer(u, u) + 1e-3 * np.eye(4)
    dB = rng.normal(size=(4, 4))
    dB = dB + dB.T
    f = lambda t: spd_power(jnp.asarray(B) + t * dB, -0.25)
    _, jvp = jax.jvp(f, (0.0,), (1.0,))
    h = 1e-7
    fd = (f(h) - f(-h)) / (2 * h)
    assert np.all(np.isfinite(jvp))
    np.testing.assert_allclose(jvp, fd, atol=1e-6 * np.abs(jvp).max())


def test_the_optax_block_equals_a_hand_written_loop():
    beta1, beta2, eps = 0.9, 0.95, 1e-6
    params = _params(0)
    grads = [_params(k) for k in range(1, 7)]
    tx = methods.shampoo(beta1=beta1, beta2=beta2, eps=eps).scale_by_agm(0.1)
    state = tx.init(params)
    for g, want in zip(grads, _hand_shampoo(grads, beta1, beta2, eps)):
        upd, state = tx.update(g, state, params)
        for k in SHAPES:
            np.testing.assert_allclose(upd[k], want[k], rtol=1e-12, atol=1e-14)
    K = sum(s[0] ** 2 + s[1] ** 2 if len(s) == 2 else int(np.prod(s)) for s in SHAPES.values())
    assert state.nu.shape == (K,)


def test_the_matrix_and_the_statistic_agree_with_the_block():
    """shampoo_matrix(v) m equals shampoo_apply(v, m); the statistic of [F1 F2] is that of F1 plus that of F2
    (linear in M = F Fᵀ), and of g[:, None] the block's."""
    shapes = tuple(np.shape(x) for x in jax.tree_util.tree_leaves(_params(0)))
    D = sum(int(np.prod(s)) for s in shapes)
    rng = np.random.default_rng(1)
    F1, F2 = rng.normal(size=(D, 3)), rng.normal(size=(D, 2))
    v = methods.shampoo_statistic(jnp.asarray(np.hstack([F1, F2])), shapes)
    np.testing.assert_allclose(v, methods.shampoo_statistic(jnp.asarray(F1), shapes)
                               + methods.shampoo_statistic(jnp.asarray(F2), shapes), rtol=1e-13)
    m = rng.normal(size=D)
    np.testing.assert_allclose(methods.shampoo_matrix(v, shapes, 1e-6) @ m, methods.shampoo_apply(v, m, shapes, 1e-6),
                               rtol=1e-11)
    Smat = np.asarray(methods.shampoo_matrix(v, shapes, 1e-6))
    np.testing.assert_allclose(Smat, Smat.T, atol=1e-12)
    assert np.linalg.eigvalsh(Smat).min() > 0


def _mlp():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    X = jax.random.normal(k[0], (6, 2))
    Y = jnp.sin(X[:, 0])
    p0 = {"W1": 0.5 * jax.random.normal(k[1], (2, 4)), "b1": jnp.zeros(4), "W2": 0.5 * jax.random.normal(k[2], (4,))}
    res = lambda p: jnp.tanh(X @ p["W1"] + p["b1"]) @ p["W2"] - Y
    return problems.from_loss(lambda p: 0.5 * jnp.mean(res(p) ** 2), p0, residuals=res)


def test_the_discrete_engine_runs_shampoo_on_a_pytree_and_starts_at_the_equilibrium():
    """v0 = equilibrium is V(Σ(θ0)) from the noise's covariance factor (all of Σ, not its diagonal), shape
    (K,) = 2² + 4² + 4 + 4; the run moves and records v."""
    prob, nz = _mlp(), noise.label_noise(0.5)
    m = S.shampoo(c=10.0, eps=1e-8)
    tr = S.simulate_discrete(prob, nz, m, eta=0.05, steps=200, n_paths=2, key=1, n_record=2,
                             start=S.Start(v0="equilibrium"), execution=S.Execution(progress=False))
    K = 2**2 + 4**2 + 4 + 4
    assert tr.v.shape == (2, 3, K) and np.all(np.isfinite(tr.theta))
    theta0 = tr.theta[0, 0]
    want = m.for_problem(prob).V_of_factor(nz.covariance_factor(prob, jnp.asarray(theta0)))
    np.testing.assert_allclose(tr.v[0, 0], want, rtol=1e-12)
    F = np.asarray(nz.covariance_factor(prob, jnp.asarray(theta0)))
    W1 = (F[:8] @ F[:8].T).reshape(2, 4, 2, 4)  # the W1 block of Σ, as (i, j, l, k)
    np.testing.assert_allclose(tr.v[0, 0, :4].reshape(2, 2), np.einsum("ijlj->il", W1), rtol=1e-12)
    assert not np.allclose(tr.theta[:, 0], tr.theta[:, -1])


def test_the_slow_engine_runs_shampoos_label_noise_ode(small_factorization):
    """Shampoo's label-noise ODE with a full S (``sde.full_S``) runs and moves; settings the full-S ODE does not
    use are refused by name. (Its SDE form: the slow tier.)"""
    nz, m = noise.label_noise(0.5), S.shampoo(c=10.0, eps=1e-6)
    ode = S.simulate_slow_sde(small_factorization, nz, m, T=0.05, n_paths=1, key=0, n_record=2,
                              execution=S.Execution(progress=False))
    assert ode.meta["solver"] == "Tsit5 (full S)" and not ode.meta["failure_reasons"]
    K = m.for_problem(small_factorization).statistic_size()
    assert ode.v.shape == (1, 3, K) and not np.allclose(ode.theta[0, 0], ode.theta[0, -1])
    residuals = small_factorization.least_squares().residuals
    assert np.abs(np.asarray(residuals(jnp.asarray(ode.theta[0, -1])))).max() < 1e-7  # on Γ
    with pytest.raises(S.ConfigError) as e:
        S.simulate_slow_sde(small_factorization, noise.gaussian(np.eye(small_factorization.dim)), m, T=0.05,
                            n_record=1, integrator=S.LabelNoiseODE())
    assert e.value.field in ("noise", "integrator"), e.value.field
    for kw, field in ((dict(execution=S.Execution(checkpoint="x.npz")), "execution.checkpoint"),
                      (dict(integrator=S.LabelNoiseODE(rank=2)), "integrator.rank"),
                      (dict(start=S.Start(v0=1.0)), "v0")):
        with pytest.raises(S.ConfigError) as e:
            S.simulate_slow_sde(small_factorization, nz, m, T=0.05, n_record=1, **kw)
        assert e.value.field == field, (e.value.field, field)
    with pytest.raises(S.ConfigError) as e:
        S.shampoo(eps=0.0)
    assert e.value.field == "eps"


def test_a_shampoo_run_projects_onto_gamma_and_its_v_starts_the_ode(small_factorization):
    """at_projection with Shampoo's full S puts the discrete states on Γ; a recorded v (matrices with negative
    entries) is a valid start of the slow engine; a v whose matrix is not positive semidefinite is refused."""
    nz, m = noise.label_noise(0.5), S.shampoo(c=10.0, eps=1e-6)
    tr = S.simulate_discrete(small_factorization, nz, m, eta=0.05, T=0.05, n_paths=2, key=0, n_record=1,
                             start=S.Start(theta0=S.on_gamma(small_factorization), v0="equilibrium"),
                             execution=S.Execution(progress=False))
    on = S.at_projection(tr, small_factorization, m)
    assert np.all(on.observables["train_loss"] < 1e-18)
    assert np.all(np.asarray(tr.observables["train_loss"])[:, -1] > 1e-8)  # the raw iterates are off Γ
    v = tr.v[0, -1]
    assert np.any(v < 0)
    from slowsde_jax.inputs import parse_inputs

    got = parse_inputs(small_factorization, nz, m, key=0, n_paths=1, n_record=1, theta0=tr.theta[0, -1], v0=v,
                       dtype=None, v0_modes=("equilibrium",))  # the slow engine's check: accepted
    assert got.v0_mode == "given"
    bad = np.array(v)
    bad[:4] = [1.0, 2.0, 2.0, 1.0]  # U's L = [[1, 2], [2, 1]]: an eigenvalue -1
    with pytest.raises(S.ConfigError) as e:
        S.simulate_slow_sde(small_factorization, nz, m, T=0.01, n_record=1, start=S.Start(theta0=tr.theta[0, -1], v0=bad))
    assert e.value.field == "v0"


def test_a_user_agm_with_a_matrix_preconditioner_restates_shampoo(small_factorization):
    """``custom_agm(statistic of F, matrix S, full_matrix=True)`` built from Shampoo's pieces gives the built-in's
    numbers: the discrete run to rounding (S(v) m as one matrix product instead of per leaf), the label-noise
    ODE to its tolerances."""
    shapes = tuple(tuple(s) for s in small_factorization.leaf_shapes)
    eps = 1e-6
    mine = S.custom_agm(lambda F: methods.shampoo_statistic(F, shapes), lambda v: methods.shampoo_matrix(v, shapes, eps),
                        c=10.0, name="my_shampoo", full_matrix=True)
    builtin = S.shampoo(c=10.0, eps=eps)
    assert isinstance(mine, S.CustomMatrixAGM) and mine.full_statistic and not mine.diagonal_S
    nz, ex = noise.label_noise(0.5), S.Execution(progress=False)
    kw = dict(eta=0.05, T=0.05, n_paths=2, key=0, n_record=1, start=S.Start(v0="equilibrium"), execution=ex)
    a, b = (S.simulate_discrete(small_factorization, nz, m, **kw) for m in (mine, builtin))
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(a.v, b.v, rtol=1e-11, atol=1e-13)


@pytest.mark.slow
def test_the_full_S_ode_solvers_and_a_user_matrix_agm_agree(small_factorization):
    """Shampoo's label-noise ODE with Kvaerno5 (stiff) equals Tsit5's to the tolerances, and a user's
    ``custom_agm(..., full_matrix=True)`` restating Shampoo gives the built-in's ODE."""
    shapes = tuple(tuple(s) for s in small_factorization.leaf_shapes)
    m = S.shampoo(c=10.0, eps=1e-6)
    mine = S.custom_agm(lambda F: methods.shampoo_statistic(F, shapes), lambda v: methods.shampoo_matrix(v, shapes, 1e-6),
                        c=10.0, name="my_shampoo", full_matrix=True)
    nz, ex = noise.label_noise(0.5), S.Execution(progress=False)
    kw = dict(T=0.05, n_paths=1, key=0, n_record=2, execution=ex)
    tsit5 = S.simulate_slow_sde(small_factorization, nz, m, **kw)
    stiff = S.simulate_slow_sde(small_factorization, nz, m, integrator=S.LabelNoiseODE(solver="kvaerno5"), **kw)
    assert stiff.meta["solver"] == "Kvaerno5 (full S)"
    np.testing.assert_allclose(stiff.theta, tsit5.theta, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(S.simulate_slow_sde(small_factorization, nz, mine, **kw).theta, tsit5.theta,
                               rtol=1e-7, atol=1e-10)


@pytest.mark.slow
def test_shampoos_sde_form_under_label_noise_converges_to_its_ode_in_dt(small_factorization):
    """Under label noise the SDE form (projected Euler-Maruyama with the matrix S: drift, retraction) is the ODE
    to O(dt): its distance to Shampoo's label-noise ODE at T = 0.2 halves with dt (6.7e-6, 3.4e-6 when
    written). Under Gaussian noise it diffuses through the matrix S (the paths separate)."""
    nz, m, ex = noise.label_noise(0.5), S.shampoo(c=10.0, eps=1e-6), S.Execution(progress=False)
    start = S.Start(theta0=S.on_gamma(small_factorization), v0="equilibrium")
    ode = S.simulate_slow_sde(small_factorization, nz, m, T=0.2, n_record=2, start=start, execution=ex)
    gaps = [np.abs(S.simulate_slow_sde(small_factorization, nz, m, T=0.2, n_record=2, start=start, execution=ex,
                                       integrator=S.ProjectedEulerMaruyama(dt=dt)).theta - ode.theta).max()
            for dt in (4e-3, 2e-3)]
    assert 1e-8 < gaps[1] < 0.6 * gaps[0] and gaps[0] < 1e-4, gaps
    sde = S.simulate_slow_sde(small_factorization, noise.gaussian(0.05 * np.eye(small_factorization.dim)), m, T=0.05,
                              n_paths=2, key=0, n_record=1, integrator=S.ProjectedEulerMaruyama(dt=0.01),
                              execution=ex)  # diffusion through the matrix S
    assert not sde.meta["failure_reasons"] and not np.allclose(sde.theta[0, -1], sde.theta[1, -1])


@pytest.mark.slow
def test_shampoo_label_noise_ode_against_discrete_runs_in_eta(small_factorization):
    """Shampoo's label-noise ODE against its discrete runs at η = 0.04, 0.02, 0.01 (32 paths, start on Γ with v
    at equilibrium, T = 0.5, at Φ_S): the weak error of tr H and tr(Diag H^{1/2}) falls with η, each step by
    more than its standard errors, with a resolved order (1.16 and 1.15 when written); at η = 0.01 the
    discrete runs are far closer to Shampoo's ODE than to Adam's (which ends 0.63 higher in tr H)."""
    nz, m = noise.label_noise(0.5), S.shampoo(c=10.0, eps=1e-8)
    start = S.Start(theta0=S.on_gamma(small_factorization), v0="equilibrium")
    ex = S.Execution(progress=False)
    ode = S.simulate_slow_sde(small_factorization, nz, m, T=0.5, n_record=2, start=start, execution=ex,
                              recording=S.Recording(sharpness=True))
    adam = S.simulate_slow_sde(small_factorization, nz, S.adam(c=10.0, eps=1e-8), T=0.5, n_record=2, start=start,
                               execution=ex)
    res = S.eta_sweep(small_factorization, nz, m, [0.04, 0.02, 0.01], 0.5, 32, 3, ode,
                      ["trace_H", "trace_sqrt_diag_H"], start=start, execution=ex)
    for name, o in res["observables"].items():
        err, se = np.asarray(o["weak_error"]), np.asarray(o["se"])
        assert np.all(err[:-1] - err[1:] > 2 * np.hypot(se[:-1], se[1:])), (name, err, se)
        assert o["order_resolved"] and 0.6 < o["order"] < 1.6, (name, o["order"])
    finest = res["comparisons"][-1]
    to_adam = abs(finest.mean_discrete["trace_H"][-1] - adam.observables["trace_H"][0, -1])
    assert to_adam > finest.weak_error["trace_H"][-1] + 10 * finest.se["trace_H"][-1], (to_adam, finest.weak_error)
