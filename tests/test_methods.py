"""The AGM transforms against a plain numpy re-implementation of math §1, and against optax."""
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import slowsde_jax as S
from slowsde_jax.methods import ScaleByAGMState, scale_by_agm, second_moment

D, STEPS = 6, 300
RNG = np.random.default_rng(0)
GRADS = RNG.normal(size=(STEPS, D)) * np.linspace(0.1, 3.0, D)  # well-spread scales per coordinate


def numpy_agm(grads, eta, beta1, beta2, eps, lam, V, bias_correction=False, v0=None):
    """The AGM of math §1 in numpy; lam None is SGD. Returns the updates, shape (steps, D)."""
    m = np.zeros(grads.shape[1])
    v = np.zeros(grads.shape[1]) if v0 is None else np.array(v0, float)
    out = []
    for k, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        mh = m / (1 - beta1**k) if bias_correction else m
        if lam is None:
            out.append(-eta * mh)
            continue
        v = beta2 * v + (1 - beta2) * V(g * g)
        vh = v / (1 - beta2**k) if bias_correction else v
        out.append(-eta * mh / (vh**lam + eps))
    return np.array(out)


def run_transform(tx, grads, params0=None):
    params0 = jnp.zeros(grads.shape[1]) if params0 is None else params0
    state = tx.init(params0)
    update = jax.jit(tx.update)
    out = []
    for g in grads:
        u, state = update(jnp.asarray(g), state)
        out.append(np.asarray(u))
    return np.array(out), state


def block_mean(ids):
    ids = np.asarray(ids)

    def V(d):
        means = {b: d[ids == b].mean() for b in np.unique(ids)}
        return np.array([means[b] for b in ids])

    return V


