"""Adam's label-noise ODE on a matrix factorization, where the method kills column pairs (u_k, v_k) -> 0 and
S = 1/(sqrt(v) + eps) grows towards 1/eps on them: the stiff mode that the ODE's zero floor removes
(``LabelNoiseODE(zero_floor=...)``, ``sde.ode_devices._label_noise_field_with_floor``)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import discrete, geometry as geo, noise, paper as X, problems, sde
from slowsde_jax.validation import ConfigError

pytestmark = pytest.mark.slow  # the science tier: pytest -m slow

D1 = 5
LABEL = noise.label_noise(1.0)
ADAM = S.adam(c=0.01 / 0.03**2, eps=1e-8)  # beta2 = 0.99 at lr 0.03, as in docs/experiments.md section 2


def make_problem():
    """A full-rank 5 x 5 Gaussian W*, 15 observed entries that cover every row and column."""
    return X.with_covering_entries(problems.matrix_factorization(d1=D1, d2=D1, rank=D1, n=15, key=1, init_scale=0.1),
                                   2001)


PROB = make_problem()


def column_products(theta):
    """|u_k| |v_k| for each column pair of W = U V^T, (D1,)."""
    U, V = np.asarray(theta[: D1 * D1]).reshape(D1, D1), np.asarray(theta[D1 * D1:]).reshape(D1, D1)
    return np.linalg.norm(U, axis=0) * np.linalg.norm(V, axis=0)


@pytest.fixture(scope="module")
def early():
    """Adam's discrete state at t = 1 from the initializer (train loss small, off Gamma by the noise)."""
    tr = S.simulate_discrete(PROB, LABEL, ADAM, eta=0.03, T=1.0, key=0, n_record=1, start=S.Start(v0="zeros"))
    return tr.theta[0, -1], np.maximum(tr.v[0, -1], 1e-300)


def ode(early, T, **ode_kw):
    th0, v0 = early
    return S.simulate_slow_sde(PROB, LABEL, ADAM, T=T, n_record=4, start=S.Start(theta0=th0, v0=v0),
                               integrator=S.LabelNoiseODE(max_steps=3000, **ode_kw))


def test_the_ode_passes_a_dead_column_with_the_floor_and_stalls_without_it(early, tmp_path, monkeypatch):
    run = ode(early, 2.0)
    assert run.meta["failure_reasons"] == [] and run.meta["imex_fallback_solves"] == 0
    prod = np.sort(column_products(run.theta[0, -1]))
    assert prod[0] < 1e-12 < 0.1 < prod[1]  # one column pair is dead, the other four are alive
    # The plain field: the dead column holds Tsit5 at tiny steps before t = 1.
    th0, v0 = early
    plain = dict(T=1.0, n_record=4, start=S.Start(theta0=th0, v0=v0),
                 integrator=S.LabelNoiseODE(max_steps=3000, zero_floor=0.0))
    alone = S.LabelNoiseODE(max_steps=3000, zero_floor=0.0, imex_fallback=False)
    for per_call in (4, 1):  # the four records in one call; one record per call
        stiff = S.simulate_slow_sde(PROB, LABEL, ADAM, **{**plain, "integrator": alone},
                                    execution=S.Execution(records_per_call=per_call))
        assert stiff.meta["failure_reasons"] and stiff.meta["imex_fallback_solves"] == 0  # no fallback asked for
        reached = int(np.searchsorted(stiff.t, stiff.diverged_time[0]))  # it failed in (t[reached - 1], t[reached]]
        assert 1 < reached <= 4  # after the record at t = 0.25
        # The default solver hands the failed path to KenCarp4 (no floor, and none needed) from the last
        # record Tsit5 reached: the records before it are Tsit5's, bit for bit. After that the path stays on
        # KenCarp4: Tsit5 is not tried again on the later calls.
        solvers = []

        def segment(model, solver, *args, _segment=sde.ode_devices._ode_segment):
            solvers.append(type(solver).__name__)
            return _segment(model, solver, *args)

        monkeypatch.setattr(sde.ode_devices, "_ode_segment", segment)
        ckpt = tmp_path / f"ode{per_call}.npz"
        fallback = S.simulate_slow_sde(PROB, LABEL, ADAM, **plain,
                                       execution=S.Execution(checkpoint=ckpt, records_per_call=per_call))
        monkeypatch.undo()
        calls = 4 // per_call
        failed_call = (reached - 1) // per_call  # the call whose Tsit5 solve failed
        assert solvers == ["Tsit5"] * (failed_call + 1) + ["KenCarp4"] * (calls - failed_call)
        assert fallback.meta["failure_reasons"] == []
        assert fallback.meta["imex_fallback_solves"] == calls - failed_call
        np.testing.assert_array_equal(fallback.theta[:, :reached], stiff.theta[:, :reached])
        np.testing.assert_allclose(fallback.theta[0, -1], run.theta[0, 2], rtol=0, atol=1e-6)  # t = 1
        # the count lives in the checkpoint: a resumed (here: already finished) run reports the solves before it
        resumed = S.simulate_slow_sde(PROB, LABEL, ADAM, **plain,
                                      execution=S.Execution(checkpoint=ckpt, records_per_call=per_call))
        assert resumed.meta["imex_fallback_solves"] == fallback.meta["imex_fallback_solves"]
        np.testing.assert_array_equal(resumed.theta, fallback.theta)


