"""The discrete engine: AGM runs on the SDE clock t = k eta^2, jitted, vmapped over paths and hyperparameters.

The state of every (configuration, path) pair, a lane, advances inside one jitted function (``_advance``)
with one trip count for all lanes (the host knows it from the schedule); each lane stops at its own
configuration's target step. A Python loop calls it chunk by chunk. Between chunks the host records
observables on the time grid, updates the progress bar, and may write a checkpoint: that loop is the one
place where checkpoints, divergence reports and the like hook in.

Hyperparameters that vary in a sweep (``eta``, ``lam``, ``c``, ``beta1``, ``beta2``, ``eps``, ``delta``,
``n_train``) are arrays, so a sweep compiles once. A path whose state becomes non-finite or exceeds
``divergence_bound`` is frozen at its last good state and flagged with its step.

Where the time goes, and what the engine does about it (``benchmarks/bench_discrete.py --ablate``):

- Adam's S(v) = 1/(v^lam + eps) with lam a traced array is a power, exp(lam log v), several times the cost
  of a square root; it made the old engine 2.4x slower than a hand-written loop on the CPU. With lam = 1/2
  fixed (every Adam-type method unless lam is swept) lam is passed as a constant and S(v) is a square root.
- The per-step target mask and the select between new and old state run once per block of ``block_steps``
  steps (``_block_one``); inside a block each lane only carries a running "stayed finite and bounded"
  flag. A block in which an active lane left the bound, or which would overrun a lane's target, runs step
  by step instead (the plain path, ``_advance_one``), so divergence steps, frozen states and stopping
  points are exactly those of the plain path. The last block of a chunk is only as long as the steps left
  in it: a full-length tail block, run unmasked and then replayed, cost up to two blocks of work per chunk
  (256 step costs for 200 steps at ``block_steps`` = 32, the engine's whole overhead on short runs).
- The parameters here are flat vectors, so the optax transform does not ravel or unravel (only Adam-mini's
  and Adalayer's block means ravel pytrees).

The paths go in groups of ``Execution.paths_per_call``, one compiled call per group, group g on device g mod
(number of devices) (``slowsde_jax.sharding``); records can be streamed to disk with
``slowsde_jax.streaming.RecordStream`` (``record_to``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from . import _precision
from . import sharding as _sharding
from . import _checkpoint
from .streaming import RecordStream
from .validation import ConfigError, check_int, check_range
from .methods import AGM, AbstractMethod, second_moment
from .noise import AbstractNoise
from .problems import AbstractProblem
from .sharpness import sharpness_measures
from .sweep import apply_hypers, check_sweep_value, sweep_grid
from .options import DEFAULT_PATHS_PER_CALL, Execution, Recording, Start, engine_options
from .inputs import (check_step_count, check_steps, initial_v,
                     parse_inputs, run_meta)
from .trajectory import Trajectory

__all__ = ["simulate_discrete", "PathState", "DiscreteRun", "save_checkpoint",
           "load_checkpoint"]

class PathState(eqx.Module):
    """State of one path: parameters, optimizer state, PRNG key, step count, divergence step (-1 if none)."""

    theta: jax.Array
    opt: Any
    key: jax.Array
    step: jax.Array
    diverged_step: jax.Array


def _init_state(problem, noise, method, eta, theta0, v0_mode, v0, key):
    """Initial PathState for one path; v by the engines' one rule (``slowsde_jax.inputs.initial_v``)."""
    k_init, k_run = jax.random.split(key)
    theta = problem.init(k_init) if theta0 is None else theta0
    opt = method.optax(eta, v0=initial_v(problem, noise, method, theta, v0_mode, v0)).init(theta)
    return PathState(theta=theta, opt=opt, key=k_run, step=jnp.zeros((), jnp.int64),
                     diverged_step=jnp.full((), -1, jnp.int64))


