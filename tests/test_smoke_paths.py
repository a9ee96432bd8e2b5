"""The smoke tier of user paths: every shipped config through ``slowsde run`` (and ``slowsde compare`` where
it has a compare section), every noise kind through compare, and every solver name on its engine.

Configs are cut to smoke size by one rule (:func:`smoke_size`), so a config added to ``configs/`` is run
here without a new test.
"""
import copy
from pathlib import Path

import diffrax
import numpy as np
import pytest
import yaml

import slowsde_jax as S
from slowsde_jax import cli, load_run, noise, problems

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
SMALL_PROBLEM = {"diagonal_net": {"d": 6, "n": 4, "k": 2, "n_test": 50},
                 "matrix_factorization": {"d1": 3, "d2": 3, "rank": 2, "n": 6}}


def smoke_size(cfg: dict) -> dict:
    """The same config with a small problem, 2 paths, 2 records, a few steps and sweeps of at most 2 values."""
    cfg = copy.deepcopy(cfg)
    kind = cfg["problem"]["kind"]
    for k, v in SMALL_PROBLEM.get(kind, {}).items():
        if k in cfg["problem"]:
            cfg["problem"][k] = min(cfg["problem"][k], v)
    if kind == "matrix_factorization":
        cfg["problem"]["model_rank"] = min(cfg["problem"].get("model_rank", 3), 3)
    n = cfg["problem"].get("n")
    cfg["n_paths"], cfg["n_record"] = 2, 2
    if "compare" in cfg:
        cfg["T"] = min(cfg["T"], 0.01)
        cfg["compare"]["sde_paths"] = 2
    else:
        cfg.pop("T", None)
        cfg["steps"] = 20
    for run in cfg["runs"].values():
        if "steps" in run:
            run["steps"] = 20
        if "T" in run:
            run["T"] = 0.01
        for k, values in (run.get("sweep") or {}).items():
            values = values[:2]
            if k == "n_train" and n is not None:
                values = sorted({min(v, n) for v in values})
            run["sweep"][k] = values
    return cfg


def _cli(tmp_path, command, cfg):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert cli.main([command, str(path), "--out", str(out), "--quiet"]) == 0
    (folder,) = list(out.iterdir())
    return folder


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_runs_at_smoke_size(path, tmp_path):
    cfg = smoke_size(yaml.safe_load(path.read_text()))
    if "compare" in cfg:  # a compare config's runs take their learning rates from compare.etas
        folder = _cli(tmp_path / "compare", "compare", cfg)
        assert (folder / "comparison.json").exists()
    else:
        folder = _cli(tmp_path / "run", "run", cfg)
        trajs, summary = load_run(folder)
        assert summary["status"] == "completed" and set(cfg["runs"]) <= set(trajs)


NOISES = {"label_noise": {"kind": "label_noise", "delta": 0.5}, "gaussian": {"kind": "gaussian", "cov": [0.49, 0.09]},
          "minibatch": {"kind": "minibatch", "batch_size": 1}}


@pytest.mark.parametrize("kind", sorted(noise.NOISES))
def test_every_noise_kind_through_compare(kind, tmp_path):
    assert kind in NOISES, f"add the noise kind {kind!r} to this test"
    problem = ({"kind": "diagonal_net", **SMALL_PROBLEM["diagonal_net"]} if kind == "minibatch"
               else {"kind": "hyperbola", "y": 1.0})
    cfg = {"name": f"cmp_{kind}", "problem": problem, "noise": NOISES[kind], "T": 0.01, "n_paths": 2,
           "n_record": 2, "v0": "equilibrium", "runs": {"adam": {"method": "adam", "eps": 1e-8}},
           "compare": {"etas": [0.04, 0.02, 0.01], "sde_paths": 2}}  # the shapes of the configs' smoke runs
    folder = _cli(tmp_path, "compare", cfg)
    trajs, _ = load_run(folder)
    engine = trajs["adam.sde"].meta["engine"]
    assert engine == ("label_noise_ode" if kind == "label_noise" else "slow_sde")


HYP = problems.hyperbola()


QUIET = S.Execution(progress=False)


@pytest.mark.parametrize("integrator", [None, S.ProjectedEulerMaruyama(dt=0.005),
                                        S.ProjectedEulerMaruyama(dt=0.005, richardson=True)])
def test_general_sde_integrators(integrator):
    traj = S.simulate_slow_sde(HYP, noise.gaussian([0.49, 0.09]), S.adam(), T=0.01, n_paths=2, n_record=1,
                               integrator=integrator, execution=QUIET)
    assert traj.meta["engine"] == "slow_sde" and traj.meta["solver"] == "Euler"
    assert np.all(np.isfinite(traj.theta))


def test_the_label_noise_ode_refuses_other_noise():
    with pytest.raises(S.ConfigError, match="^integrator: the label-noise ODE needs label noise"):
        S.simulate_slow_sde(HYP, noise.gaussian([0.49, 0.09]), S.adam(), T=0.01, integrator=S.LabelNoiseODE(),
                            execution=QUIET)


