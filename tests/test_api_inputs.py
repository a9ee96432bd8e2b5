"""Bad input to the Python API gets a ConfigError naming the field, before any work: by class, for each
engine argument, the user functions of ``from_loss``, ``load_run``, and the files a run writes.

The CLI's own tables live in tests/test_reliability.py; here the same classes go through the API.
"""
import json
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import noise, problems
from slowsde_jax._io import RunIOError

HYP = problems.hyperbola()
LABEL = noise.label_noise(0.5)
GAUSS = noise.gaussian([0.49, 0.09])
QUIET = S.Execution(progress=False)

# classes of bad values: (value, what it stands for)
NOT_A_NUMBER = ["abc", None, [1.0, 2.0], {"a": 1}, 1 + 2j, object()]
NOT_FINITE = [math.nan, math.inf, -math.inf]
NOT_AN_INT = [0.5, "3", True, None, 2.0]
NOT_A_BOOL = ["yes", 1, 0, None, "true"]
BAD_DTYPES = ["int32", "float13", "complex64", int, "bool", 3, "float16"]

# ----- the engines' plain arguments ------------------------------------------------------------------------------
COMMON = {"n_paths": NOT_AN_INT + [0, -1], "n_record": NOT_AN_INT + [0, -2], "key": ["abc", 1.5, -1, 2**64, [1, 2, 3]]}
DISCRETE = {**COMMON, "eta": ["abc", 0.0, -0.1, *NOT_FINITE], "T": ["abc", 0.0, -1.0, *NOT_FINITE],
            "steps": NOT_AN_INT[:-2] + [0, 2.0],
            "sweep": ["eta", [0.1], {"eta": []}, {"bogus": [1.0]}, {"eta": ["a"]}, {"lam": [2.0]}]}
SLOW = {**COMMON, "T": ["abc", 0.0, -1.0, *NOT_FINITE], "eta": ["abc", 0.0, -0.1, *NOT_FINITE]}


def _cases(table):
    return [(k, v) for k, values in table.items() for v in values]


def _ids(cases):
    return [f"{k}={v!r}"[:40] for k, v in cases]


def _field_matches(err, name):
    return err.field == name or err.field.startswith(name + "[") or err.field.startswith(name + ".")


DISCRETE_CASES = _cases(DISCRETE)


@pytest.mark.parametrize("name,value", DISCRETE_CASES, ids=_ids(DISCRETE_CASES))
def test_discrete_engine_names_the_bad_argument(name, value):
    kw = {"eta": 0.1, "T": 0.05, "n_record": 1, name: value}
    if name == "steps":
        kw.pop("T")
    with pytest.raises(S.ConfigError) as e:
        S.simulate_discrete(HYP, LABEL, S.adam(), **kw)
    assert _field_matches(e.value, name), (e.value.field, str(e.value))


SLOW_CASES = _cases(SLOW)


@pytest.mark.parametrize("name,value", SLOW_CASES, ids=_ids(SLOW_CASES))
def test_slow_engine_names_the_bad_argument(name, value):
    kw = {"T": 0.01, "n_record": 1, name: value}
    with pytest.raises(S.ConfigError) as e:
        S.simulate_slow_sde(HYP, LABEL, S.adam(), **kw)
    assert _field_matches(e.value, name), (e.value.field, str(e.value))


