"""Progress bars for the long computations (discrete runs and sweeps, the slow SDE/ODE, eta-sweeps).

Every engine takes ``progress``: True (always show), False (never), or None (the default: show when the
user can see it, i.e. when stderr is a terminal or the code runs in a Jupyter kernel). ``slowsde run`` and
``slowsde compare`` show bars unless ``--quiet``. The environment variable ``SLOWSDE_PROGRESS=0`` turns
every bar off, ``=1`` turns them on.

Bars are ``tqdm`` bars (``tqdm.auto``: a widget in a notebook with ipywidgets, text otherwise) written to
stderr, or to ``file`` when given. :func:`progress_bar` returns a bar whose ``update``/``close`` do nothing
when it is off, so callers never test for None.
"""
from __future__ import annotations

import os
import sys
from typing import IO, Optional

__all__ = ["progress_bar", "enabled", "NullBar"]


class NullBar:
    """A bar that shows nothing (``progress=False``): same ``update``, ``set_postfix_str``, ``close``."""

    n = 0
    disable = True

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "") -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def enabled(progress: Optional[bool], file: Optional[IO] = None) -> bool:
    """Whether a bar is shown for the engines' ``progress`` argument (see the module docstring)."""
    env = os.environ.get("SLOWSDE_PROGRESS")
    if env is not None and env.strip() in ("0", "1"):
        return env.strip() == "1"
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if file is None else file
    return _in_notebook() or bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(total: float, desc: str, *, progress: Optional[bool] = None, unit: str = "step",
                 initial: float = 0, file: Optional[IO] = None):
    """A tqdm bar over ``total`` units (steps, SDE time, ...), or a :class:`NullBar` when ``progress`` says
    no (see :func:`enabled`). ``file``: where a text bar writes (default stderr)."""
    if not enabled(progress, file):
        return NullBar()
    if file is None and _in_notebook():
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    # mininterval 0.5 s: a few redraws per second at most; dynamic width follows the terminal.
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file, mininterval=0.5,
                dynamic_ncols=True, leave=True)
