"""Progress bars: shown when asked and in a terminal, never when switched off, with the tqdm release
installed; the engines' bars say "compiling" until their first compiled call returns and then run to
completion, the slow engine's in SDE time."""
import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from slowsde_jax import progress

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv("SLOWSDE_PROGRESS", raising=False)


def test_bar_on_off_and_auto(monkeypatch):
    out = io.StringIO()
    bar = progress.progress_bar(10, "adam", progress=True, file=out)
    bar.update(4)
    bar.update(6)
    bar.close()
    text = out.getvalue()
    assert "adam" in text and "10/10" in text and "100%" in text
    off = progress.progress_bar(10, "adam", progress=False, file=out)
    assert isinstance(off, progress.NullBar)
    off.update(3)
    off.close()
    assert off.n == 3
    assert isinstance(progress.progress_bar(10, "x", file=io.StringIO()), progress.NullBar)  # auto: not a tty
    monkeypatch.setenv("SLOWSDE_PROGRESS", "1")
    assert progress.enabled(None, io.StringIO()) and progress.enabled(False)
    monkeypatch.setenv("SLOWSDE_PROGRESS", "0")
    assert not progress.enabled(True)


def _read_all(master) -> str:
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO once the child has closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("size", [None, (24, 100)], ids=["pty-without-size", "pty-24x100"])
def test_auto_bar_shows_under_a_terminal(size):
    """progress=None shows a bar when stderr is a terminal, with the installed tqdm, also on a terminal that
    reports a size of 0 x 0 (where tqdm alone shows nothing)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    if size is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    code = ("import importlib.util as u, sys\n"  # the module alone: no jax import in the child
            f"spec = u.spec_from_file_location('progress', {str(ROOT / 'slowsde_jax' / 'progress.py')!r})\n"
            "m = u.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "b = m.progress_bar(5, 'steps-under-tty')\n"
            "[b.update(1) for _ in range(5)]\nb.close()\n")
    env = {k: v for k, v in os.environ.items() if k != "SLOWSDE_PROGRESS"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=slave, env=env)
    os.close(slave)
    text = _read_all(master)
    assert proc.wait(timeout=60) == 0
    assert "steps-under-tty" in text and "5/5" in text and "100%" in text


def test_notebook_without_ipywidgets_gets_a_text_bar(monkeypatch, capsys):
    """In a Jupyter kernel tqdm.auto needs ipywidgets (it raises without them): fall back to a text bar."""
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    monkeypatch.setattr(progress, "_has_widgets", lambda: False)
    assert progress.enabled(None)  # a notebook shows bars by default
    bar = progress.progress_bar(3, "nb")
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert type(bar.bar).__module__ == "tqdm.std" and "3/3" in capsys.readouterr().err


def test_engine_bars_say_compiling_first_and_finish_in_their_units(capsys, hyperbola):
    import slowsde_jax as S
    from slowsde_jax import noise

    S.simulate_slow_sde(hyperbola, noise.label_noise(0.5), S.adam(c=10.0), T=0.02, n_paths=3, n_record=4,
                        execution=S.Execution(progress=True, records_per_call=1))
    err = capsys.readouterr().err
    shown = [seg for seg in err.split("\r") if seg.strip()]
    assert any("compiling" in seg for seg in shown[:2]), shown
    last = shown[-1]
    # the rate in SDE time per second, or its inverse when slower than 1 t/s (tqdm's choice; a loaded machine)
    assert "slow ODE (adam)" in last and "100%" in last and "0.02/0.02" in last and ("t/s" in last or "s/t" in last), last
    S.simulate_discrete(hyperbola, noise.label_noise(0.5), S.adam(), eta=0.1, steps=40, n_record=2,
                        execution=S.Execution(progress=True))
    last = capsys.readouterr().err.strip().split("\r")[-1]
    assert "40/40" in last and "step/s" in last and "compiling" not in last, last