# ----- the option objects check themselves when they are built ---------------------------------------------------
OPTIONS = {
    S.Start: {"theta0": ["abc", [[1.0, 2.0]], [math.nan, 1.0], [1 + 1j, 1.0]],
              "v0": ["abc", [math.nan, 1.0], 1 + 1j],  # its sign: checked by the engines (the method's statistic)
              "project_max_steps": NOT_AN_INT[:-2] + [0]},
    S.Recording: {"record_state": NOT_A_BOOL, "record_observables": NOT_A_BOOL, "record_to": [3, "", ["a"]]},
    S.Execution: {"dtype": BAD_DTYPES, "progress": ["yes", 1, "true"], "checkpoint": [3, b"x", "", ["a"]],
                  "checkpoint_every_s": ["abc", -1.0, math.nan, math.inf], "chunk_steps": NOT_AN_INT[:-2] + [0, -5],
                  "block_steps": NOT_AN_INT[:-2] + [0], "divergence_bound": ["abc", 0.0, -1.0, math.nan, -math.inf],
                  "devices": [[], ["cpu"], "cpu", 0, [0], [None]], "on_chunk": [3, "print"],
                  "paths_per_call": NOT_AN_INT[:-2] + [0], "records_per_call": NOT_AN_INT[:-2] + [0]},
    S.ProjectedEulerMaruyama: {"dt": ["abc", 0.0, -1.0, *NOT_FINITE], "richardson": NOT_A_BOOL,
                               "brownian_dt": ["abc", 0.0, -1.0, math.nan], "rank": NOT_AN_INT[:-2] + [0, -1]},
    S.LabelNoiseODE: {"solver": ["pid", "Euler", 3, None, diffrax.SRA1(), diffrax.Euler()],
                      "rtol": ["abc", 0.0, -1.0, math.nan], "atol": ["abc", 0.0, -1.0, math.nan],
                      "stepsize_controller": ["pid", 1e-6, diffrax.ConstantStepSize()],
                      "imex_fallback": NOT_A_BOOL, "zero_floor": ["abc", -1.0, math.nan],
                      "max_steps": NOT_AN_INT[:-2] + [0], "rank": NOT_AN_INT[:-2] + [0, -1]},
}
OPTION_CASES = [(cls, k, v) for cls, table in OPTIONS.items() for k, values in table.items() for v in values]


@pytest.mark.parametrize("cls,name,value", OPTION_CASES,
                         ids=[f"{c.__name__}.{k}={v!r}"[:50] for c, k, v in OPTION_CASES])
def test_option_objects_name_the_bad_field(cls, name, value):
    with pytest.raises(S.ConfigError) as e:
        cls(**{name: value})
    assert _field_matches(e.value, name), (e.value.field, str(e.value))


@pytest.mark.parametrize("engine,kw,field", [
    ("discrete", dict(start=S.Start(theta0=[1.0, 2.0, 3.0])), "theta0"),
    ("discrete", dict(start=S.Start(v0=[1.0, 2.0, 3.0])), "v0"),
    ("discrete", dict(start=S.Start(v0=[-1.0, 1.0])), "v0"),
    ("slow", dict(start=S.Start(v0=[-1.0, 1.0])), "v0"),
    ("discrete", dict(execution=S.Execution(dtype="float32", records_per_call=2)), "execution.records_per_call"),
    ("discrete", dict(start=S.Start(project_max_steps=5)), "start.project_max_steps"),
    ("discrete", dict(start={"theta0": [1.0, 1.0]}), "start"),
    ("discrete", dict(execution="fast"), "execution"),
    ("slow", dict(start=S.Start(v0="zeros")), "v0"),
    ("slow", dict(start=S.Start(v0=[0.0, 1.0])), "v0"),
    ("slow", dict(start=S.Start(theta0=[1.0])), "theta0"),
    ("slow", dict(integrator=S.LabelNoiseODE(rank=3)), "integrator.rank"),
    ("slow", dict(execution=S.Execution(chunk_steps=5)), "execution.chunk_steps"),
    ("slow", dict(recording=S.Recording(record_to="x")), "recording.record_to"),
    ("slow", dict(recording=S.Recording(record_observables=False)), "recording.record_observables"),
    ("slow", dict(integrator=S.LabelNoiseODE(solver="kencarp4")), "integrator.solver"),
    ("slow", dict(integrator=S.ProjectedEulerMaruyama(brownian_dt=0.003)), "integrator.brownian_dt"),
    ("slow", dict(recording=3), "recording"),
])
def test_options_that_do_not_fit_the_run_are_named(engine, kw, field):
    with pytest.raises(S.ConfigError) as e:
        if engine == "discrete":
            S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, T=0.05, n_record=1, **kw)
        else:
            S.simulate_slow_sde(HYP, LABEL, S.adam(), T=0.01, n_record=1, **kw)
    assert e.value.field == field, (e.value.field, str(e.value))


