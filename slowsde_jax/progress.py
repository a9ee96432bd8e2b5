"""Progress bars for the long computations (discrete runs and sweeps, the slow SDE/ODE, eta-sweeps).

Every engine takes ``progress``: True (always show), False (never), or None (the default: show when the
user can see it, i.e. when stderr is a terminal or the code runs in a Jupyter kernel). ``slowsde run`` and
``slowsde compare`` show bars unless ``--quiet``. The environment variable ``SLOWSDE_PROGRESS=0`` turns
every bar off, ``=1`` turns them on.

Bars are ``tqdm`` bars written to stderr, or to ``file`` when given: in a notebook with ipywidgets a widget
from ``tqdm.auto``; elsewhere, and in a notebook without ipywidgets (where ``tqdm.auto`` would raise), a
text bar from ``tqdm.std``. A terminal that reports a size of 0 x 0 (a pseudo-terminal without a size, as
in some CI runners and containers) gets a fixed 80 x 24: tqdm would otherwise show nothing there. ``progress_bar`` returns a bar whose ``update``/``close`` do nothing
when it is off, so callers never test for None.
"""
from __future__ import annotations

import io
import os
import sys
import threading
import time
from typing import IO, Any, Optional

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


def _has_widgets() -> bool:
    """tqdm's notebook bar needs ipywidgets; without it, it raises instead of drawing."""
    import importlib.util

    return importlib.util.find_spec("ipywidgets") is not None


def enabled(progress: Optional[bool], file: Optional[IO] = None) -> bool:
    """Whether a bar is shown for the engines' ``progress`` argument (see the module docstring). Under several
    processes (``jax.distributed``) only process 0 shows bars."""
    import jax

    if jax.process_index() != 0:
        return False
    env = os.environ.get("SLOWSDE_PROGRESS")
    if env is not None and env.strip() in ("0", "1"):
        return env.strip() == "1"
    if progress is not None:
        return bool(progress)
    stream = sys.stderr if file is None else file
    return _in_notebook() or bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(total: float, desc: str, *, progress: Optional[bool] = None, unit: str = "step",
                 initial: float = 0, file: Optional[IO] = None) -> Any:
    """A tqdm bar over ``total`` units (steps, SDE time, ...), or a ``NullBar`` when ``progress`` says
    no (see ``enabled``). ``file``: where a text bar writes (default stderr)."""
    if not enabled(progress, file):
        return NullBar()
    if file is None and _in_notebook() and _has_widgets():
        from tqdm.auto import tqdm  # a widget bar
    else:
        from tqdm.std import tqdm  # text (in a notebook without ipywidgets: the cell's stderr)
    # A terminal that reports a size of 0 x 0 (a pseudo-terminal opened without a size, as some CI runners
    # and containers do) makes tqdm (4.67-4.70 at least) hide the bar: it reads 0 rows as "no room" and
    # trims lines to -1 columns. Such a terminal gets a fixed 80 x 24.
    sized = _terminal_sized(sys.stderr if file is None else file)
    fixed = {} if sized else {"ncols": 80, "nrows": 24}
    bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, file=file, mininterval=0.5, leave=True,
               dynamic_ncols=sized, smoothing=0, **fixed)
    return _CompileAwareBar(bar)


class _CompileAwareBar:
    """A tqdm bar that says "compiling" until its first update and then times itself from there: the rate and
    the time left are the average since the first compiled call returned (``smoothing=0``), never an
    estimate that counts the compilation as work."""

    def __init__(self, bar):
        self.bar = bar
        self._started = False
        self._lock = threading.Lock()  # the slow engine updates from one thread per device
        bar.set_postfix_str("compiling")

    def __getattr__(self, name):
        return getattr(self.bar, name)

    def update(self, n: float = 1) -> None:
        with self._lock:
            if self._started:
                self.bar.update(n)
                return
            self._started = True
            self.bar.set_postfix_str("", refresh=False)
            self.bar.n += n  # the first call's work, done while compiling, counts as done but not in the rate
            self.bar.initial = self.bar.n
            self.bar.start_t = self.bar.last_print_t = time.time()
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _terminal_sized(stream) -> bool:
    """Whether the stream is a terminal that reports a usable size (>= 20 columns, >= 2 rows)."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return size.columns >= 20 and size.lines >= 2
