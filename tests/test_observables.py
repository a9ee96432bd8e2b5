"""Each method's own sharpness, on batches, at Phi_S(theta), and the slow flow started from a run's records:
closed forms on the diagonal net, identities with the single-point functions and engines."""
import contextlib
import dataclasses
import io
import os

import jax
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import geometry as geo
from slowsde_jax import noise, observables, problems, runs, sharpness
from slowsde_jax.trajectory import Trajectory

HYP = problems.hyperbola(y=1.0)
LABEL = noise.label_noise(0.5)


def test_batched_sharpness_matches_single_points_and_closed_forms():
    rng = np.random.default_rng(0)
    hd = rng.uniform(0.0, 2.0, size=(2, 3, 6))  # (n_paths, n_t, D) Hessian diagonals
    blocks = [0, 0, 1, 1, 1, 2]
    for kind, kw in (("trace", {}), ("trace_sqrt_diag", {}), ("trace_diag_pow", {"lam": 0.25}),
                     ("block", {"blocks": blocks})):
        batch = np.asarray(geo.sharpness(hd, kind, diagonal=True, **kw))
        single = np.array([[float(geo.sharpness(h, kind, **kw)) for h in row] for row in hd])
        mats = np.asarray(geo.sharpness(np.einsum("pti,ij->ptij", hd, np.eye(6)), kind, diagonal=False, **kw))
        assert batch.shape == (2, 3)
        np.testing.assert_allclose(batch, single, rtol=1e-13)
        np.testing.assert_allclose(mats, single, rtol=1e-13)
    h = hd[0, 0]
    np.testing.assert_allclose(float(geo.sharpness(h, "trace_diag_pow", lam=0.25)), np.sum(h**0.75), rtol=1e-13)
    want = sum(np.sqrt(len(b) * h[b].sum()) for b in ([0, 1], [2, 3, 4], [5]))
    np.testing.assert_allclose(float(geo.sharpness(h, "block", blocks=blocks)), want, rtol=1e-13)
    assert float(geo.sharpness(h, "block", blocks=[0] * 6)) == pytest.approx(np.sqrt(6 * h.sum()))


def test_own_sharpness_per_method():
    assert sharpness.own_sharpness(S.sgd()) == ("trace_H", "tr H")
    assert sharpness.own_sharpness(S.adam())[0] == "trace_sqrt_diag_H"
    assert sharpness.own_sharpness(S.rmsprop())[0] == "trace_sqrt_diag_H"
    assert sharpness.own_sharpness(S.adame(lam=0.5))[0] == "trace_sqrt_diag_H"
    assert sharpness.own_sharpness(S.adame(lam=0.25)) == ("trace_diag_H_pow", "tr(Diag H^{0.75})")
    assert sharpness.own_sharpness(S.adam_mini([0, 0, 1, 1]))[0] == "block_sharpness"


def test_sharpness_values_on_gamma_closed_form():
    """On the hyperbola's Gamma {u^2 - v^2 = 1} the Hessian diagonal is (4u^2, 4v^2): tr H = 4(u^2 + v^2),
    tr(Diag H^{1/2}) = 2(|u| + |v|), tr(Diag H^{1-lam}) = 4^{1-lam}(|u|^{2-2lam} + |v|^{2-2lam}), and one block
    over both coordinates gives sqrt(2 tr H)."""
    s_ = np.linspace(-1.0, 1.5, 6).reshape(2, 3)
    zeta = np.stack([np.cosh(s_), np.sinh(s_)], axis=-1)  # (2, 3, D): any batch shape
    u, v = np.abs(zeta[..., 0]), np.abs(zeta[..., 1])
    lam = 0.25
    vals = observables.sharpness_values(HYP, zeta, S.adame(lam=lam))
    assert vals["trace_H"].shape == (2, 3)
    np.testing.assert_allclose(vals["trace_H"], 4 * (u**2 + v**2), rtol=1e-12)
    np.testing.assert_allclose(vals["trace_sqrt_diag_H"], 2 * (u + v), rtol=1e-12)
    np.testing.assert_allclose(vals["trace_diag_H_pow"], 4 ** (1 - lam) * (u ** (2 - 2 * lam) + v ** (2 - 2 * lam)),
                               rtol=1e-12)
    blocks = observables.sharpness_values(HYP, zeta, S.adam_mini([0, 0]))
    np.testing.assert_allclose(blocks["block_sharpness"], np.sqrt(2 * 4 * (u**2 + v**2)), rtol=1e-12)
    with pytest.raises(S.ConfigError, match="theta"):
        observables.sharpness_values(HYP, np.zeros(3))


