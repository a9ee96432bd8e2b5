"""The slow engine: ``simulate_slow_sde``, its run in progress and its checkpoints.

It validates its inputs, puts every path's start on Γ, lays the integrator's steps on the record times,
runs compiled segments over groups of paths (checkpointing between them), and packages one
``Trajectory`` on the SDE clock. How it integrates is the integrator's
(``slowsde_jax.integrators``); the vector fields and segments are in ``slowsde_jax.sde``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import geometry as geo
from . import _checkpoint
from . import sharding as _sharding
from .inputs import explain_start_failure, parse_inputs, run_meta
from .integrators import AbstractSlowIntegrator, LabelNoiseODE, default_integrator
from .methods import AbstractMethod
from .noise import AbstractNoise
from .options import DEFAULT_PATHS_PER_CALL, Execution, Recording, Start, engine_options
from .problems import AbstractProblem, observe_batch
from .progress import progress_bar
from .sharpness import sharpness_batch
from .sde.coefficients import SlowSDEModel, _finite_records
from .sde.full_S import full_S_failures, full_S_solve, full_S_start
from .sde.start import _initial_state
from .trajectory import Trajectory
from .validation import ConfigError, check_range

__all__ = ["simulate_slow_sde"]



def simulate_slow_sde(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, T: float, n_paths: int = 1,
                      key: Union[int, jax.Array] = 0, *, eta: Optional[float] = None, n_record: int = 100,
                      integrator: Optional[AbstractSlowIntegrator] = None, start: Optional[Start] = None,
                      recording: Optional[Recording] = None, execution: Optional[Execution] = None) -> Trajectory:
    """Integrate the slow SDE of ``method`` under ``noise`` on ``problem`` up to SDE time ``T``.

    Main arguments: ``problem``, ``noise``, ``method``; ``T``, the SDE time (t = k η² on the discrete
    clock); ``n_paths`` independent paths (Brownian paths for the SDE; the ODE is deterministic given its
    start); ``key``, a jax PRNG key or an int seed.

    Other arguments:
    - ``eta``: only needed to turn a method's explicit beta2 into c = (1 − β2)/η²;
    - ``n_record``: records at t_j = j T / n_record, j = 0 ... n_record;
    - ``integrator``: ``LabelNoiseODE`` (the default under label noise, where Σ = αH on Γ
      and there is no diffusion) or ``ProjectedEulerMaruyama`` (the default otherwise;
      under label noise it integrates the SDE form, a check of the ODE reduction);
    - ``start``: ``Start``: θ0 (default: the problem's initializer per path), projected
      onto Γ, ζ(0) = Φ_{S(v0)}(θ0); v0 ``"equilibrium"`` (V(Σ(ζ(0)))) or a positive array (the slow SDE
      cannot start at v = 0);
    - ``recording``: ``Recording``: ``record_state`` keeps ζ and v;
    - ``execution``: ``Execution``: dtype, progress, checkpoint (an .npz written after
      every call; a rerun with it continues with the same numbers), paths and records per compiled call.

    A method whose S is a full matrix (Shampoo, ``custom_agm(..., full_matrix=True)``) has the label-noise ODE
    only, on dense geometry (``slowsde_jax.sde.full_S``).

    Returns a Trajectory on the recording grid (``theta`` holds ζ). A path whose solver fails, whose state
    turns non-finite or whose loss is not finite is frozen at its last good state; ``diverged_time`` says
    when (the end of the recording interval) and ``meta["failure_reasons"]`` why.

    Raises ConfigError naming the field for a bad argument (before any work), ProjectionError when a start
    cannot be put on Γ.
    """
    start, recording, execution = engine_options("slow", start, recording, execution)
    if integrator is None:
        integrator = default_integrator(problem, noise)
    elif not isinstance(integrator, AbstractSlowIntegrator):
        raise ConfigError("integrator", "must be slowsde_jax.LabelNoiseODE(...) or slowsde_jax.ProjectedEulerMaruyama"
                                        f"(...), got {type(integrator).__name__}")
    v0 = "equilibrium" if start.v0 is None else start.v0
    inputs = parse_inputs(problem, noise, method, key=key, n_paths=n_paths, n_record=n_record, theta0=start.theta0,
                          v0=v0, dtype=execution.dtype, v0_modes=("equilibrium",))
    method = method.for_problem(problem)  # block ids from the problem's own parameter leaves
    check_range("T", T, low=0.0, low_open=True)
    if eta is not None:
        check_range("eta", eta, low=0.0, low_open=True)
    if integrator.rank is not None and integrator.rank > problem.dim:
        raise ConfigError("integrator.rank", f"the codimension of Gamma is at most D = {problem.dim}, got "
                                             f"{integrator.rank}")
    if method.has_v:
        if method.c is None and eta is None:
            raise ConfigError("eta", "needed to convert the method's explicit beta2 into c = (1 - beta2)/eta^2")
        c = method.c_at(eta)
    else:
        c = jnp.asarray(0.0, inputs.dtype)
    t_grid = np.linspace(0.0, float(T), inputs.n_record + 1)
    meta = dict(eta=None if eta is None else float(eta), T=float(T), n_paths=inputs.n_paths,
                v0=v0 if isinstance(v0, str) else "given", c=float(c))
    if not method.diagonal_S and isinstance(integrator, LabelNoiseODE):  # a full-matrix S: dense geometry
        return _full_S_run(problem, noise, method, integrator, inputs, start, recording, execution, c, t_grid,
                           meta)
    plan = integrator.plan(problem, noise, method, t_grid, inputs.dtype)
    paths_per_call = min(execution.paths_per_call or DEFAULT_PATHS_PER_CALL, inputs.n_paths)
    records_per_call = execution.records_per_call or (1 if execution.checkpoint is not None else inputs.n_record)
    records_per_call = min(records_per_call, inputs.n_record)
    model = SlowSDEModel(problem, noise, method, c, plan.alpha, integrator.rank)

    # loop
    k_init, k_run = jax.random.split(inputs.key)
    checkpoint = execution.checkpoint
    if checkpoint is not None and Path(checkpoint).exists():
        runs = _load_checkpoint(checkpoint, t_grid, inputs.n_paths, problem.dim, plan.levels)
    else:
        init_keys = jax.random.split(k_init, inputs.n_paths)
        y, status = _initial_state(model, inputs.theta0, inputs.v0_mode, inputs.v0, init_keys,
                                   start.project_max_steps)
        if np.any(np.asarray(status) != geo.PROJECTION_OK):  # say why: non-finite start, NaN loss, S = inf, budget
            raise explain_start_failure(problem, noise, method, inputs.theta0, inputs.v0_mode, inputs.v0, init_keys,
                                        status, start.project_max_steps)
        runs = [_SDERun(t_grid) for _ in range(plan.levels)]
        for run in runs:
            run.start(y, inputs.n_paths)
    path_keys = jax.random.split(k_run, inputs.n_paths)
    work = inputs.n_paths * plan.levels  # a call of k paths moves the bar by k / work of its interval
    bar = progress_bar(float(T), f"slow {'SDE' if plan.alpha is None else 'ODE'} ({method.name})",
                       progress=execution.progress, unit="t", initial=float(t_grid[runs[0].done]))  # SDE time
    sizes = _sharding.group_sizes(inputs.n_paths, paths_per_call)  # the groups of paths, one compiled call each
    starts = np.cumsum([0] + sizes[:-1])
    while runs[0].done < inputs.n_record:
        j0, j1 = runs[0].done, min(runs[0].done + records_per_call, inputs.n_record)
        for level, run in enumerate(runs):

            def call(i, run=run, level=level):
                lanes = slice(starts[i], starts[i] + sizes[i])
                out = plan.segment(model, tuple(np.asarray(x[lanes], inputs.dtype) for x in run.y), path_keys[lanes],
                                   run.imex[lanes], t_grid, j0, j1, level)
                bar.update(float(t_grid[j1] - t_grid[j0]) * sizes[i] / work)
                return out

            like = _group_result_like(run, j1 - j0, inputs.dtype)
            groups = _sharding.run_groups(call, sizes, like, execution.devices)
            (zeta, v), ok, imex, solves = jax.tree_util.tree_map(lambda *x: np.concatenate(x), *groups)
            run.imex, run.fallback_solves = imex, run.fallback_solves + int(solves.sum())
            run.extend((zeta, v), ok, j0, plan.alpha is None)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, runs)
    bar.close()

    # package
    run = runs[0]
    zeta, v = np.stack(run.zeta, axis=1), np.stack(run.v, axis=1)
    coarse = np.stack(runs[1].zeta, axis=1) if plan.levels == 2 else None
    extra = dict(plan.meta(runs), **meta)
    return _package(problem, noise, method, integrator, recording, t_grid, zeta, v, run.failed_time, run.reasons,
                    extra, coarse, runs[1] if plan.levels == 2 else None)


def _package(problem, noise, method, integrator, recording, t_grid, zeta, v, failed_time, reasons, meta, coarse=None,
             coarse_run=None) -> Trajectory:
    """The Trajectory of states ζ (P, n_t, D) and v (P, n_t, K): observables (Richardson-combined with the
    ``coarse`` states when given), failures (a non-finite loss included) and meta."""
    observables = _observe(problem, method, zeta, recording.sharpness)
    failed_time, reasons = _flag_non_finite_loss(problem, zeta, t_grid, failed_time, reasons)
    if coarse is not None:  # Richardson: 2 f(zeta^h) - f(zeta^{2h})
        coarse_obs = _observe(problem, method, coarse, recording.sharpness)
        observables = {k: 2.0 * x - coarse_obs[k] for k, x in observables.items()}
        failed_time = np.fmin(failed_time, coarse_run.failed_time)
        reasons = [r or (None if rc is None else f"{rc} (at step 2 dt)") for r, rc in zip(reasons, coarse_run.reasons)]
    meta = run_meta(integrator.engine, problem, noise, method,
                    failure_reasons=[f"path {i}: {r}" for i, r in enumerate(reasons) if r], **meta)
    return Trajectory(t=t_grid, theta=zeta if recording.record_state else None,
                      v=v if (recording.record_state and method.has_v) else None, observables=observables,
                      diverged_time=failed_time, meta=meta)


def _full_S_run(problem, noise, method, integrator, inputs, start, recording, execution, c, t_grid,
                meta) -> Trajectory:
    """The label-noise ODE of a method with a full-matrix S (``sde.full_S``): label noise on least squares
    only; paths in groups of ``paths_per_call`` over the devices like the other runs; no checkpoints, no
    IMEX fallback, no retraction of the saved states."""
    alpha = noise.label_noise_alpha(problem)
    if alpha is None:
        raise ConfigError("noise", f"the slow flow of {method.name} (a full-matrix S) is the label-noise ODE only: "
                                   "it needs label noise on a least-squares problem")
    if integrator.solver not in ("tsit5", "kvaerno5") or integrator.stepsize_controller is not None:
        raise ConfigError("integrator.solver", f"the label-noise ODE of {method.name} (a full-matrix S) runs "
                                               "'tsit5' or 'kvaerno5' (stiff) with rtol and atol only")
    for field, value in (("integrator.rank", integrator.rank), ("integrator.zero_floor", integrator.zero_floor),
                         ("execution.checkpoint", execution.checkpoint),
                         ("execution.records_per_call", execution.records_per_call)):
        if value is not None:
            raise ConfigError(field, f"is not used by the label-noise ODE of {method.name} (a full-matrix S)")
    init_keys = jax.random.split(jax.random.split(inputs.key)[0], inputs.n_paths)
    (zeta0, v0), status = full_S_start(problem, noise, method, inputs.theta0, inputs.v0_mode, inputs.v0, init_keys,
                                       start.project_max_steps)
    if np.any(np.asarray(status) != geo.PROJECTION_OK):
        raise explain_start_failure(problem, noise, method, inputs.theta0, inputs.v0_mode, inputs.v0, init_keys,
                                    status, start.project_max_steps)
    solver = integrator.diffrax_solver()
    zeta0, v0 = np.asarray(zeta0), np.asarray(v0)
    sizes = _sharding.group_sizes(inputs.n_paths, execution.paths_per_call or DEFAULT_PATHS_PER_CALL)
    starts = np.cumsum([0] + sizes[:-1])
    bar = progress_bar(len(sizes), f"slow ODE ({method.name}, full S)", progress=execution.progress, unit="group")

    def call(i):
        lanes = slice(starts[i], starts[i] + sizes[i])
        out = full_S_solve(problem, noise, method, c, alpha, zeta0[lanes], v0[lanes], t_grid, integrator.rtol,
                           integrator.atol, integrator.max_steps, solver)
        bar.update(1)
        return out

    n_t, f = len(t_grid), lambda *shape: jax.ShapeDtypeStruct(shape, inputs.dtype)
    like = ((f(n_t, problem.dim), f(n_t, v0.shape[1])), jax.ShapeDtypeStruct((), bool))
    groups = _sharding.run_groups(call, sizes, like, execution.devices)
    bar.close()
    (zeta, v), ok = jax.tree_util.tree_map(lambda *x: np.concatenate(x), *groups)
    failed, reasons = full_S_failures(zeta, v, ok, t_grid)
    return _package(problem, noise, method, integrator, recording, t_grid, zeta, v, failed, reasons,
                    dict(meta, solver=f"{type(solver).__name__} (full S)", alpha=float(alpha), richardson=False))


def _group_result_like(run, n_new, dtype) -> tuple:
    """The shapes and dtypes, per path, of what a group's call returns (``_Plan.segment``)."""
    D, Dv = run.y[0].shape[1], run.y[1].shape[1]
    f = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)
    return ((f(n_new, D), f(n_new, Dv)), jax.ShapeDtypeStruct((), bool), jax.ShapeDtypeStruct((), bool),
            jax.ShapeDtypeStruct((), np.int64))


