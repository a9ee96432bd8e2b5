"""What ``slowsde run`` and ``slowsde compare`` do, as functions a notebook can call too.

    result = jobs.run(config.load_config("configs/hyperbola_compare.yaml"), out="runs")
    result.folder, result.summary["runs"], result.trajectories["adam"]

Each job checks the whole config before it makes a run folder or compiles anything (``config.prepare``),
writes the folder's files atomically (``runs``), and reports what it does through ``echo``, called like
``print`` (``print`` by default; ``echo=lambda *a, **k: None`` for silence). The command line (``cli``) only parses its arguments
and turns the outcome into an exit status.

Under ``jax.distributed`` (several processes) every process runs the same job and computes the same
numbers; process 0 alone makes the run folder (its path is broadcast), writes its files (``_io.atomic_write``
writes on process 0 only) and reports; the other processes skip the figures and the folder's clean-up.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import config as cfgmod
from . import distributed
from . import runs
from ._io import read_npz
from .comparison import describe_order, eta_sweep
from .discrete import simulate_discrete
from .geometry import ProjectionError
from .observables import theory_summary, theory_table, theory_view
from .options import Execution, Recording, Start
from .regime import describe_regime
from .plotting import LOSS_NAMES, plot_cloud, plot_observables, plot_slow_flow, plot_sweep
from .sharpness import SHARPNESS_NAMES
from .slow_engine import simulate_slow_sde
from .validation import ConfigError, within

__all__ = ["RunResult", "CompareResult", "run", "resume", "compare", "summary_table"]


@dataclasses.dataclass(frozen=True)
class RunResult:
    """What ``run`` made: the run folder, its summary.json as a dict, and run name -> list of Trajectory
    (one per grid point of the run's sweep)."""

    folder: Path
    summary: dict
    trajectories: dict

    @property
    def n_diverged(self) -> int:
        """Paths that diverged (and were frozen), over every run and grid point; summary.json has their steps
        and times."""
        return sum(e["n_diverged"] for entries in self.summary["runs"].values() for e in entries)


@dataclasses.dataclass(frozen=True)
class CompareResult:
    """What ``compare`` made: the run folder and comparison.json as a dict (per run: the slow side's engine,
    the learning rates, weak errors per observable with their fitted order)."""

    folder: Path
    comparison: dict


def _is_writer() -> bool:
    """Whether this process writes the run folder and reports: process 0 (the only one without
    ``jax.distributed``). Every process computes; the others write nothing and say nothing."""
    return jax.process_index() == 0


def _shared_folder(out, name: str) -> Path:
    """A new run folder made by process 0, its path the same in every process (broadcast from process 0)."""
    folder = runs.new_folder(out, name) if _is_writer() else None
    if jax.process_count() == 1:
        return folder
    from jax.experimental import multihost_utils

    raw = np.zeros(4096, np.uint8)
    if folder is not None:
        encoded = np.frombuffer(str(folder).encode(), np.uint8)
        raw[: encoded.size] = encoded
    raw = np.asarray(multihost_utils.broadcast_one_to_all(raw))
    return Path(bytes(raw[raw > 0]).decode())


def _pm(mean, se) -> str:
    """"1.234±0.05", or "1.234" when the standard error is unknown (one stochastic path) or zero."""
    return f"{mean:.4g}" if not se == se or se == 0 else f"{mean:.4g}±{se:.2g}"


def summary_table(summary_runs: dict) -> str:
    """The observables of summary.json's ``runs`` as a text table: one row per run and grid point."""
    names = sorted({n for entries in summary_runs.values() for e in entries for n in e["observables"]})
    head = ["run", "eta", "steps", "t_end", "diverged"] + names
    rows = []
    for run_name, entries in summary_runs.items():
        for e in entries:
            hyp = {k: v for k, v in (e["hypers"] or {}).items() if k != "eta" and len(entries) > 1}
            label = run_name + ("" if not hyp else "[" + ",".join(f"{k}={v:g}" for k, v in hyp.items()) + "]")
            if e.get("method") and e["method"] != run_name:  # e.g. a run named adam switched to adame by --set
                label += f" ({e['method']})"
            obs = e["observables"]
            rows.append([label, f"{e['eta']:g}", str(e["steps"]), f"{e['t_end']:.4g}", f"{e['n_diverged']}/{e['n_paths']}"]
                        + [_pm(obs[n]["tail_mean"], obs[n]["tail_se"]) if n in obs else "-" for n in names])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines) + ("\n(observables at the raw iterates: mean over paths of the average over the last 10% of "
                               "recorded times ± s.e.; no ± with one path)")