def _step(problem, noise, tx, theta, opt, key):
    """One AGM step of one path: split the key, draw a stochastic gradient, apply the optax transform."""
    key, sub = jax.random.split(key)
    g = noise.grad(problem, theta, sub)
    upd, opt = tx.update(g, opt, theta)
    return theta + upd, opt, key


def _ok(theta, bound):
    """True while theta is finite and max |theta| <= bound. One reduction covers both tests: max propagates
    NaN, and NaN compares False. Checking theta suffices: a non-finite m or v reaches theta in the same step
    (theta - eta S(v) m)."""
    size = jnp.max(jnp.abs(theta))
    return (size <= bound) & (size < jnp.inf)


def _advance_one(problem, noise, method, eta, bound, state: PathState, target, n_steps):
    """The plain path: advance one path by ``n_steps`` steps (an unbatched trip count shared by all lanes),
    stopping at ``target``: steps past the target, or after a divergence, leave the state unchanged. Every
    step checks divergence and selects between the new and the old state."""
    tx = method.optax(eta)

    def body(_, s):
        theta, opt, key = _step(problem, noise, tx, s.theta, s.opt, s.key)
        active = (s.step < target) & (s.diverged_step < 0)
        ok = _ok(theta, bound)
        take = active & ok
        new = PathState(theta=theta, opt=opt, key=key, step=s.step + 1, diverged_step=s.diverged_step)
        kept = PathState(theta=s.theta, opt=s.opt, key=s.key, step=s.step,
                         diverged_step=jnp.where(active & ~ok, s.step + 1, s.diverged_step))
        return jax.tree_util.tree_map(lambda a, b: jnp.where(take, a, b), new, kept)

    return jax.lax.fori_loop(0, n_steps, body, state)


def _block_one(problem, noise, method, eta, bound, state: PathState, block):
    """The fast path: ``block`` (an int, or a traced integer scalar) unmasked steps of one path, and whether theta stayed finite and within
    ``bound`` after every one of them (a running flag: no select on the state inside the block)."""
    tx = method.optax(eta)

    def body(_, c):
        theta, opt, key, ok = c
        theta, opt, key = _step(problem, noise, tx, theta, opt, key)
        return theta, opt, key, ok & _ok(theta, bound)

    theta, opt, key, ok = jax.lax.fori_loop(0, block, body, (state.theta, state.opt, state.key, jnp.bool_(True)))
    return PathState(theta=theta, opt=opt, key=key, step=state.step + block, diverged_step=state.diverged_step), ok


def _per_cfg(fn, problem, noise, method, hypers, state, *args):
    """vmap ``fn(p, n, m, eta, path_state, lane_args...)`` over configurations (axis 0, with their
    hyperparameters substituted) and paths (axis 1). ``args`` are per lane, shape (n_cfg, n_paths, ...)."""

    def cfg(h, st, *a):
        p, n, m = apply_hypers(problem, noise, method, h)
        return jax.vmap(lambda s, *b: fn(p, n, m, h["eta"], s, *b))(st, *a)

    return jax.vmap(cfg)(hypers, state, *args)


