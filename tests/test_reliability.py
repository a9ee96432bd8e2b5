"""Reliability: kill and resume bit for bit, divergence reports, config validation (also property-based)."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slowsde_jax as S
from slowsde_jax import cli, config, discrete, noise, problems

RESUME_CFG = {
    "name": "resume", "seed": 3, "problem": {"kind": "diagonal_net", "d": 20, "n": 8, "k": 2, "n_test": 100},
    "noise": {"kind": "label_noise", "delta": 0.5}, "steps": 200_000, "n_paths": 4, "n_record": 80,
    "checkpoint_every_s": 0,
    "runs": {"adam": {"method": "adam", "eta": 0.05, "beta2": 0.95, "eps": 1e-6}, "sgd": {"method": "sgd", "eta": 0.01}},
}


def test_a_killed_run_resumes_bit_for_bit(tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(RESUME_CFG))
    killed_root = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "slowsde_jax.cli", "run", str(cfg_path), "--out", str(killed_root), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and proc.poll() is None:
        found = list(killed_root.glob("*/checkpoints/adam.npz"))
        if found:
            with np.load(found[0]) as f:
                if int(f["done"]) >= 10:
                    ckpt = found[0]
                    break
        time.sleep(0.05)
    assert ckpt is not None and proc.poll() is None, "the run finished (or failed) before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = ckpt.parents[1]
    assert json.loads((folder / "summary.json").read_text())["status"] == "running"
    assert not (folder / "trajectories.npz").exists()
    assert cli.main(["run", "--resume", str(folder), "--quiet"]) == 0
    assert cli.main(["run", str(cfg_path), "--out", str(tmp_path / "clean"), "--quiet"]) == 0
    clean = next((tmp_path / "clean").iterdir())
    with np.load(folder / "trajectories.npz") as a, np.load(clean / "trajectories.npz") as b:
        assert set(a.files) == set(b.files)
        for k in a.files:
            if not k.endswith("meta"):
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed"]


def test_resume_rejects_a_foreign_checkpoint(tmp_path):
    prob = problems.hyperbola()
    ck = tmp_path / "c.npz"
    discrete.simulate_discrete(prob, noise.label_noise(0.5), S.adam(), eta=0.1, steps=20, n_record=2, checkpoint=ck,
                               checkpoint_every_s=0)
    with pytest.raises(S.ConfigError, match="checkpoint"):
        discrete.simulate_discrete(prob, noise.label_noise(0.5), S.adam(), eta=0.1, steps=30, n_record=2, checkpoint=ck)


def test_some_paths_diverge_and_the_others_are_untouched():
    """SGD at a large rate on a diagonal net: paths with a large initialization blow up, small ones do not.
    Surviving paths are bit-identical to a run without the bound; frozen paths stop at the last good state,
    flagged at the first step whose state was out of bounds."""
    prob = problems.diagonal_net(d=3, n=2, k=1, key=0, n_test=10, init_scale=0.7)
    nz, m, steps, eta = noise.label_noise(0.1), S.sgd(), 60, 0.6
    kw = dict(eta=eta, steps=steps, n_paths=16, key=5, n_record=steps)
    bounded = discrete.simulate_discrete(prob, nz, m, divergence_bound=50.0, **kw)
    free = discrete.simulate_discrete(prob, nz, m, divergence_bound=np.inf, **kw)
    div = bounded.diverged
    assert 0 < div.sum() < 16, div
    np.testing.assert_array_equal(bounded.theta[~div], free.theta[~div])
    for i in np.flatnonzero(div):
        k = bounded.diverged_step[i]
        bad = ~np.isfinite(free.theta[i]).all(axis=1) | (np.abs(free.theta[i]).max(axis=1) > 50.0)
        assert k == np.argmax(bad)  # record j holds step j here (n_record = steps)
        np.testing.assert_array_equal(bounded.theta[i, k - 1:], np.broadcast_to(free.theta[i, k - 1], bounded.theta[i, k - 1:].shape))
    np.testing.assert_allclose(bounded.diverged_time[div], bounded.diverged_step[div] * eta**2)


def test_cli_reports_divergence_and_strict_exits_nonzero(tmp_path, capsys):
    sets = ["problem.kind=diagonal_net", "problem.d=3", "problem.n=2", "problem.k=1", "problem.n_test=10",
            "problem.init_scale=0.7", "noise.delta=0.1", "T=null", "steps=60", "slow_flow=false", "n_paths=16", "n_record=3", "divergence_bound=50.0",
            "runs.sgd.eta=0.6", "runs.adam.eta=0.01"]
    args = sum((["--set", s] for s in sets), [])
    assert cli.main(["run", *args, "--out", str(tmp_path / "a"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "diverged and were frozen" in out
    summary = json.loads(next((tmp_path / "a").iterdir()).joinpath("summary.json").read_text())
    sgd = summary["runs"]["sgd"][0]
    assert 0 < sgd["n_diverged"] < 16 and len(sgd["diverged_steps"]) == sgd["n_diverged"]
    assert summary["runs"]["adam"][0]["n_diverged"] == 0
    assert cli.main(["run", *args, "--out", str(tmp_path / "b"), "--quiet", "--strict"]) == 1


@pytest.mark.parametrize("sets,field", [
    (["runs.adam.eps=-1"], "eps"), (["runs.adam.method=adame", "runs.adam.lam=0"], "lam"),
    (["runs.adam.method=adame", "runs.adam.lam=1.5"], "lam"), (["T=-1", "steps=null"], "T"),
    (["runs.adam.beta1=1.0"], "beta1"), (["runs.adam.c=100", "runs.adam.beta2=null"], "c*eta^2"),
    (["runs.adam.eta=abc"], "runs.adam.eta"), (["n_paths=2.5"], "n_paths"),
    (["noise.kind=gaussian", "noise.delta=null", "noise.cov=[[1, 2], [2, 1]]"], "cov"),
    (["noise.kind=gaussian", "noise.delta=null", "noise.cov=[1, 1, 1]"], "cov"),
    (["runs.adam.method=adam_mini", "runs.adam.blocks=[0, 1]"], "blocks"),
    (["seed=abc"], "seed"), (["strict=maybe"], "strict"),
])
def test_each_kind_of_bad_input_exits_2_naming_the_field(tmp_path, capsys, sets, field):
    base = ["problem.d=6", "problem.n=4", "problem.n_test=20", "T=null", "steps=10", "slow_flow=false", "n_paths=2",
            "n_record=2", "runs.adam.eta=0.1"]
    args = sum((["--set", s] for s in base + sets), [])
    assert cli.main(["run", *args, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"slowsde: error: {field}:") and "Traceback" not in err, err


# ----- property-based: the config loader never fails with anything but a ConfigError -------------------------------
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=8))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.text(max_size=6), inner, max_size=3)), max_leaves=8)
FIELDS = ["seed", "steps", "T", "n_paths", "n_record", "dtype", "problem", "problem.kind", "problem.d", "problem.n",
          "noise", "noise.kind", "noise.delta", "runs", "runs.adam", "runs.adam.method", "runs.adam.eta",
          "runs.adam.beta1", "runs.adam.beta2", "runs.adam.eps", "runs.adam.sweep", "runs.sgd.momentum", "bogus"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=values)
def test_config_loader_rejects_bad_values_only_with_config_errors(field, value):
    cfg = config.load_config(None)
    node, parts = cfg, field.split(".")
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    try:
        config.validate(cfg)
        config.build_runs(cfg)
    except S.ConfigError as e:
        assert e.field and e.reason
    except Exception as e:  # pragma: no cover - this is the failure being tested for
        pytest.fail(f"{field}={value!r} raised {type(e).__name__}: {e}")


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=60))
def test_arbitrary_yaml_text_gives_config_errors_only(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(text)
    try:
        config.load_config(path)
    except S.ConfigError:
        pass


def test_api_shape_and_value_errors_for_both_engines():
    from slowsde_jax import sde

    prob, nz = problems.hyperbola(), noise.label_noise(0.5)
    for engine, kw in ((discrete.simulate_discrete, dict(eta=0.1)), (sde.simulate_slow_sde, dict())):
        with pytest.raises(S.ConfigError, match="v0"):
            engine(prob, nz, S.adam(), T=0.1, v0=[1.0, 2.0, 3.0], **kw)
        with pytest.raises(S.ConfigError, match="theta0"):
            engine(prob, nz, S.adam(), T=0.1, theta0=[1.0], **kw)
        with pytest.raises(S.ConfigError, match="blocks"):
            engine(prob, nz, S.adam_mini(blocks=[0, 1, 2]), T=0.1, **kw)
        with pytest.raises(S.ConfigError, match="cov"):
            engine(prob, noise.gaussian([1.0, 1.0, 1.0]), S.adam(), T=0.1, **kw)
        with pytest.raises(S.ConfigError, match="n_paths"):
            engine(prob, nz, S.adam(), T=0.1, n_paths=0, **kw)
    with pytest.raises(S.ConfigError, match="eta"):
        sde.simulate_slow_sde(prob, nz, S.adam(beta2=0.99), T=0.1)  # c = (1 - beta2)/eta^2 needs eta
    unlabeled = problems.from_loss(lambda p: (p ** 2).sum(), np.zeros(2))
    with pytest.raises(S.ConfigError, match="noise"):
        discrete.simulate_discrete(unlabeled, nz, S.adam(), eta=0.1, steps=3)
