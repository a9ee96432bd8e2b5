"""Reliability: kill and resume bit for bit, divergence reports, config validation (also property-based)."""
import json
import re
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
from slowsde_jax import cli, config, discrete, jobs, noise, problems

RESUME_CFG = {
    "name": "resume", "seed": 3, "problem": {"kind": "diagonal_net", "d": 20, "n": 8, "k": 2, "n_test": 100},
    "noise": {"kind": "label_noise", "delta": 0.5}, "steps": 200_000, "n_paths": 4, "n_record": 80,
    "checkpoint_every_s": 0,
    "runs": {"adam": {"method": "adam", "eta": 0.05, "beta2": 0.95, "eps": 1e-6}, "sgd": {"method": "sgd", "eta": 0.01}},
}


@pytest.mark.slow
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
    S.simulate_discrete(prob, noise.label_noise(0.5), S.adam(), eta=0.1, steps=20, n_record=2, execution=S.Execution(checkpoint=ck, checkpoint_every_s=0))
    with pytest.raises(S.ConfigError, match="checkpoint"):
        S.simulate_discrete(prob, noise.label_noise(0.5), S.adam(), eta=0.1, steps=30, n_record=2, execution=S.Execution(checkpoint=ck))


def test_some_paths_diverge_and_the_others_are_untouched():
    """SGD at a large rate on a diagonal net: paths with a large initialization blow up, small ones do not.
    Surviving paths are bit-identical to a run without the bound; frozen paths stop at the last good state,
    flagged at the first step whose state was out of bounds."""
    prob = problems.diagonal_net(d=3, n=2, k=1, key=0, n_test=10, init_scale=0.7)
    nz, m, steps, eta = noise.label_noise(0.1), S.sgd(), 60, 0.6
    kw = dict(eta=eta, steps=steps, n_paths=16, key=5, n_record=steps)
    bounded = S.simulate_discrete(prob, nz, m, **kw, execution=S.Execution(divergence_bound=50.0))
    free = S.simulate_discrete(prob, nz, m, **kw, execution=S.Execution(divergence_bound=np.inf))
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
    (["runs.adam.eps=-1"], "runs.adam.eps"), (["runs.adam.method=adame", "runs.adam.lam=0"], "runs.adam.lam"),
    (["runs.adam.method=adame", "runs.adam.lam=1.5"], "runs.adam.lam"), (["T=-1", "steps=null"], "T"),
    (["runs.adam.beta1=1.0"], "runs.adam.beta1"), (["runs.adam.c=100", "runs.adam.beta2=null"], "runs.adam.eta"),
    (["runs.adam.eta=abc"], "runs.adam.eta"), (["n_paths=2.5"], "n_paths"),
    (["noise.kind=gaussian", "noise.delta=null", "noise.cov=[[1, 2], [2, 1]]"], "noise.cov"),
    (["noise.kind=gaussian", "noise.delta=null", "noise.cov=[1, 1, 1]"], "noise.cov"),
    (["runs.adam.method=adam_mini", "runs.adam.blocks=[0, 1]"], "runs.adam.blocks"),
    (["seed=abc"], "seed"), (["strict=maybe"], "strict"),
])
def test_each_kind_of_bad_input_exits_2_naming_the_field(tmp_path, capsys, sets, field):
    base = ["problem.d=6", "problem.n=4", "problem.n_test=20", "T=null", "steps=10", "slow_flow=false", "n_paths=2",
            "n_record=2", "runs.adam.eta=0.1"]
    args = sum((["--set", s] for s in base + sets), [])
    assert cli.main(["run", *args, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"slowsde: error: {field}:") and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # rejected before a run folder is made


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
    prob, nz = problems.hyperbola(), noise.label_noise(0.5)
    for engine, kw in ((S.simulate_discrete, dict(eta=0.1)), (S.simulate_slow_sde, dict())):
        with pytest.raises(S.ConfigError, match="v0"):
            engine(prob, nz, S.adam(), T=0.1, start=S.Start(v0=[1.0, 2.0, 3.0]), **kw)
        with pytest.raises(S.ConfigError, match="theta0"):
            engine(prob, nz, S.adam(), T=0.1, start=S.Start(theta0=[1.0]), **kw)
        with pytest.raises(S.ConfigError, match="blocks"):
            engine(prob, nz, S.adam_mini(blocks=[0, 1, 2]), T=0.1, **kw)
        with pytest.raises(S.ConfigError, match="cov"):
            engine(prob, noise.gaussian([1.0, 1.0, 1.0]), S.adam(), T=0.1, **kw)
        with pytest.raises(S.ConfigError, match="n_paths"):
            engine(prob, nz, S.adam(), T=0.1, n_paths=0, **kw)
    with pytest.raises(S.ConfigError, match="eta"):
        S.simulate_slow_sde(prob, nz, S.adam(beta2=0.99), T=0.1)  # c = (1 - beta2)/eta^2 needs eta
    unlabeled = problems.from_loss(lambda p: (p ** 2).sum(), np.zeros(2))
    with pytest.raises(S.ConfigError, match="noise"):
        S.simulate_discrete(unlabeled, nz, S.adam(), eta=0.1, steps=3)


# ----- issue 11: every class of bad input rejected before any work, with the full config path ------------------------
SMALL = ["problem.d=6", "problem.n=4", "problem.n_test=20", "T=null", "steps=10", "n_paths=2", "n_record=2",
         "slow_flow=false", "runs.adam.eta=0.1"]


def _cli_rejects(tmp_path, capsys, argv, field, command="run"):
    """``slowsde <command> argv`` exits 2 with one line starting with ``field:``, and leaves no run folder."""
    out = tmp_path / "out"
    assert cli.main([command, *argv, "--out", str(out)] + (["--quiet"] if command == "run" else [])) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith(f"slowsde: error: {field}"), err
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())
    return err