def run(cfg: Optional[dict] = None, *, out: Union[str, os.PathLike] = "runs", quiet: bool = False,
        echo: Callable = print) -> RunResult:
    """Run a config (a dict as ``config.load_config`` returns it; None: the built-in default) into a new run
    folder under ``out``: config.yaml, summary.json, trajectories.npz, observables.png, and with
    ``slow_flow: true`` slow_flow.png. ``quiet``: no progress bars.

    Raises ConfigError naming the field for a bad config, before the folder is made."""
    cfg = cfgmod.load_config(None) if cfg is None else cfg
    plan = cfgmod.prepare(cfg)  # every check, before a folder is made or anything compiles
    folder = _shared_folder(out, cfg.get("name", "run"))
    runs.write_config(folder, cfg)
    return _run_in(folder, cfg, plan, quiet, echo, resumed=False)


def resume(folder: Union[str, os.PathLike], *, quiet: bool = False, echo: Callable = print) -> RunResult:
    """Continue an interrupted run folder from its checkpoints, with its own config.yaml. A completed folder,
    a folder that is not a run folder or a damaged checkpoint raise ConfigError, before any work."""
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        raise ConfigError("--resume", f"'{folder}' is not a run folder (no config.yaml)")
    with within(f"{folder / 'config.yaml'}: "):
        cfg = cfgmod.load_config(folder / "config.yaml")
    if _folder_status(folder) == "completed":
        raise ConfigError("--resume", f"'{folder}' holds a completed run (summary.json); start a new run instead")
    for ck in sorted((folder / "checkpoints").glob("*.npz")):
        if ck.name.startswith("."):  # a temporary file of an interrupted atomic write: never a checkpoint
            if _is_writer():
                ck.unlink(missing_ok=True)
            continue
        _check_npz(ck)
    plan = cfgmod.prepare(cfg)
    return _run_in(folder, cfg, plan, quiet, echo, resumed=True)