@eqx.filter_jit
@eqx.debug.assert_max_traces(max_traces=None)  # counts compilations: eqx.debug.get_num_traces(_advance)
def _advance(problem, noise, method, hypers, bound, state, target, n_steps, block: int = 0):
    """All configurations (axis 0) x paths (axis 1) advanced towards ``target`` (shape (n_cfg,)) by at most
    ``n_steps`` (a traced scalar, so chunk lengths do not recompile).

    ``block`` (static) <= 1: the plain path, a masked and checked step at a time. ``block`` > 1: the steps go
    in blocks of k = min(``block``, the most steps any live lane has left) steps, so the last block of a
    chunk is no longer than needed. A block runs unmasked (``_block_one``) on every lane, and a lane
    keeps its result when the block fits before its target and the lane has not diverged: the state is
    selected once per block. The block runs on the plain path instead (a ``lax.cond`` on one flag for all
    lanes): without the unmasked run when a live lane has fewer than k steps left to its target, and from
    the block's start when a lane that kept it left the bound inside it. So divergence steps, frozen states
    and stopping points are those of the plain path, and every lane advances by min(block, steps left) per
    block: ceil(n_steps / block) blocks reach every target.
    """
    target = jnp.broadcast_to(target[:, None], state.step.shape)  # per lane (n_cfg, n_paths)
    plain = lambda st, k: _per_cfg(lambda p, n, m, e, s, t: _advance_one(p, n, m, e, bound, s, t, k),
                                   problem, noise, method, hypers, st, target)
    if block <= 1:
        return plain(state, n_steps)

    def one_block(_, st):
        live = (st.step < target) & (st.diverged_step < 0)  # (n_cfg, n_paths)
        # this block's length: ``block``, or fewer in the last block, when no live lane has ``block`` steps left
        k = jnp.minimum(jnp.max(jnp.where(live, target - st.step, 0)), block).astype(n_steps.dtype)
        fits = live & (st.step + k <= target)

        def fast(_):
            new, ok = _per_cfg(lambda p, n, m, e, s: _block_one(p, n, m, e, bound, s, k), problem, noise, method,
                               hypers, st)
            accept = lambda _: jax.tree_util.tree_map(lambda a, b: jnp.where(_lanes(fits, a), a, b), new, st)
            return jax.lax.cond(jnp.any(fits & ~ok), lambda _: plain(st, k), accept, None)

        return jax.lax.cond(jnp.any(live & ~fits), lambda _: plain(st, k), fast, None)

    return jax.lax.fori_loop(0, (n_steps + block - 1) // block, one_block, state)


def _lanes(mask, x):
    """Broadcast a (n_cfg, n_paths) lane mask against a leaf x (n_cfg, n_paths, ...)."""
    return jnp.reshape(mask, mask.shape + (1,) * (x.ndim - mask.ndim))


@eqx.filter_jit
def _init_group(problem, noise, method, hypers, theta0, v0_mode, v0, key, n_paths: int, first, size: int):
    """Initial states (n_cfg, size, ...) of the group of paths first ... first + size - 1: path i from the
    i-th of ``n_paths`` keys split from ``key``, whatever the groups."""
    keys = jax.lax.dynamic_slice_in_dim(jax.random.split(key, n_paths), first, size)

    def per_cfg(h):
        p, n, m = apply_hypers(problem, noise, method, h)
        return jax.vmap(lambda k: _init_state(p, n, m, h["eta"], theta0, v0_mode, v0, k))(keys)

    return jax.vmap(per_cfg)(hypers)


@eqx.filter_jit
def _observe(problem, noise, method, hypers, state, sharpness):
    def per_cfg(h, st):
        p, _, m = apply_hypers(problem, noise, method, h)
        return jax.vmap(lambda t: {**p.observables(t), **(sharpness_measures(p, m, t) if sharpness else {})})(st.theta)

    return jax.vmap(per_cfg)(hypers, state)


@eqx.filter_jit
def _flag_non_finite_loss(problem, noise, method, hypers, state):
    """``state`` with every live lane whose loss is not finite (a loss that returns inf or NaN at a finite
    theta, which the divergence check on theta cannot see) marked diverged at its current step, so it is
    frozen and flagged like a diverged path."""
    def per_cfg(h, st):
        p, _, _ = apply_hypers(problem, noise, method, h)
        return jax.vmap(p.loss)(st.theta)

    bad = ~jnp.isfinite(jax.vmap(per_cfg)(hypers, state)) & (state.diverged_step < 0)
    return eqx.tree_at(lambda s: s.diverged_step, state, jnp.where(bad, state.step, state.diverged_step))


@dataclasses.dataclass
class DiscreteRun:
    """A discrete run in progress: the device states of its groups of paths, the schedule and the records.

    The paths go in groups of ``sizes`` paths (``Execution.paths_per_call``), group g on device g mod
    (number of ``devices``, see ``slowsde_jax.sharding``): ``groups[g]`` is its ``PathState``, leaves
    (n_cfg, sizes[g], ...), or None where another process holds it. ``targets[i, j]`` is the step at which
    configuration i records its j-th point; ``done`` counts the recorded points. Everything needed to
    continue sits here, so a checkpoint is this object's arrays.
    """

    groups: list  # PathState (n_cfg, sizes[g], ...) per group; None for another process's group
    sizes: list  # paths per group
    state_like: Any  # the PathState structure of a group of one path (jax.ShapeDtypeStruct leaves)
    targets: np.ndarray  # (n_cfg, n_rec + 1) int
    records: dict  # name -> list of arrays (n_cfg, n_paths, ...) per recorded point (empty when streamed)
    done: int = 0
    stream: Optional[RecordStream] = None  # where the records go instead, when streamed
    observables: bool = True  # record the problem's observables
    sharpness: bool = False  # and the sharpness measures
    devices: Optional[tuple] = None  # the devices the groups go to (None: jax.devices())

    @property
    def n_paths(self) -> int:
        return sum(self.sizes)

    @property
    def starts(self) -> list:
        """The first path of every group."""
        return np.cumsum([0] + list(self.sizes[:-1])).tolist()

    def each(self, fn: Callable[[PathState], Any]) -> dict:
        """``{g: fn(groups[g])}`` for this process's groups, each under its device (``map_groups``)."""
        return _sharding.map_groups(lambda g: fn(self.groups[g]), len(self.sizes), self.devices)

    def gather(self, local: dict, like: Callable[[], PyTree]) -> PyTree:
        """Per-group host results ``{g: pytree of arrays (n_cfg, sizes[g], ...)}`` of this process as one
        pytree of arrays (n_cfg, n_paths, ...), every group's, joined along the paths, in every process.
        ``like()``: the structure of a group's result for one path (asked for only under several processes)."""
        swap = lambda t: jax.tree_util.tree_map(lambda x: np.swapaxes(np.asarray(x), 0, 1), t)
        per_path = lambda: jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct((x.shape[0],) + tuple(x.shape[2:]), x.dtype), like())
        groups = _sharding.gather_groups({g: swap(x) for g, x in local.items()}, self.sizes, per_path, self.devices)
        return jax.tree_util.tree_map(lambda *x: np.swapaxes(np.concatenate(x), 0, 1), *groups)


