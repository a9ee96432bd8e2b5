"""The discrete engine: the §7 discrete column, sweeps that compile once, clocks, initial states."""
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import discrete, geometry, noise, problems, sweep
from slowsde_jax.methods import second_moment

HYP = problems.hyperbola(y=1.0)
LABEL = noise.label_noise(0.5)  # alpha = 0.25 on the one-sample hyperbola


def n_traces():
    """How many times the step kernel has been traced (compiled) so far."""
    return eqx.debug.get_num_traces(discrete._advance)


def projected_v(traj, method):
    """v-coordinate of Phi_{S(v_K)}(theta_K) for every path (math §7's measurement)."""
    theta, v = traj.theta[:, -1], traj.v[:, -1] if traj.v is not None else np.ones_like(traj.theta[:, -1])
    x = geometry.project(HYP.loss, jnp.asarray(theta), method.S(jnp.asarray(v)), least_squares=HYP.least_squares())
    return np.asarray(x[:, 1])


@pytest.mark.parametrize("method,reference,se_reference", [
    (S.adam(beta1=0.9, c=10.0, eps=0.0), 0.7459, None),
    (S.sgd(momentum=0.9), 0.7021, None),
])
@pytest.mark.slow
def test_hyperbola_reproduces_the_discrete_column_of_section_7(method, reference, se_reference):
    """Adam (eta = 0.01, beta1 = 0.9) and SGD (beta1 = 0.9) on the toy hyperbola with label noise, T = 0.5.

    The reference numbers were averaged over 20 000 runs; their standard error is estimated from our spread
    scaled to 20 000 runs and combined with ours. Tolerance: 3 combined standard errors.
    """
    traj = S.simulate_discrete(HYP, LABEL, method, eta=0.01, T=0.5, n_paths=4000, key=7, n_record=1, start=S.Start(v0="equilibrium"))
    assert traj.meta["steps"] == 5000 and np.isclose(traj.t[-1], 0.5)
    v_end = projected_v(traj, method)
    se = v_end.std(ddof=1) / np.sqrt(v_end.size)
    se_ref = v_end.std(ddof=1) / np.sqrt(20_000)
    assert abs(v_end.mean() - reference) < 3 * np.hypot(se, se_ref), (v_end.mean(), se)


def test_equilibrium_v0_and_clock():
    m = S.adam(c=10.0)
    traj = S.simulate_discrete(HYP, LABEL, m, eta=0.05, T=0.1, n_paths=3, key=0, n_record=5, start=S.Start(v0="equilibrium"))
    u, v = np.sqrt(2.0), 1.0
    np.testing.assert_allclose(traj.v[:, 0], np.tile([0.25 * 4 * u**2, 0.25 * 4 * v**2], (3, 1)), rtol=1e-13)
    np.testing.assert_allclose(traj.t, np.arange(6) * 0.02)
    assert traj.meta["record_steps"] == [0, 8, 16, 24, 32, 40]
    assert traj.theta.shape == (3, 6, 2) and traj.observables["loss"].shape == (3, 6)
    assert np.all(traj.diverged_step == -1)


def test_same_seed_same_numbers_and_other_seed_other_numbers():
    run = lambda key: S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.05, steps=50, n_paths=4, key=key, n_record=2)
    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert not np.allclose(a.theta, c.theta)


def test_engine_matches_a_hand_loop_of_the_optax_transform(small_diagonal_net):
    """The engine is the optax transform applied to noise.grad with the key stream split once per step."""
    prob = small_diagonal_net
    m, eta, steps = S.adam(beta2=0.9, eps=1e-6), 0.05, 30
    traj = S.simulate_discrete(prob, LABEL, m, eta=eta, steps=steps, n_paths=2, key=5, n_record=1)
    k_path = jax.random.split(jax.random.PRNGKey(5), 2)[1]
    k_init, key = jax.random.split(k_path)
    theta = prob.init(k_init)
    tx = m.optax(eta)
    st = tx.init(theta)
    for _ in range(steps):
        key, sub = jax.random.split(key)
        u, st = tx.update(LABEL.grad(prob, theta, sub), st)
        theta = theta + u
    np.testing.assert_allclose(traj.theta[1, -1], theta, rtol=1e-12)
    np.testing.assert_allclose(traj.v[1, -1], second_moment(st), rtol=1e-12)


