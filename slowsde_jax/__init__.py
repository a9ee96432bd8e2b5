"""slowsde_jax: adaptive gradient methods and their slow SDE near the minimizer manifold, in JAX.

Importing the package turns on float64 (see ``slowsde_jax._precision``).
"""
from . import _precision  # noqa: F401  (must run before any array is made)
from .validation import ConfigError
from .methods import Method, adalayer, adam, adam_mini, adame, make_method, rmsprop, sgd
from .trajectory import Trajectory
from .discrete import simulate_discrete
from .runs import load_run
from .sde import simulate_slow_sde
from .comparison import compare, eta_sweep, project_trajectory
from . import geometry, noise, plotting, problems

__version__ = "0.1.0"

__all__ = ["ConfigError", "Method", "Trajectory", "adalayer", "adam", "adam_mini", "adame", "compare", "eta_sweep",
           "geometry", "load_run", "make_method", "noise", "plotting", "problems", "project_trajectory", "rmsprop", "sgd",
           "simulate_discrete", "simulate_slow_sde"]