ETA = 0.05
CASES = {
    "adam": (S.adam(beta1=0.9, c=10.0, eps=1e-8), dict(beta1=0.9, beta2=1 - 10 * ETA**2, eps=1e-8, lam=0.5, V=lambda d: d)),
    "adam_beta2": (S.adam(beta1=0.8, beta2=0.99, eps=1e-3), dict(beta1=0.8, beta2=0.99, eps=1e-3, lam=0.5, V=lambda d: d)),
    "adame": (S.adame(lam=0.25, beta1=0.9, c=5.0, eps=1e-6), dict(beta1=0.9, beta2=1 - 5 * ETA**2, eps=1e-6, lam=0.25, V=lambda d: d)),
    "rmsprop": (S.rmsprop(beta2=0.95, eps=0.0), dict(beta1=0.0, beta2=0.95, eps=0.0, lam=0.5, V=lambda d: d)),
    "adam_mini": (S.adam_mini(blocks=[0, 0, 1, 1, 1, 2], beta2=0.9, eps=1e-8),
                  dict(beta1=0.9, beta2=0.9, eps=1e-8, lam=0.5, V=block_mean([0, 0, 1, 1, 1, 2]))),
    "sgd": (S.sgd(), dict(beta1=0.0, beta2=None, eps=0.0, lam=None, V=None)),
    "sgd_momentum": (S.sgd(momentum=0.9), dict(beta1=0.9, beta2=None, eps=0.0, lam=None, V=None)),
    "adam_bias_corrected": (S.adam(beta2=0.999, eps=1e-8, bias_correction=True),
                            dict(beta1=0.9, beta2=0.999, eps=1e-8, lam=0.5, V=lambda d: d, bias_correction=True)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_update_matches_numpy_reference(name):
    method, ref = CASES[name]
    got, state = run_transform(method.optax(ETA), GRADS)
    want = numpy_agm(GRADS, ETA, **ref)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert int(state[0].count) == STEPS  # state: (AGM or EMA block, learning-rate block)
    assert (second_moment(state) is None) == (ref["lam"] is None)


def test_initial_v_is_used():
    v0 = np.linspace(0.5, 2.0, D)
    got, _ = run_transform(S.adam(beta2=0.9).optax(ETA, v0=v0), GRADS[:50])
    want = numpy_agm(GRADS[:50], ETA, 0.9, 0.9, 1e-8, 0.5, lambda d: d, v0=v0)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_bias_corrected_adam_agrees_with_optax_adam():
    got, _ = run_transform(S.adam(beta1=0.9, beta2=0.999, eps=1e-8, bias_correction=True).optax(1e-3), GRADS)
    want, _ = run_transform(optax.adam(1e-3, b1=0.9, b2=0.999, eps=1e-8), GRADS)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-18)


def test_adame_half_is_adam():
    a, _ = run_transform(S.adame(lam=0.5, c=10.0).optax(ETA), GRADS)
    b, _ = run_transform(S.adam(c=10.0).optax(ETA), GRADS)
    np.testing.assert_allclose(a, b, rtol=1e-13)


def test_adam_mini_with_singleton_blocks_is_adam():
    a, _ = run_transform(S.adam_mini(blocks=list(range(D))).optax(ETA), GRADS)
    b, _ = run_transform(S.adam().optax(ETA), GRADS)
    np.testing.assert_allclose(a, b, rtol=1e-13)


def test_pytree_params_match_flat_and_leaf_blocks():
    params = {"a": jnp.zeros((2,)), "b": jnp.zeros((2, 2))}  # ravel order: a (2), b (4)
    flat_grads = GRADS[:100]
    tree_grads = [{"a": jnp.asarray(g[:2]), "b": jnp.asarray(g[2:].reshape(2, 2))} for g in flat_grads]
    ids = [0, 0, 1, 1, 1, 1]
    for method in (S.adalayer(beta2=0.9), S.adam_mini(blocks="leaf", beta2=0.9), S.adam_mini(blocks={"a": 0, "b": 1}, beta2=0.9),
                   S.adam_mini(blocks={"a": jnp.zeros(2, int), "b": jnp.ones((2, 2), int)}, beta2=0.9)):
        tx = method.optax(ETA)
        state = tx.init(params)
        got = []
        for g in tree_grads:
            u, state = tx.update(g, state)
            got.append(np.concatenate([np.ravel(u["a"]), np.ravel(u["b"])]))
        want = numpy_agm(flat_grads, ETA, 0.9, 0.9, 1e-8, 0.5, block_mean(ids))
        np.testing.assert_allclose(np.array(got), want, rtol=1e-12)


def test_plain_adam_on_pytree_equals_flat():
    params = [jnp.zeros(3), jnp.zeros(3)]
    tx = S.adam().optax(ETA)
    state = tx.init(params)
    got = []
    for g in GRADS[:50]:
        u, state = tx.update([jnp.asarray(g[:3]), jnp.asarray(g[3:])], state)
        got.append(np.concatenate([u[0], u[1]]))
    flat, _ = run_transform(S.adam().optax(ETA), GRADS[:50])
    np.testing.assert_allclose(np.array(got), flat, rtol=1e-12, atol=1e-15)


# ----- the optax blocks against the pre-blocks closure -----------------------------------------------------
class LegacyState(NamedTuple):
    count: jax.Array
    m: jax.Array
    v: Any


def legacy_optax(method, eta, v0=None):
    """The AGM transform as one closure over raveled (D,) state: the implementation before the optax blocks."""
    beta2 = method.beta2_at(eta) if method.has_v else None

    def init(params):
        flat, _ = ravel_pytree(params)
        m = jnp.zeros_like(flat)
        if not method.has_v:
            v = None
        elif v0 is None:
            v = jnp.zeros_like(flat)
        else:
            v = jnp.broadcast_to(jnp.asarray(v0, flat.dtype), flat.shape)
        return LegacyState(count=jnp.zeros((), jnp.int32), m=m, v=v)

    def update(updates, state, params=None):
        g, unravel = ravel_pytree(updates)
        count = state.count + 1
        m = method.beta1 * state.m + (1.0 - method.beta1) * g
        m_hat = m / (1.0 - method.beta1**count) if method.bias_correction else m
        if method.has_v:
            v = beta2 * state.v + (1.0 - beta2) * method.V(g * g, updates)
            v_hat = v / (1.0 - beta2**count) if method.bias_correction else v
            step = -eta * method.S(v_hat) * m_hat
        else:
            v = None
            step = -eta * m_hat
        return unravel(step.astype(g.dtype)), LegacyState(count=count, m=m, v=v)

    return optax.GradientTransformation(init, update)


TREE = {"a": jnp.zeros((2,)), "b": jnp.zeros((2, 2))}  # ravel order: a (2), b (4)


def as_tree(g):
    return {"a": jnp.asarray(g[:2]), "b": jnp.asarray(g[2:].reshape(2, 2))}


def run_tx(tx, params, to_params, steps=40):
    """Updates raveled (steps, D) and the final state of ``tx`` on the first ``steps`` gradients."""
    state, upd = tx.init(params), []
    update = jax.jit(tx.update)
    for g in GRADS[:steps]:
        u, state = update(to_params(g), state)
        upd.append(ravel_pytree(u)[0])
    return np.array(upd), state


def run_both(method, params, to_params, v0=None):
    """(updates, state) of the legacy closure and of ``method.optax`` on the same gradients."""
    return run_tx(legacy_optax(method, ETA, v0=v0), params, to_params), run_tx(method.optax(ETA, v0=v0), params, to_params)


LEGACY_METHODS = {
    "adam": lambda bc: S.adam(beta2=0.9, eps=1e-8, bias_correction=bc),
    "adam_c": lambda bc: S.adam(beta1=0.8, c=10.0, eps=1e-3, bias_correction=bc),
    "adam_mini": lambda bc: S.adam_mini(blocks=[0, 0, 1, 1, 1, 2], beta2=0.9, bias_correction=bc),
    "adam_mini_leaf": lambda bc: S.adam_mini(blocks="leaf", beta2=0.95, bias_correction=bc),
    "adalayer": lambda bc: S.adalayer(beta2=0.9, bias_correction=bc),
    "adame": lambda bc: S.adame(lam=0.25, beta1=0.9, c=5.0, eps=1e-6, bias_correction=bc),
    "rmsprop": lambda bc: S.rmsprop(beta2=0.95, eps=0.0, bias_correction=bc),
    "sgd": lambda bc: S.sgd(bias_correction=bc),
    "sgd_momentum": lambda bc: S.sgd(momentum=0.9, bias_correction=bc),
}


@pytest.mark.slow
@pytest.mark.parametrize("bias_correction", [False, True])
@pytest.mark.parametrize("name", list(LEGACY_METHODS))
@pytest.mark.parametrize("layout", ["flat", "tree"])
def test_blocks_equal_the_legacy_closure(name, bias_correction, layout):
    method = LEGACY_METHODS[name](bias_correction)
    params, to_params = (jnp.zeros(D), jnp.asarray) if layout == "flat" else (TREE, as_tree)
    (want, old), (got, new) = run_both(method, params, to_params)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    np.testing.assert_allclose(ravel_pytree(new[0].mu if method.has_v else new[0].ema)[0], old.m, rtol=1e-13, atol=0)
    if method.has_v:
        np.testing.assert_allclose(second_moment(new), old.v, rtol=1e-13, atol=0)
        assert jax.tree.structure(new[0].nu) == jax.tree.structure(params)  # nu is shaped like the params
    else:
        assert second_moment(new) is None


@pytest.mark.parametrize("layout", ["flat", "tree"])
def test_v0_as_scalar_flat_vector_or_pytree(layout):
    method = S.adam_mini(blocks=[0, 0, 1, 1, 1, 2], beta2=0.9)
    params, to_params = (jnp.zeros(D), jnp.asarray) if layout == "flat" else (TREE, as_tree)
    v0 = np.linspace(0.5, 2.0, D)
    (want, _), (got, _) = run_both(method, params, to_params, v0=0.7)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    (want, _), (got, _) = run_both(method, params, to_params, v0=v0)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=0)
    from_tree, _ = run_tx(method.optax(ETA, v0=to_params(v0)), params, to_params)
    np.testing.assert_array_equal(from_tree, got)