def test_eta_sweep_compiles_once_and_matches_single_runs(small_diagonal_net):
    prob = small_diagonal_net
    m = S.adame(lam=0.3, c=5.0)
    kw = dict(T=0.05, n_paths=3, key=1, n_record=2)
    before = n_traces()
    sweep = S.simulate_discrete(prob, LABEL, m, sweep={"eta": [0.05, 0.1, 0.02]}, **kw)
    assert n_traces() - before == 1
    S.simulate_discrete(prob, LABEL, m, sweep={"eta": [0.03, 0.07, 0.04]}, **kw)
    assert n_traces() - before == 1  # new values, same shapes: no retrace
    assert [tr.meta["steps"] for tr in sweep] == [20, 5, 125]
    single = S.simulate_discrete(prob, LABEL, m, eta=0.02, **kw)
    np.testing.assert_allclose(sweep[2].theta, single.theta, rtol=1e-12)
    np.testing.assert_allclose(sweep[2].t, single.t)


def test_grid_sweep_over_lam_delta_and_n_train():
    prob = problems.diagonal_net(d=4, n=6, k=1, key=0, n_test=10)
    m = S.adame(lam=0.5, c=5.0)
    trajs = S.simulate_discrete(prob, LABEL, m, eta=0.05, steps=10, n_paths=2, key=2, n_record=1,
                                       sweep={"lam": [0.25, 0.5], "delta": [0.1, 0.5], "n_train": [4, 6]})
    assert len(trajs) == 8
    cfg = trajs[1].meta["hypers"]
    assert cfg == {"lam": 0.25, "delta": 0.1, "n_train": 6.0, "eta": 0.05}
    single = S.simulate_discrete(prob, noise.label_noise(0.1), S.adame(lam=0.25, c=5.0), eta=0.05, steps=10,
                                        n_paths=2, key=2, n_record=1)
    np.testing.assert_allclose(trajs[1].theta, single.theta, rtol=1e-12)
    small = S.simulate_discrete(prob.with_n_train(4), noise.label_noise(0.1), S.adame(lam=0.25, c=5.0), eta=0.05,
                                       steps=10, n_paths=2, key=2, n_record=1)
    np.testing.assert_allclose(trajs[0].theta, small.theta, rtol=1e-12)


def test_sweep_over_every_declared_field_compiles_once():
    """eta, lam, c (method), delta (noise) and n_train (problem) in one grid: one trace of the step kernel."""
    prob = problems.diagonal_net(d=3, n=5, k=1, key=1, n_test=10)
    kw = dict(steps=4, n_paths=1, key=0, n_record=1)
    grid = {"eta": [0.05, 0.1], "lam": [0.3, 0.5], "c": [2.0, 5.0], "delta": [0.1, 0.4], "n_train": [3, 5]}
    before = n_traces()
    trajs = S.simulate_discrete(prob, LABEL, S.adame(lam=0.5, c=5.0), sweep=grid, **kw)
    assert len(trajs) == 32 and n_traces() - before == 1
    S.simulate_discrete(prob, LABEL, S.adame(lam=0.4, c=3.0), sweep={k: v[::-1] for k, v in grid.items()}, **kw)
    assert n_traces() - before == 1


def test_sweep_names_come_from_the_classes_that_declare_them():
    assert sweep.SWEEPABLE == ("eta", "lam", "c", "beta1", "beta2", "eps", "delta", "n_train")
    assert noise.LabelNoise.sweepable == {"delta": "delta"} and noise.Minibatch.sweepable == {}
    assert problems.DiagonalNet.sweepable == {"n_train": "n_active"}
    with pytest.raises(S.ConfigError, match="delta"):
        S.simulate_discrete(HYP, noise.gaussian([0.1, 0.1]), S.adam(), eta=0.1, steps=2, sweep={"delta": [0.1]})
    with pytest.raises(S.ConfigError, match="n_train"):
        S.simulate_discrete(problems.from_loss(lambda t: 0.5 * jnp.mean(t**2), jnp.ones(2), residuals=lambda t: t),
                                   LABEL, S.adam(), eta=0.1, steps=2, sweep={"n_train": [1]})
    with pytest.raises(S.ConfigError, match="lam"):
        S.simulate_discrete(HYP, LABEL, S.sgd(), eta=0.1, steps=2, sweep={"lam": [0.5]})