def simulate_discrete(problem: AbstractProblem, noise: AbstractNoise, method: AbstractMethod, eta: Optional[float] = None,
                      T: Optional[float] = None, n_paths: int = 1, key: Union[int, jax.Array] = 0, *,
                      steps: Optional[int] = None, n_record: int = 100, sweep: Optional[dict] = None,
                      start: Optional[Start] = None, recording: Optional[Recording] = None,
                      execution: Optional[Execution] = None) -> Union[Trajectory, list[Trajectory]]:
    """Run the discrete AGM ``method`` on ``problem`` with gradient noise ``noise``.

    Main arguments: ``problem``, ``noise``, ``method``; ``eta``, the learning rate; ``T``, the SDE time
    (K = round(T / η²) steps), or ``steps`` for every configuration; ``n_paths`` independent paths; ``key``,
    a jax PRNG key or an int seed (path i uses the same initializer and noise stream for every configuration
    of a sweep: common random numbers).

    Other arguments:
    - ``n_record``: records at n_record + 1 points on the SDE clock t = k η², t = 0 included;
    - ``sweep``: dict name -> list of values over ``eta``, ``lam``, ``c``, ``beta1``, ``beta2``, ``eps``,
      ``delta``, ``n_train``; the run covers their Cartesian grid in one compiled function;
    - ``start``: ``Start``: θ0 (D,) for all paths (default: ``problem.init`` per path),
      v0 ``"zeros"`` (default), ``"equilibrium"`` (V(Σ(θ0))) or an array (D,);
    - ``recording``: ``Recording``: ``record_state`` (θ and v, (n_paths, n_t, D) each),
      ``record_observables``, ``record_to`` (a folder to stream the records to, read back as memory maps);
    - ``execution``: ``Execution``: dtype, progress, checkpoint (an .npz written atomically
      every ``checkpoint_every_s`` seconds; a rerun with it continues bit for bit), ``chunk_steps`` per
      compiled call, ``block_steps`` of the fast path (1: the plain path; both give the same numbers),
      ``devices`` to spread the (configuration, path) lanes over (the numbers do not depend on them),
      ``divergence_bound`` (a path past it, or non-finite, is frozen and flagged), ``on_chunk(run)``.

    Returns a ``Trajectory``, or a list of them (one per grid point, in grid order) when ``sweep`` is
    given. A diverged path, or one whose loss turns non-finite, is frozen at its last good state and flagged
    with its step and time (``diverged_step``, ``diverged_time``).

    Raises ConfigError naming the field for a bad argument, before any work.
    """
    start, recording, execution = engine_options("discrete", start, recording, execution)
    theta0, v0 = start.theta0, "zeros" if start.v0 is None else start.v0
    record_state, record_observables, record_to = (recording.record_state, recording.record_observables,
                                                   recording.record_to)
    ex = execution
    dtype, progress, checkpoint, checkpoint_every_s = ex.dtype, ex.progress, ex.checkpoint, ex.checkpoint_every_s
    chunk_steps, block_steps, divergence_bound, on_chunk = ex.chunk_steps, ex.block_steps, ex.divergence_bound, ex.on_chunk
    devices = ex.devices  # a tuple of jax devices, checked by Execution

    # validate
    inputs = parse_inputs(problem, noise, method, key=key, n_paths=n_paths, n_record=n_record, theta0=theta0,
                          v0=v0, dtype=dtype)
    method = method.for_problem(problem)  # block ids from the problem's own parameter leaves
    dtype = inputs.dtype
    if (T is None) == (steps is None):
        raise ConfigError("T", "give exactly one of T (SDE time) and steps")
    if eta is None and not (isinstance(sweep, dict) and "eta" in sweep):
        raise ConfigError("eta", "a learning rate is required")
    if eta is not None:
        check_range("eta", eta, low=0.0, low_open=True)
    if T is not None:
        check_range("T", T, low=0.0, low_open=True)
    else:
        check_int("steps", steps, 1)
        check_steps(steps, "steps", "steps")
    if sweep is not None and not isinstance(sweep, dict):
        raise ConfigError("sweep", f"must be a dict name -> list of values, got {type(sweep).__name__}")
    grid, cfgs = sweep_grid(eta, sweep, dtype)
    for k, values in (sweep or {}).items():  # every swept value through its factory's checks
        for i, v in enumerate(np.atleast_1d(np.asarray(values, dtype=float))):
            if k == "eta":
                check_range(f"sweep.eta[{i}]", v, low=0.0, low_open=True)
            else:
                check_sweep_value(problem, noise, method, k, float(v), f"sweep.{k}[{i}]")
    check_range("eta", grid["eta"], low=0.0, low_open=True)
    if T is not None:
        for e in np.unique(np.asarray(grid["eta"], dtype=float)):
            check_step_count(T, e)
    if dtype != _precision.default_float():
        cast = lambda x: x.astype(dtype) if eqx.is_array(x) and jnp.issubdtype(x.dtype, jnp.floating) else x
        problem, noise, method = jax.tree_util.tree_map(cast, (problem, noise, method))
    for cfg in cfgs:  # validate every grid point before compiling
        _, _, m = apply_hypers(problem, noise, method, {k: jnp.asarray(v) for k, v in cfg.items()})
        if m.has_v:
            if m.c is None:
                check_range("beta2", m.beta2, low=0.0, high=1.0, high_open=True)
            else:
                check_range("c*eta^2", m.c * cfg["eta"] ** 2, low=0.0, high=1.0, high_open=True)

    method = _static_sqrt(method, grid)

    # schedule
    etas = np.asarray(grid["eta"], dtype=float)
    if T is not None:
        t_grid = np.linspace(0.0, float(T), n_record + 1)
        targets = np.rint(t_grid[None, :] / etas[:, None] ** 2).astype(np.int64)
    else:
        targets = np.tile(np.rint(np.linspace(0, steps, n_record + 1)).astype(np.int64), (len(cfgs), 1))

    # loop: the paths in groups of paths_per_call, group g on device g mod (devices)
    sizes = _sharding.group_sizes(inputs.n_paths, ex.paths_per_call or DEFAULT_PATHS_PER_CALL)
    init = lambda first, size: _init_group(problem, noise, method, grid, inputs.theta0, inputs.v0_mode, inputs.v0,
                                           inputs.key, inputs.n_paths, np.asarray(first, np.int64), size=size)
    run = DiscreteRun(groups=[None] * len(sizes), sizes=sizes, state_like=jax.eval_shape(lambda: init(0, 1)),
                      targets=targets, records={}, observables=record_observables,
                      sharpness=recording.sharpness and record_observables, devices=devices)
    resume = checkpoint is not None and Path(checkpoint).exists()
    if record_to is not None:
        run.stream = RecordStream(record_to, targets.shape[1], fresh=not resume, writer=jax.process_index() == 0)
    if resume:
        stream = run.stream
        run = load_checkpoint(checkpoint, run)
        run.stream = stream
        _records_on_resume(run)
    else:
        run.groups = _placed(run, _sharding.map_groups(lambda g: init(run.starts[g], sizes[g]), len(sizes), devices))
        _record(run, problem, noise, method, grid, record_state)
    if checkpoint is not None:
        on_chunk = _checkpointing(checkpoint, checkpoint_every_s, on_chunk)
    run = _continue(run, problem, noise, method, grid, record_state, chunk_steps, progress, divergence_bound, on_chunk,
                    block_steps)
    # package
    trajs = _trajectories(run, cfgs, method, noise, problem, dict(T=T, n_paths=inputs.n_paths,
                                                                   v0=v0 if isinstance(v0, str) else "given"))
    return trajs if sweep else trajs[0]