def test_tail_mean_is_the_cli_number():
    rng = np.random.default_rng(1)
    obs = {"x": rng.standard_normal((5, 21))}
    div = np.full(5, np.nan)
    div[2] = 0.3  # a diverged path is left out
    tr = Trajectory(t=np.linspace(0, 1, 21), theta=None, v=None, observables=obs, diverged_time=div,
                    meta={"engine": "discrete"})
    m, se = tr.tail_mean("x")
    st = runs.stats(tr)["x"]
    assert m == pytest.approx(st["tail_mean"]) and se == pytest.approx(st["tail_se"])
    ok = np.array([0, 1, 3, 4])
    assert m == pytest.approx(obs["x"][ok, -2:].mean(axis=1).mean())
    one = Trajectory(t=tr.t, theta=None, v=None, observables={"x": obs["x"][:1]}, diverged_time=np.full(1, np.nan),
                     meta={"engine": "discrete"})
    assert np.isnan(one.tail_mean("x")[1])
    with pytest.raises(S.ConfigError, match="fraction"):
        tr.tail_mean("x", 0.0)


SHOWCASE = {"name": "show", "seed": 0, "problem": {"kind": "hyperbola"}, "noise": {"kind": "label_noise", "delta": 0.5},
            "T": 0.2, "n_paths": 2, "n_record": 4, "v0": "equilibrium", "slow_flow": True,
            "runs": {"adam": {"method": "adam", "eta": 0.02, "c": 10.0, "eps": 0.0, "beta1": 0.9},
                     "sgd": {"method": "sgd", "eta": 0.02}}}


@pytest.fixture(scope="module")
def showcase(tmp_path_factory):
    """The showcase pipeline of `slowsde run` (slow_flow: true) on the hyperbola, bars forced on."""
    import yaml

    from slowsde_jax import cli

    root = tmp_path_factory.mktemp("showcase")
    (root / "c.yaml").write_text(yaml.safe_dump(SHOWCASE))
    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("SLOWSDE_PROGRESS")
    os.environ["SLOWSDE_PROGRESS"] = "1"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(["run", str(root / "c.yaml"), "--out", str(root / "runs")])
    finally:
        os.environ.pop("SLOWSDE_PROGRESS") if old is None else os.environ.__setitem__("SLOWSDE_PROGRESS", old)
    assert code == 0, err.getvalue()[-2000:]
    (folder,) = list((root / "runs").iterdir())
    trajs, summary = runs.load_run(folder)
    return S.adam(beta1=0.9, c=10.0, eps=0.0), trajs, summary, folder, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_showcase_run_writes_the_slow_flow_and_tells_the_story(showcase):
    adam, trajs, summary, folder, out, err = showcase
    assert {"slow_flow.png", "observables.png", "trajectories.npz"} <= {p.name for p in folder.iterdir()}
    assert not (folder / "checkpoints").exists()  # finished checkpoints are gone once trajectories.npz is written
    assert set(trajs) == {"adam", "sgd", "adam.at_phi", "adam.slow_ode", "sgd.at_phi", "sgd.slow_ode"}
    flow = summary["slow_flow"]
    assert flow["adam"]["measure"] == "trace_sqrt_diag_H" and flow["sgd"]["measure"] == "trace_H"
    for name in ("adam", "sgd"):  # each flow reduces its own measure from the same start
        assert flow[name]["ode_end"][0] < flow[name]["start"][0]
        assert flow[name]["ode_failed"] == 0
    assert "own sharpness" in out and "tr(Diag H^{1/2})" in out and "slow_flow.png" in out
    assert "adam: 100%" in err and "sgd: 100%" in err and "slow ODE (adam)" in err and "slow ODE (sgd)" in err


