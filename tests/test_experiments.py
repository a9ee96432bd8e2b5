"""Experiment helpers: thresholds, the quasi-norm interpolator, sharpness on Gamma, seed grids; and the
ordering of experiment 1 at CPU scale (Adam needs fewer samples than SGD)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import ConfigError, discrete, geometry as geo, noise, paper as X, problems
from slowsde_jax.observables import sharpness_values
from slowsde_jax.sharpness import own_sharpness

pytestmark = pytest.mark.slow  # the science tier: pytest -m slow


# ----- threshold_n -------------------------------------------------------------------------------------------
def test_threshold_interpolates_in_log_loss():
    # log10 loss falls from 1 to -1 between n = 10 and 20: it crosses 0 (loss 1) half way
    assert X.threshold_n([5, 10, 20, 30], [20.0, 10.0, 0.1, 0.05], level=1.0) == pytest.approx(15.0)
    # crossing at a third of the way in log: 100 -> 0.1 (3 decades), level 10 is one decade down
    assert X.threshold_n([0, 3], [100.0, 0.1], level=10.0) == pytest.approx(1.0)


def test_threshold_takes_the_last_crossing_and_the_edges():
    # dips below then back above: only the final crossing counts
    # log-linear between (3, 5) and (4, 0.5): log 5 - s log 10 = 0 at s = log 5 / log 10
    assert X.threshold_n([1, 2, 3, 4], [5.0, 0.5, 5.0, 0.5], level=1.0) == pytest.approx(3 + np.log(5) / np.log(10))
    assert X.threshold_n([1, 2, 3], [0.5, 0.4, 0.1]) == 1.0
    assert X.threshold_n([1, 2, 3], [5.0, 4.0, 3.0]) == float("inf")


def test_threshold_summary_and_bad_input():
    s = X.threshold_summary([1, 2, 3], [[5.0, 0.5, 0.1], [5.0, 5.0, 0.5]], level=1.0)
    assert s["per_seed"][1] == pytest.approx(2 + np.log(5) / np.log(10))
    assert s["per_seed"][0] == pytest.approx(1 + np.log(5) / np.log(10))
    assert s["mean"] == pytest.approx(np.mean(s["per_seed"]))
    assert s["std"] == pytest.approx(np.std(s["per_seed"], ddof=1))
    with pytest.raises(ConfigError, match="n_grid"):
        X.threshold_n([2, 1], [1.0, 1.0])
    with pytest.raises(ConfigError, match="loss"):
        X.threshold_n([1, 2], [1.0])
    with pytest.raises(ConfigError, match="level"):
        X.threshold_n([1, 2], [1.0, 2.0], level=0.0)


# ----- the minimum-quasi-norm interpolator --------------------------------------------------------------------
def _sensing(d=30, n=12, k=2, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.choice([-1.0, 1.0], size=(n, d))
    w = np.zeros(d)
    w[rng.permutation(d)[:k]] = rng.uniform(0.3, 1.0, k) * rng.choice([-1, 1], k)
    return Z, Z @ w, w


def test_irls_with_q1_is_the_linear_programs_minimum_l1_interpolator():
    from scipy.optimize import linprog

    Z, y, _ = _sensing(d=20, n=8, k=4, seed=3)  # too few samples for recovery: the l1 minimizer is not w*
    d = Z.shape[1]
    lp = linprog(np.ones(2 * d), A_eq=np.hstack([Z, -Z]), b_eq=y, bounds=[(0, None)] * (2 * d), method="highs")
    w_lp = lp.x[:d] - lp.x[d:]
    w = X.min_quasi_norm_interpolator(Z, y, q=1.0, iters=100)
    np.testing.assert_allclose(Z @ w, y, atol=1e-8)
    # same minimum (the minimizer itself need not be unique with +-1 features)
    assert np.abs(w).sum() == pytest.approx(np.abs(w_lp).sum(), rel=1e-6)


def test_irls_with_q_half_recovers_where_l1_does_not():
    """8 samples of a 3-sparse w* in d = 30: the minimum-l1 interpolator misses w*, the l_{1/2} one is w*."""
    Z, y, w_star = _sensing(d=30, n=8, k=3, seed=0)
    w_half = X.min_quasi_norm_interpolator(Z, y, q=0.5)
    w_one = X.min_quasi_norm_interpolator(Z, y, q=1.0)
    np.testing.assert_allclose(Z @ w_half, y, atol=1e-8)
    np.testing.assert_allclose(w_half, w_star, atol=1e-6)
    assert np.abs(w_one - w_star).max() > 0.1 and np.abs(w_one).sum() <= np.abs(w_star).sum() + 1e-5
    with pytest.raises(ConfigError, match="q"):
        X.min_quasi_norm_interpolator(Z, y, q=1.5)


def test_support_enumeration_is_the_global_minimizer():
    """The basic-solution enumeration beats IRLS's local minimizer and every sampled interpolator."""
    Z, y, w_star = _sensing(d=14, n=6, k=3, seed=2)
    q = 0.5
    qn = lambda w: np.sum(np.abs(w) ** q, axis=-1)
    w_g = X.min_quasi_norm_by_supports(Z, y, q)
    np.testing.assert_allclose(Z @ w_g, y, atol=1e-9)
    assert qn(w_g) <= qn(X.min_quasi_norm_interpolator(Z, y, q)) + 1e-9 and qn(w_g) <= qn(w_star) + 1e-12
    null = np.linalg.svd(Z)[2][np.linalg.matrix_rank(Z):]  # basis of ker Z
    rng = np.random.default_rng(0)
    samples = w_g + (rng.standard_normal((20_000, null.shape[0])) * rng.uniform(1e-3, 1, (20_000, 1))) @ null
    assert qn(samples).min() > qn(w_g)