def _static_sqrt(method, grid):
    """Adam's exponent as a Python constant: with ``lam`` = 1/2 fixed (not swept), S(v) = 1/(v^(1/2) + eps)
    compiles to a square root instead of a power with a traced exponent (exp(lam log v), several times
    dearer and different in the last bit). Other exponents, and swept ones, stay arrays (compile once)."""
    if not isinstance(method, AGM):  # only AGM has the exponent lam
        return method
    lam = method.lam
    if "lam" in grid or not eqx.is_array(lam) or lam.ndim or float(lam) != 0.5:
        return method
    return eqx.tree_at(lambda m: m.lam, method, 0.5)


def _placed(run, local: dict) -> list:
    """The run's groups list from this process's ``{g: PathState}`` (None for the other processes' groups)."""
    return [local.get(g) for g in range(len(run.sizes))]


def _recorded(problem, noise, method, grid, state, observables, sharpness, record_state) -> dict:
    """What a record holds for a group: observables (and sharpness measures), theta and v, (n_cfg, size, ...)."""
    out = {}
    if observables:
        out.update({"obs." + k: x for k, x in _observe(problem, noise, method, grid, state, sharpness).items()})
    if record_state:
        out["theta"] = state.theta
        v = second_moment(state.opt, batch_ndim=2)  # (n_cfg, size, D), None for SGD
        if v is not None:
            out["v"] = v
    return out