@pytest.mark.parametrize("sets,field,text", [
    (["seed=18446744073709551616"], "seed:", "2**64"), (["seed=-1"], "seed:", ">= 0"),
    (["runs.adam.method=adam_mini"], "runs.adam.blocks:", "required"),
    (["n_paths=100000000000"], "n_paths:", "GiB"), (["runs.adam.n_paths=100000000000"], "runs.adam.n_paths:", "GiB"),
    (["name=a/b"], "name:", "separator"), (["name=/tmp/abs"], "name:", "separator"), (["name=.."], "name:", "'.'"),
    (["runs.x/y.method=sgd", "runs.x/y.eta=0.1"], "runs.x/y:", "separator"),
    (["runs.adam.sweep={beta1: [0.9, 1.5]}"], "runs.adam.sweep.beta1[1]: must be < 1, got 1.5", ""),
    (["runs.adam.method=adame", "runs.adam.sweep={lam: [0.5, 2.0]}"], "runs.adam.sweep.lam[1]:", "<= 1"),
    (["runs.adam.sweep={eps: [1e-8, -1e-8]}"], "runs.adam.sweep.eps[1]:", ">= 0"),
    (["runs.adam.sweep={n_train: [0]}"], "runs.adam.sweep.n_train[0]:", "[1, 4]"),
    (["runs.adam.sweep={n_train: [2, 5]}"], "runs.adam.sweep.n_train[1]:", "[1, 4]"),
    (["runs.adam.sweep={n_train: [2.5]}"], "runs.adam.sweep.n_train[0]:", "whole"),
    (["problem.n_train=0"], "problem.n_train:", ""), (["problem.n_train=5"], "problem.n_train:", "<= 4"),
    (["runs.adam.sweep={delta: [-0.5]}"], "runs.adam.sweep.delta[0]:", ">= 0"),
    (["runs.sgd.sweep={beta2: [0.5]}"], "runs.sgd.sweep.beta2[0]:", "no 'beta2'"),
    (["runs.adam.sweep={bogus: [1]}"], "runs.adam.sweep.bogus:", "not sweepable"),
    (["runs.adam.beta2=null", "runs.adam.sweep={eta: [0.1, 0.5]}"], "runs.adam.sweep.eta[1]:", "c*eta^2"),  # c = 10
    (["steps=null", "T=1.0", "runs.adam.eta=1e-12"], "runs.adam.eta:", "SLOWSDE_MAX_STEPS"),
    (["steps=null", "T=1.0", "runs.sgd.sweep={eta: [0.1, 1e-13]}"], "runs.sgd.sweep.eta[1]:", "SLOWSDE_MAX_STEPS"),
    (["steps=9223372036854775807"], "steps:", "SLOWSDE_MAX_STEPS"), (["steps=null", "T=5.0", "runs.adam.sweep.eta=[1e-8]"], "runs.adam.sweep.eta[0]:", "limit"), (["steps=null", "T=0.001"], "runs.adam.eta:", "0 steps"),
    (["record_state='no'"], "record_state:", "true or false"),
    (["runs.adam.record_state='no'"], "runs.adam.record_state:", "true or false"),
    (["runs.adam.lr=0.1"], "runs.adam.lr:", "did you mean 'eta'?"), (["lr=0.1"], "lr:", "runs.<name>.eta"),
    (["=5"], "--set:", "empty key"), ([".eta=5"], "--set:", "empty key"), (["seed.x=1"], "--set seed.x:", "not a mapping"),
    (["runs.adam.v0=[nan, 1]"], "runs.adam.v0:", ""),
    (["runs.adam.v0=[1, 2, 3]"], "runs.adam.v0:", "shape"),
    (["slow_flow=true", "runs.adam.sweep={eta: [0.1]}", "runs.sgd.sweep={eta: [0.1]}"], "slow_flow:", "without a sweep"),
    (["slow_flow=true", "runs.adam.eps=0", "v0=zeros"], "runs.adam.v0:", "equilibrium"),
    (["slow_flow=true", "runs={x.at_phi: {method: sgd, eta: 0.1}}"], "runs.x.at_phi:", "may not end in"),
])
def test_bad_config_classes_exit_2_with_the_path_and_no_folder(tmp_path, capsys, sets, field, text):
    err = _cli_rejects(tmp_path, capsys, sum((["--set", s] for s in SMALL + sets), []), field)
    assert text in err, err


