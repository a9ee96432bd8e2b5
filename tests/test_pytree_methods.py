"""Every method on a multi-leaf pytree model, through both engines, against hand-written loops.

The engines work on the flat (D,) vector; the layers that Adalayer and ``adam_mini("leaf")`` average over
are the problem's own parameter leaves, which must travel with the problem (they were lost once: both
engines used one block for all coordinates).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import slowsde_jax as S
from slowsde_jax import noise, problems

X = jnp.asarray(np.random.default_rng(3).normal(size=(5, 2)))
Y = jnp.asarray([0.3, -0.2, 0.5, 0.1, -0.4])
PARAMS0 = {"W1": jnp.asarray([[0.8, -0.5, 0.3], [0.2, 0.9, -0.7]]), "b1": jnp.asarray([0.1, -0.2, 0.05]),
           "w2": jnp.asarray([0.6, -0.4, 0.9])}  # leaves of sizes 6, 3, 3, raveled in sorted key order W1, b1, w2
ETA, STEPS = 0.05, 40


def residuals(p):
    return jnp.tanh(X @ p["W1"] + p["b1"]) @ p["w2"] - Y


def loss(p):
    return 0.5 * jnp.mean(residuals(p) ** 2)


MLP = problems.from_loss(loss, PARAMS0, residuals=residuals)
FLAT0, UNRAVEL = ravel_pytree(PARAMS0)
LEAF_IDS = np.repeat(np.arange(3), [x.size for x in jax.tree.leaves(PARAMS0)])

METHODS = {
    "adam": (S.adam(c=10.0), None),
    "adalayer": (S.adalayer(c=10.0), LEAF_IDS),
    "adam_mini_leaf": (S.adam_mini("leaf", c=10.0), LEAF_IDS),
    "adam_mini_dict": (S.adam_mini({"W1": 0, "b1": 1, "w2": 0}, c=10.0), np.array([0] * 6 + [1] * 3 + [0] * 3)),
    "adame": (S.adame(lam=0.3, c=10.0), None),
    "rmsprop": (S.rmsprop(c=10.0), None),
    "sgd": (S.sgd(momentum=0.5), None),
}


GRAD = jax.jit(jax.grad(MLP.loss))


def hand_agm(theta, steps, method, ids):
    """The AGM of docs/math.md in numpy on the exact gradient; V averages over ``ids`` (None: the identity)."""
    grad = GRAD
    beta1 = float(method.beta1)
    m, v, out = np.zeros_like(theta), np.zeros_like(theta), [theta]
    for _ in range(steps):
        g = np.asarray(grad(jnp.asarray(theta)))
        m = beta1 * m + (1 - beta1) * g
        if method.has_v:
            sq = g * g
            if ids is not None:
                sq = np.array([sq[ids == ids[i]].mean() for i in range(len(sq))])
            v = (1 - float(method.c) * ETA**2) * v + float(method.c) * ETA**2 * sq
            theta = theta - ETA * m / (v ** float(method.lam) + float(method.eps))
        else:
            theta = theta - ETA * m
        out.append(theta)
    return np.array(out)


@pytest.mark.parametrize("name", list(METHODS))
def test_discrete_engine_on_a_pytree_matches_a_hand_loop_and_the_optax_block(name):
    method, ids = METHODS[name]
    traj = S.simulate_discrete(MLP, noise.label_noise(0.0), method, eta=ETA, steps=STEPS, n_record=STEPS, execution=S.Execution(progress=False))
    want = hand_agm(np.asarray(FLAT0), STEPS, method, ids)
    np.testing.assert_allclose(traj.theta[0], want, rtol=1e-11, atol=1e-13)
    # the method's own optax block on the user's pytree: the same numbers step for step
    tx, params = method.optax(ETA), PARAMS0
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        upd, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, upd), state

    for k in range(STEPS):
        params, state = step(params, state)
        np.testing.assert_allclose(ravel_pytree(params)[0], traj.theta[0, k + 1], rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("name", ["adalayer", "adam_mini_dict"])
def test_slow_ode_v_equation_uses_the_leaves(name):
    """The label-noise ODE's v moves at c (V(Sigma(zeta)) - v) with V the mean per leaf (per block of leaves),
    and its equilibrium start is V(Sigma(zeta0)): both against hand-computed block means."""
    from slowsde_jax.inputs import initial_v

    method, ids = METHODS[name]
    nz = noise.label_noise(0.5)
    zeta0 = np.asarray(S.geometry.project(MLP.loss, FLAT0, np.ones(MLP.dim), least_squares=MLP.least_squares()))
    diag = np.asarray(nz.covariance_diag(MLP, jnp.asarray(zeta0)))
    want = np.array([diag[ids == ids[i]].mean() for i in range(diag.size)])
    assert np.ptp(want) > 1e-3 * np.max(want)  # a single block over all coordinates would give one number
    np.testing.assert_allclose(initial_v(MLP, nz, method, jnp.asarray(zeta0), "equilibrium"), want, rtol=1e-12)
    # a start away from equilibrium: dv/dt at t = 0 is c (V(Sigma(zeta0)) - v0)
    v0, T = np.full(MLP.dim, 2.0 * want.max()), 1e-6
    traj = S.simulate_slow_sde(MLP, nz, method, T=T, n_record=1, start=S.Start(theta0=zeta0, v0=v0),
                               integrator=S.LabelNoiseODE(imex_fallback=False),  # not stiff over 1e-6
                               execution=S.Execution(progress=False))
    np.testing.assert_allclose(traj.theta[0, 0], zeta0, atol=1e-9)
    rate = (traj.v[0, 1] - v0) / T
    np.testing.assert_allclose(rate, float(method.c) * (want - v0), rtol=1e-4)


def test_block_sharpness_uses_the_leaves():
    """Sum_B sqrt(|B| tr H_BB) over the problem's leaves, not one block."""
    from slowsde_jax.observables import sharpness_values

    hd = np.asarray(MLP.hessian_diag(FLAT0))
    got = sharpness_values(MLP, FLAT0, S.adalayer())["block_sharpness"]
    want = sum(np.sqrt(max((LEAF_IDS == b).sum() * hd[LEAF_IDS == b].sum(), 0.0)) for b in range(3))
    one_block = np.sqrt(max(hd.size * hd.sum(), 0.0))
    assert abs(want - one_block) > 1e-3
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_unbound_leaf_method_refuses_a_flat_vector():
    with pytest.raises(ValueError, match="for_problem"):
        S.adalayer().V(jnp.ones(4))
    bound = S.adalayer().for_problem(MLP)
    assert bound.blocks == tuple(int(i) for i in LEAF_IDS)
    assert bound.for_problem(MLP) is bound