def _record(run, problem, noise, method, grid, record_state):
    """Record point ``run.done``: observables, and theta and v when ``record_state``; into ``run.records``,
    or written to ``run.stream``. A lane whose loss is not finite there is flagged as diverged first. Every
    group records on its own device (its batch shape, so the numbers do not depend on the devices)."""
    what = lambda st: _recorded(problem, noise, method, grid, st, run.observables, run.sharpness, record_state)

    def group(st):
        st = _flag_non_finite_loss(problem, noise, method, grid, st)
        return st, jax.tree_util.tree_map(np.asarray, what(st))

    done = run.each(group)
    run.groups = _placed(run, {g: st for g, (st, _) in done.items()})
    out = run.gather({g: rec for g, (_, rec) in done.items()}, lambda: jax.eval_shape(what, run.state_like))
    for k, x in out.items():
        if run.stream is not None:
            run.stream.write(run.done, k, x)  # (process 0; the others' streams only read)
        if _in_memory(run):
            run.records.setdefault(k, []).append(x)
    run.done += 1


def _in_memory(run) -> bool:
    """Whether the run keeps its records in memory: without a stream, or under several processes (where the
    others would read process 0's files before it wrote them). Process 0 streams them as well."""
    return run.stream is None or jax.process_count() > 1


def _records_on_resume(run) -> None:
    """Make a resumed run's records match where this run keeps them, whatever the interrupted run did: records
    its checkpoint held (kept in memory) go into the stream; streamed records are read back into memory
    when this run keeps them there. So a run resumes under another number of processes."""
    if run.stream is None:
        return
    if run.records:
        for k, xs in run.records.items():
            for j, x in enumerate(xs):
                run.stream.write(j, k, x)
    elif _in_memory(run):
        run.records = {k: [np.array(run.stream.read(k)[j]) for j in range(run.done)] for k in run.stream.names()}
    if not _in_memory(run):
        run.records = {}