def _run_in(folder: Path, cfg: dict, plan, quiet: bool, echo: Callable, resumed: bool) -> RunResult:
    problem, noise, planned = plan.problem, plan.noise, plan.runs
    distributed.note_resume(f"slowsde run --resume {folder} and the flags that started them (any number of "
                            "processes; from Python: slowsde_jax.jobs.resume)")
    dtype = jnp.float32 if cfg.get("dtype") == "float32" else None
    progress = False if quiet else None
    writer = _is_writer()
    if not writer:  # every process computes; process 0 alone writes and reports
        echo = _silent
    ckpts = folder / "checkpoints"
    try:
        if writer:
            ckpts.mkdir(exist_ok=True)
    except OSError as e:
        raise runs.RunIOError(e.errno, runs.describe_os_error(e, ckpts)) from None
    summary = {"name": cfg.get("name", "run"), "seed": cfg.get("seed", 0), "config": cfg,
               "environment": runs.environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "resumed": resumed}
    echo(f"run folder: {folder}" + (" (resumed)" if resumed else ""))
    t0 = time.time()
    with runs.status_guard(folder, summary):
        trajs = {}
        for name, method, kw in planned:
            done = ckpts / f"{name}.done.npz"
            if done.exists():  # finished before an interruption
                trajs[name] = _read_done(done, name)
                continue
            kw = dict(kw)
            start = Start(v0=kw.pop("v0", "zeros"))
            recording = Recording(record_state=kw.pop("record_state", True), record_to=folder / "records" / name)
            execution = Execution(dtype=dtype, progress=progress, chunk_steps=cfg.get("chunk_steps", 1_000_000),
                                  divergence_bound=cfg.get("divergence_bound", 1e10), checkpoint=ckpts / f"{name}.npz",
                                  checkpoint_every_s=cfg.get("checkpoint_every_s", 30.0),
                                  paths_per_call=cfg.get("paths_per_call"))
            out = simulate_discrete(problem, noise, method, n_paths=kw.pop("n_paths", 1), key=cfg.get("seed", 0),
                                    start=start, recording=recording, execution=execution, **kw)
            trajs[name] = out if isinstance(out, list) else [out]
            runs.save_trajectories(done, {name: trajs[name]})
            if writer:  # process 0 removes the checkpoint once it has saved the finished run
                (ckpts / f"{name}.npz").unlink(missing_ok=True)
        runs.save_trajectories(folder / "trajectories.npz", trajs)  # the discrete results, safe before what follows
        run_summary = runs.summarize(trajs)
        echo(summary_table(run_summary), flush=True)  # the first result, before the slow flow compiles
        view = {}
        if cfg.get("slow_flow"):  # each run on Gamma and its slow flow (see slowsde_jax.observables)
            methods = {name: method for name, method, _ in planned}
            try:
                view = theory_view(trajs, methods, problem, noise, progress=progress)
            except ProjectionError as e:  # the discrete results stay; the slow-flow view is left out
                summary["slow_flow_error"] = str(e)
                echo(f"warning: slow flow left out: {e}", file=sys.stderr)
            if view:
                summary["slow_flow"] = theory_summary(view, methods)
                if writer:
                    plot_slow_flow(view, summary["slow_flow"], folder / "slow_flow.png")
        if view:  # add the slow-flow results to the discrete ones written above
            saved = dict(trajs)
            for name, entry in view.items():
                saved.update({f"{name}.at_phi": [entry["projected"]], f"{name}.slow_ode": [entry["slow_ode"]]})
            runs.save_trajectories(folder / "trajectories.npz", saved)
        summary.update(status="completed", runs=run_summary, elapsed_s=time.time() - t0)
        if writer:
            for name, _, _ in planned:  # the finished-run checkpoints are now in trajectories.npz
                (ckpts / f"{name}.done.npz").unlink(missing_ok=True)
            if not any(ckpts.iterdir()):
                ckpts.rmdir()
            plot_observables(trajs, folder / "observables.png", log_y=LOSS_NAMES)
            shutil.rmtree(folder / "records", ignore_errors=True)  # streamed while running; trajectories.npz has them
        runs.write_json(folder / "summary.json", summary)
    if "slow_flow" in summary:
        echo()
        echo(theory_table(summary["slow_flow"]))
    result = RunResult(folder=folder, summary=summary, trajectories=trajs)
    if result.n_diverged:
        first = min(t for entries in summary["runs"].values() for e in entries for t in e["diverged_times"])
        echo(f"warning: {result.n_diverged} path(s) diverged and were frozen (first at SDE time {first:.4g}); "
             "see summary.json for each step and time")
    figs = "observables.png" + (", slow_flow.png" if "slow_flow" in summary else "")
    echo(f"wrote {folder}/summary.json, trajectories.npz, {figs} ({time.time() - t0:.1f} s)")
    return result


def _silent(*args, **kwargs) -> None:
    """``echo`` of the processes other than process 0."""