def test_sgd_is_optax_ema_and_agm_block_state_is_optax_style():
    assert isinstance(S.sgd(momentum=0.5).optax(ETA).init(TREE)[0], optax.EmaState)
    st = S.adam().scale_by_agm(ETA).init(TREE)
    assert isinstance(st, ScaleByAGMState) and int(st.count) == 0
    assert jax.tree.map(jnp.shape, st.mu) == jax.tree.map(jnp.shape, TREE) == jax.tree.map(jnp.shape, st.nu)
    tx = scale_by_agm(0.9, 0.99, 1e-8, 0.5)  # the bare block: S(v) m, no learning rate
    u, _ = tx.update(as_tree(GRADS[0]), tx.init(TREE))
    g = GRADS[0]
    np.testing.assert_allclose(ravel_pytree(u)[0], 0.1 * g / (np.sqrt(0.01 * g * g) + 1e-8), rtol=1e-13)


# ----- composition with other optax transforms on an equinox model -----------------------------------------
def mlp_params():
    model = eqx.nn.MLP(2, 1, 8, 2, key=jax.random.PRNGKey(0))
    return eqx.filter(model, eqx.is_array)


def mlp_grads(params, steps, seed=1):
    """Random gradients shaped like ``params`` with global norms spread around 1 (some clipped, some not)."""
    flat, unravel = ravel_pytree(params)
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.2, 5.0, steps) / np.sqrt(flat.size)
    return [unravel(jnp.asarray(rng.normal(size=flat.size) * s)) for s in scales]