def _flag_non_finite_loss(problem, zeta, t_grid, failed_time, reasons):
    """(failed_time, reasons) with every path whose loss is not finite at a record (at a finite state, which
    the solver's checks cannot see) failed at the first such record's time, unless it failed before."""
    loss = np.asarray(_batch_loss(problem, jnp.asarray(zeta.reshape(-1, problem.dim)))).reshape(zeta.shape[:2])
    failed_time, reasons = np.array(failed_time, dtype=float), list(reasons)
    for i in np.flatnonzero(~np.all(np.isfinite(loss), axis=1)):
        j = int(np.argmax(~np.isfinite(loss[i])))
        if not failed_time[i] <= t_grid[j]:
            failed_time[i] = t_grid[j]
            reasons[i] = f"the loss is not finite ({loss[i, j]}) at t = {t_grid[j]:.6g}"
    return failed_time, reasons


@eqx.filter_jit
def _batch_loss(problem, theta):
    return jax.vmap(problem.loss)(theta)


def _observe(problem, method, zeta, sharpness) -> dict:
    """The problem's observables of states (n_paths, n_times, D), each (n_paths, n_times), and with
    ``sharpness`` the sharpness measures (``slowsde_jax.sharpness``) under the same names as the discrete engine."""
    flat = jnp.asarray(zeta.reshape(-1, problem.dim))
    obs = dict(observe_batch(problem, flat))
    if sharpness:
        obs.update(sharpness_batch(problem, method, flat))
    return {k: np.asarray(x).reshape(zeta.shape[:2]) for k, x in obs.items()}