def test_numbers_are_read_as_numbers(tmp_path):
    cfg = config.apply_overrides(config.load_config(None), ["runs.adam.eps=1e-8", "divergence_bound=1e300",
                                                            "runs.adam.beta1=9E-1", "T=+2.5e-1", "steps=null"])
    assert cfg["runs"]["adam"]["eps"] == 1e-8 and cfg["divergence_bound"] == 1e300
    assert cfg["runs"]["adam"]["beta1"] == 0.9 and cfg["T"] == 0.25
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(RESUME_CFG).replace("1.0e-06", "1e-6"))
    assert "1e-6" in path.read_text() and config.load_config(path)["runs"]["adam"]["eps"] == 1e-6


def test_a_directory_as_config_and_unwritable_out(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "is a directory" in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    sets = sum((["--set", s] for s in SMALL), [])
    for out, why in ((afile, "not a folder"), (afile / "sub", "cannot write")):
        assert cli.main(["run", *sets, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("slowsde: error: --out:") and why in err and err.count("\n") == 0, err


@pytest.mark.parametrize("content", [b"", b"not an npz at all", "truncated"])
def test_resume_names_a_corrupt_checkpoint_and_how_to_restart(tmp_path, capsys, content):
    from slowsde_jax import runs

    cfg = config.apply_overrides(config.load_config(None), SMALL)
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    runs.write_config(folder, cfg)
    ck = folder / "checkpoints" / "adam.npz"
    if content == "truncated":
        np.savez(ck, a=np.arange(1000.0))
        ck.write_bytes(ck.read_bytes()[:300])
    else:
        ck.write_bytes(content)
    assert cli.main(["run", "--resume", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("slowsde: error: checkpoint:") and str(ck) in err and "rm " in err, err


def test_load_checkpoint_names_damaged_files(tmp_path):
    prob, nz = problems.hyperbola(), noise.label_noise(0.5)
    ck = tmp_path / "c.npz"
    for content in (b"", b"PK\x03\x04junk"):
        ck.write_bytes(content)
        with pytest.raises(S.ConfigError, match="corrupt or truncated.*rm "):
            S.simulate_discrete(prob, nz, S.adam(), eta=0.1, steps=4, n_record=2, execution=S.Execution(checkpoint=ck))


def test_compare_validates_everything_before_any_work(tmp_path, capsys):
    from pathlib import Path

    path = Path(__file__).parents[1] / "configs" / "hyperbola_compare.yaml"
    _cli_rejects(tmp_path, capsys, [str(path), "--set", "compare.observables=[u, nope]"], "compare.observables[1]:",
                 command="compare")
    err = _cli_rejects(tmp_path, capsys, [str(path), "--set", "compare.etas=[0.1, 0.5]"], "compare.etas[1]:",
                       command="compare")
    assert "c*eta^2" in err
    _cli_rejects(tmp_path, capsys, [str(path)], "runs.adam.eta: is required by 'slowsde run'")  # no etas there


def test_full_disk_fails_cleanly_and_the_last_checkpoint_stays_valid(tmp_path, capsys, monkeypatch):
    """ENOSPC from the third checkpoint write on (every later write fails too): exit status 3 with one line,
    summary.json says "failed", no temporary file anywhere, the last good checkpoint loads, and the run
    resumes from it to the end (bit-identity of resumed runs: test_a_killed_run_resumes_bit_for_bit)."""
    import errno
    from pathlib import Path

    cfg = dict(RESUME_CFG, steps=40, n_paths=2, n_record=8, name="disk")
    cfg["runs"] = {"adam": RESUME_CFG["runs"]["adam"]}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    real_savez, real_write_text, calls = np.savez, Path.write_text, []

    def full_savez(file, *a, **k):
        calls.append(str(file))
        if len(calls) >= 3:
            Path(file).write_bytes(b"PK\x03\x04 half a file")  # a partial write before the disk filled up
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_savez(file, *a, **k)

    def full_write_text(self, *a, **k):
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write_text(self, *a, **k)

    monkeypatch.setattr(np, "savez", full_savez)
    monkeypatch.setattr(Path, "write_text", full_write_text)
    assert cli.main(["run", str(cfg_path), "--out", str(tmp_path / "out"), "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and "Traceback" not in err, err
    monkeypatch.undo()
    (folder,) = list((tmp_path / "out").iterdir())
    assert [p.name for p in folder.rglob("*") if "tmp" in p.name] == []
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "failed"
    with np.load(folder / "checkpoints" / "adam.npz") as f:
        assert int(f["done"]) == 3  # the second write (records 0-2), intact
    assert cli.main(["run", "--resume", str(folder), "--quiet"]) == 0  # from that checkpoint to the end
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["runs"]["adam"][0]["steps"] == 40


@pytest.mark.parametrize("exc,text", [
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB."), "ran out of memory"),
    (MemoryError(), "out of host memory"),
])
def test_running_out_of_memory_is_one_line_and_the_folder_says_failed(tmp_path, capsys, monkeypatch, exc, text):
    def oom(*a, **k):
        raise exc

    monkeypatch.setattr(jobs, "simulate_discrete", oom)
    sets = sum((["--set", s] for s in SMALL), [])
    assert cli.main(["run", *sets, "--out", str(tmp_path), "--quiet"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and text in err and "Traceback" not in err, err
    (folder,) = list(tmp_path.iterdir())
    assert json.loads((folder / "summary.json").read_text())["status"] == "failed"


# ----- the API raises ConfigError for bad argument types and shapes -------------------------------------------------
@pytest.fixture(scope="module")
def hyp():
    return problems.hyperbola(), noise.label_noise(0.5)


@pytest.mark.parametrize("key", ["abc", 1.5, np.array([1, 2, 3], np.uint32), np.array([1.0, 2.0]), -1, 2**64, True])
def test_bad_keys_are_config_errors(hyp, key):
    import jax

    with pytest.raises(S.ConfigError, match="^key:"):
        S.simulate_discrete(*hyp, S.adam(), eta=0.1, steps=3, n_record=1, key=key)
    with pytest.raises(S.ConfigError, match="^key:"):
        problems.diagonal_net(d=3, n=2, k=1, n_test=5, key=key)
    with pytest.raises(S.ConfigError, match="batch of keys"):
        S.simulate_discrete(*hyp, S.adam(), eta=0.1, steps=3, key=jax.random.split(jax.random.key(0), 3))


def test_from_loss_accepts_integer_params():
    import jax

    loss = lambda p: (p["a"] ** 2).sum() + p["b"] ** 2
    as_int = problems.from_loss(loss, {"a": np.array([1, 2]), "b": 3})
    as_float = problems.from_loss(loss, {"a": np.array([1.0, 2.0]), "b": 3.0})
    np.testing.assert_array_equal(as_int.theta0, as_float.theta0)
    assert as_int.theta0.dtype == np.float64 and float(as_int.loss(as_int.theta0)) == 14.0
    g = lambda p: jax.grad(p.loss)(p.theta0)  # a TypeError for integer parameters before
    np.testing.assert_array_equal(g(as_int), g(as_float))
    with pytest.raises(S.ConfigError, match=r"params0\['a'\]"):
        problems.from_loss(loss, {"a": np.array(["x"]), "b": 1.0})


def test_project_checks_shapes_against_the_problem(hyp):
    from slowsde_jax import geometry as G

    prob = hyp[0]
    with pytest.raises(S.ConfigError, match="^S:"):
        G.project(prob.loss, [1.5, 1.0], [1.0, 1.0, 1.0])
    with pytest.raises(S.ConfigError, match="^theta:.*D = 2"):
        G.project(prob.loss, np.ones((2, 3)), np.ones(3), dim=prob.dim)  # the problem's D, declared
    with pytest.raises(S.ConfigError, match="^theta:"):
        G.project(prob.loss, "ab", [1.0, 1.0])
    with pytest.raises(S.ConfigError, match="^loss: must return a scalar"):
        G.project(lambda th: th, [1.0, 1.0], [1.0, 1.0])


def test_a_covariance_function_that_is_not_psd_is_reported(hyp):
    prob = hyp[0]
    with pytest.raises(S.ConfigError, match="^cov:.*positive semi-definite.*-1"):
        S.simulate_discrete(prob, noise.gaussian(lambda th: [[1, 2], [2, 1]]), S.adam(), eta=0.1, steps=3)
    # where it is evaluated later, not at the start: psd_sqrt refuses rather than clipping the negative part
    with pytest.raises(Exception, match="positive semi-definite"):
        np.asarray(noise.psd_sqrt(np.array([[1.0, 2.0], [2.0, 1.0]])))
    A = noise.psd_sqrt(np.array([[2.0, 1.0], [1.0, 2.0]]))
    np.testing.assert_allclose(A @ A.T, [[2.0, 1.0], [1.0, 2.0]], atol=1e-12)


def test_v0_messages_say_what_is_wrong(hyp):
    with pytest.raises(S.ConfigError, match="v0: must be finite, got \\[nan, 1\\]"):
        S.simulate_discrete(*hyp, S.adam(), eta=0.1, steps=3, start=S.Start(v0=[np.nan, 1.0]))
    with pytest.raises(S.ConfigError, match="v0: must be non-negative, got \\[-1, 1\\]"):
        S.simulate_discrete(*hyp, S.adam(), eta=0.1, steps=3, start=S.Start(v0=[-1.0, 1.0]))


def test_slow_sde_start_failures_each_say_why(hyp):
    """Each cause gets its own message: checked end to end for v = 0 with eps = 0 and the argument checks, and
    through the diagnosis the engine calls on a failed projection for a NaN loss and an exhausted budget."""
    import jax
    import jax.numpy as jnp

    from slowsde_jax import inputs, sde

    prob, nz = hyp
    cases = [
        (dict(noise=noise.gaussian([0.0, 0.0]), method=S.adam(eps=0.0)), "^v0 .*eps = 0"),
        (dict(v0=[0.0, 1.0]), "^v0: must be positive"), (dict(v0=[np.nan, 1.0]), "^v0: must be finite"),
        (dict(theta0=[np.nan, 1.0]), "^theta0: must be finite"),
    ]
    for kw, msg in cases:
        kw = {"noise": nz, "method": S.adam(), **kw}
        with pytest.raises(S.ConfigError, match=msg):
            S.simulate_slow_sde(prob, kw.pop("noise"), kw.pop("method"), T=0.1, n_record=1, start=S.Start(**kw))
    loss = lambda p: (p[0] ** 2 - 1) ** 2 + 0.0 * jnp.sqrt(p[1])  # NaN where p1 < 0
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    gauss = noise.gaussian([1.0, 1.0])
    why = lambda problem, status, theta0=None: inputs.explain_start_failure(problem, gauss, S.adam(), theta0,
                                                                           "equilibrium", None, keys,
                                                                           np.array(status), 7)
    # from_loss refuses a loss that is NaN at params0, so the NaN start comes in as theta0
    nan_loss = why(problems.from_loss(loss, np.array([3.0, 2.0])), [2, 2], jnp.array([3.0, -1.0]))
    assert isinstance(nan_loss, S.ConfigError) and str(nan_loss).startswith("loss: the loss is not finite (got nan)")
    budget = why(problems.from_loss(loss, np.array([3.0, 2.0])), [0, 3])
    assert isinstance(budget, S.ProjectionError) and "budget (7) ran out" in str(budget) and "1 of 2" in str(budget)
    nonfinite = why(problems.hyperbola(theta0=[3.0, 2.0]).__class__(y=prob.y, n_active=prob.n_active,
                                                                    theta0=jnp.array([np.inf, 1.0])), [2, 2])
    assert str(nonfinite).startswith("theta0: the start from the problem's initializer is not finite")


@pytest.mark.slow
def test_resume_refuses_a_completed_run_and_skips_temporary_files(tmp_path, capsys):
    out = tmp_path / "out"
    argv = sum((["--set", s] for s in SMALL), [])
    assert cli.main(["run", *argv, "--out", str(out), "--quiet"]) == 0
    folder = next(out.iterdir())
    capsys.readouterr()
    assert cli.main(["run", "--resume", str(folder), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slowsde: error: --resume:") and "completed" in err and "\n" not in err, err
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps({**summary, "status": "running"}))  # as if killed
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "checkpoints" / ".adam.tmp.npz").write_bytes(b"half a write")
    assert cli.main(["run", "--resume", str(folder), "--quiet"]) == 0
    assert not (folder / "checkpoints" / ".adam.tmp.npz").exists()


@pytest.mark.parametrize("kw,field", [
    (dict(sweep={"beta1": [0.9, 1.5]}), "sweep.beta1[1]:"), (dict(sweep={"eps": [-1e-8]}), "sweep.eps[0]:"),
    (dict(sweep={"n_train": [0]}), "sweep.n_train[0]:"), (dict(sweep={"beta1": ["a"]}), "sweep.beta1:"),
    (dict(steps=None, T=1.0, eta=1e-12), "eta:"),
])
def test_simulate_discrete_checks_sweeps_and_settings_like_the_cli(kw, field):
    prob = S.problems.diagonal_net(d=4, n=3, k=1, n_test=5)
    with pytest.raises(S.ConfigError, match="^" + re.escape(field)):
        S.simulate_discrete(prob, S.noise.label_noise(0.5), S.adam(), **{"eta": 0.1, "steps": 5, **kw})
    with pytest.raises(S.ConfigError, match="^record_state:"):
        S.Recording(record_state="no")
