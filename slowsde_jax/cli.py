"""The ``slowsde`` command line.

    slowsde run [CONFIG.yaml] [--set key=value ...] [--out DIR] [--quiet] [--no-cache]
    slowsde compare CONFIG.yaml [--set key=value ...] [--out DIR] [--quiet] [--no-cache]
    slowsde --version

Several processes (``jax.distributed``): add ``--coordinator HOST:PORT --num-processes N --process-id I`` to
the same command in every process, or ``--distributed`` to read them from the cluster's environment; every
process computes, process 0 writes the run folder and prints.

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
out of memory, I/O error, a lost process of a several-process job), printed as one line saying what failed;
130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import config as cfgmod
from . import distributed, jobs
from ._io import RunIOError, describe_os_error
from ._version import __version__
from .compile_cache import enable_compilation_cache
from .geometry import ProjectionError
from .validation import ConfigError


def _start_distributed(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` from the flags (all three, checked first), or from the cluster's
    environment with ``--distributed``; nothing without them. CPU devices use gloo collectives."""
    given = {k: getattr(args, k) for k in ("coordinator", "num_processes", "process_id")}
    from_flags = any(v is not None for v in given.values())
    if not from_flags and not args.distributed:
        if args.lost_after is not None:
            raise ConfigError("--lost-after", "watches the processes of a several-process job: give it with "
                                              "--coordinator/--num-processes/--process-id or --distributed")
        return
    if from_flags:
        missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
        if missing:
            raise ConfigError(missing[0], "--coordinator, --num-processes and --process-id go together (or give "
                                          "--distributed alone to read them from the cluster's environment)")
        host, _, port = args.coordinator.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError("--coordinator", f"must be HOST:PORT, e.g. 127.0.0.1:12355, got {args.coordinator!r}")
        if args.num_processes < 1:
            raise ConfigError("--num-processes", f"must be >= 1, got {args.num_processes}")
        if not 0 <= args.process_id < args.num_processes:
            raise ConfigError("--process-id", f"must be in 0 ... {args.num_processes - 1}, got {args.process_id}")
    if args.lost_after is not None and not args.lost_after > 0:
        raise ConfigError("--lost-after", f"must be > 0 seconds, got {args.lost_after:g}")
    lost_after = distributed.LOST_AFTER_S if args.lost_after is None else args.lost_after
    try:  # without the flags the three are None: start reads the cluster's environment
        distributed.start(args.coordinator, args.num_processes, args.process_id, lost_after_s=lost_after)
    except (ValueError, RuntimeError) as e:  # e.g. --distributed outside a cluster: nothing to read
        raise ConfigError("--coordinator" if from_flags else "--distributed",
                          f"jax.distributed could not start: {str(e).strip().splitlines()[0][:300]}") from None


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume:
        if args.config is not None or args.set:
            raise ConfigError("--resume", "continues a run folder with its own config.yaml: give no CONFIG and no --set")
        result = jobs.resume(args.resume, quiet=args.quiet)
    else:
        result = jobs.run(cfgmod.apply_overrides(cfgmod.load_config(args.config), args.set), out=args.out,
                          quiet=args.quiet)
    if result.n_diverged and (result.summary["config"].get("strict") or args.strict):
        print("slowsde: error: diverged paths in a strict run", file=sys.stderr)
        return 1
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    jobs.compare(cfgmod.apply_overrides(cfgmod.load_config(args.config), args.set), out=args.out, quiet=args.quiet)
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
    for p in (p_run, p_cmp):
        group = p.add_argument_group("several processes (jax.distributed; process 0 writes the run folder)")
        group.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator")
        group.add_argument("--num-processes", type=int, metavar="N", help="number of processes")
        group.add_argument("--process-id", type=int, metavar="I", help="this process's id, 0 ... N-1")
        group.add_argument("--distributed", action="store_true",
                           help="read the three from the cluster's environment (SLURM, ...)")
        group.add_argument("--lost-after", type=float, metavar="SECONDS",
                           help=f"a process silent this long counts as lost: the others stop with status 3 "
                                f"(default {distributed.LOST_AFTER_S:g})")
    sub.add_parser("default-config", help="print the built-in default config").set_defaults(
        func=lambda a: print(__import__("slowsde_jax.config", fromlist=["x"]).default_config_text(), end="") or 0)
    args = parser.parse_args(argv)
    if args.command in ("run", "compare") and not args.no_cache:
        enable_compilation_cache()
    try:
        if args.command in ("run", "compare"):
            _start_distributed(args)
        status = args.func(args)
        distributed.finished()
        return status
    except ConfigError as e:
        print(f"slowsde: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slowsde: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - environment faults get one line; anything else keeps its traceback
        lost = distributed.lost_process_message(e)
        if lost is not None:  # the job cannot go on; a normal exit would wait for the lost process
            print(f"slowsde: error: {lost}", file=sys.stderr)
            distributed.exit_now(distributed.EXIT_LOST)
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