def leaf_ids(params):
    return np.repeat(np.arange(len(jax.tree.leaves(params))), [x.size for x in jax.tree.leaves(params)])


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["global_norm", "elementwise"])
@pytest.mark.parametrize("name", ["adam", "adalayer"])
def test_clipping_chain_on_an_equinox_mlp(clip, name):
    params = mlp_params()
    method = S.adam(beta2=0.9) if name == "adam" else S.adalayer(beta2=0.9)
    V = (lambda d: d) if name == "adam" else block_mean(leaf_ids(params))
    clipper = optax.clip_by_global_norm(1.0) if clip == "global_norm" else optax.clip(0.01)
    tx = optax.chain(clipper, method.scale_by_agm(ETA), optax.scale_by_learning_rate(ETA))
    grads = mlp_grads(params, 30)
    state, got = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        assert jax.tree.structure(u) == jax.tree.structure(params)
        got.append(ravel_pytree(u)[0])
    flat = np.array([ravel_pytree(g)[0] for g in grads])
    if clip == "global_norm":
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        assert 0 < np.sum(norms > 1.0) < len(grads)
        clipped = flat * np.minimum(1.0, 1.0 / norms)
    else:
        assert 0 < np.mean(np.abs(flat) > 0.01) < 1
        clipped = np.clip(flat, -0.01, 0.01)
    want = numpy_agm(clipped, ETA, 0.9, 0.9, 1e-8, 0.5, V)
    np.testing.assert_allclose(np.array(got), want, rtol=1e-12, atol=1e-15)


def test_multi_transform_adam_on_weights_sgd_on_biases():
    params = mlp_params()
    labels = jax.tree.map(lambda p: "adam" if p.ndim == 2 else "sgd", params)
    tx = optax.multi_transform({"adam": S.adam(beta2=0.9).optax(ETA), "sgd": S.sgd(momentum=0.5).optax(ETA)},
                              lambda _: labels)  # a callable: the labels tree is itself an (callable) MLP
    grads = mlp_grads(params, 20)
    state, got = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        got.append(ravel_pytree(u)[0])
    got = np.array(got)
    flat = np.array([ravel_pytree(g)[0] for g in grads])
    is_w = np.asarray(ravel_pytree(jax.tree.map(lambda p: jnp.full(p.shape, p.ndim == 2), params))[0])
    np.testing.assert_allclose(got[:, is_w], numpy_agm(flat[:, is_w], ETA, 0.9, 0.9, 1e-8, 0.5, lambda d: d), rtol=1e-12)
    np.testing.assert_allclose(got[:, ~is_w], numpy_agm(flat[:, ~is_w], ETA, 0.5, None, 0.0, None, None), rtol=1e-12)
    assert second_moment(state).shape == (int(is_w.sum()),)  # only the Adam block holds a v


def test_masked_block_leaves_the_rest_to_the_learning_rate():
    params = mlp_params()
    mask = jax.tree.map(lambda p: p.ndim == 2, params)
    tx = optax.chain(optax.masked(S.adam(beta2=0.9).scale_by_agm(ETA), lambda _: mask), optax.scale_by_learning_rate(ETA))
    grads = mlp_grads(params, 10)
    state, got = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        got.append(ravel_pytree(u)[0])
    got = np.array(got)
    flat = np.array([ravel_pytree(g)[0] for g in grads])
    is_w = np.asarray(ravel_pytree(jax.tree.map(lambda p, w: jnp.full(p.shape, w), params, mask))[0])
    np.testing.assert_allclose(got[:, is_w], numpy_agm(flat[:, is_w], ETA, 0.9, 0.9, 1e-8, 0.5, lambda d: d), rtol=1e-12)
    np.testing.assert_allclose(got[:, ~is_w], -ETA * flat[:, ~is_w], rtol=1e-13)


