"""The finite-eta regime report (``slowsde_jax.regime``): which coordinates, by how much, and the order to
expect, checked on constructed sweeps with a known gap exponent and on a real sweep."""
import numpy as np
import pytest

import slowsde_jax as S
from slowsde_jax import problems, regime
from slowsde_jax.trajectory import Trajectory


def _traj(v_final):
    v = np.stack([np.ones_like(v_final), v_final], axis=1)  # (paths, 2 records, D)
    return Trajectory(t=np.array([0.0, 1.0]), theta=np.zeros_like(v), v=v, observables={})


@pytest.mark.parametrize("q", [0.5, 0.9])
def test_report_names_the_coordinates_and_fits_the_growth_of_the_discrete_S(q, small_factorization):
    """Slow v tiny on coordinates 1 and 5; there the discrete v is 0.3 eta^(2q), so that its S = 1/(sqrt v + eps)
    grows as eta^-q: those two are named (the larger ratio first), q is recovered, and the eta at which the
    discrete S would reach the slow flow's is the closed form eta_min * ratio^(-1/q)."""
    prob, method = small_factorization, S.adam(c=1.0, eps=1e-8)
    D, etas = prob.dim, [0.04, 0.02, 0.01]
    rng = np.random.default_rng(0)
    v_slow = np.full((8, D), 0.5) + 0.01 * rng.random((8, D))
    v_slow[:, [1, 5]] = [1e-10, 1e-8]
    disc = []
    for eta in etas:
        v = v_slow.copy()
        v[:, [1, 5]] = 0.3 * eta ** (2 * q)
        disc.append(_traj(v))
    rep = regime.finite_eta_regime(prob, method, etas, disc, _traj(v_slow))
    assert rep["coordinates"] == [1, 5] and rep["names"] == ["U[1]", "U[5]"]
    assert rep["etas"] == sorted(etas) and len(rep["discrete_S"]) == 3
    np.testing.assert_allclose(rep["S_growth"], q, rtol=1e-6)
    s_disc = 1.0 / (np.sqrt(0.3 * 0.01 ** (2 * q)) + 1e-8)
    ratio = np.median([1.0 / (np.sqrt(1e-10) + 1e-8) / s_disc, 1.0 / (np.sqrt(1e-8) + 1e-8) / s_disc])
    np.testing.assert_allclose(rep["eta_reach"], 0.01 * ratio ** (-1.0 / q), rtol=1e-5)
    text = regime.describe_regime(rep, D)
    assert "on 2 of 12 coordinate(s)" in text and "U[1]" in text and f"eta^-{q:.2f}" in text and "below 1" in text and "may be pre-asymptotic" in text


def test_nothing_to_report(small_factorization):
    prob, etas = small_factorization, [0.02, 0.01]
    v = np.full((4, prob.dim), 0.5)
    same = [_traj(v), _traj(v)]
    assert regime.finite_eta_regime(prob, S.adam(), etas, same, _traj(v)) is None  # S equal everywhere
    assert regime.finite_eta_regime(prob, S.sgd(), etas, same, _traj(v)) is None  # no v
    assert regime.describe_regime(None) == ""


def test_coordinate_names_follow_the_parameter_leaves():
    import jax.numpy as jnp

    prob = problems.from_loss(lambda p: jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2), {"a": jnp.ones(2), "b": jnp.ones(1)})
    assert regime.coordinate_names(prob) == ["['a'][0]", "['a'][1]", "['b'][0]"]
    assert regime.coordinate_names(problems.hyperbola()) == ["theta[0]", "theta[1]"]
