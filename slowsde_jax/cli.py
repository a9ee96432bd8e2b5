"""The ``slowsde`` command line.

    slowsde run [CONFIG.yaml] [--set key=value ...] [--out DIR] [--quiet] [--no-cache]
    slowsde compare CONFIG.yaml [--set key=value ...] [--out DIR] [--quiet] [--no-cache]
    slowsde --version

``run`` runs a YAML config (the built-in default without CONFIG) and writes a run folder under DIR (default
``runs/``): config.yaml, summary.json, trajectories.npz and observables.png; it prints a short table as soon
as the discrete runs are done.
With ``slow_flow: true`` (the default config) each run is also seen at Phi_S(theta) and against its slow ODE:
slow_flow.png and a second table.
``compare`` integrates the slow SDE of every run's method, runs the discrete method at each learning rate
of the config's ``compare.etas`` on the same clock, and writes comparison.json (weak errors per eta and
their fitted order, or "not resolved" when the errors are within noise), weak-error and cloud plots.
Compiled programs are kept on disk between runs (``slowsde_jax.compile_cache``: ``$SLOWSDE_CACHE_DIR``,
default ``~/.cache/slowsde_jax``; ``--no-cache`` or ``SLOWSDE_CACHE_DIR=off`` to compile afresh).
Exit status: 0 done; 1 diverged paths in a ``--strict`` run, or a start that could not be projected; 2 a
mistake in the input (config, ``--set``, ``--out``, a corrupt checkpoint), printed as one line naming the
field, found before a run folder is made or anything is compiled; 3 a fault of the environment (disk full,
out of memory, I/O error), printed as one line saying what failed; 130 interrupted.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from typing import Optional, Sequence


from . import config as cfgmod
from . import runs
from ._io import RunIOError, describe_os_error, read_npz
from ._version import __version__
from .comparison import describe_order, eta_sweep
from .compile_cache import enable_compilation_cache
from .discrete import simulate_discrete
from .geometry import ProjectionError
from .observables import theory_summary, theory_table, theory_view
from .options import Execution, Recording, Start
from .sharpness import SHARPNESS_NAMES
from .plotting import LOSS_NAMES, plot_cloud, plot_observables, plot_slow_flow, plot_sweep
from .slow_engine import simulate_slow_sde
from .validation import ConfigError, within


def _pm(mean, se) -> str:
    """"1.234±0.05", or "1.234" when the standard error is unknown (one stochastic path) or zero."""
    return f"{mean:.4g}" if not se == se or se == 0 else f"{mean:.4g}±{se:.2g}"


def _table(summary_runs) -> str:
    names = sorted({n for entries in summary_runs.values() for e in entries for n in e["observables"]})
    head = ["run", "eta", "steps", "t_end", "diverged"] + names
    rows = []
    for run, entries in summary_runs.items():
        for e in entries:
            hyp = {k: v for k, v in (e["hypers"] or {}).items() if k != "eta" and len(entries) > 1}
            label = run + ("" if not hyp else "[" + ",".join(f"{k}={v:g}" for k, v in hyp.items()) + "]")
            if e.get("method") and e["method"] != run:  # e.g. a run named adam switched to adame by --set
                label += f" ({e['method']})"
            obs = e["observables"]
            rows.append([label, f"{e['eta']:g}", str(e["steps"]), f"{e['t_end']:.4g}", f"{e['n_diverged']}/{e['n_paths']}"]
                        + [_pm(obs[n]["tail_mean"], obs[n]["tail_se"]) if n in obs else "-" for n in names])
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
    lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    return "\n".join(lines) + ("\n(observables at the raw iterates: mean over paths of the average over the last 10% of "
                               "recorded times ± s.e.; no ± with one path)")


def cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.resume:
        folder = Path(args.resume)
        if args.config is not None or args.set:
            raise ConfigError("--resume", "continues a run folder with its own config.yaml: give no CONFIG and no --set")
        if not (folder / "config.yaml").is_file():
            raise ConfigError("--resume", f"'{folder}' is not a run folder (no config.yaml)")
        with within(f"{folder / 'config.yaml'}: "):
            cfg = cfgmod.load_config(folder / "config.yaml")
        status = _folder_status(folder)
        if status == "completed":
            raise ConfigError("--resume", f"'{folder}' holds a completed run (summary.json); start a new run instead")
        for ck in sorted((folder / "checkpoints").glob("*.npz")):
            if ck.name.startswith("."):  # a temporary file of an interrupted atomic write: never a checkpoint
                ck.unlink(missing_ok=True)
                continue
            _check_npz(ck)
    else:
        cfg = cfgmod.apply_overrides(cfgmod.load_config(args.config), args.set)
    plan = cfgmod.prepare(cfg)  # every check, before a folder is made or anything compiles
    problem, noise, planned = plan.problem, plan.noise, plan.runs
    import jax.numpy as jnp

    dtype = jnp.float32 if cfg.get("dtype") == "float32" else None
    if not args.resume:
        folder = runs.new_folder(args.out, cfg.get("name", "run"))
        runs.write_config(folder, cfg)
    ckpts = folder / "checkpoints"
    try:
        ckpts.mkdir(exist_ok=True)
    except OSError as e:
        raise runs.RunIOError(e.errno, runs.describe_os_error(e, ckpts)) from None
    summary = {"name": cfg.get("name", "run"), "seed": cfg.get("seed", 0), "config": cfg,
               "environment": runs.environment(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "resumed": bool(args.resume)}
    print(f"run folder: {folder}" + (" (resumed)" if args.resume else ""))
    t0 = time.time()
    with runs.status_guard(folder, summary):
        trajs = {}
        for name, method, kw in planned:
            done = ckpts / f"{name}.done.npz"
            if done.exists():  # finished before an interruption
                trajs[name] = _read_done(done, name)
                continue
            start = Start(v0=kw.pop("v0", "zeros"))
            recording = Recording(record_state=kw.pop("record_state", True), record_to=folder / "records" / name)
            execution = Execution(dtype=dtype, progress=None if not args.quiet else False,
                                  chunk_steps=cfg.get("chunk_steps", 1_000_000),
                                  divergence_bound=cfg.get("divergence_bound", 1e10), checkpoint=ckpts / f"{name}.npz",
                                  checkpoint_every_s=cfg.get("checkpoint_every_s", 30.0))
            out = simulate_discrete(problem, noise, method, n_paths=kw.pop("n_paths", 1), key=cfg.get("seed", 0),
                                    start=start, recording=recording, execution=execution, **kw)
            trajs[name] = out if isinstance(out, list) else [out]
            runs.save_trajectories(done, {name: trajs[name]})
            (ckpts / f"{name}.npz").unlink(missing_ok=True)
        runs.save_trajectories(folder / "trajectories.npz", trajs)  # the discrete results, safe before what follows
        run_summary = runs.summarize(trajs)
        print(_table(run_summary), flush=True)  # the first result, before the slow flow compiles
        view = {}
        if cfg.get("slow_flow"):  # each run on Gamma and its slow flow (see slowsde_jax.observables)
            methods = {name: method for name, method, _ in planned}
            try:
                view = theory_view(trajs, methods, problem, noise, progress=None if not args.quiet else False)
            except ProjectionError as e:  # the discrete results stay; the slow-flow view is left out
                summary["slow_flow_error"] = str(e)
                print(f"warning: slow flow left out: {e}", file=sys.stderr)
            if view:
                summary["slow_flow"] = theory_summary(view, methods)
                plot_slow_flow(view, summary["slow_flow"], folder / "slow_flow.png")
        if view:  # add the slow-flow results to the discrete ones written above
            saved = dict(trajs)
            for name, entry in view.items():
                saved.update({f"{name}.at_phi": [entry["projected"]], f"{name}.slow_ode": [entry["slow_ode"]]})
            runs.save_trajectories(folder / "trajectories.npz", saved)
        for name, _, _ in planned:  # the finished-run checkpoints are now in trajectories.npz
            (ckpts / f"{name}.done.npz").unlink(missing_ok=True)
        if not any(ckpts.iterdir()):
            ckpts.rmdir()
        summary.update(status="completed", runs=run_summary, elapsed_s=time.time() - t0)
        plot_observables(trajs, folder / "observables.png", log_y=LOSS_NAMES)
        runs.write_json(folder / "summary.json", summary)
        shutil.rmtree(folder / "records", ignore_errors=True)  # streamed while running; trajectories.npz has them
    if "slow_flow" in summary:
        print()
        print(theory_table(summary["slow_flow"]))
    n_div = sum(e["n_diverged"] for entries in summary["runs"].values() for e in entries)
    if n_div:
        first = min(t for entries in summary["runs"].values() for e in entries for t in e["diverged_times"])
        print(f"warning: {n_div} path(s) diverged and were frozen (first at SDE time {first:.4g}); "
              "see summary.json for each step and time")
        if cfg.get("strict") or args.strict:
            print("slowsde: error: diverged paths in a strict run", file=sys.stderr)
            return 1
    figs = "observables.png" + (", slow_flow.png" if "slow_flow" in summary else "")
    print(f"wrote {folder}/summary.json, trajectories.npz, {figs} ({time.time() - t0:.1f} s)")
    return 0


def _folder_status(folder) -> Optional[str]:
    """The ``status`` in a run folder's summary.json, or None when it has none (or it cannot be read)."""
    import json

    try:
        return json.loads((folder / "summary.json").read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _check_npz(path):
    """ConfigError naming ``path`` and how to restart when a checkpoint is not a readable npz."""
    try:
        read_npz(path, "checkpoint", "checkpoint")
    except ConfigError as e:
        raise ConfigError("checkpoint", f"{e.reason}; delete it to restart that run from its beginning "
                                        f"(rm '{path}'), then resume again") from None


def _read_done(path, name):
    """The trajectories of a run that finished before an interruption; ConfigError if the file is damaged."""
    try:
        return runs.read_trajectories(path)[name]
    except (ConfigError, KeyError) as e:  # read_npz's faults, or another run's file
        raise ConfigError("checkpoint", f"'{path}' is corrupt or truncated ({type(e).__name__}); delete it to run "
                                        f"'{name}' again from its beginning (rm '{path}')") from None


def cmd_compare(args: argparse.Namespace) -> int:
    cfg = cfgmod.apply_overrides(cfgmod.load_config(args.config), args.set)
    if "compare" not in cfg:
        raise ConfigError("compare", "a compare config needs a 'compare:' section with etas (see configs/hyperbola_compare.yaml)")
    if "T" not in cfg:
        raise ConfigError("T", "a compare config gives the SDE time T at the top level")
    cmp = cfg["compare"]
    plan = cfgmod.prepare(cfg, command="compare")  # every check, before a folder is made or anything compiles
    problem, noise = plan.problem, plan.noise
    folder = runs.new_folder(args.out, cfg.get("name", "compare"))
    runs.write_config(folder, cfg)
    summary = {"kind": "compare", "seed": cfg.get("seed", 0), "config": cfg, "environment": runs.environment()}
    print(f"run folder: {folder}")
    t0 = time.time()
    seed, T, n_record = cfg.get("seed", 0), cfg["T"], cfg.get("n_record", 10)
    with runs.status_guard(folder, summary):
        result, trajs = {}, {}
        for name, method, kw in plan.runs:
            progress = Execution(progress=None if not args.quiet else False)
            sde_traj = simulate_slow_sde(problem, noise, method, T=T, n_paths=cmp.get("sde_paths", cfg.get("n_paths", 1)),
                                         key=seed + 1, eta=min(cmp["etas"]), n_record=n_record,
                                         integrator=cfgmod.compare_integrator(cmp, problem, noise), execution=progress,
                                         recording=Recording(sharpness=any(o in SHARPNESS_NAMES
                                                                           for o in cmp.get("observables") or [])))
            names = cmp.get("observables") or sorted(sde_traj.observables)
            res = eta_sweep(problem, noise, method, cmp["etas"], T, cfg.get("n_paths", 1), seed, sde_traj, names,
                            project=cmp.get("project", True),
                            start=Start(v0=cfg.get("v0", "equilibrium")), execution=progress)
            for obs in names:
                plot_sweep(res, obs, folder / f"weak_error_{name}_{obs}.png")
                plot_cloud(res["trajectories"][-1], sde_traj, obs, folder / f"cloud_{name}_{obs}.png")
            result[name] = {"sde_engine": sde_traj.meta["engine"], "etas": res["etas"], "observables": res["observables"],
                            "final": {f"{e:g}": c.summary() for e, c in zip(res["etas"], res["comparisons"])}}
            trajs[f"{name}.sde"] = [sde_traj]
            trajs[f"{name}.discrete"] = res["trajectories"]
        runs.save_trajectories(folder / "trajectories.npz", trajs)
        runs.write_json(folder / "comparison.json", result)
        summary.update(status="completed", elapsed_s=time.time() - t0)
        runs.write_json(folder / "summary.json", summary)
    for name, r in result.items():
        print(f"{name} (slow side: {r['sde_engine']}), weak error at T = {T:g} per eta {r['etas']}:")
        for obs, o in r["observables"].items():
            errs = ", ".join(f"{e:.3g}±{s:.1g}" for e, s in zip(o["weak_error"], o["se"]))
            print(f"  {obs:<20} {errs}   fitted {describe_order(o)}")
    print(f"wrote {folder}/comparison.json and plots ({time.time() - t0:.1f} s)")
    return 0


EXAMPLES = """examples:
  slowsde run                                   the built-in showcase: Adam vs SGD on a diagonal net, with
                                                their slow ODEs (about a minute on a laptop CPU)
  slowsde default-config > my.yaml              start a config of your own from the default
  slowsde run my.yaml --set runs.adam.eta=0.01 --set n_paths=16
  slowsde run configs/sparse_regression_n_sweep.yaml --out runs/
  slowsde run --resume runs/diagnet_adam_vs_sgd-20260101-120000
  slowsde compare configs/hyperbola_compare.yaml   weak error of the discrete runs against the slow SDE

documentation: docs/index.md (build the site with `mkdocs serve`)"""


_NO_CACHE_HELP = ("compile everything afresh: do not use the compilation cache ($SLOWSDE_CACHE_DIR, default "
                  "~/.cache/slowsde_jax; SLOWSDE_CACHE_DIR=off does the same)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="slowsde", description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run a YAML config (default: the built-in one) and write a run folder")
    p_run.add_argument("config", nargs="?", default=None, help="YAML config file (default: built-in)")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config entry, e.g. --set runs.adam.eta=0.05 (repeatable)")
    p_run.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs/)")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    p_run.add_argument("--resume", metavar="RUN_FOLDER", help="continue an interrupted run folder from its checkpoints")
    p_run.add_argument("--strict", action="store_true", help="exit with status 1 if any path diverged")
    p_run.add_argument("--no-cache", action="store_true", help=_NO_CACHE_HELP)
    p_run.set_defaults(func=cmd_run)
    p_cmp = sub.add_parser("compare", help="compare discrete runs at several learning rates with the slow SDE")
    p_cmp.add_argument("config", help="YAML config with a 'compare:' section")
    p_cmp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config entry")
    p_cmp.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs/)")
    p_cmp.add_argument("--quiet", action="store_true", help="no progress bars")
    p_cmp.add_argument("--no-cache", action="store_true", help=_NO_CACHE_HELP)
    p_cmp.set_defaults(func=cmd_compare)
    sub.add_parser("default-config", help="print the built-in default config").set_defaults(
        func=lambda a: print(__import__("slowsde_jax.config", fromlist=["x"]).default_config_text(), end="") or 0)
    args = parser.parse_args(argv)
    if args.command in ("run", "compare") and not args.no_cache:
        enable_compilation_cache()
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"slowsde: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slowsde: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - environment faults get one line; anything else keeps its traceback
        fault = _environment_fault(e)
        if fault is None:
            raise
        print(f"slowsde: error: {fault}", file=sys.stderr)
        return fault.status


class _Fault(str):
    status = 3


def _environment_fault(e: BaseException):
    """One line for a fault of the machine rather than of the input (disk, memory, I/O), else None.
    A start that cannot be projected onto Gamma gets status 1."""
    if isinstance(e, ProjectionError):
        f = _Fault(f"slow SDE: {e}")
        f.status = 1
        return f
    if isinstance(e, RunIOError):
        return _Fault(str(e))
    if isinstance(e, OSError):
        return _Fault(describe_os_error(e))
    if isinstance(e, MemoryError):
        return _Fault("out of host memory; lower n_paths, n_record or the sweep, or set record_state: false")
    text = str(e)
    if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text:
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        return _Fault(f"the device ran out of memory ({first[:200]}); lower n_paths or the sweep")
    return None


if __name__ == "__main__":
    sys.exit(main())