def _folder_status(folder: Path) -> Optional[str]:
    """The ``status`` in a run folder's summary.json, or None when it has none (or it cannot be read)."""
    import json

    try:
        return json.loads((folder / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _check_npz(path: Path) -> None:
    """ConfigError naming ``path`` and how to restart when a checkpoint is not a readable npz."""
    try:
        read_npz(path, "checkpoint", "checkpoint")
    except ConfigError as e:
        raise ConfigError("checkpoint", f"{e.reason}; delete it to restart that run from its beginning "
                                        f"(rm '{path}'), then resume again") from None


def _read_done(path: Path, name: str) -> list:
    """The trajectories of a run that finished before an interruption; ConfigError if the file is damaged."""
    try:
        return runs.read_trajectories(path)[name]
    except (ConfigError, KeyError) as e:  # read_npz's faults, or another run's file
        raise ConfigError("checkpoint", f"'{path}' is corrupt or truncated ({type(e).__name__}); delete it to run "
                                        f"'{name}' again from its beginning (rm '{path}')") from None


def compare(cfg: dict, *, out: Union[str, os.PathLike] = "runs", quiet: bool = False,
            echo: Callable = print) -> CompareResult:
    """Integrate the slow SDE of every run's method, run the discrete method at each learning rate of the
    config's ``compare.etas`` on the same clock, and write a run folder under ``out``: comparison.json (weak
    errors per eta and their fitted order, or "not resolved" when the errors are within noise),
    trajectories.npz, weak-error and cloud plots.

    Raises ConfigError naming the field for a bad config, before the folder is made."""
    if "compare" not in cfg:
        raise ConfigError("compare", "a compare config needs a 'compare:' section with etas (see configs/hyperbola_compare.yaml)")
    if "T" not in cfg:
        raise ConfigError("T", "a compare config gives the SDE time T at the top level")
    cmp = cfg["compare"]
    plan = cfgmod.prepare(cfg, command="compare")  # every check, before a folder is made or anything compiles
    problem, noise = plan.problem, plan.noise
    distributed.note_resume(None)  # a comparison is not resumed: run it again
    folder = _shared_folder(out, cfg.get("name", "compare"))
    runs.write_config(folder, cfg)
    writer = _is_writer()
    if not writer:  # every process computes; process 0 alone writes and reports
        echo = _silent
    summary = {"kind": "compare", "seed": cfg.get("seed", 0), "config": cfg, "environment": runs.environment()}
    echo(f"run folder: {folder}")
    t0 = time.time()
    seed, T, n_record = cfg.get("seed", 0), cfg["T"], cfg.get("n_record", 10)
    execution = Execution(progress=False if quiet else None, paths_per_call=cfg.get("paths_per_call"))
    with runs.status_guard(folder, summary):
        result, trajs = {}, {}
        for name, method, kw in plan.runs:
            sde_traj = simulate_slow_sde(problem, noise, method, T=T, n_paths=cmp.get("sde_paths", cfg.get("n_paths", 1)),
                                         key=seed + 1, eta=min(cmp["etas"]), n_record=n_record,
                                         integrator=cfgmod.compare_integrator(cmp, problem, noise), execution=execution,
                                         recording=Recording(sharpness=any(o in SHARPNESS_NAMES
                                                                           for o in cmp.get("observables") or [])))
            names = cmp.get("observables") or sorted(sde_traj.observables)
            res = eta_sweep(problem, noise, method, cmp["etas"], T, cfg.get("n_paths", 1), seed, sde_traj, names,
                            project=cmp.get("project", True),
                            start=Start(v0=cfg.get("v0", "equilibrium")), execution=execution)
            if writer:  # the figures: the other processes would build them for nothing
                for obs in names:
                    plot_sweep(res, obs, folder / f"weak_error_{name}_{obs}.png")
                    plot_cloud(res["trajectories"][-1], sde_traj, obs, folder / f"cloud_{name}_{obs}.png")
            result[name] = {"sde_engine": sde_traj.meta["engine"], "etas": res["etas"], "observables": res["observables"],
                            "regime": res["regime"],
                            "final": {f"{e:g}": c.summary() for e, c in zip(res["etas"], res["comparisons"])}}
            trajs[f"{name}.sde"] = [sde_traj]
            trajs[f"{name}.discrete"] = res["trajectories"]
        runs.save_trajectories(folder / "trajectories.npz", trajs)
        runs.write_json(folder / "comparison.json", result)
        summary.update(status="completed", elapsed_s=time.time() - t0)
        runs.write_json(folder / "summary.json", summary)
    for name, r in result.items():
        echo(f"{name} (slow side: {r['sde_engine']}), weak error at T = {T:g} per eta {r['etas']}:")
        for obs, o in r["observables"].items():
            errs = ", ".join(f"{e:.3g}±{s:.1g}" for e, s in zip(o["weak_error"], o["se"]))
            echo(f"  {obs:<20} {errs}   fitted {describe_order(o)}")
        if r["regime"]:
            echo("  " + describe_regime(r["regime"], problem.dim))
    echo(f"wrote {folder}/comparison.json and plots ({time.time() - t0:.1f} s)")
    return CompareResult(folder=folder, comparison=result)