def test_the_floor_moves_the_solution_by_less_than_the_tolerance(early):
    # before the column dies the plain field is still solvable; the two solves agree to the solver's rtol
    with_floor, plain = ode(early, 0.5), ode(early, 0.5, zero_floor=0.0)
    assert plain.meta["failure_reasons"] == []
    np.testing.assert_allclose(with_floor.theta[0], plain.theta[0], rtol=0, atol=1e-7)


def test_discrete_adam_converges_to_the_ode(early):
    """The projected discrete runs at eta = 0.015 and 0.0075 (c fixed, 64 paths each) against the ODE at
    t = 0.5, when the dying column is at ~1e-4 (measured at eta = 0.03, 0.015, 0.0075):

    - tr H has a first-order weak error (+0.0353, +0.0143, +0.0072, s.e. 0.002 to 0.001), so its
      extrapolation to eta = 0, 2 e(eta/2) - e(eta), vanishes within 3.5 s.e.;
    - tr(Diag H^{1/2}), the quantity Adam's ODE lowers, converges more slowly (+0.56, +0.31, +0.20, s.e.
      0.02: each column the discrete run keeps at O(eta) size adds sqrt(H_kk), which is not Lipschitz at 0),
      but its error falls with eta.

    (Over this horizon the drift moves tr H by only -0.019 and non-monotonically, so this test is a check of
    the ODE's solution through the floor, not a sharp test of the drift's constant; that is
    tests/test_sparse_corner.py's and tests/test_sde_generic.py's job.)"""
    th0, v0 = early
    end = ode(early, 0.5).observables
    runs = S.simulate_discrete(PROB, LABEL, ADAM, T=0.5, n_paths=64, key=7, n_record=1, sweep={"eta": [0.015, 0.0075]}, start=S.Start(theta0=th0, v0=v0))
    errs = {}
    for eta, tr in zip((0.015, 0.0075), runs):
        pr = X.states_at_projection(PROB, ADAM, tr.theta[:, -1], tr.v[:, -1])
        for k in ("trace_H", "trace_sqrt_diag_H"):
            x = np.asarray(pr[k])
            errs[k, eta] = (x.mean() - end[k][0, -1], x.std(ddof=1) / np.sqrt(x.size))
    (e0, s0), (e1, s1) = errs["trace_H", 0.015], errs["trace_H", 0.0075]
    assert e0 > 3 * s0 and abs(2 * e1 - e0) < 3.5 * np.hypot(2 * s1, s0), errs
    (e0, s0), (e1, s1) = errs["trace_sqrt_diag_H", 0.015], errs["trace_sqrt_diag_H", 0.0075]
    assert e0 > 0 and abs(e1) + 3 * np.hypot(s0, s1) < e0, errs


def test_zero_floor_is_checked():
    with pytest.raises(ConfigError, match="zero_floor"):
        S.simulate_slow_sde(PROB, LABEL, ADAM, T=0.1, integrator=S.LabelNoiseODE(zero_floor=-1.0))


# ----- the IMEX solver (solver="kencarp4"): zeta implicit with a structured Jacobian, v explicit ----------------
def test_the_imex_solver_agrees_with_tsit5(early):
    """Where Tsit5 still runs (before the dying column's rate gets large), KenCarp4 with the structured
    Jacobian of sde.ode_devices._label_noise_implicit_drift gives the same trajectory to the tolerance."""
    th0, v0 = early
    runs = [S.simulate_slow_sde(PROB, LABEL, ADAM, T=0.25, n_record=1, start=S.Start(theta0=th0, v0=v0), integrator=S.LabelNoiseODE(max_steps=3000, solver=s, zero_floor=0.0)) for s in ("tsit5", "kencarp4")]
    assert all(r.meta["failure_reasons"] == [] for r in runs)
    np.testing.assert_allclose(runs[1].theta[0, -1], runs[0].theta[0, -1], rtol=0, atol=1e-7)


