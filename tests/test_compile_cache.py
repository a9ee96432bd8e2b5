"""The compilation cache setting (SLOWSDE_CACHE_DIR, --no-cache) and the engines' programs free of host
callbacks, which JAX's persistent cache would never store."""
from pathlib import Path

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as sj
from slowsde_jax import cli, noise, problems, sde
from slowsde_jax._runtime_checks import check_time_grid, host_checked
from slowsde_jax.compile_cache import cache_dir_from_env, enable_compilation_cache
from jax.experimental.compilation_cache import compilation_cache as jax_cc

SMALL = ["problem.d=6", "problem.n=4", "problem.n_test=50", "T=null", "steps=40", "slow_flow=false", "runs.adam.eta=0.1",
         "n_paths=2", "n_record=2"]


def test_cache_dir_from_env():
    assert cache_dir_from_env({}) == Path("~/.cache/slowsde_jax").expanduser()
    assert cache_dir_from_env({"XDG_CACHE_HOME": "/x"}) == Path("/x/slowsde_jax")
    assert cache_dir_from_env({"SLOWSDE_CACHE_DIR": "~/c"}) == Path("~/c").expanduser()
    for off in ("off", "0", "False", " none "):
        assert cache_dir_from_env({"SLOWSDE_CACHE_DIR": off}) is None