@pytest.mark.parametrize("integrator", ["euler", "tsit5", diffrax.Euler(), diffrax.Heun(), 3])
def test_an_integrator_must_be_an_integrator_object(integrator):
    with pytest.raises(S.ConfigError, match="^integrator: must be"):
        S.simulate_slow_sde(HYP, noise.gaussian([0.49, 0.09]), S.adam(), T=0.01, integrator=integrator)


@pytest.mark.parametrize("solver", ["tsit5", "kvaerno5", diffrax.Dopri5(), diffrax.Heun()])
def test_label_noise_ode_solvers(solver):
    traj = S.simulate_slow_sde(HYP, noise.label_noise(0.5), S.adam(), T=0.01, n_record=1, execution=QUIET,
                               integrator=S.LabelNoiseODE(solver=solver))
    assert traj.meta["engine"] == "label_noise_ode" and np.all(np.isfinite(traj.theta))


def test_the_sde_form_under_label_noise():
    traj = S.simulate_slow_sde(HYP, noise.label_noise(0.5), S.adam(), T=0.01, n_paths=2, n_record=1,
                               integrator=S.ProjectedEulerMaruyama(dt=0.005), execution=QUIET)
    assert traj.meta["engine"] == "slow_sde"


def test_kencarp4_on_the_label_noise_ode_of_a_factorization(small_factorization):
    mf = small_factorization
    traj = S.simulate_slow_sde(mf, noise.label_noise(0.5), S.adam(), T=0.01, n_record=1, execution=QUIET,
                               integrator=S.LabelNoiseODE(solver="kencarp4"))
    assert traj.meta["solver"] == "KenCarp4" and np.all(np.isfinite(traj.theta))


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4", diffrax.Euler(), diffrax.SRA1(), diffrax.ShARK(),
                                    diffrax.ItoMilstein(), diffrax.EulerHeun(), diffrax.SPaRK(), "Tsit5", 1.0, None])
def test_label_noise_ode_refuses_sde_and_fixed_step_solvers(solver):
    with pytest.raises(S.ConfigError, match="^solver: "):
        S.LabelNoiseODE(solver=solver)


@pytest.mark.parametrize("controller", ["pid", diffrax.ConstantStepSize(), diffrax.StepTo(ts=[0.0, 0.01]), 1e-6])
def test_label_noise_ode_refuses_other_controllers(controller):
    with pytest.raises(S.ConfigError, match="^stepsize_controller: "):
        S.LabelNoiseODE(stepsize_controller=controller)


def test_the_controllers_tolerances_count():
    ode = S.LabelNoiseODE(stepsize_controller=diffrax.PIDController(rtol=1e-5, atol=1e-7))
    assert ode.tolerances == (1e-5, 1e-7)


def test_compare_refuses_a_solver_of_the_other_engine(tmp_path, capsys):
    cfg = yaml.safe_load((Path(__file__).parents[1] / "configs" / "hyperbola_gaussian_compare.yaml").read_text())
    cfg["compare"]["solver"] = "tsit5"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["compare", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert "compare.solver" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_jobs_run_resume_and_compare_from_a_notebook(tmp_path):
    """The API twin of the two commands: ``jobs.run`` and ``jobs.compare`` take a config dict and return
    what they wrote; ``jobs.resume`` of a completed folder is refused before any work; ``echo`` gets the
    report that ``slowsde`` prints."""
    from slowsde_jax import config, jobs

    lines = []
    echo = lambda *a, **k: lines.append(" ".join(map(str, a)))
    cfg = dict(smoke_size(config.load_config(None)), slow_flow=False)  # the default's slow flow: the config test
    result = jobs.run(cfg, out=tmp_path / "runs", quiet=True, echo=echo)
    assert result.folder.parent == tmp_path / "runs" and (result.folder / "summary.json").exists()
    assert set(result.trajectories) == set(cfg["runs"]) and result.n_diverged == 0
    assert result.summary["status"] == "completed" and any(line.startswith("run ") for line in lines)
    loaded, summary = load_run(result.folder)
    name = sorted(cfg["runs"])[0]
    one = loaded[name] if isinstance(loaded[name], list) else [loaded[name]]
    np.testing.assert_array_equal(one[0].theta, result.trajectories[name][0].theta)
    assert summary["runs"] == result.summary["runs"]
    with pytest.raises(S.ConfigError, match="completed run"):
        jobs.resume(result.folder, echo=echo)
    cmp_cfg = smoke_size(yaml.safe_load((Path(__file__).parents[1] / "configs" / "hyperbola_compare.yaml").read_text()))
    compared = jobs.compare(cmp_cfg, out=tmp_path / "cmp", quiet=True, echo=echo)
    assert (compared.folder / "comparison.json").exists() and set(compared.comparison) == set(cmp_cfg["runs"])