@pytest.mark.slow
def test_at_projection_lies_on_gamma_with_every_measure(showcase):
    adam, trajs = showcase[:2]
    proj = trajs["adam.at_phi"]
    u, v = proj.theta[..., 0], proj.theta[..., 1]
    np.testing.assert_allclose(u**2 - v**2, 1.0, atol=1e-9)  # on Gamma = {u^2 - v^2 = 1}
    np.testing.assert_allclose(proj.observables["trace_sqrt_diag_H"], 2 * (np.abs(u) + np.abs(v)), rtol=1e-8)
    assert proj.meta["projected"] and proj.observables["loss"].max() < 1e-16


@pytest.mark.slow
def test_slow_ode_from_records_is_the_engine_started_at_each_record(showcase):
    adam, trajs = showcase[:2]
    tr = trajs["adam"]
    ode = observables.slow_ode_from_records(tr, HYP, LABEL, adam, start=0)
    np.testing.assert_allclose(ode.t, tr.t, atol=1e-12)  # on the discrete clock
    np.testing.assert_allclose(ode.theta, trajs["adam.slow_ode"].theta, rtol=1e-12)  # what the run saved
    assert ode.n_paths == 2 and ode.meta["failure_reasons"] == [] and ode.deterministic
    for i in range(2):
        one = S.simulate_slow_sde(HYP, LABEL, adam, T=float(tr.t[-1]), n_record=4, key=i, start=S.Start(theta0=tr.theta[i, 0], v0=tr.v[i, 0]))
        np.testing.assert_allclose(ode.theta[i], one.theta[0], rtol=1e-12, atol=1e-14)
    # the ODE reduces Adam's own measure: tr(Diag H^{1/2}) is non-increasing along each path
    assert np.all(np.diff(ode.observables["trace_sqrt_diag_H"], axis=1) < 1e-9)
    with pytest.raises(S.ConfigError, match="start"):
        observables.slow_ode_from_records(tr, HYP, LABEL, adam, start=4)
    with pytest.raises(S.ConfigError, match="record_state"):
        observables.slow_ode_from_records(dataclasses.replace(tr, theta=None), HYP, LABEL, adam)


def test_slow_flow_config_needs_recorded_states():
    from slowsde_jax import config

    cfg = {**SHOWCASE, "record_state": False}
    with pytest.raises(S.ConfigError, match="slow_flow: needs record_state"):
        config.validate(cfg)
    with pytest.raises(S.ConfigError, match="slow_flow: must be true or false"):
        config.validate({**SHOWCASE, "slow_flow": "yes"})
    config.validate({**SHOWCASE, "record_state": False, "slow_flow": False})


def test_projection_goes_in_groups_with_a_bar_and_the_same_numbers(small_factorization, monkeypatch):
    """``geometry.project`` works through the points in groups (padded to a few compiled sizes) with a bar
    over the points; the groups change no number: with groups of 4 (10 points: 4, 4 and 2) the points equal
    those of one group."""
    from slowsde_jax.geometry import projection

    prob = small_factorization
    theta = np.asarray(prob.init(jax.random.PRNGKey(1)))[None] + 0.05 * np.random.default_rng(0).normal(size=(10, prob.dim))
    S_ = np.exp(np.random.default_rng(1).normal(size=(10, prob.dim)))
    whole = np.asarray(geo.project(prob.loss, theta, S_, least_squares=prob.least_squares(), progress=False))
    monkeypatch.setattr(projection, "safe_batch", lambda size: 4)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        grouped = np.asarray(geo.project(prob.loss, theta, S_, least_squares=prob.least_squares(), progress=True))
    np.testing.assert_allclose(grouped, whole, rtol=1e-13, atol=1e-15)
    assert "projection onto Gamma" in err.getvalue() and "10/10" in err.getvalue()