@pytest.fixture
def jax_cache_config():
    """Restores JAX's cache settings (and its cache object) after a test that changes them."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")
    saved = {k: getattr(jax.config, k) for k in keys}
    yield
    for k, v in saved.items():
        jax.config.update(k, v)
    jax_cc.reset_cache()


def _cli_run(tmp_path, *extra):
    sets = sum((["--set", s] for s in SMALL), [])
    return cli.main(["run", *sets, "--out", str(tmp_path / "runs"), "--quiet", *extra])


def test_cli_keeps_compiled_programs_in_slowsde_cache_dir(tmp_path):
    """In a fresh process (clearing this worker's compiled programs would make every later test compile again)."""
    import os
    import subprocess
    import sys

    sets = sum((["--set", s] for s in SMALL), [])
    env = {**os.environ, "SLOWSDE_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "slowsde_jax", "run", *sets, "--out", str(tmp_path / "runs"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert any((tmp_path / "cache").iterdir())  # the programs compiled by the run were written


def test_cli_no_cache_flag_and_off(tmp_path, monkeypatch, jax_cache_config):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv("SLOWSDE_CACHE_DIR", str(tmp_path / "cache"))
    assert _cli_run(tmp_path, "--no-cache") == 0
    assert not jax.config.jax_compilation_cache_dir and not (tmp_path / "cache").exists()
    monkeypatch.setenv("SLOWSDE_CACHE_DIR", "off")
    assert _cli_run(tmp_path) == 0
    assert not jax.config.jax_compilation_cache_dir


def test_enable_keeps_a_folder_set_in_jax(tmp_path, jax_cache_config):
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert enable_compilation_cache(tmp_path / "other") == tmp_path / "mine"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")


def test_importing_the_package_leaves_the_cache_off():
    import subprocess
    import sys

    code = "import slowsde_jax, jax; print(repr(jax.config.jax_compilation_cache_dir))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "SLOWSDE_CACHE_DIR": "/tmp/should_not_be_used"})
    assert out.stdout.strip() in ("None", "''")


PROB = problems.diagonal_net(d=3, n=2, k=1, key=0, n_test=10)


def _callbacks(closed_jaxpr) -> int:
    return str(closed_jaxpr).count("callback")


@pytest.mark.parametrize("force_sde", [False, True])
def test_segments_trace_without_host_callbacks(force_sde):
    """The ODE and SDE segments, traced as the engine traces them, hold no host callback (so JAX can cache
    them on disk); traced plainly, diffrax's checks of the time grids put callbacks in. (Other numbers of
    records for the two: JAX reuses the trace of the nested diffeqsolve for the same shapes.)"""
    m, ln = sj.adam(c=10.0, eps=1e-6), noise.label_noise(0.5)
    model = sde.SlowSDEModel(PROB, ln, m, jnp.asarray(10.0), None if force_sde else ln.label_noise_alpha(PROB))

    def make(n):  # n records
        y = (jnp.ones((2, PROB.dim)), jnp.ones((2, PROB.dim)))
        if force_sde:
            t = jnp.linspace(0.0, 0.01, 2 * n + 1)
            keys = jax.random.split(jax.random.PRNGKey(0), 2)
            return eqx.filter_make_jaxpr(sde.solvers._sde_segment)(model, diffrax.Euler(), y, keys, t, t[2::2],
                                                           jnp.asarray(0.0025), 1)[0]
        t = jnp.linspace(0.0, 0.5, n + 1)
        return eqx.filter_make_jaxpr(sde.ode_devices._ode_segment)(model, diffrax.Tsit5(), diffrax.PIDController(
            rtol=1e-8, atol=1e-10), y, t, 100)[0]

    with host_checked():
        assert _callbacks(make(2)) == 0
    assert _callbacks(make(3)) > 0


def test_user_checks_still_raise_inside_host_checked():
    bad = jnp.array([[1.0, 0.0], [0.0, -1.0]])
    with host_checked():
        with pytest.raises(Exception, match="positive semi-definite"):
            jax.jit(noise.psd_sqrt)(bad).block_until_ready()
    assert _callbacks(jax.make_jaxpr(noise.psd_sqrt)(bad)) > 0


def test_check_time_grid():
    check_time_grid(np.array([0.0, 0.5, 0.5, 1.0]), 0.0, 1.0, strict=False)
    for ts, strict in (([0.0, 0.5, 0.5, 1.0], True), ([0.0, 0.6, 0.5, 1.0], False), ([0.0, 1.1], False),
                       ([0.1, 1.0], True)):
        with pytest.raises(sj.ConfigError, match="^T:"):
            check_time_grid(np.array(ts), 0.0, 1.0, strict=strict)


def test_results_do_not_depend_on_host_checked():
    """The same numbers from a segment traced with and without the run-time checks."""
    m, ln = sj.adam(c=10.0, eps=1e-6), noise.label_noise(0.5)
    x0 = np.asarray(PROB.init(jax.random.PRNGKey(1)))
    a = sj.simulate_slow_sde(PROB, ln, m, T=0.05, n_record=2, n_paths=2, start=sj.Start(theta0=x0), execution=sj.Execution(progress=False), integrator=sj.ProjectedEulerMaruyama(dt=5e-3))
    from slowsde_jax import integrators

    with pytest.MonkeyPatch.context() as mp:  # a fresh cache (traced again) and no run-time checks around it
        mp.setattr(integrators, "_sde_segment", eqx.filter_jit(sde.solvers._sde_segment.__wrapped__))
        mp.setattr(integrators, "host_checked", __import__("contextlib").nullcontext)
        b = sj.simulate_slow_sde(PROB, ln, m, T=0.05, n_record=2, n_paths=2, start=sj.Start(theta0=x0), execution=sj.Execution(progress=False), integrator=sj.ProjectedEulerMaruyama(dt=5e-3))
    np.testing.assert_array_equal(a.theta, b.theta)


def test_a_covariance_check_still_raises_inside_the_sde_engine():
    """psd_sqrt's check of a user's covariance function fires inside the (host_checked) SDE segment."""
    hyp = problems.hyperbola(y=1.0)
    bad = noise.gaussian(lambda th: jnp.diag(jnp.stack([1.0 + 0.0 * th[0], th[1] - 10.0])))
    with pytest.raises(Exception, match="positive semi-definite"):
        sj.simulate_slow_sde(hyp, bad, sj.sgd(), T=0.01, n_record=1, start=sj.Start(theta0=np.array([1.2, 0.5])), execution=sj.Execution(progress=False), integrator=sj.ProjectedEulerMaruyama(dt=5e-3))