# ----- sharpness at Phi_S -------------------------------------------------------------------------------------
def test_sharpness_at_a_point_of_gamma_is_the_quasi_norm():
    """At x = [sqrt(w+); sqrt(w-)] with Z w = y (on Gamma, u_j v_j = 0), diag H = 4 x^2 s with s = 1 for +-1
    features, so tr(Diag H^{1-lam}) = 4^{1-lam} sum_j |w_j|^{1-lam} and tr H = 4 |w|_1; Phi_S leaves x there."""
    P = problems.diagonal_net(d=12, n=6, k=2, key=1, n_test=50)
    w = X.min_quasi_norm_interpolator(np.asarray(P.Z), np.asarray(P.y), q=1.0)
    x = np.concatenate([np.sqrt(np.maximum(w, 0)), np.sqrt(np.maximum(-w, 0))])
    for lam, own in ((0.25, "trace_diag_H_pow"), (0.5, "trace_sqrt_diag_H")):
        m = S.adame(lam=lam, beta2=0.95, eps=1e-6)
        assert own_sharpness(m)[0] == own
        v = np.full((1, x.size), 0.3)
        out = X.states_at_projection(P, m, x[None], v)
        np.testing.assert_allclose(out["zeta"][0], x, atol=1e-7)
        assert out["train_loss"][0] < 1e-20
        assert out["trace_H"][0] == pytest.approx(4 * np.abs(w).sum(), rel=1e-7)
        assert out[own][0] == pytest.approx(4 ** (1 - lam) * np.sum(np.abs(w) ** (1 - lam)), rel=1e-6)
    out = X.states_at_projection(P, S.sgd(), x[None])  # SGD: S = I, its own sharpness is tr H
    assert own_sharpness(S.sgd())[0] == "trace_H" and "trace_diag_H_pow" not in out


