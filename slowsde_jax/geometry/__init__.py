"""Geometry of the minimizer manifold Gamma (docs/math.md#geometry to #diagonal-net).

Conventions: theta has shape (D,); H is the Hessian (D, D) at a point zeta of Gamma; Sigma is the noise
covariance (D, D); the preconditioner S is either its diagonal (shape (D,)) or a symmetric positive-definite
matrix (D, D). With H' = S^{1/2} H S^{1/2}:

- ``projection_jacobian(H, S)``: dPhi_S = S^{1/2} (I - H'^+ H') S^{-1/2} = I - S H (H S H)^+ H, the oblique
  projection onto ker H along S range(H);
- ``sigma_parallel(H, Sigma, S)``: Sigma_par = dPhi_S S Sigma S dPhi_S^T;
- ``sigma_diamond(H, Sigma, S)``: the symmetric X with dPhi_S X dPhi_S^T = 0 and S H X + X H S = S Sigma S - Sigma_par;
- ``third_derivative_contraction(loss, theta, M)``: grad_theta <Hess L(theta), M> with M fixed;
- ``project(loss, theta, S)``: Phi_S(theta);
- ``sharpness(H, kind)``: tr H, tr(Diag H^{1/2}), tr(Diag H^{1-lam}), sum_B sqrt(|B| tr H_BB);
- least squares on Gamma (``ls_*``): H = J^T W J from the residual Jacobian J (n, D) and weights W = Diag(w),
  so that dPhi_S = I - S J^T (J S J^T)^{-1} J costs O(n^2 D + n^3) instead of O(D^3);
  ``ls_slow_sde_coefficients`` gives the slow SDE's drift and tangent noise factor the same way, from a noise
  factor G (Sigma = G G^T, see ``Noise.covariance_factor``) and one n x n eigendecomposition.

**Rank rule.** Gamma has codimension m = rank H. Matrix-level functions take ``rank`` (the known codimension,
e.g. the number of active samples of an interpolating least-squares problem) or, when it is None, count the
eigenvalues of H' above ``rtol`` times the largest one (default rtol = 1e-8: in float64, rounding puts the
zero eigenvalues near 1e-16 of the largest, and curvature on Gamma is rarely 1e8 times smaller than the

Modules: ``dense`` (matrix and autodiff level), ``least_squares`` (sample space), ``quadratic`` (closed forms
for r = B (x * x) - y) and ``projection`` (Phi_S and the Newton retraction).
"""
from .dense import (DEFAULT_RTOL, hessian, normal_frame, numerical_rank, projection_jacobian, sharpness,
                    sigma_diamond, sigma_parallel, third_derivative_contraction)
from .least_squares import (label_noise_drift, ls_apply_projection, ls_gn_trace_hessian, ls_projection_jacobian,
                            ls_sigma_diamond_jt, ls_slow_sde_coefficients, ls_third_derivative_tangent)
from .quadratic import quadratic_label_noise_rate
from .projection import (PROJECTION_OK, PROJECTION_STATUS, ProjectionError, newton_retraction_step, project,
                         project_flow, projection_failure_message)

__all__ = ["ProjectionError", "PROJECTION_STATUS", "PROJECTION_OK", "DEFAULT_RTOL", "projection_jacobian",
           "sigma_parallel", "sigma_diamond", "sharpness", "hessian", "third_derivative_contraction",
           "numerical_rank", "ls_apply_projection", "ls_projection_jacobian", "ls_third_derivative_tangent",
           "ls_gn_trace_hessian", "ls_sigma_diamond_jt", "ls_slow_sde_coefficients", "label_noise_drift",
           "quadratic_label_noise_rate", "normal_frame", "newton_retraction_step", "project_flow", "project",
           "projection_failure_message"]
