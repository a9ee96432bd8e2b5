"""Each method's own sharpness, on batches, at Phi_S(theta), and the slow flow started from a run's records:
closed forms on the diagonal net, identities with the single-point functions and engines."""
import contextlib
import io

import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import geometry as geo
from slowsde_jax import noise, observables, problems, runs
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
    assert observables.own_sharpness(S.sgd()) == ("trace_H", "tr H")
    assert observables.own_sharpness(S.adam())[0] == "trace_sqrt_diag_H"
    assert observables.own_sharpness(S.rmsprop())[0] == "trace_sqrt_diag_H"
    assert observables.own_sharpness(S.adame(lam=0.5))[0] == "trace_sqrt_diag_H"
    assert observables.own_sharpness(S.adame(lam=0.25)) == ("trace_diag_H_pow", "tr(Diag H^{0.75})")
    assert observables.own_sharpness(S.adam_mini([0, 0, 1, 1]))[0] == "block_sharpness"


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


@pytest.fixture(scope="module")
def hyperbola_run():
    """A two-point eta sweep of Adam on the hyperbola (its progress bar captured) and the eta = 0.02 run."""
    adam = S.adam(beta1=0.9, c=10.0, eps=0.0)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        trajs = S.simulate_discrete(HYP, LABEL, adam, sweep={"eta": [0.04, 0.02]}, T=0.2, n_paths=2, key=3,
                                    n_record=4, v0="equilibrium", progress=True)
    return adam, trajs[1], err.getvalue()


def test_the_sweep_drives_its_progress_bar(hyperbola_run):
    bar = hyperbola_run[2]
    assert "adam (2 configs)" in bar and "500/500" in bar and "100%" in bar  # 0.2 / 0.02^2 steps at the end


def test_at_projection_lies_on_gamma_with_every_measure(hyperbola_run):
    adam, tr, _ = hyperbola_run
    proj = observables.at_projection(tr, HYP, adam)
    u, v = proj.theta[..., 0], proj.theta[..., 1]
    np.testing.assert_allclose(u**2 - v**2, 1.0, atol=1e-9)  # on Gamma = {u^2 - v^2 = 1}
    np.testing.assert_allclose(proj.observables["trace_sqrt_diag_H"], 2 * (np.abs(u) + np.abs(v)), rtol=1e-8)
    assert proj.meta["projected"] and proj.observables["loss"].max() < 1e-16


def test_slow_ode_from_records_is_the_engine_started_at_each_record(hyperbola_run):
    adam, tr, _ = hyperbola_run
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        ode = observables.slow_ode_from_records(tr, HYP, LABEL, adam, start=1, progress=True)
    assert "slow ODE (adam)" in err.getvalue() and "100%" in err.getvalue()
    np.testing.assert_allclose(ode.t, tr.t[1:], atol=1e-12)  # on the discrete clock from the start record on
    assert ode.n_paths == 2 and ode.meta["failure_reasons"] == [] and ode.deterministic
    for i in range(2):
        one = S.simulate_slow_sde(HYP, LABEL, adam, T=float(tr.t[-1] - tr.t[1]), theta0=tr.theta[i, 1],
                                  v0=tr.v[i, 1], n_record=3)
        np.testing.assert_allclose(ode.theta[i], one.theta[0], rtol=1e-12, atol=1e-14)
    # the ODE reduces Adam's own measure: tr(Diag H^{1/2}) is non-increasing along each path
    assert np.all(np.diff(ode.observables["trace_sqrt_diag_H"], axis=1) < 1e-9)
    with pytest.raises(S.ConfigError, match="start"):
        observables.slow_ode_from_records(tr, HYP, LABEL, adam, start=4)
