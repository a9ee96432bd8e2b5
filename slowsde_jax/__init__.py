"""slowsde_jax: adaptive gradient methods and their slow SDE near the minimizer manifold, in JAX.

Importing the package turns on float64 (see ``slowsde_jax._precision``).
"""
from . import _precision  # noqa: F401  (must run before any array is made)
from .validation import ConfigError
from .methods import (Method, ScaleByAGMState, adalayer, adam, adam_mini, adame, make_method, rmsprop,
                      scale_by_agm, second_moment, sgd)
from .trajectory import Trajectory, mean_se
from .discrete import simulate_discrete
from .runs import load_run
from .sde import simulate_slow_sde
from .comparison import compare, eta_sweep, project_trajectory
from .geometry import ProjectionError
from .compile_cache import enable_compilation_cache
from . import geometry, noise, plotting, problems

__version__ = "0.1.0"

__all__ = ["ConfigError", "Method", "ProjectionError", "ScaleByAGMState", "Trajectory", "adalayer", "adam",
           "adam_mini", "adame", "compare", "enable_compilation_cache", "eta_sweep", "geometry", "load_run",
           "make_method", "mean_se", "noise", "plotting", "problems", "project_trajectory", "rmsprop",
           "scale_by_agm", "second_moment", "sgd", "simulate_discrete", "simulate_slow_sde"]