def _continue(run, problem, noise, method, grid, record_state, chunk_steps, progress, bound, on_chunk, block=1):
    """Advance ``run`` through its remaining record points, chunk by chunk."""
    targets = run.targets
    total = int(targets[:, -1].max())
    from .progress import progress_bar

    bar = progress_bar(total, method.name + (f" ({targets.shape[0]} configs)" if targets.shape[0] > 1 else ""),
                       progress=progress, initial=int(targets[:, run.done - 1].max()))
    bound = np.asarray(bound, run.state_like.theta.dtype)
    while run.done < targets.shape[1]:
        j = run.done
        lo, hi = targets[:, j - 1], targets[:, j]
        n_sub = max(1, math.ceil(int((hi - lo).max()) / chunk_steps))
        prev = lo
        for s in range(1, n_sub + 1):
            tgt = lo + ((hi - lo) * s) // n_sub
            n_steps = np.asarray(int((tgt - prev).max()), np.int64)
            tgt_host = np.asarray(tgt, np.int64)
            run.groups = _placed(run, run.each(lambda st: _advance(problem, noise, method, grid, bound, st, tgt_host,
                                                                    n_steps, block=block)))
            prev = tgt
            bar.update(int(tgt.max()) - bar.n)
        _record(run, problem, noise, method, grid, record_state)
        if on_chunk is not None:
            on_chunk(run)
    bar.close()
    return run


def _fingerprint(run: DiscreteRun) -> dict:
    """What makes a checkpoint belong to this run: the record schedule and the state shapes (all paths)."""
    real = lambda x: tuple(x.shape[:1]) + (run.n_paths,) + tuple(x.shape[2:])
    return {"record steps (steps, eta, n_record)": np.asarray(run.targets).tolist(),
            "state shapes (n_paths, the problem, the method)": [list(real(x)) for x in
                                                               jax.tree_util.tree_leaves(run.state_like)]}


def _host_state(run: DiscreteRun) -> PathState:
    """Every group's state on the host, joined along the paths: leaves (n_cfg, n_paths, ...), in every process."""
    return run.gather(run.each(lambda st: jax.tree_util.tree_map(np.asarray, st)), lambda: run.state_like)