def test_per_leaf_ids_for_other_leaves_are_refused():
    with pytest.raises(S.ConfigError, match="blocks"):
        S.adam_mini({"A": 0, "B": 1, "C": 2}).for_problem(MLP)
    with pytest.raises(S.ConfigError, match="blocks"):
        S.adam_mini({"W1": 0, "b1": 1}).for_problem(MLP)


def test_factorization_declares_its_two_layers():
    mf = problems.matrix_factorization(d1=3, d2=4, rank=1, n=6, model_rank=2)
    assert mf.leaf_sizes == (6, 8)
    ids = S.adalayer().for_problem(mf).blocks
    assert ids == (0,) * 6 + (1,) * 8


def test_per_leaf_ids_name_the_factorizations_layers_and_lists_are_one_leafs_ids():
    mf = problems.matrix_factorization(d1=3, d2=4, rank=1, n=6, model_rank=2)
    assert S.adam_mini({"U": 0, "V": 1}).for_problem(mf).blocks == (0,) * 6 + (1,) * 8
    assert S.adam_mini({"a": [0, 0], "b": [1, 1, 1]}).blocks == (0, 0, 1, 1, 1)  # ids per coordinate, per leaf
    for empty in ([], {}, ()):
        with pytest.raises(S.ConfigError, match="^blocks: holds no block ids"):
            S.adam_mini(empty)
