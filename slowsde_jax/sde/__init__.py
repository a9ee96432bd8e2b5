"""The slow SDE and its label-noise ODE on diffrax: coefficients, vector fields, solvers and segments.

State: the pytree y = (zeta, v), each (D,), on the SDE clock t:

    d zeta = dPhi_S ( Sigma_par^{1/2} dW - 1/2 S grad^3 L[Sigma_diamond] dt ) + Ito correction
    d v    = c ( V(Sigma(zeta)) - v ) dt,        S = S(v)

The problem, noise and method reach the vector fields through diffrax's ``args`` (a ``SlowSDEModel``).

- General noise: projected Euler-Maruyama with fixed steps. ``SlowSDETerm`` returns the drift and the
  diffusion dPhi_S S Sigma^{1/2} (tangent noise only, A A^T = Sigma_par) from one evaluation of the geometry,
  and ``RetractingSolver`` wraps diffrax's Euler and retracts zeta onto Gamma after every step (Newton
  steps along S * normal directions, ``retract_onto_gamma``); the retraction's second-order part
  supplies the Ito correction. Brownian increments come from a
  ``GridBrownianPath``, one key per path. With ``richardson=True`` the SDE is
  solved at steps h and 2 h on the same Brownian path (h <= dt: the step that divides the recording
  interval into an even number of steps) and the observables are extrapolated per path,
  2 f(zeta^{h}) - f(zeta^{2h}): weak error O(h^2) instead of O(h).
- Label noise (Sigma = alpha H on Gamma): no diffusion; the ODE d zeta/dt = -(alpha/4) dPhi_S S grad^3 L[S]
  is integrated with an adaptive solver (Tsit5 by default); on diagonal nets with an AGM in (log|x|, log v),
  where the stiffness near u_j v_j = 0 (S ~ 1/eps) disappears; with an AGM on other problems the field
  reads coordinates below the solver's tolerance as 0, so that coordinates driven to 0 (a factorization's
  dead columns) stop being a stiff mode; the saved states are retracted onto Gamma.

A segment (``_sde_segment``, ``_ode_call``) is one ``diffeqsolve`` with ``SaveAt(ts=...)`` for a group
of paths and records; the integrators (``slowsde_jax.integrators``) lay them out and the engine
(``slowsde_jax.slow_engine``) runs them. SGD is the case S = I with v not evolving.

Modules: ``coefficients`` (the coefficients, vector fields and ``SlowSDETerm``), ``solvers`` (the retraction,
``RetractingSolver``, the SDE segment), ``ode_devices`` (the label-noise ODE's devices and its segment) and
``start`` (the start on Gamma).
"""
from .coefficients import (SlowSDEModel, SlowSDETerm, State, label_noise_ode_field, label_noise_vector_field,
                           sde_coefficients, slow_sde_coefficients)
from .solvers import RetractingSolver, retract_onto_gamma
from .ode_devices import EXPLICIT_STEPS_BEFORE_IMEX, IMEX_SOLVERS, ZERO_FLOOR_ATOLS, imex_kencarp4

__all__ = ["slow_sde_coefficients", "label_noise_vector_field", "SlowSDEModel", "SlowSDETerm", "State",
           "RetractingSolver", "retract_onto_gamma", "sde_coefficients", "label_noise_ode_field", "imex_kencarp4",
           "IMEX_SOLVERS", "ZERO_FLOOR_ATOLS", "EXPLICIT_STEPS_BEFORE_IMEX"]