def test_method_pieces_for_the_sde_side():
    m = S.adame(lam=0.25, eps=0.1, c=3.0)
    v = jnp.array([1.0, 16.0])
    np.testing.assert_allclose(m.S(v), 1 / (v**0.25 + 0.1))
    assert float(m.c_at(0.1)) == 3.0
    np.testing.assert_allclose(float(S.adam(beta2=0.99).c_at(0.1)), 1.0)
    np.testing.assert_allclose(S.sgd().S(v), [1.0, 1.0])
    mini = S.adam_mini(blocks=[0, 1, 1])
    np.testing.assert_allclose(mini.V(jnp.array([1.0, 2.0, 4.0])), [1.0, 3.0, 3.0])


@pytest.mark.parametrize("kwargs,field", [
    (dict(name="adam", beta1=1.0), "beta1"), (dict(name="adam", beta1=-0.1), "beta1"),
    (dict(name="adam", beta2=1.0), "beta2"), (dict(name="adam", eps=-1.0), "eps"),
    (dict(name="adame", lam=0.0), "lam"), (dict(name="adame", lam=1.5), "lam"),
    (dict(name="adam", beta2=0.9, c=1.0), "beta2"), (dict(name="adma"), "method"),
    (dict(name="adam", lr=0.1), "lr"), (dict(name="adam_mini", blocks=None), "blocks"),
])
def test_bad_hyperparameters_are_rejected_with_the_field(kwargs, field):
    name = kwargs.pop("name")
    with pytest.raises(S.ConfigError) as e:
        S.make_method(name, **kwargs)
    assert e.value.field == field


def test_unknown_method_suggests_a_close_match():
    with pytest.raises(S.ConfigError, match="did you mean 'adam'"):
        S.make_method("adma")


@pytest.mark.parametrize("fields,field", [
    (dict(beta1=1.5), "beta1"), (dict(eps=-1.0), "eps"), (dict(lam=0.0), "lam"), (dict(c=-1.0), "c"),
    (dict(beta2=1.0, c=None), "beta2"), (dict(beta2=0.9), "beta2"), (dict(c=None), "c"),
])
def test_a_method_cannot_be_built_invalid(fields, field):
    """The invariants live in the class: a method built directly or by dataclasses.replace is checked too."""
    import dataclasses

    good = S.adam()
    with pytest.raises(S.ConfigError) as e:
        dataclasses.replace(good, **{k: (None if v is None else jnp.asarray(v)) for k, v in fields.items()})
    assert e.value.field == field
    with pytest.raises(S.ConfigError, match="^beta1:"):
        S.AGM(beta1=jnp.asarray(2.0), c=jnp.asarray(10.0), beta2=None, eps=jnp.asarray(1e-8),
              lam=jnp.asarray(0.5), name="adam")
    with pytest.raises(S.ConfigError, match="^momentum:"):
        S.sgd(momentum=1.0)
    with pytest.raises(S.ConfigError, match="^beta1:"):
        S.SGD(beta1=jnp.asarray(-0.1))


def test_agm_and_sgd_are_final_classes_with_declared_v_and_s():
    """Two final classes under one abstract method; V and S are their own, SGD has no second moment."""
    assert isinstance(S.adam(), S.AGM) and isinstance(S.sgd(), S.SGD)
    assert isinstance(S.adam(), S.AbstractMethod) and isinstance(S.sgd(), S.AbstractMethod)
    assert S.AGM.has_v and not S.SGD.has_v
    v = jnp.array([0.25, 4.0])
    np.testing.assert_allclose(S.sgd().S(v), [1.0, 1.0])
    np.testing.assert_allclose(S.adam(eps=0.0).S(v), [2.0, 0.5])
    assert S.sgd().c_at(0.1) is None and not hasattr(S.sgd(), "lam")
    with pytest.raises(TypeError, match="final"):
        class MyAdam(S.AGM):  # noqa: F841
            pass


@pytest.mark.parametrize("method", [S.adam(), S.adalayer(), S.adame(lam=0.3)], ids=["adam", "adalayer", "adame"])
def test_float32_state_keeps_its_dtype_under_jit_and_cond(method):
    """As optax's own dtype tests do for optax.adam: float32 parameters give float32 moments after an update,
    a jitted step compiles once, and lax.cond over the state type-checks."""
    params = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    tx = method.optax(0.01)
    state = tx.init(params)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)

    @jax.jit
    def step(state):
        _, new = tx.update(grads, state, params)
        return new

    new = step(state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
    step(new)
    assert step._cache_size() == 1  # no recompilation for the updated state
    jax.lax.cond(True, lambda s: tx.update(grads, s, params)[1], lambda s: s, state)
