"""File writes that never leave a half-written file, and the one wording of an OS error (a leaf module).

``atomic_write`` writes to a temporary name and renames it into place; an OSError on the way becomes a
``RunIOError`` that names the file and the cause. ``owned_folder`` claims a folder for the library's
own files (a marker file lists them), so that a later write never replaces a file the user put there.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .validation import ConfigError

__all__ = ["RunIOError", "describe_os_error", "atomic_write", "OWNED_MARKER", "owned_folder", "claim_file",
           "owned_files"]


class RunIOError(OSError):
    """A file of a run could not be written or read (disk full, permissions, I/O error); the message names
    the file and the cause. An environment fault, not a mistake in the config."""

    def __str__(self):
        return str(self.strerror)


def describe_os_error(e: OSError, path: Optional[Union[str, os.PathLike]] = None) -> str:
    """One line for an OSError: the file, the cause, and what to do for a full disk."""
    where = path or e.filename
    why = e.strerror or str(e) or type(e).__name__
    hint = "; free some space and run again (or resume the run folder)" if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return f"cannot write {where}: {why}{hint}" if where else f"{why}{hint}"


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``. If anything fails, the temporary file is
    removed and ``path`` keeps its previous content; the error is re-raised as a ``RunIOError``
    naming ``path`` (other exceptions pass through unchanged). Under several processes (``jax.distributed``)
    only process 0 writes: every process holds the same results, and this is the library's one file writer."""
    import jax

    if jax.process_index() != 0:
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, RunIOError):
            raise RunIOError(e.errno, describe_os_error(e, path)) from e
        raise



OWNED_MARKER = ".slowsde_files.json"  # lists the files slowsde_jax wrote in a folder it was given


def owned_files(folder: Path) -> Optional[list[str]]:
    """The names slowsde_jax wrote in ``folder`` (from its marker), or None when it holds no marker."""
    try:
        return list(json.loads((Path(folder) / OWNED_MARKER).read_text())["files"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunIOError(getattr(e, "errno", None) or errno.EIO,
                         f"cannot read {Path(folder) / OWNED_MARKER}: {e}") from None


def owned_folder(folder: Union[str, os.PathLike], field: str) -> Path:
    """``folder``, created if missing and claimed for the library's files. ConfigError naming ``field`` when it
    is a file, or when it already holds files the library did not write (nothing is then written); an
    OSError (permissions, a full disk) becomes a ``RunIOError``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(field, f"{folder} is an existing file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        mine = owned_files(folder)
        if mine is None:
            others = sorted(p.name for p in folder.iterdir())
            if others:
                shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
                raise ConfigError(field, f"{folder} already holds files that slowsde_jax did not write ({shown}); "
                                             "give a new or empty folder")
            atomic_write(folder / OWNED_MARKER, lambda p: Path(p).write_text(json.dumps({"files": []})))
    except RunIOError:
        raise
    except OSError as e:
        raise RunIOError(e.errno, describe_os_error(e, folder)) from None
    return folder


def claim_file(folder: Path, name: str) -> None:
    """Add ``name`` to the files the library owns in ``folder`` (before it is first written)."""
    mine = owned_files(folder) or []
    if name not in mine:
        atomic_write(Path(folder) / OWNED_MARKER,
                     lambda p: Path(p).write_text(json.dumps({"files": sorted(mine + [name])})))


def read_npz(path: Union[str, os.PathLike], field: str, what: str = "file") -> dict:
    """Every array of the .npz at ``path``, read eagerly and without pickles. ConfigError naming ``field``
    when it is missing, empty, truncated, not an npz, or holds object arrays (which would need pickle);
    the message names the file. The one reader of the library's npz files (run records, checkpoints)."""
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise ConfigError(field, f"no such {what}: '{path}'")
    if not zipfile.is_zipfile(path):
        raise ConfigError(field, f"'{path}' is corrupt or truncated, or not an npz {what}" +
                          (" (it is empty)" if path.stat().st_size == 0 else ""))
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as e:
        if "pickle" in str(e) or "object" in str(e):
            raise ConfigError(field, f"'{path}' holds object arrays (Python pickles), which slowsde_jax never writes "
                                     "and does not load") from None
        raise ConfigError(field, f"'{path}' is corrupt or not an npz {what} ({e})") from None
    except (OSError, KeyError, EOFError, zipfile.BadZipFile) as e:
        why = "it is empty" if path.stat().st_size == 0 else f"{type(e).__name__}: {e}"
        raise ConfigError(field, f"'{path}' is corrupt or truncated, or not an npz {what} ({why})") from None