class _SDERun:
    """A slow-SDE run in progress: the current state per path, the records so far, failures."""

    def __init__(self, t_grid):
        self.t_grid = t_grid
        self.zeta, self.v, self.reasons = [], [], []
        self.failed_time = None
        self.y = None
        self.fallback_solves = 0  # (path, call) solves the default ODE solver handed to the IMEX solver
        self.imex = None  # (n_paths,) bool: the paths the default ODE solver has handed to the IMEX solver

    @property
    def done(self) -> int:
        """Recording intervals completed."""
        return len(self.zeta) - 1

    def start(self, y, n_paths):
        self.y = tuple(np.asarray(x) for x in y)
        self.zeta, self.v = [self.y[0]], [self.y[1]]
        self.failed_time = np.full(n_paths, np.nan)
        self.reasons = [None] * n_paths
        self.imex = np.zeros(n_paths, bool)

    def extend(self, ys, solver_ok, j0, sde: bool):
        """Append the records ys = (zeta, v), each (n_paths, n_new, D), of intervals j0+1 ... A path whose
        solver failed or whose state turned non-finite stays frozen at its last good record."""
        zeta, v = ys
        n_new = zeta.shape[1]
        finite = _finite_records(zeta, v)  # (n_paths, n_new)
        bad = ~finite
        bad[~solver_ok & finite.all(axis=1), -1] = True  # a failed solve with finite saves: flag its last record
        first_bad = np.where(bad.any(axis=1), bad.argmax(axis=1), n_new)
        alive = np.isnan(self.failed_time)
        for i in np.flatnonzero(alive & (first_bad < n_new)):
            j = j0 + first_bad[i]  # failed in (t_j, t_{j+1}]
            self.failed_time[i] = self.t_grid[j + 1]
            lo, hi = self.t_grid[j], self.t_grid[j + 1]
            self.reasons[i] = (f"non-finite state between t = {lo:.6g} and {hi:.6g} (retraction onto Gamma failed)"
                               if sde or solver_ok[i] else
                               f"solver failed between t = {lo:.6g} and {hi:.6g} (step budget max_steps exhausted or "
                               "step size collapsed: a stiff region; raise max_steps, or try solver='kencarp4' (an AGM "
                               "on least squares; the default solver falls back to it there) or 'kvaerno5')")
        for k in range(n_new):
            frozen = ~np.isnan(self.failed_time) & (~alive | (first_bad <= k))
            self.zeta.append(np.where(frozen[:, None], self.zeta[-1], zeta[:, k]))
            self.v.append(np.where(frozen[:, None], self.v[-1], v[:, k]))
        self.y = (self.zeta[-1], self.v[-1])