# ----- user functions, checked once at construction ---------------------------------------------------------
P0 = {"a": jnp.asarray([1.0, 2.0]), "b": jnp.asarray(0.5)}


def good_loss(p):
    return jnp.sum(p["a"] ** 2) + p["b"] ** 2


@pytest.mark.parametrize("loss,why", [
    (lambda p: p["a"], "shape"),  # not a scalar
    (lambda p: jnp.sum(p["a"]) * (1 + 1j), "dtype"),  # complex
    (lambda p: jnp.sum(p["a"]).astype(jnp.int32), "dtype"),  # integer
    (lambda p: jnp.inf * jnp.sum(p["a"]), "finite"),  # inf at params0
    (lambda p: jnp.sqrt(-jnp.sum(p["a"])), "finite"),  # NaN at params0
    (lambda p: p["missing"], "failed"),  # raises
    (lambda p: "abc", "failed"),
    (3, "function"),
])
def test_from_loss_checks_the_loss(loss, why):
    with pytest.raises(S.ConfigError, match=why) as e:
        problems.from_loss(loss, P0)
    assert e.value.field == "loss"


@pytest.mark.parametrize("residuals,why", [
    (lambda p: jnp.sum(p["a"]), "shape"),  # scalar residuals
    (lambda p: jnp.outer(p["a"], p["a"]), "shape"),  # 2-D
    (lambda p: jnp.zeros((0,)), "shape"),  # no samples
    (lambda p: p["a"].astype(jnp.int32), "dtype"),
    (lambda p: p["a"] * jnp.inf, "finite"),
    (lambda p: p["nope"], "failed"),
])
def test_from_loss_checks_the_residuals(residuals, why):
    with pytest.raises(S.ConfigError, match=why) as e:
        problems.from_loss(good_loss, P0, residuals=residuals)
    assert e.value.field == "residuals"


def test_from_loss_checks_per_sample_losses_and_params():
    with pytest.raises(S.ConfigError) as e:
        problems.from_loss(good_loss, P0, per_sample_losses=lambda p: jnp.sum(p["a"]))
    assert e.value.field == "per_sample_losses"
    for bad in ({}, {"a": "x"}, {"a": jnp.asarray([1 + 1j])}, {"a": jnp.asarray([jnp.nan])}):
        with pytest.raises(S.ConfigError) as e:
            problems.from_loss(good_loss, bad)
        assert e.value.field.startswith("params0")


# ----- non-finite losses are flagged -------------------------------------------------------------------------------
def _inf_beyond(p):
    """Finite at the start, +inf once a[0] passes 1.5 (theta stays finite: the divergence check cannot see it)."""
    return jnp.where(p["a"][0] > 1.5, jnp.inf, jnp.sum((p["a"] - 2.0) ** 2) + p["b"] ** 2)


def test_discrete_engine_flags_a_path_whose_loss_becomes_infinite():
    prob = problems.from_loss(_inf_beyond, P0)
    traj = S.simulate_discrete(prob, noise.gaussian(np.zeros(3)), S.sgd(), eta=0.1, steps=200, n_record=10, execution=S.Execution(progress=False))
    assert traj.diverged[0] and 0 < traj.diverged_time[0] <= traj.t[-1]
    assert np.all(np.isfinite(traj.theta))
    j = int(np.argmax(traj.t >= traj.diverged_time[0]))
    assert np.all(np.isfinite(traj.observables["loss"][0, :j]))