def test_pathological_paths_are_frozen_and_flagged(small_diagonal_net):
    """With a huge learning rate some paths blow up: they are frozen at their last finite state."""
    prob = small_diagonal_net
    traj = S.simulate_discrete(prob, noise.label_noise(1.0), S.sgd(), eta=3.0, steps=200, n_paths=4, key=0, n_record=2, execution=S.Execution(divergence_bound=1e6))
    assert np.all(traj.diverged)
    assert np.all(np.isfinite(traj.theta))
    assert np.all(np.abs(traj.theta) <= 1e6)
    assert np.all((traj.diverged_step > 0) & (traj.diverged_step <= 200))
    np.testing.assert_allclose(traj.diverged_time, traj.diverged_step * 9.0)


def test_bad_arguments_raise_config_errors():
    with pytest.raises(S.ConfigError, match="eta"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=-0.1, T=1.0)
    with pytest.raises(S.ConfigError, match="T"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, T=0.0)
    with pytest.raises(S.ConfigError, match="n_paths"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, T=1.0, n_paths=0)
    with pytest.raises(S.ConfigError, match="c\\*eta\\^2"):
        S.simulate_discrete(HYP, LABEL, S.adam(c=10.0), eta=0.5, T=1.0)
    with pytest.raises(S.ConfigError, match="theta0"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, T=1.0, start=S.Start(theta0=[1.0, 2.0, 3.0]))
    with pytest.raises(S.ConfigError, match="sweep.lr"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, T=1.0, sweep={"lr": [0.1]})


# ----- the fast path (blocks of unmasked steps) against the plain path ----------------------------------------
# One shape for the Adam runs here and in test_streaming / test_sharding, so they share compiled kernels.
NET = problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)
ADAM = S.adam(c=5.0)
LANES = dict(n_paths=6, sweep={"eta": [0.05, 0.07]})
BLOCKS = S.Execution(block_steps=8)


def test_fast_path_gives_the_plain_paths_numbers_bit_for_bit():
    """Per-lane targets (an eta sweep on the SDE clock), intervals that are not multiples of the block, and a
    block longer than some intervals: the blocked path equals the step-by-step one bit for bit."""
    kw = dict(LANES, T=0.3, key=4, n_record=4)
    fast = S.simulate_discrete(NET, LABEL, ADAM, **kw, execution=BLOCKS)
    plain = S.simulate_discrete(NET, LABEL, ADAM, **kw, execution=S.Execution(block_steps=1))
    assert [tr.meta["record_steps"] for tr in fast] == [[0, 30, 60, 90, 120], [0, 15, 31, 46, 61]]
    for a, b in zip(plain, fast):
        np.testing.assert_array_equal(a.theta, b.theta)
        np.testing.assert_array_equal(a.v, b.v)
        for k in a.observables:
            np.testing.assert_array_equal(a.observables[k], b.observables[k])


def _diverging_sgd_plain_and_fast(steps):
    """SGD under strong label noise over an eta grid where some paths diverge: the plain path
    (``block_steps=1``) and the fast path (blocks of 16), same keys."""
    kw = dict(steps=steps, n_paths=4, key=1, n_record=3, sweep={"eta": [0.3, 0.5, 0.6, 0.8]})
    return tuple(S.simulate_discrete(NET, noise.label_noise(1.0), S.sgd(), **kw,
                                     execution=S.Execution(block_steps=b, divergence_bound=1e4)) for b in (1, 16))


def test_fast_path_freezes_diverged_paths_at_the_plain_paths_step_and_state():
    """SGD on the diagonal net over an eta grid: paths diverge in the first block, in later blocks (up to the
    tenth), or never. The step of divergence, the frozen state and the records equal the plain path's."""
    plain, fast = _diverging_sgd_plain_and_fast(steps=300)
    steps = np.concatenate([tr.diverged_step for tr in plain])
    assert np.any(steps == -1) and np.any((steps > 0) & (steps <= 16)) and np.any(steps > 64), steps
    for a, b in zip(plain, fast):
        np.testing.assert_array_equal(a.diverged_step, b.diverged_step)
        np.testing.assert_array_equal(a.diverged_time, b.diverged_time)
        np.testing.assert_array_equal(a.theta, b.theta)