def _fingerprint(t_grid, n_paths, D, n_levels) -> dict:
    """What makes a checkpoint belong to this run: record times, paths, dimension, step-size levels."""
    return {"record times (T, n_record)": np.asarray(t_grid).tolist(), "n_paths": int(n_paths), "dimension": int(D),
            "step-size levels (richardson)": int(n_levels)}


def _save_checkpoint(path, runs):
    """The runs' records, states and failures (one run per step-size level) in the engines' checkpoint format."""
    arrays = {}
    for i, run in enumerate(runs):
        p = "" if i == 0 else f"level{i}_"
        arrays.update({p + "zeta": np.stack(run.zeta), p + "v": np.stack(run.v), p + "failed_time": run.failed_time,
                       p + "reasons": np.array(json.dumps(run.reasons)), p + "fallback_solves": run.fallback_solves,
                       p + "imex": run.imex})
    zeta = arrays["zeta"]
    _checkpoint.save(path, "slow", _fingerprint(runs[0].t_grid, zeta.shape[1], zeta.shape[2], len(runs)), arrays)


def _load_checkpoint(path, t_grid, n_paths, D, n_levels) -> list:
    arrays = _checkpoint.load(path, "slow", _fingerprint(t_grid, n_paths, D, n_levels))
    runs = []
    try:
        for i in range(n_levels):
            p = "" if i == 0 else f"level{i}_"
            run = _SDERun(t_grid)
            run.zeta, run.v = list(arrays[p + "zeta"]), list(arrays[p + "v"])
            if not 1 <= len(run.zeta) <= len(t_grid) or len(run.v) != len(run.zeta):
                raise ValueError(f"{len(run.zeta)} records of zeta and {len(run.v)} of v for {len(t_grid)} times")
            run.failed_time, run.reasons = arrays[p + "failed_time"], json.loads(str(arrays[p + "reasons"]))
            run.y = (run.zeta[-1], run.v[-1])
            run.fallback_solves = int(arrays[p + "fallback_solves"])
            run.imex = np.asarray(arrays[p + "imex"], bool)
            runs.append(run)
    except (ValueError, KeyError, TypeError) as e:
        raise _checkpoint.damaged(path, e) from None
    return runs
