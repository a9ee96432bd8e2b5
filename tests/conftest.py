"""Test-wide settings and the shared small problems.

- A session-wide persistent compilation cache in a temporary folder: the pytest-xdist workers, and the
  command-line runs the tests start in subprocesses, load the programs another process compiled instead
  of compiling them again. The controller makes the folder (workers inherit ``SLOWSDE_CACHE_DIR``) and
  removes it at the end. ``tests/test_compile_cache.py`` sets its own folders.
- The fast tier (``-m 'not slow'``) compiles with XLA's backend optimizations off (``pytest_configure``).
- Shared fixtures (session scope, so that compiled programs are shared across test files): a hyperbola,
  a small diagonal net, a small matrix factorization and a small two-layer MLP built with ``from_loss``.
"""
import os
import shutil
import tempfile

import jax
import jax.numpy as jnp
import pytest

_OWN_CACHE = "PYTEST_XDIST_WORKER" not in os.environ and "SLOWSDE_TEST_CACHE_OWNER" not in os.environ
if _OWN_CACHE:
    os.environ["SLOWSDE_CACHE_DIR"] = tempfile.mkdtemp(prefix="slowsde-test-cache-")
    os.environ["SLOWSDE_TEST_CACHE_OWNER"] = str(os.getpid())

import slowsde_jax  # noqa: E402  (after the cache folder is set)
from slowsde_jax import problems  # noqa: E402

slowsde_jax.enable_compilation_cache()
# only programs that take a while to compile: writing every small one to disk costs more than it saves
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def pytest_configure(config):
    """The fast tier compiles far more than it runs: XLA's backend optimizations off there (about a fifth
    less wall time; the same IEEE arithmetic). The science tier runs long simulations and keeps them on.
    Set before the first computation makes the CPU client (the test modules are imported after this)."""
    if config.option.markexpr == "not slow" and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


def pytest_unconfigure(config):
    if _OWN_CACHE and os.environ.get("SLOWSDE_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["SLOWSDE_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def hyperbola():
    """The hyperbola u^2 - v^2 = 1, started on Gamma (D = 2)."""
    return problems.hyperbola(y=1.0)


@pytest.fixture(scope="session")
def small_diagonal_net():
    """Sparse regression with a diagonal net: d = 4 (D = 8), n = 3 samples, 1-sparse w*."""
    return problems.diagonal_net(d=4, n=3, k=1, key=0, n_test=10)


@pytest.fixture(scope="session")
def small_factorization():
    """A 3 x 3 rank-1 matrix from 5 observed entries, model rank 2 (D = 12; two leaves U, V)."""
    return problems.matrix_factorization(d1=3, d2=3, rank=1, n=5, key=0, model_rank=2)


def _mlp_params(key=0, n_in=2, width=3):
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    return {"W1": 0.5 * jax.random.normal(k1, (width, n_in)), "b1": jnp.zeros(width),
            "w2": 0.5 * jax.random.normal(k2, (width,))}


@pytest.fixture(scope="session")
def small_mlp():
    """A tanh MLP 2 -> 3 -> 1 on 4 samples as a user pytree (three leaves, D = 12), with residuals (least
    squares: label noise applies)."""
    X = jnp.array([[1.0, 0.5], [-0.3, 1.2], [0.8, -1.0], [0.1, 0.2]])
    y = jnp.array([0.3, -0.2, 0.5, 0.0])

    def residuals(p):
        return jnp.tanh(X @ p["W1"].T + p["b1"]) @ p["w2"] - y

    return problems.from_loss(lambda p: 0.5 * jnp.mean(residuals(p) ** 2), _mlp_params(), residuals=residuals)
