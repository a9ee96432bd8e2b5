"""The engines' one front end: the same argument checks, meta keys, standard-error rule and failure clock;
the slow-SDE engine's diffrax-native options and checkpoint/resume."""
import diffrax
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import discrete, inputs, noise, problems, sde
from slowsde_jax.trajectory import mean_se

HYP = problems.hyperbola(y=1.0)
LABEL = noise.label_noise(0.5)
GAUSS = noise.gaussian([0.49, 0.09])
ADAM = S.adam(c=10.0, eps=0.0)


def test_both_engines_use_the_same_meta_keys_and_failure_clock():
    d = S.simulate_discrete(HYP, LABEL, ADAM, eta=0.1, steps=4, n_record=2, start=S.Start(v0="equilibrium"))
    o = S.simulate_slow_sde(HYP, LABEL, ADAM, T=0.01, n_record=2)
    assert set(d.meta) == set(o.meta) == set(inputs.META_KEYS)
    for tr in (d, o):
        assert tr.diverged_time.shape == (1,) and np.isnan(tr.diverged_time).all() and not tr.diverged.any()
    assert d.diverged_step is not None and o.diverged_step is None


def test_one_standard_error_rule():
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    m, se = mean_se(x)
    np.testing.assert_allclose(m, [2.0, 4.0])
    np.testing.assert_allclose(se, np.std(x, axis=0, ddof=1) / np.sqrt(2))
    assert np.isnan(mean_se(x[:1])[1]).all()  # one stochastic path: unknown
    assert (mean_se(x[:1], deterministic=True)[1] == 0).all()  # one ODE solution: exact
    ode = S.simulate_slow_sde(HYP, LABEL, ADAM, T=0.01, n_record=1)
    assert (ode.stderr("v") == 0).all()


@pytest.mark.parametrize("key", ["seed", 1.5, np.zeros(3, np.uint32), -1, 2**64])
def test_bad_keys_are_config_errors(key):
    with pytest.raises(S.ConfigError, match="^key:"):
        S.simulate_slow_sde(HYP, LABEL, ADAM, T=0.01, key=key)
    with pytest.raises(S.ConfigError, match="^key:"):
        S.simulate_discrete(HYP, LABEL, ADAM, eta=0.1, steps=2, key=key)


def test_both_engines_share_one_checkpoint_format_and_refuse_each_others_files(tmp_path):
    """One format (``_checkpoint``): a header names the engine and the run; a file of the other engine, of
    another run or of no engine is refused with ConfigError("checkpoint") that names the file and says
    how to restart, before any work."""
    import json

    ck_d, ck_s = tmp_path / "d.npz", tmp_path / "s.npz"
    S.simulate_discrete(HYP, GAUSS, ADAM, eta=0.1, steps=4, n_record=2, execution=S.Execution(checkpoint=ck_d))
    S.simulate_slow_sde(HYP, GAUSS, ADAM, T=0.01, n_record=2, integrator=S.ProjectedEulerMaruyama(dt=5e-3),
                        execution=S.Execution(checkpoint=ck_s))
    for ck, engine in ((ck_d, "discrete"), (ck_s, "slow")):
        with np.load(ck) as f:
            assert str(f["checkpoint.format"]) == "slowsde_jax checkpoint 1" and str(f["checkpoint.engine"]) == engine
            assert isinstance(json.loads(str(f["checkpoint.fingerprint"])), dict)
    with pytest.raises(S.ConfigError, match=r"^checkpoint: .*of the discrete engine, not of the slow engine.*rm "):
        S.simulate_slow_sde(HYP, GAUSS, ADAM, T=0.01, n_record=2, integrator=S.ProjectedEulerMaruyama(dt=5e-3),
                            execution=S.Execution(checkpoint=ck_d))
    with pytest.raises(S.ConfigError, match=r"^checkpoint: .*of the slow engine, not of the discrete engine"):
        S.simulate_discrete(HYP, GAUSS, ADAM, eta=0.1, steps=4, n_record=2, execution=S.Execution(checkpoint=ck_s))
    with pytest.raises(S.ConfigError, match=r"another run \(record steps \(steps, eta, n_record\) differ\)"):
        S.simulate_discrete(HYP, GAUSS, ADAM, eta=0.1, steps=6, n_record=2, execution=S.Execution(checkpoint=ck_d))
    np.savez(ck_d, **{"done": np.asarray(1)})
    with pytest.raises(S.ConfigError, match="^checkpoint: .*is not a slowsde_jax checkpoint"):
        S.simulate_discrete(HYP, GAUSS, ADAM, eta=0.1, steps=4, n_record=2, execution=S.Execution(checkpoint=ck_d))


def test_solver_and_controller_objects_equal_the_string_shortcuts():
    a = S.simulate_slow_sde(HYP, LABEL, ADAM, T=0.1, n_record=2)
    b = S.simulate_slow_sde(HYP, LABEL, ADAM, T=0.1, n_record=2, integrator=S.LabelNoiseODE(
        solver=diffrax.Tsit5(), stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-10)))
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.meta["solver"] == "Tsit5"
    with pytest.raises(S.ConfigError, match="^solver:"):
        S.simulate_slow_sde(HYP, LABEL, ADAM, T=0.1, integrator=S.LabelNoiseODE(solver="rk4"))
    with pytest.raises(S.ConfigError, match="^integrator: the label-noise ODE needs label noise"):
        S.simulate_slow_sde(HYP, GAUSS, ADAM, T=0.1, integrator=S.LabelNoiseODE(
            stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-3)))


def test_slow_sde_resumes_from_a_checkpoint_with_the_same_numbers(tmp_path):
    kw = dict(T=0.02, n_paths=8, n_record=4, key=7, integrator=S.ProjectedEulerMaruyama(dt=2.5e-3))
    whole = S.simulate_slow_sde(HYP, GAUSS, ADAM, **kw)
    ck = tmp_path / "sde.npz"
    full = S.simulate_slow_sde(HYP, GAUSS, ADAM, **kw, execution=S.Execution(checkpoint=ck))
    np.testing.assert_allclose(full.theta, whole.theta, rtol=0, atol=1e-13)  # segments draw the same path
    with np.load(ck) as f:  # as if killed after two of four records
        arrays = dict(f)
    arrays.update(zeta=arrays["zeta"][:3], v=arrays["v"][:3])
    np.savez(ck, **arrays)
    resumed = S.simulate_slow_sde(HYP, GAUSS, ADAM, **kw, execution=S.Execution(checkpoint=ck))
    np.testing.assert_array_equal(resumed.theta, full.theta)
    np.testing.assert_array_equal(resumed.v, full.v)
    ck.write_bytes(b"not an npz")
    with pytest.raises(S.ConfigError, match="^checkpoint:"):
        S.simulate_slow_sde(HYP, GAUSS, ADAM, **kw, execution=S.Execution(checkpoint=ck))
    with pytest.raises(S.ConfigError, match="^checkpoint:.*another run"):
        np.savez(ck, **arrays)
        S.simulate_slow_sde(HYP, GAUSS, ADAM, **{**kw, "n_paths": 4}, execution=S.Execution(checkpoint=ck))