def test_slow_engine_flags_a_path_whose_loss_is_not_finite():
    def loss(p):  # Gamma = {a0 = 1}; the value is +inf once a1 passes 0.3, the derivatives stay finite
        return 0.5 * (p["a"][0] - 1.0) ** 2 + jnp.where(p["a"][1] > 0.3, jnp.inf, 0.0)

    prob = problems.from_loss(loss, {"a": jnp.asarray([1.0, 0.0]), "b": jnp.asarray(0.0)})
    cov = np.diag([0.0, 4.0, 1.0])
    traj = S.simulate_slow_sde(prob, noise.gaussian(cov), S.sgd(), T=0.5, n_paths=4, n_record=5, key=1, execution=S.Execution(progress=False), integrator=S.ProjectedEulerMaruyama(dt=0.01))
    bad = ~np.all(np.isfinite(traj.observables["loss"]), axis=1)
    assert bad.any()
    assert np.all(traj.diverged[bad]) and any("loss is not finite" in r for r in traj.meta["failure_reasons"])


# ----- load_run and the files a run writes ---------------------------------------------------------------------------
def test_load_run_refuses_what_it_did_not_write(tmp_path):
    with pytest.raises(S.ConfigError) as e:
        S.load_run(tmp_path / "missing")
    assert e.value.field == "path"
    with pytest.raises(S.ConfigError):
        S.load_run(tmp_path)  # no summary.json
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    np.savez(tmp_path / "trajectories.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(S.ConfigError, match="object arrays"):
        S.load_run(tmp_path)
    (tmp_path / "trajectories.npz").write_bytes(b"not a zip")
    with pytest.raises(S.ConfigError, match="corrupt"):
        S.load_run(tmp_path)
    np.savez(tmp_path / "trajectories.npz", x=np.zeros(3))
    with pytest.raises(S.ConfigError, match="not a file of slowsde_jax trajectories"):
        S.load_run(tmp_path)
    with pytest.raises(S.ConfigError):
        S.load_run(3)


def test_record_to_never_overwrites_a_users_file(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "theta.npy").write_bytes(b"precious")
    with pytest.raises(S.ConfigError) as e:
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, recording=S.Recording(record_to=folder), execution=S.Execution(progress=False))
    assert e.value.field == "record_to" and "theta.npy" in e.value.reason
    assert (folder / "theta.npy").read_bytes() == b"precious"
    afile = tmp_path / "a_file"
    afile.write_text("x")
    with pytest.raises(S.ConfigError, match="existing file"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, recording=S.Recording(record_to=afile), execution=S.Execution(progress=False))
    assert afile.read_text() == "x"
    # a folder the library made is reused by a new run, and only its own files are replaced
    ours = tmp_path / "ours"
    S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, recording=S.Recording(record_to=ours), execution=S.Execution(progress=False))
    b = S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, key=1, recording=S.Recording(record_to=ours), execution=S.Execution(progress=False))
    np.testing.assert_array_equal(np.asarray(b.theta), np.asarray(
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, key=1, execution=S.Execution(progress=False)).theta))


def test_record_to_an_unwritable_place_is_a_run_io_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if (locked / "probe").exists() or _can_write(locked):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(RunIOError, match="locked"):
            S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, recording=S.Recording(record_to=locked / "r"), execution=S.Execution(progress=False))
    finally:
        locked.chmod(0o700)


def _can_write(folder):
    try:
        (folder / ".probe").write_text("")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_a_step_count_beyond_the_limit_needs_an_opt_in(monkeypatch):
    with pytest.raises(S.ConfigError, match="SLOWSDE_MAX_STEPS") as e:
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=1e-8, T=5.0, execution=S.Execution(progress=False))
    assert e.value.field == "eta"
    with pytest.raises(S.ConfigError, match="SLOWSDE_MAX_STEPS") as e:
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=10**12, execution=S.Execution(progress=False))
    assert e.value.field == "steps"
    monkeypatch.setenv("SLOWSDE_MAX_STEPS", "10")
    with pytest.raises(S.ConfigError, match="limit of 10"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=11, execution=S.Execution(progress=False))
    S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=10, n_record=1, execution=S.Execution(progress=False))


