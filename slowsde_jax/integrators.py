"""How the slow engine integrates: two final classes under one abstract integrator, in diffrax's style.

- ``ProjectedEulerMaruyama``: the slow SDE (any noise) with fixed steps ``dt`` and a retraction onto Γ
  after every step, optionally Richardson-extrapolated;
- ``LabelNoiseODE``: the label-noise ODE (Σ = αH on Γ, no diffusion) with an adaptive diffrax solver.

Each owns its checks (at construction, and against the problem, noise and method in ``plan``), its
schedule of steps, its compiled segment and its metadata. ``default_integrator`` picks the ODE under
label noise and the SDE otherwise.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Optional, Union, final

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._pattern import forbid_subclassing_final
from ._runtime_checks import check_time_grid, host_checked
from .methods import AbstractMethod
from .noise import AbstractNoise
from .problems import AbstractProblem
from .sde.ode_devices import IMEX_SOLVERS, ZERO_FLOOR_ATOLS, _imex_applies, _ode_call, imex_kencarp4
from .sde.solvers import _sde_segment
from .validation import ConfigError, check_bool, check_int, check_range, suggest

__all__ = ["AbstractSlowIntegrator", "ProjectedEulerMaruyama", "LabelNoiseODE", "default_integrator",
           "ODE_SOLVER_NAMES"]

ODE_SOLVERS = {"tsit5": lambda rtol, atol: diffrax.Tsit5(), "kvaerno5": lambda rtol, atol: diffrax.Kvaerno5(),
               "kencarp4": imex_kencarp4}
ODE_SOLVER_NAMES = tuple(ODE_SOLVERS)
_ODE_WHAT = ("the label-noise ODE takes an adaptive diffrax ODE solver (Tsit5, Dopri5, Kvaerno5, KenCarp4, ...) or "
             f"one of {', '.join(map(repr, ODE_SOLVER_NAMES))}; the general slow SDE is "
             "slowsde_jax.ProjectedEulerMaruyama(dt)")


class AbstractSlowIntegrator(eqx.Module):
    """How ``slowsde_jax.simulate_slow_sde`` integrates. Subclasses are final."""

    engine: ClassVar[str]
    rank: eqx.AbstractVar[Optional[int]]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        forbid_subclassing_final(cls)

    @abc.abstractmethod
    def plan(self, problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, t_grid: np.ndarray,
             dtype: Any) -> "_Plan":
        """Check this integrator against the problem, noise and method, and lay out its steps on the record
        times ``t_grid``; ConfigError naming ``integrator.<field>`` when it does not apply."""


class _Plan:
    """An integrator laid out on one run: ``alpha`` (Σ = αH, None for the SDE), ``levels`` (step sizes: 1, or
    2 with Richardson), ``segment`` (one compiled call) and ``meta`` (its Trajectory.meta entries)."""

    alpha: Optional[float]
    levels: int

    def segment(self, model, y, keys, on_imex, t_grid, j0, j1, level):
        """One compiled call for a group of P paths from record j0 to j1 of ``t_grid``: the states ``y`` (ζ, v)
        and Brownian ``keys`` per path; ``on_imex`` (P,) bool, the paths the ODE's default solver has handed to
        its IMEX fallback. Returns ((ζ, v) records (P, j1 - j0, ·), solved (P,), on_imex after the call (P,),
        IMEX solves made for each path (P,)), as host arrays."""
        raise NotImplementedError

    def meta(self, runs) -> dict:
        raise NotImplementedError


def _check_rank(rank):
    if rank is not None:
        check_int("rank", rank, 1)


@final
class ProjectedEulerMaruyama(AbstractSlowIntegrator):
    """The slow SDE by projected Euler-Maruyama: diffrax's ``Euler`` with a retraction onto Γ after every
    step (which supplies the Itô correction), for any noise.

    - ``dt``: the largest step (SDE time); each recording interval is cut into equal steps of at most ``dt``;
    - ``richardson``: also solve with step 2h on the same Brownian path and return, per path, the observables
      2 f(ζ^h) − f(ζ^{2h}): their mean has weak error O(h²) instead of O(h), for 1.5 times the work (means
      and standard errors estimate E f(ζ_t); their spread is not the law of f(ζ_t));
    - ``brownian_dt``: the grid of the Brownian path (default: the step); runs on one grid whose steps are
      multiples of it follow the same Brownian path, so a step-size study compares paired paths;
    - ``rank``: the codimension of Γ (default: the geometry's rank rule).
    """

    engine: ClassVar[str] = "slow_sde"
    dt: float = 1e-3
    richardson: bool = False
    brownian_dt: Optional[float] = None
    rank: Optional[int] = None

    def __check_init__(self):
        check_range("dt", self.dt, low=0.0, low_open=True)
        check_bool("richardson", self.richardson)
        if self.brownian_dt is not None:
            check_range("brownian_dt", self.brownian_dt, low=0.0, low_open=True)
        _check_rank(self.rank)

    def plan(self, problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, t_grid: np.ndarray,
             dtype: Any) -> _Plan:
        return _SDEPlan(self, t_grid, dtype)


class _SDEPlan(_Plan):
    alpha = None

    def __init__(self, spec: ProjectedEulerMaruyama, t_grid, dtype):
        T, n_record = float(t_grid[-1]), len(t_grid) - 1
        n_sub = max(1, int(np.ceil((t_grid[1] - t_grid[0]) / spec.dt - 1e-9)))
        if spec.richardson and n_sub % 2:
            n_sub += 1  # the coarse level takes two fine steps at a time
        self.h = (t_grid[1] - t_grid[0]) / n_sub  # the fine step
        self.n_sub, self.richardson = n_sub, spec.richardson
        grid = self.h if spec.brownian_dt is None else float(spec.brownian_dt)
        per_step = int(round(self.h / grid))
        if per_step < 1 or abs(per_step * grid - self.h) > 1e-9 * self.h:
            raise ConfigError("integrator.brownian_dt", f"the step {self.h:.6g} (T / n_record / {n_sub}) must be a "
                                                        f"multiple of it, got {spec.brownian_dt}")
        if T / grid >= 2**31:
            raise ConfigError("integrator.brownian_dt" if spec.brownian_dt is not None else "integrator.dt",
                              f"T / step = {T / grid:.3g} grid intervals: must be < 2**31 (the Brownian grid's index)")
        self.grid, self.dtype = grid, dtype
        # (steps per record, Brownian grid intervals per step) per level
        self.level_steps = [(n_sub, per_step)] + ([(n_sub // 2, 2 * per_step)] if spec.richardson else [])
        self.levels = len(self.level_steps)
        check_time_grid(t_grid, 0.0, T, strict=False)
        self.t_steps = []
        for per_record, substeps in self.level_steps:
            t_steps = np.linspace(0.0, T, n_record * per_record + 1)
            t_steps[::per_record] = t_grid
            check_time_grid(t_steps, 0.0, T, strict=True, field="integrator.dt")  # the solves' run-time checks
            if np.any(np.round(np.diff(t_steps) / grid) > substeps):
                raise ConfigError("integrator.brownian_dt", "a step covers more Brownian grid intervals than it should")
            self.t_steps.append(t_steps)
        self.t_grid = t_grid

    def segment(self, model, y, keys, on_imex, t_grid, j0, j1, level):
        per_record, substeps = self.level_steps[level]
        with host_checked():
            ys, ok = _sde_segment(model, diffrax.Euler(), y, keys,
                                  jnp.asarray(self.t_steps[level][j0 * per_record: j1 * per_record + 1]),
                                  jnp.asarray(self.t_grid[j0 + 1: j1 + 1]), jnp.asarray(self.grid, self.dtype), substeps)
        return tuple(np.asarray(x) for x in ys), np.asarray(ok), on_imex, np.zeros(len(on_imex), np.int64)

    def meta(self, runs):
        return dict(dt=float(self.h), steps_per_record=self.n_sub, solver="Euler", richardson=bool(self.richardson))


@final
class LabelNoiseODE(AbstractSlowIntegrator):
    """The label-noise ODE (docs/math.md#label-noise-ode), integrated by an adaptive diffrax solver with a
    retraction of the saved states onto Γ. Needs label noise on a least-squares problem.

    - ``solver``: a diffrax ODE solver with an error estimate, or ``"tsit5"`` (the default), ``"kvaerno5"``
      (implicit) or ``"kencarp4"`` (IMEX: ζ implicit with a structured Jacobian, v explicit; for an AGM on
      least squares off the diagonal nets, where coordinates are driven to 0 with S → 1/ε);
    - ``rtol``, ``atol``: the tolerances of the step-size controller ``diffrax.PIDController(rtol, atol)``;
      ``stepsize_controller``: a ``diffrax.PIDController`` to use instead (its tolerances then count);
    - ``imex_fallback``: (an AGM on least squares off the diagonal nets, with an explicit solver) give the
      solver at most ``slowsde_jax.sde.EXPLICIT_STEPS_BEFORE_IMEX`` steps per compiled call, and solve a
      path whose solve fails again with KenCarp4 from its last record; its group of paths stays on KenCarp4
      (the stiffness does not go away). ``meta["imex_fallback_solves"]`` counts those solves;
    - ``zero_floor``: (an AGM, except on diagonal nets, which run in log coordinates) coordinates of ζ with
      |ζ_i| at or below it are read as 0 by the vector field, so that coordinates the method drives to 0 do
      not hold an explicit solver at steps of 1/S². Default min(10 atol, rtol max_i |ζ_i|); 0 turns it off;
    - ``max_steps``: the solver's step budget per recording interval;
    - ``rank``: the codimension of Γ (default: the geometry's rank rule).
    """

    engine: ClassVar[str] = "label_noise_ode"
    solver: Union[str, diffrax.AbstractSolver] = "tsit5"
    rtol: float = 1e-8
    atol: float = 1e-10
    stepsize_controller: Optional[diffrax.PIDController] = None
    imex_fallback: bool = True
    zero_floor: Optional[float] = None
    max_steps: int = 1_000_000
    rank: Optional[int] = None

    def __check_init__(self):
        check_range("rtol", self.rtol, low=0.0, low_open=True)
        check_range("atol", self.atol, low=0.0, low_open=True)
        check_bool("imex_fallback", self.imex_fallback)
        check_int("max_steps", self.max_steps, 1)
        if self.zero_floor is not None:
            check_range("zero_floor", self.zero_floor, low=0.0)
        _check_rank(self.rank)
        if self.stepsize_controller is not None and not isinstance(self.stepsize_controller, diffrax.PIDController):
            raise ConfigError("stepsize_controller", "must be a diffrax.PIDController(rtol, atol) (the adaptive "
                                                     f"controller the ODE uses), got {type(self.stepsize_controller).__name__}")
        self.diffrax_solver()  # checks the solver

    @property
    def tolerances(self) -> tuple[float, float]:
        """(rtol, atol): the controller's when one is given, else the fields."""
        c = self.stepsize_controller
        return (self.rtol, self.atol) if c is None else (float(c.rtol), float(c.atol))

    def controller(self) -> diffrax.PIDController:
        rtol, atol = self.tolerances
        return diffrax.PIDController(rtol=rtol, atol=atol) if self.stepsize_controller is None \
            else self.stepsize_controller

    def diffrax_solver(self) -> diffrax.AbstractSolver:
        """The diffrax solver; ConfigError("solver") for a name or an object that is not an adaptive ODE solver."""
        solver = self.solver
        if isinstance(solver, str):
            if solver not in ODE_SOLVERS:
                raise ConfigError("solver", f"unknown or inapplicable solver {solver!r}{suggest(solver, ODE_SOLVERS)}: "
                                            f"{_ODE_WHAT}")
            return ODE_SOLVERS[solver](*self.tolerances)
        if not isinstance(solver, diffrax.AbstractSolver):
            raise ConfigError("solver", f"must be a diffrax solver or a name, got {type(solver).__name__}: {_ODE_WHAT}")
        sde_only = (diffrax.AbstractSRK, diffrax.AbstractItoSolver, diffrax.SemiImplicitEuler, diffrax.Sil3)
        if isinstance(solver, sde_only) or not isinstance(solver, diffrax.AbstractAdaptiveSolver):
            raise ConfigError("solver", f"{type(solver).__name__} is not an adaptive ODE solver with an error "
                                        f"estimate: {_ODE_WHAT}")
        return solver

    def plan(self, problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, t_grid: np.ndarray,
             dtype: Any) -> _Plan:
        alpha = noise.label_noise_alpha(problem)
        if alpha is None:
            raise ConfigError("integrator", f"the label-noise ODE needs label noise on a least-squares problem, got "
                                            f"{type(noise).__name__}; use slowsde_jax.ProjectedEulerMaruyama(dt)")
        solver = self.diffrax_solver()
        if isinstance(solver, IMEX_SOLVERS) and not _imex_applies(problem, method):
            raise ConfigError("integrator.solver", f"{type(solver).__name__} (IMEX) is for the label-noise ODE of an "
                              "AGM on a least-squares problem other than a diagonal net (those run in log coordinates)")
        check_time_grid(t_grid, 0.0, float(t_grid[-1]), strict=True)
        return _ODEPlan(self, solver, alpha, problem, method, dtype)


class _ODEPlan(_Plan):
    levels = 1

    def __init__(self, spec: LabelNoiseODE, solver, alpha, problem, method, dtype):
        self.alpha, self.solver, self.spec = alpha, solver, spec
        rtol, atol = spec.tolerances
        self.controller = spec.controller()
        floor = (ZERO_FLOOR_ATOLS * atol, rtol) if spec.zero_floor is None else (spec.zero_floor, np.inf)
        self.floor = tuple(jnp.asarray(f, dtype) for f in floor)  # traced: one program for every floor
        explicit = not isinstance(solver, diffrax.AbstractImplicitSolver)
        self.fallback = (imex_kencarp4(rtol, atol) if spec.imex_fallback and explicit and _imex_applies(problem, method)
                         else None)

    def segment(self, model, y, keys, on_imex, t_grid, j0, j1, level):
        return _ode_call(model, self.solver, self.fallback, self.controller, y, t_grid[j0: j1 + 1],
                         self.spec.max_steps, self.floor, on_imex)

    def meta(self, runs):
        return dict(alpha=float(self.alpha), solver=type(self.solver).__name__, richardson=False,
                    imex_fallback_solves=sum(r.fallback_solves for r in runs))


def default_integrator(problem: AbstractProblem, noise: AbstractNoise) -> AbstractSlowIntegrator:
    """The label-noise ODE under label noise on least squares (Σ = αH on Γ: no diffusion), else projected
    Euler-Maruyama with its default step."""
    return LabelNoiseODE() if noise.label_noise_alpha(problem) is not None else ProjectedEulerMaruyama()
