"""Run folders: what ``slowsde run`` writes, and ``load_run`` to read it back in a notebook.

A run folder holds ``config.yaml`` (the resolved config), ``summary.json`` (status, environment, per-run
statistics), ``trajectories.npz`` (every Trajectory, keys prefixed ``<run>/<grid index>/``; with
``slow_flow: true`` also ``<run>.at_phi`` (the run's states mapped to Phi_S) and ``<run>.slow_ode`` (its
label-noise ODE), which run names may not end in), ``records/<run>/`` (the records, streamed there while the
run is in progress and removed once ``trajectories.npz`` holds them) and ``observables.png`` (``slow_flow.png`` with the slow flow). Files are written to a temporary name and renamed, so none is ever half-written; a
write that fails (a full disk) removes its temporary file and leaves the previous version in place.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np

from ._io import RunIOError, atomic_write, describe_os_error, read_npz  # noqa: F401  (re-exported for the app layer)
from .validation import ConfigError
from .trajectory import Trajectory, jsonable, mean_se


def write_json(path: Union[str, os.PathLike], obj: Any) -> None:
    atomic_write(Path(path), lambda p: Path(p).write_text(json.dumps(obj, indent=2, default=jsonable) + "\n"))


def write_config(folder: Path, cfg: dict) -> None:
    """The resolved config as ``config.yaml`` (what ``--resume`` reads back)."""
    from .config import dump_config_text

    text = dump_config_text(cfg)
    atomic_write(Path(folder) / "config.yaml", lambda p: Path(p).write_text(text))


@contextlib.contextmanager
def status_guard(folder: Path, summary: dict) -> Iterator[None]:
    """Write ``summary.json`` with status "running"; if the body raises, mark it "failed" with the error
    (the folder never claims a result it does not have), then re-raise."""
    t0 = time.time()
    summary["status"] = "running"
    write_json(Path(folder) / "summary.json", summary)
    try:
        yield
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", elapsed_s=time.time() - t0)
        try:  # a full disk may refuse this too: then rewrite the status in place
            write_json(Path(folder) / "summary.json", summary)
        except OSError:
            _mark_failed_in_place(Path(folder) / "summary.json")
        raise


def _mark_failed_in_place(path: Path):
    """Last resort on a full disk: rewrite the status field of ``summary.json`` in place (the same number of
    bytes or fewer, no new blocks needed); silently does nothing if even that fails."""
    with contextlib.suppress(OSError, ValueError):
        text = path.read_text()
        new = text.replace('"status": "running"', '"status": "failed" ', 1)
        if new != text:
            with open(path, "r+") as f:
                f.write(new)


def environment() -> dict:
    """Package versions and the device, for reproducibility records."""
    import diffrax
    import equinox
    import jax
    import optax

    from ._version import __version__

    return {"slowsde_jax": __version__, "jax": jax.__version__, "optax": optax.__version__,
            "diffrax": diffrax.__version__, "equinox": equinox.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "backend": jax.default_backend(),
            "devices": [str(d) for d in jax.devices()], "x64": bool(jax.config.jax_enable_x64)}


def stats(traj: Trajectory, tail_fraction: float = 0.1) -> dict:
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


def summarize(trajs: dict[str, list[Trajectory]]) -> dict:
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


def save_trajectories(path: Union[str, os.PathLike], trajs: dict[str, list[Trajectory]]) -> None:
    """Write run name -> list of Trajectories to one npz (keys ``<name>/<grid index>/...``), atomically."""
    arrays = {}
    for name, items in trajs.items():
        for i, tr in enumerate(items):
            arrays.update(tr.to_arrays(prefix=f"{name}/{i}/"))
    atomic_write(Path(path), lambda p: np.savez(p, **arrays))


def read_trajectories(path: Union[str, os.PathLike]) -> dict[str, list[Trajectory]]:
    """Read a file written by ``save_trajectories``: run name -> list of Trajectories."""
    arrays = read_npz(path, "path", "run record")
    try:
        prefixes = sorted({tuple(k.split("/")[:2]) for k in arrays}, key=lambda p: (p[0], int(p[1])))
        trajs: dict = {}
        for name, idx in prefixes:
            trajs.setdefault(name, []).append(Trajectory.from_arrays(arrays, prefix=f"{name}/{idx}/"))
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise ConfigError("path", f"'{path}' is not a file of slowsde_jax trajectories ({type(e).__name__}: {e})") from None
    return trajs


def load_run(path: Union[str, os.PathLike]) -> tuple[dict[str, Union[Trajectory, list[Trajectory]]], dict[str, Any]]:
    """Read a run folder: returns ``(trajectories, summary)`` where ``trajectories`` maps each run name to a
    Trajectory (or a list of them for a sweep or an eta-sweep) and ``summary`` is the parsed ``summary.json``."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError("path", f"must be a run folder (a string or pathlib.Path), got {type(path).__name__}")
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError("path", f"'{folder}' is not a run folder" + (" (no such folder)" if not folder.exists() else ""))
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except FileNotFoundError:
        raise ConfigError("path", f"'{folder}' is not a run folder: it has no summary.json") from None
    except (OSError, ValueError) as e:
        raise ConfigError("path", f"'{folder / 'summary.json'}' cannot be read ({type(e).__name__}: {e})") from None
    npz = folder / "trajectories.npz"
    trajs = read_trajectories(npz) if npz.exists() else {}
    return {k: (v if len(v) > 1 else v[0]) for k, v in trajs.items()}, summary


def check_out_dir(root: Union[str, os.PathLike]) -> Path:
    """``root`` (``--out``) made if needed and checked writable: ConfigError("--out", ...) if it is a file,
    cannot be created, or cannot be written to (found by writing and removing a probe file)."""
    from .validation import ConfigError

    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ConfigError("--out", f"'{root}' exists and is not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".slowsde-probe-", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError("--out", f"cannot write into '{root}': {e.strerror or e}") from None
    return root


def new_folder(root: Union[str, os.PathLike], name: str) -> Path:
    """A fresh folder ``<root>/<name>-<timestamp>[-i]``. ``name`` must be a plain file name (checked), so
    the folder lies directly inside ``root``."""
    from .validation import check_file_name

    check_file_name("name", name)
    root = check_out_dir(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    i = 0
    while True:
        folder = root / (f"{name}-{stamp}" if i == 0 else f"{name}-{stamp}-{i}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            i += 1
        except OSError as e:
            raise RunIOError(e.errno, describe_os_error(e, folder)) from None
