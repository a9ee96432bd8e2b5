"""slowsde_jax: adaptive gradient methods and their slow SDE near the minimizer manifold, in JAX.

Importing the package turns on float64 (see ``slowsde_jax._precision``).
"""
from . import _precision  # noqa: F401  (must run before any array is made)
from .validation import ConfigError
from .methods import (AGM, SGD, AbstractMethod, Adafactor, CustomAGM, CustomMatrixAGM, ScaleByAGMState, Shampoo, adafactor, adalayer,
                      adam, adam_mini, adame, custom_agm, make_method, rmsprop, scale_by_agm, second_moment, sgd,
                      shampoo)
from .trajectory import Trajectory, mean_se
from .discrete import simulate_discrete
from .runs import load_run
from .slow_engine import simulate_slow_sde
from .integrators import LabelNoiseODE, ProjectedEulerMaruyama
from .options import Execution, Recording, Start
from .comparison import compare, eta_sweep, weak_order
from .observables import at_projection, on_gamma, project_trajectory, sharpness_values
from .geometry import ProjectionError
from .compile_cache import enable_compilation_cache
from .problems import from_loss
from ._structure import LeastSquares
from . import geometry, jobs, noise, plotting, potential, problems
from ._version import __version__

__all__ = ["ConfigError", "Execution", "LabelNoiseODE", "LeastSquares", "ProjectedEulerMaruyama", "Recording", "Start", "AbstractMethod", "AGM", "SGD", "ProjectionError", "ScaleByAGMState", "Trajectory", "Adafactor", "CustomAGM", "CustomMatrixAGM", "Shampoo", "adafactor", "custom_agm", "adalayer", "adam",
           "adam_mini", "adame", "at_projection", "compare", "enable_compilation_cache", "eta_sweep", "from_loss",
           "geometry", "load_run", "make_method", "mean_se", "noise", "on_gamma", "plotting", "potential", "problems",
           "project_trajectory",
           "rmsprop", "scale_by_agm", "second_moment", "sgd", "shampoo", "sharpness_values", "simulate_discrete",
           "simulate_slow_sde", "weak_order"]