# ----- the factories and project: any bad value of any argument is a ConfigError naming it ---------------------
FACTORY_BAD = ["abc", None, math.nan, -1, 0, 1.5, [1, 2], True, 1 + 1j, 10**30]
FACTORIES = [
    (problems.hyperbola, ["y", "theta0"], {}),
    (problems.diagonal_net, ["d", "n", "k", "n_test", "init_scale", "n_train", "features", "key"], {"n_test": 10}),
    (problems.matrix_factorization, ["d1", "d2", "rank", "n", "model_rank", "init_scale", "n_train", "measurement",
                                     "key"], {}),
    (noise.label_noise, ["delta", "distribution", "batch_size"], {}),
    (noise.minibatch, ["batch_size"], {}),
    (noise.gaussian, ["cov"], {}),
    (S.adam, ["beta1", "beta2", "c", "eps", "bias_correction"], {}),
    (S.adame, ["lam", "beta1"], {}),
    (S.sgd, ["momentum", "bias_correction"], {}),
    (S.adam_mini, ["blocks"], {}),
    (S.adalayer, ["blocks", "eps"], {}),
]
FACTORY_CASES = [(f, a, v, base) for f, args, base in FACTORIES for a in args for v in FACTORY_BAD]


@pytest.mark.parametrize("factory,arg,value,base", FACTORY_CASES,
                         ids=[f"{f.__name__}-{a}={v!r}"[:50] for f, a, v, _ in FACTORY_CASES])
def test_factories_accept_or_name_the_argument(factory, arg, value, base):
    """Every bad value is refused with the argument's name, or (where it is a valid value, e.g. None for an
    optional argument, 0 for a seed) accepted; never a raw exception."""
    try:
        factory(**{**base, arg: value})
    except S.ConfigError as e:
        assert e.field == arg or e.field.startswith(arg + "["), (e.field, str(e))


@pytest.mark.parametrize("kw,field", [
    (dict(theta="a"), "theta"), (dict(theta=[1.0]), "theta"), (dict(S="a"), "S"), (dict(S=[1.0, 2.0, 3.0]), "S"),
    (dict(S=[-1.0, 1.0]), "S"), (dict(tol=-1.0), "tol"), (dict(tol="a"), "tol"),
    (dict(max_steps=0), "max_steps"), (dict(max_steps=1.5), "max_steps"), (dict(rank=5), "rank"),
    (dict(rank=0), "rank"),
])
def test_project_names_the_bad_argument(kw, field):
    from slowsde_jax import geometry

    args = {"theta": jnp.array([1.5, 1.0]), "S": jnp.ones(2), **kw}
    with pytest.raises(S.ConfigError) as e:
        geometry.project(HYP.loss, args.pop("theta"), args.pop("S"), least_squares=HYP.least_squares(), dim=HYP.dim, **args)
    assert e.value.field == field


def test_a_users_file_in_a_claimed_folder_is_left_alone(tmp_path):
    """A file the user puts into a folder the library claimed earlier is not overwritten by a later run."""
    folder = tmp_path / "rec"
    S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, recording=S.Recording(record_to=folder))
    (folder / "theta.npy").unlink()
    (folder / "theta.npy").write_bytes(b"mine")
    owned = json.loads((folder / ".slowsde_files.json").read_text())["files"]
    (folder / ".slowsde_files.json").write_text(json.dumps({"files": [f for f in owned if f != "theta.npy"]}))
    with pytest.raises(S.ConfigError, match="did not write"):
        S.simulate_discrete(HYP, LABEL, S.adam(), eta=0.1, steps=4, n_record=2, recording=S.Recording(record_to=folder))
    assert (folder / "theta.npy").read_bytes() == b"mine"


def test_devices_may_be_any_iterable():
    ex = S.Execution(devices=(d for d in jax.devices()))
    assert ex.devices == tuple(jax.devices())