def test_a_grid_points_states_are_projected_with_its_own_lam():
    """A run of AdamE-0.25 sweeping lam: the grid point lam = 0.75 is projected along S = v^{-0.75} (not the base
    method's v^{-0.25}), measured on its own n_train, and a diverged path gives NaN."""
    P = problems.diagonal_net(d=12, n=6, k=2, key=1, n_test=50)
    base = S.adame(lam=0.25, beta2=0.95, eps=1e-6)
    P_j, _, m_j = X.grid_point(P, noise.label_noise(0.5), base, {"eta": 0.1, "lam": 0.75, "n_train": 5})
    assert float(m_j.lam) == 0.75 and float(P_j.n_active) == 5.0
    x = np.asarray(P.init(jnp.asarray(np.array([0, 7], dtype=np.uint32)))) + 0.3
    v = np.linspace(0.05, 2.0, x.size)  # uneven: S depends on lam
    out = X.states_at_projection(P_j, m_j, np.stack([x, x]), np.stack([v, v]), diverged=[False, True])
    proj = lambda m, p: np.asarray(geo.project(p.loss, jnp.asarray(x), m.S(jnp.asarray(v)), least_squares=p.least_squares()))
    zeta = proj(S.adame(lam=0.75, beta2=0.95, eps=1e-6), P_j)
    np.testing.assert_allclose(out["zeta"][0], zeta, atol=1e-9)
    assert np.abs(zeta - proj(base, P_j)).max() > 1e-3  # the base method's S would have given another point
    assert out["train_loss"][0] < 1e-20 and P_j.loss(jnp.asarray(x)) > 1e-3
    expect = sharpness_values(P_j, zeta, m_j)
    assert out["trace_diag_H_pow"][0] == pytest.approx(float(expect["trace_diag_H_pow"]), rel=1e-12)
    assert np.all(np.isnan(out["zeta"][1])) and np.isnan(out["test_loss"][1])


def test_seed_grid_tail_skips_diverged_paths():
    """The tail average is Trajectory.tail_mean's: a grid point whose paths all diverge is NaN, flagged in
    ``diverged``, and does not touch the other grid point's average."""
    P = lambda s: problems.diagonal_net(d=6, n=4, k=1, key=s, n_test=20)
    g = X.run_seed_grid(P, noise.label_noise(0.5), S.sgd(), [0], sweep={"eta": [0.05, 20.0]}, steps=100,
                        n_paths=2, n_record=4, tail_fraction=0.5, keep_trajectories=True)
    tr_ok, tr_bad = g.trajectories[0]
    assert g.diverged.shape == (1, 2, 2) and not g.diverged[0, 0].any() and g.diverged[0, 1].all()
    assert np.isnan(g.tail["train_loss"][0, 1])
    assert g.tail["train_loss"][0, 0] == pytest.approx(tr_ok.tail_mean("train_loss", 0.5)[0], rel=1e-12)


# ----- seed grids, and experiment 1's ordering at CPU scale ---------------------------------------------------
N_GRID = [8, 10, 12, 14, 16, 18, 20, 22, 24, 28, 32]
SEEDS = [0, 1, 2, 3]


def _make(seed):
    return problems.diagonal_net(d=100, n=32, k=5, key=seed, n_test=1000)


@pytest.fixture(scope="module")
def grids():
    """d = 100, k = 5, fresh +-0.5 label noise, four seeds (each redraws w*, data and paths); both methods run
    to their plateau in slow time (Adam lr 0.1, t = 200; SGD lr 0.1, t = 300: docs/experiments.md)."""
    L = noise.label_noise(0.5)
    out = {}
    for name, m, eta, steps in (("adam", S.adam(beta2=0.95, eps=1e-6), 0.1, 20_000), ("sgd", S.sgd(), 0.1, 30_000)):
        out[name] = (m, eta, steps, X.run_seed_grid(_make, L, m, SEEDS, eta=eta, steps=steps, sweep={"n_train": N_GRID},
                                                    n_record=8, tail_fraction=0.25, record_state=True))
    return out


def test_seed_grid_is_the_per_seed_sweep(grids):
    m, eta, steps, g = grids["adam"]
    assert g.tail["test_loss"].shape == (4, len(N_GRID)) and g.final_theta.shape == (4, len(N_GRID), 1, 200)
    assert g.hypers[2]["n_train"] == 12 and g.select(n_train=12).tolist() == [2]
    assert np.allclose(g.t_end, 200.0)
    ref = S.simulate_discrete(_make(1), noise.label_noise(0.5), m, eta=eta, steps=steps, key=1,
                                     sweep={"n_train": N_GRID}, n_record=8)
    np.testing.assert_array_equal(g.final_theta[1, 5], ref[5].theta[:, -1])
    np.testing.assert_allclose(g.tail["test_loss"][1, 5], ref[5].observables["test_loss"][0, -2:].mean())
    assert len(set(g.tail["test_loss"][:, 0].round(12))) == 4  # every seed its own data


