"""Run folders: what ``slowsde run`` writes, and :func:`load_run` to read it back in a notebook.

A run folder holds ``config.yaml`` (the resolved config), ``summary.json`` (status, environment, per-run
statistics), ``trajectories.npz`` (every Trajectory, keys prefixed ``<run>/<grid index>/``) and
``observables.png``. Files are written to a temporary name and renamed, so none is ever half-written.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from .trajectory import Trajectory, jsonable, mean_se


def atomic_write(path: Path, write):
    """Call ``write(tmp_path)`` and rename the result onto ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    write(tmp)
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write(Path(path), lambda p: Path(p).write_text(json.dumps(obj, indent=2, default=jsonable) + "\n"))


def write_config(folder: Path, cfg: dict):
    """The resolved config as ``config.yaml`` (what ``--resume`` reads back)."""
    import yaml

    atomic_write(Path(folder) / "config.yaml", lambda p: Path(p).write_text(yaml.safe_dump(cfg, sort_keys=False)))


@contextlib.contextmanager
def status_guard(folder: Path, summary: dict):
    """Write ``summary.json`` with status "running"; if the body raises, mark it "failed" with the error
    (the folder never claims a result it does not have), then re-raise."""
    t0 = time.time()
    summary["status"] = "running"
    write_json(Path(folder) / "summary.json", summary)
    try:
        yield
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", elapsed_s=time.time() - t0)
        write_json(Path(folder) / "summary.json", summary)
        raise


def environment() -> dict:
    """Package versions and the device, for reproducibility records."""
    import diffrax
    import equinox
    import jax
    import optax

    from . import __version__

    return {"slowsde_jax": __version__, "jax": jax.__version__, "optax": optax.__version__,
            "diffrax": diffrax.__version__, "equinox": equinox.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "x64": bool(jax.config.jax_enable_x64)}


def stats(traj: Trajectory, tail_fraction=0.1) -> dict:
    """Per observable: mean and standard error at the last recorded time, and averaged over the last
    ``tail_fraction`` of the recorded times (per path, then over surviving paths)."""
    ok = ~traj.diverged
    n_tail = max(1, int(round(tail_fraction * (traj.t.size - 1))))
    out = {}
    for name, x in traj.observables.items():
        if not ok.any():
            out[name] = dict.fromkeys(("final_mean", "final_se", "tail_mean", "tail_se"), float("nan"))
            continue
        (final, final_se), (tail, tail_se) = (mean_se(a, traj.deterministic) for a in (x[ok, -1], x[ok, -n_tail:].mean(axis=1)))
        out[name] = {"final_mean": float(final), "final_se": float(final_se), "tail_mean": float(tail),
                     "tail_se": float(tail_se)}
    return out


def summarize(trajs: dict) -> dict:
    """Summary entries per run name: a list over its grid points."""
    out = {}
    for name, items in trajs.items():
        out[name] = []
        for tr in items:
            div = tr.diverged
            out[name].append({"method": tr.meta.get("method"), "hypers": tr.meta.get("hypers"), "eta": tr.meta.get("eta"), "steps": tr.meta.get("steps"),
                              "t_end": float(tr.t[-1]), "n_paths": tr.n_paths, "n_diverged": int(div.sum()),
                              "diverged_steps": [] if tr.diverged_step is None else tr.diverged_step[div].tolist(),
                              "diverged_times": tr.diverged_time[div].tolist(),
                              "failure_reasons": [r for r in tr.meta.get("failure_reasons") or [] if r],
                              "observables": stats(tr)})
    return out


def save_trajectories(path, trajs: dict):
    """Write run name -> list of Trajectories to one npz (keys ``<name>/<grid index>/...``), atomically."""
    arrays = {}
    for name, items in trajs.items():
        for i, tr in enumerate(items):
            arrays.update(tr.to_arrays(prefix=f"{name}/{i}/"))
    atomic_write(Path(path), lambda p: np.savez(p, **arrays))


def read_trajectories(path) -> dict:
    """Read a file written by :func:`save_trajectories`: run name -> list of Trajectories."""
    with np.load(path) as f:
        arrays = dict(f)
    prefixes = sorted({tuple(k.split("/")[:2]) for k in arrays}, key=lambda p: (p[0], int(p[1])))
    trajs: dict = {}
    for name, idx in prefixes:
        trajs.setdefault(name, []).append(Trajectory.from_arrays(arrays, prefix=f"{name}/{idx}/"))
    return trajs


def load_run(path):
    """Read a run folder: returns ``(trajectories, summary)`` where ``trajectories`` maps each run name to a
    Trajectory (or a list of them for a sweep or an eta-sweep) and ``summary`` is the parsed ``summary.json``."""
    folder = Path(path)
    summary = json.loads((folder / "summary.json").read_text())
    npz = folder / "trajectories.npz"
    trajs = read_trajectories(npz) if npz.exists() else {}
    return {k: (v if len(v) > 1 else v[0]) for k, v in trajs.items()}, summary


def new_folder(root, name) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(root) / f"{name}-{stamp}"
    i = 1
    while folder.exists():
        folder = Path(root) / f"{name}-{stamp}-{i}"
        i += 1
    folder.mkdir(parents=True)
    return folder
