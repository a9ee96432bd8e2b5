"""Keeping compiled programs between runs: JAX's persistent compilation cache, opt in.

Most of a first call is compilation (XLA compiling the jitted engines: 10 to 30 s each on a laptop CPU);
later calls in the same process reuse the compiled programs. JAX can also keep them on disk, so that the
next process (the next ``slowsde run``, a restarted notebook) loads them instead of compiling.

- The ``slowsde`` command turns this cache on by default, in ``$SLOWSDE_CACHE_DIR`` or else
  ``~/.cache/slowsde_jax``; ``SLOWSDE_CACHE_DIR=off`` or ``slowsde run --no-cache`` turns it off. A cache
  folder set for JAX itself (``JAX_COMPILATION_CACHE_DIR``) is used as it is.
- Importing ``slowsde_jax`` never changes JAX's configuration for this. In a notebook or script, call
  ``enable_compilation_cache`` once, before the first simulation.

The cache holds compiled programs only; results are computed afresh and are the same with or without it.
Tracing (Python building the programs) is not cached: a warm first call still takes a few seconds.
A cache folder is trusted code: do not share one with users you do not trust (JAX's warning).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

import jax

__all__ = ["ENV_VAR", "cache_dir_from_env", "enable_compilation_cache"]

ENV_VAR = "SLOWSDE_CACHE_DIR"
_OFF = {"0", "off", "false", "no", "none"}


def cache_dir_from_env(environ: Optional[Mapping[str, str]] = None) -> Optional[Path]:
    """The cache folder that ``SLOWSDE_CACHE_DIR`` names (``~`` expanded), ``~/.cache/slowsde_jax`` when it is
    unset or empty (``$XDG_CACHE_HOME/slowsde_jax`` when that is set), None when it says off (0, off,
    false, no, none)."""
    environ = os.environ if environ is None else environ
    value = environ.get(ENV_VAR, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    base = environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "slowsde_jax"


def enable_compilation_cache(path: Union[None, str, os.PathLike] = None) -> Optional[Path]:
    """Turn on JAX's persistent compilation cache in ``path`` (default: ``cache_dir_from_env``) for every
    program, however quick to compile. Returns the folder in use, or None when the setting says off or the
    folder cannot be made (a warning says why). A folder already set in JAX (``jax_compilation_cache_dir``)
    is kept and returned. Call before the first simulation: JAX fixes its cache at the first compilation."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    folder = cache_dir_from_env() if path is None else Path(path).expanduser()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"compilation cache left off: cannot make {folder} ({e.strerror or e})", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder
