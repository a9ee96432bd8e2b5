"""The unrolled SPD solve that the Gauss-Newton retraction uses for small Gram matrices."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slowsde_jax import geometry as geo
from slowsde_jax import problems
from slowsde_jax._small_linalg import SMALL_N, spd_solve


def spd(rng, n, cond):
    Q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = (Q * np.logspace(0, -np.log10(cond), n)) @ Q.T
    return 0.5 * (A + A.T)


@pytest.mark.parametrize("n", [1, 2, 3, 5, SMALL_N, SMALL_N + 3])
def test_spd_solve_equals_lu_to_rounding(n):
    rng = np.random.default_rng(n)
    for cond in (1.0, 1e6):
        A = spd(rng, n, cond)
        for b in (rng.normal(size=n), rng.normal(size=(n, 3))):
            x = np.asarray(spd_solve(jnp.asarray(A), jnp.asarray(b)))
            assert x.shape == b.shape
            np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=0, atol=50 * cond * 2.2e-16 * np.abs(x).max())


def test_spd_solve_batches_and_flags_an_indefinite_matrix():
    rng = np.random.default_rng(0)
    A = np.stack([spd(rng, 4, 10.0) for _ in range(6)])
    b = rng.normal(size=(6, 4))
    x = jax.jit(jax.vmap(spd_solve))(jnp.asarray(A), jnp.asarray(b))
    np.testing.assert_allclose(x, np.linalg.solve(A, b[..., None])[..., 0], atol=1e-13)
    assert np.all(np.isnan(spd_solve(jnp.array([[1.0, 2.0], [2.0, 1.0]]), jnp.ones(2))))  # NaN, not an answer


def test_retraction_of_a_small_least_squares_problem_calls_no_lapack():
    """The vmapped Gauss-Newton step on a 4-sample problem compiles without LAPACK custom calls (they cost
    more than their arithmetic at this size and are what deadlocks XLA:CPU in large batches)."""
    prob = problems.diagonal_net(d=8, n=4, k=2, key=0)
    x = jnp.ones((16, prob.dim)) * 0.7
    step = jax.jit(jax.vmap(lambda z: geo.newton_retraction_step(prob.loss, z, jnp.ones(prob.dim), 
                                                                  least_squares=prob.least_squares())))
    targets = re.findall(r'custom_call_target="(\w+)"', step.lower(x).compile().as_text())
    assert not [t for t in targets if "lapack" in t], targets
    np.testing.assert_allclose(np.asarray(step(x))[0], np.asarray(step(x))[1])