def save_checkpoint(path: Union[str, Path], run: DiscreteRun) -> None:
    """Write the run's state and records to ``path`` in the engines' checkpoint format (``_checkpoint``). The
    state is saved whole (all paths), so a run resumes with any ``paths_per_call`` and devices."""
    leaves = jax.tree_util.tree_leaves(_host_state(run))
    arrays = {f"state.{i}": x for i, x in enumerate(leaves)}
    if run.stream is None:  # streamed records are on disk already
        arrays.update({f"rec.{k}": np.stack(v) for k, v in run.records.items()})
    arrays.update(done=np.asarray(run.done))
    _checkpoint.save(path, "discrete", _fingerprint(run), arrays)


def load_checkpoint(path: Union[str, Path], fresh: DiscreteRun) -> DiscreteRun:
    """Restore a run saved by ``save_checkpoint`` into the structure of a freshly initialized run.

    A file that is damaged, written by the other engine or by another run (other schedule or shapes) raises
    ConfigError("checkpoint", ...) naming it and how to restart (delete it: the run then starts over)."""
    arrays = _checkpoint.load(path, "discrete", _fingerprint(fresh))
    leaves, treedef = jax.tree_util.tree_flatten(fresh.state_like)
    try:
        done = int(arrays["done"])
        saved = [np.asarray(arrays[f"state.{i}"]) for i in range(len(leaves))]
        records = {k[4:]: list(v) for k, v in arrays.items() if k.startswith("rec.")}
        if not 1 <= done <= fresh.targets.shape[1] or any(len(v) != done for v in records.values()):
            raise ValueError(f"{done} points done, records of other lengths")
    except (ValueError, KeyError, TypeError) as e:
        raise _checkpoint.damaged(path, e) from None

    def group(g):
        lanes = slice(fresh.starts[g], fresh.starts[g] + fresh.sizes[g])
        device = _sharding.group_device(g, fresh.devices)
        return jax.tree_util.tree_unflatten(treedef, [jax.device_put(np.asarray(a[:, lanes], dtype=x.dtype), device)
                                                      for a, x in zip(saved, leaves)])

    groups = _placed(fresh, _sharding.map_groups(group, len(fresh.sizes), fresh.devices))
    return dataclasses.replace(fresh, groups=groups, records=records, done=done)


def _checkpointing(path, every_s, inner):
    last = [time.monotonic()]

    def on_chunk(run):
        if inner is not None:
            inner(run)
        now = time.monotonic()
        due = every_s <= 0 or now - last[0] >= every_s or run.done == run.targets.shape[1]
        if jax.process_count() > 1:  # saving gathers across processes: process 0's clock decides for all
            from jax.experimental import multihost_utils

            due = bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
        if due:
            save_checkpoint(path, run)
            last[0] = now

    return on_chunk


def _trajectories(run, cfgs, method, noise, problem, extra):
    if _in_memory(run):
        rec = {k: np.stack(v, axis=2) for k, v in run.records.items()}  # (n_cfg, n_paths, n_t, ...)
    else:  # memory maps (n_t, n_cfg, n_paths, ...), seen as (n_cfg, n_paths, n_t, ...) without a copy
        rec = {k: np.moveaxis(run.stream.read(k), 0, 2) for k in run.stream.names()}
    div = run.gather(run.each(lambda st: np.asarray(st.diverged_step)), lambda: run.state_like.diverged_step)
    out = []
    for i, cfg in enumerate(cfgs):
        eta = cfg["eta"]
        meta = run_meta("discrete", problem, noise, method, **extra, eta=eta, hypers=cfg,
                        steps=int(run.targets[i, -1]), record_steps=run.targets[i].tolist())
        out.append(Trajectory(t=run.targets[i] * eta**2, theta=rec["theta"][i] if "theta" in rec else None,
                              v=rec["v"][i] if "v" in rec else None,
                              observables={k[4:]: x[i] for k, x in rec.items() if k.startswith("obs.")},
                              diverged_step=div[i], meta=meta))
    return out