def test_the_implicit_drift_has_the_exact_value_and_the_structured_jacobian():
    """Its value is the drift; its Jacobian in zeta is -(alpha/4) dPhi_S S grad^2 tr(S J^T W J), which for a
    factorization observed at entries is dPhi_S S times a diagonal matrix: 2 sum_i w_i S_partner."""
    model = sde.SlowSDEModel(PROB, LABEL, ADAM, ADAM.c_at(None), alpha=LABEL.label_noise_alpha(PROB))
    z = PROB.init(jax.random.PRNGKey(3))
    v = jnp.abs(PROB.init(jax.random.PRNGKey(4))) + 1e-3
    drift, zero = sde.ode_devices._label_noise_implicit_drift(0.0, (z, v), model)
    np.testing.assert_array_equal(drift, sde.label_noise_ode_field(0.0, (z, v), model)[0])
    np.testing.assert_array_equal(zero, 0.0)
    jac = jax.jacfwd(lambda zz: sde.ode_devices._label_noise_implicit_drift(0.0, (zz, v), model)[0])(z)
    S_ = np.asarray(ADAM.S(v))
    d, r = D1, D1
    SU, SV = S_[: d * r].reshape(d, r), S_[d * r:].reshape(d, r)
    w = np.asarray(PROB.sample_weights())
    rows, cols = np.asarray(PROB.rows), np.asarray(PROB.cols)
    KU, KV = np.zeros((d, r)), np.zeros((d, r))
    np.add.at(KU, rows, w[:, None] * SV[cols])
    np.add.at(KV, cols, w[:, None] * SU[rows])
    K = 2.0 * np.concatenate([KU.ravel(), KV.ravel()])
    P = np.asarray(geo.ls_projection_jacobian(PROB.residual_jacobian(z), PROB.sample_weights(), jnp.asarray(S_)))
    expected = -(model.alpha / 4.0) * P @ (S_[:, None] * np.diag(K))
    np.testing.assert_allclose(jac, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_the_implicit_drift_jacobian_on_a_generic_least_squares_loss():
    """The same stiff Jacobian on residuals without a closed form (from_loss, codimension 1 and not bilinear),
    against dPhi_S S times jax.hessian of tr(S J^T W J)."""
    prob = problems.from_loss(lambda t: (t["a"] * t["b"] * t["c"] - 1.0) ** 2 / 2, {"a": 1.5, "b": 1.0, "c": 1 / 1.5},
                              residuals=lambda t: jnp.atleast_1d(t["a"] * t["b"] * t["c"] - 1.0))
    model = sde.SlowSDEModel(prob, LABEL, ADAM, ADAM.c_at(None), alpha=LABEL.label_noise_alpha(prob))
    z, v = jnp.array([1.5, 1.0, 1 / 1.5]), jnp.array([0.3, 0.02, 1.1])
    jac, jac_v = jax.jit(lambda z, v: jax.jacfwd(lambda zz, vv: sde.ode_devices._label_noise_implicit_drift(0.0, (zz, vv), model)[0],
                                                 argnums=(0, 1))(z, v))(z, v)
    S_ = ADAM.S(v)
    ls = prob.least_squares()
    residuals, w = ls.residuals, ls.weights

    def phi(t):
        J = jax.jacrev(residuals)(t)
        return jnp.sum(w[:, None] * J * J * S_[None, :])

    P = geo.ls_projection_jacobian(jax.jacrev(residuals)(z), w, S_)
    expected = -(model.alpha / 4.0) * P @ (S_[:, None] * jax.jit(jax.hessian(phi))(z))
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(jac, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    np.testing.assert_array_equal(jac_v, 0.0)  # S is frozen


def test_the_imex_solver_is_only_for_the_label_noise_ode_of_an_agm():
    with pytest.raises(ConfigError, match="solver"):
        S.simulate_slow_sde(PROB, LABEL, S.sgd(), T=0.1, integrator=S.LabelNoiseODE(solver="kencarp4"))
    with pytest.raises(ConfigError, match="^integrator: the label-noise ODE needs label noise"):
        S.simulate_slow_sde(PROB, noise.gaussian(0.1 * np.ones(PROB.dim)), ADAM, T=0.1,
                            integrator=S.LabelNoiseODE(solver="kencarp4"))