def test_short_last_blocks_give_the_plain_paths_numbers_and_divergence_steps():
    """Every lane with one target (``steps``): intervals of 30 steps run as a block of 16 and a last block of
    14 on the fast path. Paths that diverge inside that short last block stop at the plain path's step."""
    plain, fast = _diverging_sgd_plain_and_fast(steps=90)
    steps = np.concatenate([tr.diverged_step for tr in plain])
    assert np.any((steps > 0) & ((steps - 1) % 30 >= 16)), steps  # some diverge inside a short last block
    for a, b in zip(plain, fast):
        np.testing.assert_array_equal(a.diverged_step, b.diverged_step)
        np.testing.assert_array_equal(a.theta, b.theta)
        for k in a.observables:
            np.testing.assert_array_equal(a.observables[k], b.observables[k])


def test_runs_without_observables_give_the_same_states():
    """``record_observables=False`` skips the observables and changes no number of the states."""
    kw = dict(LANES, steps=50, key=5, n_record=2)
    full = S.simulate_discrete(NET, LABEL, ADAM, **kw, execution=BLOCKS)
    bare = S.simulate_discrete(NET, LABEL, ADAM, **kw, recording=S.Recording(record_observables=False), execution=BLOCKS)
    for a, b in zip(full, bare):
        assert a.observables and not b.observables
        np.testing.assert_array_equal(a.theta, b.theta)
        np.testing.assert_array_equal(a.v, b.v)
    with pytest.raises(S.ConfigError, match="record_observables"):
        S.simulate_discrete(NET, LABEL, ADAM, **kw, recording=S.Recording(record_observables="no"))


def test_adam_square_root_matches_the_traced_power_to_rounding():
    """With lam = 1/2 fixed, the engine passes lam as a Python constant so S(v) compiles to a square root; a
    swept lam (or another value) stays an array, a traced power exp(lam log v). The two S agree to rounding."""
    from slowsde_jax.methods import precondition

    fixed = discrete._static_sqrt(S.adam(eps=1e-6), {"eta": jnp.ones(1)})
    assert fixed.lam == 0.5 and not eqx.is_array(fixed.lam)
    assert eqx.is_array(discrete._static_sqrt(S.adam(), {"lam": jnp.ones(1)}).lam)  # swept: stays traced
    assert eqx.is_array(discrete._static_sqrt(S.adame(lam=0.3), {}).lam)
    v = jnp.exp(jax.random.uniform(jax.random.PRNGKey(0), (4096,), minval=-30.0, maxval=5.0))
    sqrt = jax.jit(lambda v: precondition(v, fixed.lam, fixed.eps))(v)
    powr = jax.jit(precondition)(v, jnp.asarray(0.5), fixed.eps)
    np.testing.assert_array_equal(sqrt, 1.0 / (jnp.sqrt(v) + 1e-6))
    np.testing.assert_allclose(powr, sqrt, rtol=4e-16, atol=0)


def test_checkpoint_resume_is_bit_identical_on_the_fast_path(tmp_path):
    class Stop(Exception):
        pass

    def stop_after_two(run):
        if run.done == 3:
            raise Stop

    kw = dict(LANES, steps=100, key=2, n_record=4)
    whole = S.simulate_discrete(NET, LABEL, ADAM, **kw, execution=BLOCKS)
    ck = tmp_path / "run.npz"
    with pytest.raises(Stop):
        S.simulate_discrete(NET, LABEL, ADAM, **kw, execution=S.Execution(block_steps=8, checkpoint=ck, on_chunk=stop_after_two, checkpoint_every_s=0))
    resumed = S.simulate_discrete(NET, LABEL, ADAM, **kw, execution=S.Execution(block_steps=8, checkpoint=ck, checkpoint_every_s=0))
    for a, b in zip(whole, resumed):
        np.testing.assert_array_equal(a.theta, b.theta)
        np.testing.assert_array_equal(a.v, b.v)


def test_checkpoint_of_another_path_count_is_refused(tmp_path):
    """A checkpoint holds the real paths only (no device padding); one with more or fewer paths is refused."""
    ck = tmp_path / "run.npz"
    kw = dict(LANES, steps=20, key=2, n_record=2)
    S.simulate_discrete(NET, LABEL, ADAM, **kw, execution=S.Execution(block_steps=8, checkpoint=ck, checkpoint_every_s=0))
    for n in (5, 7):
        with pytest.raises(S.ConfigError, match=r"another run \(state shapes \(n_paths, the problem, the method\) differ\)"):
            S.simulate_discrete(NET, LABEL, ADAM, **dict(kw, n_paths=n), execution=S.Execution(block_steps=8, checkpoint=ck))
