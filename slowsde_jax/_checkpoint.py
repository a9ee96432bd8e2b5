"""One checkpoint format for both engines.

A checkpoint is an npz written atomically: the engine's own arrays under their names, and a header of three
entries, ``checkpoint.format``, ``checkpoint.engine`` (``"discrete"`` or ``"slow"``) and
``checkpoint.fingerprint``, a JSON dict of what makes two runs the same run (record schedule, path count,
dimension, ...). ``load`` refuses, with one ConfigError("checkpoint", ...) wording, a file that is damaged,
that another engine wrote, or that belongs to another run (naming what differs); each message says how to
restart (delete the file).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

import numpy as np

from ._io import atomic_write, read_npz
from .validation import ConfigError

FORMAT = "slowsde_jax checkpoint 1"
_HEADER = ("checkpoint.format", "checkpoint.engine", "checkpoint.fingerprint")


def _restart(path) -> str:
    return f"delete it to restart this run from its beginning (rm '{path}')"


def save(path: Union[str, Path], engine: str, fingerprint: dict, arrays: dict) -> None:
    """Write ``arrays`` (name -> array) with the header, atomically (write, then rename; process 0 only under
    several processes, see ``_io.atomic_write``)."""
    header = {"checkpoint.format": np.array(FORMAT), "checkpoint.engine": np.array(engine),
              "checkpoint.fingerprint": np.array(json.dumps(fingerprint, sort_keys=True))}
    atomic_write(Path(path), lambda p: np.savez(p, **arrays, **header))


def load(path: Union[str, Path], engine: str, fingerprint: dict) -> dict:
    """The arrays of the checkpoint at ``path`` (header removed), after checking that ``engine`` wrote it for a
    run with this ``fingerprint``. ConfigError("checkpoint", ...) otherwise."""
    try:
        arrays = read_npz(path, "checkpoint", "checkpoint")
    except ConfigError as e:
        why = "it is empty" if Path(path).is_file() and Path(path).stat().st_size == 0 else e.reason
        raise ConfigError("checkpoint", f"'{path}' is corrupt or truncated ({why}); {_restart(path)}") from None
    if any(k not in arrays for k in _HEADER) or str(arrays["checkpoint.format"]) != FORMAT:
        raise ConfigError("checkpoint", f"'{path}' is not a {FORMAT.rsplit(' ', 1)[0]} (format "
                                        f"'{FORMAT}'); {_restart(path)}")
    saved_engine = str(arrays["checkpoint.engine"])
    if saved_engine != engine:
        raise ConfigError("checkpoint", f"'{path}' is a checkpoint of the {saved_engine} engine, not of the {engine} "
                                        f"engine; {_restart(path)}")
    saved = json.loads(str(arrays["checkpoint.fingerprint"]))
    now = json.loads(json.dumps(fingerprint, sort_keys=True))  # the same JSON round trip as the saved one
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differ:
        raise ConfigError("checkpoint", f"'{path}' belongs to another run ({', '.join(differ)} differ); {_restart(path)}")
    return {k: v for k, v in arrays.items() if k not in _HEADER}


def damaged(path: Union[str, Path], e: BaseException) -> ConfigError:
    """The error for a checkpoint whose header matched but whose arrays are missing or inconsistent."""
    return ConfigError("checkpoint", f"'{path}' is corrupt or truncated ({type(e).__name__}: {e}); {_restart(path)}")