def test_adam_needs_fewer_samples_than_sgd(grids):
    """The threshold is the n_train from which the tail-averaged clean test loss stays below 0.1 (the null
    loss |w*|^2 / 2 is ~0.8). On every seed Adam's threshold is lower, and a paired one-sided t-test on the
    per-seed gaps rejects "no gap" at the 5% level: t = mean / (sd / sqrt(n)) > t_{0.95, n-1}."""
    thr = {name: np.array(X.threshold_summary(N_GRID, g.tail["test_loss"], level=0.1)["per_seed"])
           for name, (_, _, _, g) in grids.items()}
    gap = thr["sgd"] - thr["adam"]
    assert np.all(np.isfinite(thr["adam"])) and np.all(gap > 0), thr
    n = gap.size
    t = gap.mean() / (gap.std(ddof=1) / np.sqrt(n))
    T_95_3DOF = 2.353  # scipy.stats.t.ppf(0.95, 3): the one-sided 95% quantile of Student's t with 3 dof
    assert n == 4
    assert t > T_95_3DOF, (thr, gap, t)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_min_sharpness_on_gamma_fully_observed_is_the_schatten_norm(power):
    """All 3x2 entries observed (n = 6): W is fixed on Gamma and, over its factorizations, min tr H =
    2 sqrt(d1 d2) ||W||_* / n and min tr(Diag H^{1/2}) = 2 sqrt(d1 d2 / n) sum_k sigma_k^{1/2}
    (AM-GM per column pair, then the nuclear norm's / Rotfel'd's inequality)."""
    d1, d2, n = 3, 2, 6
    P = problems.matrix_factorization(d1=d1, d2=d2, rank=2, n=n, key=0, init_scale=1.0)
    sv = np.linalg.svd(np.asarray(P.W_star), compute_uv=False)
    want = 2 * np.sqrt(d1 * d2) * sv.sum() / n if power == 1.0 else 2 * np.sqrt(d1 * d2 / n) * np.sqrt(sv).sum()
    theta, info = X.min_sharpness_on_manifold(P, P.init(jax.random.PRNGKey(1)), power)
    assert info["constraint"] < 1e-10
    np.testing.assert_allclose(np.asarray(P.matrix(jnp.asarray(theta))), np.asarray(P.W_star), atol=1e-10)
    np.testing.assert_allclose(info["sharpness"], want, rtol=1e-6)
    with pytest.raises(ConfigError, match="power"):
        X.min_sharpness_on_manifold(P, theta, 1.5)


def test_covering_entries_observe_every_row_and_column_once_each_entry():
    rows, cols = X.covering_entries(6, 4, 9, seed=3)
    assert set(rows) == set(range(6)) and set(cols) == set(range(4))
    assert len(set(zip(rows, cols))) == 9
    r2, c2 = X.covering_entries(6, 4, 9, seed=3)
    assert (rows == r2).all() and (cols == c2).all()  # the seed fixes the mask
    with pytest.raises(ConfigError, match="n"):
        X.covering_entries(6, 4, 5, seed=0)  # fewer entries than rows


def test_with_covering_entries_relabels_the_problem_at_the_covering_mask():
    p = problems.matrix_factorization(d1=5, d2=4, rank=2, n=9, key=2)
    q = X.with_covering_entries(p, seed=7)
    rows, cols = X.covering_entries(5, 4, 9, seed=7)
    np.testing.assert_array_equal(q.rows, rows)
    np.testing.assert_array_equal(q.cols, cols)
    np.testing.assert_array_equal(q.y, p.W_star[rows, cols])
    np.testing.assert_array_equal(q.W_star, p.W_star)
    with pytest.raises(ConfigError, match="problem"):
        X.with_covering_entries(problems.matrix_factorization(d1=4, d2=4, rank=1, n=8, measurement="gaussian"), 0)
