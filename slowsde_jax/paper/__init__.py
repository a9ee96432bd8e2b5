"""The paper's experiments (Li, Wen, Lyu, NeurIPS 2025) as small helpers, kept out of the library namespace.

Seed grids run in one compiled call, sample-size thresholds, states seen on Gamma, minimum quasi-norm
interpolators for the diagonal net, and minimum sharpness on Gamma for matrix factorization. The
library's engines, geometry and analysis do not depend on this subpackage; the scripts in
``experiments/`` and the notebooks do.
"""
from .experiments import (SeedGrid, covering_entries, diagonal_net_weights, grid_point, min_quasi_norm_by_supports,
                          min_quasi_norm_interpolator, min_sharpness_on_manifold, run_seed_grid,
                          states_at_projection, threshold_n, threshold_summary, with_covering_entries)

__all__ = ["SeedGrid", "run_seed_grid", "threshold_n", "threshold_summary", "grid_point", "states_at_projection",
           "min_quasi_norm_interpolator", "min_quasi_norm_by_supports", "diagonal_net_weights", "covering_entries",
           "with_covering_entries", "min_sharpness_on_manifold"]
